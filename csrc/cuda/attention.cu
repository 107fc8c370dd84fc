// CUDA registration of convformer_fast::attention: the tiled online-softmax kernel of
// kernels/attention.cuh (forward only: the cuda backend computes gradients on the torch path).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/cuda_launcher.h"

namespace convformer_fast {
namespace {

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& qkv) {
  const c10::cuda::CUDAGuard guard(qkv.device());
  return attention_impl(CudaLauncher{qkv.device().index()}, qkv);
}

}  // namespace

TORCH_LIBRARY_IMPL(convformer_fast, CUDA, m) {
  m.impl("attention", &attention_cuda);
}

}  // namespace convformer_fast
