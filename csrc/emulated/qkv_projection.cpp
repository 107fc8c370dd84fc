// convformer_fast_emulated::qkv_projection: as on CUDA, ATen's convolution viewed head-split
// (qkv_projection_conv in csrc/kernel_ops.h); there is no kernel of ours to emulate. Its
// gradient is convformer_fast::qkv_projection_backward (registered in Python).
#include <torch/library.h>

#include "kernel_ops.h"

TORCH_LIBRARY_IMPL(convformer_fast_emulated, CPU, m) {
  m.impl("qkv_projection", &convformer_fast::qkv_projection_conv);
}
