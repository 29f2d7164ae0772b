#include "core/sampler/deterministic_exp.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>

namespace onebit {
namespace {

TEST(DeterministicExp, CloseToStdExp) {
  std::mt19937_64 rng(1);
  for (int i = 0; i < 200000; ++i) {
    const double x = -static_cast<double>(rng() >> 11) * 0x1.0p-53 * 699.0;
    const double want = std::exp(x);
    ASSERT_NEAR(deterministic_exp(x), want, want * 1e-13) << "x = " << x;
  }
  EXPECT_EQ(deterministic_exp(0.0), 1.0);  // the max logit weighs exactly 1
  EXPECT_EQ(deterministic_exp(-700.0), 0.0);
  EXPECT_EQ(deterministic_exp(-1e30), 0.0);
  EXPECT_EQ(deterministic_exp(-std::numeric_limits<double>::infinity()), 0.0);
}

TEST(DeterministicExp, PinnedBits) {
  // These bits must come out on every platform and compiler; a difference means the build fused
  // multiply-adds or otherwise changed the arithmetic, and seeded sampling would stop matching.
  const std::pair<double, uint64_t> cases[] = {
      {-0.5, 0x3fe368b2fc6f960aull},  {-1.0, 0x3fd78b56362cef2bull},   {-3.25, 0x3fa3da368521902cull},
      {-10.0, 0x3f07cd79b5647c90ull}, {-87.3, 0x38109874c0b9cabdull},  {-699.0, 0x00e78694fe9f7324ull},
      {-1e-9, 0x3fefffffff768fa1ull},
  };
  for (const auto& [x, bits] : cases) EXPECT_EQ(std::bit_cast<uint64_t>(deterministic_exp(x)), bits) << "x = " << x;
}

TEST(DeterministicExp, EightLanesMatchOneLane) {
  std::mt19937_64 rng(2);
  double x[8], y[8];
  for (int i = 0; i < 20000; ++i) {
    for (double& v : x) v = -static_cast<double>(rng() >> 11) * 0x1.0p-53 * 800.0;
    if (i % 7 == 0) x[i % 8] = -std::numeric_limits<double>::infinity();
    deterministic_exp8(x, y);
    for (int j = 0; j < 8; ++j) ASSERT_EQ(std::bit_cast<uint64_t>(y[j]), std::bit_cast<uint64_t>(deterministic_exp(x[j])));
  }
}

}  // namespace
}  // namespace onebit
