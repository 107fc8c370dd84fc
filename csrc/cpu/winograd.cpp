// Winograd temporal conv-QKV projection on the CPU (see winograd.h for the maths) and the
// weight transform behind the op convformer_fast::winograd_weight (winograd_weight.cpp).
//
// Work per call: the input transform (X~, alpha x C x tiles, about 1.3 MB at T = 243), then
// per chunk of samples the alpha point GEMMs as one batched BLAS call (threaded by BLAS:
// per-thread GEMMs on smaller blocks ran 1.6x slower, repacking the shared operands for
// every block), and the output transform that writes y straight into conv layout (N, 3C, L).
#include "cpu/winograd.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>

#include "cpu/avx2.h"
#include "cpu/scratch.h"

namespace convformer_fast::cpu {
namespace baseline {
#include "cpu/fast_exp.h"
#include "cpu/simd.h"
#include "cpu/winograd_impl.h"
}  // namespace baseline

namespace {

// Toom-Cook points, in the order they are used: small magnitudes first keep the
// transforms' entries, hence the rounding error, small.
constexpr double kPoints[kMaxWinogradPoints - 1] = {0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 0.75, -0.75};

// alpha x n evaluation matrix: row a = (p_a^0, ..., p_a^(n-1)); the last row is the point
// at infinity, which picks the leading coefficient.
std::vector<double> evaluation_matrix(int64_t alpha, int64_t n) {
  std::vector<double> v(alpha * n, 0.0);
  for (int64_t a = 0; a + 1 < alpha; ++a) {
    double power = 1.0;
    for (int64_t k = 0; k < n; ++k, power *= kPoints[a]) v[a * n + k] = power;
  }
  v[(alpha - 1) * n + (n - 1)] = 1.0;
  return v;
}

// Inverse of a small square matrix, Gauss-Jordan with partial pivoting (it is invertible:
// the points are distinct).
std::vector<double> inverse(std::vector<double> a, int64_t n) {
  std::vector<double> inv(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i) inv[i * n + i] = 1.0;
  for (int64_t col = 0; col < n; ++col) {
    int64_t pivot = col;
    for (int64_t row = col + 1; row < n; ++row)
      if (std::fabs(a[row * n + col]) > std::fabs(a[pivot * n + col])) pivot = row;
    for (int64_t k = 0; k < n; ++k) {
      std::swap(a[col * n + k], a[pivot * n + k]);
      std::swap(inv[col * n + k], inv[pivot * n + k]);
    }
    const double d = a[col * n + col];
    for (int64_t k = 0; k < n; ++k) a[col * n + k] /= d, inv[col * n + k] /= d;
    for (int64_t row = 0; row < n; ++row) {
      if (row == col) continue;
      const double f = a[row * n + col];
      for (int64_t k = 0; k < n; ++k) a[row * n + k] -= f * a[col * n + k], inv[row * n + k] -= f * inv[col * n + k];
    }
  }
  return inv;
}

// Samples per chunk: the chunk's alpha x 3C x tiles GEMM outputs stay within this many
// elements (4 MB in fp32, read back from cache by the output transform).
constexpr int64_t kChunkElements = 1 << 20;

template <typename T>
void run_input_transform(const T* x, T* x_t, const WinogradPlan& plan, const QkvGeometry& g, int64_t tiles) {
#if defined(CONVFORMER_FAST_HAVE_AVX2_KERNELS)
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_supports_avx2_fma()) return winograd_input_transform_avx2(x, x_t, plan, g, tiles);
  }
#endif
  baseline::input_transform(x, x_t, plan, g, tiles);
}

template <typename T>
void run_output_transform(const T* products, const T* bias, T* y, const WinogradPlan& plan,
                          const QkvGeometry& g, int64_t tiles, int64_t n0, int64_t samples) {
#if defined(CONVFORMER_FAST_HAVE_AVX2_KERNELS)
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_supports_avx2_fma())
      return winograd_output_transform_avx2(products, bias, y, plan, g, tiles, n0, samples);
  }
#endif
  baseline::output_transform(products, bias, y, plan, g, tiles, n0, samples);
}

}  // namespace

WinogradPlan winograd_plan(const char* op, int64_t tile, int64_t kernel_size) {
  TORCH_CHECK_VALUE(tile >= 1 && kernel_size >= 1 && tile + kernel_size - 1 <= kMaxWinogradPoints, op,
                    ": Winograd tile=", tile, " with kernel size ", kernel_size, " needs ",
                    tile + kernel_size - 1, " points; supported: tile >= 1 and tile + kernel_size - 1 <= ",
                    kMaxWinogradPoints);
  WinogradPlan plan;
  plan.tile = tile;
  plan.kernel_size = kernel_size;
  const int64_t alpha = plan.points();
  plan.kernel_transform = evaluation_matrix(alpha, kernel_size);
  const std::vector<double> v_m = evaluation_matrix(alpha, tile);
  plan.output_transform.assign(tile * alpha, 0.0);  // A^T = V_m^T
  for (int64_t a = 0; a < alpha; ++a)
    for (int64_t j = 0; j < tile; ++j) plan.output_transform[j * alpha + a] = v_m[a * tile + j];
  const std::vector<double> v_inv = inverse(evaluation_matrix(alpha, alpha), alpha);
  plan.input_transform.assign(alpha * alpha, 0.0);  // B^T = V_alpha^-T
  for (int64_t a = 0; a < alpha; ++a)
    for (int64_t i = 0; i < alpha; ++i) plan.input_transform[a * alpha + i] = v_inv[i * alpha + a];
  return plan;
}

at::Tensor winograd_weight(const at::Tensor& weight, int64_t tile) {
  TORCH_CHECK_VALUE(weight.dim() == 3 && weight.size(0) == 3 * weight.size(1) && weight.size(2) % 2 == 1,
                    "winograd_weight: weight must be a folded (3C, C, k) weight with odd k, got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble,
                    "winograd_weight: the CPU kernels support float32 and float64, got ", weight.scalar_type());
  const int64_t k = weight.size(2);
  const WinogradPlan plan = winograd_plan("winograd_weight", tile, k);
  const at::Tensor g = at::tensor(plan.kernel_transform, at::TensorOptions().dtype(at::kDouble))
                           .view({plan.points(), k})
                           .to(weight.scalar_type());
  // W~ (alpha, 3C * C) = G (alpha, k) @ W (3C * C, k)^T
  return at::matmul(g, weight.reshape({-1, k}).t()).view({plan.points(), weight.size(0), weight.size(1)});
}

at::Tensor temporal_winograd_projection(const at::Tensor& x_in, const at::Tensor& transformed_weight,
                                        const at::Tensor& bias_in, const QkvGeometry& g) {
  const int64_t alpha = transformed_weight.size(0), tile = alpha - g.kernel_size + 1;
  TORCH_CHECK_VALUE(transformed_weight.dim() == 3 && transformed_weight.size(1) == g.out_channels() &&
                        transformed_weight.size(2) == g.channels() && tile >= 1,
                    "qkv_projection: winograd_weight must be (alpha, ", g.out_channels(), ", ", g.channels(),
                    ") with alpha >= kernel size ", g.kernel_size, ", got ", transformed_weight.sizes());
  TORCH_CHECK_VALUE(transformed_weight.scalar_type() == x_in.scalar_type(), "qkv_projection: winograd_weight dtype ",
                    transformed_weight.scalar_type(), " differs from x dtype ", x_in.scalar_type());
  const WinogradPlan plan = winograd_plan("qkv_projection", tile, g.kernel_size);
  const at::Tensor x = x_in.contiguous(), w_t = transformed_weight.contiguous(), bias = bias_in.contiguous();
  at::Tensor y = at::empty({g.batch, g.out_channels(), g.length()}, x.options());
  if (y.numel() == 0) return y;
  const int64_t tiles = (g.length() + tile - 1) / tile, columns = g.batch * tiles;
  at::Tensor x_t = at::empty({alpha, g.channels(), columns}, x.options());
  const int64_t chunk = std::max<int64_t>(1, kChunkElements / (alpha * g.out_channels() * tiles));
  // Flat with slack: the output transform reads whole vectors (up to 8 lanes) of tiles.
  const int64_t max_columns = std::min(chunk, g.batch) * tiles;
  at::Tensor products = at::empty({alpha * g.out_channels() * max_columns + 8}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "temporal_winograd_projection", [&] {
    run_input_transform(x.const_data_ptr<scalar_t>(), x_t.mutable_data_ptr<scalar_t>(), plan, g, tiles);
    for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
      const int64_t samples = std::min(chunk, g.batch - n0);
      // The alpha point GEMMs, threaded by BLAS: products[a] = W~[a] @ X~[a][:, chunk columns].
      at::Tensor out = products.narrow(0, 0, alpha * g.out_channels() * samples * tiles)
                           .view({alpha, g.out_channels(), samples * tiles});
      at::bmm_out(out, w_t, x_t.narrow(2, n0 * tiles, samples * tiles));
      run_output_transform(out.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
                       y.mutable_data_ptr<scalar_t>(), plan, g, tiles, n0, samples);
    }
  });
  return y;
}

}  // namespace convformer_fast::cpu
