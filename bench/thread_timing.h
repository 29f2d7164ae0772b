// Timing helpers of the CPU microbenchmarks: the calling thread's CPU time, and the best rate of
// 11 runs (work units per second of thread CPU time).
#pragma once

#include <time.h>

#include <algorithm>

namespace onebit::bench {

inline double cpu_now() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

template <typename F>
double best_rate(F f, double work) {
  double best = 0;
  for (int r = 0; r < 11; ++r) {
    const double t0 = cpu_now();
    f();
    best = std::max(best, work / (cpu_now() - t0));
  }
  return best;
}

}  // namespace onebit::bench
