// Ternary GEMV / GEMM on the BitNet b1.58 2B-4T shapes, against this machine's read bandwidth.
//
//   build/<dir>/bench/bench_ternary_gemv --benchmark_min_time=1s
//   ONEBIT_CPU_ISA=avx2 build/<dir>/bench/bench_ternary_gemv ...   (other kernel versions)
//
// Counters: weight_GB/s = packed weight bytes streamed per second; frac_bw = that over the read
// bandwidth measured at start-up with the same thread count (a sum over 1 GiB, like bench_membw);
// tok/s = token rows per second (for the model benchmarks: through all 30 layers' 7 projections).
// Every matrix is a distinct buffer and each benchmark cycles through >= 4x the L3 size, so caches
// do not help, as in real decode.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"

namespace {

using namespace onebit::cpu;

constexpr int64_t kHidden = 2560, kInter = 6912, kLayers = 30, kKv = 640;
constexpr size_t kColdBytes = size_t{128} << 20;  // cycle through this much per shape (L3 = 32 MiB)

// Random weights built straight in the kernel layout (every 2-bit field in {0,1,2}); repacking
// 2 billion int8 codes would take longer than the benchmark.
PackedTernary random_packed(std::mt19937& rng, int64_t rows, int64_t cols) {
  static const std::vector<uint8_t> valid = [] {
    std::vector<uint8_t> v;
    for (int b = 0; b < 256; ++b) {
      if ((b & 3) != 3 && ((b >> 2) & 3) != 3 && ((b >> 4) & 3) != 3 && ((b >> 6) & 3) != 3) v.push_back(uint8_t(b));
    }
    return v;
  }();
  PackedTernary p;
  p.rows = rows;
  p.cols = cols;
  p.row_groups = (rows + kRowGroup - 1) / kRowGroup;
  p.blocks = (cols + kBlockCols - 1) / kBlockCols;
  p.data.resize(static_cast<size_t>(p.row_groups * p.blocks * kBlockBytes));
  uint64_t x = rng();
  for (auto& b : p.data) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    b = valid[(x >> 33) % valid.size()];
  }
  p.row_scales.assign(static_cast<size_t>(p.rows_padded()), 1.5f);
  return p;
}

std::vector<float> random_vec(std::mt19937& rng, int64_t n) {
  std::normal_distribution<float> d;
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

ThreadPool& pool_with(int threads) {
  static std::map<int, std::unique_ptr<ThreadPool>> pools;
  auto& p = pools[threads];
  if (!p) p = std::make_unique<ThreadPool>(threads);
  return *p;
}

// Read bandwidth with `threads` threads, best of 3 passes over 1 GiB (as bench_membw).
double read_bandwidth(int threads) {
  static std::map<int, double> cache;
  if (cache.count(threads)) return cache[threads];
  AlignedVector<uint64_t> buf(size_t{1} << 27);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = i;
  double best = 0;
  for (int pass = 0; pass < 3; ++pass) {
    std::atomic<uint64_t> total{0};
    const auto t0 = std::chrono::steady_clock::now();
    pool_with(threads).parallel_for(int64_t(buf.size()), 1 << 16, [&](int64_t b, int64_t e) {
      uint64_t a[8] = {};
      for (int64_t i = b; i + 8 <= e; i += 8) {
        for (int j = 0; j < 8; ++j) a[j] += buf[size_t(i + j)];
      }
      total.fetch_add(a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7]);
    });
    benchmark::DoNotOptimize(total.load());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(buf.size() * 8) / s);
  }
  return cache[threads] = best;
}

void report(benchmark::State& state, double weight_bytes_per_iter, double tokens_per_iter, int threads) {
  const double iters = double(state.iterations());
  state.counters["weight_GB/s"] =
      benchmark::Counter(weight_bytes_per_iter * iters / 1e9, benchmark::Counter::kIsRate);
  state.counters["tok/s"] = benchmark::Counter(tokens_per_iter * iters, benchmark::Counter::kIsRate);
  // frac_bw needs the rate, known only after the run: weight_GB/s / bandwidth.
  state.counters["membw_GB/s"] = read_bandwidth(threads) / 1e9;
  state.counters["frac_bw"] = benchmark::Counter(weight_bytes_per_iter * iters / read_bandwidth(threads),
                                                 benchmark::Counter::kIsRate);
}

// One projection shape, batch 1: args rows, cols, threads.
void BM_Gemv(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const int threads = int(state.range(2));
  std::mt19937 rng(1);
  std::vector<PackedTernary> ws;
  size_t bytes = 0;
  do {
    ws.push_back(random_packed(rng, rows, cols));
    bytes += ws.back().weight_bytes();
  } while (bytes < kColdBytes);
  const auto x = random_vec(rng, cols);
  QuantizedActs q;
  quantize_activations(x.data(), 1, cols, cols, q);
  std::vector<float> y(static_cast<size_t>(rows));
  ThreadPool& pool = pool_with(threads);
  read_bandwidth(threads);
  size_t i = 0;
  for (auto _ : state) {
    ternary_gemv(ws[i], q, y.data(), &pool);
    benchmark::DoNotOptimize(y.data());
    i = (i + 1) % ws.size();
  }
  report(state, double(ws[0].weight_bytes()), 1, threads);
  state.SetLabel(std::string(isa_name(active_isa())));
}
BENCHMARK(BM_Gemv)
    ->ArgNames({"rows", "cols", "threads"})
    ->Args({kHidden, kHidden, 1})->Args({kHidden, kHidden, 2})
    ->Args({kKv, kHidden, 2})
    ->Args({kInter, kHidden, 1})->Args({kInter, kHidden, 2})
    ->Args({kHidden, kInter, 1})->Args({kHidden, kInter, 2})
    ->UseRealTime()->Unit(benchmark::kMicrosecond);

// All 30 layers x 7 projections, distinct buffers (~521 MB at 2 bits).
struct Model {
  struct Layer {
    PackedTernary q, k, v, o, gate, up, down;
  };
  std::vector<Layer> layers;
  std::vector<float> norm_h, norm_i;
  size_t bytes = 0;
};

const Model& model() {
  static const Model m = [] {
    Model m;
    std::mt19937 rng(2);
    for (int l = 0; l < kLayers; ++l) {
      Model::Layer L{random_packed(rng, kHidden, kHidden), random_packed(rng, kKv, kHidden),
                     random_packed(rng, kKv, kHidden),     random_packed(rng, kHidden, kHidden),
                     random_packed(rng, kInter, kHidden),  random_packed(rng, kInter, kHidden),
                     random_packed(rng, kHidden, kInter)};
      for (const auto* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) m.bytes += w->weight_bytes();
      m.layers.push_back(std::move(L));
    }
    m.norm_h.assign(kHidden, 1.0f);
    m.norm_i.assign(kInter, 1.0f);
    return m;
  }();
  return m;
}

// The ternary part of a forward pass for n token rows: per layer norm+quantize, q/k/v, quantize,
// o, norm+quantize, gate/up, relu2*up, norm+quantize, down. (No attention: its cost depends on the
// context length, and it is not a weight stream.)
void forward_ternary(const Model& m, int64_t n, const std::vector<float>& x, ThreadPool& pool, std::vector<float>& a,
                     std::vector<float>& b, std::vector<float>& c) {
  QuantizedActs qa;
  for (const auto& L : m.layers) {
    rmsnorm_quantize(x.data(), m.norm_h.data(), n, kHidden, 1e-5f, qa);
    ternary_gemm(L.q, qa, a.data(), kHidden, &pool);
    ternary_gemm(L.k, qa, b.data(), kKv, &pool);
    ternary_gemm(L.v, qa, b.data(), kKv, &pool);
    rmsnorm_quantize(a.data(), m.norm_h.data(), n, kHidden, 1e-5f, qa);
    ternary_gemm(L.o, qa, a.data(), kHidden, &pool);
    rmsnorm_quantize(a.data(), m.norm_h.data(), n, kHidden, 1e-5f, qa);
    ternary_gemm(L.gate, qa, b.data(), kInter, &pool);
    ternary_gemm(L.up, qa, c.data(), kInter, &pool);
    relu2_mul(b.data(), c.data(), n * kInter, b.data());
    rmsnorm_quantize(b.data(), m.norm_i.data(), n, kInter, 1e-5f, qa);
    ternary_gemm(L.down, qa, a.data(), kHidden, &pool);
  }
}

// Arg: token rows n (1 = decode), threads.
void BM_ModelTernary(benchmark::State& state) {
  const int64_t n = state.range(0);
  const int threads = int(state.range(1));
  const Model& m = model();
  std::mt19937 rng(3);
  const auto x = random_vec(rng, n * kHidden);
  std::vector<float> a(size_t(n * kInter)), b(size_t(n * kInter)), c(size_t(n * kInter));
  ThreadPool& pool = pool_with(threads);
  read_bandwidth(threads);
  for (auto _ : state) {
    forward_ternary(m, n, x, pool, a, b, c);
    benchmark::DoNotOptimize(a.data());
  }
  report(state, double(m.bytes), double(n), threads);
  state.SetLabel(std::string(isa_name(active_isa())) + ", " + std::to_string(m.bytes / 1000000) + " MB weights");
}
BENCHMARK(BM_ModelTernary)
    ->ArgNames({"n", "threads"})
    ->Args({1, 1})->Args({1, 2})->Args({16, 2})->Args({64, 2})->Args({512, 2})
    ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
