// CPU registrations of the convformer_fast_emulated ops (backend="cuda_emulated"): the ops
// the CUDA backend runs, with the same host code (csrc/kernel_ops.h) and the same kernel
// source (kernels/), launched on the CPU emulator (emulator.h) instead of a GPU. Slow: for
// tests and debugging.
#include <torch/library.h>

#include <string>

#include "emulated/emulator.h"
#include "emulated/selftest_kernel.h"
#include "kernel_ops.h"

namespace convformer_fast {
namespace {

// The emulator enforces the smallest opt-in shared-memory limit of the GPUs we build for
// (sm_80, A100: 163 KiB; sm_90 allows 227 KiB), so whatever passes here fits on both.
constexpr size_t kEmulatedSharedMemoryLimit = 163 * 1024;

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

at::Tensor spatial_attention_residual_emulated(const at::Tensor& x, const at::Tensor& norm_weight,
                                               const at::Tensor& norm_bias, double eps, const at::Tensor& weight,
                                               const at::Tensor& bias, int64_t num_heads) {
  return spatial_attention_residual_impl(EmulatedLauncher{}, x, norm_weight, norm_bias, eps, weight, bias,
                                         num_heads);
}

std::tuple<at::Tensor, at::Tensor> attention_emulated(const at::Tensor& qkv) {
  return attention_impl(EmulatedLauncher{}, qkv);
}

std::tuple<at::Tensor, at::Tensor> emulator_selftest(const at::Tensor& x_in, c10::string_view fault_name) {
  const std::string name(fault_name.data(), fault_name.size());
  SelftestFault fault;
  if (name == "none") {
    fault = SelftestFault::kNone;
  } else if (name == "missing_barrier") {
    fault = SelftestFault::kMissingBarrier;
  } else if (name == "off_by_one_tile") {
    fault = SelftestFault::kOffByOneTile;
  } else if (name == "divergent_barrier") {
    fault = SelftestFault::kDivergentBarrier;
  } else if (name == "global_out_of_bounds") {
    fault = SelftestFault::kGlobalOutOfBounds;
  } else {
    TORCH_CHECK_VALUE(false, "emulator_selftest: fault must be one of none, missing_barrier, off_by_one_tile, "
                             "divergent_barrier, global_out_of_bounds; got '", name, "'");
  }
  TORCH_CHECK_VALUE(x_in.dim() == 1 && x_in.scalar_type() == at::kFloat, "emulator_selftest: x must be a 1-D "
                    "float32 tensor, got ", x_in.sizes(), " ", x_in.scalar_type());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  at::Tensor sums = at::empty({SelftestKernel::blocks(x.numel())}, x.options());
  const SelftestArgs args{x.const_data_ptr<float>(), out.mutable_data_ptr<float>(), sums.mutable_data_ptr<float>(),
                          x.numel(), fault};
  EmulatedLauncher{}.launch<SelftestKernel>(
      KernelLaunch{SelftestKernel::blocks(x.numel()), SelftestKernel::tile_array().count * sizeof(float)}, args);
  return {out, sums};
}

}  // namespace

TORCH_LIBRARY_IMPL(convformer_fast_emulated, CPU, m) {
  m.impl("qkv_projection", &qkv_projection_conv);
  m.impl("attention", &attention_emulated);
  m.impl("spatial_attention_residual", &spatial_attention_residual_emulated);
  m.impl("emulator_selftest", &emulator_selftest);
}

}  // namespace convformer_fast
