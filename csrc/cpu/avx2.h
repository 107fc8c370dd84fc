// Entry points of the CPU kernels compiled a second time for AVX2 + FMA (kernels_avx2.cpp).
//
// The extension is built without -march flags so that it loads on any CPU of its
// architecture. The hot loops are written once, in *_impl.h files included inside a
// namespace per CPU capability, and kernels_avx2.cpp compiles them again under
// `#pragma GCC target("avx2,fma")`; callers pick that build at run time when
// cpu_supports_avx2_fma(). float only: the float64 paths exist for gradcheck.
#pragma once

#include <cstdint>

#include "cpu/attention.h"
#include "cpu/winograd.h"

namespace convformer_fast::cpu {

#if defined(__x86_64__)
#define CONVFORMER_FAST_HAVE_AVX2_KERNELS 1
bool cpu_supports_avx2_fma();
void attention_forward_avx2(const float* qkv, float* out, float* lse, const AttentionShape& s);
void attention_residual_heads_in_lanes_avx2(const float* qkv_rows, const float* x, float* out, int64_t frames,
                                            int64_t J, int64_t heads, int64_t head_dim);
void attention_backward_avx2(const float* grad_out, const float* qkv, const float* out,
                             const float* lse, float* grad_qkv, const AttentionShape& s);
void winograd_input_transform_avx2(const float* x, float* x_t, const WinogradPlan& plan,
                                   const QkvGeometry& g, int64_t tiles);
void winograd_output_transform_avx2(const float* products, const float* bias, float* y,
                                    const WinogradPlan& plan, const QkvGeometry& g, int64_t tiles,
                                    int64_t n0, int64_t samples);
void gelu_inplace_avx2(float* data, int64_t n);
#endif

}  // namespace convformer_fast::cpu
