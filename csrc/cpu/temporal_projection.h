// The folded conv-QKV projection of the temporal layout on the CPU for short windows, as one
// GEMM per sample (temporal_projection.cpp). Long windows go through Winograd (winograd.h).
#pragma once

#include <ATen/ATen.h>

#include "qkv_layout.h"

namespace convformer_fast::cpu {

// y (N, 3C, L) = Conv1d of x (N, C, L) (C = T frames, L = J*d features) with weight (3C, C, k)
// and bias, for float32 / float64.
at::Tensor temporal_gemm_projection(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                    const QkvGeometry& g);

}  // namespace convformer_fast::cpu
