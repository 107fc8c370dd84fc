// convformer_fast::kernel_limits(name) -> int[]: the limits of kernel_limits.h, by name, for
// Python (convformer_fast/ops/limits.py). An op with no tensor argument: one kernel for
// every device.
#include <torch/library.h>

#include <string>
#include <vector>

#include "kernel_limits.h"

namespace convformer_fast {
namespace {

template <class Array>
std::vector<int64_t> as_list(const Array& values) {
  return std::vector<int64_t>(std::begin(values), std::end(values));
}

std::vector<int64_t> kernel_limits(c10::string_view name_view) {
  const std::string name(name_view.data(), name_view.size());
  if (name == "spatial_head_dim_buckets") return as_list(kSpatialHeadDimBuckets);
  if (name == "spatial_head_dim_buckets_float64") return as_list(kSpatialHeadDimBucketsFp64);
  if (name == "attention_head_dim_buckets") return as_list(kAttentionHeadDimBuckets);
  if (name == "shared_memory_per_block_optin") {  // [arch, bytes, arch, bytes, ...]
    std::vector<int64_t> out;
    for (const auto& target : kTargetSharedMemory) {
      out.push_back(target.arch);
      out.push_back(static_cast<int64_t>(target.per_block_optin));
    }
    return out;
  }
  if (name == "emulated_shared_memory_per_block") return {static_cast<int64_t>(kEmulatedSharedMemoryLimit)};
  if (name == "winograd_max_points") return {kMaxWinogradPoints};
  TORCH_CHECK_VALUE(false, "kernel_limits: name must be one of spatial_head_dim_buckets, "
                    "spatial_head_dim_buckets_float64, attention_head_dim_buckets, shared_memory_per_block_optin, "
                    "emulated_shared_memory_per_block, winograd_max_points; got '", name, "'");
}

}  // namespace

TORCH_LIBRARY_IMPL(convformer_fast, CompositeExplicitAutograd, m) {
  m.impl("kernel_limits", &kernel_limits);
}

}  // namespace convformer_fast
