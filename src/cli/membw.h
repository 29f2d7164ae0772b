// Memory read bandwidth of this machine, measured the way batch-1 decode reads weights: several
// threads streaming disjoint parts of one buffer far larger than the last-level cache.
#pragma once

#include <cstddef>

namespace onebit::cli {

struct MemBandwidth {
  double bytes_per_s = 0;  // best pass
  size_t buffer_bytes = 0;
  int threads = 0;
  int passes = 0;
};

// Size of the last-level cache in bytes (0 when the system does not say).
size_t last_level_cache_bytes();

// Sums a buffer of max(min_bytes, 4 x LLC) bytes `passes` times with `threads` threads
// (0 = hardware threads) and reports the fastest pass. The buffer is written once first so that
// every page is backed by memory before timing starts.
MemBandwidth measure_read_bandwidth(int threads, size_t min_bytes = size_t{1} << 30, int passes = 5);

// GPU 0's device-to-device copy rate (bytes read + written, 2 GiB, best of 10; cuda_backend.h).
MemBandwidth measure_cuda_copy_bandwidth();

}  // namespace onebit::cli
