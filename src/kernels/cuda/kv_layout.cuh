// Where a (layer, kv head, position) row sits in a CUDA KV cache, and a pass row's position: device
// helpers shared by the attention and KV-store kernels (include from .cu files only).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/ops_cuda.h"

namespace onebit::cuda {

// Row i's position: its RowSeq's in a multi-sequence pass, else *pos0 + i (one sequence).
// A row of a sequence with several rows in the pass takes one split, as it would alone.
__device__ __forceinline__ int row_splits(const RowSeq* rows, int i, int splits) {
  return rows != nullptr && rows[i].one_split != 0 ? 1 : splits;
}
__device__ __forceinline__ int row_pos(const RowSeq* rows, const int32_t* pos0, int i) {
  return rows != nullptr ? rows[i].pos : *pos0 + i;
}

// Row index of (K or V, layer, kv head, position) in a (paged) cache: position p lives in slot
// p % bs of pool block table[p / bs] (the identity without a table; one block of n_ctx positions
// when block_size is 0, which is the contiguous layout). The row starts at byte row * row_bytes.
// (Called per key inside the attention loops: a power-of-two block size, the default 16, takes a
// shift and a mask instead of a division.)
__device__ __forceinline__ size_t kv_row_index(const KvView& kv, int which, int64_t layer, int64_t head, int64_t pos) {
  const int bs = static_cast<int>(kv.block_size > 0 ? kv.block_size : kv.n_ctx);
  const int p = static_cast<int>(pos);
  int lb, slot;
  if ((bs & (bs - 1)) == 0) {
    lb = p >> (__ffs(bs) - 1);
    slot = p & (bs - 1);
  } else {
    lb = p / bs;
    slot = p - lb * bs;
  }
  const int64_t blk = kv.table != nullptr ? kv.table[lb] : lb;
  return static_cast<size_t>((((which * kv.n_layers + layer) * kv.n_blocks + blk) * kv.n_kv_heads + head) * bs + slot);
}
// Element offset of that row's first value (f32 and f16 caches).
__device__ __forceinline__ size_t kv_off(const KvView& kv, int which, int64_t layer, int64_t head, int64_t pos) {
  return kv_row_index(kv, which, layer, head, pos) * static_cast<size_t>(kv.head_dim);
}
// The row's bytes (any type).
__device__ __forceinline__ uint8_t* kv_row_ptr(const KvView& kv, int which, int64_t layer, int64_t head, int64_t pos) {
  return static_cast<uint8_t*>(kv.data) + kv_row_index(kv, which, layer, head, pos) * static_cast<size_t>(kv.row_bytes);
}

}  // namespace onebit::cuda
