// Multi-head attention of one DMHCSA layer (paper eq. 7), tiled with an online softmax
// (flash-attention style) for the temporal layout's long sequences (S = T up to 351 frames,
// d_head up to 128; 68 in the paper's model):
//
//   out[n, s, head*d + e] = sum_j softmax_j(Q K^T / sqrt(d))[s, j] V[j, e]
//   lse[n, head, s]      = log sum_j exp(Q K^T / sqrt(d))[s, j]
//
// qkv (3, N, h, S, d) is read in place through its strides: convformer_fast::qkv_projection
// returns it as a view of the convolution output, whose temporal layout has rows of d
// contiguous elements (stride 1 along d), so tile loads are coalesced. (Any strides work.)
//
// One block of 128 threads = 32 query rows x 4 threads per row, for one (n, head):
//   load the 32 x d query tile once (pre-scaled by log2(e) / sqrt(d));
//   for each 32-key tile: load K, V tiles -> sync -> each thread scores 8 keys of its row,
//   writes its partial row max -> sync -> row max, exp2, probabilities to shared, rescale
//   the running sum and output -> sync -> each thread accumulates d/4 output columns of its
//   row (P V) in registers -> sync;
//   finally combine the 4 partial row sums, normalise, stage the output in shared memory
//   and write it out coalesced (heads merged: out is (N, S, h*d)).
// Rows and keys beyond S are never read: every loop is bounded by the valid count.
#pragma once

#include "block_context.cuh"

namespace convformer_fast {

constexpr int kAttentionRowsPerBlock = 32;  // query rows per block (BLOCK_M)
constexpr int kAttentionKeysPerTile = 32;   // keys per K/V tile (BLOCK_N)
constexpr int kAttentionThreadsPerRow = 4;
constexpr int kAttentionThreads = kAttentionRowsPerBlock * kAttentionThreadsPerRow;
constexpr int kAttentionKeysPerThread = kAttentionKeysPerTile / kAttentionThreadsPerRow;

struct TiledAttentionShape {
  int64_t batch = 0;  // N
  int heads = 1;      // h
  int tokens = 0;     // S
  int head_dim = 0;   // d
  // strides of qkv (3, N, h, S, d), in elements
  int64_t stride_which = 0, stride_batch = 0, stride_head = 0, stride_token = 0, stride_dim = 0;
  int64_t qkv_extent = 0;  // 1 + the largest offset into qkv (for the emulator's bounds checks)

  CF_HOST_DEVICE int query_tiles() const {
    return (tokens + kAttentionRowsPerBlock - 1) / kAttentionRowsPerBlock;
  }
  CF_HOST_DEVICE int64_t blocks() const { return batch * heads * query_tiles(); }
  CF_HOST_DEVICE int tile_ld() const { return head_dim + 1; }  // Q and K tiles: odd stride
};

template <typename acc_t>
struct AttentionSharedLayout {
  SharedArray<acc_t> query;     // (32, d + 1), pre-scaled
  SharedArray<acc_t> output;    // (32, d): normalised output, reusing `query` at the end
  SharedArray<acc_t> key;       // (32, d + 1)
  SharedArray<acc_t> value;     // (32, d)
  SharedArray<acc_t> probs;     // (32, 33): probabilities of the current key tile
  SharedArray<acc_t> row_part;  // (32, 4): partial row maxima, at the end partial row sums
  uint32_t bytes = 0;

  CF_HOST_DEVICE explicit AttentionSharedLayout(const TiledAttentionShape& s) {
    SharedCarver carver;
    query = carver.take<acc_t>(kAttentionRowsPerBlock * s.tile_ld(), "query");
    output = query.template alias<acc_t>(static_cast<uint32_t>(kAttentionRowsPerBlock * s.head_dim), "output");
    key = carver.take<acc_t>(kAttentionKeysPerTile * s.tile_ld(), "key");
    value = carver.take<acc_t>(kAttentionKeysPerTile * s.head_dim, "value");
    probs = carver.take<acc_t>(kAttentionRowsPerBlock * (kAttentionKeysPerTile + 1), "probs");
    row_part = carver.take<acc_t>(kAttentionRowsPerBlock * kAttentionThreadsPerRow, "row_part");
    bytes = carver.bytes();
  }
};

template <typename scalar_t>
struct TiledAttentionArgs {
  const scalar_t* qkv;  // (3, N, h, S, d), strided
  scalar_t* out;        // (N, S, h*d), contiguous
  scalar_t* lse;        // (N, h, S), contiguous
  TiledAttentionShape shape;
};

template <typename scalar_t, typename acc_t, int kMaxHeadDim>
struct TiledAttentionKernel {
  static constexpr const char* kName = "attention";
  static constexpr int kThreads = kAttentionThreads;
  static constexpr int kColumnsPerThread = (kMaxHeadDim + kAttentionThreadsPerRow - 1) / kAttentionThreadsPerRow;
  using Args = TiledAttentionArgs<scalar_t>;

  template <class Block>
  CF_HOST_DEVICE static void run(Block& blk, const Args& a) {
    constexpr int BM = kAttentionRowsPerBlock, BN = kAttentionKeysPerTile, TPR = kAttentionThreadsPerRow;
    const TiledAttentionShape& s = a.shape;
    const AttentionSharedLayout<acc_t> layout(s);
    auto query = blk.shared(layout.query);
    auto output = blk.shared(layout.output);
    auto key = blk.shared(layout.key);
    auto value = blk.shared(layout.value);
    auto probs = blk.shared(layout.probs);
    auto row_part = blk.shared(layout.row_part);

    const int S = s.tokens, d = s.head_dim, ld = s.tile_ld(), h = s.heads;
    auto qkv = blk.global(a.qkv, s.qkv_extent, "qkv");
    auto out = blk.global(a.out, s.batch * S * h * d, "out");
    auto lse = blk.global(a.lse, s.batch * h * S, "lse");

    const int tid = blk.thread(), threads = blk.size();
    const int row = tid / TPR, part = tid % TPR;  // this thread's query row and quarter
    const int tiles = s.query_tiles();
    const int64_t b = blk.block();
    const int row0 = static_cast<int>(b % tiles) * BM;
    const int64_t n = b / tiles / h;
    const int head = static_cast<int>((b / tiles) % h);
    const int rows = kmath::min(BM, S - row0);
    const bool row_valid = row < rows;
    const int64_t head_base = n * s.stride_batch + head * s.stride_head;
    const int64_t q_base = head_base, k_base = head_base + s.stride_which, v_base = head_base + 2 * s.stride_which;

    const acc_t q_scale = kmath::rsqrt(static_cast<acc_t>(d)) * static_cast<acc_t>(kmath::kLog2e);
    for (int i = tid; i < rows * d; i += threads) {
      const int r = i / d, e = i % d;
      query[r * ld + e] = static_cast<acc_t>(qkv[q_base + (row0 + r) * s.stride_token + e * s.stride_dim]) * q_scale;
    }

    acc_t row_max = -kmath::infinity<acc_t>();  // running max of this row (log2 units)
    acc_t part_sum = 0;                          // running sum over this thread's keys
    acc_t acc[kColumnsPerThread];                // output columns part, part + 4, ...
    CF_UNROLL
    for (int u = 0; u < kColumnsPerThread; ++u) acc[u] = acc_t(0);

    for (int kv0 = 0; kv0 < S; kv0 += BN) {
      const int keys = kmath::min(BN, S - kv0);
      for (int i = tid; i < keys * d; i += threads) {
        const int c = i / d, e = i % d;
        const int64_t at = (kv0 + c) * s.stride_token + e * s.stride_dim;
        key[c * ld + e] = static_cast<acc_t>(qkv[k_base + at]);
        value[c * d + e] = static_cast<acc_t>(qkv[v_base + at]);
      }
      blk.sync();

      // Scores of keys part, part + 4, ... of this row.
      acc_t score[kAttentionKeysPerThread];
      acc_t tile_max = -kmath::infinity<acc_t>();
      CF_UNROLL
      for (int u = 0; u < kAttentionKeysPerThread; ++u) {
        const int c = part + TPR * u;
        score[u] = -kmath::infinity<acc_t>();
        if (row_valid && c < keys) {
          acc_t dot = 0;
          for (int e = 0; e < d; ++e) {
            const acc_t qe = query[row * ld + e], ke = key[c * ld + e];
            dot += qe * ke;
          }
          score[u] = dot;
          tile_max = kmath::max_nan(tile_max, dot);
        }
      }
      if (row_valid) row_part[row * TPR + part] = tile_max;
      blk.sync();

      if (row_valid) {
        acc_t new_max = row_max;
        CF_UNROLL
        for (int t = 0; t < TPR; ++t) {
          const acc_t m = row_part[row * TPR + t];
          new_max = kmath::max_nan(new_max, m);
        }
        // On the first tile alpha = exp2(-inf) = 0; a row whose scores are all -inf gets
        // exp2(-inf - -inf) = NaN, as torch.softmax gives.
        const acc_t alpha = kmath::exp2(row_max - new_max);
        acc_t tile_sum = 0;
        CF_UNROLL
        for (int u = 0; u < kAttentionKeysPerThread; ++u) {
          const int c = part + TPR * u;
          if (c < keys) {
            const acc_t prob = kmath::exp2(score[u] - new_max);
            probs[row * (BN + 1) + c] = prob;
            tile_sum += prob;
          }
        }
        part_sum = part_sum * alpha + tile_sum;
        CF_UNROLL
        for (int u = 0; u < kColumnsPerThread; ++u) acc[u] *= alpha;
        row_max = new_max;
      }
      blk.sync();

      if (row_valid) {
        for (int c = 0; c < keys; ++c) {
          const acc_t prob = probs[row * (BN + 1) + c];
          CF_UNROLL
          for (int u = 0; u < kColumnsPerThread; ++u) {
            const int e = part + TPR * u;
            if (e < d) {
              const acc_t ve = value[c * d + e];
              acc[u] += prob * ve;
            }
          }
        }
      }
      blk.sync();  // the next tile overwrites key, value, probs and row_part
    }

    if (row_valid) row_part[row * TPR + part] = part_sum;
    blk.sync();
    if (row_valid) {
      acc_t row_sum = 0;
      CF_UNROLL
      for (int t = 0; t < TPR; ++t) {
        const acc_t ps = row_part[row * TPR + t];
        row_sum += ps;
      }
      const acc_t inv_sum = acc_t(1) / row_sum;
      CF_UNROLL
      for (int u = 0; u < kColumnsPerThread; ++u) {
        const int e = part + TPR * u;
        if (e < d) output[row * d + e] = acc[u] * inv_sum;
      }
      if (part == 0) {
        lse[(n * h + head) * S + row0 + row] =
            static_cast<scalar_t>((row_max + kmath::log2(row_sum)) * static_cast<acc_t>(kmath::kLn2));
      }
    }
    blk.sync();
    const int64_t features = static_cast<int64_t>(h) * d;
    for (int i = tid; i < rows * d; i += threads) {
      const int r = i / d, e = i % d;
      const acc_t v = output[r * d + e];
      out[(n * S + row0 + r) * features + head * d + e] = static_cast<scalar_t>(v);
    }
  }
};

}  // namespace convformer_fast
