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

// Dot product with kLanes independent partial sums combined in a fixed order: vectorisable
// without -ffast-math reassociation, and deterministic.
template <typename T>
T lane_dot(const T* a, const T* b, int64_t n) {
  constexpr int kDotLanes = 8;
  T lanes[kDotLanes] = {};
  int64_t e = 0;
  for (; e + kDotLanes <= n; e += kDotLanes)
    for (int l = 0; l < kDotLanes; ++l) lanes[l] += a[e + l] * b[e + l];
  for (; e < n; ++e) lanes[0] += a[e] * b[e];
  T sum = 0;
  for (int l = 0; l < kDotLanes; ++l) sum += lanes[l];
  return sum;
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
  if (!t) {  // rows of d contiguous (temporal): one contiguous dot product per score
    const int64_t ld = s.head_ld();
    for (int64_t i = 0; i < S; ++i)
      for (int64_t j = 0; j < S; ++j) scores[i * S + j] = scale * lane_dot(q + i * ld, k + j * ld, dh);
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

// Tiny heads, kLanes at a time. A spatial head (S = 17, d = 4) is too small for any loop
// inside it to fill a vector register, so kLanes independent (sample, head) items are
// interleaved instead: every array below is [...][kLanes] and every inner loop runs over
// the lanes with a constant trip count, which the compiler turns into whole vectors. Each
// query row is finished (scores, max, exp, sum, P V) before the next, so only one row of
// scores exists at a time. Items past `end` repeat the last item; their results are dropped.
constexpr int64_t kLanes = 8;

// Lanes pay off when a head is too narrow to vectorise on its own; wide tiny heads
// (T = 9 frames, d = 68) vectorise along d instead.
bool use_lanes(const AttentionShape& s) { return is_tiny(s) && s.head_dim < kLanes; }

struct LaneGroup {
  int64_t first, count;  // items first .. first + count - 1 are real, count <= kLanes
  int64_t item(int64_t lane) const { return first + std::min(lane, count - 1); }
};

// dst[i][e][lane] = one head's (S, d) matrix `which` of each lane's item.
template <typename T>
void gather_lanes(const T* qkv, int64_t which, const LaneGroup& g, T* dst, const AttentionShape& s) {
  const int64_t S = s.tokens, dh = s.head_dim;
  for (int64_t lane = 0; lane < kLanes; ++lane) {
    const int64_t item = g.item(lane);
    const T* src = qkv + s.in_offset(which, item / s.heads, item % s.heads);
    for (int64_t i = 0; i < S; ++i)
      for (int64_t e = 0; e < dh; ++e) dst[(i * dh + e) * kLanes + lane] = src[s.at(i, e)];
  }
}

// dst[i][e][lane] = rows of the head-merged (N, S, h*d) tensor `merged` (out or grad_out).
template <typename T>
void gather_merged_lanes(const T* merged, const LaneGroup& g, T* dst, const AttentionShape& s) {
  const int64_t S = s.tokens, dh = s.head_dim, F = s.features();
  for (int64_t lane = 0; lane < kLanes; ++lane) {
    const int64_t item = g.item(lane);
    const T* src = merged + (item / s.heads) * S * F + (item % s.heads) * dh;
    for (int64_t i = 0; i < S; ++i)
      for (int64_t e = 0; e < dh; ++e) dst[(i * dh + e) * kLanes + lane] = src[i * F + e];
  }
}

// row[j][lane] = scale * sum_e a[e][lane] * b[j][e][lane]: one query row against all keys.
template <typename T>
void lane_dots(const T* a, const T* b, T scale, T* row, int64_t S, int64_t dh) {
  for (int64_t j = 0; j < S; ++j) {
    T acc[kLanes] = {};
    const T* bj = b + j * dh * kLanes;
    for (int64_t e = 0; e < dh; ++e)
      for (int64_t l = 0; l < kLanes; ++l) acc[l] += a[e * kLanes + l] * bj[e * kLanes + l];
    for (int64_t l = 0; l < kLanes; ++l) row[j * kLanes + l] = scale * acc[l];
  }
}

template <typename T>
void attention_forward_lanes(const T* qkv, T* out, T* lse, const AttentionShape& s, T scale) {
  const int64_t S = s.tokens, dh = s.head_dim, F = s.features(), items = s.batch * s.heads;
  const int64_t groups = (items + kLanes - 1) / kLanes;
  at::parallel_for(0, groups, std::max<int64_t>(1, s.grain() / kLanes), [&](int64_t begin, int64_t end) {
    T* q = scratch<T, 0>(S * dh * kLanes);
    T* k = scratch<T, 1>(S * dh * kLanes);
    T* v = scratch<T, 2>(S * dh * kLanes);
    T* row = scratch<T, 3>(S * kLanes);
    T* acc = scratch<T, 4>(dh * kLanes);
    for (int64_t group = begin; group < end; ++group) {
      const LaneGroup g{group * kLanes, std::min(kLanes, items - group * kLanes)};
      gather_lanes(qkv, 0, g, q, s);
      gather_lanes(qkv, 1, g, k, s);
      gather_lanes(qkv, 2, g, v, s);
      for (int64_t i = 0; i < S; ++i) {
        lane_dots(q + i * dh * kLanes, k, scale, row, S, dh);
        T max[kLanes], sum[kLanes] = {};
        for (int64_t l = 0; l < kLanes; ++l) max[l] = row[l];
        for (int64_t j = 1; j < S; ++j)
          for (int64_t l = 0; l < kLanes; ++l) max[l] = row[j * kLanes + l] > max[l] ? row[j * kLanes + l] : max[l];
        for (int64_t j = 0; j < S; ++j)
          for (int64_t l = 0; l < kLanes; ++l) {
            const T p = fast_exp(row[j * kLanes + l] - max[l]);
            row[j * kLanes + l] = p;
            sum[l] += p;
          }
        std::fill_n(acc, dh * kLanes, T(0));
        for (int64_t j = 0; j < S; ++j)
          for (int64_t e = 0; e < dh; ++e)
            for (int64_t l = 0; l < kLanes; ++l) acc[e * kLanes + l] += row[j * kLanes + l] * v[(j * dh + e) * kLanes + l];
        for (int64_t lane = 0; lane < g.count; ++lane) {
          const int64_t item = g.first + lane;
          T* o = out + ((item / s.heads) * S + i) * F + (item % s.heads) * dh;
          const T inverse = T(1) / sum[lane];
          for (int64_t e = 0; e < dh; ++e) o[e] = acc[e * kLanes + lane] * inverse;
          lse[item * S + i] = max[lane] + std::log(sum[lane]);
        }
      }
    }
  });
}

// The backward of attention_forward_lanes, one query row i at a time:
//   P_ij = exp(s_ij - lse_i), dV_j += P_ij dO_i, dS_ij = P_ij (dO_i . V_j - D_i) scale,
//   dQ_i = sum_j dS_ij K_j, dK_j += dS_ij Q_i.
template <typename T>
void attention_backward_lanes(const T* grad_out, const T* qkv, const T* out, const T* lse,
                              T* grad_qkv, const AttentionShape& s, T scale) {
  const int64_t S = s.tokens, dh = s.head_dim, items = s.batch * s.heads, head_size = S * dh * kLanes;
  const int64_t groups = (items + kLanes - 1) / kLanes;
  at::parallel_for(0, groups, std::max<int64_t>(1, s.grain() / kLanes), [&](int64_t begin, int64_t end) {
    T* q = scratch<T, 0>(head_size);
    T* k = scratch<T, 1>(head_size);
    T* v = scratch<T, 2>(head_size);
    T* row = scratch<T, 3>(S * kLanes);
    T* d_out = scratch<T, 4>(head_size);
    T* o = scratch<T, 5>(head_size);
    T* grads = scratch<T, 6>(3 * head_size);  // dQ, dK, dV
    T* grad_row = scratch<T, 7>(S * kLanes);
    for (int64_t group = begin; group < end; ++group) {
      const LaneGroup g{group * kLanes, std::min(kLanes, items - group * kLanes)};
      gather_lanes(qkv, 0, g, q, s);
      gather_lanes(qkv, 1, g, k, s);
      gather_lanes(qkv, 2, g, v, s);
      gather_merged_lanes(grad_out, g, d_out, s);
      gather_merged_lanes(out, g, o, s);
      std::fill_n(grads, 3 * head_size, T(0));
      T* dq = grads;
      T* dk = grads + head_size;
      T* dv = grads + 2 * head_size;
      for (int64_t i = 0; i < S; ++i) {
        const T* qi = q + i * dh * kLanes;
        const T* doi = d_out + i * dh * kLanes;
        T row_lse[kLanes], row_dot[kLanes] = {};
        for (int64_t l = 0; l < kLanes; ++l) row_lse[l] = lse[g.item(l) * S + i];
        for (int64_t e = 0; e < dh; ++e)
          for (int64_t l = 0; l < kLanes; ++l) row_dot[l] += doi[e * kLanes + l] * o[(i * dh + e) * kLanes + l];
        lane_dots(qi, k, scale, row, S, dh);
        lane_dots(doi, v, T(1), grad_row, S, dh);
        for (int64_t j = 0; j < S; ++j)
          for (int64_t l = 0; l < kLanes; ++l) {
            const T p = fast_exp(row[j * kLanes + l] - row_lse[l]);
            row[j * kLanes + l] = p;
            grad_row[j * kLanes + l] = p * (grad_row[j * kLanes + l] - row_dot[l]) * scale;
          }
        T* dqi = dq + i * dh * kLanes;
        for (int64_t j = 0; j < S; ++j) {
          const T* pj = row + j * kLanes;
          const T* dsj = grad_row + j * kLanes;
          for (int64_t e = 0; e < dh; ++e)
            for (int64_t l = 0; l < kLanes; ++l) {
              const int64_t at = (j * dh + e) * kLanes + l;
              dv[at] += pj[l] * doi[e * kLanes + l];
              dk[at] += dsj[l] * qi[e * kLanes + l];
              dqi[e * kLanes + l] += dsj[l] * k[at];
            }
        }
      }
      for (int64_t which = 0; which < 3; ++which)
        for (int64_t lane = 0; lane < g.count; ++lane) {
          const int64_t item = g.first + lane;
          T* dst = grad_qkv + s.out_offset(which, item / s.heads, item % s.heads);
          const T* src = grads + which * head_size;
          for (int64_t ie = 0; ie < S * dh; ++ie) dst[ie] = src[ie * kLanes + lane];
        }
    }
  });
}

template <typename T>
void attention_forward(const T* qkv, T* out, T* lse, const AttentionShape& s) {
  const int64_t S = s.tokens, dh = s.head_dim, F = s.features();
  const T scale = T(1) / std::sqrt(static_cast<T>(dh));
  if (use_lanes(s)) return attention_forward_lanes(qkv, out, lse, s, scale);
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
  if (use_lanes(s)) return attention_backward_lanes(grad_out, qkv, out, lse, grad_qkv, s, scale);
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
