// Benchmark of the CUDA ternary GEMV (bench/cuda/run_on_device.sh builds and runs it).
// - device-to-device copy bandwidth (cudaMemcpyAsync of 2 GB, read + write counted)
// - each 2B-4T shape, rotating among enough weight buffers for >= 4x L2, back-to-back stream
//   launches and a CUDA graph of them, per GemvConfig
// - a whole-model decode equivalent: 30 layers x 7 projections, 210 distinct buffers (521 MB),
//   stream launches, graph replay, graph replay with PDL
// Times: CUDA events, median over repetitions. Prints one table at the end.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ternary_gemv_cuda.h"

namespace oc = onebit::cuda;


namespace {

// Random valid ternary bytes (every 2-bit field in {0,1,2}) without a host copy.
__global__ void fill_codes(uint8_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    uint64_t h = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    uint8_t b = 0;
    for (int f = 0; f < 4; ++f) b |= static_cast<uint8_t>(((h >> (8 * f)) % 3) << (2 * f));
    p[i] = b;
  }
}

__global__ void fill_float(float* p, size_t n, uint64_t seed, float lo, float hi) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    uint64_t h = (i + 7) * 0xD1B54A32D192ED03ull ^ seed;
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    p[i] = lo + (hi - lo) * static_cast<float>(h >> 40) / static_cast<float>(1 << 24);
  }
}

float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Act {
  int8_t* q;
  float* s;
  int32_t* sum;
};

Act make_act(int64_t cols, uint64_t seed, cudaStream_t st) {
  float* x;
  Act a;
  CK(cudaMalloc(&x, cols * sizeof(float)));
  CK(cudaMalloc(&a.q, oc::cuda_act_len(cols)));
  CK(cudaMalloc(&a.s, sizeof(float)));
  CK(cudaMalloc(&a.sum, sizeof(int32_t)));
  fill_float<<<64, 256, 0, st>>>(x, cols, seed, -3.0f, 3.0f);
  CK(cudaGetLastError());
  CK(oc::quantize_activations(x, cols, a.q, a.s, a.sum, st));
  CK(cudaStreamSynchronize(st));
  CK(cudaFree(x));
  return a;
}

struct Gemv {
  const uint8_t* w;
  const float* rs;
  int64_t rows, cols;
  Act act;
  float* y;
};

void launch_all(const std::vector<Gemv>& g, oc::GemvConfig cfg, cudaStream_t st) {
  for (const Gemv& x : g) CK(oc::ternary_gemv(x.w, x.rs, x.rows, x.cols, x.act.q, x.act.s, x.act.sum, x.y, st, cfg));
}

// Median time (ms) of one pass over `g`: plain stream launches.
float time_stream(const std::vector<Gemv>& g, oc::GemvConfig cfg, cudaStream_t st, int reps) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  launch_all(g, cfg, st);  // warm-up
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(a, st));
    launch_all(g, cfg, st);
    CK(cudaEventRecord(b, st));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  return median(t);
}

// Median time (ms) of one replay of a graph holding one pass over `g`.
float time_graph(const std::vector<Gemv>& g, oc::GemvConfig cfg, cudaStream_t st, int reps) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  cudaError_t le = cudaSuccess;
  for (const Gemv& x : g) {
    le = oc::ternary_gemv(x.w, x.rs, x.rows, x.cols, x.act.q, x.act.s, x.act.sum, x.y, st, cfg);
    if (le != cudaSuccess) break;
  }
  cudaError_t ee = cudaStreamEndCapture(st, &graph);
  if (le == cudaSuccess) le = ee;
  if (le == cudaSuccess) le = cudaGraphInstantiate(&exec, graph, 0);
  if (le != cudaSuccess) {  // e.g. PDL not capturable: report, don't abort the other cases
    std::printf("graph capture failed (pdl=%d): %s\n", cfg.pdl, cudaGetErrorString(le));
    (void)cudaGetLastError();
    return -1.0f;
  }
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) CK(cudaGraphLaunch(exec, st));
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(a, st));
    CK(cudaGraphLaunch(exec, st));
    CK(cudaEventRecord(b, st));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  return median(t);
}

struct Row {
  std::string what;
  double bytes;  // weight bytes per pass
  int calls;     // GEMVs per pass
  float ms;      // per pass
};

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %.1f MB, %.1f GB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6,
              prop.totalGlobalMem / 1e9);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  // ---- copy bandwidth ----
  double copy_gbs;
  {
    const size_t n = size_t{2} << 30;
    void *src, *dst;
    CK(cudaMalloc(&src, n));
    CK(cudaMalloc(&dst, n));
    CK(cudaMemsetAsync(src, 0x5a, n, st));
    CK(cudaMemsetAsync(dst, 0x00, n, st));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 2; ++i) CK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, st));
    std::vector<float> t;
    for (int i = 0; i < 10; ++i) {
      CK(cudaEventRecord(a, st));
      CK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, st));
      CK(cudaEventRecord(b, st));
      CK(cudaEventSynchronize(b));
      float ms;
      CK(cudaEventElapsedTime(&ms, a, b));
      t.push_back(ms);
    }
    const float ms = median(t);
    copy_gbs = 2.0 * n / (ms * 1e-3) / 1e9;
    std::printf("D2D copy 2 GiB: %.3f ms median -> %.0f GB/s (read + write)\n", ms, copy_gbs);
    CK(cudaFree(src));
    CK(cudaFree(dst));
  }

  const int64_t dim = 2560, ffn = 6912;
  Act a_dim = make_act(dim, 11, st), a_ffn = make_act(ffn, 12, st);
  float* y;
  float* rs;
  CK(cudaMalloc(&y, ffn * sizeof(float)));
  CK(cudaMalloc(&rs, ffn * sizeof(float)));
  fill_float<<<64, 256, 0, st>>>(rs, ffn, 5, 0.5f, 2.0f);
  CK(cudaGetLastError());

  std::vector<Row> table;
  const int cpts[] = {1, 2, 4};
  // ---- single shapes, rotating buffers ----
  struct Shape {
    const char* name;
    int64_t rows, cols;
  };
  const Shape shapes[] = {{"q/o 2560x2560", dim, dim},
                          {"k/v 640x2560", 640, dim},
                          {"gate/up 6912x2560", ffn, dim},
                          {"down 2560x6912", dim, ffn}};
  for (const Shape& s : shapes) {
    const size_t bytes = oc::cuda_packed_bytes(s.rows, s.cols);
    const size_t stride = (bytes + 255) / 256 * 256;
    size_t nbuf = std::max<size_t>(4, (4 * static_cast<size_t>(prop.l2CacheSize) + bytes - 1) / bytes);
    nbuf = std::max<size_t>(nbuf, 64);  // at least 64 launches per timed pass
    uint8_t* w;
    CK(cudaMalloc(&w, stride * nbuf));
    fill_codes<<<1024, 256, 0, st>>>(w, stride * nbuf, 99);
    CK(cudaGetLastError());
    std::vector<Gemv> g;
    for (size_t i = 0; i < nbuf; ++i)
      g.push_back({w + i * stride, rs, s.rows, s.cols, s.cols == dim ? a_dim : a_ffn, y});
    for (int cpt : cpts) {
      for (int mode = 0; mode < 3; ++mode) {  // stream, graph, graph + pdl
        oc::GemvConfig cfg;
        cfg.chunks_per_thread = cpt;
        cfg.pdl = mode == 2;
        const float ms = mode == 0 ? time_stream(g, cfg, st, quick ? 5 : 20) : time_graph(g, cfg, st, quick ? 5 : 20);
        const char* m = mode == 0 ? "stream" : (mode == 1 ? "graph" : "graph+pdl");
        std::printf("  %s cpt%d %s: %.1f us per pass of %zu\n", s.name, cpt, mode == 0 ? "stream" : (mode == 1 ? "graph" : "graph+pdl"), ms * 1e3, nbuf);
        table.push_back({std::string(s.name) + " cpt" + std::to_string(cpt) + " " + m + " (x" + std::to_string(nbuf) + ")",
                         static_cast<double>(bytes) * nbuf, static_cast<int>(nbuf), ms});
      }
    }
    CK(cudaFree(w));
  }

  // ---- whole-model decode equivalent ----
  {
    const int layers = 30;
    const Shape proj[7] = {{"q", dim, dim}, {"k", 640, dim}, {"v", 640, dim}, {"o", dim, dim},
                           {"gate", ffn, dim}, {"up", ffn, dim}, {"down", dim, ffn}};
    std::vector<uint8_t*> bufs;
    std::vector<Gemv> g;
    double total = 0;
    for (int l = 0; l < layers; ++l)
      for (int p = 0; p < 7; ++p) {
        const size_t bytes = oc::cuda_packed_bytes(proj[p].rows, proj[p].cols);
        uint8_t* w;
        CK(cudaMalloc(&w, bytes));
        fill_codes<<<256, 256, 0, st>>>(w, bytes, 1000 + l * 7 + p);
        CK(cudaGetLastError());
        bufs.push_back(w);
        total += bytes;
        g.push_back({w, rs, proj[p].rows, proj[p].cols, proj[p].cols == dim ? a_dim : a_ffn, y});
      }
    CK(cudaStreamSynchronize(st));
    std::printf("model: %zu GEMVs, %.1f MB of 2-bit weights\n", g.size(), total / 1e6);
    for (int cpt : cpts)
      for (int mode = 0; mode < 3; ++mode) {
        oc::GemvConfig cfg;
        cfg.chunks_per_thread = cpt;
        cfg.pdl = mode == 2;
        const float ms = mode == 0 ? time_stream(g, cfg, st, quick ? 5 : 30) : time_graph(g, cfg, st, quick ? 5 : 50);
        const char* m = mode == 0 ? "stream" : (mode == 1 ? "graph" : "graph+pdl");
        std::printf("  model cpt%d mode%d: %.1f us\n", cpt, mode, ms * 1e3);
        table.push_back({std::string("MODEL 30x7 cpt") + std::to_string(cpt) + " " + m, total, 210, ms});
      }
    for (uint8_t* w : bufs) CK(cudaFree(w));
    const double floor_us = total / (copy_gbs * 1e9) * 1e6;
    std::printf("floor: %.1f MB / %.0f GB/s = %.1f us per token (ternary weights only)\n", total / 1e6, copy_gbs,
                floor_us);
  }
  CK(cudaDeviceSynchronize());

  std::printf("\n%-46s %10s %10s %8s %7s\n", "case", "us/pass", "us/gemv", "GB/s", "%copy");
  for (const Row& r : table) {
    if (r.ms <= 0) {
      std::printf("%-46s failed\n", r.what.c_str());
      continue;
    }
    const double gbs = r.bytes / (r.ms * 1e-3) / 1e9;
    std::printf("%-46s %10.1f %10.2f %8.0f %6.1f%%\n", r.what.c_str(), r.ms * 1e3, r.ms * 1e3 / r.calls, gbs,
                100.0 * gbs / copy_gbs);
  }
  std::printf("copy bandwidth (D2D, read+write): %.0f GB/s on %s\n", copy_gbs, prop.name);
  return 0;
}
