// convformer_fast_emulated::emulator_selftest (tests only): a tiny kernel with switchable
// bugs (selftest_kernel.h) that the emulator must catch.
#include <torch/library.h>

#include <string>

#include "emulated/selftest_kernel.h"
#include "emulated/emulated_launcher.h"

namespace convformer_fast {
namespace {

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
  m.impl("emulator_selftest", &emulator_selftest);
}

}  // namespace convformer_fast
