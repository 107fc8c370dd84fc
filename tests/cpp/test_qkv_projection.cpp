// C++ user's view of the op library: call convformer_fast::qkv_projection through the
// dispatcher and compare with at::conv1d split into heads. Exit code 0 = pass.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>

namespace {

at::Tensor reference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t heads,
                     bool spatial) {
  const int64_t n = x.size(0), s = x.size(1), f = x.size(2), pad = w.size(2) / 2;
  if (spatial) {
    auto y = at::conv1d(x.transpose(1, 2), w, b, 1, pad);  // (N, 3F, S)
    return y.view({n, 3, heads, f / heads, s}).permute({1, 0, 2, 4, 3});
  }
  auto y = at::conv1d(x, w, b, 1, pad);  // (N, 3S, F)
  return y.view({n, 3, s, heads, f / heads}).permute({1, 0, 3, 2, 4});
}

bool check(bool spatial, int64_t n, int64_t s, int64_t f, int64_t heads, int64_t k) {
  const int64_t c = spatial ? f : s;
  auto x = at::randn({n, s, f});
  auto w = at::randn({3 * c, c, k});
  auto b = at::randn({3 * c});
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("convformer_fast::qkv_projection", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                  c10::string_view, const std::optional<at::Tensor>&)>();
  auto out = op.call(x, w, b, heads, spatial ? "spatial" : "temporal", std::nullopt);
  const bool ok = at::allclose(out, reference(x, w, b, heads, spatial), 1e-4, 1e-4);
  std::printf("%s N=%lld S=%lld F=%lld h=%lld k=%lld: %s\n", spatial ? "spatial " : "temporal",
              (long long)n, (long long)s, (long long)f, (long long)heads, (long long)k,
              ok ? "ok" : "MISMATCH");
  return ok;
}

}  // namespace

int main() {
  at::manual_seed(0);
  bool ok = check(true, 3, 17, 32, 8, 7);
  ok &= check(true, 1, 15, 8, 2, 3);
  ok &= check(false, 2, 9, 68, 4, 5);
  ok &= check(false, 1, 243, 544, 8, 7);
  return ok ? 0 : 1;
}
