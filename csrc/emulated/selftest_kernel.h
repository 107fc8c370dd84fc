// A tiny kernel written like those of kernels/, with bugs that can be switched on, to show
// that the emulator catches each one (tests/test_cuda_emulated.py, tests/cpp/). Only ever
// emulated; never compiled for a GPU.
//
// Each block takes a tile of 32 elements of x (the last tile may be partial) into shared
// memory; after a barrier each thread adds its right neighbour (cyclically within the tile),
// and thread 0 sums the tile:
//   out[i] = x[i] + x[next(i)],   sums[b] = sum of tile b.
#pragma once

#include <cstdint>

#include "block_context.cuh"

namespace convformer_fast {

enum class SelftestFault : int {
  kNone = 0,
  kMissingBarrier,    // the neighbour is read without the barrier after the tile load
  kOffByOneTile,      // thread 0 sums tile[0..valid] instead of tile[0..valid)
  kDivergentBarrier,  // half the threads wait at a second barrier the others never reach
  kGlobalOutOfBounds  // the last, partial tile loads 32 elements of x anyway
};

struct SelftestArgs {
  const float* x;
  float* out;
  float* sums;
  int64_t size;
  SelftestFault fault;
};

struct SelftestKernel {
  static constexpr const char* kName = "emulator_selftest";
  static constexpr int kThreads = 32;
  static constexpr int kTile = 32;
  using Args = SelftestArgs;

  static SharedArray<float> tile_array() {
    SharedCarver carver;
    return carver.take<float>(kTile, "tile");
  }
  static int64_t blocks(int64_t size) { return (size + kTile - 1) / kTile; }

  template <class Block>
  static void run(Block& blk, const Args& a) {
    auto tile = blk.shared(tile_array());
    auto x = blk.global(a.x, a.size, "x");
    auto out = blk.global(a.out, a.size, "out");
    auto sums = blk.global(a.sums, blocks(a.size), "sums");
    const int tid = blk.thread();
    const int64_t base = blk.block() * kTile;
    const int valid = static_cast<int>(a.size - base < kTile ? a.size - base : kTile);
    const bool load_all = a.fault == SelftestFault::kGlobalOutOfBounds;
    if (tid < valid || load_all) tile[tid] = x[base + tid];
    if (a.fault != SelftestFault::kMissingBarrier) blk.sync();
    // (After the first barrier nobody writes shared memory, so this is divergence only,
    // not also a race whose report could come first.)
    if (a.fault == SelftestFault::kDivergentBarrier && tid < kThreads / 2) blk.sync();
    if (tid < valid) {
      const float mine = tile[tid], next = tile[(tid + 1) % valid];
      out[base + tid] = mine + next;
    }
    if (tid == 0) {
      const int last = a.fault == SelftestFault::kOffByOneTile ? valid : valid - 1;
      float sum = 0;
      for (int i = 0; i <= last; ++i) {
        const float v = tile[i];
        sum += v;
      }
      sums[blk.block()] = sum;
    }
  }
};

}  // namespace convformer_fast
