// Peak DRAM read bandwidth with plain threads and cpu::stream_sum (64-byte AVX-512 loads, or scalar):
// the number decode rooflines should be divided by. Usage: bench_read_bw [GiB=2] [repetitions=5]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "kernels/cpu/stream_read.h"

int main(int argc, char** argv) {
  const size_t gib = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 2;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  const size_t bytes = std::max<size_t>(gib, 1) << 30;
  auto* p = static_cast<uint64_t*>(std::aligned_alloc(64, bytes));
  if (p == nullptr) return 1;
  std::memset(p, 1, bytes);
  const bool avx512 = __builtin_cpu_supports("avx512f");
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  std::printf("buffer %zu GiB, %s loads\n", bytes >> 30, avx512 ? "AVX-512" : "scalar");
  for (unsigned threads = 1; threads <= hw; threads *= 2) {
    double best = 0;
    uint64_t sink = 0;
    for (int r = 0; r < reps; ++r) {
      std::vector<std::thread> pool;
      std::vector<uint64_t> out(threads);
      const size_t chunk = bytes / 8 / threads / 32 * 32;
      const auto t0 = std::chrono::steady_clock::now();
      for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] { out[t] = onebit::cpu::stream_sum(p + t * chunk, chunk); });
      for (auto& th : pool) th.join();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::max(best, static_cast<double>(chunk * 8 * threads) / s / 1e9);
      for (uint64_t v : out) sink += v;
    }
    std::printf("threads %u: %.2f GB/s (best of %d)%s\n", threads, best, reps, sink == 42 ? " " : "");
  }
  std::free(p);
  return 0;
}
