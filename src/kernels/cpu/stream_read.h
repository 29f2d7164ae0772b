// Streaming read of a buffer at the machine's full memory bandwidth: what `1bit bench` and
// bench/read_bw_bench.cc time to find the decode roofline. A plain scalar loop leaves bandwidth
// unused (measured here: 32 GB/s vs 44 GB/s with two threads), which would overstate every roofline.
#pragma once

#include <cstddef>
#include <cstdint>

namespace onebit::cpu {

// The sum of p[0..n) (wrapping), read with 64-byte AVX-512 loads and four independent
// accumulators where the CPU has AVX-512F, else with eight scalar accumulators. p must be 64-byte
// aligned.
uint64_t stream_sum(const uint64_t* p, size_t n);

}  // namespace onebit::cpu
