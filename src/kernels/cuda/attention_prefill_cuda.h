// Causal attention of prompt rows (prefill) on fp16 tensor cores, over an fp16 KV cache: the
// flash-attention scheme (tiles of 64 keys in shared memory, online softmax in registers), with
// the query heads that share a KV head served from one copy of each tile. docs/kernels-cuda.md,
// "Prefill attention on tensor cores", has the design and the numbers.
//
// Numerics: the cache holds fp16 values, so only q and the softmax weights p need rounding to feed
// fp16 products; each is split into two fp16 parts (hi = fp16(x), lo = fp16(x - hi)) and both are
// multiplied, which keeps ~22 bits of each, near fp32. Scores, softmax and sums are fp32. The
// result differs from attention_rows' fp32 kernels by rounding only (tests/cuda/ops_check.cu gives
// the tolerance); a row's result does not depend on the other rows of its launch (how a prompt is
// cut into passes, or which sequences share a pass), so a sequence gets the same bits alone or in
// a batch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/ops_cuda.h"

namespace onebit::cuda {

// Whether attention_prefill handles this cache and shape: fp16 cache (KvType::kF16), head_dim 64 or 128,
// n_heads / n_kv_heads in {1, 2, 4, 8}.
bool attention_prefill_supported(const KvView& kv, int64_t n_heads);

// Without rows: rows i < n of one sequence, row i at position *pos0 + i, attends to [0, pos] of
// `layer` (the cache already holds those keys); q and out as attention_rows. With rows (a
// multi-sequence pass, ops_cuda.h): only the rows with one_split set are computed (each run of
// consecutive rows of one sequence over that sequence's cache); the others are left as they are.
cudaError_t attention_prefill(const KvView& kv, int64_t layer, const float* q, int64_t n, int64_t n_heads,
                              const int32_t* pos0, const RowSeq* rows, float* out, cudaStream_t stream);

}  // namespace onebit::cuda
