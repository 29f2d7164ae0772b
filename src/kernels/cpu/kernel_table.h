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

struct KernelTable {
  // y[n * y_stride + r] for all n and rows r of row groups [g0, g1). n == 1 is the decode GEMV.
  void (*ternary_gemm)(const WeightsView& w, const ActsView& x, float* y, int64_t y_stride, int64_t g0,
                       int64_t g1);
  // Quantizes n floats to q[0..n) (no padding written); returns s, stores sum(q) in *sum.
  float (*quantize_row)(const float* x, int64_t n, int8_t* q, int32_t* sum);
  void (*rmsnorm)(const float* x, const float* w, int64_t n, float eps, float* y);
  // == rmsnorm into a temporary then quantize_row, bit for bit, without the temporary.
  float (*rmsnorm_quantize_row)(const float* x, const float* w, int64_t n, float eps, int8_t* q, int32_t* sum);
  void (*relu2_mul)(const float* gate, const float* up, int64_t n, float* out);
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float a, const float* x, float* y, int64_t n);
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
