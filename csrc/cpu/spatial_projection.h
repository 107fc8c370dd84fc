// The folded conv-QKV projection of the spatial layout on the CPU (see spatial_projection.cpp).
#pragma once

#include <ATen/ATen.h>

#include "qkv_layout.h"

namespace convformer_fast::cpu {

// y (N, 3F, J) = Conv1d over the joints of x (N, J, F), for float32 / float64 x, weight, bias.
at::Tensor spatial_projection(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                              const QkvGeometry& g);

}  // namespace convformer_fast::cpu
