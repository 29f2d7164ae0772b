// The decode GEMV with its RMSNorm + int8 quantization in the prologue and the next step in the
// epilogue: one launch per projection of a decode layer instead of a one-block norm kernel plus a
// GEMV (docs/kernels-cuda.md, "Fused decode layer").
//
// Each block recomputes the norm of the whole input vector (read from L2; a few KB) and keeps
// the int8 codes in shared memory, then runs the ternary GEMV of ternary_gemv_cuda.h over its
// rows. Epilogues:
//   kStore:    y[row] = result                  (q/k/v: up to kMaxGemvParts matrices)
//   kResidual: y[row] += result                 (o and down: y is the residual stream)
//   kRelu2:    h[row] = relu(g[row])^2 * u[row] (gate/up: two matrices of equal shape, h = mats[0].y)
// The results are bit for bit those of the unfused launches (rmsnorm_quantize_rows, then
// ternary_gemv_multi, then add_inplace / relu2_mul): the prologue forms the sum of squares in the
// order of the one-block norm kernel, the integer sums are exact, and every other step is the same
// fp32 operation. So a sequence decoded alone (fused) gets the bits it gets in a batch (unfused).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/ternary_gemv_cuda.h"

namespace onebit::cuda {

enum class FusedEpilogue : uint8_t { kStore, kResidual, kRelu2 };

// Block shape: `groups` row groups of 8 rows per block (kRelu2: half gate, half up; even), the K
// chunks of a row split over warps so that each lane loads about `chunks_per_thread` 16-byte
// weight chunks.
struct FusedGemvShape {
  int groups = 2;
  int chunks_per_thread = 2;
};

struct FusedGemvArgs {
  const float* x = nullptr;       // input vector [cols] (fp32), written by the previous kernel
  const float* norm_w = nullptr;  // RMSNorm weight [cols]
  float eps = 1e-5f;
  int64_t cols = 0;               // a multiple of 4, <= kFusedGemvMaxCols
  GemvMatrix mats[kMaxGemvParts] = {};
  int count = 0;
  FusedEpilogue epilogue = FusedEpilogue::kStore;
  FusedGemvShape shape;
  bool pdl = false;               // programmatic dependent launch (see GemvConfig)
};
inline constexpr int64_t kFusedGemvMaxCols = 8192;

// Whether fused_norm_gemv takes these arguments (shape limits; checked again at launch).
bool fused_norm_gemv_ok(const FusedGemvArgs& a);
cudaError_t fused_norm_gemv(const FusedGemvArgs& a, cudaStream_t stream);

}  // namespace onebit::cuda
