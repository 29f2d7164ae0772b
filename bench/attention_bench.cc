// Prefill attention's two fp32 kernels on one core (docs/kernels-cpu.md, "Prefill attention"):
// the work of one attention task of the engine (cpu_backend.cc, attention_blocked), i.e. one KV
// head and 4 prompt rows x 4 query heads = 16 query vectors against 32-key tiles of K and V,
// done the previous way (dot_rows / axpy_rows once per query and tile) and with the several-query
// kernels (dot_rows_multi / axpy_rows_multi, one call per tile).
//
//   build/<dir>/bench/bench_attention [keys] [head_dim]     (default 512 128; pin with taskset -c N)
//
// Prints multiply-adds per nanosecond of thread CPU time, best of 11 runs, for the active ISA
// (ONEBIT_CPU_ISA). Products and sums round separately (no FMA), so the ceiling is what one core
// sustains of independent vmulps + vaddps pairs: ~0.8 zmm pairs per cycle = ~47 per ns at 3.67 GHz
// on the Zen 4 dev machine (each alone runs at 1 per cycle). Buffers start on a 64-byte boundary,
// as the engine's do; ONEBIT_BENCH_OFFSET=<floats> moves them off it.
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/cpu_kernels.h"
#include "thread_timing.h"

namespace {

using onebit::bench::best_rate;
using onebit::bench::cpu_now;

// n floats starting `off` floats past a 64-byte boundary.
struct AlignedVec {
  AlignedVec(int64_t n, int64_t off) : mem(static_cast<size_t>(n + off + 16)), off_(off) {
    const auto addr = reinterpret_cast<uintptr_t>(mem.data());
    off_ += static_cast<int64_t>((64 - addr % 64) % 64 / 4);
    n_ = n;
  }
  float* data() { return mem.data() + off_; }
  float* begin() { return data(); }
  float* end() { return data() + n_; }
  std::vector<float> mem;
  int64_t off_, n_;
};

}  // namespace

int main(int argc, char** argv) {
  using namespace onebit::cpu;
  const int64_t n_keys = argc > 1 ? std::atoll(argv[1]) : 512, d = argc > 2 ? std::atoll(argv[2]) : 128;
  constexpr int64_t kQueries = 16, kTile = 32, kReps = 20;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto fill = [&](AlignedVec& v) {
    for (float& x : v) x = nd(rng);
  };
  const int64_t off = std::getenv("ONEBIT_BENCH_OFFSET") ? std::atoll(std::getenv("ONEBIT_BENCH_OFFSET")) : 0;
  auto buf = [&](int64_t n) { return AlignedVec(n, off); };
  AlignedVec q = buf(kQueries * d), k = buf(n_keys * d), v = buf(n_keys * d), s = buf(kQueries * n_keys),
             o = buf(kQueries * d);
  fill(q);
  fill(k);
  fill(v);
  for (float& x : s) x = 1.0f / static_cast<float>(n_keys);
  std::vector<const float*> qp(kQueries), pp(kQueries);
  std::vector<float*> sp(kQueries), op(kQueries);
  const double macs = double(kReps) * kQueries * n_keys * d;

  auto dot_old = [&] {
    for (int rep = 0; rep < kReps; ++rep)
      for (int64_t j0 = 0; j0 < n_keys; j0 += kTile) {
        const int64_t c = std::min(kTile, n_keys - j0);
        for (int64_t a = 0; a < kQueries; ++a)
          dot_rows(q.data() + a * d, k.data() + j0 * d, d, c, d, s.data() + a * n_keys + j0);
      }
  };
  auto dot_new = [&] {
    for (int rep = 0; rep < kReps; ++rep)
      for (int64_t j0 = 0; j0 < n_keys; j0 += kTile) {
        const int64_t c = std::min(kTile, n_keys - j0);
        for (int64_t a = 0; a < kQueries; ++a) {
          qp[a] = q.data() + a * d;
          sp[a] = s.data() + a * n_keys + j0;
        }
        dot_rows_multi(qp.data(), kQueries, k.data() + j0 * d, d, c, d, sp.data());
      }
  };
  auto axpy_old = [&] {
    for (int rep = 0; rep < kReps; ++rep)
      for (int64_t j0 = 0; j0 < n_keys; j0 += kTile) {
        const int64_t c = std::min(kTile, n_keys - j0);
        for (int64_t a = 0; a < kQueries; ++a)
          axpy_rows(s.data() + a * n_keys + j0, v.data() + j0 * d, d, c, d, o.data() + a * d);
      }
  };
  auto axpy_new = [&] {
    for (int rep = 0; rep < kReps; ++rep)
      for (int64_t j0 = 0; j0 < n_keys; j0 += kTile) {
        const int64_t c = std::min(kTile, n_keys - j0);
        for (int64_t a = 0; a < kQueries; ++a) {
          pp[a] = s.data() + a * n_keys + j0;
          op[a] = o.data() + a * d;
        }
        axpy_rows_multi(pp.data(), kQueries, v.data() + j0 * d, d, c, d, op.data());
      }
  };
  std::printf("isa %s, %lld queries x %lld keys x head_dim %lld, key tiles of %lld; multiply-adds per ns, best of 11\n",
              std::string(isa_name(active_isa())).c_str(), static_cast<long long>(kQueries),
              static_cast<long long>(n_keys), static_cast<long long>(d), static_cast<long long>(kTile));
  const double d_old = best_rate(dot_old, macs) * 1e-9, d_new = best_rate(dot_new, macs) * 1e-9;
  for (float& x : s) x = 1.0f / static_cast<float>(n_keys);  // the dot runs left scores here
  const double a_old = best_rate(axpy_old, macs) * 1e-9, a_new = best_rate(axpy_new, macs) * 1e-9;
  std::printf("scores  (q.k):  dot_rows per query %6.1f   dot_rows_multi  %6.1f   (%.2fx)\n", d_old, d_new,
              d_new / d_old);
  std::printf("outputs (p.v):  axpy_rows per query %5.1f   axpy_rows_multi %6.1f   (%.2fx)\n", a_old, a_new,
              a_new / a_old);
  return 0;
}
