// convformer_fast_emulated::attention: the tiled attention kernel of kernels/attention.cuh on
// the CPU emulator.
#include <torch/library.h>

#include "emulated/emulated_launcher.h"

namespace convformer_fast {
namespace {

std::tuple<at::Tensor, at::Tensor> attention_emulated(const at::Tensor& qkv) {
  return attention_impl(EmulatedLauncher{}, qkv);
}

}  // namespace

TORCH_LIBRARY_IMPL(convformer_fast_emulated, CPU, m) {
  m.impl("attention", &attention_emulated);
}

}  // namespace convformer_fast
