// CUDA registration of convformer_fast::qkv_projection: the folded conv-QKV as ATen's
// convolution (cuDNN: an implicit GEMM on tensor cores with the bias in its epilogue; fp32
// follows torch.backends.cudnn.allow_tf32), viewed head-split without a copy (the layout
// kernels/attention.cuh reads). Shared with the emulated backend (csrc/kernel_ops.h). Its
// backward is ATen's convolution backward (csrc/qkv_projection.h), as on the CPU.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernel_ops.h"

namespace convformer_fast {
namespace {

at::Tensor qkv_projection_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                               int64_t num_heads, c10::string_view layout,
                               const std::optional<at::Tensor>& winograd_weight) {
  const c10::cuda::CUDAGuard guard(x.device());
  return qkv_projection_conv(x, weight, bias, num_heads, layout, winograd_weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(convformer_fast, CUDA, m) {
  m.impl("qkv_projection", &qkv_projection_cuda);
  m.impl("qkv_projection_backward", &qkv_projection_backward_aten);
}

}  // namespace convformer_fast
