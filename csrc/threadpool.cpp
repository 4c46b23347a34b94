// Thread pool: workers spin briefly after each job (kernels come in bursts, one per layer), then
// sleep on a condition variable.
#include "threadpool.h"

#include <sched.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "common.h"

namespace deepcomp {

namespace {
thread_local bool tl_in_pool_task = false;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
}  // namespace

int default_num_threads() {
  if (const char* env = std::getenv("DEEPCOMP_NUM_THREADS")) {
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (end != env && v >= 1 && v <= 1024) return int(v);
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n >= 1) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? int(hc) : 1;
}

struct ThreadPool::Impl {
  // Guards a whole parallel_for and resizing; try-locked by callers.
  std::mutex run_mutex;
  // Guards sleeping/waking.
  std::mutex wake_mutex;
  std::condition_variable wake_cv;
  std::condition_variable done_cv;

  std::vector<std::thread> workers;
  int nthreads = 1;
  bool stop = false;

  // Current job (written by the caller under run_mutex before bumping generation).
  const std::function<void(int64_t, int)>* fn = nullptr;
  int64_t ntasks = 0;
  int active_slots = 1;
  std::atomic<int64_t> next{0};
  std::atomic<int> pending{0};  // workers still busy with the current job
  std::atomic<uint64_t> generation{0};
  std::exception_ptr error;
  std::mutex error_mutex;

  void run_tasks(int slot) {
    tl_in_pool_task = true;
    for (;;) {
      int64_t t = next.fetch_add(1, std::memory_order_relaxed);
      if (t >= ntasks) break;
      try {
        (*fn)(t, slot);
      } catch (...) {
        std::lock_guard<std::mutex> g(error_mutex);
        if (!error) error = std::current_exception();
        next.store(ntasks, std::memory_order_relaxed);
      }
    }
    tl_in_pool_task = false;
  }

  void worker_main(int slot, uint64_t seen) {
    for (;;) {
      // Spin a little before sleeping: consecutive layers start within microseconds.
      uint64_t g = seen;
      for (int i = 0; i < 4000; ++i) {
        g = generation.load(std::memory_order_acquire);
        if (g != seen) break;
        cpu_relax();
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(wake_mutex);
        wake_cv.wait(lk, [&] { return stop || generation.load(std::memory_order_acquire) != seen; });
        if (stop) return;
        g = generation.load(std::memory_order_acquire);
      }
      seen = g;
      if (stop) return;
      if (slot < active_slots) run_tasks(slot);
      if (pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(wake_mutex);
        done_cv.notify_all();
      }
    }
  }

  void start(int n) {
    nthreads = n < 1 ? 1 : n;
    stop = false;
    // The generation is read here, not in the new thread: a job may be posted before it runs.
    const uint64_t gen = generation.load(std::memory_order_acquire);
    for (int s = 1; s < nthreads; ++s) workers.emplace_back([this, s, gen] { worker_main(s, gen); });
  }

  void shutdown() {
    {
      std::lock_guard<std::mutex> lk(wake_mutex);
      stop = true;
      generation.fetch_add(1, std::memory_order_acq_rel);
    }
    wake_cv.notify_all();
    for (auto& t : workers) t.join();
    workers.clear();
  }
};

ThreadPool::ThreadPool() : impl_(new Impl) { impl_->start(default_num_threads()); }

ThreadPool::~ThreadPool() {
  impl_->shutdown();
  delete impl_;
}

ThreadPool& ThreadPool::instance() {
  // Leaked on purpose: joining threads during interpreter teardown is fragile.
  static ThreadPool* pool = new ThreadPool();
  return *pool;
}

int ThreadPool::num_threads() const { return impl_->nthreads; }

void ThreadPool::set_num_threads(int n) {
  if (n < 1 || n > 1024) throw ShapeError("set_num_threads: n must be in [1, 1024], got " + std::to_string(n));
  std::lock_guard<std::mutex> g(impl_->run_mutex);
  if (n == impl_->nthreads) return;
  impl_->shutdown();
  impl_->start(n);
}

void ThreadPool::parallel_for(int64_t ntasks, int max_slots, const std::function<void(int64_t, int)>& fn) {
  if (ntasks <= 0) return;
  Impl& p = *impl_;
  auto run_inline = [&] {
    for (int64_t t = 0; t < ntasks; ++t) fn(t, 0);
  };
  if (ntasks == 1 || max_slots <= 1 || tl_in_pool_task) return run_inline();
  std::unique_lock<std::mutex> run(p.run_mutex, std::try_to_lock);
  if (!run.owns_lock() || p.nthreads <= 1) return run_inline();

  int slots = p.nthreads;
  if (slots > max_slots) slots = max_slots;
  if (int64_t(slots) > ntasks) slots = int(ntasks);
  p.fn = &fn;
  p.ntasks = ntasks;
  p.active_slots = slots;
  p.error = nullptr;
  p.next.store(0, std::memory_order_relaxed);
  p.pending.store(p.nthreads - 1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lk(p.wake_mutex);
    p.generation.fetch_add(1, std::memory_order_acq_rel);
  }
  p.wake_cv.notify_all();
  p.run_tasks(0);
  for (int i = 0; i < 50000 && p.pending.load(std::memory_order_acquire) != 0; ++i) cpu_relax();
  if (p.pending.load(std::memory_order_acquire) != 0) {
    std::unique_lock<std::mutex> lk(p.wake_mutex);
    p.done_cv.wait(lk, [&] { return p.pending.load(std::memory_order_acquire) == 0; });
  }
  p.fn = nullptr;
  if (p.error) {
    std::exception_ptr e = p.error;
    p.error = nullptr;
    std::rethrow_exception(e);
  }
}

}  // namespace deepcomp
