// CUDA kernels of the BitNet forward pass other than the decode GEMV (ternary_gemv_cuda.h):
// embedding gather, RMSNorm (+ fused per-token int8 quantization), the W2A8 GEMM on int8 tensor
// cores for several token rows, split-half RoPE, KV-cache stores, attention (split over the KV
// length, then a merge), relu²·up, residual add, and the LM head (bf16/f16/f32 or int8 rows).
// docs/kernels-cuda.md describes each; numerics follow the CPU backend (docs/engine.md).
//
// Like ternary_gemv_cuda.h this depends only on the CUDA runtime and the standard library. Every
// launcher takes device pointers and a stream, never synchronizes, and returns the launch's
// cudaError_t. Positions come from device memory (`const int32_t* pos0`): a CUDA graph captured
// once replays with the position the host wrote there before the launch.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace onebit::cuda {

enum class DenseType : uint8_t { kF32, kF16, kBF16 };

// Programmatic dependent launch (sm_90+, off by default): every launcher in this file then lets
// its kernel start while the previous kernel of the stream is still running; the kernel loads only
// constant data (weights) until that one has completed (griddepcontrol.wait), so results are the
// same. Process-wide; set it before launching (the CUDA backend sets it at start).
void set_pdl(bool on);
bool pdl_enabled();

// Per-token int8 activations of up to `rows` rows: codes [rows][stride] (stride = cuda_act_len(cols),
// the tail zero), one fp32 scale s = 127/max(max|x|, 1e-5) and the code sum per row.
struct QuantActs {
  int8_t* codes = nullptr;
  float* scales = nullptr;
  int32_t* sums = nullptr;
  int64_t stride = 0;
};

// x[i][:] = table[tokens[i]][:] as fp32. Ids must be in range (checked by the caller).
cudaError_t embed_rows(const void* table, DenseType type, int64_t cols, const int32_t* tokens, int64_t n, float* x,
                       cudaStream_t stream);

// y = x * rsqrt(mean(x^2) + eps) * w per row (fp32; the sum of squares in fp32 by a fixed tree).
cudaError_t rmsnorm_rows(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* y,
                         cudaStream_t stream);

// With w: y = rmsnorm(x) then per-row quantization into q; w == nullptr: quantization of x itself.
// Quantization as quantize_activations (ternary_gemv_cuda.h). dim < kMaxCols.
cudaError_t rmsnorm_quantize_rows(const float* x, const float* w, int64_t n, int64_t dim, float eps, QuantActs q,
                                  cudaStream_t stream);

// Fused variants (dim <= kFusedMaxDim), each the same arithmetic as the unfused sequence:
//  - add_rmsnorm_quantize_rows: x += y (x written back: the residual stream), then as
//    rmsnorm_quantize_rows(x, w, ...);
//  - relu2_rmsnorm_quantize_rows: h = relu(gate)^2 * up (not stored), then rmsnorm + quantize of h.
inline constexpr int64_t kFusedMaxDim = 8192;
cudaError_t add_rmsnorm_quantize_rows(float* x, const float* y, const float* w, int64_t n, int64_t dim, float eps,
                                      QuantActs q, cudaStream_t stream);
cudaError_t relu2_rmsnorm_quantize_rows(const float* gate, const float* up, const float* w, int64_t n, int64_t dim,
                                        float eps, QuantActs q, cudaStream_t stream);

// y[i][r] = float(sum_c w[r][c] * q[i][c]) * (row_scale[r] / s_i) for n token rows (any n >= 1):
// weights in the repack_for_cuda layout, int8 mma (m16n8k32, unsigned codes w+1 times signed
// activations, minus the row's code sum): the integer sums are exact, so the result is bit-identical
// to ternary_gemv / ternary_gemv_reference on each row. y is [n][rows].
cudaError_t ternary_gemm(const uint8_t* w, const float* row_scale, int64_t rows, int64_t cols, QuantActs q,
                         int64_t n, float* y, cudaStream_t stream);

// Split-half RoPE in place on x [n][n_heads][head_dim]: row i at position *pos0 + i; cos/sin are
// [n_pos][head_dim/2] tables (the CPU's fp32 values).
cudaError_t rope_rows(float* x, int64_t n, int64_t n_heads, int64_t head_dim, const float* cos_t,
                      const float* sin_t, const int32_t* pos0, cudaStream_t stream);

// How a KV cache stores a row of head_dim values (the engine's KvDtype, same order; the byte
// layouts and the quantizer are those of src/engine/kv_quant.h, bit for bit):
//  - kF32, kF16: the values;
//  - kQ8: int8 codes c = rint(x / d) (half to even) in [-127, 127], zero-padded to a multiple of 4
//    bytes, then the fp32 scale d = max|x| / 127 of the row;
//  - kQ4R: the row rotated by the normalized Walsh-Hadamard matrix H (head_dim a power of two
//    >= 16), then 4-bit codes in [-7, 7] stored as c + 8 (every 16 values are 8 bytes, byte m holding
//    value m in its low and m + 8 in its high nibble), then one fp32 scale max|y| / 7 per group of
//    min(32, head_dim) values. Attention rotates q by H and the weighted sum of values back.
// A row with an inf or NaN gets scale NaN (q4r: per group) and codes 0.
enum class KvType : uint8_t { kF32, kF16, kQ8, kQ4R };
// Bytes of one row of `head_dim` values (with its scales); 0 if the type cannot hold such rows
// (q4r: head_dim not a power of two >= 16).
int64_t kv_type_row_bytes(KvType t, int64_t head_dim);

// KV cache, paged: a pool of n_blocks blocks of block_size positions laid out
// [2][n_layers][n_blocks][n_kv_heads][block_size] rows of row_bytes (= kv_type_row_bytes(type,
// head_dim): the launchers refuse a view where it differs); position p of a sequence is slot
// p % block_size of pool block table[p / block_size] (`table` in device memory; nullptr = block i
// is pool block i). block_size 0 means n_ctx, so n_blocks = 1 and no table is the contiguous cache
// [2][n_layers][n_kv_heads][n_ctx] rows. Quantized types (q8, q4r) need head_dim <= 256.
struct KvView {
  void* data = nullptr;
  KvType type = KvType::kF32;
  int64_t row_bytes = 0;
  int64_t n_layers = 0, n_kv_heads = 0, n_ctx = 0, head_dim = 0;
  int64_t block_size = 0;
  int64_t n_blocks = 1;
  const int32_t* table = nullptr;
};

// A multi-sequence pass (continuous batching): row i of the pass belongs to the sequence whose
// cache is rows[i].kv (a KvView's data, same geometry as the KvView passed with it) and sits at
// position rows[i].pos; the launchers below that take `rows` (a device array, one per row) then
// ignore kv.data and *pos0. Rows of one sequence are consecutive and in position order. Set
// one_split on the rows of a sequence with several rows in the pass (a prompt chunk): attention
// then keeps their keys in one split, as a one-sequence pass does, so they get the same bits.
struct RowSeq {
  void* kv = nullptr;
  const int32_t* table = nullptr;  // the sequence's block table (device), as KvView::table
  int32_t pos = 0;
  int32_t one_split = 0;
};

// Copies positions [0, n) of pool block `src` to pool block `dst`, every layer and kv head.
cudaError_t kv_copy_block(const KvView& kv, int32_t src, int32_t dst, int64_t n, cudaStream_t stream);

// Stores k and v rows [n][n_kv_heads*head_dim] at positions *pos0 .. *pos0 + n - 1 of `layer`
// (q8 / q4r: quantized on the device, the bytes of quantize_kv_row, engine/kv_quant.h).
cudaError_t kv_store_rows(KvView kv, int64_t layer, const float* k, const float* v, int64_t n, const int32_t* pos0,
                          cudaStream_t stream);

// rope_rows on q ([n][n_heads][head_dim]) and k ([n][n_kv_heads][head_dim]) in place, then
// kv_store_rows of k and v: one launch.
cudaError_t rope_kv_store_rows(float* q, float* k, const float* v, int64_t n, int64_t n_heads, KvView kv,
                               int64_t layer, const float* cos_t, const float* sin_t, const int32_t* pos0,
                               cudaStream_t stream, const RowSeq* rows = nullptr);

// Scratch for attention's split-KV partial results: attention_scratch_floats(...) floats.
// Rows of one sequence (prefill) take one split; a decode row, or rows of different sequences
// (independent_rows: a multi-sequence pass), split the keys.
int64_t attention_splits(int64_t n_ctx, int64_t n_rows, bool independent_rows = false);
size_t attention_scratch_floats(int64_t n_ctx, int64_t n_rows, int64_t n_heads, int64_t head_dim,
                                bool independent_rows = false);

// Causal GQA attention. q and out are [n][n_heads][head_dim]; row i (position *pos0 + i) attends to
// positions [0, *pos0 + i] of `layer`; kv head = head / (n_heads / n_kv_heads);
// out = softmax(q.k * rsqrt(head_dim)) . v with fp32 math. Keys are cut into at most
// attention_splits(n_ctx, n) ranges of at least 32 keys, computed in parallel, then merged
// (flash-decoding); the number used follows the position.
// head_dim <= 256 and a multiple of 32; n_heads / n_kv_heads <= 8.
// With rows (a multi-sequence pass), each row attends to [0, rows[i].pos] of its own cache and
// the scratch is attention_scratch_floats(..., independent_rows = true).
// Every KvType: q8 / q4r rows are read as scale * code (fp32 math); over a q4r cache q is rotated
// by H and the weighted sum of the (rotated) values rotated back, so the output is attention over
// the dequantized, unrotated rows.
cudaError_t attention_rows(KvView kv, int64_t layer, const float* q, int64_t n, int64_t n_heads, const int32_t* pos0,
                           float* scratch, float* out, cudaStream_t stream, const RowSeq* rows = nullptr);

// Decode: n rows, each the only new row of its sequence (n = 1 at *pos0, or n sequences given by
// rows): RoPE of q (q itself is left unrotated) and of k, the store of k and v at the row's
// position of `layer`, and attention_rows, in one kernel (plus the merge kernel when the keys are
// split). Same results, bit for bit, as rope_kv_store_rows followed by attention_rows (scratch:
// attention_scratch_floats(n_ctx, n, ..., true)). Only shapes with attention_decode_fusable
// (head_dim 64 or 128, G * head_dim <= 1024); cos/sin as rope_rows.
bool attention_decode_fusable(const KvView& kv, int64_t n_heads);
cudaError_t attention_decode(KvView kv, int64_t layer, const float* q, const float* k, const float* v, int64_t n,
                             int64_t n_heads, const float* cos_t, const float* sin_t, const int32_t* pos0,
                             const RowSeq* rows, float* scratch, float* out, cudaStream_t stream);

// out = relu(gate)^2 * up; x += y (count elements).
cudaError_t relu2_mul(const float* gate, const float* up, int64_t count, float* out, cudaStream_t stream);
cudaError_t add_inplace(float* x, const float* y, int64_t count, cudaStream_t stream);

// logits[i][r] = sum_c w[r][c] * x[i][c], fp32 accumulation; w dense [rows][cols].
cudaError_t dense_gemv(const void* w, DenseType type, int64_t rows, int64_t cols, const float* x, int64_t n,
                       float* logits, cudaStream_t stream);

// int8 LM head: w [rows][stride] int8 codes (stride = cuda_act_len(cols), zero tail), d[r] per-row
// scale; x quantized per row in q. logits[i][r] = (float(sum_c w[r][c] * q[i][c]) / s_i) * d[r],
// the sum exact (the CPU int8 head's formula). Up to 8 rows: a GEMV (dp4a) per 8 rows; more: int8
// tensor cores, 64 rows per read of the weights; the same bits either way.
cudaError_t int8_gemv(const int8_t* w, const float* d, int64_t rows, int64_t cols, QuantActs q, int64_t n,
                      float* logits, cudaStream_t stream);

// out[r] = index of the largest of logits[r][0..n) (the lowest index among equal maxima), for
// rows r < rows.
cudaError_t argmax(const float* logits, int64_t n, int32_t* out, cudaStream_t stream, int64_t rows = 1);

}  // namespace onebit::cuda
