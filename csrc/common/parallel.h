// A small parallel-for for the CPU backend on std::thread.
//
// Why not OpenMP: torch's CPU wheels bundle their own libgomp, and two OpenMP
// runtimes in one process spin-wait against each other; on a 2-core machine a
// 1-pixel render took 20 ms per call that way. Plain threads that block instead of
// spinning avoid that, and small jobs run inline with no thread at all.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <vector>

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

// Calls fn(begin, end) over [0, n) in chunks of `grain`, handed out dynamically to
// up to cpu_threads() threads. Runs inline when there is only one chunk.
template <typename Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = (n + grain - 1) / grain;
  const int workers = int(std::min<int64_t>(cpu_threads(), chunks));
  if (workers <= 1) {
    fn(int64_t(0), n);
    return;
  }
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1))
      fn(c * grain, std::min(n, (c + 1) * grain));
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (int t = 1; t < workers; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
}

}  // namespace dgt
