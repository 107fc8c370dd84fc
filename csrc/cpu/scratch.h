// Per-thread scratch buffers reused across calls, so hot loops neither allocate nor zero
// memory on every call. Each buffer grows to the largest request its thread has made
// (bounded by one work item: a chunk of frames or one attention head).
#pragma once

#include <cstdint>
#include <vector>

namespace convformer_fast::cpu {

// Slot tells apart buffers that must be live at the same time in one thread. Kernels use
// slots 0-9; a kernel that calls another one inside its own work items (the fused spatial
// block runs attention per chunk) keeps its buffers in slots 10 and up.
template <typename T, int Slot>
T* scratch(int64_t size) {
  thread_local std::vector<T> buffer;
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

}  // namespace convformer_fast::cpu
