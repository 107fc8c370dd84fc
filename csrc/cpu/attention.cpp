// CPU kernels of convformer_fast::attention and its backward (fp32, fp64): per head
//   O = softmax(Q K^T / sqrt(d_head)) V          (paper eq. 7)
// for qkv (3, N, h, S, d_head) as written by qkv_projection, with the heads merged straight
// into out (N, S, h * d_head), and the row log-sum-exp saved for the backward.
//
// One work item is one (sample, head): its S x S scores live in a per-thread buffer (at most
// S = 351 frames -> 481 KiB in fp32), the softmax is max-subtracted and computed in place,
// and nothing S x S reaches memory outside that buffer. Items run in parallel over
// batch x heads. Long heads put their products on BLAS; the thousands of short spatial ones
// (S = 17, d_head = 4) run as query-major vector loops. The per-head code lives in
// attention_impl.h, built for the baseline CPU here and for AVX2 + FMA in
// kernels_avx2.cpp; fp32 takes the AVX2 build where the CPU has it.
//
// Backward (flash-attention style, recomputing P from the saved log-sum-exp):
//   P = exp(scale * Q K^T - lse),  D_i = sum_e dO_ie O_ie
//   dV = P^T dO,  dS = P * (dO V^T - D) * scale,  dQ = dS K,  dK = dS^T Q
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "cpu/attention.h"
#include "cpu/avx2.h"
#include "cpu/gemm.h"
#include "cpu/scratch.h"

namespace convformer_fast::cpu {
namespace baseline {
#include "cpu/fast_exp.h"
#include "cpu/simd.h"
#include "cpu/attention_impl.h"
}  // namespace baseline

namespace {

AttentionShape attention_shape(const char* op, const at::Tensor& qkv) {
  TORCH_CHECK_VALUE(qkv.dim() == 5 && qkv.size(0) == 3, op,
                    ": qkv must be (3, N, h, S, d_head) as written by qkv_projection, got ",
                    qkv.sizes());
  TORCH_CHECK_VALUE(qkv.scalar_type() == at::kFloat || qkv.scalar_type() == at::kDouble, op,
                    ": the CPU kernels support float32 and float64, got ", qkv.scalar_type());
  return {qkv.size(1), qkv.size(2), qkv.size(3), qkv.size(4), qkv.stride(0), qkv.stride(1),
          qkv.stride(2), qkv.stride(3), qkv.stride(4)};
}

// qkv as the kernels read it: as given when each head's (S, d) matrix has a unit stride
// (qkv_projection's output always has), else a contiguous copy.
at::Tensor readable_qkv(const at::Tensor& qkv) {
  return (qkv.stride(4) == 1 || qkv.stride(3) == 1) ? qkv : qkv.contiguous();
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& qkv_in) {
  attention_shape("attention", qkv_in);  // validates before any copy
  const at::Tensor qkv = readable_qkv(qkv_in);
  const auto s = attention_shape("attention", qkv);
  at::Tensor out = at::empty({s.batch, s.tokens, s.features()}, qkv.options());
  at::Tensor lse = at::empty({s.batch, s.heads, s.tokens}, qkv.options());
  if (out.numel() == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "attention_cpu", [&] {
    run_attention_forward(qkv.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                      lse.mutable_data_ptr<scalar_t>(), s);
  });
  return {out, lse};
}

at::Tensor attention_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& qkv_in,
                                  const at::Tensor& out_in, const at::Tensor& lse_in) {
  attention_shape("attention_backward", qkv_in);  // validates before any copy
  const at::Tensor qkv = readable_qkv(qkv_in);
  const auto s = attention_shape("attention_backward", qkv);
  const std::vector<int64_t> out_shape{s.batch, s.tokens, s.features()};
  TORCH_CHECK_VALUE(grad_out_in.sizes() == at::IntArrayRef(out_shape) &&
                        out_in.sizes() == at::IntArrayRef(out_shape),
                    "attention_backward: grad_out and out must be ", at::IntArrayRef(out_shape),
                    ", got ", grad_out_in.sizes(), " and ", out_in.sizes());
  TORCH_CHECK_VALUE(lse_in.sizes() == at::IntArrayRef({s.batch, s.heads, s.tokens}),
                    "attention_backward: lse must be (N, h, S) = ", at::IntArrayRef({s.batch, s.heads, s.tokens}),
                    ", got ", lse_in.sizes());
  const auto dtype = qkv_in.scalar_type();
  const at::Tensor out = out_in.to(dtype).contiguous();
  const at::Tensor grad_out = grad_out_in.to(dtype).contiguous(), lse = lse_in.to(dtype).contiguous();
  at::Tensor grad_qkv = at::empty(qkv.sizes(), qkv.options());  // contiguous
  if (grad_qkv.numel() == 0) return grad_qkv;
  AT_DISPATCH_FLOATING_TYPES(dtype, "attention_backward_cpu", [&] {
    run_attention_backward(grad_out.const_data_ptr<scalar_t>(), qkv.const_data_ptr<scalar_t>(),
                 out.const_data_ptr<scalar_t>(), lse.const_data_ptr<scalar_t>(),
                 grad_qkv.mutable_data_ptr<scalar_t>(), s);
  });
  return grad_qkv;
}

}  // namespace

template <typename T>
void run_attention_forward(const T* qkv, T* out, T* lse, const AttentionShape& s) {
#if defined(CONVFORMER_FAST_HAVE_AVX2_KERNELS)
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_supports_avx2_fma()) return attention_forward_avx2(qkv, out, lse, s);
  }
#endif
  baseline::attention_forward(qkv, out, lse, s);
}

template <typename T>
void run_attention_backward(const T* grad_out, const T* qkv, const T* out, const T* lse, T* grad_qkv,
                            const AttentionShape& s) {
#if defined(CONVFORMER_FAST_HAVE_AVX2_KERNELS)
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_supports_avx2_fma()) return attention_backward_avx2(grad_out, qkv, out, lse, grad_qkv, s);
  }
#endif
  baseline::attention_backward(grad_out, qkv, out, lse, grad_qkv, s);
}

template <typename T>
void run_attention_residual_heads_in_lanes(const T* qkv_rows, const T* x, T* out, int64_t frames, int64_t J,
                                           int64_t heads, int64_t head_dim) {
#if defined(CONVFORMER_FAST_HAVE_AVX2_KERNELS)
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_supports_avx2_fma())
      return attention_residual_heads_in_lanes_avx2(qkv_rows, x, out, frames, J, heads, head_dim);
  }
#endif
  baseline::attention_residual_heads_in_lanes(qkv_rows, x, out, frames, J, heads, head_dim);
}

template void run_attention_residual_heads_in_lanes<float>(const float*, const float*, float*, int64_t, int64_t,
                                                           int64_t, int64_t);
template void run_attention_residual_heads_in_lanes<double>(const double*, const double*, double*, int64_t,
                                                            int64_t, int64_t, int64_t);
template void run_attention_forward<float>(const float*, float*, float*, const AttentionShape&);
template void run_attention_forward<double>(const double*, double*, double*, const AttentionShape&);

TORCH_LIBRARY_IMPL(convformer_fast, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
}

}  // namespace convformer_fast::cpu
