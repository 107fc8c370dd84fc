// Schemas of every convformer_fast op, declared once. Kernels register per device in
// csrc/cpu/*.cpp and csrc/cuda/*.cu; fake tensors and autograd are registered from Python
// (convformer_fast/ops.py) so torch.compile and torch.export can trace through them.
#include <torch/library.h>

TORCH_LIBRARY(convformer_fast, m) {
  // Folded conv-QKV projection of one DMHCSA layer (ARCHITECTURE.md section 2):
  // x (N, S, F), weight (3C, C, k), bias (3C) -> qkv (3, N, h, S, F/h).
  // winograd_weight: winograd_weight(weight, tile), passed by callers that keep it cached
  // with the folded weight; when given, the CPU computes a temporal layer through it
  // (csrc/cpu/winograd.h). It carries no gradient: gradients flow through `weight`.
  m.def(
      "qkv_projection(Tensor x, Tensor weight, Tensor bias, int num_heads, str layout, "
      "Tensor? winograd_weight=None) -> Tensor");
  // The folded weight (3C, C, k) transformed for Winograd F(tile, k): (tile + k - 1, 3C, C).
  m.def("winograd_weight(Tensor weight, int tile) -> Tensor");
  // Gradients of qkv_projection w.r.t. (x, weight, bias).
  m.def(
      "qkv_projection_backward(Tensor grad_qkv, Tensor x, Tensor weight, int num_heads, "
      "str layout) -> (Tensor, Tensor, Tensor)");
  // Multi-head attention of one DMHCSA layer (paper eq. 7), heads merged on output:
  // qkv (3, N, h, S, d) -> out (N, S, h*d), lse (N, h, S) = log-sum-exp of each score row.
  m.def("attention(Tensor qkv) -> (Tensor, Tensor)");
  // Gradient of attention w.r.t. qkv, recomputing the probabilities from lse.
  m.def("attention_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse) -> Tensor");
  // The attention half of a spatial ConvFormer block (paper eq. 8), for inference:
  // x (N, J, F) -> x + DMHCSA(LayerNorm(x)), with the folded weight (3F, F, k) and bias (3F).
  m.def(
      "spatial_attention_residual(Tensor x, Tensor norm_weight, Tensor norm_bias, float eps, "
      "Tensor weight, Tensor bias, int num_heads) -> Tensor");
  // The feed-forward half of a ConvFormer block (paper eq. 8), for inference:
  // x (..., D) -> x + W2 GELU(W1 LayerNorm(x) + b1) + b2 (nn.Linear weights: w1 (H, D), w2 (D, H)).
  m.def(
      "feed_forward_residual(Tensor x, Tensor norm_weight, Tensor norm_bias, float eps, Tensor w1, "
      "Tensor b1, Tensor w2, Tensor b2) -> Tensor");
}
