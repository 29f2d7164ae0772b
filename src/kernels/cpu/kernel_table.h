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
};

// Many-token GEMM tiling (AVX-512): a tile is kGemmTileGroups row groups (64 rows) whose 2-bit
// weights are unpacked once into per-thread scratch (kGemmScratchPerBlock bytes per 64-byte block
// per row group) and then reused for every token row. ternary_gemm callers pass `scratch` of at
// least gemm_scratch_bytes(w, g1 - g0) bytes, 64-byte aligned, whenever x.n > 1.
inline constexpr int64_t kGemmTileGroups = 4;
inline constexpr int64_t kGemmScratchPerBlock = 256;

// The AVX-512 GEMM's lookup-table share (docs/kernels-cpu.md, "VNNI + lookup tables"): the last
// 3 * gemm_lut_spans(blocks) column blocks of every row are summed through tables instead of
// vpdpbusd, sized so that one table unit (1 row x 8 groups) runs beside each VNNI step (4 row
// groups x 6 token rows x 4 columns): units 2 * spans * 1/30 per row and token row = steps
// 4 * (blocks - 3 * spans) / (64 * 6)  =>  spans = blocks * 0.1064 (rounded down).
inline int64_t gemm_lut_spans(int64_t blocks) { return blocks * 1064 / 10000; }

// Rows of one table pass (the per-row sums stay in L2): 16 row groups. Token blocks (30 rows each)
// sharing one unpacking of the VNNI tiles: 3.
inline constexpr int64_t kGemmLutSubGroups = 16;
inline constexpr int64_t kGemmLutBlocks = 3;

inline int64_t round64(int64_t n) { return (n + 63) / 64 * 64; }

// Scratch for ternary_gemm over row groups [g0, g0 + groups), in bytes (see gemm_hybrid in
// kernels_avx512.cc for the parts, in this order).
inline int64_t gemm_scratch_bytes(const WeightsView& w, int64_t groups) {
  const int64_t spans = gemm_lut_spans(w.blocks), chunks = 2 * spans, m = kGemmLutBlocks;
  const int64_t sub_r = (groups < kGemmLutSubGroups ? groups : kGemmLutSubGroups) * 16;
  const int64_t idx_r = (groups + kGemmLutSubGroups - 1) / kGemmLutSubGroups * kGemmLutSubGroups * 16;
  return round64(kGemmTileGroups * w.blocks * kGemmScratchPerBlock) + round64(chunks * idx_r * 16) +
         m * chunks * 13824 + m * sub_r * 64 + m * sub_r * 128 + sub_r * 128 + m * 30 * sub_r * 4 +
         spans * 48 * 64 + m * 32 * 4;
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
};

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
