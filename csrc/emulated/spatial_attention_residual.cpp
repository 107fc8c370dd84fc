// convformer_fast_emulated::spatial_attention_residual: the CUDA kernel of
// kernels/spatial_attention_residual.cuh on the CPU emulator.
#include <torch/library.h>

#include "emulated/emulated_launcher.h"

namespace convformer_fast {
namespace {

at::Tensor spatial_attention_residual_emulated(const at::Tensor& x, const at::Tensor& norm_weight,
                                               const at::Tensor& norm_bias, double eps, const at::Tensor& weight,
                                               const at::Tensor& bias, int64_t num_heads) {
  return spatial_attention_residual_impl(EmulatedLauncher{}, x, norm_weight, norm_bias, eps, weight, bias,
                                         num_heads);
}

}  // namespace

TORCH_LIBRARY_IMPL(convformer_fast_emulated, CPU, m) {
  m.impl("spatial_attention_residual", &spatial_attention_residual_emulated);
}

}  // namespace convformer_fast
