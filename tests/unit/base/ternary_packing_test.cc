#include "core/base/ternary_packing.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "core/base/error.h"
#include "core/base/half.h"

namespace onebit {
namespace {

TernaryMatrix random_matrix(int64_t rows, int64_t cols, uint32_t seed, bool per_row_scales) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> code(-1, 1);
  TernaryMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.codes.resize(static_cast<size_t>(rows * cols));
  for (auto& c : m.codes) c = static_cast<int8_t>(code(rng));
  if (per_row_scales) {
    for (int64_t r = 0; r < rows; ++r) m.scales.push_back(0.25f + 0.125f * static_cast<float>(r % 7));
  } else {
    m.scales = {1.5f};
  }
  return m;
}

Tensor view(const std::vector<uint8_t>& bytes, Packing p, int64_t rows, int64_t cols) {
  Tensor t;
  t.name = "test.weight";
  t.packing = p;
  t.shape = {rows, cols};
  t.data = {bytes.data(), bytes.size()};
  return t;
}

struct Case {
  Packing p;
  int64_t rows, cols;
  bool per_row;
};

TEST(TernaryPacking, RoundTripEveryPacking) {
  const Case cases[] = {
      {Packing::kTernaryI8, 7, 13, true},        {Packing::kTernary2, 7, 13, true},
      {Packing::kTernary2, 3, 1, false},         {Packing::kTernaryLegacyH1b, 5, 11, true},
      {Packing::kTernaryHF, 7, 13, false},       {Packing::kTernaryHF, 9, 3, true},
      {Packing::kTernaryHF, 1, 5, false},        {Packing::kI2_S, 3, 128, false},
      {Packing::kI2_S, 4, 96, false},            {Packing::kTQ2_0, 3, 512, true},
      {Packing::kTQ2_0, 2, 256, false},          {Packing::kTQ1_0, 3, 512, true},
      {Packing::kTQ1_0, 1, 256, false},
  };
  uint32_t seed = 1;
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("{} {}x{}", packing_name(c.p), c.rows, c.cols));
    TernaryMatrix m = random_matrix(c.rows, c.cols, seed++, c.per_row);
    std::vector<uint8_t> bytes = pack_ternary(m, c.p);
    ASSERT_EQ(bytes.size(), packed_size(c.p, c.rows, c.cols));
    Tensor t = view(bytes, c.p, c.rows, c.cols);
    TernaryMatrix back = unpack_ternary(t);  // no Tensor::scales: embedded ones (if any) are read
    EXPECT_EQ(back.rows, c.rows);
    EXPECT_EQ(back.cols, c.cols);
    EXPECT_EQ(back.codes, m.codes);
    std::vector<float> emb = embedded_scales(c.p, bytes, c.rows, c.cols);
    if (c.p == Packing::kI2_S) {
      ASSERT_EQ(emb.size(), 1u);
      EXPECT_EQ(emb[0], m.scales[0]);
    } else if (c.p == Packing::kTQ1_0 || c.p == Packing::kTQ2_0) {
      ASSERT_EQ(emb.size(), static_cast<size_t>(c.rows));
      for (int64_t r = 0; r < c.rows; ++r) {
        const float s = m.scales.size() == 1 ? m.scales[0] : m.scales[r];
        EXPECT_EQ(emb[r], f16_to_f32(f32_to_f16(s)));
      }
    } else {
      EXPECT_TRUE(emb.empty());
    }
    // Tensor::scales, when set, win over embedded ones.
    t.scales = {3.0f};
    EXPECT_EQ(unpack_ternary(t).scales, std::vector<float>{3.0f});
  }
}

TEST(TernaryPacking, I2SKnownBlock) {
  // Byte m holds weights m, m+32, m+64, m+96 in bits [7:6],[5:4],[3:2],[1:0], code = w + 1.
  TernaryMatrix m;
  m.rows = 1;
  m.cols = 128;
  m.codes.resize(128);
  for (int i = 0; i < 32; ++i) {
    m.codes[i] = 1;
    m.codes[i + 32] = -1;
    m.codes[i + 64] = 0;
    m.codes[i + 96] = 1;
  }
  m.scales = {0.5f};
  std::vector<uint8_t> b = pack_ternary(m, Packing::kI2_S);
  ASSERT_EQ(b.size(), 64u);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(b[i], 0x86) << i;  // 10 00 01 10
  for (int k = 0; k < 8; ++k) {
    EXPECT_EQ(b[32 + 4 * k + 0], 0x00);
    EXPECT_EQ(b[32 + 4 * k + 3], 0x3f);  // 0.5f = 0x3f000000 little endian
  }
  // And decode a hand-made block: byte 5 = 0b00'01'10'00 -> w5=-1, w37=0, w69=+1, w101=-1.
  std::vector<uint8_t> raw(64, 0x55);  // all zero weights
  raw[5] = 0x18;
  const float one = 1.0f;
  std::memcpy(raw.data() + 32, &one, 4);
  TernaryMatrix d = unpack_ternary(view(raw, Packing::kI2_S, 2, 64));
  EXPECT_EQ(d.codes[5], -1);
  EXPECT_EQ(d.codes[37], 0);
  EXPECT_EQ(d.codes[69], 1);   // row 1, col 5
  EXPECT_EQ(d.codes[101], -1);
  EXPECT_EQ(d.codes[6], 0);
  EXPECT_EQ(d.scales, std::vector<float>{1.0f});
}

TEST(TernaryPacking, TQ2KnownBlock) {
  // Per 32-byte half, byte m holds weights m, m+32, m+64, m+96 in bits [1:0],[3:2],[5:4],[7:6].
  TernaryMatrix m;
  m.rows = 1;
  m.cols = 256;
  m.codes.assign(256, 0);
  m.codes[0] = 1;     // bits 1:0 of byte 0 = 2
  m.codes[32] = -1;   // bits 3:2 of byte 0 = 0
  m.codes[64] = 0;    // bits 5:4 = 1
  m.codes[96] = 1;    // bits 7:6 = 2
  m.codes[128 + 3] = -1;  // second half, byte 32+3, bits 1:0 = 0
  m.scales = {2.0f};
  std::vector<uint8_t> b = pack_ternary(m, Packing::kTQ2_0);
  ASSERT_EQ(b.size(), 66u);
  EXPECT_EQ(b[0], 0x92);  // 10 01 00 10
  EXPECT_EQ(b[1], 0x55);
  EXPECT_EQ(b[35], 0x54);
  EXPECT_EQ(b[64], 0x00);  // fp16 2.0 = 0x4000
  EXPECT_EQ(b[65], 0x40);
}

TEST(TernaryPacking, TQ1KnownBlock) {
  // All-zero weights: every qs byte holds trits 1,1,1,1,1 = 121 -> ceil(121*256/243) = 128;
  // qh bytes hold 1,1,1,1 then a zero trit = 120 -> 127.
  TernaryMatrix m;
  m.rows = 1;
  m.cols = 256;
  m.codes.assign(256, 0);
  m.scales = {1.0f};
  std::vector<uint8_t> b = pack_ternary(m, Packing::kTQ1_0);
  ASSERT_EQ(b.size(), 54u);
  for (int i = 0; i < 48; ++i) EXPECT_EQ(b[i], 128) << i;
  for (int i = 48; i < 52; ++i) EXPECT_EQ(b[i], 127) << i;
  // Weight 0 = +1 is the most significant trit of qs[0]: 2*81+27+9+3+1 = 202 -> 213.
  m.codes[0] = 1;
  // Weight 241 = -1: qh[1] trit 0; qh holds 4 trits then a zero trit: 0*81+1*27+1*9+1*3 = 39.
  m.codes[241] = -1;
  b = pack_ternary(m, Packing::kTQ1_0);
  EXPECT_EQ(b[0], 213);
  EXPECT_EQ(b[49], (39 * 256 + 242) / 243);
  // Weight 165 = +1: k = 5 -> qs[32 + 5], trit 0.
  m.codes[165] = 1;
  b = pack_ternary(m, Packing::kTQ1_0);
  EXPECT_EQ(b[37], 213);
  TernaryMatrix back = unpack_ternary(view(b, Packing::kTQ1_0, 1, 256));
  EXPECT_EQ(back.codes, m.codes);
}

TEST(TernaryPacking, Native2AndHFKnownBytes) {
  TernaryMatrix m;
  m.rows = 1;
  m.cols = 5;
  m.codes = {-1, 0, 1, 1, 0};
  m.scales = {1.0f};
  std::vector<uint8_t> b = pack_ternary(m, Packing::kTernary2);
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0], 0xA4);  // 10 10 01 00
  EXPECT_EQ(b[1], 0x01);

  // HF: 5 rows x 1 col, R = 2: byte 0 holds rows 0, 2, 4; byte 1 holds rows 1, 3.
  m.rows = 5;
  m.cols = 1;
  b = pack_ternary(m, Packing::kTernaryHF);
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0], 0x00 | (2 << 2) | (1 << 4));  // rows 0 (-1), 2 (+1), 4 (0)
  EXPECT_EQ(b[1], 0x01 | (2 << 2));             // rows 1 (0), 3 (+1)
}

TEST(TernaryPacking, RejectsCode3) {
  const Packing two_bit[] = {Packing::kTernary2, Packing::kTernaryLegacyH1b, Packing::kTernaryHF,
                             Packing::kI2_S, Packing::kTQ2_0};
  for (Packing p : two_bit) {
    SCOPED_TRACE(std::string(packing_name(p)));
    TernaryMatrix m = random_matrix(4, 256, 7, false);
    std::vector<uint8_t> b = pack_ternary(m, p);
    b[1] |= 0x0c;  // a 2-bit field = 3
    try {
      unpack_ternary(view(b, p, 4, 256));
      FAIL() << "expected Error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("test.weight"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("invalid ternary code"), std::string::npos) << e.what();
    }
  }
  std::vector<uint8_t> i8 = {0, 1, 0xff, 2};
  EXPECT_THROW(unpack_ternary(view(i8, Packing::kTernaryI8, 1, 4)), Error);
  TernaryMatrix bad = random_matrix(1, 4, 3, false);
  bad.codes[2] = 2;
  EXPECT_THROW(pack_ternary(bad, Packing::kTernary2), Error);
}

TEST(TernaryPacking, RejectsWrongSizesAndShapes) {
  TernaryMatrix m = random_matrix(2, 256, 9, false);
  std::vector<uint8_t> b = pack_ternary(m, Packing::kTQ2_0);
  b.pop_back();
  EXPECT_THROW(unpack_ternary(view(b, Packing::kTQ2_0, 2, 256)), Error);
  EXPECT_THROW(packed_size(Packing::kTQ2_0, 2, 100), Error);
  EXPECT_THROW(packed_size(Packing::kTQ1_0, 2, 300), Error);
  EXPECT_THROW(packed_size(Packing::kI2_S, 1, 100), Error);
  EXPECT_THROW(packed_size(Packing::kQ8_0, 1, 33), Error);
  EXPECT_THROW(packed_size(Packing::kF32, 0, 3), Error);
  EXPECT_THROW(packed_size(Packing::kF32, int64_t{1} << 40, int64_t{1} << 40), Error);
  EXPECT_EQ(packed_size(Packing::kI2_S, 2560, 2560), 2560u * 2560 / 4 + 32);
  EXPECT_EQ(packed_size(Packing::kTernaryHF, 5, 3), 6u);
  EXPECT_EQ(packed_size(Packing::kTernaryLegacyH1b, 3, 5), 6u);
  TernaryMatrix wrong = m;
  wrong.codes.pop_back();
  EXPECT_THROW(pack_ternary(wrong, Packing::kTernary2), Error);
  Tensor t3 = view(b, Packing::kTQ2_0, 2, 256);
  t3.shape = {1, 2, 256};
  EXPECT_THROW(unpack_ternary(t3), Error);
}

TEST(TernaryPacking, ScaleRules) {
  TernaryMatrix m = random_matrix(3, 128, 11, true);  // per-row scales that differ
  EXPECT_THROW(pack_ternary(m, Packing::kI2_S), Error);
  m.scales = {0.75f, 0.75f, 0.75f};
  EXPECT_NO_THROW(pack_ternary(m, Packing::kI2_S));
  m.scales.clear();
  EXPECT_THROW(pack_ternary(m, Packing::kI2_S), Error);
  // TQ2_0 with two blocks in a row carrying different d: embedded_scales must refuse.
  TernaryMatrix q = random_matrix(1, 512, 12, false);
  std::vector<uint8_t> b = pack_ternary(q, Packing::kTQ2_0);
  b[66 + 64] = 0x01;  // change d of block 1
  EXPECT_THROW(embedded_scales(Packing::kTQ2_0, b, 1, 512), Error);
  // ...unless that block is all zero (its d carries nothing).
  for (int i = 0; i < 64; ++i) b[66 + i] = 0x55;
  EXPECT_EQ(embedded_scales(Packing::kTQ2_0, b, 1, 512), std::vector<float>{1.5f});
}

TEST(TernaryPacking, DequantizeDense) {
  std::vector<float> v = {1.0f, -2.5f, 0.125f, 3.0f};
  for (Packing p : {Packing::kF32, Packing::kF16, Packing::kBF16}) {
    std::vector<uint8_t> b = pack_dense(v, p);
    Tensor t = view(b, p, 2, 2);
    EXPECT_EQ(dequantize(t), v) << packing_name(p);
  }
  // Q8_0: one block, d = 127/127 = 1 -> values are the int8 codes.
  std::vector<float> q(32);
  for (int i = 0; i < 32; ++i) q[i] = static_cast<float>(i * 4 - 64) ;
  q[31] = 127.0f;
  std::vector<uint8_t> b = pack_dense(q, Packing::kQ8_0);
  ASSERT_EQ(b.size(), 34u);
  EXPECT_EQ(b[0], 0x00);
  EXPECT_EQ(b[1], 0x3c);  // fp16 1.0
  EXPECT_EQ(static_cast<int8_t>(b[2]), -64);
  Tensor t = view(b, Packing::kQ8_0, 1, 32);
  EXPECT_EQ(dequantize(t), q);
  t.data = t.data.subspan(0, 33);
  EXPECT_THROW(dequantize(t), Error);
  t.packing = Packing::kTQ2_0;
  EXPECT_THROW(dequantize(t), Error);
}

TEST(TernaryPacking, QuantizeAbsmeanMatchesReference) {
  // mean|W| = 0.5 -> s = 2: W*s = 0.5, -0.5, 2, 1 -> round-half-even 0, -0, 1(clamped), 1.
  std::vector<float> w = {0.25f, -0.25f, 1.0f, 0.5f, -0.8f, 0.0f};
  // mean of |w| = (0.25+0.25+1+0.5+0.8+0)/6 = 0.4666..; use the first four only for the exact case.
  TernaryMatrix m = quantize_absmean(std::span<const float>(w).first(4), 2, 2);
  EXPECT_EQ(m.codes, (std::vector<int8_t>{0, 0, 1, 1}));
  EXPECT_EQ(m.scales, std::vector<float>{0.5f});
  TernaryMatrix n = quantize_absmean(w, 2, 3);
  const float mean = static_cast<float>((0.25 + 0.25 + 1.0 + 0.5 + 0.8) / 6.0);
  EXPECT_FLOAT_EQ(n.scales[0], mean);
  EXPECT_EQ(n.codes, (std::vector<int8_t>{1, -1, 1, 1, -1, 0}));
  // All-zero weights: the mean is clamped to 1e-5, codes are all 0.
  std::vector<float> z(8, 0.0f);
  TernaryMatrix zz = quantize_absmean(z, 2, 4);
  EXPECT_EQ(zz.scales, std::vector<float>{1e-5f});
  for (int8_t c : zz.codes) EXPECT_EQ(c, 0);
  EXPECT_THROW(quantize_absmean(z, 3, 4), Error);
}

}  // namespace
}  // namespace onebit
