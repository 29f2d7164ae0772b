#include "kernels/cpu/cpu_kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/base/error.h"
#include "test_util.h"

namespace onebit::cpu {
namespace {

using testing::random_floats;
using testing::random_ternary;
using testing::same_bits;
using testing::supported_isas;

// The most literal reading of BitNet activation quantization, written independently of the kernels.
struct RefQuant {
  std::vector<int8_t> q;
  float s;
  int32_t sum;
};
RefQuant ref_quantize(const float* x, int64_t n) {
  RefQuant r;
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  r.s = 127.0f / std::max(amax, 1e-5f);
  r.sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(x[i] * r.s);  // the float product, as torch computes it
    double rounded = std::floor(v);
    const double frac = v - rounded;
    if (frac > 0.5 || (frac == 0.5 && std::fmod(rounded, 2.0) != 0.0)) rounded += 1.0;  // half to even
    rounded = std::clamp(rounded, -128.0, 127.0);
    r.q.push_back(static_cast<int8_t>(rounded));
    r.sum += r.q.back();
  }
  return r;
}

TEST(CpuFeatures, NamesAndOverride) {
  EXPECT_EQ(isa_from_name("avx2"), Isa::kAvx2);
  EXPECT_EQ(isa_name(Isa::kAvx512), "avx512");
  EXPECT_THROW(isa_from_name("sse9"), Error);
  EXPECT_TRUE(isa_supported(Isa::kScalar));
  EXPECT_TRUE(isa_supported(active_isa()));
  EXPECT_EQ(resolve_isa(Isa::kScalar), Isa::kScalar);
  // This project's dev and CI machines have AVX-512 VNNI; make sure the fast path is really tested.
  if (std::getenv("ONEBIT_CPU_ISA") == nullptr && __builtin_cpu_supports("avx512vnni")) {
    EXPECT_EQ(best_isa(), Isa::kAvx512);
  }
}

TEST(QuantizeActivations, MatchesReferenceOnRandomRows) {
  std::mt19937 rng(7);
  for (Isa isa : supported_isas()) {
    for (int64_t n : {1, 7, 16, 31, 32, 33, 100, 2560, 6911}) {
      const auto x = random_floats(rng, n, 3.0f);
      QuantizedActs q;
      quantize_activations(x.data(), 1, n, n, q, isa);
      const RefQuant r = ref_quantize(x.data(), n);
      ASSERT_TRUE(same_bits(q.scale[0], r.s)) << isa_name(isa) << " n=" << n;
      ASSERT_EQ(q.sum[0], r.sum) << isa_name(isa) << " n=" << n;
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(q.row(0)[i], r.q[i]) << isa_name(isa) << " n=" << n << " i=" << i;
      for (int64_t i = n; i < q.stride(); ++i) ASSERT_EQ(q.row(0)[i], 0) << "padding";
      EXPECT_EQ(q.stride() % 64, 0);
    }
  }
}

TEST(QuantizeActivations, EdgeCases) {
  for (Isa isa : supported_isas()) {
    SCOPED_TRACE(std::string(isa_name(isa)));
    QuantizedActs q;
    // All zeros: scale from the 1e-5 clamp, all codes 0.
    std::vector<float> zeros(37, 0.0f);
    quantize_activations(zeros.data(), 1, 37, 37, q, isa);
    EXPECT_EQ(q.scale[0], 127.0f / 1e-5f);
    EXPECT_EQ(q.sum[0], 0);
    for (int i = 0; i < 37; ++i) EXPECT_EQ(q.row(0)[i], 0);

    // Ties: amax 127 makes s exactly 1, so x*s is exactly k + 0.5; torch.round goes to even.
    std::vector<float> ties = {127.0f, 0.5f, 1.5f, 2.5f, 3.5f, -0.5f, -1.5f, -2.5f, 126.5f, -126.5f, 4.5f,
                               -3.5f, 0.49999997f, 5.5f, 6.5f, -127.0f, 7.5f, 8.5f, 9.5f, 10.5f};
    const std::vector<int8_t> expect = {127, 0, 2, 2, 4, 0, -2, -2, 126, -126, 4, -4, 0, 6, 6, -127, 8, 8, 10, 10};
    // Twice over, so the values go through both the SIMD body and the scalar/masked tail.
    for (int64_t n : {20, 40}) {
      std::vector<float> x(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) x[i] = ties[i % 20];
      quantize_activations(x.data(), 1, n, n, q, isa);
      EXPECT_EQ(q.scale[0], 1.0f);
      int32_t sum = 0;
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_EQ(q.row(0)[i], expect[i % 20]) << "x=" << x[i];
        sum += expect[i % 20];
      }
      EXPECT_EQ(q.sum[0], sum);
    }

    // Huge and tiny magnitudes.
    const float big = std::numeric_limits<float>::max() / 2;
    std::vector<float> huge = {big, -big, big / 254, 1.0f, -big / 2};
    quantize_activations(huge.data(), 1, 5, 5, q, isa);
    EXPECT_EQ(q.row(0)[0], 127);
    EXPECT_EQ(q.row(0)[1], -127);
    EXPECT_EQ(q.row(0)[2], ref_quantize(huge.data(), 5).q[2]);
    EXPECT_EQ(q.row(0)[3], 0);
    EXPECT_EQ(q.row(0)[4], -64);  // -63.5 -> -64 (even)
    std::vector<float> tiny(50, 3e-7f);
    tiny[3] = -1e-38f;
    quantize_activations(tiny.data(), 1, 50, 50, q, isa);
    EXPECT_EQ(q.row(0)[0], 4);  // 3e-7 * 1.27e7 = 3.81
    EXPECT_EQ(q.row(0)[3], 0);
  }
}

// y from the original codes, no packing involved: the reference for every GEMV/GEMM.
std::vector<float> ref_gemm(const TernaryMatrix& m, const QuantizedActs& x) {
  std::vector<float> y(static_cast<size_t>(x.rows() * m.rows));
  for (int64_t n = 0; n < x.rows(); ++n) {
    for (int64_t r = 0; r < m.rows; ++r) {
      int32_t acc = 0;
      for (int64_t c = 0; c < m.cols; ++c) acc += m.codes[r * m.cols + c] * x.row(n)[c];
      const float ws = m.scales.size() == 1 ? m.scales[0] : m.scales[r];
      y[n * m.rows + r] = static_cast<float>(acc) * (ws / x.scale[n]);
    }
  }
  return y;
}

TEST(TernaryGemm, BitIdenticalToReferenceForEveryIsaAndShape) {
  std::mt19937 rng(42);
  ThreadPool pool(3);
  std::uniform_int_distribution<int64_t> dim(1, 300);
  for (int iter = 0; iter < 12; ++iter) {
    const int64_t rows = iter == 0 ? 640 : dim(rng), cols = iter == 0 ? 2560 : dim(rng);
    const TernaryMatrix m = random_ternary(rng, rows, cols, iter % 2 == 0);
    const PackedTernary p = repack_for_cpu(m);
    for (int64_t n : {1, 2, 3, 5, 8, 9, 13, 16, 17}) {
      const auto x = random_floats(rng, n * cols);
      QuantizedActs q;
      quantize_activations(x.data(), n, cols, cols, q, Isa::kScalar);
      const auto expect = ref_gemm(m, q);
      for (Isa isa : supported_isas()) {
        std::vector<float> y(static_cast<size_t>(n * rows) + 1, -7.0f);  // +1 sentinel: no overrun
        ternary_gemm(p, q, y.data(), rows, iter % 3 == 0 ? nullptr : &pool, isa);
        for (int64_t i = 0; i < n * rows; ++i) {
          ASSERT_TRUE(same_bits(y[i], expect[i])) << isa_name(isa) << " " << rows << "x" << cols << " n=" << n
                                                  << " i=" << i << ": " << y[i] << " vs " << expect[i];
        }
        ASSERT_EQ(y.back(), -7.0f);
        if (n <= 3) {
          std::vector<float> g(static_cast<size_t>(rows) + 1, -7.0f);
          ternary_gemv(p, q, g.data(), &pool, isa, n - 1);
          for (int64_t r = 0; r < rows; ++r) ASSERT_TRUE(same_bits(g[r], expect[(n - 1) * rows + r])) << isa_name(isa);
          ASSERT_EQ(g.back(), -7.0f);
        }
      }
    }
  }
}

// Extreme sums: all weights +1 (or -1) against all activations at the int8 limits, long rows.
TEST(TernaryGemm, ExtremeValuesStayExact) {
  for (int sign : {-1, 1}) {
    TernaryMatrix m;
    m.rows = 33;
    m.cols = 6912 + 5;
    m.codes.assign(static_cast<size_t>(m.rows * m.cols), static_cast<int8_t>(sign));
    m.scales = {1.0f};
    const PackedTernary p = repack_for_cpu(m);
    std::vector<float> x(static_cast<size_t>(m.cols), -1.0f);  // quantizes to -127 everywhere
    x[0] = 1.0f;
    QuantizedActs q;
    quantize_activations(x.data(), 1, m.cols, m.cols, q, Isa::kScalar);
    const auto expect = ref_gemm(m, q);
    for (Isa isa : supported_isas()) {
      std::vector<float> y(static_cast<size_t>(m.rows));
      ternary_gemv(p, q, y.data(), nullptr, isa);
      for (int64_t r = 0; r < m.rows; ++r) ASSERT_TRUE(same_bits(y[r], expect[r])) << isa_name(isa);
    }
  }
}

TEST(TernaryGemm, RejectsMismatchedShapes) {
  std::mt19937 rng(3);
  const PackedTernary p = repack_for_cpu(random_ternary(rng, 20, 40, false));
  QuantizedActs q(2, 41);
  std::vector<float> y(100);
  EXPECT_THROW(ternary_gemm(p, q, y.data(), 20), Error);
  q.resize(2, 40);
  EXPECT_THROW(ternary_gemv(p, q, y.data(), nullptr, Isa::kAuto, 2), Error);
}

TEST(FloatKernels, RmsNormMatchesDoubleReferenceAndIsBitIdenticalAcrossIsas) {
  std::mt19937 rng(11);
  for (int64_t n : {1, 5, 16, 17, 100, 128, 2560, 6912, 6913}) {
    const auto x = random_floats(rng, 3 * n);
    const auto w = random_floats(rng, n);
    std::vector<float> ref(3 * n);
    rmsnorm(x.data(), w.data(), 3, n, 1e-5f, ref.data(), Isa::kScalar);
    for (int64_t row = 0; row < 3; ++row) {  // the reference itself, against double math
      double ss = 0;
      for (int64_t i = 0; i < n; ++i) ss += double(x[row * n + i]) * x[row * n + i];
      const double r = 1.0 / std::sqrt(ss / n + 1e-5);
      for (int64_t i = 0; i < n; ++i) {
        const double e = x[row * n + i] * r * w[i];
        ASSERT_NEAR(ref[row * n + i], e, 1e-5 * std::fabs(e) + 1e-6) << n;
      }
    }
    for (Isa isa : supported_isas()) {
      std::vector<float> y(3 * n);
      rmsnorm(x.data(), w.data(), 3, n, 1e-5f, y.data(), isa);
      for (int64_t i = 0; i < 3 * n; ++i) ASSERT_TRUE(same_bits(y[i], ref[i])) << isa_name(isa) << " n=" << n;

      // Fused norm + quantize == norm, then quantize.
      QuantizedActs fused, split;
      rmsnorm_quantize(x.data(), w.data(), 3, n, 1e-5f, fused, isa);
      quantize_activations(ref.data(), 3, n, n, split, Isa::kScalar);
      for (int64_t row = 0; row < 3; ++row) {
        ASSERT_TRUE(same_bits(fused.scale[row], split.scale[row])) << isa_name(isa) << " n=" << n;
        ASSERT_EQ(fused.sum[row], split.sum[row]) << isa_name(isa);
        for (int64_t i = 0; i < fused.stride(); ++i) ASSERT_EQ(fused.row(row)[i], split.row(row)[i]) << isa_name(isa);
      }
    }
  }
}

// rmsnorm_quantize_rows (what the engine runs on the pool's threads, a range of rows each) over
// random cuts of the rows == one rmsnorm_quantize over all of them, padding included; a range
// outside the buffer or with the wrong column count is an error.
TEST(FloatKernels, RmsNormQuantizeRowsInPiecesEqualsTheWhole) {
  std::mt19937 rng(12);
  for (int64_t cols : {7, 64, 100, 2560}) {
    const int64_t rows = 37;
    const auto x = random_floats(rng, rows * cols);
    const auto w = random_floats(rng, cols);
    for (Isa isa : supported_isas()) {
      QuantizedActs whole, pieces;
      rmsnorm_quantize(x.data(), w.data(), rows, cols, 1e-5f, whole, isa);
      pieces.resize(rows, cols);
      for (int64_t i = 0; i < rows; ++i) std::memset(pieces.row(i), 0x5a, static_cast<size_t>(pieces.stride()));
      for (int64_t r0 = 0; r0 < rows;) {  // pieces of 1..9 rows
        const int64_t r1 = std::min(rows, r0 + 1 + static_cast<int64_t>(rng() % 9));
        rmsnorm_quantize_rows(x.data(), w.data(), r0, r1, cols, 1e-5f, pieces, isa);
        r0 = r1;
      }
      for (int64_t i = 0; i < rows; ++i) {
        ASSERT_TRUE(same_bits(pieces.scale[i], whole.scale[i])) << isa_name(isa) << " cols=" << cols << " row " << i;
        ASSERT_EQ(pieces.sum[i], whole.sum[i]) << isa_name(isa);
        for (int64_t c = 0; c < whole.stride(); ++c) ASSERT_EQ(pieces.row(i)[c], whole.row(i)[c]) << isa_name(isa);
      }
    }
    QuantizedActs small(rows - 1, cols);
    EXPECT_THROW(rmsnorm_quantize_rows(x.data(), w.data(), 0, rows, cols, 1e-5f, small), Error);
    EXPECT_THROW(rmsnorm_quantize_rows(x.data(), w.data(), 0, 1, cols + 1, 1e-5f, small), Error);
  }
}

TEST(FloatKernels, Relu2MulDotAxpy) {
  std::mt19937 rng(5);
  for (int64_t n : {1, 3, 8, 15, 16, 33, 128, 1000, 6912}) {
    const auto a = random_floats(rng, n), b = random_floats(rng, n), c = random_floats(rng, n);
    // relu2: exact elementwise definition.
    std::vector<float> expect(n);
    for (int64_t i = 0; i < n; ++i) {
      const float g = a[i] > 0 ? a[i] : 0.0f;
      expect[i] = (g * g) * b[i];
    }
    // dot: against double, and bit-identical across ISAs.
    double dd = 0;
    for (int64_t i = 0; i < n; ++i) dd += double(a[i]) * b[i];
    const float dref = dot(a.data(), b.data(), n, Isa::kScalar);
    double mag = 0;
    for (int64_t i = 0; i < n; ++i) mag += std::fabs(double(a[i]) * b[i]);
    EXPECT_NEAR(dref, dd, 1e-6 * mag + 1e-6);
    for (Isa isa : supported_isas()) {
      std::vector<float> out(n);
      relu2_mul(a.data(), b.data(), n, out.data(), isa);
      for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(same_bits(out[i], expect[i])) << isa_name(isa);
      out = a;
      relu2_mul(out.data(), b.data(), n, out.data(), isa);  // in place
      for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(same_bits(out[i], expect[i])) << isa_name(isa);

      ASSERT_TRUE(same_bits(dot(a.data(), b.data(), n, isa), dref)) << isa_name(isa) << " n=" << n;

      std::vector<float> y = c;
      axpy(0.37f, a.data(), y.data(), n, isa);
      for (int64_t i = 0; i < n; ++i) {
        const float t = 0.37f * a[i];
        ASSERT_TRUE(same_bits(y[i], c[i] + t)) << isa_name(isa);
      }
    }
  }
}

}  // namespace
}  // namespace onebit::cpu
