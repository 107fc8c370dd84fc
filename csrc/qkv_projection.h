// Argument checks, geometry and the backward of convformer_fast::qkv_projection, shared by
// every device (csrc/cpu/qkv_projection.cpp, csrc/cuda/qkv_projection.cu, csrc/emulated/).
#pragma once

#include <ATen/ATen.h>
#include <string_view>
#include <tuple>

#include "qkv_layout.h"

namespace convformer_fast {

// Validates (x, weight, bias) for the folded projection and returns its geometry.
// Errors are ValueErrors in Python that name the op, the argument and the expectation.
inline QkvGeometry qkv_geometry(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor* bias, int64_t num_heads,
                                std::string_view layout) {
  TORCH_CHECK_VALUE(layout == "spatial" || layout == "temporal", op,
                    ": layout must be 'spatial' or 'temporal', got '", std::string(layout), "'");
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be (N, S, F), got shape ", x.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(x.scalar_type()), op,
                    ": x must be floating point, got ", x.scalar_type());
  QkvGeometry g;
  g.batch = x.size(0);
  g.tokens = x.size(1);
  g.features = x.size(2);
  g.spatial = layout == "spatial";
  TORCH_CHECK_VALUE(num_heads > 0 && g.features % num_heads == 0, op, ": num_heads=", num_heads,
                    " must divide the feature size F=", g.features);
  g.heads = num_heads;
  const int64_t c = g.channels();
  TORCH_CHECK_VALUE(weight.dim() == 3 && weight.size(0) == 3 * c && weight.size(1) == c &&
                        weight.size(2) % 2 == 1,
                    op, ": weight must be (3C, C, k) with C=", c, " and odd k for the ",
                    std::string(layout), " layout of x ", x.sizes(), ", got ", weight.sizes());
  g.kernel_size = weight.size(2);
  TORCH_CHECK_VALUE(weight.scalar_type() == x.scalar_type(), op, ": weight dtype ",
                    weight.scalar_type(), " differs from x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == x.device(), op, ": weight is on ", weight.device(),
                    " but x is on ", x.device());
  if (bias != nullptr) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == 3 * c, op, ": bias must be (",
                      3 * c, ",), got ", bias->sizes());
    TORCH_CHECK_VALUE(bias->scalar_type() == x.scalar_type(), op, ": bias dtype ",
                      bias->scalar_type(), " differs from x dtype ", x.scalar_type());
    TORCH_CHECK_VALUE(bias->device() == x.device(), op, ": bias is on ", bias->device(),
                      " but x is on ", x.device());
  }
  return g;
}

inline std::vector<int64_t> qkv_shape(const QkvGeometry& g) {
  return {3, g.batch, g.heads, g.tokens, g.head_dim()};
}

// x (N, S, F) as the Conv1d input (N, C, length) of its layout (a view, no copy).
inline at::Tensor conv_input(const at::Tensor& x, const QkvGeometry& g) {
  return g.spatial ? x.transpose(1, 2) : x;
}

// The Conv1d output (N, 3C, length) seen as qkv (3, N, h, S, F/h) (a view, no copy).
inline at::Tensor qkv_view_of_conv(const at::Tensor& y, const QkvGeometry& g) {
  const int64_t dh = g.head_dim();
  if (g.spatial) return y.view({g.batch, 3, g.heads, dh, g.tokens}).permute({1, 0, 2, 4, 3});
  return y.view({g.batch, 3, g.tokens, g.heads, dh}).permute({1, 0, 3, 2, 4});
}

// The inverse: qkv-shaped (3, N, h, S, F/h) -> Conv1d output layout (N, 3C, length).
inline at::Tensor conv_layout_of_qkv(const at::Tensor& qkv, const QkvGeometry& g) {
  if (g.spatial) {
    return qkv.permute({1, 0, 2, 4, 3}).reshape({g.batch, g.out_channels(), g.tokens});
  }
  return qkv.permute({1, 0, 3, 2, 4}).reshape({g.batch, g.out_channels(), g.features});
}

// The backward of every device: ATen's convolution backward on the gradient gathered back
// into conv layout (cuDNN on CUDA, oneDNN on the CPU).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> qkv_projection_backward_aten(
    const at::Tensor& grad_qkv, const at::Tensor& x, const at::Tensor& weight, int64_t num_heads,
    c10::string_view layout) {
  const auto g = qkv_geometry("qkv_projection_backward", x, weight, nullptr, num_heads,
                              std::string_view(layout.data(), layout.size()));
  TORCH_CHECK_VALUE(grad_qkv.sizes() == at::IntArrayRef(qkv_shape(g)),
                    "qkv_projection_backward: grad_qkv must be ", at::IntArrayRef(qkv_shape(g)),
                    ", got ", grad_qkv.sizes());
  auto [grad_input, grad_weight, grad_bias] = at::convolution_backward(
      conv_layout_of_qkv(grad_qkv.to(x.scalar_type()), g).contiguous(), conv_input(x, g), weight,
      at::OptionalIntArrayRef({g.out_channels()}), {1}, {g.pad()}, {1}, false, {0}, 1,
      {true, true, true});
  at::Tensor grad_x = g.spatial ? grad_input.transpose(1, 2) : grad_input;
  return {grad_x.contiguous(), grad_weight, grad_bias};
}

}  // namespace convformer_fast
