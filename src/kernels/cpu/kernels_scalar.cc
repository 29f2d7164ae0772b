// Scalar reference kernels: plain loops, obviously correct, the specification the SIMD versions
// must match bit for bit (see the numeric definitions in kernel_table.h). Also the fallback on
// CPUs without AVX2.
// Products and sums must round separately, exactly as the reference does: no FMA contraction.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/base/half.h"
#include "kernels/cpu/kernel_table.h"

namespace onebit::cpu::detail {
namespace {

constexpr int64_t kGroup = 16, kBlock = 16, kBlockBytes = 64;

// The weight at (r, c), decoded from the layout documented in packed_ternary.h.
int weight_at(const WeightsView& w, int64_t r, int64_t c) {
  const int64_t g = r / kGroup, j = r % kGroup, b = c / kBlock, cc = c % kBlock;
  const uint8_t byte = w.data[(g * w.blocks + b) * kBlockBytes + 4 * j + cc % 4];
  return ((byte >> (2 * (cc / 4))) & 3) - 1;
}

void ternary_gemm(const WeightsView& w, const ActsView& x, float* y, int64_t y_stride, int64_t g0, int64_t g1,
                  uint8_t* /*scratch*/) {
  const int64_t r_end = std::min(g1 * kGroup, w.rows);
  for (int64_t n = 0; n < x.n; ++n) {
    const int8_t* q = x.q + n * x.stride;
    for (int64_t r = g0 * kGroup; r < r_end; ++r) {
      int32_t acc = 0;
      for (int64_t c = 0; c < w.cols; ++c) acc += weight_at(w, r, c) * q[c];
      y[n * y_stride + r] = static_cast<float>(acc) * (w.row_scales[r] / x.scale[n]);
    }
  }
}

float quantize_row(const float* x, int64_t n, int8_t* q, int32_t* sum) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float s = 127.0f / std::max(amax, kActMaxClamp);
  int32_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    float v = std::nearbyint(x[i] * s);  // default rounding mode: half to even, like torch.round
    v = std::min(std::max(v, -128.0f), 127.0f);
    q[i] = static_cast<int8_t>(v);
    total += q[i];
  }
  *sum = total;
  return s;
}

// The canonical 16-lane reduction of sum(a[i] * b[i]).
float dot(const float* a, const float* b, int64_t n) {
  float p[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int j = 0; j < 16; ++j) {
      const float prod = a[i + j] * b[i + j];
      p[j] = p[j] + prod;
    }
  }
  for (int j = 0; i + j < n; ++j) {
    const float prod = a[i + j] * b[i + j];
    p[j] = p[j] + prod;
  }
  for (int width = 8; width >= 1; width /= 2) {
    for (int j = 0; j < width; ++j) p[j] = p[j] + p[j + width];
  }
  return p[0];
}

float rms_factor(const float* x, int64_t n, float eps) {
  const float mean = dot(x, x, n) / static_cast<float>(n);
  return 1.0f / std::sqrt(mean + eps);
}

void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* y) {
  const float r = rms_factor(x, n, eps);
  for (int64_t i = 0; i < n; ++i) {
    const float t = x[i] * r;
    y[i] = t * w[i];
  }
}

float rmsnorm_quantize_row(const float* x, const float* w, int64_t n, float eps, int8_t* q, int32_t* sum) {
  const float r = rms_factor(x, n, eps);
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float t = x[i] * r;
    amax = std::max(amax, std::fabs(t * w[i]));
  }
  const float s = 127.0f / std::max(amax, kActMaxClamp);
  int32_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float t = x[i] * r;
    float v = std::nearbyint((t * w[i]) * s);
    v = std::min(std::max(v, -128.0f), 127.0f);
    q[i] = static_cast<int8_t>(v);
    total += q[i];
  }
  *sum = total;
  return s;
}

void relu2_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = std::max(gate[i], 0.0f);
    const float g2 = g * g;
    out[i] = g2 * up[i];
  }
}

void axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float t = a * x[i];
    y[i] = y[i] + t;
  }
}

// The attention loops over keys, written as the plain loops they must equal bit for bit.
void dot_rows(const float* q, const float* k, int64_t k_stride, int64_t n_keys, int64_t d, float* out) {
  for (int64_t j = 0; j < n_keys; ++j) out[j] = dot(q, k + j * k_stride, d);
}

// noinline: inlined into axpy_rows_multi below, the same loop ran at half the speed on the Zen 4
// dev machine (bench_attention with ONEBIT_CPU_ISA=scalar: 1.8 vs 3.5 multiply-adds per ns; the
// instructions were identical, only their placement differed).
__attribute__((noinline)) void axpy_rows(const float* p, const float* v, int64_t v_stride, int64_t n_keys, int64_t d,
                                         float* out) {
  for (int64_t j = 0; j < n_keys; ++j) axpy(p[j], v + j * v_stride, out, d);
}

// Several queries against the same keys: the single-query loops, one query after the other.
void dot_rows_multi(const float* const* q, int64_t n_q, const float* k, int64_t k_stride, int64_t n_keys, int64_t d,
                    float* const* out) {
  for (int64_t a = 0; a < n_q; ++a) dot_rows(q[a], k, k_stride, n_keys, d, out[a]);
}

void axpy_rows_multi(const float* const* p, int64_t n_q, const float* v, int64_t v_stride, int64_t n_keys, int64_t d,
                     float* const* out) {
  for (int64_t a = 0; a < n_q; ++a) axpy_rows(p[a], v, v_stride, n_keys, d, out[a]);
}

// ---- KV cache rows to fp32 (the layouts of cpu_kernels.h) ----

inline float load_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

void rows_f16_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, float* out) {
  for (int64_t j = 0; j < n_rows; ++j)
    for (int64_t i = 0; i < d; ++i) {
      uint16_t h;
      std::memcpy(&h, rows + j * row_bytes + 2 * i, 2);
      out[j * d + i] = f16_to_f32(h);
    }
}

void rows_q8_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, float* out) {
  for (int64_t j = 0; j < n_rows; ++j) {
    const uint8_t* row = rows + j * row_bytes;
    const float s = load_f32(row + kv_q8_scale_offset(d));
    for (int64_t i = 0; i < d; ++i) out[j * d + i] = s * static_cast<float>(static_cast<int8_t>(row[i]));
  }
}

// Chunk c (values 16c .. 16c + 15) is 8 bytes; byte m holds value m (low nibble) and m + 8 (high
// nibble) of the chunk, each as code + 8.
void rows_q4_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, int64_t group, float* out) {
  for (int64_t j = 0; j < n_rows; ++j) {
    const uint8_t* row = rows + j * row_bytes;
    for (int64_t i = 0; i < d; ++i) {
      const int64_t m = i % 16;
      const int code = ((row[i / 16 * 8 + m % 8] >> (m < 8 ? 0 : 4)) & 15) - 8;
      out[j * d + i] = load_f32(row + d / 2 + 4 * (i / group)) * static_cast<float>(code);
    }
  }
}

void hadamard(float* x, int64_t d, float scale) { hadamard_plain(x, d, scale); }

void softmax(float* s, int64_t n, float scale) { softmax_plain(s, n, scale); }

}  // namespace

const KernelTable kScalarKernels = {
    ternary_gemm, quantize_row, rmsnorm, rmsnorm_quantize_row, relu2_mul, dot, axpy, dot_rows, axpy_rows,
    rows_f16_to_f32, rows_q8_to_f32, rows_q4_to_f32, hadamard, softmax, dot_rows_multi, axpy_rows_multi,
};

}  // namespace onebit::cpu::detail
