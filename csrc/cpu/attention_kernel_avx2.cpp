// The per-head attention kernels (attention_impl.h) compiled for AVX2 + FMA: 8-wide exp
// and fused multiply-adds in the tiny spatial heads and the softmax. Only the functions
// defined after the target pragma get AVX2, and they live in their own namespace, so
// nothing compiled here can stand in for baseline code on a CPU without AVX2.
#if defined(__x86_64__)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "cpu/attention.h"
#include "cpu/gemm.h"
#include "cpu/scratch.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace convformer_fast::cpu {
namespace avx2 {
#include "cpu/fast_exp.h"
#include "cpu/attention_impl.h"
}  // namespace avx2

void attention_forward_avx2(const float* qkv, float* out, float* lse, const AttentionShape& s) {
  avx2::attention_forward(qkv, out, lse, s);
}

void attention_backward_avx2(const float* grad_out, const float* qkv, const float* out,
                             const float* lse, float* grad_qkv, const AttentionShape& s) {
  avx2::attention_backward(grad_out, qkv, out, lse, grad_qkv, s);
}

}  // namespace convformer_fast::cpu

#pragma GCC pop_options

namespace convformer_fast::cpu {
bool cpu_supports_avx2_fma() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
}
}  // namespace convformer_fast::cpu

#endif  // __x86_64__
