// The limits of our kernels that Python must know too: the backends declare them, the audit
// checks against them, the tests sweep them. Written once here and exported through the op
// convformer_fast::kernel_limits(name) -> int[] (kernel_limits.cpp); Python reads them back
// (convformer_fast/ops/limits.py) and never copies them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>

namespace convformer_fast {

// Head-dim limits of the CUDA kernels: each is compiled for a few register budgets (the
// largest head dimension a thread keeps in registers) and a layer is served by the smallest
// bucket that fits.
constexpr int kSpatialHeadDimBuckets[] = {8, 32, 64};
// fp64 stops at 32: a thread keeps its query and output rows in registers, and 2 x 64
// doubles are all 255 registers a thread may have (that build spilled ~160 B on sm_80/90).
constexpr int kSpatialHeadDimBucketsFp64[] = {8, 32};
constexpr int kAttentionHeadDimBuckets[] = {16, 32, 72, 128};  // 72: the paper's d_head = 68
// Each kernel's limit is its largest bucket.
constexpr int kSpatialMaxHeadDim = std::end(kSpatialHeadDimBuckets)[-1];
constexpr int kSpatialMaxHeadDimFp64 = std::end(kSpatialHeadDimBucketsFp64)[-1];
constexpr int kAttentionMaxHeadDim = std::end(kAttentionHeadDimBuckets)[-1];

// Dynamic shared memory one block may use after opting in, per GPU we build for (CUDA
// programming guide, compute capability tables).
struct TargetSharedMemory {
  int arch;                // compute capability x 10
  size_t per_block_optin;  // bytes
};
constexpr TargetSharedMemory kTargetSharedMemory[] = {{80, 163 * 1024}, {90, 227 * 1024}};
// The emulator enforces the smallest of them, so a launch that passes there fits on every
// target.
constexpr size_t kEmulatedSharedMemoryLimit = [] {
  size_t smallest = kTargetSharedMemory[0].per_block_optin;
  for (const auto& target : kTargetSharedMemory) {
    if (target.per_block_optin < smallest) smallest = target.per_block_optin;
  }
  return smallest;
}();

// Winograd F(m, k) of the cpu backend's temporal projection: alpha = m + k - 1 points at
// most (the fp32 error grows quickly beyond, csrc/cpu/winograd.h).
constexpr int64_t kMaxWinogradPoints = 10;

}  // namespace convformer_fast
