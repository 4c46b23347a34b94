// One process-wide thread pool for the native kernels.
//
// Sized by DEEPCOMP_NUM_THREADS (default: the CPUs this process may run on). parallel_for hands out
// task indices through an atomic counter; the calling thread works too. If the pool is already busy
// (another Python thread is inside a kernel, or a kernel calls parallel_for from a task), the call
// runs its tasks inline on the calling thread instead of waiting, so concurrent callers never
// deadlock and never share a slot.
#pragma once
#include <cstdint>
#include <functional>

namespace deepcomp {

class ThreadPool {
 public:
  static ThreadPool& instance();

  int num_threads() const;
  void set_num_threads(int n);

  // Calls fn(task, slot) for every task in [0, ntasks). slot is in [0, max_slots) and no two
  // concurrently running calls of fn within this parallel_for share a slot, so callers can index
  // per-call scratch by slot. Blocks until all tasks are done; rethrows the first exception.
  void parallel_for(int64_t ntasks, int max_slots, const std::function<void(int64_t, int)>& fn);

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

 private:
  ThreadPool();
  ~ThreadPool();
  struct Impl;
  Impl* impl_;
};

// Thread count from the environment (DEEPCOMP_NUM_THREADS) or the CPU affinity mask.
int default_num_threads();

}  // namespace deepcomp
