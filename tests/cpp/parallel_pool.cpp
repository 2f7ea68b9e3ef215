// Checks of dgt::parallel_for (csrc/common/parallel.h), built and run by
// tests/test_raster_thread_pool.py. Prints "ok" and exits 0 when every check passes.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/parallel.h"

static std::atomic<int> threads_seen{0};
struct Marker {
  Marker() { threads_seen.fetch_add(1); }
};
static thread_local Marker marker;  // constructed once per thread that touches it

#define CHECK(cond)                                                      \
  do {                                                                   \
    if (!(cond)) {                                                       \
      std::fprintf(stderr, "check failed at line %d: %s\n", __LINE__, #cond); \
      return 1;                                                          \
    }                                                                    \
  } while (0)

static bool covers_once(int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> hits(size_t(n > 0 ? n : 1));
  for (auto& h : hits) h.store(0);
  dgt::parallel_for(n, grain, [&](int64_t a, int64_t b) {
    (void)marker;
    for (int64_t i = a; i < b; ++i) hits[size_t(i)].fetch_add(1);
  });
  for (int64_t i = 0; i < n; ++i)
    if (hits[size_t(i)].load() != 1) return false;
  return true;
}

int main() {
  const int T = dgt::cpu_threads();
  // every index exactly once, many calls
  for (int rep = 0; rep < 500; ++rep)
    for (int64_t n : {1, 2, 7, 64, 1000, 4099})
      for (int64_t grain : {1, 3, 64})
        CHECK(covers_once(n, grain));
  // the workers are started once: at most T threads ever ran a chunk over ~9000 calls
  CHECK(threads_seen.load() <= T);
  // the workers do take part: slow chunks spread over more than one thread
  {
    std::atomic<int> distinct{0};
    std::vector<std::thread::id> ids(8);
    dgt::parallel_for(8, 1, [&](int64_t a, int64_t) {
      ids[size_t(a)] = std::this_thread::get_id();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    });
    std::vector<std::thread::id> u;
    for (auto& id : ids) {
      bool found = false;
      for (auto& v : u) found = found || v == id;
      if (!found) u.push_back(id);
    }
    distinct = int(u.size());
    CHECK(T == 1 || distinct.load() > 1);
  }
  // nested calls run inline and stay correct
  {
    std::vector<std::atomic<int>> hits(64 * 64);
    for (auto& h : hits) h.store(0);
    dgt::parallel_for(64, 4, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i)
        dgt::parallel_for(64, 8, [&](int64_t c, int64_t d) {
          for (int64_t j = c; j < d; ++j) hits[size_t(i * 64 + j)].fetch_add(1);
        });
    });
    for (auto& h : hits) CHECK(h.load() == 1);
  }
  // concurrent callers (the engine releases the GIL): each gets its own correct result
  {
    std::atomic<bool> ok{true};
    std::vector<std::thread> callers;
    for (int t = 0; t < 4; ++t)
      callers.emplace_back([&] {
        for (int rep = 0; rep < 200; ++rep)
          if (!covers_once(513, 16)) ok = false;
      });
    for (auto& c : callers) c.join();
    CHECK(ok.load());
  }
  // an exception in a chunk reaches the caller; the pool keeps working
  {
    bool caught = false;
    try {
      dgt::parallel_for(100, 1, [&](int64_t a, int64_t) {
        if (a == 37) throw std::runtime_error("chunk 37");
      });
    } catch (const std::runtime_error& e) {
      caught = std::string(e.what()) == "chunk 37";
    }
    CHECK(caught);
    CHECK(covers_once(1000, 10));
  }
  // a forked child gets a pool of its own (the parent's workers do not exist there)
  {
    const pid_t pid = fork();
    if (pid == 0) {
      alarm(20);  // a hang would be a failure, not a stuck test run
      _exit(covers_once(4099, 7) && covers_once(100, 1) ? 0 : 3);
    }
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(covers_once(4099, 7));
  }
  std::printf("ok\n");
  return 0;
}
