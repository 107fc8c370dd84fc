// Kernel unit tests without PyTorch: the kernels of kernels/ run on the CPU emulator
// (csrc/emulated/emulator.h) against plain loops, on edge shapes, and the emulator's checks
// catch every bug of the self-test kernel. Exit code 0 = pass.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "attention.cuh"
#include "emulated/emulator.h"
#include "emulated/selftest_kernel.h"
#include "spatial_attention_residual.cuh"

namespace cf = convformer_fast;

namespace {

int failures = 0;

std::string sci(double v) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1e", v);
  return text;
}

void expect(bool ok, const std::string& what) {
  std::printf("%-92s %s\n", what.c_str(), ok ? "ok" : "FAILED");
  if (!ok) ++failures;
}

// Launches on the emulator; a fault fails the test with the emulator's message.
template <class Kernel>
bool launched(int64_t blocks, size_t shared_bytes, const typename Kernel::Args& args) {
  try {
    cf::emulator::launch<Kernel>(blocks, shared_bytes, args);
    return true;
  } catch (const cf::emulator::KernelFault& fault) {
    expect(false, std::string(Kernel::kName) + ": " + fault.what());
    return false;
  }
}

template <typename T>
std::vector<T> random_vector(size_t n, std::mt19937& gen, double scale = 1.0) {
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(dist(gen));
  return v;
}

// Per (n, head): softmax(Q K^T / sqrt(d)) V, with Q/K/V read by the same strides as the kernel.
void reference_attention(const std::vector<double>& qkv, const cf::TiledAttentionShape& s, std::vector<double>& out,
                         std::vector<double>& lse) {
  const int S = s.tokens, d = s.head_dim, h = s.heads;
  out.assign(s.batch * S * h * d, 0.0);
  lse.assign(s.batch * h * S, 0.0);
  auto at = [&](int which, int64_t n, int head, int t, int e) {
    return qkv[which * s.stride_which + n * s.stride_batch + head * s.stride_head + t * s.stride_token +
               e * s.stride_dim];
  };
  std::vector<double> scores(S);
  for (int64_t n = 0; n < s.batch; ++n)
    for (int head = 0; head < h; ++head)
      for (int i = 0; i < S; ++i) {
        double m = -INFINITY;
        for (int j = 0; j < S; ++j) {
          double dot = 0;
          for (int e = 0; e < d; ++e) dot += at(0, n, head, i, e) * at(1, n, head, j, e);
          scores[j] = dot / std::sqrt(static_cast<double>(d));
          m = std::max(m, scores[j]);
        }
        double sum = 0;
        for (int j = 0; j < S; ++j) sum += std::exp(scores[j] - m);
        for (int e = 0; e < d; ++e) {
          double o = 0;
          for (int j = 0; j < S; ++j) o += std::exp(scores[j] - m) / sum * at(2, n, head, j, e);
          out[(n * S + i) * h * d + head * d + e] = o;
        }
        lse[(n * h + head) * S + i] = m + std::log(sum);
      }
}

template <typename T, int kMaxHeadDim>
void test_attention(int64_t batch, int heads, int tokens, int head_dim, double tol) {
  std::mt19937 gen(static_cast<unsigned>(tokens * 131 + head_dim));
  cf::TiledAttentionShape s;
  s.batch = batch;
  s.heads = heads;
  s.tokens = tokens;
  s.head_dim = head_dim;
  // The temporal layout of qkv_projection: (N, 3, S, h, d) memory seen as (3, N, h, S, d).
  s.stride_dim = 1;
  s.stride_head = head_dim;
  s.stride_token = int64_t{heads} * head_dim;
  s.stride_which = tokens * s.stride_token;
  s.stride_batch = 3 * s.stride_which;
  s.qkv_extent = batch * s.stride_batch;
  const std::vector<double> qkv64 = random_vector<double>(s.qkv_extent, gen, 2.0);
  std::vector<T> qkv(qkv64.begin(), qkv64.end());
  std::vector<T> out(batch * tokens * heads * head_dim), lse(batch * heads * tokens);
  using Kernel = cf::TiledAttentionKernel<T, T, kMaxHeadDim>;
  if (!launched<Kernel>(s.blocks(), cf::AttentionSharedLayout<T>(s).bytes,
                        typename Kernel::Args{qkv.data(), out.data(), lse.data(), s})) {
    return;
  }
  std::vector<double> expected_out, expected_lse;
  reference_attention(qkv64, s, expected_out, expected_lse);
  double err = 0;
  for (size_t i = 0; i < out.size(); ++i) err = std::max(err, std::abs(out[i] - expected_out[i]));
  for (size_t i = 0; i < lse.size(); ++i) err = std::max(err, std::abs(lse[i] - expected_lse[i]));
  expect(err < tol, "attention " + std::string(sizeof(T) == 8 ? "fp64" : "fp32") + " N=" + std::to_string(batch) +
                        " h=" + std::to_string(heads) + " S=" + std::to_string(tokens) + " d=" +
                        std::to_string(head_dim) + " max err " + sci(err));
}

template <typename T, int kMaxHeadDim>
void test_spatial(int64_t frames, int joints, int features, int heads, int k, double tol) {
  std::mt19937 gen(static_cast<unsigned>(frames * 7 + joints * 3 + k));
  const int d = features, p = k / 2, dh = features / heads;
  const auto x = random_vector<double>(frames * joints * d, gen);
  const auto lnw = random_vector<double>(d, gen, 0.3), lnb = random_vector<double>(d, gen, 0.3);
  const auto w = random_vector<double>(3 * d * d * k, gen, 1.0 / std::sqrt(d * k));
  const auto b = random_vector<double>(3 * d, gen, 0.3);
  std::vector<double> expected(x.size());
  std::vector<double> y(joints * d), qkv(3 * joints * d);
  for (int64_t f = 0; f < frames; ++f) {
    const double* xf = &x[f * joints * d];
    for (int j = 0; j < joints; ++j) {  // LayerNorm (weight 1 + lnw)
      double mean = 0, var = 0;
      for (int c = 0; c < d; ++c) mean += xf[j * d + c] / d;
      for (int c = 0; c < d; ++c) var += (xf[j * d + c] - mean) * (xf[j * d + c] - mean) / d;
      for (int c = 0; c < d; ++c) y[j * d + c] = (xf[j * d + c] - mean) / std::sqrt(var + 1e-5) * (1 + lnw[c]) + lnb[c];
    }
    for (int co = 0; co < 3 * d; ++co)  // conv over joints, zero padded
      for (int j = 0; j < joints; ++j) {
        double acc = b[co];
        for (int c = 0; c < d; ++c)
          for (int tap = 0; tap < k; ++tap) {
            const int src = j + tap - p;
            if (src >= 0 && src < joints) acc += w[(co * d + c) * k + tap] * y[src * d + c];
          }
        qkv[(co / d) * joints * d + j * d + co % d] = acc;
      }
    for (int head = 0; head < heads; ++head)
      for (int i = 0; i < joints; ++i) {
        std::vector<double> sc(joints);
        double m = -INFINITY, sum = 0;
        for (int j = 0; j < joints; ++j) {
          double dot = 0;
          for (int e = 0; e < dh; ++e) dot += qkv[i * d + head * dh + e] * qkv[joints * d + j * d + head * dh + e];
          sc[j] = dot / std::sqrt(static_cast<double>(dh));
          m = std::max(m, sc[j]);
        }
        for (int j = 0; j < joints; ++j) sum += std::exp(sc[j] - m);
        for (int e = 0; e < dh; ++e) {
          double o = 0;
          for (int j = 0; j < joints; ++j) o += std::exp(sc[j] - m) / sum * qkv[2 * joints * d + j * d + head * dh + e];
          expected[(f * joints + i) * d + head * dh + e] = xf[i * d + head * dh + e] + o;
        }
      }
  }
  std::vector<T> xt(x.begin(), x.end()), wt(w.begin(), w.end()), bt(b.begin(), b.end()), lnbt(lnb.begin(), lnb.end());
  std::vector<T> lnwt(d);
  for (int c = 0; c < d; ++c) lnwt[c] = static_cast<T>(1 + lnw[c]);
  std::vector<T> out(x.size());
  cf::SpatialAttentionShape s;
  s.frames = frames;
  s.joints = joints;
  s.features = features;
  s.heads = heads;
  s.kernel_size = k;
  s.frames_per_block = frames >= 8 ? 8 : static_cast<int>(frames);  // partial last block when frames % 8
  using Kernel = cf::SpatialAttentionResidualKernel<T, T, kMaxHeadDim>;
  if (!launched<Kernel>(s.blocks(), cf::SpatialSharedLayout<T>(s).bytes,
                        typename Kernel::Args{xt.data(), lnwt.data(), lnbt.data(), wt.data(), bt.data(), out.data(),
                                              1e-5, s})) {
    return;
  }
  double err = 0;
  for (size_t i = 0; i < out.size(); ++i) err = std::max(err, std::abs(out[i] - expected[i]));
  expect(err < tol, "spatial " + std::string(sizeof(T) == 8 ? "fp64" : "fp32") + " frames=" + std::to_string(frames) +
                        " J=" + std::to_string(joints) + " d=" + std::to_string(features) + " h=" +
                        std::to_string(heads) + " k=" + std::to_string(k) + " max err " + sci(err));
}

void test_fault(cf::SelftestFault fault, int64_t size, const std::string& name, const std::string& needle) {
  std::vector<float> x(size, 1.0f), out(size), sums((size + 31) / 32);
  bool caught = false;
  std::string message;
  try {
    cf::emulator::launch<cf::SelftestKernel>(cf::SelftestKernel::blocks(size), 32 * sizeof(float),
                                             cf::SelftestArgs{x.data(), out.data(), sums.data(), size, fault});
  } catch (const cf::emulator::KernelFault& error) {
    caught = true;
    message = error.what();
  }
  const bool named = message.find("'emulator_selftest'") != std::string::npos;
  expect(caught && named && message.find(needle) != std::string::npos, "emulator catches " + name);
  if (caught) std::printf("    %s\n", message.c_str());
}

}  // namespace

int main() {
  test_spatial<float, 8>(3, 17, 32, 8, 7, 1e-4);      // the paper's spatial layer, d_head 4
  test_spatial<float, 8>(1, 15, 8, 2, 3, 1e-4);       // HumanEva joints, one frame
  test_spatial<double, 32>(13, 17, 16, 1, 9, 1e-10);  // 13 frames: a partial block of 5
  test_spatial<double, 8>(2, 5, 4, 1, 11, 1e-10);     // kernel longer than the joints
  test_attention<float, 72>(1, 2, 81, 68, 1e-4);      // T not a multiple of 32, d_head 68
  test_attention<double, 128>(2, 1, 33, 128, 1e-10);  // the head-dim limit
  test_attention<double, 16>(3, 2, 1, 4, 1e-10);      // one token
  test_fault(cf::SelftestFault::kMissingBarrier, 70, "a missing barrier", "data race on shared 'tile'");
  test_fault(cf::SelftestFault::kOffByOneTile, 70, "an off-by-one tile bound", "out of bounds of 'tile'");
  test_fault(cf::SelftestFault::kOffByOneTile, 20, "a read of unwritten shared memory", "before any thread");
  test_fault(cf::SelftestFault::kDivergentBarrier, 70, "a divergent barrier", "barrier divergence");
  test_fault(cf::SelftestFault::kGlobalOutOfBounds, 70, "a global out-of-bounds read", "out of bounds of 'x'");
  std::printf("%s\n", failures ? "FAILED" : "all passed");
  return failures ? 1 : 0;
}
