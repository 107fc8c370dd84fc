// CPU kernels of convformer_fast::attention and its backward (fp32, fp64): per head
//   O = softmax(Q K^T / sqrt(d_head)) V          (paper eq. 7)
// for qkv (3, N, h, S, d_head) as written by qkv_projection, with the heads merged straight
// into out (N, S, h * d_head), and the row log-sum-exp saved for the backward.
//
// One work item is one (sample, head): its S x S scores live in a per-thread buffer (at most
// S = 351 frames -> 481 KiB in fp32), the softmax is max-subtracted and computed in place,
// and nothing S x S reaches memory outside that buffer. Items run in parallel over
// batch x heads. Large products go to BLAS, the thousands of tiny spatial ones
// (S = 17, d_head = 4) to plain loops (see gemm.h).
//
// Backward (flash-attention style, recomputing P from the saved log-sum-exp):
//   P = exp(scale * Q K^T - lse),  D_i = sum_e dO_ie O_ie
//   dV = P^T dO,  dS = P * (dO V^T - D) * scale,  dQ = dS K,  dK = dS^T Q
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "cpu/fast_exp.h"
#include "cpu/gemm.h"
#include "cpu/scratch.h"

namespace convformer_fast::cpu {
namespace {

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

AttentionShape attention_shape(const char* op, const at::Tensor& qkv) {
  TORCH_CHECK_VALUE(qkv.dim() == 5 && qkv.size(0) == 3, op,
                    ": qkv must be (3, N, h, S, d_head) as written by qkv_projection, got ",
                    qkv.sizes());
  TORCH_CHECK_VALUE(qkv.scalar_type() == at::kFloat || qkv.scalar_type() == at::kDouble, op,
                    ": the CPU kernels support float32 and float64, got ", qkv.scalar_type());
  return {qkv.size(1), qkv.size(2), qkv.size(3), qkv.size(4)};
}

// Products of one head. Spatial heads are tiny (S = 17, d = 4): looping over the key index
// innermost against K^T keeps those loops vectorisable; larger heads go to BLAS.
bool is_tiny(const AttentionShape& s) {
  return s.tokens * s.tokens * s.head_dim <= kSmallGemmMacs;
}

// scores[i][j] = scale * sum_e q[i][e] * k[j][e]   (q, k: S x d, contiguous)
template <typename T>
void head_scores(const T* q, const T* k, T* scores, T* k_t, T scale, const AttentionShape& s) {
  const int64_t S = s.tokens, dh = s.head_dim;
  if (!is_tiny(s)) {
    gemm<T>(false, true, S, S, dh, scale, q, dh, k, dh, 0, scores, S);
    return;
  }
  for (int64_t j = 0; j < S; ++j)
    for (int64_t e = 0; e < dh; ++e) k_t[e * S + j] = k[j * dh + e];
  for (int64_t i = 0; i < S; ++i) {
    T* row = scores + i * S;
    std::fill_n(row, S, T(0));
    for (int64_t e = 0; e < dh; ++e) {
      const T qe = scale * q[i * dh + e];
      const T* kt_row = k_t + e * S;
      for (int64_t j = 0; j < S; ++j) row[j] += qe * kt_row[j];
    }
  }
}

// Reductions over a row with 8 independent lanes combined in a fixed order: vectorisable
// without -ffast-math reassociation, and deterministic.
template <typename T>
T row_max(const T* row, int64_t n) {
  constexpr int kLanes = 8;
  T lanes[kLanes];
  for (int l = 0; l < kLanes; ++l) lanes[l] = row[0];
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] = row[j + l] > lanes[l] ? row[j + l] : lanes[l];
  for (; j < n; ++j) lanes[0] = row[j] > lanes[0] ? row[j] : lanes[0];
  T max = lanes[0];
  for (int l = 1; l < kLanes; ++l) max = lanes[l] > max ? lanes[l] : max;
  return max;  // a NaN in the row is skipped here but still poisons exp and the row sum
}

template <typename T>
T row_sum(const T* row, int64_t n) {
  constexpr int kLanes = 8;
  T lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += row[j + l];
  for (; j < n; ++j) lanes[0] += row[j];
  T sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += lanes[l];
  return sum;
}

// scores -> exp(scores - row max) in place, with each row's max and sum. Subtracting the
// max keeps exp from overflowing; a NaN score makes its whole row NaN.
template <typename T>
void exp_rows(T* scores, T* max_out, T* sum_out, int64_t S) {
  for (int64_t i = 0; i < S; ++i) {
    T* row = scores + i * S;
    const T max = row_max(row, S);
    for (int64_t j = 0; j < S; ++j) row[j] = fast_exp(row[j] - max);
    max_out[i] = max;
    sum_out[i] = row_sum(row, S);
  }
}

template <typename T>
void attention_forward(const T* qkv, T* out, T* lse, const AttentionShape& s) {
  const int64_t S = s.tokens, dh = s.head_dim, F = s.features();
  const T scale = T(1) / std::sqrt(static_cast<T>(dh));
  at::parallel_for(0, s.batch * s.heads, s.grain(), [&](int64_t begin, int64_t end) {
    T* scores = scratch<T, 0>(S * S);
    T* k_t = scratch<T, 1>(S * dh);
    T* max_of_row = scratch<T, 2>(S);
    T* sum_of_row = scratch<T, 3>(S);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / s.heads, head = item % s.heads;
      head_scores(qkv + s.qkv_offset(0, n, head), qkv + s.qkv_offset(1, n, head), scores, k_t, scale, s);
      exp_rows(scores, max_of_row, sum_of_row, S);
      T* o = out + n * S * F + head * dh;
      gemm<T>(false, false, S, dh, S, 1, scores, S, qkv + s.qkv_offset(2, n, head), dh, 0, o, F);
      T* lse_row = lse + item * S;
      for (int64_t i = 0; i < S; ++i) {
        const T inverse = T(1) / sum_of_row[i];
        for (int64_t e = 0; e < dh; ++e) o[i * F + e] *= inverse;
        lse_row[i] = max_of_row[i] + std::log(sum_of_row[i]);
      }
    }
  });
}

template <typename T>
void attention_backward(const T* grad_out, const T* qkv, const T* out, const T* lse, T* grad_qkv,
                        const AttentionShape& s) {
  const int64_t S = s.tokens, dh = s.head_dim, F = s.features();
  const T scale = T(1) / std::sqrt(static_cast<T>(dh));
  at::parallel_for(0, s.batch * s.heads, s.grain(), [&](int64_t begin, int64_t end) {
    T* probs = scratch<T, 0>(S * S);
    T* k_t = scratch<T, 1>(S * dh);
    T* grad_scores = scratch<T, 4>(S * S);
    T* row_dot = scratch<T, 2>(S);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / s.heads, head = item % s.heads;
      const T* q = qkv + s.qkv_offset(0, n, head);
      const T* k = qkv + s.qkv_offset(1, n, head);
      const T* v = qkv + s.qkv_offset(2, n, head);
      const T* d_out = grad_out + n * S * F + head * dh;
      const T* o = out + n * S * F + head * dh;
      const T* lse_row = lse + item * S;
      head_scores(q, k, probs, k_t, scale, s);
      for (int64_t i = 0; i < S; ++i) {
        T* row = probs + i * S;
        for (int64_t j = 0; j < S; ++j) row[j] = fast_exp(row[j] - lse_row[i]);
        T dot = 0;
        for (int64_t e = 0; e < dh; ++e) dot += d_out[i * F + e] * o[i * F + e];
        row_dot[i] = dot;
      }
      gemm<T>(true, false, S, dh, S, 1, probs, S, d_out, F, 0, grad_qkv + s.qkv_offset(2, n, head), dh);
      gemm<T>(false, true, S, S, dh, 1, d_out, F, v, dh, 0, grad_scores, S);
      for (int64_t i = 0; i < S; ++i) {
        const T* p = probs + i * S;
        T* ds = grad_scores + i * S;
        for (int64_t j = 0; j < S; ++j) ds[j] = p[j] * (ds[j] - row_dot[i]) * scale;
      }
      gemm<T>(false, false, S, dh, S, 1, grad_scores, S, k, dh, 0, grad_qkv + s.qkv_offset(0, n, head), dh);
      gemm<T>(true, false, S, dh, S, 1, grad_scores, S, q, dh, 0, grad_qkv + s.qkv_offset(1, n, head), dh);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& qkv_in) {
  const auto s = attention_shape("attention", qkv_in);
  const at::Tensor qkv = qkv_in.contiguous();
  at::Tensor out = at::empty({s.batch, s.tokens, s.features()}, qkv.options());
  at::Tensor lse = at::empty({s.batch, s.heads, s.tokens}, qkv.options());
  if (out.numel() == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "attention_cpu", [&] {
    attention_forward(qkv.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                      lse.mutable_data_ptr<scalar_t>(), s);
  });
  return {out, lse};
}

at::Tensor attention_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& qkv_in,
                                  const at::Tensor& out_in, const at::Tensor& lse_in) {
  const auto s = attention_shape("attention_backward", qkv_in);
  const std::vector<int64_t> out_shape{s.batch, s.tokens, s.features()};
  TORCH_CHECK_VALUE(grad_out_in.sizes() == at::IntArrayRef(out_shape) &&
                        out_in.sizes() == at::IntArrayRef(out_shape),
                    "attention_backward: grad_out and out must be ", at::IntArrayRef(out_shape),
                    ", got ", grad_out_in.sizes(), " and ", out_in.sizes());
  TORCH_CHECK_VALUE(lse_in.sizes() == at::IntArrayRef({s.batch, s.heads, s.tokens}),
                    "attention_backward: lse must be (N, h, S) = ", at::IntArrayRef({s.batch, s.heads, s.tokens}),
                    ", got ", lse_in.sizes());
  const auto dtype = qkv_in.scalar_type();
  const at::Tensor qkv = qkv_in.contiguous(), out = out_in.to(dtype).contiguous();
  const at::Tensor grad_out = grad_out_in.to(dtype).contiguous(), lse = lse_in.to(dtype).contiguous();
  at::Tensor grad_qkv = at::empty_like(qkv);
  if (grad_qkv.numel() == 0) return grad_qkv;
  AT_DISPATCH_FLOATING_TYPES(dtype, "attention_backward_cpu", [&] {
    attention_backward(grad_out.const_data_ptr<scalar_t>(), qkv.const_data_ptr<scalar_t>(),
                       out.const_data_ptr<scalar_t>(), lse.const_data_ptr<scalar_t>(),
                       grad_qkv.mutable_data_ptr<scalar_t>(), s);
  });
  return grad_qkv;
}

}  // namespace

TORCH_LIBRARY_IMPL(convformer_fast, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
}

}  // namespace convformer_fast::cpu
