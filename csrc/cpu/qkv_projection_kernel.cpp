// CPU kernels of convformer_fast::qkv_projection and its backward.
//
// The folded convolution runs as an im2col GEMM, one chunk of samples at a time, so the
// patch matrix stays cache-sized (no whole-batch im2col tensor):
//   patches (rows = (n, l), cols = (c_in, tap))          built in parallel
//   y = patches @ weight.view(3C, C*k)^T                 one ATen GEMM (MKL / oneDNN)
//   qkv[(Q|K|V), n, head, token, e] = y + bias           fused epilogue: bias add + head split
// The backward reuses the same pieces: gather the head-split gradient back into rows,
// two GEMMs for the weight and patch gradients, and a gather-form col2im for grad_x
// (every grad_x element is written exactly once, so it is deterministic and race-free).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "qkv_projection.h"

namespace convformer_fast {
namespace {

// Target size of one chunk's patch matrix: large enough for an efficient GEMM, small
// enough to stay in the last-level cache.
constexpr int64_t kPatchChunkBytes = 4 << 20;

int64_t samples_per_chunk(const QkvGeometry& g, int64_t element_size) {
  const int64_t row_bytes = g.patch_size() * element_size;
  const int64_t rows = std::max<int64_t>(kPatchChunkBytes / row_bytes, g.length());
  return std::max<int64_t>(1, rows / g.length());
}

template <typename scalar_t>
void im2col(const scalar_t* x, scalar_t* patches, const QkvGeometry& g, int64_t n0, int64_t n1) {
  const int64_t length = g.length(), channels = g.channels(), k = g.kernel_size, pad = g.pad();
  at::parallel_for(0, (n1 - n0) * length, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = n0 + row / length, l = row % length;
      scalar_t* out = patches + row * g.patch_size();
      for (int64_t c = 0; c < channels; ++c) {
        for (int64_t tap = 0; tap < k; ++tap) {
          const int64_t src = l + tap - pad;
          out[c * k + tap] = (src >= 0 && src < length) ? x[g.x_offset(n, c, src)] : scalar_t(0);
        }
      }
    }
  });
}

// qkv <- rows + bias, split into heads (forward epilogue).
template <typename scalar_t>
void scatter_rows(const scalar_t* rows, const scalar_t* bias, scalar_t* qkv, const QkvGeometry& g,
                  int64_t n0, int64_t n1) {
  const int64_t length = g.length(), out_channels = g.out_channels();
  at::parallel_for(0, (n1 - n0) * length, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = n0 + row / length, l = row % length;
      const scalar_t* src = rows + row * out_channels;
      for (int64_t co = 0; co < out_channels; ++co) {
        qkv[g.qkv_offset(n, co, l)] = src[co] + bias[co];
      }
    }
  });
}

// rows <- head-split gradient, the inverse of scatter_rows (backward prologue).
template <typename scalar_t>
void gather_rows(const scalar_t* qkv, scalar_t* rows, const QkvGeometry& g, int64_t n0,
                 int64_t n1) {
  const int64_t length = g.length(), out_channels = g.out_channels();
  at::parallel_for(0, (n1 - n0) * length, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = n0 + row / length, l = row % length;
      scalar_t* dst = rows + row * out_channels;
      for (int64_t co = 0; co < out_channels; ++co) dst[co] = qkv[g.qkv_offset(n, co, l)];
    }
  });
}

// grad_x(n, c, p) = sum over taps of grad_patches[(n, p - tap + pad), (c, tap)].
template <typename scalar_t>
void col2im(const scalar_t* grad_patches, scalar_t* grad_x, const QkvGeometry& g, int64_t n0,
            int64_t n1) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t length = g.length(), channels = g.channels(), k = g.kernel_size, pad = g.pad();
  at::parallel_for(0, (n1 - n0) * channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = n0 + idx / channels, c = idx % channels;
      const scalar_t* sample = grad_patches + (n - n0) * length * g.patch_size() + c * k;
      for (int64_t p = 0; p < length; ++p) {
        acc_t acc = 0;
        for (int64_t tap = 0; tap < k; ++tap) {
          const int64_t l = p - tap + pad;
          if (l >= 0 && l < length) acc += static_cast<acc_t>(sample[l * g.patch_size() + tap]);
        }
        grad_x[g.x_offset(n, c, p)] = static_cast<scalar_t>(acc);
      }
    }
  });
}

at::Tensor qkv_projection_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                              const at::Tensor& bias_in, int64_t num_heads,
                              c10::string_view layout) {
  const auto g = qkv_geometry("qkv_projection", x_in, weight_in, &bias_in, num_heads,
                              std::string_view(layout.data(), layout.size()));
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight_matrix = weight_in.contiguous().view({g.out_channels(), g.patch_size()});
  const at::Tensor bias = bias_in.contiguous();
  at::Tensor qkv = at::empty(qkv_shape(g), x.options());
  if (x.numel() == 0) return qkv;
  const int64_t chunk = samples_per_chunk(g, x.element_size());
  const int64_t max_rows = std::min(chunk, g.batch) * g.length();
  at::Tensor patches = at::empty({max_rows, g.patch_size()}, x.options());
  at::Tensor rows = at::empty({max_rows, g.out_channels()}, x.options());
  const at::Tensor weight_t = weight_matrix.t();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "qkv_projection_cpu", [&] {
    for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
      const int64_t n1 = std::min(n0 + chunk, g.batch);
      const int64_t used = (n1 - n0) * g.length();
      at::Tensor patch_view = patches.narrow(0, 0, used);
      at::Tensor row_view = rows.narrow(0, 0, used);
      im2col(x.const_data_ptr<scalar_t>(), patches.mutable_data_ptr<scalar_t>(), g, n0, n1);
      at::mm_out(row_view, patch_view, weight_t);
      scatter_rows(row_view.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
                   qkv.mutable_data_ptr<scalar_t>(), g, n0, n1);
    }
  });
  return qkv;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_projection_backward_cpu(
    const at::Tensor& grad_qkv_in, const at::Tensor& x_in, const at::Tensor& weight_in,
    int64_t num_heads, c10::string_view layout) {
  const auto g = qkv_geometry("qkv_projection_backward", x_in, weight_in, nullptr, num_heads,
                              std::string_view(layout.data(), layout.size()));
  TORCH_CHECK_VALUE(grad_qkv_in.sizes() == at::IntArrayRef(qkv_shape(g)),
                    "qkv_projection_backward: grad_qkv must be ", at::IntArrayRef(qkv_shape(g)),
                    ", got ", grad_qkv_in.sizes());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad_qkv = grad_qkv_in.to(x.scalar_type()).contiguous();
  const at::Tensor weight_matrix = weight_in.contiguous().view({g.out_channels(), g.patch_size()});
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_weight = at::zeros({g.out_channels(), g.patch_size()}, x.options());
  at::Tensor grad_bias = at::zeros({g.out_channels()}, x.options());
  if (x.numel() == 0) return {grad_x, grad_weight.view_as(weight_in), grad_bias};
  const int64_t chunk = samples_per_chunk(g, x.element_size());
  const int64_t max_rows = std::min(chunk, g.batch) * g.length();
  at::Tensor patches = at::empty({max_rows, g.patch_size()}, x.options());
  at::Tensor rows = at::empty({max_rows, g.out_channels()}, x.options());
  at::Tensor grad_patches = at::empty({max_rows, g.patch_size()}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "qkv_projection_backward_cpu", [&] {
    for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
      const int64_t n1 = std::min(n0 + chunk, g.batch);
      const int64_t used = (n1 - n0) * g.length();
      at::Tensor patch_view = patches.narrow(0, 0, used);
      at::Tensor row_view = rows.narrow(0, 0, used);
      at::Tensor grad_patch_view = grad_patches.narrow(0, 0, used);
      im2col(x.const_data_ptr<scalar_t>(), patches.mutable_data_ptr<scalar_t>(), g, n0, n1);
      gather_rows(grad_qkv.const_data_ptr<scalar_t>(), rows.mutable_data_ptr<scalar_t>(), g, n0, n1);
      grad_weight.addmm_(row_view.t(), patch_view);
      grad_bias.add_(row_view.sum(0));
      at::mm_out(grad_patch_view, row_view, weight_matrix);
      col2im(grad_patches.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(), g, n0, n1);
    }
  });
  return {grad_x, grad_weight.view_as(weight_in), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(convformer_fast, CPU, m) {
  m.impl("qkv_projection", &qkv_projection_cpu);
  m.impl("qkv_projection_backward", &qkv_projection_backward_cpu);
}

}  // namespace convformer_fast
