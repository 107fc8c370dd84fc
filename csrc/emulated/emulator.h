// CPU emulation of CUDA thread blocks, for the kernels of kernels/ (see block_context.cuh).
// Plain C++20, no PyTorch: it also backs the C++ kernel tests (tests/cpp/).
//
// A launch runs the kernel's blocks one after another on a persistent pool of blockDim
// real threads (std::thread, reused across blocks and launches; never one per element):
// each pool thread is one CUDA thread of the current block, `sync()` is a barrier among
// them, so barrier placement is exercised by real concurrency. What a GPU would let slip,
// the emulator makes fail deterministically, as a KernelFault naming the kernel, block,
// threads and index:
//   * every shared-memory access is checked against its array's bounds (which lie within
//     the block's allocation), and every global-memory index against its array's size;
//   * shared memory is filled with 0xFF bytes (NaN in every float type) at each block's
//     start, and a read of a word no thread of the block has written yet is reported (at
//     the next barrier, unless another thread's write turns it into a data race first);
//   * a race detector remembers, per 4-byte shared word, the last writer and the last
//     reader(s) with the barrier epoch of the access; a read or write by another thread in
//     the same epoch (no barrier in between) is a data race. Both sides of a conflicting
//     pair check the other's record after publishing their own (sequentially consistent
//     atomics), so a race is caught whatever order the threads happen to run in;
//   * a barrier reached by some threads at a different sync() (or after others returned)
//     is reported as barrier divergence instead of hanging.
// Global memory is not race-checked (kernels write disjoint outputs).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "block_context.cuh"

namespace convformer_fast::emulator {

// What a launch throws when the kernel did something a GPU must never do.
class KernelFault : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class EmulatedBlock;

namespace detail {

// Thrown through a thread's kernel body once the launch has failed (by any thread).
struct BlockAborted {};

// One launch: configuration, the current block's shared memory and its access records,
// the block barrier, and the first fault.
class Launch {
 public:
  Launch(const char* kernel, int64_t grid, int threads, size_t shared_bytes);

  const char* kernel() const { return kernel_; }
  int64_t grid() const { return grid_; }
  int threads() const { return threads_; }
  size_t shared_bytes() const { return shared_bytes_; }
  unsigned char* shared_data() { return shared_.get(); }

  // Barrier among the block's threads; `exiting` marks a thread that finished the block
  // body, `syncs` how many sync() it has passed in this block. Returns the new epoch.
  uint64_t arrive(int thread, int64_t block, bool exiting, int64_t syncs);
  uint64_t epoch() const { return phase_.load(); }

  // Record a fault (the first one wins), wake every thread, unwind the caller.
  [[noreturn]] void fail(const std::string& message);
  bool failed() const { return aborted_.load(std::memory_order_relaxed); }
  const std::string& message() const { return message_; }
  std::string where(int64_t block, int thread) const;

  // Access records of one 4-byte shared word (see the file comment).
  void on_shared_read(size_t word, int thread, uint64_t epoch, int64_t block, const char* array, int64_t index);
  void on_shared_write(size_t word, int thread, uint64_t epoch, int64_t block, const char* array, int64_t index);

 private:
  void reset_shared();  // poison + forget access records, before each block

  const char* kernel_;
  int64_t grid_;
  int threads_;
  size_t shared_bytes_, shared_words_;
  std::unique_ptr<unsigned char[]> shared_;
  std::unique_ptr<std::atomic<uint64_t>[]> last_write_, last_read_;

  std::mutex mutex_;           // barrier arrivals and the fault message
  std::atomic<uint64_t> phase_{1};
  std::atomic<bool> aborted_{false};
  int arrived_ = 0;
  bool first_exiting_ = false;
  int64_t first_syncs_ = 0;
  int first_thread_ = 0;
  std::string message_;
  std::string uninitialised_read_;  // first read of a never-written word, pending
};

}  // namespace detail

// A read/write proxy for one shared-memory element under the emulator.
template <typename T>
class SharedRef {
 public:
  SharedRef(const EmulatedBlock* blk, SharedArray<T> array, unsigned char* base, int64_t index)
      : blk_(blk), array_(array), base_(base), index_(index) {}
  operator T() const;
  const SharedRef& operator=(T value) const;
  const SharedRef& operator=(const SharedRef& other) const { return *this = static_cast<T>(other); }
  const SharedRef& operator+=(T value) const { return *this = static_cast<T>(*this) + value; }
  const SharedRef& operator*=(T value) const { return *this = static_cast<T>(*this) * value; }

 private:
  const EmulatedBlock* blk_;
  SharedArray<T> array_;
  unsigned char* base_;
  int64_t index_;
};

template <typename T>
class SharedSpan {
 public:
  static_assert(sizeof(T) % 4 == 0, "the race detector tracks 4-byte words: shared arrays hold 4- or 8-byte types");
  SharedSpan(const EmulatedBlock* blk, SharedArray<T> array, unsigned char* base)
      : blk_(blk), array_(array), base_(base) {}
  SharedRef<T> operator[](int64_t index) const { return SharedRef<T>(blk_, array_, base_, index); }

 private:
  const EmulatedBlock* blk_;
  SharedArray<T> array_;
  unsigned char* base_;
};

template <typename T>
class GlobalSpan {
 public:
  GlobalSpan(const EmulatedBlock* blk, T* data, int64_t count, const char* name)
      : blk_(blk), data_(data), count_(count), name_(name) {}
  T& operator[](int64_t index) const;

 private:
  const EmulatedBlock* blk_;
  T* data_;
  int64_t count_;
  const char* name_;
};

// The block context of one emulated thread (the CPU twin of GpuBlock).
class EmulatedBlock {
 public:
  EmulatedBlock(detail::Launch* launch, int thread) : launch_(launch), thread_(thread) {}

  int thread() const { return thread_; }
  int size() const { return launch_->threads(); }
  int64_t block() const { return block_; }
  void sync() {
    ++syncs_;
    epoch_ = launch_->arrive(thread_, block_, /*exiting=*/false, syncs_);
  }
  template <typename T>
  SharedSpan<T> shared(SharedArray<T> array) const {
    const uint64_t end = static_cast<uint64_t>(array.offset) + static_cast<uint64_t>(array.count) * sizeof(T);
    if (array.offset % alignof(T) != 0 || end > launch_->shared_bytes()) {
      fail("shared array '" + std::string(array.name) + "' [" + std::to_string(array.offset) + ", " +
           std::to_string(end) + ") bytes lies outside the block's " +
           std::to_string(launch_->shared_bytes()) + " bytes of shared memory");
    }
    return SharedSpan<T>(this, array, launch_->shared_data());
  }
  template <typename T>
  GlobalSpan<T> global(T* data, int64_t count, const char* name) const {
    return GlobalSpan<T>(this, data, count, name);
  }

  // Used by the views.
  [[noreturn]] void fail(const std::string& what) const {
    launch_->fail(launch_->where(block_, thread_) + ": " + what);
  }
  void check_running() const {
    if (launch_->failed()) throw detail::BlockAborted{};
  }
  uint64_t epoch() const { return epoch_; }
  detail::Launch* launch() const { return launch_; }

  // Driven by the launcher.
  void begin_block(int64_t block) {
    block_ = block;
    syncs_ = 0;
    epoch_ = launch_->epoch();
  }
  void end_block() { launch_->arrive(thread_, block_, /*exiting=*/true, syncs_); }

 private:
  detail::Launch* launch_;
  int thread_;
  int64_t block_ = 0;
  int64_t syncs_ = 0;
  uint64_t epoch_ = 0;
};

template <typename T>
SharedRef<T>::operator T() const {
  if (index_ < 0 || index_ >= static_cast<int64_t>(array_.count)) {
    blk_->fail("shared-memory read at index " + std::to_string(index_) + " is out of bounds of '" +
               array_.name + "' (" + std::to_string(array_.count) + " elements)");
  }
  blk_->check_running();
  const size_t byte = array_.offset + static_cast<size_t>(index_) * sizeof(T);
  for (size_t w = 0; w < sizeof(T) / 4; ++w) {
    blk_->launch()->on_shared_read(byte / 4 + w, blk_->thread(), blk_->epoch(), blk_->block(), array_.name, index_);
  }
  T value;
  std::memcpy(&value, base_ + byte, sizeof(T));
  return value;
}

template <typename T>
const SharedRef<T>& SharedRef<T>::operator=(T value) const {
  if (index_ < 0 || index_ >= static_cast<int64_t>(array_.count)) {
    blk_->fail("shared-memory write at index " + std::to_string(index_) + " is out of bounds of '" +
               array_.name + "' (" + std::to_string(array_.count) + " elements)");
  }
  blk_->check_running();
  const size_t byte = array_.offset + static_cast<size_t>(index_) * sizeof(T);
  for (size_t w = 0; w < sizeof(T) / 4; ++w) {
    blk_->launch()->on_shared_write(byte / 4 + w, blk_->thread(), blk_->epoch(), blk_->block(), array_.name, index_);
  }
  std::memcpy(base_ + byte, &value, sizeof(T));
  return *this;
}

template <typename T>
T& GlobalSpan<T>::operator[](int64_t index) const {
  if (index < 0 || index >= count_) {
    blk_->fail("global-memory index " + std::to_string(index) + " is out of bounds of '" + name_ + "' (" +
               std::to_string(count_) + " elements)");
  }
  return data_[index];
}

// Runs `body` as every thread of every block of a 1-D grid; throws KernelFault on a fault.
// Launches are serialised (one pool); the calling thread waits.
void launch(const char* kernel, int64_t grid, int threads, size_t shared_bytes,
            const std::function<void(EmulatedBlock&)>& body);

template <class Kernel>
void launch(int64_t grid, size_t shared_bytes, const typename Kernel::Args& args) {
  launch(Kernel::kName, grid, Kernel::kThreads, shared_bytes,
         [&args](EmulatedBlock& blk) { Kernel::run(blk, args); });
}

}  // namespace convformer_fast::emulator
