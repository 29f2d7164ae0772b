// Checks the CUDA ternary GEMV: fast kernel (plain and PDL launch, several configs) vs the
// one-thread-per-row reference kernel vs a CPU computation from the original int8 codes, all bit
// for bit; and the quantization kernel vs the CPU formula. Fresh random inputs each run; outputs
// poisoned before every launch. Exit 0 = all equal, 1 = mismatch or CUDA error.
// With no CUDA device: prints "SKIPPED: no CUDA device (...)" and exits 0 (CTest marks it skipped).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ternary_gemv_cuda.h"

namespace oc = onebit::cuda;


namespace {

int g_failures = 0;
long g_checked = 0;

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// CPU quantization, the documented formula.
void cpu_quantize(const std::vector<float>& x, int64_t padded, std::vector<int8_t>& q, float& s, int32_t& sum) {
  float m = 0.0f;
  for (float v : x) m = std::fmax(m, std::fabs(v));
  s = 127.0f / std::fmax(m, 1e-5f);
  q.assign(static_cast<size_t>(padded), 0);
  sum = 0;
  for (size_t c = 0; c < x.size(); ++c) {
    volatile float p = x[c] * s;  // one rounded fp32 product
    float r = std::nearbyint(p);
    int v = static_cast<int>(r);
    v = v < -128 ? -128 : (v > 127 ? 127 : v);
    q[c] = static_cast<int8_t>(v);
    sum += v;
  }
}

void fail(const char* what, int64_t rows, int64_t cols, int64_t i, const char* detail) {
  if (g_failures < 20)
    std::fprintf(stderr, "MISMATCH %s (%lld x %lld) at %lld: %s\n", what, (long long)rows, (long long)cols,
                 (long long)i, detail);
  ++g_failures;
}

// kind: 0 = random normal activations, 1 = ties (max|x| = 127 so s = 1 and x = k + 0.5),
// 2 = all-zero activations, 3 = extreme sums (all weights +-1, activations +-127/-128 pattern).
void check_shape(std::mt19937_64& rng, int64_t rows, int64_t cols, int kind, cudaStream_t st) {
  std::vector<int8_t> codes(static_cast<size_t>(rows * cols));
  std::uniform_int_distribution<int> tern(-1, 1);
  std::uniform_int_distribution<int> sign(0, 1);
  for (auto& c : codes) c = static_cast<int8_t>(kind == 3 ? 1 : tern(rng));
  std::vector<float> x(static_cast<size_t>(cols));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> ki(-126, 125);
  for (int64_t c = 0; c < cols; ++c) {
    if (kind == 0) x[c] = nd(rng) * 3.0f;
    else if (kind == 1) x[c] = static_cast<float>(ki(rng)) + 0.5f;
    else if (kind == 2) x[c] = 0.0f;
    else x[c] = -127.0f;  // q = -127 everywhere with s = 1
  }
  if (kind == 1) x[0] = 127.0f;
  std::vector<float> rs(static_cast<size_t>(rows));
  std::uniform_real_distribution<float> ud(0.5f, 2.0f);
  for (auto& v : rs) v = ud(rng);

  const std::vector<uint8_t> packed = oc::repack_for_cuda(codes.data(), rows, cols);
  // The packing must decode back to the codes through the layout definition.
  const int64_t K = oc::cuda_chunks(cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      size_t b;
      int sh;
      oc::cuda_weight_pos(K, r, c, &b, &sh);
      if (((packed[b] >> sh) & 3) - 1 != codes[r * cols + c]) {
        fail("repack", rows, cols, r * cols + c, "code does not round-trip");
        return;
      }
    }

  const int64_t alen = oc::cuda_act_len(cols);
  uint8_t* dw;
  float *dx, *drs, *dy, *ds;
  int8_t* dq;
  int32_t* dsum;
  CK(cudaMalloc(&dw, packed.size()));
  CK(cudaMalloc(&dx, cols * sizeof(float)));
  CK(cudaMalloc(&drs, rows * sizeof(float)));
  CK(cudaMalloc(&dy, rows * sizeof(float)));
  CK(cudaMalloc(&ds, sizeof(float)));
  CK(cudaMalloc(&dsum, sizeof(int32_t)));
  CK(cudaMalloc(&dq, alen));
  CK(cudaMemcpyAsync(dw, packed.data(), packed.size(), cudaMemcpyHostToDevice, st));
  CK(cudaMemcpyAsync(dx, x.data(), cols * sizeof(float), cudaMemcpyHostToDevice, st));
  CK(cudaMemcpyAsync(drs, rs.data(), rows * sizeof(float), cudaMemcpyHostToDevice, st));
  // Poison quantization outputs (0x7f bytes: q = 127, s = NaN-ish pattern, sum huge).
  CK(cudaMemsetAsync(dq, 0x7f, alen, st));
  CK(cudaMemsetAsync(ds, 0xff, sizeof(float), st));
  CK(cudaMemsetAsync(dsum, 0x7f, sizeof(int32_t), st));
  CK(oc::quantize_activations(dx, cols, dq, ds, dsum, st));
  std::vector<int8_t> gq(static_cast<size_t>(alen));
  float gs;
  int32_t gsum;
  CK(cudaMemcpyAsync(gq.data(), dq, alen, cudaMemcpyDeviceToHost, st));
  CK(cudaMemcpyAsync(&gs, ds, sizeof(float), cudaMemcpyDeviceToHost, st));
  CK(cudaMemcpyAsync(&gsum, dsum, sizeof(int32_t), cudaMemcpyDeviceToHost, st));
  CK(cudaStreamSynchronize(st));

  std::vector<int8_t> cq;
  float cs;
  int32_t csum;
  cpu_quantize(x, alen, cq, cs, csum);
  if (bits(cs) != bits(gs)) fail("quant scale", rows, cols, 0, "s differs");
  if (csum != gsum) fail("quant sum", rows, cols, 0, "qsum differs");
  for (int64_t c = 0; c < alen; ++c)
    if (cq[c] != gq[c]) {
      char d[96];
      std::snprintf(d, sizeof d, "q cpu %d gpu %d (x = %.9g)", cq[c], gq[c], c < cols ? x[c] : 0.0f);
      fail("quant q", rows, cols, c, d);
      break;
    }
  if (kind == 1 && cs != 1.0f) fail("quant ties", rows, cols, 0, "s != 1 in tie test");

  // CPU sums from the original codes and the GPU's q (equal to the CPU's, checked above).
  std::vector<float> cy(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    int64_t acc = 0;
    for (int64_t c = 0; c < cols; ++c) acc += int64_t{codes[r * cols + c]} * gq[c];
    if (acc != static_cast<int32_t>(acc)) fail("cpu sum", rows, cols, r, "exceeds int32");
    cy[r] = static_cast<float>(static_cast<int32_t>(acc)) * (rs[r] / gs);
  }

  std::vector<float> gy(static_cast<size_t>(rows));
  auto compare = [&](const char* what) {
    CK(cudaMemcpyAsync(gy.data(), dy, rows * sizeof(float), cudaMemcpyDeviceToHost, st));
    CK(cudaStreamSynchronize(st));
    for (int64_t r = 0; r < rows; ++r) {
      ++g_checked;
      if (bits(gy[r]) != bits(cy[r])) {
        char d[96];
        std::snprintf(d, sizeof d, "gpu %.9g cpu %.9g", gy[r], cy[r]);
        fail(what, rows, cols, r, d);
        return;
      }
    }
  };
  const unsigned char poisons[2] = {0xff, 0x7f};  // NaN / huge: any unwritten row fails
  for (unsigned char p : poisons) {
    CK(cudaMemsetAsync(dy, p, rows * sizeof(float), st));
    CK(oc::ternary_gemv_reference(dw, drs, rows, cols, dq, ds, dy, st));
    compare("reference");
    for (int cpt : {1, 2, 4, 16}) {
      for (bool pdl : {false, true}) {
        CK(cudaMemsetAsync(dy, p, rows * sizeof(float), st));
        oc::GemvConfig cfg;
        cfg.chunks_per_thread = cpt;
        cfg.pdl = pdl;
        CK(oc::ternary_gemv(dw, drs, rows, cols, dq, ds, dsum, dy, st, cfg));
        compare(pdl ? "fast+pdl" : "fast");
      }
    }
  }
  CK(cudaFree(dw));
  CK(cudaFree(dx));
  CK(cudaFree(drs));
  CK(cudaFree(dy));
  CK(cudaFree(ds));
  CK(cudaFree(dsum));
  CK(cudaFree(dq));
}

}  // namespace

int main() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    std::printf("SKIPPED: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "device count 0");
    return 0;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  std::mt19937_64 rng(std::random_device{}());

  struct Shape {
    int64_t rows, cols;
  };
  const Shape shapes[] = {{2560, 2560}, {640, 2560}, {6912, 2560}, {2560, 6912}, {1, 1},   {7, 63},
                          {8, 64},      {9, 65},     {13, 300},    {300, 13},    {33, 1000}, {100, 4097},
                          {17, 9000},   {5, 70000}};
  int shapes_run = 0;
  for (const Shape& s : shapes) {
    check_shape(rng, s.rows, s.cols, 0, st);
    ++shapes_run;
  }
  for (int i = 0; i < 6; ++i) {  // random odd shapes
    std::uniform_int_distribution<int64_t> rd(1, 700), cd(1, 3000);
    check_shape(rng, rd(rng), cd(rng), 0, st);
    ++shapes_run;
  }
  check_shape(rng, 37, 2560, 1, st);  // rounding ties
  check_shape(rng, 16, 130, 2, st);   // all-zero activations (s = 127 / 1e-5)
  check_shape(rng, 24, 6912, 3, st);  // extreme sums: 6912 * 127
  check_shape(rng, 8, (int64_t{1} << 19) - 1, 3, st);  // largest allowed cols, |sum| near 2^26
  shapes_run += 4;
  CK(cudaStreamDestroy(st));
  if (g_checked == 0) {
    std::fprintf(stderr, "FAIL: nothing was checked\n");
    return 1;
  }
  if (g_failures) {
    std::fprintf(stderr, "FAIL: %d mismatches (%d shapes, %ld outputs compared)\n", g_failures, shapes_run, g_checked);
    return 1;
  }
  std::printf("PASS: %d shapes, %ld outputs compared bit for bit (fast x {cpt 1,2,4,16} x {pdl off,on}, reference, CPU)\n",
              shapes_run, g_checked);
  return 0;
}
