#include "cli/membw.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>

#include "core/base/error.h"
#include "engine/cuda_backend.h"
#include "kernels/cpu/aligned_buffer.h"
#include "kernels/cpu/stream_read.h"
#include "kernels/cpu/thread_pool.h"

namespace onebit::cli {
namespace {

// "32768K" / "32M" as written in /sys/devices/system/cpu/cpu0/cache/index*/size.
size_t parse_cache_size(const std::string& s) {
  size_t v = 0, i = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') v = v * 10 + static_cast<size_t>(s[i++] - '0');
  if (i < s.size() && (s[i] == 'K' || s[i] == 'k')) v <<= 10;
  if (i < s.size() && (s[i] == 'M' || s[i] == 'm')) v <<= 20;
  return v;
}

}  // namespace

size_t last_level_cache_bytes() {
  size_t best = 0;
  for (int idx = 0; idx < 8; ++idx) {
    std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(idx) + "/size");
    std::string s;
    if (f >> s) best = std::max(best, parse_cache_size(s));
  }
#ifdef _SC_LEVEL3_CACHE_SIZE
  if (best == 0) {
    const long l3 = ::sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0) best = static_cast<size_t>(l3);
  }
#endif
  return best;
}

MemBandwidth measure_read_bandwidth(int threads, size_t min_bytes, int passes) {
  if (threads < 0) fail("thread count must be >= 0, got {}", threads);
  if (passes < 1) fail("bandwidth passes must be >= 1, got {}", passes);
  const size_t bytes = std::max(min_bytes, 4 * last_level_cache_bytes()) / 4096 * 4096;
  cpu::AlignedVector<uint64_t> buf(bytes / 8);
  cpu::ThreadPool pool(threads);
  constexpr int64_t kGrain = int64_t{1} << 16;  // 512 KiB per chunk
  const int64_t n = static_cast<int64_t>(buf.size());
  // Fill in parallel: on a NUMA machine each page then sits near the thread that reads it.
  pool.parallel_for(n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) buf[static_cast<size_t>(i)] = static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull;
  });
  MemBandwidth r;
  r.buffer_bytes = bytes;
  r.threads = pool.num_threads();
  r.passes = passes;
  std::atomic<uint64_t> sink{0};  // an atomic side effect: the reads cannot be optimized away
  for (int p = 0; p < passes; ++p) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(n, kGrain, [&](int64_t b, int64_t e) {
      sink.fetch_add(cpu::stream_sum(buf.data() + b, static_cast<size_t>(e - b)), std::memory_order_relaxed);
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s > 0) r.bytes_per_s = std::max(r.bytes_per_s, static_cast<double>(bytes) / s);
  }
  return r;
}

MemBandwidth measure_cuda_copy_bandwidth() {
  MemBandwidth r;
  r.buffer_bytes = size_t{1} << 31;
  r.passes = 10;
  r.bytes_per_s = cuda_copy_bandwidth(r.buffer_bytes, r.passes);
  return r;
}

}  // namespace onebit::cli
