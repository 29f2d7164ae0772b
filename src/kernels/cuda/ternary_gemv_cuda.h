// CUDA W2A8 ternary GEMV for decode (one token): 2-bit weights in a GPU tile layout, int8
// activations with one fp32 scale, exact int32 sums. See docs/kernels-cuda.md.
//
// Depends only on the CUDA runtime and the C++ standard library (so it builds with plain nvcc on
// the GPU machine). All launchers take device pointers and a stream, never synchronize the host,
// and return the launch's cudaError_t (cudaGetLastError after the launch).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace onebit::cuda {

// ---- Layout ---------------------------------------------------------------------------------
// 2 bits per weight, code = w + 1 in {0, 1, 2}; padding code 1 (w = 0).
// Columns are cut into chunks of 64 (K = ceil(cols / 64) chunks per row); one chunk of one row
// is 16 bytes. Rows are grouped by 8; a tile is 8 rows x 1 chunk = 128 contiguous bytes, and a
// row group's tiles are stored in chunk order:
//
//   chunk (r, k) starts at byte ((r / 8) * K + k) * 128 + (r % 8) * 16
//   inside it, byte 4*j + b, bits [2i+1 : 2i] = code of column 64k + 16j + 4i + b
//                                                (j = 32-bit word 0..3, i = field 0..3, b = 0..3)
//
// So a warp (lane = 8*kk + rr) loads 4 consecutive tiles = 512 contiguous bytes with one 16-byte
// load per lane, and `word & (0x03030303 << 2i)` holds, byte-wise, the codes (times 4^i) of 4
// consecutive columns: the unsigned operand of one dp4a whose signed operand is the 4 matching
// int8 activations (one int32 load).
inline constexpr int kRowsPerGroup = 8;
inline constexpr int kColsPerChunk = 64;
inline constexpr int64_t kMaxCols = int64_t{1} << 19;  // int32 partial sums stay exact below this

inline int64_t cuda_chunks(int64_t cols) { return (cols + kColsPerChunk - 1) / kColsPerChunk; }
inline int64_t cuda_padded_rows(int64_t rows) { return (rows + kRowsPerGroup - 1) / kRowsPerGroup * kRowsPerGroup; }
// Bytes of a packed rows x cols matrix.
inline size_t cuda_packed_bytes(int64_t rows, int64_t cols) {
  return static_cast<size_t>(cuda_padded_rows(rows)) * static_cast<size_t>(cuda_chunks(cols)) * 16;
}
// int8 activation buffer length for `cols` (zero-padded to whole chunks by quantize_activations).
inline int64_t cuda_act_len(int64_t cols) { return cuda_chunks(cols) * kColsPerChunk; }

// Byte offset and bit shift of weight (r, c): the layout's definition (the reference kernel and
// the tests read weights only through this).
__host__ __device__ inline void cuda_weight_pos(int64_t chunks, int64_t r, int64_t c, size_t* byte, int* shift) {
  const int64_t k = c / kColsPerChunk, in = c % kColsPerChunk;
  const int64_t j = in / 16, i = (in % 16) / 4, b = in % 4;
  *byte = static_cast<size_t>(((r / kRowsPerGroup) * chunks + k) * 128 + (r % kRowsPerGroup) * 16 + 4 * j + b);
  *shift = static_cast<int>(2 * i);
}

// codes: rows x cols row-major int8 in {-1, 0, +1}. Throws std::invalid_argument on a bad code or
// a shape out of range (cols >= 2^19, rows * chunks beyond int32 tiles).
std::vector<uint8_t> repack_for_cuda(const int8_t* codes, int64_t rows, int64_t cols);

// ---- Kernels --------------------------------------------------------------------------------
// Per-token activation quantization (BitNet / HF, same as the CPU's):
//   s = 127 / max(max|x|, 1e-5) (fp32),  q = clamp(round_half_even(x * s), -128, 127),
//   q zero-padded to cuda_act_len(cols), *scale = s, *qsum = sum of q.
// x: cols floats (finite). One block; cheap next to a GEMV.
cudaError_t quantize_activations(const float* x, int64_t cols, int8_t* q, float* scale, int32_t* qsum,
                                 cudaStream_t stream);

struct GemvConfig {
  int chunks_per_thread = 2;  // target 16-byte weight loads per thread (sets warps per block, <= 32)
  // Programmatic dependent launch (sm_90+): the kernel lets the next one start early and loads its
  // weights before waiting for the previous kernel (activations are read only after the wait).
  bool pdl = false;
};

// y[r] = float(sum_c w[r,c] * q[c] - ...) * (row_scale[r] / *scale), the integer sum exact:
// computed as sum (w+1)*q - *qsum. w: repack_for_cuda bytes; q, scale, qsum from
// quantize_activations; row_scale: `rows` floats. Writes y[0..rows) only.
cudaError_t ternary_gemv(const uint8_t* w, const float* row_scale, int64_t rows, int64_t cols, const int8_t* q,
                         const float* scale, const int32_t* qsum, float* y, cudaStream_t stream,
                         GemvConfig cfg = {});

// Several matrices of the same width `cols` applied to the same activations (q/k/v, gate/up) in
// one launch: each as ternary_gemv would compute it (bit-identical). count <= kMaxGemvParts.
inline constexpr int kMaxGemvParts = 3;
struct GemvMatrix {
  const uint8_t* w;
  const float* row_scale;
  int64_t rows;
  float* y;
};
cudaError_t ternary_gemv_multi(const GemvMatrix* mats, int count, int64_t cols, const int8_t* q, const float* scale,
                               const int32_t* qsum, cudaStream_t stream, GemvConfig cfg = {});

// Plain reference: one thread per row, weights read through cuda_weight_pos, sum of signed
// w * q directly (no qsum trick). Same output formula, so bit-identical to ternary_gemv.
cudaError_t ternary_gemv_reference(const uint8_t* w, const float* row_scale, int64_t rows, int64_t cols,
                                   const int8_t* q, const float* scale, float* y, cudaStream_t stream);

}  // namespace onebit::cuda
