// ThreadPool: a fixed set of worker threads for the CPU kernels' parallel_for over row ranges.
//
// Decode calls it a few hundred times per token, each job lasting tens of microseconds, so dispatch
// must cost far less than a microsecond: the calling thread takes part in the work, workers spin on
// an atomic generation counter for a short while after each job (ONEBIT_SPIN_US, default 200 us)
// and only then block on a condition variable. Work is split into chunks handed out
// through an atomic counter, so a descheduled thread delays the job by at most one chunk.
//
// parallel_for may be called from several threads; calls are serialized. A parallel_for made from
// inside a job (nested) runs serially on the calling thread instead of deadlocking.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace onebit::cpu {

class ThreadPool {
 public:
  // num_threads counts the calling thread: 1 means no workers. 0 = number of hardware threads.
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint ranges covering [0, n), each a multiple of `grain` long
  // (except the last), from up to num_threads() threads. Returns when all calls have returned.
  // fn must not throw.
  template <typename F>
  void parallel_for(int64_t n, int64_t grain, F&& fn) {
    using Fn = std::remove_reference_t<F>;
    run(n, grain, [](void* ctx, int64_t b, int64_t e) { (*static_cast<Fn*>(ctx))(b, e); },
        const_cast<void*>(static_cast<const void*>(&fn)));
  }

  // A process-wide pool with the default number of threads (ONEBIT_THREADS if set), made on first use.
  static ThreadPool& global();

 private:
  using Call = void (*)(void*, int64_t, int64_t);
  void run(int64_t n, int64_t grain, Call call, void* ctx);
  void worker_loop();
  void work_on_job(uint32_t job);

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one job at a time

  // The current job. Fields are atomics because a worker that wakes late may read them while the
  // next job is being written; it then fails the claim below and drops what it read.
  std::atomic<Call> call_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<int64_t> n_{0}, chunk_{0}, num_chunks_{0};
  // (job id << 32) | next unclaimed chunk. A chunk is claimed by CAS, which fails once the job id
  // changed, so the caller only waits for chunks actually claimed, never for sleeping workers.
  // While run() rewrites the fields above the chunk part is kClosed (nothing can be claimed).
  static constexpr uint64_t kClosed = 0xffffffffu;
  alignas(64) std::atomic<uint64_t> claim_{0};
  alignas(64) std::atomic<int64_t> done_chunks_{0};
  alignas(64) std::atomic<uint64_t> generation_{0};  // bumped per job (and at shutdown) to wake workers
  std::atomic<int> sleeping_{0};                     // workers blocked on wake_
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
  std::atomic<bool> stop_{false};
  int64_t spin_ns_ = 200000;
};

}  // namespace onebit::cpu
