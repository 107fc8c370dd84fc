// The per-capability kernels (attention_impl.h, winograd_impl.h, gelu_impl.h) compiled for AVX2 + FMA:
// 8-float vectors (simd.h) and fused multiply-adds. Only the functions defined after the
// target pragma get AVX2, and they live in their own namespace, so nothing compiled here
// can stand in for baseline code on a CPU without AVX2. Entry points: avx2.h.
#if defined(__x86_64__)

#include "cpu/avx2.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/scratch.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace convformer_fast::cpu {
namespace avx2 {
#define CONVFORMER_FAST_VEC_BYTES 32
#include "cpu/fast_exp.h"
#include "cpu/simd.h"
#include "cpu/attention_impl.h"
#include "cpu/winograd_impl.h"
#include "cpu/gelu_impl.h"
#undef CONVFORMER_FAST_VEC_BYTES
}  // namespace avx2

void attention_forward_avx2(const float* qkv, float* out, float* lse, const AttentionShape& s) {
  avx2::attention_forward(qkv, out, lse, s);
}

void attention_residual_heads_in_lanes_avx2(const float* qkv_rows, const float* x, float* out, int64_t frames,
                                            int64_t J, int64_t heads, int64_t head_dim) {
  avx2::attention_residual_heads_in_lanes(qkv_rows, x, out, frames, J, heads, head_dim);
}

void attention_backward_avx2(const float* grad_out, const float* qkv, const float* out,
                             const float* lse, float* grad_qkv, const AttentionShape& s) {
  avx2::attention_backward(grad_out, qkv, out, lse, grad_qkv, s);
}

void winograd_input_transform_avx2(const float* x, float* x_t, const WinogradPlan& plan,
                                   const QkvGeometry& g, int64_t tiles) {
  avx2::input_transform(x, x_t, plan, g, tiles);
}

void winograd_output_transform_avx2(const float* products, const float* bias, float* y,
                                    const WinogradPlan& plan, const QkvGeometry& g, int64_t tiles,
                                    int64_t n0, int64_t samples) {
  avx2::output_transform(products, bias, y, plan, g, tiles, n0, samples);
}

void gelu_inplace_avx2(float* data, int64_t n) { avx2::gelu_inplace(data, n); }

}  // namespace convformer_fast::cpu

#pragma GCC pop_options

namespace convformer_fast::cpu {
bool cpu_supports_avx2_fma() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
}
}  // namespace convformer_fast::cpu

#endif  // __x86_64__
