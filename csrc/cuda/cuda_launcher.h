// How the ops of csrc/kernel_ops.h launch a kernel of kernels/ on a GPU: on the current
// stream of the tensors' device (the caller holds a device guard), raising the kernel's
// dynamic shared-memory limit first when a block needs more than the default 48 KiB.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernel_ops.h"

namespace convformer_fast {

struct CudaLauncher {
  c10::DeviceIndex device;

  size_t shared_memory_limit() const {
    int bytes = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    return static_cast<size_t>(bytes);
  }

  template <class Kernel>
  void launch(const KernelLaunch& plan, const typename Kernel::Args& args) const {
    TORCH_CHECK_VALUE(plan.blocks <= INT32_MAX, Kernel::kName, ": ", plan.blocks,
                      " thread blocks exceed the grid limit of 2^31 - 1");
    auto* entry = &run_kernel_on_gpu<Kernel>;
    if (plan.shared_bytes > kDefaultSharedMemory) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(entry, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(plan.shared_bytes)));
    }
    entry<<<static_cast<unsigned int>(plan.blocks), Kernel::kThreads, plan.shared_bytes,
            c10::cuda::getCurrentCUDAStream(device)>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace convformer_fast
