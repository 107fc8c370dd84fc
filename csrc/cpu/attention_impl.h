// Per-head attention kernels, templated on the element type. This file is included INSIDE a
// namespace by attention.cpp (baseline) and kernels_avx2.cpp (AVX2 + FMA),
// after every header it needs, so it has no #include of its own and no include guard.
// Needs: attention.h, gemm.h, scratch.h, <ATen/Parallel.h>, <cmath>, <cstring>, <limits>, and
// fast_exp.h then simd.h included in the same namespace just before it.
//
// Two kernels per direction:
// * short heads (S <= kMaxShortTokens: the spatial heads, S = J = 15..17 with d_head = 4, and
//   the temporal heads of short windows) are computed "query-major": every vector lane holds
//   one query token, so scores, max, exp, sum and P V are whole-vector operations with no
//   horizontal reduction, and only one key's row of scores is live at a time in the
//   backward. The query axis is padded to P, a multiple of kVec, with zero queries whose
//   results are dropped.
// * long heads (temporal, S up to 351, d_head up to 128) put their S x S products on BLAS
//   and keep the S x S scores of one head in a per-thread buffer.
// Plus, for the fused spatial block (inference only), attention with the HEADS in vector
// lanes (attention_residual_heads_in_lanes below).

// Short heads pad their query axis to P = NV * kVec lanes (simd.h), NV a compile-time
// constant, so one row of P lanes is NV vector registers.
constexpr int64_t kMaxShortTokens = 128;

bool is_short(const AttentionShape& s) { return s.tokens <= kMaxShortTokens; }

// One work item: sample n's head `head`, and that head's Q, K and V inside qkv.
template <typename T>
struct HeadInputs {
  int64_t n, head;
  const T *q, *k, *v;
  HeadInputs(const T* qkv, const AttentionShape& s, int64_t item)
      : n(item / s.heads), head(item % s.heads), q(qkv + s.in_offset(0, n, head)),
        k(qkv + s.in_offset(1, n, head)), v(qkv + s.in_offset(2, n, head)) {}
};

// dst[e * P + i] = scale * src(i, e) for i < S, 0 for S <= i < P: one head's (S, d) matrix
// transposed so that tokens run along vector lanes; src(i, e) = src[i * token_stride + e * dim_stride].
template <typename T, int64_t P>
void gather_transposed(const T* src, int64_t token_stride, int64_t dim_stride, T scale, T* dst,
                       int64_t S, int64_t dh) {
  for (int64_t e = 0; e < dh; ++e) {
    T* row = dst + e * P;
    const T* col = src + e * dim_stride;
    if (token_stride == 1) {  // the spatial conv view: a head's tokens are contiguous
      for (int64_t i = 0; i < S; ++i) row[i] = scale * col[i];
    } else {
      for (int64_t i = 0; i < S; ++i) row[i] = scale * col[i * token_stride];
    }
    for (int64_t i = S; i < P; ++i) row[i] = T(0);
  }
}

// acc = sum_e m(j, e) * cols[e * P ...]: token j of K (or V) against every query lane.
template <typename T, int64_t NV>
void token_row(const T* m, int64_t j, const AttentionShape& s, const T* cols, Vec<T> (&acc)[NV]) {
  for (int64_t v = 0; v < NV; ++v) acc[v] = Vec<T>{};
  for (int64_t e = 0; e < s.head_dim; ++e) {
    const Vec<T> w = broadcast(m[s.at(j, e)]);
    const T* c = cols + e * NV * kVec;
    for (int64_t v = 0; v < NV; ++v) acc[v] += w * load(c + v * kVec);
  }
}

// token_row for tokens j and j + 1 at once: each loaded query vector feeds two independent
// FMA chains, so the loop is bound by the FMA units rather than by loads or FMA latency.
template <typename T, int64_t NV>
void token_row_pair(const T* m, int64_t j, const AttentionShape& s, const T* cols, Vec<T> (&acc0)[NV],
                    Vec<T> (&acc1)[NV]) {
  for (int64_t v = 0; v < NV; ++v) acc0[v] = acc1[v] = Vec<T>{};
  for (int64_t e = 0; e < s.head_dim; ++e) {
    const Vec<T> w0 = broadcast(m[s.at(j, e)]), w1 = broadcast(m[s.at(j + 1, e)]);
    const T* c = cols + e * NV * kVec;
    for (int64_t v = 0; v < NV; ++v) {
      const Vec<T> x = load(c + v * kVec);
      acc0[v] += w0 * x;
      acc1[v] += w1 * x;
    }
  }
}

// The forward of the short heads works on blocks of at most kMaxBlockVectors vectors of
// queries: softmax rows are independent, and a block's Q^T and scores (d_head x P and S x P,
// at most 32 KiB in fp32 at S = d_head = 128) then stay in L1. One padded row of all of a
// temporal head's 81 queries (d_head 68: 52 KiB) did not: its loads came from L2.
constexpr int64_t kMaxBlockVectors = 4;

// lse may be null (inference callers that have no backward to feed).
template <typename T, int64_t NV>
void attention_forward_short(const T* qkv, T* out, T* lse, const AttentionShape& s, T scale) {
  constexpr int64_t P = NV * kVec;  // query lanes per block
  const int64_t S = s.tokens, dh = s.head_dim, F = s.features();
  const int64_t grain = std::max<int64_t>(1, 4096 / (S * P * std::max<int64_t>(dh, 4)));
  at::parallel_for(0, s.batch * s.heads, grain, [&](int64_t begin, int64_t end) {
    T* q_cols = scratch<T, 0>(dh * P);  // scale * Q^T of the block's queries
    T* probs = scratch<T, 1>(S * P);    // probs[j][i]: query i against key j, then exp
    T* lanes = scratch<T, 2>(5 * P);    // 1 / sum, two output rows, max, sum
    for (int64_t item = begin; item < end; ++item) {
      const auto [n, head, q, k, v] = HeadInputs<T>(qkv, s, item);
      for (int64_t q0 = 0; q0 < S; q0 += P) {
        const int64_t rows = std::min(P, S - q0);
        gather_transposed<T, P>(q + q0 * s.stride_token, s.stride_token, s.stride_dim, scale, q_cols, rows, dh);
        Vec<T> col_max[NV], col_sum[NV];
        for (int64_t u = 0; u < NV; ++u) col_max[u] = broadcast(-std::numeric_limits<T>::infinity());
        int64_t j = 0;
        for (; j + 2 <= S; j += 2) {
          Vec<T> row0[NV], row1[NV];
          token_row_pair<T, NV>(k, j, s, q_cols, row0, row1);
          for (int64_t u = 0; u < NV; ++u) {
            col_max[u] = lane_max(row1[u], lane_max(row0[u], col_max[u]));
            store(probs + j * P + u * kVec, row0[u]);
            store(probs + (j + 1) * P + u * kVec, row1[u]);
          }
        }
        if (j < S) {
          Vec<T> row[NV];
          token_row<T, NV>(k, j, s, q_cols, row);
          for (int64_t u = 0; u < NV; ++u) {
            col_max[u] = lane_max(row[u], col_max[u]);
            store(probs + j * P + u * kVec, row[u]);
          }
        }
        // A NaN score is skipped by the max but still poisons exp and the sum, hence the output.
        for (int64_t u = 0; u < NV; ++u) col_sum[u] = Vec<T>{};
        for (j = 0; j < S; ++j)
          for (int64_t u = 0; u < NV; ++u) {
            const Vec<T> p = fast_exp(load(probs + j * P + u * kVec) - col_max[u]);
            store(probs + j * P + u * kVec, p);
            col_sum[u] += p;
          }
        T *inverse = lanes, *o_rows = lanes + P, *max = lanes + 3 * P, *sum = lanes + 4 * P;
        for (int64_t u = 0; u < NV; ++u) store(inverse + u * kVec, T(1) / col_sum[u]);
        T* o = out + (n * S + q0) * F + head * dh;
        // P V for features e .. e + c - 1 (c = 2: two FMA chains per load, as in token_row_pair).
        auto weigh_values = [&]<int64_t c>(int64_t e) {
          Vec<T> acc[c][NV];
          for (int64_t r = 0; r < c; ++r)
            for (int64_t u = 0; u < NV; ++u) acc[r][u] = Vec<T>{};
          for (int64_t jj = 0; jj < S; ++jj) {
            Vec<T> w[c];
            for (int64_t r = 0; r < c; ++r) w[r] = broadcast(v[s.at(jj, e + r)]);
            for (int64_t u = 0; u < NV; ++u) {
              const Vec<T> p = load(probs + jj * P + u * kVec);
              for (int64_t r = 0; r < c; ++r) acc[r][u] += w[r] * p;
            }
          }
          for (int64_t r = 0; r < c; ++r) {
            for (int64_t u = 0; u < NV; ++u) store(o_rows + r * P + u * kVec, acc[r][u] * load(inverse + u * kVec));
            for (int64_t i = 0; i < rows; ++i) o[i * F + e + r] = o_rows[r * P + i];
          }
        };
        int64_t e = 0;
        for (; e + 2 <= dh; e += 2) weigh_values.template operator()<2>(e);
        if (e < dh) weigh_values.template operator()<1>(e);
        if (lse != nullptr) {
          for (int64_t u = 0; u < NV; ++u) {
            store(max + u * kVec, col_max[u]);
            store(sum + u * kVec, col_sum[u]);
          }
          T* lse_row = lse + item * S + q0;
          for (int64_t i = 0; i < rows; ++i) lse_row[i] = max[i] + std::log(sum[i]);
        }
      }
    }
  });
}

// One key j at a time (flash-attention style, P recomputed from the saved lse):
//   p_i = exp(scale q_i . k_j - lse_i),  dp_i = dO_i . v_j,  ds_i = p_i (dp_i - D_i) scale
//   dV_j = sum_i p_i dO_i,  dK_j = sum_i ds_i q_i,  dQ_i += ds_i k_j,  D_i = dO_i . O_i.
// Padded query lanes have q = dO = D = lse = 0, so their p = 1 meets dO = 0 and ds = 0.
template <typename T, int64_t NV>
void attention_backward_short(const T* grad_out, const T* qkv, const T* out, const T* lse,
                              T* grad_qkv, const AttentionShape& s, T scale) {
  constexpr int64_t P = NV * kVec;
  const int64_t S = s.tokens, dh = s.head_dim, F = s.features();
  const int64_t grain = std::max<int64_t>(1, 2048 / (S * P * std::max<int64_t>(dh, 4)));
  at::parallel_for(0, s.batch * s.heads, grain, [&](int64_t begin, int64_t end) {
    T* q_cols = scratch<T, 0>(dh * P);   // Q^T (unscaled)
    T* do_cols = scratch<T, 1>(dh * P);  // dO^T
    T* o_cols = scratch<T, 2>(dh * P);   // O^T, for D
    T* dq_cols = scratch<T, 3>(dh * P);  // dQ^T
    T* lanes = scratch<T, 4>(P);
    for (int64_t item = begin; item < end; ++item) {
      const auto [n, head, q, k, v] = HeadInputs<T>(qkv, s, item);
      gather_transposed<T, P>(q, s.stride_token, s.stride_dim, T(1), q_cols, S, dh);
      gather_transposed<T, P>(grad_out + n * S * F + head * dh, F, 1, T(1), do_cols, S, dh);
      gather_transposed<T, P>(out + n * S * F + head * dh, F, 1, T(1), o_cols, S, dh);
      Vec<T> row_dot[NV] = {}, lse_lanes[NV];
      for (int64_t e = 0; e < dh; ++e)
        for (int64_t u = 0; u < NV; ++u)
          row_dot[u] += load(do_cols + e * P + u * kVec) * load(o_cols + e * P + u * kVec);
      std::copy_n(lse + item * S, S, lanes);
      std::fill(lanes + S, lanes + P, T(0));
      for (int64_t u = 0; u < NV; ++u) lse_lanes[u] = load(lanes + u * kVec);
      std::fill_n(dq_cols, dh * P, T(0));
      T* dq = grad_qkv + s.out_offset(0, n, head);
      T* dk = grad_qkv + s.out_offset(1, n, head);
      T* dv = grad_qkv + s.out_offset(2, n, head);
      Vec<T> p[NV], ds[NV];
      for (int64_t j = 0; j < S; ++j) {
        token_row<T, NV>(k, j, s, q_cols, p);
        for (int64_t u = 0; u < NV; ++u) p[u] = fast_exp(scale * p[u] - lse_lanes[u]);
        token_row<T, NV>(v, j, s, do_cols, ds);
        for (int64_t u = 0; u < NV; ++u) ds[u] = p[u] * (ds[u] - row_dot[u]) * scale;
        for (int64_t e = 0; e < dh; ++e) {
          Vec<T> dv_lanes = {}, dk_lanes = {};
          const Vec<T> w = broadcast(k[s.at(j, e)]);
          for (int64_t u = 0; u < NV; ++u) {
            dv_lanes += p[u] * load(do_cols + e * P + u * kVec);
            dk_lanes += ds[u] * load(q_cols + e * P + u * kVec);
            T* dq_e = dq_cols + e * P + u * kVec;
            store(dq_e, load(dq_e) + w * ds[u]);
          }
          dv[j * dh + e] = sum_lanes(dv_lanes);
          dk[j * dh + e] = sum_lanes(dk_lanes);
        }
      }
      for (int64_t i = 0; i < S; ++i)
        for (int64_t e = 0; e < dh; ++e) dq[i * dh + e] = dq_cols[e * P + i];
    }
  });
}

// Calls body.template operator()<NV>() with the vectors per padded query row of a short head.
template <int64_t NV = 1, typename Body>
void with_query_vectors(int64_t tokens, Body&& body) {
  if constexpr (NV * kVec >= kMaxShortTokens) {
    body.template operator()<NV>();
  } else {
    if (tokens <= NV * kVec) return body.template operator()<NV>();
    with_query_vectors<NV + 1>(tokens, body);
  }
}

// Reductions over a row with kVec independent lanes combined in a fixed order: vectorisable
// without -ffast-math reassociation, and deterministic.
template <typename T>
T row_max(const T* row, int64_t n) {
  T lanes[kVec];
  for (int64_t l = 0; l < kVec; ++l) lanes[l] = row[0];
  int64_t j = 0;
  for (; j + kVec <= n; j += kVec)
    for (int64_t l = 0; l < kVec; ++l) lanes[l] = row[j + l] > lanes[l] ? row[j + l] : lanes[l];
  for (; j < n; ++j) lanes[0] = row[j] > lanes[0] ? row[j] : lanes[0];
  T max = lanes[0];
  for (int64_t l = 1; l < kVec; ++l) max = lanes[l] > max ? lanes[l] : max;
  return max;  // a NaN in the row is skipped here but still poisons exp and the row sum
}

template <typename T>
T row_sum(const T* row, int64_t n) {
  T lanes[kVec] = {};
  int64_t j = 0;
  for (; j + kVec <= n; j += kVec)
    for (int64_t l = 0; l < kVec; ++l) lanes[l] += row[j + l];
  for (; j < n; ++j) lanes[0] += row[j];
  T sum = 0;
  for (int64_t l = 0; l < kVec; ++l) sum += lanes[l];
  return sum;
}

template <typename T>
void attention_forward_long(const T* qkv, T* out, T* lse, const AttentionShape& s, T scale) {
  const int64_t S = s.tokens, dh = s.head_dim, F = s.features();
  const bool t = s.head_transposed();
  const int64_t ld = s.head_ld();
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    T* scores = scratch<T, 0>(S * S);
    T* max_of_row = scratch<T, 1>(S);
    T* sum_of_row = scratch<T, 2>(S);
    for (int64_t item = begin; item < end; ++item) {
      const auto [n, head, q, k, v] = HeadInputs<T>(qkv, s, item);
      gemm<T>(t, !t, S, S, dh, scale, q, ld, k, ld, 0, scores, S);
      // exp(scores - row max) in place: subtracting the max keeps exp from overflowing.
      for (int64_t i = 0; i < S; ++i) {
        T* row = scores + i * S;
        const T max = row_max(row, S);
        for (int64_t j = 0; j < S; ++j) row[j] = fast_exp(row[j] - max);
        max_of_row[i] = max;
        sum_of_row[i] = row_sum(row, S);
      }
      T* o = out + n * S * F + head * dh;
      gemm<T>(false, t, S, dh, S, 1, scores, S, v, ld, 0, o, F);
      for (int64_t i = 0; i < S; ++i) {
        const T inverse = T(1) / sum_of_row[i];
        for (int64_t e = 0; e < dh; ++e) o[i * F + e] *= inverse;
        if (lse != nullptr) lse[item * S + i] = max_of_row[i] + std::log(sum_of_row[i]);
      }
    }
  });
}

// P = exp(scale Q K^T - lse), D_i = dO_i . O_i, dV = P^T dO, dS = P * (dO V^T - D) * scale,
// dQ = dS K, dK = dS^T Q.
template <typename T>
void attention_backward_long(const T* grad_out, const T* qkv, const T* out, const T* lse,
                             T* grad_qkv, const AttentionShape& s, T scale) {
  const int64_t S = s.tokens, dh = s.head_dim, F = s.features();
  const bool t = s.head_transposed();
  const int64_t ld = s.head_ld();
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    T* probs = scratch<T, 0>(S * S);
    T* grad_scores = scratch<T, 1>(S * S);
    T* row_dot = scratch<T, 2>(S);
    for (int64_t item = begin; item < end; ++item) {
      const auto [n, head, q, k, v] = HeadInputs<T>(qkv, s, item);
      const T* d_out = grad_out + n * S * F + head * dh;
      const T* o = out + n * S * F + head * dh;
      const T* lse_row = lse + item * S;
      gemm<T>(t, !t, S, S, dh, scale, q, ld, k, ld, 0, probs, S);
      for (int64_t i = 0; i < S; ++i) {
        T* row = probs + i * S;
        for (int64_t j = 0; j < S; ++j) row[j] = fast_exp(row[j] - lse_row[i]);
        T dot = 0;
        for (int64_t e = 0; e < dh; ++e) dot += d_out[i * F + e] * o[i * F + e];
        row_dot[i] = dot;
      }
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

// Vectors per query block of a short head's forward: the fewest blocks of at most
// kMaxBlockVectors vectors, evened out (S = 81 in 8 lanes: 3 blocks of 4 vectors).
inline int64_t block_vectors(int64_t tokens) {
  const int64_t vectors = (tokens + kVec - 1) / kVec;
  const int64_t blocks = (vectors + kMaxBlockVectors - 1) / kMaxBlockVectors;
  return (vectors + blocks - 1) / blocks;
}

template <typename T>
void attention_forward(const T* qkv, T* out, T* lse, const AttentionShape& s) {
  const T scale = T(1) / std::sqrt(static_cast<T>(s.head_dim));
  if (is_short(s)) {
    return with_query_vectors(block_vectors(s.tokens) * kVec, [&]<int64_t NV>() {
      attention_forward_short<T, NV>(qkv, out, lse, s, scale);
    });
  }
  attention_forward_long(qkv, out, lse, s, scale);
}

template <typename T>
void attention_backward(const T* grad_out, const T* qkv, const T* out, const T* lse, T* grad_qkv,
                        const AttentionShape& s) {
  const T scale = T(1) / std::sqrt(static_cast<T>(s.head_dim));
  if (is_short(s)) {
    return with_query_vectors(s.tokens, [&]<int64_t NV>() {
      attention_backward_short<T, NV>(grad_out, qkv, out, lse, grad_qkv, s, scale);
    });
  }
  attention_backward_long(grad_out, qkv, out, lse, grad_qkv, s, scale);
}

// The fused spatial block's attention + residual (inference, no lse), with the heads of a
// frame in vector lanes: out(f, i, head d_head + e) = x(...) + softmax_j(scale q_i . k_j) v_j(e).
// qkv_rows (frames J, 3F) holds Q, K, V of joint j of frame f in row f J + j, each feature-
// major, [e][head] (spatial_attention_residual.cpp orders the projection's columns so): one head group's
// values of one feature are one vector. Every operation is then a whole-vector one with no
// padding, however short the J = 15..17 axis: the query-major kernel pads 17 queries to 24
// lanes and works one 17 x 17 x 4 head at a time. Needs heads % kVec == 0.
template <typename T>
void attention_residual_heads_in_lanes(const T* qkv_rows, const T* x, T* out, int64_t frames, int64_t J,
                                       int64_t heads, int64_t dh) {
  static_assert(kHeadLanes % kVec == 0, "a head group must be whole vectors");
  // Keys (for the scores) and features (for P V) go kChains at a time: independent FMA
  // chains, where one score's chain of d_head dependent FMAs would wait on the FMA latency.
  // The counts are compile-time so that the accumulators stay in registers.
  constexpr int64_t kChains = 4;
  const T scale = T(1) / std::sqrt(static_cast<T>(dh));
  const int64_t F = heads * dh, row = 3 * F;
  T* scores = scratch<T, 0>(J * kVec);  // scores[j]: key j against query i, then exp
  T* o_lanes = scratch<T, 1>(dh * kVec);
  for (int64_t f = 0; f < frames; ++f) {
    const T* frame = qkv_rows + f * J * row;
    for (int64_t g = 0; g < heads; g += kVec)
      for (int64_t i = 0; i < J; ++i) {
        const T* q = frame + i * row + g;
        const T* k = frame + F + g;
        const T* v = frame + 2 * F + g;
        Vec<T> max = broadcast(-std::numeric_limits<T>::infinity());
        auto score_keys = [&]<int64_t n>(int64_t j0) {
          Vec<T> score[n];  // (`= {}` would zero it in memory, rep stos, and keep it there)
          for (int64_t c = 0; c < n; ++c) score[c] = Vec<T>{};
          for (int64_t e = 0; e < dh; ++e) {
            const Vec<T> qe = load(q + e * heads);
            for (int64_t c = 0; c < n; ++c) score[c] += qe * load(k + (j0 + c) * row + e * heads);
          }
          for (int64_t c = 0; c < n; ++c) {
            score[c] *= scale;
            store(scores + (j0 + c) * kVec, score[c]);
            max = lane_max(score[c], max);
          }
        };
        int64_t j = 0;
        for (; j + kChains <= J; j += kChains) score_keys.template operator()<kChains>(j);
        for (; j < J; ++j) score_keys.template operator()<1>(j);
        // A NaN score is skipped by the max but still poisons exp and the sum, hence the output.
        Vec<T> sum{};
        for (j = 0; j < J; ++j) {
          const Vec<T> p = fast_exp(load(scores + j * kVec) - max);
          store(scores + j * kVec, p);
          sum += p;
        }
        const Vec<T> inverse = T(1) / sum;
        auto weigh_values = [&]<int64_t n>(int64_t e0) {
          Vec<T> acc[n];
          for (int64_t c = 0; c < n; ++c) acc[c] = Vec<T>{};
          for (int64_t jj = 0; jj < J; ++jj) {
            const Vec<T> p = load(scores + jj * kVec);
            for (int64_t c = 0; c < n; ++c) acc[c] += p * load(v + jj * row + (e0 + c) * heads);
          }
          for (int64_t c = 0; c < n; ++c) store(o_lanes + (e0 + c) * kVec, acc[c] * inverse);
        };
        int64_t e = 0;
        for (; e + kChains <= dh; e += kChains) weigh_values.template operator()<kChains>(e);
        for (; e < dh; ++e) weigh_values.template operator()<1>(e);
        const int64_t base = (f * J + i) * F + g * dh;  // head g's features in x and out
        for (int64_t l = 0; l < kVec; ++l)
          for (e = 0; e < dh; ++e) out[base + l * dh + e] = x[base + l * dh + e] + o_lanes[e * kVec + l];
      }
  }
}
