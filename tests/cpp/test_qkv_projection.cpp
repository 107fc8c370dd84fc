// C++ user's view of the op library: call convformer_fast::qkv_projection through the
// dispatcher, for the spatial layout, the temporal layout, and the temporal layout through
// Winograd F(tile, k) with the weight from convformer_fast::winograd_weight, and compare
// with the folded convolution written out as loops in double (no ATen convolution, so the
// temporal GEMM path and Winograd are each checked against loops). Exit code 0 = pass.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <string>

namespace {

// y[n, o, l] = b[o] + sum_{c, t} w[o, c, t] * in[n, c, l + t - k / 2] (zero outside), with
// in = x^T (spatial: channels = features, length = joints) or x (temporal: channels =
// frames, length = features), split into heads as qkv (3, N, h, S, F/h).
at::Tensor reference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t heads,
                     bool spatial) {
  const int64_t n_batch = x.size(0), s = x.size(1), f = x.size(2), k = w.size(2), pad = k / 2;
  const at::Tensor in = (spatial ? x.transpose(1, 2) : x).to(at::kDouble).contiguous();
  const at::Tensor wd = w.to(at::kDouble).contiguous(), bd = b.to(at::kDouble).contiguous();
  const int64_t out_channels = w.size(0), channels = w.size(1), length = in.size(2);
  at::Tensor y = at::empty({n_batch, out_channels, length}, in.options());
  const auto in_a = in.accessor<double, 3>();
  const auto w_a = wd.accessor<double, 3>();
  const auto b_a = bd.accessor<double, 1>();
  auto y_a = y.accessor<double, 3>();
  for (int64_t n = 0; n < n_batch; ++n)
    for (int64_t o = 0; o < out_channels; ++o)
      for (int64_t l = 0; l < length; ++l) {
        double sum = b_a[o];
        for (int64_t c = 0; c < channels; ++c)
          for (int64_t t = 0; t < k; ++t) {
            const int64_t at = l + t - pad;
            if (at >= 0 && at < length) sum += w_a[o][c][t] * in_a[n][c][at];
          }
        y_a[n][o][l] = sum;
      }
  if (spatial) return y.view({n_batch, 3, heads, f / heads, s}).permute({1, 0, 2, 4, 3});
  return y.view({n_batch, 3, s, heads, f / heads}).permute({1, 0, 3, 2, 4});
}

// tile > 0: the temporal projection through Winograd F(tile, k).
bool check(bool spatial, int64_t n, int64_t s, int64_t f, int64_t heads, int64_t k, int64_t tile = 0) {
  const int64_t c = spatial ? f : s;
  auto x = at::randn({n, s, f});
  auto w = at::randn({3 * c, c, k}) / std::sqrt(static_cast<double>(c * k));  // unit-variance outputs
  auto b = at::randn({3 * c});
  auto& dispatcher = c10::Dispatcher::singleton();
  auto op = dispatcher.findSchemaOrThrow("convformer_fast::qkv_projection", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                  c10::string_view, const std::optional<at::Tensor>&)>();
  std::optional<at::Tensor> transformed;
  if (tile > 0) {
    auto winograd_weight = dispatcher.findSchemaOrThrow("convformer_fast::winograd_weight", "")
                               .typed<at::Tensor(const at::Tensor&, int64_t)>();
    transformed = winograd_weight.call(w, tile);
  }
  auto out = op.call(x, w, b, heads, spatial ? "spatial" : "temporal", transformed);
  // Winograd's transforms cost about 10x the rounding error of the direct convolution.
  const double tol = 1e-4;
  const auto expected = reference(x, w, b, heads, spatial);
  const bool ok = out.sizes() == expected.sizes() && at::allclose(out.to(at::kDouble), expected, tol, tol);
  const double err = out.sizes() == expected.sizes() ? (out.to(at::kDouble) - expected).abs().max().item<double>() : -1;
  std::printf("%s N=%lld S=%lld F=%lld h=%lld k=%lld%s: max |error| %.2e %s\n",
              spatial ? "spatial " : "temporal", (long long)n, (long long)s, (long long)f, (long long)heads,
              (long long)k, tile ? (" Winograd F(" + std::to_string(tile) + ", k)").c_str() : "", err,
              ok ? "ok" : "MISMATCH");
  return ok;
}

}  // namespace

int main() {
  at::manual_seed(0);
  bool ok = check(true, 3, 17, 32, 8, 7);
  ok &= check(true, 1, 15, 8, 2, 3);
  ok &= check(false, 2, 9, 68, 4, 5);
  // Winograd: every tile the cpu backend picks (k = 3, 5, 7, 9), a partial last tile (odd
  // length), a length shorter than the tile.
  ok &= check(false, 1, 243, 544, 8, 7, 4);
  ok &= check(false, 2, 65, 101, 1, 3, 8);
  ok &= check(false, 1, 81, 34, 2, 5, 6);
  ok &= check(false, 2, 70, 17, 1, 9, 2);
  ok &= check(false, 2, 64, 3, 1, 7, 4);
  return ok ? 0 : 1;
}
