// The CPU kernels of the BitNet forward pass: activation quantization, ternary GEMV/GEMM over
// PackedTernary weights, RMSNorm (optionally fused with quantization), relu²(gate)·up, and the
// dot/axpy pair attention uses.
//
// Each kernel has a scalar reference, an AVX2 and an AVX-512 VNNI version; `isa` picks one
// (kAuto = active_isa(), see cpu_features.h). Results are bit-identical across versions: integer
// sums are exact, and float reductions follow one fixed order (docs/kernels-cpu.md). Inputs must be
// finite. Kernels taking a ThreadPool split rows over it (nullptr = ThreadPool::global()); the
// others are single-threaded and cheap.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/aligned_buffer.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/packed_ternary.h"
#include "kernels/cpu/thread_pool.h"

namespace onebit::cpu {

// Activation rows quantized per BitNet: s = 127 / max(max|x|, 1e-5), q = clamp(round(x*s)) with
// round half to even (torch.round). Rows are zero-padded to a multiple of 64 bytes (>= any
// PackedTernary's padded columns for `cols`), so kernels read whole blocks.
class QuantizedActs {
 public:
  QuantizedActs() = default;
  QuantizedActs(int64_t rows, int64_t cols) { resize(rows, cols); }
  // Keeps capacity; contents are unspecified until written by a quantize function.
  void resize(int64_t rows, int64_t cols);

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t stride() const { return stride_; }
  int8_t* row(int64_t i) { return data_.data() + i * stride_; }
  const int8_t* row(int64_t i) const { return data_.data() + i * stride_; }

  std::vector<float> scale;  // s per row (divide by it to dequantize)
  std::vector<int32_t> sum;  // sum of the row's codes (the kernels subtract it; see packed_ternary.h)

 private:
  int64_t rows_ = 0, cols_ = 0, stride_ = 0;
  AlignedVector<int8_t> data_;
};

// x: rows x cols floats, row i at x + i * x_stride. Resizes `out`.
void quantize_activations(const float* x, int64_t rows, int64_t cols, int64_t x_stride, QuantizedActs& out,
                          Isa isa = Isa::kAuto);

// y[n * y_stride + r] = (sum_c w[r,c] * q[n,c]) * (row_scale[r] / s[n]) for every activation row n
// and weight row r; the integer sum is exact. Throws Error if x.cols() != w.cols.
// With x.rows() == 1 this is the decode GEMV.
void ternary_gemm(const PackedTernary& w, const QuantizedActs& x, float* y, int64_t y_stride,
                  ThreadPool* pool = nullptr, Isa isa = Isa::kAuto);
// One activation row (row `n` of x): y[0..w.rows).
void ternary_gemv(const PackedTernary& w, const QuantizedActs& x, float* y, ThreadPool* pool = nullptr,
                  Isa isa = Isa::kAuto, int64_t n = 0);

// y = x / sqrt(mean(x²) + eps) * weight, per row of `cols` values (x and y row strides = cols).
void rmsnorm(const float* x, const float* weight, int64_t rows, int64_t cols, float eps, float* y,
             Isa isa = Isa::kAuto);
// rmsnorm then quantize_activations, bit-identical to doing both, without the float temporary.
void rmsnorm_quantize(const float* x, const float* weight, int64_t rows, int64_t cols, float eps,
                      QuantizedActs& out, Isa isa = Isa::kAuto);
// rmsnorm_quantize of rows [r0, r1) only (row i at x + i * cols), into `out` already resized to at
// least r1 rows of `cols`: rows are independent, so threads that each take a range of rows give
// the bits rmsnorm_quantize gives. Throws Error if `out` does not have those rows and columns.
void rmsnorm_quantize_rows(const float* x, const float* weight, int64_t r0, int64_t r1, int64_t cols, float eps,
                           QuantizedActs& out, Isa isa = Isa::kAuto);

// out[i] = max(gate[i], 0)² · up[i]  (BitNet's relu2 FFN activation); out may alias gate or up.
void relu2_mul(const float* gate, const float* up, int64_t n, float* out, Isa isa = Isa::kAuto);

// sum(a[i] * b[i]) in the fixed 16-lane order (attention scores q·k).
float dot(const float* a, const float* b, int64_t n, Isa isa = Isa::kAuto);
// y[i] += a * x[i] (attention's weighted sum of values).
void axpy(float a, const float* x, float* y, int64_t n, Isa isa = Isa::kAuto);

// Attention over many keys at once (rows of k / v at a fixed stride), bit-identical to the loops
// they replace, on every ISA:
//   dot_rows:  out[j] = dot(q, k + j * k_stride, d)                 for j < n_keys
//   axpy_rows: axpy(p[j], v + j * v_stride, out, d)                 for j = 0, 1, .. n_keys - 1 in order
void dot_rows(const float* q, const float* k, int64_t k_stride, int64_t n_keys, int64_t d, float* out,
              Isa isa = Isa::kAuto);
void axpy_rows(const float* p, const float* v, int64_t v_stride, int64_t n_keys, int64_t d, float* out,
               Isa isa = Isa::kAuto);
// The same for n_q queries at once against one set of keys / values (a tile of the KV cache that
// several query vectors attend to: the heads sharing a KV head, consecutive prompt rows), each
// query bit-identical to its own dot_rows / axpy_rows call; the SIMD versions load every key and
// value row once per block of up to 4 queries instead of once per query:
//   dot_rows_multi:  dot_rows(q[a], k, k_stride, n_keys, d, out[a])     for a < n_q
//   axpy_rows_multi: axpy_rows(p[a], v, v_stride, n_keys, d, out[a])    for a < n_q
// (axpy: the out[a] must not overlap each other, v or the p[b].)
void dot_rows_multi(const float* const* q, int64_t n_q, const float* k, int64_t k_stride, int64_t n_keys, int64_t d,
                    float* const* out, Isa isa = Isa::kAuto);
void axpy_rows_multi(const float* const* p, int64_t n_q, const float* v, int64_t v_stride, int64_t n_keys, int64_t d,
                     float* const* out, Isa isa = Isa::kAuto);

// Attention's softmax over n scores, in place: s[j] * scale, then e_j = e^(s_j - max) by a
// polynomial within 2 ulp of expf (kernel_table.h, softmax_exp; 0 below -87.33), and e_j / sum with
// the sum in dot's 16-lane order. Bit-identical on every ISA.
void softmax(float* s, int64_t n, float scale, Isa isa = Isa::kAuto);

// KV cache rows to fp32 (attention converts a tile of keys or values once, then runs dot_rows /
// axpy_rows on it): n_rows rows, row j at rows + j * row_bytes, into out[j * d + i]. The layouts
// (engine/kv_quant.h gives the quantizers):
//   f16: d IEEE halves; converted exactly.
//   q8:  d int8 codes, zero padding to a multiple of 4 bytes, then one fp32 scale s;
//        x_i = s * code_i (one fp32 multiplication).
//   q4:  d / 2 bytes of codes, then d / group fp32 scales; x_i = s_{i / group} * code_i. Each 16
//        values are 8 bytes: byte m holds value m (low nibble) and value m + 8 (high nibble) of the
//        chunk, as code + 8. Needs d % 16 == 0 and `group` a multiple of 16 that divides d.
// Bit-identical on every ISA.
void kv_rows_f16_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, float* out,
                        Isa isa = Isa::kAuto);
void kv_rows_q8_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, float* out,
                       Isa isa = Isa::kAuto);
void kv_rows_q4_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, int64_t group, float* out,
                       Isa isa = Isa::kAuto);

// x = H x in place, H the d x d Sylvester-Hadamard matrix times 1/sqrt(d) (d a power of two; the
// q4r KV cache's rotation): the fast Walsh-Hadamard transform, stages h = 1, 2, .., d/2 of
// butterflies (a, b) -> (a + b, a - b), then one multiplication by float(1/sqrt(d)). Bit-identical
// on every ISA. Throws Error if d is not a power of two.
void hadamard(float* x, int64_t d, Isa isa = Isa::kAuto);

}  // namespace onebit::cpu
