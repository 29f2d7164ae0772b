// Internal: the table of single-threaded kernel entry points each ISA file provides.
//
// The *_avx2.cc / *_avx512.cc files are compiled with ISA flags. To keep instructions of those ISAs
// out of code a plain CPU may run, they include nothing but this header and <immintrin.h>: no
// standard-library or project inline functions, whose one merged copy could come from an ISA file
// (ODR). Hence plain structs and raw pointers here.
#pragma once

#include <cstdint>

namespace onebit::cpu::detail {

// A PackedTernary seen by the kernels (see packed_ternary.h for the layout).
struct WeightsView {
  const uint8_t* data;
  const float* row_scales;  // row_groups * 16 entries
  int64_t rows, cols, row_groups, blocks;
};

// Quantized activations: `n` rows of int8, row i at q + i * stride, zero-padded to the weights'
// padded column count; per row the scale s (127 / absmax) and the sum of its codes.
struct ActsView {
  const int8_t* q;
  int64_t stride;
  const float* scale;
  const int32_t* sum;
  int64_t n;
  bool lut = true;  // the AVX-512 GEMM may use its lookup-table share (cpu_kernels.cc: ONEBIT_GEMM_LUT)
};

// Many-token GEMM tiling (AVX-512): a tile is kGemmTileGroups row groups (64 rows) whose 2-bit
// weights are unpacked once into per-thread scratch (kGemmScratchPerBlock bytes per 64-byte block
// per row group) and then reused for every token row. ternary_gemm callers pass `scratch` of at
// least gemm_scratch_bytes(w, g1 - g0, x.lut ? x.n : 0) bytes, 64-byte aligned, whenever x.n > 1.
inline constexpr int64_t kGemmTileGroups = 4;
inline constexpr int64_t kGemmScratchPerBlock = 256;

// The AVX-512 GEMM's lookup-table share (docs/kernels-cpu.md, "VNNI + lookup tables"): for a call
// with n >= kGemmLutMinRows token rows, the last 3 * gemm_lut_spans(blocks, n) column blocks of
// every row are summed through int16 tables of kGemmLutLanes token rows each, beside the VNNI
// tiles (4 row groups x 6 token rows) that do the other columns. Three table units (1 row x 8
// groups of 3 columns) run beside every two VNNI steps, so the split balances
//   units = nb * 2 * spans * R  =  1.5 * steps = 1.5 * ft * (R / 64) * 4 * (blocks - 3 * spans)
// (nb = ceil(n / 32) table blocks, ft = ceil(n / 6) token tiles, the last one zero-padded, R rows), i.e.
//   spans = 3 * ft * blocks / (64 * nb + 9 * ft).
inline constexpr int64_t kGemmLutMinRows = 32;
inline constexpr int64_t kGemmLutLanes = 32;
inline constexpr int64_t kGemmLutPassGroups = 16;  // rows of one table pass: 256
inline int64_t gemm_lut_spans(int64_t blocks, int64_t n) {
  if (n < kGemmLutMinRows) return 0;
  const int64_t nb = (n + kGemmLutLanes - 1) / kGemmLutLanes, ft = (n + 5) / 6;
  const int64_t spans = 3 * ft * blocks / (64 * nb + 9 * ft);
  return 3 * spans < blocks ? spans : (blocks - 1) / 3;  // keep >= 1 VNNI block
}
// From 2 * kGemmTokenChunkMin token rows on, ternary_gemm splits the token rows (not the weight
// rows) into chunks of kGemmTokenChunkMin..kGemmTokenChunkMax rows, each with its own tables.
inline constexpr int64_t kGemmTokenChunkMin = 64, kGemmTokenChunkMax = 128;

inline int64_t round64(int64_t n) { return (n + 63) / 64 * 64; }

// Scratch for ternary_gemm over row groups [g0, g0 + groups) and n token rows (0: no table share),
// in bytes (see gemm_hybrid in kernels_avx512.cc for the parts, in this order).
inline int64_t gemm_scratch_bytes(const WeightsView& w, int64_t groups, int64_t n) {
  const int64_t spans = gemm_lut_spans(w.blocks, n);
  if (spans == 0) return round64(kGemmTileGroups * w.blocks * kGemmScratchPerBlock);
  const int64_t chunks = 2 * spans, lb0 = w.blocks - 3 * spans, nb = (n + kGemmLutLanes - 1) / kGemmLutLanes;
  const int64_t r = (groups < kGemmLutPassGroups ? groups : kGemmLutPassGroups) * 16;
  return round64(kGemmTileGroups * lb0 * kGemmScratchPerBlock) + nb * chunks * 13824 + spans * 48 * 64 +
         round64(4 * n) + round64(chunks * r * 8) + r * 64 + nb * r * 128 + 32 * r * 4 + (n + 5) / 6 * 6 * r * 4 +
         6 * round64(lb0 * 16);
}

struct KernelTable {
  // y[n * y_stride + r] for all n and rows r of row groups [g0, g1). n == 1 is the decode GEMV.
  // `scratch`: see gemm_scratch_bytes (unused by the scalar and AVX2 versions and for n == 1).
  void (*ternary_gemm)(const WeightsView& w, const ActsView& x, float* y, int64_t y_stride, int64_t g0,
                       int64_t g1, uint8_t* scratch);
  // Quantizes n floats to q[0..n) (no padding written); returns s, stores sum(q) in *sum.
  float (*quantize_row)(const float* x, int64_t n, int8_t* q, int32_t* sum);
  void (*rmsnorm)(const float* x, const float* w, int64_t n, float eps, float* y);
  // == rmsnorm into a temporary then quantize_row, bit for bit, without the temporary.
  float (*rmsnorm_quantize_row)(const float* x, const float* w, int64_t n, float eps, int8_t* q, int32_t* sum);
  void (*relu2_mul)(const float* gate, const float* up, int64_t n, float* out);
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float a, const float* x, float* y, int64_t n);
  // out[j] = dot(q, k + j * k_stride, d) for j < n_keys: bit-identical to calling dot per key.
  void (*dot_rows)(const float* q, const float* k, int64_t k_stride, int64_t n_keys, int64_t d, float* out);
  // for j = 0 .. n_keys-1 in order: axpy(p[j], v + j * v_stride, out, d): bit-identical to that loop.
  void (*axpy_rows)(const float* p, const float* v, int64_t v_stride, int64_t n_keys, int64_t d, float* out);
  // KV cache rows (layouts in cpu_kernels.h; row j at rows + j * row_bytes) to fp32, out[j * d + i]:
  // f16 exactly; q8 and q4 as x_i = scale * code_i (one fp32 multiplication).
  void (*rows_f16_to_f32)(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, float* out);
  void (*rows_q8_to_f32)(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, float* out);
  // d % 16 == 0, `group` (values per scale) a multiple of 16 dividing d.
  void (*rows_q4_to_f32)(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, int64_t group, float* out);
  // In place, d a power of two: stages h = 1, 2, 4, .., d/2 of butterflies (x[j], x[j + h]) ->
  // (x[j] + x[j + h], x[j] - x[j + h]) for every j with bit h clear, then x[i] * scale.
  void (*hadamard)(float* x, int64_t d, float scale);
  // Attention's softmax over n scores, in place: s[j] * scale, the max m, e_j = softmax_exp(s_j - m),
  // their sum in the canonical 16-lane order (dot's), then s[j] = e_j / sum.
  void (*softmax)(float* s, int64_t n, float scale);
  // n_q queries against the same keys: out[a][j] = dot(q[a], k + j * k_stride, d), i.e. dot_rows
  // for each a, bit for bit (the SIMD versions load each key once for a block of queries).
  void (*dot_rows_multi)(const float* const* q, int64_t n_q, const float* k, int64_t k_stride, int64_t n_keys,
                         int64_t d, float* const* out);
  // axpy_rows(p[a], v, v_stride, n_keys, d, out[a]) for each a < n_q, bit for bit; the out[a] must
  // not overlap each other or v.
  void (*axpy_rows_multi)(const float* const* p, int64_t n_q, const float* v, int64_t v_stride, int64_t n_keys,
                          int64_t d, float* const* out);
};

// e^x for the softmax (whose arguments are <= 0), one fp32 operation a step so that the SIMD
// kernels, which take the same steps lane by lane, give the same bits: n = rint(x log2 e),
// r = (x - n c1) - n c2 with c1 + c2 = ln 2 (c1 has 9 significant bits, so n c1 is exact),
// e^r = 1 + r + r^2 P(r) with P of degree 5 (the minimax coefficients of the classic single-
// precision exp), times 2^n put together from its exponent bits. Within 2 ulp of e^x; 0 below
// kExpMin (where 2^n would not be a normal number), NaN stays NaN.
inline constexpr float kExpMin = -87.33f;
inline constexpr float kExpMax = 88.0f;
inline constexpr float kExpLog2e = 1.44269504088896341f;
inline constexpr float kExpLn2Hi = 0.693359375f;
inline constexpr float kExpLn2Lo = -2.12194440e-4f;
inline constexpr float kExpPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                      4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
static inline float softmax_exp(float x) {
  if (x != x) return x;
  if (x < kExpMin) return 0.0f;
  if (x > kExpMax) x = kExpMax;
  const float n = __builtin_nearbyintf(x * kExpLog2e);
  float r = x - n * kExpLn2Hi;
  r = r - n * kExpLn2Lo;
  const float z = r * r;
  float y = kExpPoly[0];
  for (int k = 1; k < 6; ++k) y = y * r + kExpPoly[k];
  y = y * z + r;
  y = y + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  __builtin_memcpy(&two_n, &bits, 4);
  return y * two_n;
}

// The softmax entry written out plainly (the scalar kernel; the SIMD kernels do the same per lane).
static inline void softmax_plain(float* s, int64_t n, float scale) {
  float m = -__builtin_inff();
  for (int64_t j = 0; j < n; ++j) {
    s[j] = s[j] * scale;
    m = s[j] > m ? s[j] : m;
  }
  float p[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) {
      s[i + j] = softmax_exp(s[i + j] - m);
      p[j] = p[j] + s[i + j];
    }
  for (int j = 0; i + j < n; ++j) {
    s[i + j] = softmax_exp(s[i + j] - m);
    p[j] = p[j] + s[i + j];
  }
  for (int width = 8; width >= 1; width /= 2)
    for (int j = 0; j < width; ++j) p[j] = p[j] + p[j + width];
  for (int64_t j = 0; j < n; ++j) s[j] = s[j] / p[0];
}

// The hadamard entry written out plainly: the scalar kernel, and the SIMD kernels' path for sizes
// below one vector. `static`: each ISA's file compiles its own copy with its own flags.
static inline void hadamard_plain(float* x, int64_t d, float scale) {
  for (int64_t h = 1; h < d; h *= 2)
    for (int64_t i = 0; i < d; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
  for (int64_t i = 0; i < d; ++i) x[i] = x[i] * scale;
}

// Where a q8 row's scale sits (cpu_kernels.h).
inline int64_t kv_q8_scale_offset(int64_t d) { return (d + 3) / 4 * 4; }

extern const KernelTable kScalarKernels;
extern const KernelTable kAvx2Kernels;
extern const KernelTable kAvx512Kernels;

// Shared numeric definitions, written out in every ISA file identically (see docs/kernels-cpu.md):
//  - reductions (sum of squares, dot) use 16 running partial sums p[i % 16] over full 16-element
//    chunks in order, then the tail added to p[0..rem) in order, then the tree
//    p[j] + p[j+8] -> [j] + [j+4] -> [j] + [j+2] -> [0] + [1]; products and sums are separate
//    roundings (no FMA);
//  - activation scale s = 127 / max(absmax, 1e-5), q = clamp(round_half_even(x * s), -128, 127);
//  - rmsnorm: r = 1 / sqrt(sumsq / n + eps) (scalar, correctly rounded), y = (x * r) * w;
//  - GEMM output y = float(acc) * (row_scale / s).
inline constexpr float kActMaxClamp = 1e-5f;

}  // namespace onebit::cpu::detail
