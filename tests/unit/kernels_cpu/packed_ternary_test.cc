#include "kernels/cpu/packed_ternary.h"

#include <gtest/gtest.h>

#include "core/base/error.h"
#include "test_util.h"

namespace onebit::cpu {
namespace {

TEST(PackedTernary, RoundTripsCodesAndPadsWithZeros) {
  std::mt19937 rng(1);
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {16, 16}, {17, 33}, {40, 255}, {5, 1000}}) {
    const TernaryMatrix m = testing::random_ternary(rng, rows, cols, rows % 2 == 1);
    const PackedTernary p = repack_for_cpu(m);
    EXPECT_EQ(p.row_groups, (rows + 15) / 16);
    EXPECT_EQ(p.blocks, (cols + 15) / 16);
    EXPECT_EQ(p.weight_bytes(), static_cast<size_t>(p.row_groups * p.blocks * 64));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p.data.data()) % 64, 0u);
    for (int64_t r = 0; r < p.rows_padded(); ++r) {
      for (int64_t c = 0; c < p.cols_padded(); ++c) {
        const int expect = (r < rows && c < cols) ? m.codes[r * cols + c] : 0;
        ASSERT_EQ(p.weight(r, c), expect) << rows << "x" << cols << " at " << r << "," << c;
      }
      const float scale = r >= rows ? 0.0f : (m.scales.size() == 1 ? m.scales[0] : m.scales[r]);
      EXPECT_EQ(p.row_scales[r], scale);
    }
  }
}

// Pins the documented byte layout (docs/kernels-cpu.md), independent of weight().
TEST(PackedTernary, ByteLayoutIsTheDocumentedOne) {
  TernaryMatrix m;
  m.rows = 32;
  m.cols = 32;
  m.codes.assign(32 * 32, 0);
  m.scales = {1.0f};
  m.codes[17 * 32 + (16 + 4 * 2 + 3)] = 1;  // row group 1, row 1; block 1, sub-block 2, column 3
  m.codes[0] = -1;                           // first weight: bits [1:0] of byte 0
  const PackedTernary p = repack_for_cpu(m);
  ASSERT_EQ(p.data.size(), 4u * 64);
  EXPECT_EQ(p.data[0], 0x54);  // 0b01'01'01'00
  const size_t block = (1 * 2 + 1) * 64;
  EXPECT_EQ(p.data[block + 4 * 1 + 3], 0x65);  // 0b01'10'01'01: bits [5:4] = 2
  int changed = 0;
  for (size_t i = 0; i < p.data.size(); ++i) changed += p.data[i] != 0x55;
  EXPECT_EQ(changed, 2);
}

TEST(PackedTernary, RejectsBadInput) {
  TernaryMatrix m;
  m.rows = 2;
  m.cols = 3;
  m.codes = {0, 1, -1, 0, 2, 0};
  m.scales = {1.0f};
  EXPECT_THROW(repack_for_cpu(m), Error);  // code 2
  m.codes[4] = 1;
  m.scales = {1.0f, 2.0f, 3.0f};
  EXPECT_THROW(repack_for_cpu(m), Error);  // 3 scales for 2 rows
  m.scales = {1.0f, 2.0f};
  EXPECT_NO_THROW(repack_for_cpu(m));
  m.codes.pop_back();
  EXPECT_THROW(repack_for_cpu(m), Error);  // 5 codes
  m.rows = 0;
  m.codes.clear();
  EXPECT_THROW(repack_for_cpu(m), Error);
}

}  // namespace
}  // namespace onebit::cpu
