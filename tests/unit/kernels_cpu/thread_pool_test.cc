#include "kernels/cpu/thread_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <thread>
#include <vector>

namespace onebit::cpu {
namespace {

TEST(ThreadPool, CoversEveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t n : {0, 1, 2, 7, 100, 1001}) {
      for (int64_t grain : {1, 3, 16}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        pool.parallel_for(n, grain, [&](int64_t b, int64_t e) {
          EXPECT_LT(b, e);
          EXPECT_TRUE(b % grain == 0) << b;
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << threads << " " << n << " " << grain;
      }
    }
  }
}

TEST(ThreadPool, UsesSeveralThreads) {
  ThreadPool pool(2);
  std::mutex mu;
  std::set<std::thread::id> ids;
  for (int attempt = 0; attempt < 50 && ids.size() < 2; ++attempt) {
    pool.parallel_for(64, 1, [&](int64_t, int64_t) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      std::lock_guard<std::mutex> l(mu);
      ids.insert(std::this_thread::get_id());
    });
  }
  EXPECT_EQ(ids.size(), 2u);
}

TEST(ThreadPool, ManyTinyJobsAfterSleepingAndNested) {
  ThreadPool pool(3);
  std::atomic<int64_t> total{0};
  for (int job = 0; job < 20000; ++job) {
    if (job == 100) std::this_thread::sleep_for(std::chrono::milliseconds(300));  // workers go to sleep
    pool.parallel_for(10, 1, [&](int64_t b, int64_t e) {
      // Nested calls run inline rather than deadlocking.
      pool.parallel_for(2, 1, [&](int64_t b2, int64_t e2) { total.fetch_add((e - b) * (e2 - b2)); });
    });
  }
  EXPECT_EQ(total.load(), 20000 * 10 * 2);
}

// Back-to-back jobs whose chunk counts alternate between small and large: a worker that read the
// last claim state of a finished job while the next job's fields were being written must not be
// able to claim a chunk (once it could: the chunk ran with the next job's function, so a range ran
// twice and done-counting overshot, which later hung run() for good). Each index exactly once,
// every range inside its job; bounded by a watchdog instead of hanging.
TEST(ThreadPool, NoStaleClaimAcrossJobs) {
  for (int threads : {2, 4}) {
    ThreadPool pool(threads);
    std::atomic<bool> finished{false};
    std::thread watchdog([&] {
      for (int i = 0; i < 1200 && !finished.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (!finished.load()) {
        std::fprintf(stderr, "ThreadPool.NoStaleClaimAcrossJobs: hung (a chunk counted twice)\n");
        std::abort();
      }
    });
    std::vector<std::atomic<int>> hits(256);
    int64_t bad = 0;
    for (int job = 0; job < 60000 && bad == 0; ++job) {
      const int64_t n = job % 2 == 0 ? 3 : 256;
      for (int64_t i = 0; i < n; ++i) hits[static_cast<size_t>(i)].store(0, std::memory_order_relaxed);
      std::atomic<int64_t> out_of_range{0};
      pool.parallel_for(n, 1, [&](int64_t b, int64_t e) {
        if (b < 0 || b >= e || e > n) out_of_range.fetch_add(1);
        for (int64_t i = std::max<int64_t>(b, 0); i < std::min<int64_t>(e, n); ++i)
          hits[static_cast<size_t>(i)].fetch_add(1, std::memory_order_relaxed);
      });
      bad += out_of_range.load();
      for (int64_t i = 0; i < n; ++i) bad += hits[static_cast<size_t>(i)].load() != 1;
    }
    finished.store(true);
    watchdog.join();
    EXPECT_EQ(bad, 0) << threads << " threads";
  }
}

TEST(ThreadPool, ConcurrentCallersAreSerialized) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t) {
    callers.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) pool.parallel_for(50, 5, [&](int64_t b, int64_t e) { total.fetch_add(e - b); });
    });
  }
  for (auto& c : callers) c.join();
  EXPECT_EQ(total.load(), 3 * 2000 * 50);
}

}  // namespace
}  // namespace onebit::cpu
