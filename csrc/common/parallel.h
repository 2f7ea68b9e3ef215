// A small parallel-for for the CPU backend: a persistent pool of std::threads.
//
// Why not OpenMP: torch's CPU wheels bundle their own libgomp, and two OpenMP
// runtimes in one process spin-wait against each other; on a 2-core machine a
// 1-pixel render took 20 ms per call that way. These workers block on a condition
// variable instead of spinning, and small jobs run inline with no thread at all.
//
// Why a pool: starting threads per call cost ~55 us per parallel_for on 2 cores
// (docs/benchmarks.md); the workers are started once, on first use, and sleep
// between jobs.
//
// Rules:
// - one job at a time: a second thread calling parallel_for while a job runs waits
//   for it (the engine releases the GIL, so Python threads may call concurrently);
// - a parallel_for called from inside a job (on the caller or a worker) runs inline;
// - after fork() the child starts its own pool (the parent's workers do not exist
//   there); the parent's pool object is deliberately leaked, never joined, so process
//   exit never waits on or terminates a worker.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#ifdef _WIN32
#include <process.h>
#define DGT_GETPID _getpid
#else
#include <unistd.h>
#define DGT_GETPID getpid
#endif

namespace dgt {

// DGTALKER_NUM_THREADS, else the hardware's concurrency.
inline int cpu_threads() {
  static const int n = [] {
    if (const char* env = std::getenv("DGTALKER_NUM_THREADS")) {
      const int v = std::atoi(env);
      if (v >= 1) return v;
    }
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : int(hw);
  }();
  return n;
}

namespace detail {

// True on a thread that is running a chunk of a parallel_for (nested calls run inline).
inline bool& in_parallel_region() {
  thread_local bool inside = false;
  return inside;
}

// One parallel_for: chunks are handed out through `next`. An exception thrown by a
// chunk stops the hand-out and is rethrown on the calling thread.
struct Job {
  void (*call)(const void* fn, int64_t begin, int64_t end);
  const void* fn;
  int64_t n, grain, chunks;
  std::atomic<int64_t> next{0};
  std::mutex error_mutex;
  std::exception_ptr error;

  void run() noexcept {
    try {
      for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1))
        call(fn, c * grain, std::min(n, (c + 1) * grain));
    } catch (...) {
      std::lock_guard<std::mutex> lk(error_mutex);
      if (!error) error = std::current_exception();
      next.store(chunks);
    }
  }
};

class ThreadPool {
 public:
  explicit ThreadPool(int workers) {
    threads_.reserve(workers);
    for (int t = 0; t < workers; ++t) threads_.emplace_back([this] { worker_loop(); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  // Never destroyed (see the header comment): the threads are detached from any
  // destructor on purpose.
  ~ThreadPool() = delete;

  int workers() const { return int(threads_.size()); }

  // Runs `job` on the calling thread and up to `helpers` workers; returns when every
  // chunk is done and no worker touches `job` any more (also when a chunk threw).
  void run(Job& job, int helpers) {
    std::lock_guard<std::mutex> one_job(submit_);
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = &job;
      wanted_ = std::min(helpers, workers());
      engaged_ = finished_ = 0;
      ++generation_;
    }
    work_.notify_all();
    job.run();
    std::unique_lock<std::mutex> lk(m_);
    wanted_ = engaged_;  // workers that have not joined yet stay out
    done_.wait(lk, [&] { return finished_ == engaged_; });
    job_ = nullptr;
  }

 private:
  void worker_loop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(m_);
    for (;;) {
      work_.wait(lk, [&] { return generation_ != seen && engaged_ < wanted_; });
      seen = generation_;
      ++engaged_;
      Job* job = job_;
      lk.unlock();
      in_parallel_region() = true;
      job->run();
      in_parallel_region() = false;
      lk.lock();
      if (++finished_ == engaged_) done_.notify_one();
    }
  }

  std::mutex submit_;  // one job at a time
  std::mutex m_;       // guards everything below
  std::condition_variable work_, done_;
  Job* job_ = nullptr;
  uint64_t generation_ = 0;
  int wanted_ = 0, engaged_ = 0, finished_ = 0;
  std::vector<std::thread> threads_;
};

// The process's pool with cpu_threads() - 1 workers, started on first use (and again
// in a forked child).
inline ThreadPool& pool() {
  static std::mutex m;
  static ThreadPool* p = nullptr;
  static long owner = -1;
  std::lock_guard<std::mutex> lk(m);
  const long pid = long(DGT_GETPID());
  if (p == nullptr || owner != pid) {
    p = new ThreadPool(std::max(0, cpu_threads() - 1));  // leaked on purpose, see above
    owner = pid;
  }
  return *p;
}

}  // namespace detail

// Calls fn(begin, end) over [0, n) in chunks of `grain`, handed out dynamically to
// the calling thread and up to cpu_threads() - 1 pool workers. Runs inline when there
// is only one chunk, one thread, or when called from inside another parallel_for.
template <typename Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = (n + grain - 1) / grain;
  const int workers = int(std::min<int64_t>(cpu_threads(), chunks));
  if (workers <= 1 || detail::in_parallel_region()) {
    fn(int64_t(0), n);
    return;
  }
  using F = std::remove_reference_t<Fn>;
  detail::Job job;
  job.call = [](const void* f, int64_t b, int64_t e) { (*static_cast<F*>(const_cast<void*>(f)))(b, e); };
  job.fn = &fn;
  job.n = n;
  job.grain = grain;
  job.chunks = chunks;
  detail::in_parallel_region() = true;
  detail::pool().run(job, workers - 1);
  detail::in_parallel_region() = false;
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace dgt
