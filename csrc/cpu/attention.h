// Shared declarations of the CPU attention kernels (attention_kernel.cpp), whose per-head
// code (attention_impl.h) is compiled twice: for the baseline CPU and, on x86-64, for
// AVX2 + FMA (attention_kernel_avx2.cpp), chosen at run time. The extension is built
// without -march flags so that it loads on any CPU of its architecture.
#pragma once

#include <algorithm>
#include <cstdint>

namespace convformer_fast::cpu {

struct AttentionShape {
  int64_t batch, heads, tokens, head_dim;
  int64_t features() const { return heads * head_dim; }
  int64_t head_size() const { return tokens * head_dim; }
  // Offset of Q (which = 0), K (1) or V (2) of one (n, head) inside qkv.
  int64_t qkv_offset(int64_t which, int64_t n, int64_t head) const {
    return ((which * batch + n) * heads + head) * head_size();
  }
  // Work items per parallel_for grain: enough small problems to amortise scheduling.
  int64_t grain() const {
    return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, tokens * tokens * head_dim));
  }
};


#if defined(__x86_64__)
#define CONVFORMER_FAST_HAVE_AVX2_KERNELS 1
bool cpu_supports_avx2_fma();
void attention_forward_avx2(const float* qkv, float* out, float* lse, const AttentionShape& s);
void attention_backward_avx2(const float* grad_out, const float* qkv, const float* out,
                             const float* lse, float* grad_qkv, const AttentionShape& s);
#endif

}  // namespace convformer_fast::cpu
