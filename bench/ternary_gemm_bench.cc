// Ternary GEMM for many token rows (prefill) on the BitNet b1.58 2B-4T projection shapes, against
// the measured vpdpbusd peak of this machine.
//
//   build/<dir>/bench/bench_ternary_gemm [n_rows=256] [reps=7]
//
// For 1 and 2 threads: the vpdpbusd-zmm peak (independent accumulators, register operands, the
// same thread count, measured here) and per shape the median GEMM time over `reps` runs, as GMAC/s
// and as a fraction of that peak. The "model" line weights the shapes as one 2B-4T layer does
// (q, k, v, o, gate, up, down) and turns the rate into prefill tokens/s for the ternary GEMMs alone.
// Weights are random, built straight in the kernel layout; activations random int8.
// ONEBIT_GEMM_LUT=0 runs the AVX-512 GEMM without its lookup-table share (VNNI tiles only), for
// comparing in one binary; bench_lut_loop measures the table loop's ceilings.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"

namespace {

using namespace onebit::cpu;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

PackedTernary random_packed(std::mt19937& rng, int64_t rows, int64_t cols) {
  PackedTernary p;
  p.rows = rows;
  p.cols = cols;
  p.row_groups = (rows + kRowGroup - 1) / kRowGroup;
  p.blocks = (cols + kBlockCols - 1) / kBlockCols;
  p.data.resize(static_cast<size_t>(p.row_groups * p.blocks * kBlockBytes));
  std::uniform_int_distribution<int> code(0, 2);
  for (auto& b : p.data) b = uint8_t(code(rng) | code(rng) << 2 | code(rng) << 4 | code(rng) << 6);
  p.row_scales.assign(static_cast<size_t>(p.rows_padded()), 1.5f);
  return p;
}

// 12 independent vpdpbusd zmm per iteration, register operands: the instruction's throughput.
#if defined(__x86_64__)
void dpbusd_loop(int64_t iters) {
  for (int64_t i = 0; i < iters; ++i) {
    asm volatile(
        "vpdpbusd %%zmm30, %%zmm31, %%zmm0\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm1\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm2\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm3\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm4\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm5\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm6\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm7\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm8\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm9\n\t"
        "vpdpbusd %%zmm30, %%zmm31, %%zmm10\n\tvpdpbusd %%zmm30, %%zmm31, %%zmm11\n\t" ::
            : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11");
  }
}
#endif

// int8 MACs per second of vpdpbusd zmm (64 each) on `threads` threads together; 0 if unavailable.
double vnni_peak(ThreadPool& pool) {
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx512vnni")) return 0;
  const int threads = pool.num_threads();
  const int64_t iters = 20'000'000;
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    pool.parallel_for(threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) dpbusd_loop(iters);
    });
    best = std::max(best, double(threads) * iters * 12 * 64 / seconds_since(t0));
  }
  return best;
#else
  (void)pool;
  return 0;
#endif
}

struct Shape {
  const char* name;
  int64_t rows, cols, per_layer;
};

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 256;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 7;
  const Shape shapes[] = {{"q/o 2560x2560", 2560, 2560, 2}, {"k/v 640x2560", 640, 2560, 2},
                          {"gate/up 6912x2560", 6912, 2560, 2}, {"down 2560x6912", 2560, 6912, 1}};
  std::mt19937 rng(1);
  std::printf("ternary GEMM, %lld token rows, ISA %s, median of %d\n", static_cast<long long>(n),
              std::string(isa_name(active_isa())).c_str(), reps);
  for (int threads : {1, 2}) {
    ThreadPool pool(threads);
    const double peak = vnni_peak(pool);
    std::printf("threads %d: vpdpbusd zmm peak %.1f GMAC/s\n", threads, peak / 1e9);
    double layer_macs = 0, layer_s = 0;
    for (const Shape& s : shapes) {
      const PackedTernary w = random_packed(rng, s.rows, s.cols);
      std::vector<float> x(static_cast<size_t>(n * s.cols));
      std::normal_distribution<float> d;
      for (auto& v : x) v = d(rng);
      QuantizedActs q;
      quantize_activations(x.data(), n, s.cols, s.cols, q);
      std::vector<float> y(static_cast<size_t>(n * s.rows));
      ternary_gemm(w, q, y.data(), s.rows, &pool);  // warm-up (scratch, page faults)
      std::vector<double> t;
      for (int r = 0; r < reps; ++r) {
        const auto t0 = Clock::now();
        ternary_gemm(w, q, y.data(), s.rows, &pool);
        t.push_back(seconds_since(t0));
      }
      std::sort(t.begin(), t.end());
      const double med = t[t.size() / 2], macs = double(n) * double(s.rows) * double(s.cols);
      layer_macs += macs * double(s.per_layer);
      layer_s += med * double(s.per_layer);
      std::printf("  %-18s %9.3f ms  %7.1f GMAC/s  %5.1f%% of peak  (min %.3f ms, max %.3f ms)\n", s.name, med * 1e3,
                  macs / med / 1e9, peak > 0 ? 100.0 * macs / med / peak : 0.0, t.front() * 1e3, t.back() * 1e3);
    }
    const double rate = layer_macs / layer_s;
    std::printf("  model (30 layers)  %7.1f GMAC/s  %5.1f%% of peak  -> %.1f tokens/s for the ternary GEMMs alone\n",
                rate / 1e9, peak > 0 ? 100.0 * rate / peak : 0.0, double(n) / (layer_s * 30));
  }
  return 0;
}
