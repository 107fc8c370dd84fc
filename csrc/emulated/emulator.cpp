// The CPU emulator of kernels/ (see emulator.h): launch state, barrier, race detector, and
// the persistent thread pool that plays one thread block at a time.
#include "emulated/emulator.h"

#include <pthread.h>

#include <condition_variable>
#include <thread>

namespace convformer_fast::emulator {
namespace detail {
namespace {

// An access record: the barrier epoch in the high 48 bits, thread + 1 in the low 16 bits
// (0 = never accessed in this block; kManyReaders = read by several threads).
constexpr uint64_t kThreadBits = 16;
constexpr uint64_t kThreadMask = (uint64_t{1} << kThreadBits) - 1;
constexpr uint64_t kManyReaders = kThreadMask;

uint64_t record(uint64_t epoch, uint64_t who) { return (epoch << kThreadBits) | who; }
uint64_t epoch_of(uint64_t rec) { return rec >> kThreadBits; }
uint64_t who_of(uint64_t rec) { return rec & kThreadMask; }

std::string element(const char* array, int64_t index) {
  return "shared '" + std::string(array) + "'[" + std::to_string(index) + "]";
}

}  // namespace

Launch::Launch(const char* kernel, int64_t grid, int threads, size_t shared_bytes)
    : kernel_(kernel),
      grid_(grid),
      threads_(threads),
      shared_bytes_(shared_bytes),
      shared_words_((shared_bytes + 3) / 4),
      shared_(new unsigned char[shared_words_ * 4 + 16]),
      last_write_(new std::atomic<uint64_t>[shared_words_ + 1]),
      last_read_(new std::atomic<uint64_t>[shared_words_ + 1]) {
  reset_shared();
}

void Launch::reset_shared() {
  std::memset(shared_.get(), 0xFF, shared_words_ * 4);  // NaN in fp64/fp32/fp16/bf16
  for (size_t w = 0; w < shared_words_; ++w) {
    last_write_[w].store(0, std::memory_order_relaxed);
    last_read_[w].store(0, std::memory_order_relaxed);
  }
}

std::string Launch::where(int64_t block, int thread) const {
  return "emulated CUDA kernel '" + std::string(kernel_) + "' (block " + std::to_string(block) + " of " +
         std::to_string(grid_) + ", thread " + std::to_string(thread) + " of " + std::to_string(threads_) + ")";
}

void Launch::fail(const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!aborted_.load()) {
      message_ = message;
      aborted_.store(true);
      phase_.fetch_add(1);
    }
  }
  phase_.notify_all();
  throw BlockAborted{};
}

uint64_t Launch::arrive(int thread, int64_t block, bool exiting, int64_t syncs) {
  uint64_t phase;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (aborted_.load()) throw BlockAborted{};
    phase = phase_.load();
    if (arrived_ == 0) {
      first_exiting_ = exiting;
      first_syncs_ = syncs;
      first_thread_ = thread;
    } else if (first_exiting_ != exiting || first_syncs_ != syncs) {
      auto at = [](bool ex, int64_t n) {
        return ex ? "returned from the kernel after " + std::to_string(n) + " sync()"
                  : "waits at sync() #" + std::to_string(n);
      };
      const std::string message = where(block, thread) + ": barrier divergence: thread " + std::to_string(thread) +
                                  " " + at(exiting, syncs) + " while thread " + std::to_string(first_thread_) +
                                  " " + at(first_exiting_, first_syncs_);
      lock.unlock();
      fail(message);
    }
    if (++arrived_ == threads_) {
      if (!uninitialised_read_.empty()) {
        const std::string message = uninitialised_read_;
        lock.unlock();
        fail(message);
      }
      arrived_ = 0;
      if (exiting) reset_shared();  // the next block starts from poisoned, unwritten memory
      phase_.store(phase + 1);
      lock.unlock();
      phase_.notify_all();
      return phase + 1;
    }
  }
  for (uint64_t now = phase_.load(); now == phase; now = phase_.load()) phase_.wait(now);
  if (aborted_.load()) throw BlockAborted{};
  return phase + 1;
}

void Launch::on_shared_read(size_t word, int thread, uint64_t epoch, int64_t block, const char* array,
                            int64_t index) {
  const uint64_t me = static_cast<uint64_t>(thread) + 1;
  // Publish the read first, then look at the last write (see emulator.h).
  uint64_t seen = last_read_[word].load();
  for (;;) {
    uint64_t next;
    if (epoch_of(seen) == epoch) {
      if (who_of(seen) == me || who_of(seen) == kManyReaders) break;
      next = record(epoch, kManyReaders);
    } else {
      next = record(epoch, me);
    }
    if (last_read_[word].compare_exchange_weak(seen, next)) break;
  }
  const uint64_t wrote = last_write_[word].load();
  if (wrote == 0) {
    // Reported at the next barrier unless another thread writes the word before it: then
    // the write reports a data race (a missing barrier), which names both threads.
    std::lock_guard<std::mutex> lock(mutex_);
    if (uninitialised_read_.empty()) {
      uninitialised_read_ = where(block, thread) + ": reads " + element(array, index) +
                            " before any thread of this block wrote it (uninitialised shared memory)";
    }
    return;
  }
  if (epoch_of(wrote) == epoch && who_of(wrote) != me) {
    fail(where(block, thread) + ": data race on " + element(array, index) + ": thread " +
         std::to_string(thread) + " reads it while thread " + std::to_string(who_of(wrote) - 1) +
         " wrote it since the last sync() (missing barrier?)");
  }
}

void Launch::on_shared_write(size_t word, int thread, uint64_t epoch, int64_t block, const char* array,
                             int64_t index) {
  const uint64_t me = static_cast<uint64_t>(thread) + 1;
  const uint64_t wrote = last_write_[word].exchange(record(epoch, me));
  if (epoch_of(wrote) == epoch && who_of(wrote) != me) {
    fail(where(block, thread) + ": data race on " + element(array, index) + ": threads " +
         std::to_string(who_of(wrote) - 1) + " and " + std::to_string(thread) +
         " both write it between the same two sync() calls");
  }
  const uint64_t read = last_read_[word].load();
  if (epoch_of(read) == epoch && who_of(read) != me) {
    const std::string reader =
        who_of(read) == kManyReaders ? "other threads read" : "thread " + std::to_string(who_of(read) - 1) + " reads";
    fail(where(block, thread) + ": data race on " + element(array, index) + ": thread " + std::to_string(thread) +
         " writes it while " + reader + " it since the last sync() (missing barrier?)");
  }
}

}  // namespace detail

namespace {

// A pool of worker threads; run(n, job) runs job(0..n-1) on n of them and waits.
class ThreadPool {
 public:
  void run(int threads, const std::function<void(int)>& job) {
    std::unique_lock<std::mutex> lock(mutex_);
    while (static_cast<int>(workers_.size()) < threads) {
      const int index = static_cast<int>(workers_.size());
      workers_.emplace_back([this, index] { work(index); });
    }
    job_ = &job;
    participants_ = threads;
    remaining_ = threads;
    ++generation_;
    start_.notify_all();
    done_.wait(lock, [this] { return remaining_ == 0; });
    job_ = nullptr;
  }

 private:
  void work(int index) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        start_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (index >= participants_) continue;
        job = job_;
      }
      (*job)(index);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--remaining_ == 0) done_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable start_, done_;
  std::vector<std::thread> workers_;  // never joined: idle workers die with the process
  const std::function<void(int)>* job_ = nullptr;
  int participants_ = 0, remaining_ = 0;
  uint64_t generation_ = 0;
};

// One pool for the process, one launch at a time. Heap objects that are never destroyed:
// a static destructor would have to join threads at exit. After fork() the child has none
// of the parent's threads, so it starts a fresh pool (the old objects are abandoned).
struct Emulator {
  std::mutex launch_mutex;
  ThreadPool pool;
};
Emulator* g_emulator = nullptr;
std::once_flag g_atfork_once;

Emulator& emulator() {
  std::call_once(g_atfork_once, [] { pthread_atfork(nullptr, nullptr, [] { g_emulator = nullptr; }); });
  static std::mutex create_mutex;
  std::lock_guard<std::mutex> lock(create_mutex);
  if (g_emulator == nullptr) g_emulator = new Emulator();
  return *g_emulator;
}

}  // namespace

void launch(const char* kernel, int64_t grid, int threads, size_t shared_bytes,
            const std::function<void(EmulatedBlock&)>& body) {
  if (threads < 1 || threads > 1024) {
    throw KernelFault(std::string("emulated CUDA kernel '") + kernel + "': " + std::to_string(threads) +
                      " threads per block (1..1024 allowed)");
  }
  if (grid <= 0) return;
  Emulator& emu = emulator();
  std::lock_guard<std::mutex> serial(emu.launch_mutex);
  detail::Launch state(kernel, grid, threads, shared_bytes);
  const std::function<void(int)> job = [&](int thread) {
    EmulatedBlock blk(&state, thread);
    try {
      for (int64_t block = 0; block < grid; ++block) {
        blk.begin_block(block);
        body(blk);
        blk.end_block();
      }
    } catch (const detail::BlockAborted&) {
      // the launch failed; its message is recorded
    } catch (const std::exception& error) {
      try {
        state.fail(state.where(blk.block(), thread) + ": " + error.what());
      } catch (const detail::BlockAborted&) {
      }
    }
  };
  emu.pool.run(threads, job);
  if (state.failed()) throw KernelFault(state.message());
}

}  // namespace convformer_fast::emulator
