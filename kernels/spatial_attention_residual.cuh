// Fused spatial half of a ConvFormer block, inference path (paper eqs. 3-8, spatial layout):
//
//   out = x + DMHCSA(LayerNorm(x))          x, out: (N, J, d), N = frames (B*T), J = joints
//
// with DMHCSA's conv-QKV already folded into ONE convolution (docs/ARCHITECTURE.md section 2):
// weight (3d, d, k), bias (3d), sliding along the joints with zero padding k/2; Q, K, V are
// its output channels [0, d), [d, 2d), [2d, 3d), split into h heads of d/h channels, and
// per head O = softmax(Q K^T / sqrt(d/h)) V over the J joints.
//
// One thread block handles `frames_per_block` whole frames; nothing but x, the weights and
// out touches global memory. Per block (F_b frames, 128 threads, acc_t = fp32, or fp64 for
// fp64 inputs):
//   1. x -> shared (coalesced); zero the k/2 halo rows above and below each frame.
//   2. LayerNorm: one thread per token (two-pass mean / variance over d, like torch).
//   3. Folded conv-QKV in chunks of 16 output channels: a chunk of the weight is staged in
//      shared memory transposed to (d*k, 16), then each thread computes 4 channels of one
//      token (consecutive threads take consecutive tokens, so weight reads are broadcasts
//      and the d+1 row stride of the normalised tile keeps token reads conflict-free).
//   4. Attention: one thread per (frame, head, query joint): q and the output row live in
//      registers (d_head <= kMaxHeadDim); max pass, then exp2 / sum / PV pass.
//   5. out = x + attention (coalesced).
#pragma once

#include "block_context.cuh"

namespace convformer_fast {

constexpr int kSpatialThreads = 128;
constexpr int kSpatialChunkChannels = 16;   // output channels of the weight staged at once
constexpr int kSpatialChannelsPerThread = 4;

struct SpatialAttentionShape {
  int64_t frames = 0;         // N
  int joints = 0;             // J
  int features = 0;           // d
  int heads = 1;              // h
  int kernel_size = 1;        // k, odd
  int frames_per_block = 1;   // F_b

  CF_HOST_DEVICE int head_dim() const { return features / heads; }
  CF_HOST_DEVICE int pad() const { return kernel_size / 2; }
  CF_HOST_DEVICE int padded_joints() const { return joints + 2 * pad(); }
  CF_HOST_DEVICE int normalized_ld() const { return features + 1; }  // odd stride: no bank conflicts
  CF_HOST_DEVICE int out_channels() const { return 3 * features; }
  CF_HOST_DEVICE int64_t blocks() const { return (frames + frames_per_block - 1) / frames_per_block; }
};

// The block's shared memory, described once for the host (size) and the kernel (arrays).
template <typename acc_t>
struct SpatialSharedLayout {
  SharedArray<acc_t> input;         // (F_b, J, d): x, kept for the residual
  SharedArray<acc_t> normalized;    // (F_b, J + 2p, d + 1): LN(x) between zero halo rows
  SharedArray<acc_t> attended;      // (F_b, J, d): attention output, reusing `normalized`
  SharedArray<acc_t> qkv;           // (3, F_b, J, d)
  SharedArray<acc_t> weight_chunk;  // (d * k, 16): 16 output channels of the folded weight
  uint32_t bytes = 0;

  CF_HOST_DEVICE explicit SpatialSharedLayout(const SpatialAttentionShape& s) {
    const int64_t fb = s.frames_per_block, tokens = fb * s.joints;
    SharedCarver carver;
    input = carver.take<acc_t>(tokens * s.features, "input");
    normalized = carver.take<acc_t>(fb * s.padded_joints() * s.normalized_ld(), "normalized");
    attended = normalized.template alias<acc_t>(static_cast<uint32_t>(tokens * s.features), "attended");
    qkv = carver.take<acc_t>(3 * tokens * s.features, "qkv");
    weight_chunk = carver.take<acc_t>(static_cast<int64_t>(s.features) * s.kernel_size * kSpatialChunkChannels,
                                      "weight_chunk");
    bytes = carver.bytes();
  }
};

template <typename scalar_t>
struct SpatialAttentionResidualArgs {
  const scalar_t* x;            // (N, J, d), contiguous
  const scalar_t* norm_weight;  // (d)
  const scalar_t* norm_bias;    // (d)
  const scalar_t* weight;       // (3d, d, k), the folded conv-QKV
  const scalar_t* bias;         // (3d)
  scalar_t* out;                // (N, J, d), contiguous
  double eps;                   // LayerNorm epsilon
  SpatialAttentionShape shape;
};

template <typename scalar_t, typename acc_t, int kMaxHeadDim>
struct SpatialAttentionResidualKernel {
  static constexpr const char* kName = "spatial_attention_residual";
  static constexpr int kThreads = kSpatialThreads;
  using Args = SpatialAttentionResidualArgs<scalar_t>;

  template <class Block>
  CF_HOST_DEVICE static void run(Block& blk, const Args& a) {
    const SpatialAttentionShape& s = a.shape;
    const SpatialSharedLayout<acc_t> layout(s);
    auto input = blk.shared(layout.input);
    auto normalized = blk.shared(layout.normalized);
    auto attended = blk.shared(layout.attended);
    auto qkv = blk.shared(layout.qkv);
    auto weight_chunk = blk.shared(layout.weight_chunk);

    const int tid = blk.thread(), threads = blk.size();
    const int J = s.joints, d = s.features, k = s.kernel_size, p = s.pad();
    const int Jp = s.padded_joints(), ld = s.normalized_ld(), fb = s.frames_per_block;
    const int64_t frame_size = static_cast<int64_t>(J) * d;
    auto x = blk.global(a.x, s.frames * frame_size, "x");
    auto out = blk.global(a.out, s.frames * frame_size, "out");
    auto norm_weight = blk.global(a.norm_weight, d, "norm_weight");
    auto norm_bias = blk.global(a.norm_bias, d, "norm_bias");
    auto weight = blk.global(a.weight, static_cast<int64_t>(3 * d) * d * k, "weight");
    auto bias = blk.global(a.bias, 3 * d, "bias");

    const int64_t frame0 = blk.block() * fb;
    const int frames = static_cast<int>(kmath::min<int64_t>(fb, s.frames - frame0));  // this block's
    const int tokens = frames * J;
    const int elements = tokens * d;
    const int64_t base = frame0 * frame_size;

    // 1. x -> shared memory; zero halo rows so the convolution needs no bounds tests.
    for (int i = tid; i < elements; i += threads) input[i] = static_cast<acc_t>(x[base + i]);
    const int halo = frames * 2 * p * d;
    for (int i = tid; i < halo; i += threads) {
      const int f = i / (2 * p * d), r = (i / d) % (2 * p), c = i % d;
      const int row = r < p ? r : J + r;  // rows [0, p) and [J + p, J + 2p)
      normalized[(f * Jp + row) * ld + c] = acc_t(0);
    }
    blk.sync();

    // 2. LayerNorm over d, one thread per token.
    const acc_t inv_d = acc_t(1) / static_cast<acc_t>(d);
    for (int t = tid; t < tokens; t += threads) {
      const int f = t / J, j = t % J;
      acc_t mean = 0;
      for (int c = 0; c < d; ++c) {
        const acc_t v = input[t * d + c];
        mean += v;
      }
      mean *= inv_d;
      acc_t var = 0;
      for (int c = 0; c < d; ++c) {
        const acc_t v = input[t * d + c];
        var += (v - mean) * (v - mean);
      }
      const acc_t rstd = kmath::rsqrt(var * inv_d + static_cast<acc_t>(a.eps));
      const int row = (f * Jp + j + p) * ld;
      for (int c = 0; c < d; ++c) {
        const acc_t v = input[t * d + c];
        normalized[row + c] = (v - mean) * rstd * static_cast<acc_t>(norm_weight[c]) +
                              static_cast<acc_t>(norm_bias[c]);
      }
    }
    blk.sync();

    // 3. Folded conv-QKV, 16 output channels at a time.
    const int out_channels = s.out_channels(), taps = d * k;
    for (int co0 = 0; co0 < out_channels; co0 += kSpatialChunkChannels) {
      const int chunk = kmath::min(kSpatialChunkChannels, out_channels - co0);
      for (int i = tid; i < chunk * taps; i += threads) {  // (chunk, d*k) -> (d*k, chunk)
        const int o = i / taps, r = i % taps;
        weight_chunk[r * kSpatialChunkChannels + o] =
            static_cast<acc_t>(weight[static_cast<int64_t>(co0) * taps + i]);
      }
      blk.sync();
      const int groups = (chunk + kSpatialChannelsPerThread - 1) / kSpatialChannelsPerThread;
      for (int item = tid; item < tokens * groups; item += threads) {
        const int t = item % tokens, o0 = (item / tokens) * kSpatialChannelsPerThread;
        const int f = t / J, j = t % J;
        acc_t acc[kSpatialChannelsPerThread];
        CF_UNROLL
        for (int r = 0; r < kSpatialChannelsPerThread; ++r) {
          acc[r] = o0 + r < chunk ? static_cast<acc_t>(bias[co0 + o0 + r]) : acc_t(0);
        }
        for (int c = 0; c < d; ++c) {
          for (int tap = 0; tap < k; ++tap) {
            // output joint j reads input joint j + tap - p = padded row j + tap
            const acc_t xv = normalized[(f * Jp + j + tap) * ld + c];
            const int w_row = (c * k + tap) * kSpatialChunkChannels + o0;
            CF_UNROLL
            for (int r = 0; r < kSpatialChannelsPerThread; ++r) {
              if (o0 + r < chunk) {
                const acc_t w = weight_chunk[w_row + r];
                acc[r] += w * xv;
              }
            }
          }
        }
        CF_UNROLL
        for (int r = 0; r < kSpatialChannelsPerThread; ++r) {
          if (o0 + r < chunk) {
            const int co = co0 + o0 + r, which = co / d, channel = co % d;
            qkv[((which * fb + f) * J + j) * d + channel] = acc[r];
          }
        }
      }
      blk.sync();  // the next chunk overwrites weight_chunk; after the last, qkv is complete
    }

    // 4. Attention, one thread per (frame, head, query joint).
    const int h = s.heads, dh = s.head_dim();
    const acc_t q_scale = kmath::rsqrt(static_cast<acc_t>(dh)) * static_cast<acc_t>(kmath::kLog2e);
    for (int item = tid; item < frames * h * J; item += threads) {
      const int i = item % J, head = (item / J) % h, f = item / (J * h);
      const int channel0 = head * dh;
      acc_t q[kMaxHeadDim], o[kMaxHeadDim];
      CF_UNROLL
      for (int e = 0; e < kMaxHeadDim; ++e) {
        o[e] = acc_t(0);
        if (e < dh) {
          const acc_t qe = qkv[((0 * fb + f) * J + i) * d + channel0 + e];
          q[e] = qe * q_scale;  // scores come out in log2 units
        } else {
          q[e] = acc_t(0);
        }
      }
      acc_t row_max = -kmath::infinity<acc_t>();
      for (int j = 0; j < J; ++j) {
        const int key = ((1 * fb + f) * J + j) * d + channel0;
        acc_t score = 0;
        CF_UNROLL
        for (int e = 0; e < kMaxHeadDim; ++e) {
          if (e < dh) {
            const acc_t ke = qkv[key + e];
            score += q[e] * ke;
          }
        }
        row_max = kmath::max_nan(row_max, score);
      }
      acc_t row_sum = 0;
      for (int j = 0; j < J; ++j) {
        const int key = ((1 * fb + f) * J + j) * d + channel0;
        const int value = ((2 * fb + f) * J + j) * d + channel0;
        acc_t score = 0;
        CF_UNROLL
        for (int e = 0; e < kMaxHeadDim; ++e) {
          if (e < dh) {
            const acc_t ke = qkv[key + e];
            score += q[e] * ke;
          }
        }
        const acc_t prob = kmath::exp2(score - row_max);
        row_sum += prob;
        CF_UNROLL
        for (int e = 0; e < kMaxHeadDim; ++e) {
          if (e < dh) {
            const acc_t ve = qkv[value + e];
            o[e] += prob * ve;
          }
        }
      }
      const acc_t inv_sum = acc_t(1) / row_sum;
      CF_UNROLL
      for (int e = 0; e < kMaxHeadDim; ++e) {
        if (e < dh) attended[(f * J + i) * d + channel0 + e] = o[e] * inv_sum;
      }
    }
    blk.sync();

    // 5. Residual add, written out coalesced.
    for (int i = tid; i < elements; i += threads) {
      const acc_t xv = input[i], av = attended[i];
      out[base + i] = static_cast<scalar_t>(xv + av);
    }
  }
};

}  // namespace convformer_fast
