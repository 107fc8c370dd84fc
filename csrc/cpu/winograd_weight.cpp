// convformer_fast::winograd_weight on the CPU: the folded weight (3C, C, k) transformed for
// Winograd F(tile, k), which the cpu backend caches beside the fold and passes to
// qkv_projection for temporal layers (the transform itself is in winograd.cpp).
#include <torch/library.h>

#include "cpu/winograd.h"

TORCH_LIBRARY_IMPL(convformer_fast, CPU, m) {
  m.impl("winograd_weight", &convformer_fast::cpu::winograd_weight);
}
