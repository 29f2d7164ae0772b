// Checks fused_norm_gemv (decode_fused_cuda.h) on fresh random inputs (outputs poisoned first):
//  - kStore (1 to 3 matrices) bit for bit against the unfused launches (rmsnorm_quantize_rows,
//    then ternary_gemv_reference), and against a double-precision host reference of RMSNorm, int8
//    quantization and the ternary product within 3 activation codes (a code may round the other
//    way when y * s lies within float rounding of a half; each such code moves the exact integer
//    sum by at most 1) plus fp32 rounding of the final multiply;
//  - kResidual = x + the kStore result of the same block shape, bit for bit;
//  - kRelu2 = relu(gate)^2 * up of the kStore results of the same block shape, bit for bit;
//  - with and without programmatic dependent launch, several block shapes, odd sizes (rows not a
//    multiple of 8, columns not a multiple of 64), a zero input; shapes it cannot take are refused.
// Exit 0 = all pass, 1 = a mismatch or a CUDA error. Without a CUDA device: "SKIPPED: ..." and 0.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "check_util.h"
#include "kernels/cuda/decode_fused_cuda.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/ternary_gemv_cuda.h"

using namespace onebit::cuda;

namespace {

struct HostMatrix {
  int64_t rows = 0, cols = 0;
  std::vector<int8_t> codes;  // rows x cols in {-1, 0, 1}
  std::vector<float> row_scale;
  uint8_t* dw = nullptr;
  float* drs = nullptr;
};

HostMatrix make_matrix(int64_t rows, int64_t cols) {
  HostMatrix m;
  m.rows = rows;
  m.cols = cols;
  std::uniform_int_distribution<int> code(-1, 1);
  m.codes.resize(static_cast<size_t>(rows * cols));
  for (auto& c : m.codes) c = static_cast<int8_t>(code(rng));
  m.row_scale.resize(static_cast<size_t>(rows));
  for (auto& r : m.row_scale) r = 0.5f + std::uniform_real_distribution<float>(0, 1)(rng);
  m.dw = dev(repack_for_cuda(m.codes.data(), rows, cols));
  m.drs = dev(m.row_scale);
  return m;
}

// The documented math in double: y = x * r * w, s = 127 / max|y|, codes, sum(w * codes) / s * scale.
// Also returns the activation scale s (for the tolerance).
std::vector<double> reference(const HostMatrix& m, const std::vector<float>& x, const std::vector<float>& nw,
                              float eps, double* s_out) {
  const int64_t cols = m.cols;
  double ss = 0;
  for (int64_t c = 0; c < cols; ++c) ss += static_cast<double>(x[c]) * x[c];
  const double r = 1.0 / std::sqrt(ss / static_cast<double>(cols) + eps);
  std::vector<double> y(static_cast<size_t>(cols));
  double mx = 0;
  for (int64_t c = 0; c < cols; ++c) {
    y[c] = x[c] * r * nw[c];
    mx = std::max(mx, std::fabs(y[c]));
  }
  const double s = 127.0 / std::max(mx, 1e-5);
  std::vector<int> q(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) q[c] = static_cast<int>(std::clamp(std::nearbyint(y[c] * s), -128.0, 127.0));
  std::vector<double> out(static_cast<size_t>(m.rows));
  for (int64_t row = 0; row < m.rows; ++row) {
    int64_t acc = 0;
    for (int64_t c = 0; c < cols; ++c) acc += m.codes[row * cols + c] * q[c];
    out[row] = static_cast<double>(acc) / s * m.row_scale[row];
  }
  *s_out = s;
  return out;
}

std::string tag(const char* what, int64_t cols, FusedGemvShape sh, bool pdl) {
  return std::string(what) + " cols=" + std::to_string(cols) + " G=" + std::to_string(sh.groups) +
         " cpt=" + std::to_string(sh.chunks_per_thread) + (pdl ? " pdl" : "");
}

void check(std::vector<int64_t> rows, int64_t cols, FusedGemvShape sh, bool pdl, bool zero_input = false) {
  const float eps = 1e-5f;
  std::vector<float> x = randn(static_cast<size_t>(cols), 2.0f), nw = randn(static_cast<size_t>(cols));
  if (zero_input) std::fill(x.begin(), x.end(), 0.0f);
  float* dx = dev(x);
  float* dnw = dev(nw);
  std::vector<HostMatrix> ms;
  for (int64_t r : rows) ms.push_back(make_matrix(r, cols));
  FusedGemvArgs a;
  a.x = dx;
  a.norm_w = dnw;
  a.eps = eps;
  a.cols = cols;
  a.shape = sh;
  a.pdl = pdl;
  std::vector<float*> ys;
  for (const HostMatrix& m : ms) {
    ys.push_back(dev_poison<float>(static_cast<size_t>(m.rows)));
    a.mats[a.count++] = GemvMatrix{m.dw, m.drs, m.rows, ys.back()};
  }
  a.epilogue = FusedEpilogue::kStore;
  expect(fused_norm_gemv_ok(a), tag("shape refused", cols, sh, pdl));
  CK(fused_norm_gemv(a, nullptr));
  std::vector<std::vector<float>> got;
  // The unfused launches: one-block RMSNorm + quantization, then the plain reference GEMV.
  const int64_t stride = cuda_act_len(cols);
  QuantActs qa{dev_poison<int8_t>(static_cast<size_t>(stride)), dev_poison<float>(1), dev_poison<int32_t>(1), stride};
  CK(rmsnorm_quantize_rows(dx, dnw, 1, cols, eps, qa, nullptr));
  for (size_t i = 0; i < ms.size(); ++i) {
    got.push_back(host(ys[i], static_cast<size_t>(ms[i].rows)));
    float* yu = dev_poison<float>(static_cast<size_t>(ms[i].rows));
    CK(ternary_gemv_reference(ms[i].dw, ms[i].drs, ms[i].rows, cols, qa.codes, qa.scales, yu, nullptr));
    const std::vector<float> unfused = host(yu, static_cast<size_t>(ms[i].rows));
    cudaFree(yu);
    int64_t differ = 0;
    for (int64_t r = 0; r < ms[i].rows; ++r)
      if (std::memcmp(&got[i][r], &unfused[r], 4) != 0) ++differ;
    expect(differ == 0, tag("kStore vs unfused", cols, sh, pdl) + " matrix " + std::to_string(i) + ": " +
                            std::to_string(differ) + " of " + std::to_string(ms[i].rows) + " rows differ");
    double s = 0;
    const std::vector<double> want = reference(ms[i], x, nw, eps, &s);
    int64_t bad = 0;
    for (int64_t r = 0; r < ms[i].rows; ++r) {
      const double tol = 3.0 * ms[i].row_scale[r] / s + 1e-6 * std::fabs(want[r]) + 1e-30;
      if (!(std::fabs(got[i][r] - want[r]) <= tol)) ++bad;  // NaN (poison) fails too
    }
    expect(bad == 0, tag("kStore", cols, sh, pdl) + " matrix " + std::to_string(i) + ": " + std::to_string(bad) +
                         " of " + std::to_string(ms[i].rows) + " rows off the reference");
  }
  // kResidual: y += the same result.
  if (ms.size() == 1) {
    std::vector<float> base = randn(static_cast<size_t>(ms[0].rows));
    float* dres = dev(base);
    FusedGemvArgs r = a;
    r.mats[0].y = dres;
    r.epilogue = FusedEpilogue::kResidual;
    CK(fused_norm_gemv(r, nullptr));
    const std::vector<float> res = host(dres, static_cast<size_t>(ms[0].rows));
    int64_t bad = 0;
    for (int64_t i = 0; i < ms[0].rows; ++i) {
      const float want = base[i] + got[0][i];
      if (std::memcmp(&want, &res[i], 4) != 0) ++bad;
    }
    expect(bad == 0, tag("kResidual", cols, sh, pdl) + ": " + std::to_string(bad) + " rows differ");
    cudaFree(dres);
  }
  // kRelu2: h = relu(gate)^2 * up of two equal-shaped matrices.
  if (ms.size() == 2 && ms[0].rows == ms[1].rows && sh.groups % 2 == 0) {
    float* dh = dev_poison<float>(static_cast<size_t>(ms[0].rows));
    FusedGemvArgs r = a;
    r.mats[0].y = dh;  // kRelu2 writes h there; the up matrix's y is not written
    r.epilogue = FusedEpilogue::kRelu2;
    expect(fused_norm_gemv_ok(r), tag("kRelu2 refused", cols, sh, pdl));
    CK(fused_norm_gemv(r, nullptr));
    const std::vector<float> h = host(dh, static_cast<size_t>(ms[0].rows));
    int64_t bad = 0;
    for (int64_t i = 0; i < ms[0].rows; ++i) {
      const float g = std::max(got[0][i], 0.0f);
      const float want = (g * g) * got[1][i];
      if (std::memcmp(&want, &h[i], 4) != 0) ++bad;
    }
    expect(bad == 0, tag("kRelu2", cols, sh, pdl) + ": " + std::to_string(bad) + " rows differ");
    cudaFree(dh);
  }
  free_all(qa.codes, qa.scales, qa.sums);
  for (HostMatrix& m : ms) free_all(m.dw, m.drs);
  for (float* y : ys) cudaFree(y);
  free_all(dx, dnw);
}

}  // namespace

int main() {
  if (skip_without_device()) return 0;
  for (bool pdl : {false, true}) {
    // The 2B-4T decode shapes with the backend's block shapes.
    check({2560, 640, 640}, 2560, {4, 5}, pdl);
    check({2560}, 2560, {2, 5}, pdl);
    check({6912, 6912}, 2560, {14, 10}, pdl);
    check({2560}, 6912, {3, 6}, pdl);
    // Other shapes: odd rows, columns not a multiple of 64, one group per block, many chunks per lane.
    check({100, 37, 9}, 1000, {1, 1}, pdl);
    check({13, 13}, 68, {2, 2}, pdl);
    check({7}, 4, {3, 8}, pdl);
    check({300}, 8192, {1, 2}, pdl);
    check({2560, 2560}, 2560, {16, 10}, pdl);
    check({64, 64}, 512, {4, 1}, pdl, true);  // zero input: s = 127 / 1e-5, every output 0
  }
  // Shapes it refuses (the backend then keeps the separate kernels).
  {
    FusedGemvArgs a;
    float* p = dev_poison<float>(16);
    a.x = a.norm_w = p;
    a.count = 1;
    a.mats[0] = GemvMatrix{reinterpret_cast<const uint8_t*>(p), p, 8, p};
    a.cols = 8196;
    expect(!fused_norm_gemv_ok(a) && fused_norm_gemv(a, nullptr) == cudaErrorInvalidValue, "cols > 8192 accepted");
    a.cols = 66;
    expect(!fused_norm_gemv_ok(a), "cols not a multiple of 4 accepted");
    a.cols = 64;
    a.shape = {17, 1};
    expect(!fused_norm_gemv_ok(a), "17 groups per block accepted");
    a.shape = {3, 1};
    a.count = 2;
    a.mats[1] = a.mats[0];
    a.epilogue = FusedEpilogue::kRelu2;
    expect(!fused_norm_gemv_ok(a), "kRelu2 with an odd group count accepted");
    cudaFree(p);
  }
  CK(cudaDeviceSynchronize());
  if (failures == 0) std::printf("fused_norm_gemv: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
