// PackedTernary: ternary weights in the layout the CPU kernels read ("kernel-ready").
//
// Layout (see docs/kernels-cpu.md for the picture). Rows are taken in groups of kRowGroup = 16 and
// columns in blocks of kBlockCols = 16; one group x one block = 256 weights = one 64-byte,
// cache-line-aligned block. Blocks of a row group are contiguous along the columns, so a row group
// is one sequential stream of `blocks_per_group * 64` bytes:
//     byte offset of block (g, b) = (g * blocks_per_group + b) * 64
// Inside a block, byte 4*j + k (j = row within the group, k = 0..3) holds, in bits [2i+1:2i]
// (i = 0..3), the code of row 16*g + j, column 16*b + 4*i + k. A code is w + 1 in {0, 1, 2}.
// Hence (block & (3 << 2i)) read as 16 uint32 lanes is, per lane j, four unsigned codes (times 4^i)
// for four consecutive columns: exactly the u8 operand of one VNNI `vpdpbusd` whose s8 operand is
// those four activations broadcast to all lanes. Since codes are w + 1, the kernels compute
// sum((w+1) x) and subtract sum(x), which quantize_activations computes once per token row.
// Rows and columns are padded up to the group/block size with code 1 (w = 0).
#pragma once

#include <cstdint>
#include <vector>

#include "core/base/ternary_packing.h"
#include "kernels/cpu/aligned_buffer.h"

namespace onebit::cpu {

inline constexpr int64_t kRowGroup = 16;
inline constexpr int64_t kBlockCols = 16;
inline constexpr int64_t kBlockBytes = kRowGroup * kBlockCols / 4;  // 64

struct PackedTernary {
  int64_t rows = 0, cols = 0;  // logical shape [out][in]
  int64_t row_groups = 0;      // ceil(rows / 16)
  int64_t blocks = 0;          // blocks per row group: ceil(cols / 16)
  AlignedVector<uint8_t> data; // row_groups * blocks * 64 bytes
  // One multiplier per padded row (row_groups * 16 entries; a per-tensor scale is repeated), so
  // kernels load scales as whole vectors. Padding rows have scale 0.
  AlignedVector<float> row_scales;

  int64_t rows_padded() const { return row_groups * kRowGroup; }
  int64_t cols_padded() const { return blocks * kBlockCols; }
  size_t weight_bytes() const { return data.size(); }
  // The ternary weight in {-1, 0, +1} at (r, c) (padding included): decodes the layout above. The
  // scalar reference kernel reads weights only through this, so it is the layout's specification.
  int weight(int64_t r, int64_t c) const {
    const int64_t g = r / kRowGroup, j = r % kRowGroup, b = c / kBlockCols, cc = c % kBlockCols;
    const uint8_t byte = data[static_cast<size_t>((g * blocks + b) * kBlockBytes + 4 * j + cc % 4)];
    return ((byte >> (2 * (cc / 4))) & 3) - 1;
  }
};

// Repacks codes (row-major int8 in {-1, 0, +1}) and their scales (1 or `rows` values) into the
// kernel layout. Throws Error on a code outside {-1, 0, 1}, a wrong number of codes or scales, or
// an empty or absurd shape (more than 2^19 columns could overflow the int32 sums).
PackedTernary repack_for_cpu(const TernaryMatrix& m);

}  // namespace onebit::cpu
