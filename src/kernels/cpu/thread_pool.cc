#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ONEBIT_CPU_RELAX() _mm_pause()
#else
#define ONEBIT_CPU_RELAX() std::this_thread::yield()
#endif

namespace onebit::cpu {

namespace {
thread_local bool t_in_job = false;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  return (end != v && *end == '\0' && x >= 0 && x < 100000000) ? static_cast<int>(x) : fallback;
}
}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = std::max(1u, std::thread::hardware_concurrency());
  spin_ns_ = int64_t{env_int("ONEBIT_SPIN_US", 200)} * 1000;
  workers_.reserve(static_cast<size_t>(num_threads - 1));
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  {
    std::lock_guard<std::mutex> lock(sleep_mutex_);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

ThreadPool& ThreadPool::global() {
  static ThreadPool pool(env_int("ONEBIT_THREADS", 0));
  return pool;
}

void ThreadPool::work_on_job(uint32_t job) {
  for (;;) {
    uint64_t state = claim_.load(std::memory_order_acquire);
    if ((state >> 32) != job) return;
    const auto c = static_cast<int64_t>(state & 0xffffffffu);
    // Read the job before claiming: if the claim succeeds the job was still current, so these
    // values are its own (they were written before claim_ was published).
    const int64_t num_chunks = num_chunks_.load(std::memory_order_relaxed);
    const int64_t chunk = chunk_.load(std::memory_order_relaxed);
    const int64_t n = n_.load(std::memory_order_relaxed);
    const Call call = call_.load(std::memory_order_relaxed);
    void* ctx = ctx_.load(std::memory_order_relaxed);
    // Pairs with the release fence in run(): if any value just read belongs to a newer job, run()
    // closed claim_ before writing it, so the CAS below sees that and fails.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (c >= num_chunks) return;
    if (!claim_.compare_exchange_weak(state, state + 1, std::memory_order_acq_rel)) continue;
    const int64_t b = c * chunk;
    call(ctx, b, std::min(n, b + chunk));
    done_chunks_.fetch_add(1, std::memory_order_release);
  }
}

void ThreadPool::worker_loop() {
  t_in_job = true;  // anything a worker runs is inside a job
  uint64_t seen = 0;  // generation_ starts at 0: a job published before this thread ran is still ours
  for (;;) {
    // Spin a little: during decode the next job usually follows within microseconds.
    uint64_t g = generation_.load(std::memory_order_acquire);
    if (g == seen) {
      const int64_t deadline = now_ns() + spin_ns_;
      for (int i = 0; (g = generation_.load(std::memory_order_acquire)) == seen; ++i) {
        ONEBIT_CPU_RELAX();
        if ((i & 255) == 255 && now_ns() > deadline) break;
      }
    }
    if (g == seen) {
      std::unique_lock<std::mutex> lock(sleep_mutex_);
      // seq_cst increment then load, against run()'s seq_cst bump then load of sleeping_: either
      // run() sees us sleeping and notifies (taking the mutex, so not before we wait), or we see
      // the new generation in the predicate.
      sleeping_.fetch_add(1);
      wake_.wait(lock, [&] { return (g = generation_.load()) != seen; });
      sleeping_.fetch_sub(1);
    }
    seen = g;
    if (stop_.load()) return;
    work_on_job(static_cast<uint32_t>(claim_.load(std::memory_order_acquire) >> 32));
  }
}

void ThreadPool::run(int64_t n, int64_t grain, Call call, void* ctx) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t units = (n + grain - 1) / grain;
  if (workers_.empty() || units == 1 || t_in_job) {
    call(ctx, 0, n);
    return;
  }
  std::lock_guard<std::mutex> lock(run_mutex_);
  // About 4 chunks per thread: small enough to even out a late thread, big enough that the claim
  // counter is not contended and each thread streams long contiguous ranges.
  const int64_t per_chunk = std::max<int64_t>(1, units / (int64_t{num_threads()} * 4));
  const int64_t chunk = per_chunk * grain;
  const int64_t num_chunks = (n + chunk - 1) / chunk;  // <= 4 * num_threads() + 1, far below kClosed
  const uint32_t job = static_cast<uint32_t>(claim_.load(std::memory_order_relaxed) >> 32) + 1;
  // Close the claim counter before rewriting the job's fields. A worker may have read the previous
  // job's final state (job - 1, all chunks claimed) and then read some of the fields below: without
  // this its CAS on that state would still succeed, with the new num_chunks letting it claim a
  // chunk that does not exist. It then ran a range of the new job's function twice and counted a
  // chunk too many, so a later run() waited forever (seen in the server under load).
  claim_.store((uint64_t{job} << 32) | kClosed, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  call_.store(call, std::memory_order_relaxed);
  ctx_.store(ctx, std::memory_order_relaxed);
  n_.store(n, std::memory_order_relaxed);
  chunk_.store(chunk, std::memory_order_relaxed);
  num_chunks_.store(num_chunks, std::memory_order_relaxed);
  done_chunks_.store(0, std::memory_order_relaxed);
  claim_.store(uint64_t{job} << 32, std::memory_order_release);
  generation_.fetch_add(1);  // seq_cst
  if (sleeping_.load() > 0) {
    { std::lock_guard<std::mutex> l(sleep_mutex_); }
    wake_.notify_all();
  }

  t_in_job = true;
  work_on_job(job);
  t_in_job = false;

  // Chunks claimed by workers may still be running.
  for (int i = 0; done_chunks_.load(std::memory_order_acquire) != num_chunks; ++i) {
    if (i < 4096) {
      ONEBIT_CPU_RELAX();
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace onebit::cpu
