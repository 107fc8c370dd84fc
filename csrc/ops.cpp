// Schemas of every convformer_fast op, declared once. Kernels register per device in
// csrc/cpu/*.cpp and csrc/cuda/*.cu; fake tensors and autograd are registered from Python
// (convformer_fast/ops.py) so torch.compile and torch.export can trace through them.
#include <torch/library.h>

TORCH_LIBRARY(convformer_fast, m) {
  // Folded conv-QKV projection of one DMHCSA layer (ARCHITECTURE.md section 2):
  // x (N, S, F), weight (3C, C, k), bias (3C) -> qkv (3, N, h, S, F/h).
  m.def("qkv_projection(Tensor x, Tensor weight, Tensor bias, int num_heads, str layout) -> Tensor");
  // Gradients of qkv_projection w.r.t. (x, weight, bias).
  m.def(
      "qkv_projection_backward(Tensor grad_qkv, Tensor x, Tensor weight, int num_heads, "
      "str layout) -> (Tensor, Tensor, Tensor)");
}
