// Per-head attention kernels, templated on the element type. This file is included INSIDE a
// namespace by attention_kernel.cpp (baseline) and attention_kernel_avx2.cpp (AVX2 + FMA),
// after every header it needs, so it has no #include of its own and no include guard.
// Needs: attention.h, gemm.h, scratch.h, <ATen/Parallel.h>, <cmath>, and fast_exp.h
// included in the same namespace just before it.

// Products of one head. Spatial heads are tiny (S = 17, d = 4): looping over the key index
// innermost against K^T keeps those loops vectorisable; larger heads go to BLAS.
bool is_tiny(const AttentionShape& s) {
  return s.tokens * s.tokens * s.head_dim <= kSmallGemmMacs;
}

// scores[i][j] = scale * sum_e q[i][e] * k[j][e]   (q, k: one head's S x d inputs)
template <typename T>
void head_scores(const T* q, const T* k, T* scores, T* k_t, T scale, const AttentionShape& s) {
  const int64_t S = s.tokens, dh = s.head_dim;
  const bool t = s.head_transposed();
  if (!is_tiny(s)) {
    gemm<T>(t, !t, S, S, dh, scale, q, s.head_ld(), k, s.head_ld(), 0, scores, S);
    return;
  }
  for (int64_t j = 0; j < S; ++j)
    for (int64_t e = 0; e < dh; ++e) k_t[e * S + j] = k[s.at(j, e)];
  for (int64_t i = 0; i < S; ++i) {
    T* row = scores + i * S;
    std::fill_n(row, S, T(0));
    for (int64_t e = 0; e < dh; ++e) {
      const T qe = scale * q[s.at(i, e)];
      const T* kt_row = k_t + e * S;
      for (int64_t j = 0; j < S; ++j) row[j] += qe * kt_row[j];
    }
  }
}

// out[i][:] = sum_j p[i][j] * v[j][:]   (p: S x S, v: one head's S x d input, out rows ld_out apart)
// v_rows: scratch of S x d, where a tiny head's V is gathered row-major so that the inner
// loop over d is contiguous (the spatial conv view stores V with the tokens contiguous).
template <typename T>
void head_values(const T* p, const T* v, T* out, int64_t ld_out, T* v_rows, const AttentionShape& s) {
  const int64_t S = s.tokens, dh = s.head_dim;
  if (!is_tiny(s)) {
    gemm<T>(false, s.head_transposed(), S, dh, S, 1, p, S, v, s.head_ld(), 0, out, ld_out);
    return;
  }
  for (int64_t j = 0; j < S; ++j)
    for (int64_t e = 0; e < dh; ++e) v_rows[j * dh + e] = v[s.at(j, e)];
  for (int64_t i = 0; i < S; ++i) {
    T* o = out + i * ld_out;
    std::fill_n(o, dh, T(0));
    for (int64_t j = 0; j < S; ++j) {
      const T pij = p[i * S + j];
      const T* vj = v_rows + j * dh;
      for (int64_t e = 0; e < dh; ++e) o[e] += pij * vj[e];
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
    T* v_rows = scratch<T, 5>(S * dh);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / s.heads, head = item % s.heads;
      head_scores(qkv + s.in_offset(0, n, head), qkv + s.in_offset(1, n, head), scores, k_t, scale, s);
      exp_rows(scores, max_of_row, sum_of_row, S);
      T* o = out + n * S * F + head * dh;
      head_values(scores, qkv + s.in_offset(2, n, head), o, F, v_rows, s);
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
      const T* q = qkv + s.in_offset(0, n, head);
      const T* k = qkv + s.in_offset(1, n, head);
      const T* v = qkv + s.in_offset(2, n, head);
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
      const bool t = s.head_transposed();
      const int64_t ld = s.head_ld();
      gemm<T>(true, false, S, dh, S, 1, probs, S, d_out, F, 0, grad_qkv + s.out_offset(2, n, head), dh);
      gemm<T>(false, !t, S, S, dh, 1, d_out, F, v, ld, 0, grad_scores, S);
      for (int64_t i = 0; i < S; ++i) {
        const T* p = probs + i * S;
        T* ds = grad_scores + i * S;
        for (int64_t j = 0; j < S; ++j) ds[j] = p[j] * (ds[j] - row_dot[i]) * scale;
      }
      gemm<T>(false, t, S, dh, S, 1, grad_scores, S, k, ld, 0, grad_qkv + s.out_offset(0, n, head), dh);
      gemm<T>(true, t, S, dh, S, 1, grad_scores, S, q, ld, 0, grad_qkv + s.out_offset(1, n, head), dh);
    }
  });
}
