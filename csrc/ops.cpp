// Schemas of every convformer_fast op, declared once. Kernels register per device in
// csrc/cpu/*.cpp, csrc/cuda/*.cu and csrc/emulated/*.cpp; fake tensors and autograd are
// registered from Python (convformer_fast/ops.py) so torch.compile and torch.export can
// trace through them.
#include <torch/library.h>

namespace {

// The ops the CUDA kernels of kernels/ serve. Each schema is written once here and declared
// in both namespaces below.
//
// Folded conv-QKV projection of one DMHCSA layer (docs/ARCHITECTURE.md section 2):
// x (N, S, F), weight (3C, C, k), bias (3C) -> qkv (3, N, h, S, F/h).
// winograd_weight: winograd_weight(weight, tile), passed by callers that keep it cached
// with the folded weight; when given, the cpu backend computes a temporal layer through it
// (csrc/cpu/winograd.h); other kernels ignore it. It carries no gradient: gradients flow
// through `weight`.
constexpr const char* kQkvProjection =
    "qkv_projection(Tensor x, Tensor weight, Tensor bias, int num_heads, str layout, "
    "Tensor? winograd_weight=None) -> Tensor";
// Multi-head attention of one DMHCSA layer (paper eq. 7), heads merged on output:
// qkv (3, N, h, S, d) -> out (N, S, h*d), lse (N, h, S) = log-sum-exp of each score row.
constexpr const char* kAttention = "attention(Tensor qkv) -> (Tensor, Tensor)";
// The spatial half of a ConvFormer block, inference only (paper eq. 8, first line, without
// DropPath): x (N, J, d) -> x + DMHCSA(LayerNorm(x)), with the folded weight (3d, d, k) and
// bias (3d) of the layer's conv-QKV and the LayerNorm's weight, bias (d) and eps.
constexpr const char* kSpatialAttentionResidual =
    "spatial_attention_residual(Tensor x, Tensor norm_weight, Tensor norm_bias, float eps, Tensor weight, "
    "Tensor bias, int num_heads) -> Tensor";

}  // namespace

TORCH_LIBRARY(convformer_fast, m) {
  m.def(kQkvProjection);
  // The folded weight (3C, C, k) transformed for Winograd F(tile, k): (tile + k - 1, 3C, C).
  m.def("winograd_weight(Tensor weight, int tile) -> Tensor");
  // Gradients of qkv_projection w.r.t. (x, weight, bias).
  m.def(
      "qkv_projection_backward(Tensor grad_qkv, Tensor x, Tensor weight, int num_heads, "
      "str layout) -> (Tensor, Tensor, Tensor)");
  m.def(kAttention);
  // Gradient of attention w.r.t. qkv, recomputing the probabilities from lse.
  m.def("attention_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse) -> Tensor");
  m.def(kSpatialAttentionResidual);
  // The feed-forward half of a ConvFormer block (paper eq. 8), for inference:
  // x (..., D) -> x + W2 GELU(W1 LayerNorm(x) + b1) + b2 (nn.Linear weights: w1 (H, D), w2 (D, H)).
  m.def(
      "feed_forward_residual(Tensor x, Tensor norm_weight, Tensor norm_bias, float eps, Tensor w1, "
      "Tensor b1, Tensor w2, Tensor b2) -> Tensor");
  // A limit of our kernels by name (csrc/kernel_limits.h), for Python: head-dim buckets,
  // shared memory per target, Winograd points. No tensors: one kernel for every device.
  m.def("kernel_limits(str name) -> int[]");
}

// The CUDA kernels' source run on the CPU by the emulator (backend="cuda_emulated",
// csrc/emulated/). A namespace of its own, rather than CPU kernels of the convformer_fast
// ops: convformer_fast's CPU dispatch key belongs to the cpu backend's kernels, and a CPU
// tensor must be able to reach both. Same op names and schemas, so a backend differs from
// the cuda one only in the namespace it calls.
TORCH_LIBRARY(convformer_fast_emulated, m) {
  m.def(kQkvProjection);
  m.def(kAttention);
  m.def(kSpatialAttentionResidual);
  // Test-only: a tiny kernel with switchable bugs (none, missing_barrier, off_by_one_tile,
  // divergent_barrier, global_out_of_bounds) that the emulator must catch.
  m.def("emulator_selftest(Tensor x, str fault) -> (Tensor, Tensor)");
}
