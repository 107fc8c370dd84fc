// The Launcher (csrc/kernel_ops.h) of the convformer_fast_emulated ops: the CUDA kernels'
// host code and kernel source (kernels/) run on the CPU emulator (emulator.h) instead of a
// GPU, for backend="cuda_emulated" (slow: for tests and debugging). One file per op
// registers it in this folder, as csrc/cuda/ does with CudaLauncher.
#pragma once

#include <c10/util/Exception.h>

#include "emulated/emulator.h"
#include "kernel_limits.h"
#include "kernel_ops.h"

namespace convformer_fast {

struct EmulatedLauncher {
  size_t shared_memory_limit() const { return kEmulatedSharedMemoryLimit; }

  template <class Kernel>
  void launch(const KernelLaunch& plan, const typename Kernel::Args& args) const {
    try {
      emulator::launch<Kernel>(plan.blocks, plan.shared_bytes, args);
    } catch (const emulator::KernelFault& fault) {
      TORCH_CHECK(false, fault.what());
    }
  }
};

}  // namespace convformer_fast
