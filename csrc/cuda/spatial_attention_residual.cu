// CUDA registration of convformer_fast::spatial_attention_residual: the fused
// LayerNorm -> folded conv-QKV -> attention -> residual kernel of
// kernels/spatial_attention_residual.cuh (inference only).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/cuda_launcher.h"

namespace convformer_fast {
namespace {

at::Tensor spatial_attention_residual_cuda(const at::Tensor& x, const at::Tensor& norm_weight,
                                           const at::Tensor& norm_bias, double eps, const at::Tensor& weight,
                                           const at::Tensor& bias, int64_t num_heads) {
  const c10::cuda::CUDAGuard guard(x.device());
  return spatial_attention_residual_impl(CudaLauncher{x.device().index()}, x, norm_weight, norm_bias, eps, weight,
                                         bias, num_heads);
}

}  // namespace

TORCH_LIBRARY_IMPL(convformer_fast, CUDA, m) {
  m.impl("spatial_attention_residual", &spatial_attention_residual_cuda);
}

}  // namespace convformer_fast
