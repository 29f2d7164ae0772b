#include "kernels/cpu/packed_ternary.h"

#include "core/base/error.h"

namespace onebit::cpu {

PackedTernary repack_for_cpu(const TernaryMatrix& m) {
  if (m.rows <= 0 || m.cols <= 0 || m.rows > (int64_t{1} << 31) || m.cols > (int64_t{1} << 19)) {
    fail("repack_for_cpu: bad ternary matrix shape {}x{}", m.rows, m.cols);
  }
  if (static_cast<int64_t>(m.codes.size()) != m.rows * m.cols) {
    fail("repack_for_cpu: {}x{} matrix has {} codes, expected {}", m.rows, m.cols, m.codes.size(),
         m.rows * m.cols);
  }
  if (m.scales.size() != 1 && static_cast<int64_t>(m.scales.size()) != m.rows) {
    fail("repack_for_cpu: {}x{} matrix has {} scales, expected 1 or {}", m.rows, m.cols, m.scales.size(),
         m.rows);
  }
  PackedTernary p;
  p.rows = m.rows;
  p.cols = m.cols;
  p.row_groups = (m.rows + kRowGroup - 1) / kRowGroup;
  p.blocks = (m.cols + kBlockCols - 1) / kBlockCols;
  // Every 2-bit field starts as code 1 (w = 0): 0b01010101.
  p.data.assign(static_cast<size_t>(p.row_groups * p.blocks * kBlockBytes), 0x55);
  p.row_scales.assign(static_cast<size_t>(p.rows_padded()), 0.0f);
  for (int64_t r = 0; r < m.rows; ++r) {
    p.row_scales[static_cast<size_t>(r)] = m.scales.size() == 1 ? m.scales[0] : m.scales[static_cast<size_t>(r)];
  }
  for (int64_t r = 0; r < m.rows; ++r) {
    const int64_t g = r / kRowGroup, j = r % kRowGroup;
    const int8_t* src = m.codes.data() + r * m.cols;
    for (int64_t c = 0; c < m.cols; ++c) {
      const int w = src[c];
      if (w < -1 || w > 1) fail("repack_for_cpu: code {} at ({}, {}) is not in {{-1, 0, 1}}", w, r, c);
      const int64_t b = c / kBlockCols, cc = c % kBlockCols, shift = 2 * (cc / 4);
      uint8_t& byte = p.data[static_cast<size_t>((g * p.blocks + b) * kBlockBytes + 4 * j + cc % 4)];
      byte = static_cast<uint8_t>((byte & ~(3 << shift)) | ((w + 1) << shift));
    }
  }
  return p;
}

}  // namespace onebit::cpu
