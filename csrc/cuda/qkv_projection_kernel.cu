// CUDA registration of convformer_fast::qkv_projection (kernels/qkv_projection.cuh),
// launched on the current stream under a device guard. Its backward is the ATen one in
// csrc/qkv_projection.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>

#include "qkv_projection.cuh"
#include "qkv_projection.h"

namespace convformer_fast {
namespace {

constexpr int kThreads = 256;

at::Tensor qkv_projection_cuda(const at::Tensor& x_in, const at::Tensor& weight_in,
                               const at::Tensor& bias_in, int64_t num_heads,
                               c10::string_view layout,
                               const std::optional<at::Tensor>& /*winograd_weight: a CPU-only shortcut*/) {
  const auto g = qkv_geometry("qkv_projection", x_in, weight_in, &bias_in, num_heads,
                              std::string_view(layout.data(), layout.size()));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous(), bias = bias_in.contiguous();
  at::Tensor y = at::empty({g.batch, g.out_channels(), g.length()}, x.options());
  const int64_t total = y.numel();
  if (total == 0) return qkv_view_of_conv(y, g);
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535LL * 8);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "qkv_projection_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    qkv_projection_direct_kernel<scalar_t, acc_t>
        <<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
            bias.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return qkv_view_of_conv(y, g);
}

}  // namespace

TORCH_LIBRARY_IMPL(convformer_fast, CUDA, m) {
  m.impl("qkv_projection", &qkv_projection_cuda);
}

}  // namespace convformer_fast
