// The "block context" the kernels of kernels/ are written against, so that one kernel source
// runs on a GPU and, unchanged, on the CPU under the emulator of csrc/emulated/.
//
// A kernel is a struct with
//   static constexpr const char* kName;     // named in every error the emulator reports
//   static constexpr int kThreads;          // threads per block (the launch's blockDim.x)
//   using Args = ...;                       // one plain struct of pointers and sizes
//   template <class Block> CF_HOST_DEVICE static void run(Block& blk, const Args& args);
// and `run` is the body of one thread of one block. Everything it does to the machine goes
// through `blk`:
//   blk.thread(), blk.size(), blk.block()   threadIdx.x, blockDim.x, blockIdx.x (1-D grids)
//   blk.sync()                              __syncthreads()
//   blk.shared(region)                      a typed view of a SharedArray of the block's
//                                           dynamic shared memory
//   blk.global(pointer, count, name)        a view of a global-memory array of `count` elements
// Views are indexed with []: `float v = tile[i];  tile[i] = v;`. On the GPU they are plain
// pointers; under the emulator every shared access is checked (bounds, reads of never-written
// words, data races between barriers) and every global index is bounds-checked. Because an
// emulated view returns a proxy, kernels read shared memory into explicitly typed locals
// (`const acc_t v = tile[i];`, never `auto v = tile[i];`).
//
// The kernels need no warp shuffles (each reduction is owned by one thread or combined
// through shared memory), so the context has none. No tensor-core intrinsics either: large
// GEMMs go to cuBLAS/cuDNN through ATen (csrc/).
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "qkv_layout.h"  // CF_HOST_DEVICE

#if defined(__CUDA_ARCH__)
#define CF_UNROLL _Pragma("unroll")
#else
#define CF_UNROLL
#endif

namespace convformer_fast {

// A typed slice of a block's dynamic shared memory: where it starts (bytes, 16-byte
// aligned), how many elements it holds, and a name for error messages.
template <typename T>
struct SharedArray {
  uint32_t offset = 0;
  uint32_t count = 0;
  const char* name = "";

  // The same bytes seen as another array (memory reused once the first is dead). The
  // caller keeps count * sizeof(U) within this array's bytes.
  template <typename U>
  CF_HOST_DEVICE SharedArray<U> alias(uint32_t elements, const char* alias_name) const {
    return SharedArray<U>{offset, elements, alias_name};
  }
};

// Lays out a block's shared memory: each kernel describes its arrays once, in a function
// used both by the host (to size the launch) and by the kernel (to find its arrays).
class SharedCarver {
 public:
  template <typename T>
  CF_HOST_DEVICE SharedArray<T> take(int64_t count, const char* name) {
    SharedArray<T> array{bytes_, static_cast<uint32_t>(count), name};
    const uint64_t end = static_cast<uint64_t>(bytes_) + static_cast<uint64_t>(count) * sizeof(T);
    bytes_ = static_cast<uint32_t>((end + 15) / 16 * 16);
    return array;
  }
  CF_HOST_DEVICE uint32_t bytes() const { return bytes_; }

 private:
  uint32_t bytes_ = 0;
};

// Math that has to read the same in host and device code.
namespace kmath {

template <typename T>
CF_HOST_DEVICE T infinity() {
  return std::numeric_limits<T>::infinity();
}

CF_HOST_DEVICE float exp2(float x) {
#if defined(__CUDA_ARCH__)
  return exp2f(x);
#else
  return __builtin_exp2f(x);
#endif
}
CF_HOST_DEVICE double exp2(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp2(x);
#else
  return __builtin_exp2(x);
#endif
}
CF_HOST_DEVICE float log2(float x) {
#if defined(__CUDA_ARCH__)
  return log2f(x);
#else
  return __builtin_log2f(x);
#endif
}
CF_HOST_DEVICE double log2(double x) {
#if defined(__CUDA_ARCH__)
  return ::log2(x);
#else
  return __builtin_log2(x);
#endif
}
// 1 / sqrt(x), correctly rounded on both sides (the approximate rsqrtf would make GPU and
// emulator results differ more than they must).
CF_HOST_DEVICE float rsqrt(float x) {
#if defined(__CUDA_ARCH__)
  return 1.0f / sqrtf(x);
#else
  return 1.0f / __builtin_sqrtf(x);
#endif
}
CF_HOST_DEVICE double rsqrt(double x) {
#if defined(__CUDA_ARCH__)
  return 1.0 / ::sqrt(x);
#else
  return 1.0 / __builtin_sqrt(x);
#endif
}
// max that propagates a NaN in either argument (as torch.softmax does).
template <typename T>
CF_HOST_DEVICE T max_nan(T a, T b) {
  return (a != a || a > b) ? a : b;
}
template <typename T>
CF_HOST_DEVICE T min(T a, T b) {
  return a < b ? a : b;
}

constexpr double kLog2e = 1.4426950408889634;  // log2(e): softmax runs on exp2
constexpr double kLn2 = 0.6931471805599453;

}  // namespace kmath

#if defined(__CUDACC__)

// Shared or global memory on the GPU: a plain pointer.
template <typename T>
struct DeviceSpan {
  T* data;
  __device__ __forceinline__ T& operator[](int64_t i) const { return data[i]; }
};

// The block context on the GPU: threadIdx, __syncthreads and the block's dynamic shared
// memory, nothing else.
class GpuBlock {
 public:
  __device__ __forceinline__ explicit GpuBlock(unsigned char* shared) : shared_(shared) {}
  __device__ __forceinline__ int thread() const { return static_cast<int>(threadIdx.x); }
  __device__ __forceinline__ int size() const { return static_cast<int>(blockDim.x); }
  __device__ __forceinline__ int64_t block() const { return static_cast<int64_t>(blockIdx.x); }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  template <typename T>
  __device__ __forceinline__ DeviceSpan<T> shared(SharedArray<T> array) const {
    return DeviceSpan<T>{reinterpret_cast<T*>(shared_ + array.offset)};
  }
  template <typename T>
  __device__ __forceinline__ DeviceSpan<T> global(T* data, int64_t /*count*/, const char* /*name*/) const {
    return DeviceSpan<T>{data};
  }

 private:
  unsigned char* shared_;
};

// The __global__ entry point of every kernel: one instantiation per kernel struct.
template <class Kernel>
__global__ void __launch_bounds__(Kernel::kThreads) run_kernel_on_gpu(const typename Kernel::Args args) {
  extern __shared__ __align__(16) unsigned char shared_memory[];
  GpuBlock blk(shared_memory);
  Kernel::run(blk, args);
}

#endif  // __CUDACC__

}  // namespace convformer_fast
