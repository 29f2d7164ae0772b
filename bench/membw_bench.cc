// This machine's memory read bandwidth: the ceiling for batch-1 decode on the CPU, which streams
// every ternary weight once per token. Sums a buffer far larger than the last-level cache with 1
// and 2 threads (the kernels' ThreadPool, as the GEMV uses it).
//
//   build/<dir>/bench/bench_membw --benchmark_min_time=2s
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/aligned_buffer.h"
#include "kernels/cpu/thread_pool.h"

namespace {

using onebit::cpu::AlignedVector;
using onebit::cpu::ThreadPool;

constexpr size_t kBytes = size_t{1} << 30;  // 1 GiB, 32x the L3 of the dev machine

// Eight independent accumulators so the adds never limit the load rate.
uint64_t sum_range(const uint64_t* p, size_t n) {
  uint64_t a[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) a[j] += p[i + j];
  }
  for (; i < n; ++i) a[0] += p[i];
  uint64_t s = 0;
  for (uint64_t v : a) s += v;
  return s;
}

const AlignedVector<uint64_t>& buffer() {
  static const AlignedVector<uint64_t> buf = [] {
    AlignedVector<uint64_t> b(kBytes / 8);
    for (size_t i = 0; i < b.size(); ++i) b[i] = i * 0x9e3779b97f4a7c15ull;  // touch every page
    return b;
  }();
  return buf;
}

void BM_ReadBandwidth(benchmark::State& state) {
  const auto& buf = buffer();
  ThreadPool pool(static_cast<int>(state.range(0)));
  constexpr int64_t kGrain = 1 << 16;  // 512 KiB per unit
  for (auto _ : state) {
    std::atomic<uint64_t> total{0};
    pool.parallel_for(static_cast<int64_t>(buf.size()), kGrain, [&](int64_t b, int64_t e) {
      total.fetch_add(sum_range(buf.data() + b, static_cast<size_t>(e - b)), std::memory_order_relaxed);
    });
    benchmark::DoNotOptimize(total.load());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(kBytes));
}
BENCHMARK(BM_ReadBandwidth)->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
