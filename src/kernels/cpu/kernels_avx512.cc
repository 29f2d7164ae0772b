// AVX-512 (F, BW, VL, DQ, VNNI) kernels. Bit-identical to kernels_scalar.cc; see kernel_table.h for
// the shared numeric definitions and why this file includes nothing else.
// GCC 12's avx512fintrin.h builds some intrinsics on _mm512_undefined_*(), which -Wall flags as
// "used uninitialized" once inlined (a GCC header bug); silence that for this file only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// Products and sums must round separately, exactly as the reference does: no FMA contraction.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <immintrin.h>

#include "kernels/cpu/kernel_table.h"

namespace onebit::cpu::detail {
namespace {

constexpr int64_t kGroup = 16, kBlock = 16, kBlockBytes = 64;

// Four int8 activations broadcast to all 16 lanes; the compiler folds this into vpdpbusd's
// {1to16} memory operand.
inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

inline __mmask16 tail_mask(int64_t rem) {
  return rem >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << rem) - 1);
}

// acc (raw sums of (w+1) x for the 16 rows of group g) -> y for those rows.
inline void store_rows(const WeightsView& w, int64_t g, __m512i acc, int32_t qsum, float s, float* y) {
  acc = _mm512_sub_epi32(acc, _mm512_set1_epi32(qsum));
  const __m512 f = _mm512_div_ps(_mm512_load_ps(w.row_scales + g * kGroup), _mm512_set1_ps(s));
  const __m512 out = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), f);
  _mm512_mask_storeu_ps(y + g * kGroup, tail_mask(w.rows - g * kGroup), out);
}

// Decode: one activation row. Instead of shifting each 2-bit field down, the four fields are only
// masked in place (x1, x4, x16, x64) and kept in four accumulators, rescaled exactly at the end by
// arithmetic shifts: 4 ANDs + 4 vpdpbusd per 64-byte block. |acc3| <= 128*128*4 per block, so
// int32 cannot overflow below 2^31 / 65536 blocks (repack_for_cpu limits cols to 2^19).
void gemv(const WeightsView& w, const int8_t* q, float s, int32_t qsum, float* y, int64_t g0, int64_t g1) {
  const __m512i m0 = _mm512_set1_epi8(0x03), m1 = _mm512_set1_epi8(0x0c);
  const __m512i m2 = _mm512_set1_epi8(0x30), m3 = _mm512_set1_epi8(static_cast<char>(0xc0));
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* p = w.data + g * w.blocks * kBlockBytes;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    __m512i b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int64_t b = 0;
    for (; b + 2 <= w.blocks; b += 2) {
      const __m512i v = _mm512_load_si512(p + b * kBlockBytes);
      const __m512i u = _mm512_load_si512(p + (b + 1) * kBlockBytes);
      const int8_t* x = q + b * kBlock;
      a0 = _mm512_dpbusd_epi32(a0, _mm512_and_si512(v, m0), bcast4(x + 0));
      a1 = _mm512_dpbusd_epi32(a1, _mm512_and_si512(v, m1), bcast4(x + 4));
      a2 = _mm512_dpbusd_epi32(a2, _mm512_and_si512(v, m2), bcast4(x + 8));
      a3 = _mm512_dpbusd_epi32(a3, _mm512_and_si512(v, m3), bcast4(x + 12));
      b0 = _mm512_dpbusd_epi32(b0, _mm512_and_si512(u, m0), bcast4(x + 16));
      b1 = _mm512_dpbusd_epi32(b1, _mm512_and_si512(u, m1), bcast4(x + 20));
      b2 = _mm512_dpbusd_epi32(b2, _mm512_and_si512(u, m2), bcast4(x + 24));
      b3 = _mm512_dpbusd_epi32(b3, _mm512_and_si512(u, m3), bcast4(x + 28));
    }
    if (b < w.blocks) {
      const __m512i v = _mm512_load_si512(p + b * kBlockBytes);
      const int8_t* x = q + b * kBlock;
      a0 = _mm512_dpbusd_epi32(a0, _mm512_and_si512(v, m0), bcast4(x + 0));
      a1 = _mm512_dpbusd_epi32(a1, _mm512_and_si512(v, m1), bcast4(x + 4));
      a2 = _mm512_dpbusd_epi32(a2, _mm512_and_si512(v, m2), bcast4(x + 8));
      a3 = _mm512_dpbusd_epi32(a3, _mm512_and_si512(v, m3), bcast4(x + 12));
    }
    a0 = _mm512_add_epi32(a0, b0);
    a1 = _mm512_add_epi32(a1, b1);
    a2 = _mm512_add_epi32(a2, b2);
    a3 = _mm512_add_epi32(a3, b3);
    __m512i acc = _mm512_add_epi32(a0, _mm512_srai_epi32(a1, 2));
    acc = _mm512_add_epi32(acc, _mm512_srai_epi32(a2, 4));
    acc = _mm512_add_epi32(acc, _mm512_srai_epi32(a3, 6));
    store_rows(w, g, acc, qsum, s, y);
  }
}

// NT activation rows against one row group: the group's weights (<= 27 KB for BitNet shapes) are
// unpacked once per block and reused for NT rows from L1/L2.
template <int NT>
void gemm_tile(const WeightsView& w, const ActsView& x, int64_t n0, float* y, int64_t y_stride, int64_t g) {
  const __m512i m = _mm512_set1_epi8(0x03);
  const uint8_t* p = w.data + g * w.blocks * kBlockBytes;
  __m512i acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_si512();
  const int8_t* xq = x.q + n0 * x.stride;
  for (int64_t b = 0; b < w.blocks; ++b) {
    const __m512i v = _mm512_load_si512(p + b * kBlockBytes);
    const __m512i c0 = _mm512_and_si512(v, m);
    const __m512i c1 = _mm512_and_si512(_mm512_srli_epi16(v, 2), m);
    const __m512i c2 = _mm512_and_si512(_mm512_srli_epi16(v, 4), m);
    const __m512i c3 = _mm512_and_si512(_mm512_srli_epi16(v, 6), m);
    for (int t = 0; t < NT; ++t) {
      const int8_t* xt = xq + t * x.stride + b * kBlock;
      acc[t] = _mm512_dpbusd_epi32(acc[t], c0, bcast4(xt + 0));
      acc[t] = _mm512_dpbusd_epi32(acc[t], c1, bcast4(xt + 4));
      acc[t] = _mm512_dpbusd_epi32(acc[t], c2, bcast4(xt + 8));
      acc[t] = _mm512_dpbusd_epi32(acc[t], c3, bcast4(xt + 12));
    }
  }
  for (int t = 0; t < NT; ++t) {
    store_rows(w, g, acc[t], x.sum[n0 + t], x.scale[n0 + t], y + (n0 + t) * y_stride);
  }
}

constexpr int kTile = 8;

template <int NT>
void gemm_tail(const WeightsView& w, const ActsView& x, int64_t n0, int64_t rem, float* y, int64_t ys, int64_t g) {
  if constexpr (NT > 0) {
    if (rem == NT) {
      gemm_tile<NT>(w, x, n0, y, ys, g);
    } else {
      gemm_tail<NT - 1>(w, x, n0, rem, y, ys, g);
    }
  }
}

void ternary_gemm(const WeightsView& w, const ActsView& x, float* y, int64_t y_stride, int64_t g0, int64_t g1) {
  if (x.n == 1) {
    gemv(w, x.q, x.scale[0], x.sum[0], y, g0, g1);
    return;
  }
  for (int64_t g = g0; g < g1; ++g) {
    int64_t n0 = 0;
    for (; n0 + kTile <= x.n; n0 += kTile) gemm_tile<kTile>(w, x, n0, y, y_stride, g);
    if (n0 < x.n) gemm_tail<kTile - 1>(w, x, n0, x.n - n0, y, y_stride, g);
  }
}

// ---- float kernels ----

inline __m512 abs_ps(__m512 v) { return _mm512_abs_ps(v); }

inline float hmax(__m512 v) { return _mm512_reduce_max_ps(v); }

// The canonical tree of kernel_table.h over 16 partial sums.
inline float tree_sum(__m512 p) {
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(p), _mm512_extractf32x8_ps(p, 1));
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

float dot(const float* a, const float* b, int64_t n) {
  __m512 p = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) p = _mm512_add_ps(p, _mm512_mul_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)));
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 prod = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i));
    p = _mm512_mask_add_ps(p, k, p, prod);
  }
  return tree_sum(p);
}

float rms_factor(const float* x, int64_t n, float eps) {
  const float mean = dot(x, x, n) / static_cast<float>(n);
  return 1.0f / __builtin_sqrtf(mean + eps);
}

inline float act_scale(float amax) { return 127.0f / (amax < kActMaxClamp ? kActMaxClamp : amax); }

// Rounds v*s half to even (MXCSR default), clamps to int8, stores the lanes in k, adds them to sum.
inline void quantize_store(__m512 v, __m512 s, __mmask16 k, int8_t* q, __m512i& sum) {
  __m512i iv = _mm512_cvtps_epi32(_mm512_mul_ps(v, s));
  iv = _mm512_min_epi32(_mm512_max_epi32(iv, _mm512_set1_epi32(-128)), _mm512_set1_epi32(127));
  sum = _mm512_mask_add_epi32(sum, k, sum, iv);
  _mm512_mask_cvtepi32_storeu_epi8(q, k, iv);
}

float quantize_row(const float* x, int64_t n, int8_t* q, int32_t* sum) {
  __m512 m = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) m = _mm512_max_ps(abs_ps(_mm512_loadu_ps(x + i)), m);
  if (i < n) m = _mm512_max_ps(abs_ps(_mm512_maskz_loadu_ps(tail_mask(n - i), x + i)), m);
  const float s = act_scale(hmax(m));
  const __m512 vs = _mm512_set1_ps(s);
  __m512i acc = _mm512_setzero_si512();
  for (i = 0; i + 16 <= n; i += 16) quantize_store(_mm512_loadu_ps(x + i), vs, 0xffff, q + i, acc);
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    quantize_store(_mm512_maskz_loadu_ps(k, x + i), vs, k, q + i, acc);
  }
  *sum = _mm512_reduce_add_epi32(acc);
  return s;
}

void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* y) {
  const __m512 r = _mm512_set1_ps(rms_factor(x, n, eps));
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), r), _mm512_loadu_ps(w + i)));
  }
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), r);
    _mm512_mask_storeu_ps(y + i, k, _mm512_mul_ps(t, _mm512_maskz_loadu_ps(k, w + i)));
  }
}

float rmsnorm_quantize_row(const float* x, const float* w, int64_t n, float eps, int8_t* q, int32_t* sum) {
  const __m512 r = _mm512_set1_ps(rms_factor(x, n, eps));
  __m512 m = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), r), _mm512_loadu_ps(w + i));
    m = _mm512_max_ps(abs_ps(v), m);
  }
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), r), _mm512_maskz_loadu_ps(k, w + i));
    m = _mm512_max_ps(abs_ps(v), m);
  }
  const float s = act_scale(hmax(m));
  const __m512 vs = _mm512_set1_ps(s);
  __m512i acc = _mm512_setzero_si512();
  for (i = 0; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), r), _mm512_loadu_ps(w + i));
    quantize_store(v, vs, 0xffff, q + i, acc);
  }
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), r), _mm512_maskz_loadu_ps(k, w + i));
    quantize_store(v, vs, k, q + i, acc);
  }
  *sum = _mm512_reduce_add_epi32(acc);
  return s;
}

inline __m512 relu2_mul16(__m512 g, __m512 u) {
  g = _mm512_max_ps(_mm512_setzero_ps(), g);  // operand order as std::max(g, 0): NaN g stays NaN
  return _mm512_mul_ps(_mm512_mul_ps(g, g), u);
}

void relu2_mul(const float* gate, const float* up, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, relu2_mul16(_mm512_loadu_ps(gate + i), _mm512_loadu_ps(up + i)));
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    _mm512_mask_storeu_ps(out + i, k, relu2_mul16(_mm512_maskz_loadu_ps(k, gate + i), _mm512_maskz_loadu_ps(k, up + i)));
  }
}

void axpy(float a, const float* x, float* y, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(y + i), _mm512_mul_ps(va, _mm512_loadu_ps(x + i))));
  }
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 t = _mm512_mul_ps(va, _mm512_maskz_loadu_ps(k, x + i));
    _mm512_mask_storeu_ps(y + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, y + i), t));
  }
}

}  // namespace

const KernelTable kAvx512Kernels = {
    ternary_gemm, quantize_row, rmsnorm, rmsnorm_quantize_row, relu2_mul, dot, axpy,
};

}  // namespace onebit::cpu::detail
