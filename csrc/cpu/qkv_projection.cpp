// convformer_fast::qkv_projection and its backward on the CPU.
//
// The folded projection is one Conv1d (docs/ARCHITECTURE.md section 2), i.e. one large GEMM:
// on the CPU the spatial layout runs as chunked im2col GEMMs (cpu/spatial_projection.cpp),
// where oneDNN is slow; the temporal layout through Winograd F(m, k) when the caller passes
// the transformed weight (cpu/winograd.h), else as one im2col GEMM per sample
// (cpu/temporal_projection.cpp; 1.0x to 2.2x the speed of oneDNN's convolution alone).
// Other dtypes go to ATen's convolution. The result is returned as qkv (3, N, h, S, F/h):
// Q, K, V split into heads as a strided view of the convolution's output, with no copy; the
// attention kernels read that layout directly.
// The backward is ATen's convolution backward (qkv_projection.h), shared with CUDA.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/spatial_projection.h"
#include "cpu/temporal_projection.h"
#include "cpu/winograd.h"
#include "qkv_projection.h"

namespace convformer_fast {
namespace {

at::Tensor projection_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                          const std::optional<at::Tensor>& winograd_weight, const QkvGeometry& g) {
  const bool own_kernels = x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble;
  if (own_kernels && g.spatial) return cpu::spatial_projection(x, weight, bias, g);
  if (own_kernels && winograd_weight.has_value())
    return cpu::temporal_winograd_projection(x, *winograd_weight, bias, g);
  if (own_kernels) return cpu::temporal_gemm_projection(x, weight, bias, g);
  return at::conv1d(conv_input(x, g), weight, bias, 1, g.pad());
}

at::Tensor qkv_projection_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                              int64_t num_heads, c10::string_view layout,
                              const std::optional<at::Tensor>& winograd_weight) {
  const auto g = qkv_geometry("qkv_projection", x, weight, &bias, num_heads,
                              std::string_view(layout.data(), layout.size()));
  return qkv_view_of_conv(projection_cpu(x, weight, bias, winograd_weight, g), g);
}

}  // namespace

TORCH_LIBRARY_IMPL(convformer_fast, CPU, m) {
  m.impl("qkv_projection", &qkv_projection_cpu);
  m.impl("qkv_projection_backward", &qkv_projection_backward_aten);
}

}  // namespace convformer_fast
