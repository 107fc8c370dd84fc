// Host side of the ops served by the CUDA kernels of kernels/: argument checks (ValueErrors
// naming the op, the argument, what was given and the limit), output allocation, the launch
// plan (grid, shared memory) and the dtype / head-dim dispatch. Written ONCE, as templates
// over a Launcher, and instantiated twice:
//   csrc/cuda/*.cu          CudaLauncher: the current CUDA stream, under a device guard
//   csrc/emulated/*.cpp     EmulatedLauncher: the same kernel source on the CPU emulator
// so the two differ only in how a kernel is launched. A Launcher provides
//   size_t shared_memory_limit() const;    // dynamic shared memory one block may use
//   template <class Kernel> void launch(const KernelLaunch&, const typename Kernel::Args&) const;
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <iterator>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include "attention.cuh"
#include "kernel_limits.h"
#include "qkv_projection.h"
#include "spatial_attention_residual.cuh"

namespace convformer_fast {

// A block may use 48 KiB of dynamic shared memory without opting in; beyond that (up to the
// device's opt-in limit) the CUDA launcher raises the kernel's limit first.
constexpr size_t kDefaultSharedMemory = 48 * 1024;
constexpr int kMaxFramesPerBlock = 8;

struct KernelLaunch {
  int64_t blocks = 0;
  size_t shared_bytes = 0;
};

// Calls fn(std::integral_constant<int, bucket>) for the smallest bucket >= head_dim.
template <const auto& kBuckets, size_t I = 0, typename Fn>
void dispatch_head_dim(int head_dim, Fn&& fn) {
  constexpr size_t kCount = sizeof(kBuckets) / sizeof(kBuckets[0]);
  if constexpr (I < kCount) {
    if (head_dim <= kBuckets[I]) return fn(std::integral_constant<int, kBuckets[I]>{});
    return dispatch_head_dim<kBuckets, I + 1>(head_dim, std::forward<Fn>(fn));
  } else {
    TORCH_CHECK(false, "dispatch_head_dim: head_dim ", head_dim, " above every bucket");  // checked before
  }
}

inline void check_kernel_dtype(const char* op, const char* arg, const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                    op, ": ", arg, " must be float16, bfloat16, float32 or float64, got ", dtype);
}

inline std::string kib(size_t bytes) { return std::to_string((bytes + 1023) / 1024) + " KiB"; }

// ------------------------------------------------------------------ fused spatial half-block

// out = x + DMHCSA(LayerNorm(x)), spatial layout, inference (kernels/spatial_attention_residual.cuh).
template <class Launcher>
at::Tensor spatial_attention_residual_impl(const Launcher& launcher, const at::Tensor& x_in,
                                           const at::Tensor& norm_weight_in, const at::Tensor& norm_bias_in,
                                           double eps, const at::Tensor& weight_in, const at::Tensor& bias_in,
                                           int64_t num_heads) {
  constexpr const char* op = "spatial_attention_residual";
  const QkvGeometry g = qkv_geometry(op, x_in, weight_in, &bias_in, num_heads, "spatial");
  check_kernel_dtype(op, "x", x_in);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"norm_weight", norm_weight_in},
                                std::pair<const char*, const at::Tensor&>{"norm_bias", norm_bias_in}}) {
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == g.features, op, ": ", name, " must be (F,) = (",
                      g.features, ",), got ", t.sizes());
    TORCH_CHECK_VALUE(t.scalar_type() == x_in.scalar_type(), op, ": ", name, " dtype ", t.scalar_type(),
                      " differs from x dtype ", x_in.scalar_type());
    TORCH_CHECK_VALUE(t.device() == x_in.device(), op, ": ", name, " is on ", t.device(), " but x is on ",
                      x_in.device());
  }
  TORCH_CHECK_VALUE(eps > 0 && eps < 1, op, ": eps must be in (0, 1), got ", eps);
  const bool fp64 = x_in.scalar_type() == at::kDouble;
  const int max_head_dim = fp64 ? kSpatialMaxHeadDimFp64 : kSpatialMaxHeadDim;
  TORCH_CHECK_VALUE(g.head_dim() <= max_head_dim, op, ": d_head = F / num_heads = ", g.features, " / ",
                    num_heads, " = ", g.head_dim(), " exceeds the kernel's limit of ", max_head_dim,
                    fp64 ? " for float64" : "");
  TORCH_CHECK_VALUE(g.tokens <= 4096 && g.features <= 4096 && g.kernel_size <= 255, op,
                    ": J = ", g.tokens, " joints, F = ", g.features, ", k = ", g.kernel_size,
                    " is beyond the kernel's limits (J, F <= 4096, k <= 255)");
  const at::Tensor x = x_in.contiguous(), norm_weight = norm_weight_in.contiguous();
  const at::Tensor norm_bias = norm_bias_in.contiguous(), weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  at::Tensor out = at::empty_like(x);
  if (out.numel() == 0) return out;

  SpatialAttentionShape shape;
  shape.frames = g.batch;
  shape.joints = static_cast<int>(g.tokens);
  shape.features = static_cast<int>(g.features);
  shape.heads = static_cast<int>(g.heads);
  shape.kernel_size = static_cast<int>(g.kernel_size);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // As many frames per block as fit in 48 KiB (8, 4 or 2, at most the frames there are);
    // a single frame may use up to the device's opt-in limit.
    shape.frames_per_block = 1;
    for (int fb = kMaxFramesPerBlock; fb > 1; fb /= 2) {
      SpatialAttentionShape trial = shape;
      trial.frames_per_block = fb;
      if (SpatialSharedLayout<acc_t>(trial).bytes <= kDefaultSharedMemory) {
        shape.frames_per_block = static_cast<int>(std::min<int64_t>(fb, g.batch));
        break;
      }
    }
    const size_t bytes = SpatialSharedLayout<acc_t>(shape).bytes;
    TORCH_CHECK_VALUE(bytes <= launcher.shared_memory_limit(), op, ": one frame of J = ", g.tokens,
                      " joints x F = ", g.features, " features (k = ", g.kernel_size, ", ", x.scalar_type(),
                      ") needs ", kib(bytes), " of shared memory per block, above this device's limit of ",
                      kib(launcher.shared_memory_limit()));
    const SpatialAttentionResidualArgs<scalar_t> args{
        x.const_data_ptr<scalar_t>(), norm_weight.const_data_ptr<scalar_t>(), norm_bias.const_data_ptr<scalar_t>(),
        weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
        eps, shape};
    const auto launch = [&](auto max_head_dim) {
      using Kernel = SpatialAttentionResidualKernel<scalar_t, acc_t, decltype(max_head_dim)::value>;
      launcher.template launch<Kernel>(KernelLaunch{shape.blocks(), bytes}, args);
    };
    if constexpr (std::is_same_v<scalar_t, double>) {
      dispatch_head_dim<kSpatialHeadDimBucketsFp64>(shape.head_dim(), launch);
    } else {
      dispatch_head_dim<kSpatialHeadDimBuckets>(shape.head_dim(), launch);
    }
  });
  return out;
}

// ------------------------------------------------------------------ tiled attention

inline void check_qkv(const char* op, const at::Tensor& qkv) {
  TORCH_CHECK_VALUE(qkv.dim() == 5 && qkv.size(0) == 3, op,
                    ": qkv must be (3, N, h, S, d_head) as written by qkv_projection, got ", qkv.sizes());
  check_kernel_dtype(op, "qkv", qkv);
  TORCH_CHECK_VALUE(qkv.size(4) <= kAttentionMaxHeadDim, op, ": d_head = ", qkv.size(4),
                    " exceeds the kernel's limit of ", kAttentionMaxHeadDim);
  TORCH_CHECK_VALUE(qkv.size(3) <= (int64_t{1} << 30) && qkv.size(2) <= (int64_t{1} << 30), op,
                    ": S = ", qkv.size(3), " tokens, h = ", qkv.size(2), " heads is beyond the kernel's limits");
  for (int64_t dim = 0; dim < 5; ++dim) {
    TORCH_CHECK_VALUE(qkv.stride(dim) >= 0, op, ": qkv has a negative stride ", qkv.strides());
  }
}

// Multi-head attention (3, N, h, S, d) -> out (N, S, h*d), lse (N, h, S) (kernels/attention.cuh).
template <class Launcher>
std::tuple<at::Tensor, at::Tensor> attention_impl(const Launcher& launcher, const at::Tensor& qkv) {
  constexpr const char* op = "attention";
  check_qkv(op, qkv);
  TiledAttentionShape shape;
  shape.batch = qkv.size(1);
  shape.heads = static_cast<int>(qkv.size(2));
  shape.tokens = static_cast<int>(qkv.size(3));
  shape.head_dim = static_cast<int>(qkv.size(4));
  shape.stride_which = qkv.stride(0);
  shape.stride_batch = qkv.stride(1);
  shape.stride_head = qkv.stride(2);
  shape.stride_token = qkv.stride(3);
  shape.stride_dim = qkv.stride(4);
  shape.qkv_extent = 1;
  for (int64_t dim = 0; dim < 5; ++dim) shape.qkv_extent += (qkv.size(dim) - 1) * qkv.stride(dim);
  at::Tensor out = at::empty({shape.batch, shape.tokens, int64_t{shape.heads} * shape.head_dim}, qkv.options());
  at::Tensor lse = at::empty({shape.batch, shape.heads, shape.tokens}, qkv.options());
  if (out.numel() == 0 || lse.numel() == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qkv.scalar_type(), op, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t bytes = AttentionSharedLayout<acc_t>(shape).bytes;
    TORCH_CHECK_VALUE(bytes <= launcher.shared_memory_limit(), op, ": d_head = ", shape.head_dim, " (",
                      qkv.scalar_type(), ") needs ", kib(bytes), " of shared memory per block, above this device's limit of ",
                      kib(launcher.shared_memory_limit()));
    const TiledAttentionArgs<scalar_t> args{qkv.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                            lse.mutable_data_ptr<scalar_t>(), shape};
    dispatch_head_dim<kAttentionHeadDimBuckets>(shape.head_dim, [&](auto max_head_dim) {
      using Kernel = TiledAttentionKernel<scalar_t, acc_t, decltype(max_head_dim)::value>;
      launcher.template launch<Kernel>(KernelLaunch{shape.blocks(), bytes}, args);
    });
  });
  return {out, lse};
}

// ------------------------------------------------------------------ folded conv-QKV

// The folded projection of the kernel backends: ATen's convolution (cuDNN on CUDA, with
// its bias epilogue), whose output viewed head-split (qkv_view_of_conv) is exactly the
// layout the attention kernel reads, so no epilogue kernel of ours is needed. (On CUDA,
// fp32 convolutions follow torch.backends.cudnn.allow_tf32.) winograd_weight, the cpu
// backend's shortcut for temporal layers, is ignored: the convolution needs only `weight`.
inline at::Tensor qkv_projection_conv(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                      int64_t num_heads, c10::string_view layout,
                                      const std::optional<at::Tensor>& /*winograd_weight*/) {
  const auto g = qkv_geometry("qkv_projection", x, weight, &bias, num_heads,
                              std::string_view(layout.data(), layout.size()));
  return qkv_view_of_conv(at::conv1d(conv_input(x, g), weight, bias, 1, g.pad()), g);
}

}  // namespace convformer_fast
