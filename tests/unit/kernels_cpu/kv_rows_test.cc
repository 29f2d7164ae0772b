// KV cache rows to fp32 (kv_rows_f16_to_f32 / kv_rows_q8_to_f32 / kv_rows_q4_to_f32): on fresh
// random rows, every ISA gives bit for bit the values of the plain decoder written out below from
// the layouts cpu_kernels.h documents (f16: every bit pattern but NaN; q8 / q4: scale * code).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/base/error.h"
#include "core/base/half.h"
#include "kernels/cpu/cpu_kernels.h"
#include "test_util.h"

namespace onebit::cpu {
namespace {

using testing::same_bits;
using testing::supported_isas;

// Rows in the kernels' layouts with random codes and scales, and the same rows dequantized
// (x = scale * code), written here independently of the engine's quantizer.
struct QuantRows {
  std::vector<uint8_t> bytes;  // n rows of row_bytes
  std::vector<float> values;   // n rows of d
  int64_t row_bytes = 0;
};

QuantRows random_q8(std::mt19937& rng, int64_t n, int64_t d, int64_t extra_stride) {
  QuantRows r;
  const int64_t so = (d + 3) / 4 * 4;
  r.row_bytes = so + 4 + extra_stride;
  r.bytes.assign(static_cast<size_t>(n * r.row_bytes), 0xAB);  // padding and stride gaps hold junk
  r.values.resize(static_cast<size_t>(n * d));
  std::uniform_int_distribution<int> code(-128, 127);
  std::uniform_real_distribution<float> scale(0.001f, 0.1f);
  for (int64_t j = 0; j < n; ++j) {
    uint8_t* row = r.bytes.data() + j * r.row_bytes;
    const float s = scale(rng);
    std::memcpy(row + so, &s, 4);
    for (int64_t i = 0; i < d; ++i) {
      const int8_t c = static_cast<int8_t>(code(rng));
      row[i] = static_cast<uint8_t>(c);
      r.values[static_cast<size_t>(j * d + i)] = s * static_cast<float>(c);
    }
  }
  return r;
}

QuantRows random_q4(std::mt19937& rng, int64_t n, int64_t d, int64_t group, int64_t extra_stride) {
  QuantRows r;
  r.row_bytes = d / 2 + d / group * 4 + extra_stride;
  r.bytes.assign(static_cast<size_t>(n * r.row_bytes), 0xCD);
  r.values.resize(static_cast<size_t>(n * d));
  std::uniform_int_distribution<int> nibble(0, 15);
  std::uniform_real_distribution<float> scale(0.01f, 1.0f);
  for (int64_t j = 0; j < n; ++j) {
    uint8_t* row = r.bytes.data() + j * r.row_bytes;
    std::vector<float> s(static_cast<size_t>(d / group));
    for (int64_t g = 0; g < d / group; ++g) {
      s[static_cast<size_t>(g)] = scale(rng);
      std::memcpy(row + d / 2 + 4 * g, &s[static_cast<size_t>(g)], 4);
    }
    for (int64_t c = 0; c < d; c += 16)
      for (int64_t m = 0; m < 8; ++m) {
        const int lo = nibble(rng), hi = nibble(rng);  // values c + m and c + m + 8
        row[c / 2 + m] = static_cast<uint8_t>(lo | (hi << 4));
        r.values[static_cast<size_t>(j * d + c + m)] = s[static_cast<size_t>((c + m) / group)] * static_cast<float>(lo - 8);
        r.values[static_cast<size_t>(j * d + c + m + 8)] =
            s[static_cast<size_t>((c + m + 8) / group)] * static_cast<float>(hi - 8);
      }
  }
  return r;
}

QuantRows random_f16(std::mt19937& rng, int64_t n, int64_t d, int64_t extra_stride) {
  QuantRows r;
  r.row_bytes = 2 * d + extra_stride;
  r.bytes.assign(static_cast<size_t>(n * r.row_bytes), 0xEF);
  r.values.resize(static_cast<size_t>(n * d));
  std::uniform_int_distribution<int> bits(0, 0xffff);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < d; ++i) {
      uint16_t h = static_cast<uint16_t>(bits(rng));
      if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) h &= 0xfc00;  // NaN payloads aside: +-inf instead
      std::memcpy(r.bytes.data() + j * r.row_bytes + 2 * i, &h, 2);
      r.values[static_cast<size_t>(j * d + i)] = f16_to_f32(h);  // every half: normal, subnormal, zero, inf
    }
  return r;
}

void expect_same(const std::vector<float>& got, const std::vector<float>& want, const char* what, int64_t d,
                 int64_t n, Isa isa) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_TRUE(same_bits(got[i], want[i])) << what << " d=" << d << " rows=" << n << " isa=" << isa_name(isa)
                                            << " value " << i << ": " << got[i] << " vs " << want[i];
}

TEST(KvRowKernels, F16RowsConvertExactlyOnEveryIsa) {
  std::mt19937 rng(20261127);
  for (int64_t d : {16, 22, 40, 64, 128, 200})
    for (int64_t n : {1, 3, 17})
      for (int64_t extra : {0, 6}) {
        const QuantRows r = random_f16(rng, n, d, extra);
        for (Isa isa : supported_isas()) {
          std::vector<float> out(static_cast<size_t>(n * d), -1.0f);
          kv_rows_f16_to_f32(r.bytes.data(), r.row_bytes, n, d, out.data(), isa);
          expect_same(out, r.values, "f16", d, n, isa);
        }
      }
}

TEST(KvRowKernels, Q8RowsDequantizeAsScaleTimesCodeOnEveryIsa) {
  std::mt19937 rng(20261128);
  for (int64_t d : {16, 22, 40, 64, 128, 200})
    for (int64_t n : {1, 3, 17})
      for (int64_t extra : {0, 12}) {
        const QuantRows r = random_q8(rng, n, d, extra);
        for (Isa isa : supported_isas()) {
          std::vector<float> out(static_cast<size_t>(n * d), -1.0f);
          kv_rows_q8_to_f32(r.bytes.data(), r.row_bytes, n, d, out.data(), isa);
          expect_same(out, r.values, "q8", d, n, isa);
        }
      }
}

TEST(KvRowKernels, Q4RowsDequantizeAsScaleTimesCodeOnEveryIsa) {
  std::mt19937 rng(20261129);
  for (int64_t d : {16, 32, 64, 128, 256})
    for (int64_t group : {16, 32}) {
      if (group > d) continue;
      for (int64_t n : {1, 5, 17})
        for (int64_t extra : {0, 8}) {
          const QuantRows r = random_q4(rng, n, d, group, extra);
          for (Isa isa : supported_isas()) {
            std::vector<float> out(static_cast<size_t>(n * d), -1.0f);
            kv_rows_q4_to_f32(r.bytes.data(), r.row_bytes, n, d, group, out.data(), isa);
            expect_same(out, r.values, group == 16 ? "q4 group 16" : "q4 group 32", d, n, isa);
          }
        }
    }
}

// The q4r rotation: every ISA equals the scalar butterflies bit for bit, and the scalar equals the
// matrix product with the Sylvester-Hadamard matrix / sqrt(d) to float rounding.
TEST(Hadamard, EveryIsaGivesTheScalarBitsAndTheMatrixProduct) {
  std::mt19937 rng(20261130);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t d = 1; d <= 512; d *= 2) {
    std::vector<float> x(static_cast<size_t>(d));
    for (auto& v : x) v = nd(rng) * (rng() % 16 == 0 ? 30.0f : 1.0f);
    std::vector<float> want = x;
    hadamard(want.data(), d, Isa::kScalar);
    for (int64_t i = 0; i < d; ++i) {
      double s = 0, mag = 0;
      for (int64_t j = 0; j < d; ++j) {
        const double h = (__builtin_popcountll(static_cast<unsigned long long>(i & j)) % 2 ? -1.0 : 1.0);
        s += h * x[static_cast<size_t>(j)];
        mag += std::fabs(static_cast<double>(x[static_cast<size_t>(j)]));
      }
      ASSERT_NEAR(want[static_cast<size_t>(i)], s / std::sqrt(static_cast<double>(d)), 1e-6 * mag) << d << " " << i;
    }
    for (Isa isa : supported_isas()) {
      std::vector<float> got = x;
      hadamard(got.data(), d, isa);
      expect_same(got, want, "hadamard", d, 1, isa);
    }
  }
  std::vector<float> x(48);
  EXPECT_THROW(hadamard(x.data(), 48), Error);
  EXPECT_THROW(hadamard(x.data(), 0), Error);
}

TEST(KvRowKernels, Q4RejectsBadShapes) {
  std::vector<uint8_t> rows(256);
  std::vector<float> out(256);
  EXPECT_THROW(kv_rows_q4_to_f32(rows.data(), 40, 1, 24, 16, out.data()), Error);  // d % 16
  EXPECT_THROW(kv_rows_q4_to_f32(rows.data(), 40, 1, 64, 24, out.data()), Error);  // group % 16
  EXPECT_THROW(kv_rows_q4_to_f32(rows.data(), 40, 1, 32, 64, out.data()), Error);  // group > d
}

}  // namespace
}  // namespace onebit::cpu
