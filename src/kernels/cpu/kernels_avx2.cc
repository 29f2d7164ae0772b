// AVX2 (+FMA, F16C) kernels for CPUs without AVX-512 VNNI. Bit-identical to kernels_scalar.cc; see
// kernel_table.h for the shared numeric definitions and why this file includes nothing else.
//
// Without VNNI, a 4-wide u8 x s8 dot product is vpmaddubsw (pairs to int16) + vpmaddwd with ones
// (pairs of int16 to int32). Codes are shifted down to {0,1,2}, so one vpmaddubsw pair is at most
// 2 * 2 * 128 = 512 in magnitude and the four column sub-blocks of a block can be summed in int16
// (<= 2048) before the one widening vpmaddwd.
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

inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Raw sums for the 8 rows of one half (32 bytes) of a block, against 16 activations.
inline __m256i half_block(__m256i v, __m256i m, const __m256i xb[4]) {
  const __m256i c0 = _mm256_and_si256(v, m);
  const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(v, 2), m);
  const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
  const __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(v, 6), m);
  __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(c0, xb[0]), _mm256_maddubs_epi16(c1, xb[1]));
  s = _mm256_add_epi16(s, _mm256_add_epi16(_mm256_maddubs_epi16(c2, xb[2]), _mm256_maddubs_epi16(c3, xb[3])));
  return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
}

inline void store_half(const WeightsView& w, int64_t r0, __m256i acc, int32_t qsum, float s, float* y) {
  acc = _mm256_sub_epi32(acc, _mm256_set1_epi32(qsum));
  const __m256 f = _mm256_div_ps(_mm256_load_ps(w.row_scales + r0), _mm256_set1_ps(s));
  const __m256 out = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), f);
  const int64_t rem = w.rows - r0;
  if (rem >= 8) {
    _mm256_storeu_ps(y + r0, out);
  } else if (rem > 0) {
    float tmp[8];
    _mm256_storeu_ps(tmp, out);
    for (int64_t j = 0; j < rem; ++j) y[r0 + j] = tmp[j];
  }
}

// NT activation rows against one row group (two 8-row halves).
template <int NT>
void gemm_tile(const WeightsView& w, const ActsView& x, int64_t n0, float* y, int64_t y_stride, int64_t g) {
  const __m256i m = _mm256_set1_epi8(0x03);
  const uint8_t* p = w.data + g * w.blocks * kBlockBytes;
  __m256i lo[NT], hi[NT];
  for (int t = 0; t < NT; ++t) lo[t] = hi[t] = _mm256_setzero_si256();
  const int8_t* xq = x.q + n0 * x.stride;
  for (int64_t b = 0; b < w.blocks; ++b) {
    const __m256i v0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(p + b * kBlockBytes));
    const __m256i v1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(p + b * kBlockBytes + 32));
    for (int t = 0; t < NT; ++t) {
      const int8_t* xt = xq + t * x.stride + b * kBlock;
      const __m256i xb[4] = {bcast4(xt), bcast4(xt + 4), bcast4(xt + 8), bcast4(xt + 12)};
      lo[t] = _mm256_add_epi32(lo[t], half_block(v0, m, xb));
      hi[t] = _mm256_add_epi32(hi[t], half_block(v1, m, xb));
    }
  }
  for (int t = 0; t < NT; ++t) {
    float* yt = y + (n0 + t) * y_stride;
    store_half(w, g * kGroup, lo[t], x.sum[n0 + t], x.scale[n0 + t], yt);
    store_half(w, g * kGroup + 8, hi[t], x.sum[n0 + t], x.scale[n0 + t], yt);
  }
}

constexpr int kTile = 4;

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

void ternary_gemm(const WeightsView& w, const ActsView& x, float* y, int64_t y_stride, int64_t g0, int64_t g1,
                  uint8_t* /*scratch*/) {
  for (int64_t g = g0; g < g1; ++g) {
    int64_t n0 = 0;
    for (; n0 + kTile <= x.n; n0 += kTile) gemm_tile<kTile>(w, x, n0, y, y_stride, g);
    if (n0 < x.n) gemm_tail<kTile - 1>(w, x, n0, x.n - n0, y, y_stride, g);
  }
}

// ---- float kernels ----

inline __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// 16 partial sums held as two vectors: lo = lanes 0..7, hi = lanes 8..15. The tail and the tree
// run on a spilled copy in the scalar order.
float dot(const float* a, const float* b, int64_t n) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    hi = _mm256_add_ps(hi, _mm256_mul_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8)));
  }
  float p[16];
  _mm256_storeu_ps(p, lo);
  _mm256_storeu_ps(p + 8, hi);
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
  return 1.0f / __builtin_sqrtf(mean + eps);
}

inline float act_scale(float amax) { return 127.0f / (amax < kActMaxClamp ? kActMaxClamp : amax); }

inline int8_t quantize_one(float v, float s, int32_t& sum) {
  float r = __builtin_nearbyintf(v * s);
  r = r < -128.0f ? -128.0f : r;
  r = r > 127.0f ? 127.0f : r;
  const int8_t q = static_cast<int8_t>(r);
  sum += q;
  return q;
}

// 32 floats -> 32 int8 (half to even via MXCSR, clamped), adding them to sum (8 int32 lanes).
inline void quantize32(__m256 a, __m256 b, __m256 c, __m256 d, __m256 s, int8_t* q, __m256i& sum) {
  const __m256i lo = _mm256_set1_epi32(-128), hi = _mm256_set1_epi32(127);
  auto cvt = [&](__m256 v) {
    return _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v, s)), lo), hi);
  };
  const __m256i ia = cvt(a), ib = cvt(b), ic = cvt(c), id = cvt(d);
  sum = _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_add_epi32(ia, ib), _mm256_add_epi32(ic, id)));
  // packs work per 128-bit lane: the result's dwords come out as a0 b0 c0 d0 a1 b1 c1 d1.
  const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(ia, ib), _mm256_packs_epi32(ic, id));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_permutevar8x32_epi32(packed, order));
}

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

float quantize_row(const float* x, int64_t n, int8_t* q, int32_t* sum) {
  __m256 m = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(abs_ps(_mm256_loadu_ps(x + i)), m);
  float amax = hmax(m);
  for (; i < n; ++i) {
    const float a = x[i] < 0 ? -x[i] : x[i];
    amax = amax < a ? a : amax;
  }
  const float s = act_scale(amax);
  const __m256 vs = _mm256_set1_ps(s);
  __m256i acc = _mm256_setzero_si256();
  for (i = 0; i + 32 <= n; i += 32) {
    quantize32(_mm256_loadu_ps(x + i), _mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(x + i + 16),
               _mm256_loadu_ps(x + i + 24), vs, q + i, acc);
  }
  int32_t total = hsum_epi32(acc);
  for (; i < n; ++i) q[i] = quantize_one(x[i], s, total);
  *sum = total;
  return s;
}

void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* y) {
  const float rs = rms_factor(x, n, eps);
  const __m256 r = _mm256_set1_ps(rs);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), r), _mm256_loadu_ps(w + i)));
  }
  for (; i < n; ++i) {
    const float t = x[i] * rs;
    y[i] = t * w[i];
  }
}

inline __m256 norm8(const float* x, const float* w, __m256 r) {
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x), r), _mm256_loadu_ps(w));
}

float rmsnorm_quantize_row(const float* x, const float* w, int64_t n, float eps, int8_t* q, int32_t* sum) {
  const float rs = rms_factor(x, n, eps);
  const __m256 r = _mm256_set1_ps(rs);
  __m256 m = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(abs_ps(norm8(x + i, w + i, r)), m);
  float amax = hmax(m);
  for (; i < n; ++i) {
    const float t = x[i] * rs;
    const float v = t * w[i];
    const float a = v < 0 ? -v : v;
    amax = amax < a ? a : amax;
  }
  const float s = act_scale(amax);
  const __m256 vs = _mm256_set1_ps(s);
  __m256i acc = _mm256_setzero_si256();
  for (i = 0; i + 32 <= n; i += 32) {
    quantize32(norm8(x + i, w + i, r), norm8(x + i + 8, w + i + 8, r), norm8(x + i + 16, w + i + 16, r),
               norm8(x + i + 24, w + i + 24, r), vs, q + i, acc);
  }
  int32_t total = hsum_epi32(acc);
  for (; i < n; ++i) {
    const float t = x[i] * rs;
    q[i] = quantize_one(t * w[i], s, total);
  }
  *sum = total;
  return s;
}

void relu2_mul(const float* gate, const float* up, int64_t n, float* out) {
  const __m256 zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_max_ps(zero, _mm256_loadu_ps(gate + i));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, g), _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) {
    const float g = gate[i] < 0.0f ? 0.0f : gate[i];
    const float g2 = g * g;
    out[i] = g2 * up[i];
  }
}

void axpy(float a, const float* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_mul_ps(va, _mm256_loadu_ps(x + i))));
  }
  for (; i < n; ++i) {
    const float t = a * x[i];
    y[i] = y[i] + t;
  }
}

// The attention loops over keys, written as the plain loops they must equal bit for bit.
void dot_rows(const float* q, const float* k, int64_t k_stride, int64_t n_keys, int64_t d, float* out) {
  for (int64_t j = 0; j < n_keys; ++j) out[j] = dot(q, k + j * k_stride, d);
}

void axpy_rows(const float* p, const float* v, int64_t v_stride, int64_t n_keys, int64_t d, float* out) {
  for (int64_t j = 0; j < n_keys; ++j) axpy(p[j], v + j * v_stride, out, d);
}

// Several queries against the same keys. dot_rows_multi: NQ (<= 2) queries x 2 keys, dot's two
// 8-lane halves per pair (8 accumulators), every key and query load shared; the tail and the tree
// on a spilled copy in dot's scalar order. Keys past n_keys (the last odd one) repeat that key;
// their results are not stored.
template <int NQ>
void dot_rows_multi_block(const float* const* q, const float* k, int64_t k_stride, int64_t n_keys, int64_t d,
                          float* const* out) {
  const int64_t full = d / 16 * 16;
  for (int64_t j = 0; j < n_keys; j += 2) {
    const int64_t nk = n_keys - j < 2 ? n_keys - j : 2;
    const float* kr[2] = {k + j * k_stride, k + (j + nk - 1) * k_stride};
    __m256 lo[NQ][2], hi[NQ][2];
    for (int a = 0; a < NQ; ++a)
      for (int r = 0; r < 2; ++r) lo[a][r] = hi[a][r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < full; i += 16) {
      const __m256 k0l = _mm256_loadu_ps(kr[0] + i), k0h = _mm256_loadu_ps(kr[0] + i + 8);
      const __m256 k1l = _mm256_loadu_ps(kr[1] + i), k1h = _mm256_loadu_ps(kr[1] + i + 8);
#pragma GCC unroll 2
      for (int a = 0; a < NQ; ++a) {
        const __m256 ql = _mm256_loadu_ps(q[a] + i), qh = _mm256_loadu_ps(q[a] + i + 8);
        lo[a][0] = _mm256_add_ps(lo[a][0], _mm256_mul_ps(ql, k0l));
        hi[a][0] = _mm256_add_ps(hi[a][0], _mm256_mul_ps(qh, k0h));
        lo[a][1] = _mm256_add_ps(lo[a][1], _mm256_mul_ps(ql, k1l));
        hi[a][1] = _mm256_add_ps(hi[a][1], _mm256_mul_ps(qh, k1h));
      }
    }
    for (int a = 0; a < NQ; ++a)
      for (int64_t r = 0; r < nk; ++r) {
        float p[16];
        _mm256_storeu_ps(p, lo[a][r]);
        _mm256_storeu_ps(p + 8, hi[a][r]);
        for (int t = 0; full + t < d; ++t) {
          const float prod = q[a][full + t] * kr[r][full + t];
          p[t] = p[t] + prod;
        }
        for (int width = 8; width >= 1; width /= 2) {
          for (int t = 0; t < width; ++t) p[t] = p[t] + p[t + width];
        }
        out[a][j + r] = p[0];
      }
  }
}

void dot_rows_multi(const float* const* q, int64_t n_q, const float* k, int64_t k_stride, int64_t n_keys, int64_t d,
                    float* const* out) {
  int64_t a = 0;
  for (; a + 2 <= n_q; a += 2) dot_rows_multi_block<2>(q + a, k, k_stride, n_keys, d, out + a);
  if (a < n_q) dot_rows_multi_block<1>(q + a, k, k_stride, n_keys, d, out + a);
}

// axpy_rows_multi: NQ (<= 4) outputs x 16 columns (two vectors each) in registers across all keys,
// every value load shared; per element axpy's y = y + (p * v), keys in order. Columns past the last
// multiple of 8 take axpy's scalar tail, also key by key.
template <int NQ>
void axpy_rows_multi_block(const float* const* p, const float* v, int64_t v_stride, int64_t n_keys, int64_t d,
                           float* const* out) {
  int64_t c = 0;
  for (; c + 16 <= d; c += 16) {
    __m256 o[NQ][2];
    for (int a = 0; a < NQ; ++a) {
      o[a][0] = _mm256_loadu_ps(out[a] + c);
      o[a][1] = _mm256_loadu_ps(out[a] + c + 8);
    }
    for (int64_t j = 0; j < n_keys; ++j) {
      const float* vr = v + j * v_stride + c;
      const __m256 x0 = _mm256_loadu_ps(vr), x1 = _mm256_loadu_ps(vr + 8);
#pragma GCC unroll 4
      for (int a = 0; a < NQ; ++a) {
        const __m256 pa = _mm256_set1_ps(p[a][j]);
        o[a][0] = _mm256_add_ps(o[a][0], _mm256_mul_ps(pa, x0));
        o[a][1] = _mm256_add_ps(o[a][1], _mm256_mul_ps(pa, x1));
      }
    }
    for (int a = 0; a < NQ; ++a) {
      _mm256_storeu_ps(out[a] + c, o[a][0]);
      _mm256_storeu_ps(out[a] + c + 8, o[a][1]);
    }
  }
  if (c + 8 <= d) {
    __m256 o[NQ];
    for (int a = 0; a < NQ; ++a) o[a] = _mm256_loadu_ps(out[a] + c);
    for (int64_t j = 0; j < n_keys; ++j) {
      const __m256 x = _mm256_loadu_ps(v + j * v_stride + c);
      for (int a = 0; a < NQ; ++a) o[a] = _mm256_add_ps(o[a], _mm256_mul_ps(_mm256_set1_ps(p[a][j]), x));
    }
    for (int a = 0; a < NQ; ++a) _mm256_storeu_ps(out[a] + c, o[a]);
    c += 8;
  }
  for (int a = 0; a < NQ; ++a)
    for (int64_t j = 0; j < n_keys; ++j)
      for (int64_t i = c; i < d; ++i) {
        const float t = p[a][j] * v[j * v_stride + i];
        out[a][i] = out[a][i] + t;
      }
}

void axpy_rows_multi(const float* const* p, int64_t n_q, const float* v, int64_t v_stride, int64_t n_keys, int64_t d,
                     float* const* out) {
  int64_t a = 0;
  for (; a + 4 <= n_q; a += 4) axpy_rows_multi_block<4>(p + a, v, v_stride, n_keys, d, out + a);
  switch (n_q - a) {
    case 3: axpy_rows_multi_block<3>(p + a, v, v_stride, n_keys, d, out + a); break;
    case 2: axpy_rows_multi_block<2>(p + a, v, v_stride, n_keys, d, out + a); break;
    case 1: axpy_rows_multi_block<1>(p + a, v, v_stride, n_keys, d, out + a); break;
    default: break;
  }
}

// ---- KV cache rows to fp32 (the layouts of cpu_kernels.h) ----

inline float load_f32(const uint8_t* p) {
  float v;
  __builtin_memcpy(&v, p, 4);
  return v;
}

void rows_f16_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, float* out) {
  for (int64_t j = 0; j < n_rows; ++j) {
    const uint8_t* row = rows + j * row_bytes;
    float* o = out + j * d;
    int64_t i = 0;
    for (; i + 8 <= d; i += 8)
      _mm256_storeu_ps(o + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i))));
    for (; i < d; ++i) {
      uint16_t h;
      __builtin_memcpy(&h, row + 2 * i, 2);
      o[i] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
    }
  }
}

void rows_q8_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, float* out) {
  const int64_t so = kv_q8_scale_offset(d);
  for (int64_t j = 0; j < n_rows; ++j) {
    const uint8_t* row = rows + j * row_bytes;
    float* o = out + j * d;
    const float sc = load_f32(row + so);
    const __m256 s = _mm256_set1_ps(sc);
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + i));
      _mm256_storeu_ps(o + i, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b))));
    }
    for (; i < d; ++i) o[i] = sc * static_cast<float>(static_cast<int8_t>(row[i]));
  }
}

// 8 bytes = 16 values: the low nibbles are values 0..7, the high ones 8..15, each code + 8.
void rows_q4_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, int64_t group, float* out) {
  const __m128i mask = _mm_set1_epi8(0x0f);
  const __m256i eight = _mm256_set1_epi32(8);
  for (int64_t j = 0; j < n_rows; ++j) {
    const uint8_t* row = rows + j * row_bytes;
    float* o = out + j * d;
    for (int64_t i = 0; i < d; i += 16) {
      const __m256 s = _mm256_set1_ps(load_f32(row + d / 2 + 4 * (i / group)));
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + i / 2));
      const __m256i lo = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_and_si128(b, mask)), eight);
      const __m256i hi = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), mask)), eight);
      _mm256_storeu_ps(o + i, _mm256_mul_ps(s, _mm256_cvtepi32_ps(lo)));
      _mm256_storeu_ps(o + i + 8, _mm256_mul_ps(s, _mm256_cvtepi32_ps(hi)));
    }
  }
}

// Stages h = 1, 2, 4 inside each 8-lane vector: lane j takes its partner j ^ h; lanes with bit h
// clear keep a + b (self + partner), the others a - b (partner - self): the scalar operations.
void hadamard(float* x, int64_t d, float scale) {
  if (d < 8) return hadamard_plain(x, d, scale);
  const __m256i p1 = _mm256_setr_epi32(1, 0, 3, 2, 5, 4, 7, 6), p2 = _mm256_setr_epi32(2, 3, 0, 1, 6, 7, 4, 5);
  const __m256i p4 = _mm256_setr_epi32(4, 5, 6, 7, 0, 1, 2, 3);
  for (int64_t i = 0; i < d; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    __m256 p = _mm256_permutevar8x32_ps(v, p1);
    v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xAA);
    p = _mm256_permutevar8x32_ps(v, p2);
    v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xCC);
    p = _mm256_permutevar8x32_ps(v, p4);
    v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xF0);
    _mm256_storeu_ps(x + i, v);
  }
  for (int64_t h = 8; h < d; h *= 2)
    for (int64_t i = 0; i < d; i += 2 * h)
      for (int64_t j = i; j < i + h; j += 8) {
        const __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + h);
        _mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
        _mm256_storeu_ps(x + j + h, _mm256_sub_ps(a, b));
      }
  const __m256 s = _mm256_set1_ps(scale);
  for (int64_t i = 0; i < d; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), s));
}

// softmax_exp (kernel_table.h) on 8 lanes, step for step.
inline __m256 softmax_exp8(__m256 x) {
  const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  const __m256 low = _mm256_cmp_ps(x, _mm256_set1_ps(kExpMin), _CMP_LT_OQ);
  const __m256 xc = _mm256_min_ps(x, _mm256_set1_ps(kExpMax));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(kExpLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(kExpLn2Hi)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(kExpLn2Lo)));
  const __m256 z = _mm256_mul_ps(r, r);
  __m256 y = _mm256_set1_ps(kExpPoly[0]);
  for (int k = 1; k < 6; ++k) y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(kExpPoly[k]));
  y = _mm256_add_ps(_mm256_mul_ps(y, z), r);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 out = _mm256_andnot_ps(low, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
  return _mm256_blendv_ps(out, x, nan);
}

// The 16 partial sums as two vectors (lanes 0..7, 8..15) over whole 16-score chunks; the tail and
// the tree on a spilled copy in the scalar order.
void softmax(float* s, int64_t n, float scale) {
  const __m256 vs = _mm256_set1_ps(scale);
  __m256 vm = _mm256_set1_ps(-__builtin_inff());
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(s + i), vs);
    _mm256_storeu_ps(s + i, x);
    vm = _mm256_max_ps(x, vm);  // a NaN score is passed over, as in the scalar loop
  }
  float mx = hmax(vm);
  for (; i < n; ++i) {
    s[i] = s[i] * scale;
    mx = s[i] > mx ? s[i] : mx;
  }
  const __m256 m = _mm256_set1_ps(mx);
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  for (i = 0; i + 16 <= n; i += 16) {
    const __m256 a = softmax_exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), m));
    const __m256 b = softmax_exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i + 8), m));
    _mm256_storeu_ps(s + i, a);
    _mm256_storeu_ps(s + i + 8, b);
    lo = _mm256_add_ps(lo, a);
    hi = _mm256_add_ps(hi, b);
  }
  float p[16];
  _mm256_storeu_ps(p, lo);
  _mm256_storeu_ps(p + 8, hi);
  for (int j = 0; i + j < n; ++j) {
    s[i + j] = softmax_exp(s[i + j] - mx);
    p[j] = p[j] + s[i + j];
  }
  for (int width = 8; width >= 1; width /= 2)
    for (int j = 0; j < width; ++j) p[j] = p[j] + p[j + width];
  const __m256 sum = _mm256_set1_ps(p[0]);
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(s + i, _mm256_div_ps(_mm256_loadu_ps(s + i), sum));
  for (; i < n; ++i) s[i] = s[i] / p[0];
}

}  // namespace

const KernelTable kAvx2Kernels = {
    ternary_gemm, quantize_row, rmsnorm, rmsnorm_quantize_row, relu2_mul, dot, axpy, dot_rows, axpy_rows,
    rows_f16_to_f32, rows_q8_to_f32, rows_q4_to_f32, hadamard, softmax, dot_rows_multi, axpy_rows_multi,
};

}  // namespace onebit::cpu::detail
