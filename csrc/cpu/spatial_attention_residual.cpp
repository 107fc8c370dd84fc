// convformer_fast::spatial_attention_residual on the CPU: the attention half of a spatial
// ConvFormer block (paper eq. 8), x + DMHCSA(LN(x)), in one pass over x (inference).
//
// A spatial layer is thousands of frames of J = 17 joints x d = 32 features. Unfused, each
// step (LayerNorm, im2col GEMM, attention, residual add) is a pass over memory and the
// Q/K/V projection a 3x-wider round trip. Here each worker takes a chunk of frames (about
// 384 rows) and keeps everything in L2: LayerNorm into a buffer, the folded projection as one
// GEMM in row layout (spatial_projection.h), attention reading Q, K, V straight from that
// buffer (a strided qkv view, attention.h) and writing into the output, then the residual.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "cpu/attention.h"
#include "cpu/layer_norm.h"
#include "cpu/scratch.h"
#include "cpu/spatial_projection.h"
#include "qkv_projection.h"

namespace convformer_fast::cpu {
namespace {

// With heads % kHeadLanes == 0 (the paper's 8 heads) the projection writes Q, K and V
// feature-major ([which][e][head] columns: weight_t and bias permuted to match) and the
// attention keeps a frame's heads in vector lanes (attention.h); otherwise it runs the
// per-head query-major kernel on the usual [which][head][e] columns.
bool heads_in_lanes(const QkvGeometry& g) { return g.heads % kHeadLanes == 0; }

template <typename T>
void spatial_block_kernel(const T* x, const T* gamma, const T* beta, T eps, const T* weight_t,
                          const T* bias, T* out, const QkvGeometry& g) {
  const int64_t J = g.tokens, F = g.features, dh = g.head_dim(), rows_per_frame = J * F;
  const int64_t frames_per_chunk = frames_per_projection_chunk(g);
  const int64_t chunks = (g.batch + frames_per_chunk - 1) / frames_per_chunk;
  const bool lanes = heads_in_lanes(g);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    // Slots above the attention kernel's: it runs nested in this thread (scratch.h).
    T* normed = scratch<T, 10>(frames_per_chunk * rows_per_frame);
    T* im2col = scratch<T, 11>(frames_per_chunk * J * g.kernel_size * F);
    T* qkv_rows = scratch<T, 12>(frames_per_chunk * J * 3 * F);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t n0 = chunk * frames_per_chunk, frames = std::min(frames_per_chunk, g.batch - n0);
      const T* xc = x + n0 * rows_per_frame;
      T* oc = out + n0 * rows_per_frame;
      layer_norm_rows(xc, normed, frames * J, F, gamma, beta, eps);
      project_frames(normed, frames, weight_t, bias, qkv_rows, im2col, g);
      if (lanes) {
        run_attention_residual_heads_in_lanes(qkv_rows, xc, oc, frames, J, g.heads, dh);
        continue;
      }
      // Row f J + j of qkv_rows holds Q, K, V of joint j of frame f: (3, frames, h, J, dh)
      // with strides (F, J 3F, dh, 3F, 1).
      const AttentionShape shape{frames, g.heads, J, dh, F, J * 3 * F, dh, 3 * F, 1};
      run_attention_forward(qkv_rows, oc, static_cast<T*>(nullptr), shape);  // a nested parallel_for runs inline
      for (int64_t i = 0; i < frames * rows_per_frame; ++i) oc[i] += xc[i];
    }
  });
}

void check_norm(const at::Tensor& t, const char* name, int64_t dim, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == dim, "spatial_attention_residual: ", name, " must be (",
                    dim, ",), got ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type(), "spatial_attention_residual: ", name, " dtype ",
                    t.scalar_type(), " differs from x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), "spatial_attention_residual: ", name, " is on ", t.device(),
                    " but x is on ", x.device());
}

at::Tensor spatial_attention_residual_cpu(const at::Tensor& x_in, const at::Tensor& norm_weight,
                                          const at::Tensor& norm_bias, double eps, const at::Tensor& weight,
                                          const at::Tensor& bias, int64_t num_heads) {
  const auto g = qkv_geometry("spatial_attention_residual", x_in, weight, &bias, num_heads, "spatial");
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
                    "spatial_attention_residual: the CPU kernel supports float32 and float64, got ",
                    x_in.scalar_type());
  check_norm(norm_weight, "norm_weight", g.features, x_in);
  check_norm(norm_bias, "norm_bias", g.features, x_in);
  TORCH_CHECK_VALUE(eps > 0, "spatial_attention_residual: eps must be > 0, got ", eps);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  at::Tensor b = bias.contiguous(), weight_t = projection_gemm_weight(weight, g);
  if (heads_in_lanes(g)) {  // output columns [which][head][e] -> [which][e][head]
    const int64_t k_f = weight_t.size(0), dh = g.head_dim();
    weight_t = weight_t.view({k_f, 3, g.heads, dh}).transpose(2, 3).reshape({k_f, 3 * g.features}).contiguous();
    b = b.view({3, g.heads, dh}).transpose(1, 2).reshape({3 * g.features}).contiguous();
  }
  const at::Tensor gamma = norm_weight.contiguous(), beta = norm_bias.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spatial_attention_residual", [&] {
    spatial_block_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), gamma.const_data_ptr<scalar_t>(),
                                   beta.const_data_ptr<scalar_t>(), static_cast<scalar_t>(eps),
                                   weight_t.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
                                   out.mutable_data_ptr<scalar_t>(), g);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(convformer_fast, CPU, m) {
  m.impl("spatial_attention_residual", &spatial_attention_residual_cpu);
}

}  // namespace convformer_fast::cpu
