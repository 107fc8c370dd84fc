// Shared declarations of the CPU attention kernels (attention.cpp), whose per-head
// code (attention_impl.h) is compiled twice: for the baseline CPU and, on x86-64, for
// AVX2 + FMA (kernels_avx2.cpp, see avx2.h), chosen at run time.
#pragma once

#include <algorithm>
#include <cstdint>

namespace convformer_fast::cpu {

// qkv (3, N, h, S, d) may be any strided view in which one head's (S, d) matrix has a unit
// stride along tokens or along d: qkv_projection returns Q, K, V as such a view of its
// convolution output (temporal: rows of d; spatial: columns of S), so no copy is made.
struct AttentionShape {
  int64_t batch, heads, tokens, head_dim;
  int64_t stride_which, stride_batch, stride_head, stride_token, stride_dim;  // of the input qkv
  int64_t features() const { return heads * head_dim; }
  // Offset of Q (which = 0), K (1) or V (2) of one (n, head) inside the input qkv.
  int64_t in_offset(int64_t which, int64_t n, int64_t head) const {
    return which * stride_which + n * stride_batch + head * stride_head;
  }
  // The same inside a contiguous (3, N, h, S, d) tensor (the gradient).
  int64_t out_offset(int64_t which, int64_t n, int64_t head) const {
    return ((which * batch + n) * heads + head) * tokens * head_dim;
  }
  // One head's (S, d) input matrix as a row-major GEMM operand: stored transposed (as
  // (d, S)) when its unit stride runs along the tokens; leading dimension of the storage.
  bool head_transposed() const { return stride_dim != 1; }
  int64_t head_ld() const { return head_transposed() ? stride_dim : stride_token; }
  int64_t at(int64_t i, int64_t e) const { return i * stride_token + e * stride_dim; }
};

// softmax(Q K^T / sqrt(d)) V of every (sample, head) of qkv into out (N, S, h*d), with the
// row log-sum-exp in lse (N, h, S) unless lse is null (inference: no backward to feed it);
// the CPU's best build (avx2.h). float and double.
template <typename T>
void run_attention_forward(const T* qkv, T* out, T* lse, const AttentionShape& s);

// The fused spatial block's attention + residual with the heads in vector lanes, for
// `frames` frames of J joints; qkv_rows (frames J, 3F) in [which][e][head] column order
// (attention_impl.h). Single-threaded (called per chunk). heads % kHeadLanes == 0.
constexpr int64_t kHeadLanes = 8;  // a multiple of every build's lanes per vector
template <typename T>
void run_attention_residual_heads_in_lanes(const T* qkv_rows, const T* x, T* out, int64_t frames, int64_t J,
                                           int64_t heads, int64_t head_dim);

// Its gradient w.r.t. qkv into grad_qkv, a contiguous (3, N, h, S, d).
template <typename T>
void run_attention_backward(const T* grad_out, const T* qkv, const T* out, const T* lse, T* grad_qkv,
                            const AttentionShape& s);


}  // namespace convformer_fast::cpu
