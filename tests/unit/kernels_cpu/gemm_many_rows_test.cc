// The many-token-row paths: the tiled AVX-512 GEMM (weights unpacked once per 64-row tile into
// per-thread scratch, 4 row groups x 6 token rows of accumulators; from 32 token rows on, with the
// last column blocks summed through int16 lookup tables of 32 token rows beside it, in passes of
// 256 weight rows; from 128 token rows on, ternary_gemm splits the token rows into chunks, one
// table build each) and the attention helpers dot_rows / axpy_rows and their several-query forms
// dot_rows_multi / axpy_rows_multi. Each is checked bit for bit against a reference that does not
// share its code: the GEMM against sums over the original int8 codes, the attention helpers
// against the per-key dot / axpy loops they replace, the several-query forms against one scalar
// dot_rows / axpy_rows per query (on every ISA this CPU runs).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "kernels/cpu/cpu_kernels.h"
#include "test_util.h"

namespace onebit::cpu {
namespace {

using testing::random_floats;
using testing::random_ternary;
using testing::same_bits;
using testing::supported_isas;

// y[n * y_stride + r] from the codes, no packing involved.
void ref_gemm(const TernaryMatrix& m, const QuantizedActs& x, std::vector<float>& y, int64_t y_stride) {
  for (int64_t n = 0; n < x.rows(); ++n) {
    for (int64_t r = 0; r < m.rows; ++r) {
      int64_t acc = 0;  // int64: independent of the kernels' int32 argument
      for (int64_t c = 0; c < m.cols; ++c) acc += int64_t{m.codes[r * m.cols + c]} * x.row(n)[c];
      const float ws = m.scales.size() == 1 ? m.scales[0] : m.scales[r];
      y[n * y_stride + r] = static_cast<float>(acc) * (ws / x.scale[n]);
    }
  }
}

void expect_gemm_matches(const TernaryMatrix& m, const QuantizedActs& q, ThreadPool* pool, const char* what) {
  const PackedTernary p = repack_for_cpu(m);
  const int64_t n = q.rows(), y_stride = m.rows + 3;  // gaps between output rows must stay untouched
  std::vector<float> expect(static_cast<size_t>(n * y_stride + 1), -7.0f);
  ref_gemm(m, q, expect, y_stride);
  for (Isa isa : supported_isas()) {
    std::vector<float> y(expect.size(), -7.0f);
    ternary_gemm(p, q, y.data(), y_stride, pool, isa);
    for (size_t i = 0; i < y.size(); ++i) {
      ASSERT_TRUE(same_bits(y[i], expect[i])) << what << " " << isa_name(isa) << " " << m.rows << "x" << m.cols
                                              << " n=" << n << " i=" << i << ": " << y[i] << " vs " << expect[i];
    }
  }
}

// Every (row groups in the last tile) x (token rows in the last token tile) combination, odd shapes,
// 1..3 threads: tiles are 4 row groups = 64 rows, token tiles 6 rows, table blocks 32 rows (the
// last one partial), table passes 256 rows; from 32 token rows on, columns from 113 on (8 blocks)
// have a table share.
TEST(TernaryGemmManyRows, BitIdenticalOnFreshRandomShapes) {
  std::mt19937 rng(20261127);
  ThreadPool pool1(1), pool2(2), pool3(3);
  ThreadPool* pools[] = {&pool1, &pool2, &pool3, nullptr};
  std::uniform_int_distribution<int64_t> odd_cols(1, 700);
  // rows: 1 group, 2, 3, 4 (one full tile), 4 + 1..3, 8, and non-multiples of 16 throughout.
  const int64_t row_cases[] = {1, 17, 40, 63, 64, 65, 100, 129, 191, 200, 256, 333};
  int it = 0;
  for (int64_t rows : row_cases) {
    const int64_t cols = it == 0 ? 2560 : odd_cols(rng);
    const TernaryMatrix m = random_ternary(rng, rows, cols, it % 2 == 1);
    for (int64_t n : {4, 5, 7, 11, 12, 23, 30, 31, 41, 60, 67}) {
      const auto x = random_floats(rng, n * cols, 2.0f);
      QuantizedActs q;
      quantize_activations(x.data(), n, cols, cols, q, Isa::kScalar);
      expect_gemm_matches(m, q, pools[(it + n) % 4], "random");
    }
    ++it;
  }
}

// From 128 token rows on the token rows are split into chunks (also with one thread), each chunk
// building its own tables and walking all weight rows: odd token counts (partial 32-row table
// blocks and 6-row VNNI tiles in every chunk), several table passes with a partial last one,
// column counts with and without a table share, table chunks ending inside a step-loop iteration.
TEST(TernaryGemmManyRows, TokenChunksAndTablePasses) {
  std::mt19937 rng(4242);
  ThreadPool pool1(1), pool2(2), pool3(3);
  ThreadPool* pools[] = {&pool1, &pool2, &pool3};
  struct Case {
    int64_t rows, cols, n;
  };
  const Case cases[] = {{600, 700, 128}, {257, 1000, 131}, {48, 2560, 200}, {300, 333, 256},
                        {70, 6917, 130}, {33, 90, 140},   {513, 500, 187}};
  int it = 0;
  for (const Case& c : cases) {
    const TernaryMatrix m = random_ternary(rng, c.rows, c.cols, it % 2 == 0);
    const auto x = random_floats(rng, c.n * c.cols, 1.5f);
    QuantizedActs q;
    quantize_activations(x.data(), c.n, c.cols, c.cols, q, Isa::kScalar);
    expect_gemm_matches(m, q, pools[it % 3], "token chunks");
    ++it;
  }
}

// A prefill-sized batch on a real projection shape (2B-4T k/v: 640 x 2560), and the widest one
// (down: 2560 x 6912 -> here 80 x 6912 to keep the reference fast).
TEST(TernaryGemmManyRows, ModelShapes) {
  std::mt19937 rng(5);
  ThreadPool pool(2);
  for (auto [rows, cols, n] : {std::tuple<int64_t, int64_t, int64_t>{640, 2560, 64}, {80, 6912, 29}}) {
    const TernaryMatrix m = random_ternary(rng, rows, cols, false);
    const auto x = random_floats(rng, n * cols);
    QuantizedActs q;
    quantize_activations(x.data(), n, cols, cols, q);
    expect_gemm_matches(m, q, &pool, "model shape");
  }
}

// Extreme sums through the tiled and table paths: all weights +1 or -1, activation codes at -128
// and +127 (written by hand: quantization itself never produces -128), the widest BitNet rows + 5.
// With n = 36 and 130 (token chunks) every table entry used is +-384 or +-381, the int16 bound the
// flush interval rests on (80 entries per int16 sum: |sum| <= 30,720).
TEST(TernaryGemmManyRows, ExtremeValuesStayExact) {
  for (int sign : {-1, 1}) {
    for (int8_t code : {int8_t{-128}, int8_t{127}}) {
      TernaryMatrix m;
      m.rows = 70;
      m.cols = 6912 + 5;
      m.codes.assign(static_cast<size_t>(m.rows * m.cols), static_cast<int8_t>(sign));
      m.codes[5] = 0;  // one row not quite uniform
      m.scales = {1.0f};
      for (int64_t n : {7, 36, 130}) {
      std::vector<float> x(static_cast<size_t>(n * m.cols), 1.0f);
      QuantizedActs q;
      quantize_activations(x.data(), n, m.cols, m.cols, q);
      for (int64_t i = 0; i < n; ++i) {
        int32_t sum = 0;
        for (int64_t c = 0; c < m.cols; ++c) {
          const int8_t v = (i % 2 == 0 || c % 3 != 0) ? code : static_cast<int8_t>(-code - 1);
          q.row(i)[c] = v;
          sum += v;
        }
        q.sum[static_cast<size_t>(i)] = sum;
        q.scale[static_cast<size_t>(i)] = 1.0f + static_cast<float>(i);
      }
      expect_gemm_matches(m, q, nullptr, "extreme");
      }
    }
  }
}

// Batches of 2 and 3 rows take the per-block path, 4 and more the tiled one: both must agree with
// the GEMV of each row (the decode path).
TEST(TernaryGemmManyRows, AgreesWithGemvRowByRow) {
  std::mt19937 rng(9);
  const TernaryMatrix m = random_ternary(rng, 150, 333, true);
  const PackedTernary p = repack_for_cpu(m);
  for (int64_t n : {2, 3, 4, 9}) {
    const auto x = random_floats(rng, n * m.cols);
    QuantizedActs q;
    quantize_activations(x.data(), n, m.cols, m.cols, q);
    for (Isa isa : supported_isas()) {
      std::vector<float> y(static_cast<size_t>(n * m.rows));
      ternary_gemm(p, q, y.data(), m.rows, nullptr, isa);
      for (int64_t i = 0; i < n; ++i) {
        std::vector<float> g(static_cast<size_t>(m.rows));
        ternary_gemv(p, q, g.data(), nullptr, isa, i);
        for (int64_t r = 0; r < m.rows; ++r) ASSERT_TRUE(same_bits(g[r], y[i * m.rows + r])) << isa_name(isa);
      }
    }
  }
}

TEST(AttentionRows, DotRowsAndAxpyRowsEqualThePerKeyLoops) {
  std::mt19937 rng(77);
  for (int64_t d : {1, 7, 15, 16, 17, 64, 100, 128, 129, 200, 256, 300}) {
    for (int64_t n_keys : {0, 1, 3, 4, 5, 8, 17, 66}) {
      const int64_t stride = d + (d % 3);  // also rows that are not 64-byte aligned
      const auto q = random_floats(rng, d);
      const auto k = random_floats(rng, std::max<int64_t>(n_keys * stride, 1));
      std::vector<float> p = random_floats(rng, std::max<int64_t>(n_keys, 1), 0.3f);
      const auto out0 = random_floats(rng, d + 1);
      for (Isa isa : supported_isas()) {
        SCOPED_TRACE(std::string(isa_name(isa)) + " d=" + std::to_string(d) + " keys=" + std::to_string(n_keys));
        std::vector<float> s(static_cast<size_t>(n_keys) + 1, -7.0f);
        dot_rows(q.data(), k.data(), stride, n_keys, d, s.data(), isa);
        for (int64_t j = 0; j < n_keys; ++j) ASSERT_TRUE(same_bits(s[j], dot(q.data(), k.data() + j * stride, d, isa)));
        ASSERT_EQ(s.back(), -7.0f);
        std::vector<float> a = out0, b = out0;
        axpy_rows(p.data(), k.data(), stride, n_keys, d, a.data(), isa);
        for (int64_t j = 0; j < n_keys; ++j) axpy(p[j], k.data() + j * stride, b.data(), d, isa);
        for (int64_t i = 0; i <= d; ++i) ASSERT_TRUE(same_bits(a[i], b[i])) << "i=" << i;  // [d] untouched
      }
      // And across ISAs (each ISA's dot/axpy is already checked against the scalar reference).
      std::vector<float> s0(static_cast<size_t>(n_keys) + 1), s1(s0.size());
      dot_rows(q.data(), k.data(), stride, n_keys, d, s0.data(), Isa::kScalar);
      dot_rows(q.data(), k.data(), stride, n_keys, d, s1.data());
      for (int64_t j = 0; j < n_keys; ++j) ASSERT_TRUE(same_bits(s0[j], s1[j]));
    }
  }
}

// dot_rows_multi / axpy_rows_multi (several queries against one tile of keys) against the
// reference they must equal bit for bit, dot_rows / axpy_rows called once per query, on fresh
// random inputs each run (the seed is printed on failure): every query-block remainder (the SIMD
// kernels take 4 / 2 queries at a time, AVX-512 in sweeps of 64), key counts around their 4 / 2-key
// steps, head sizes around the 16-lane chunks and the 64-column output blocks, unaligned and
// scattered query rows, output rows with junk between them that must stay untouched.
TEST(AttentionRows, MultiQueryKernelsEqualOneCallPerQuery) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> pick_d(1, 300), pick_keys(0, 70), pick_q(1, 19);
  std::vector<int64_t> dims = {1, 15, 16, 17, 63, 64, 65, 100, 128, 129, 256};
  for (int extra = 0; extra < 12; ++extra) dims.push_back(pick_d(rng));
  for (int64_t d : dims) {
    for (int64_t n_q : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{4}, int64_t{5}, int64_t{8}, int64_t{16},
                        int64_t{67}, int64_t{130}, pick_q(rng)}) {
      const int64_t n_keys = std::vector<int64_t>{0, 1, 2, 3, 4, 5, 7, 32, pick_keys(rng)}[rng() % 9];
      const int64_t k_stride = d + static_cast<int64_t>(rng() % 5);  // rows not 64-byte aligned either
      const auto k = random_floats(rng, std::max<int64_t>(n_keys * k_stride, 1));
      // Queries and probability rows scattered in one buffer (odd offsets, not in order).
      const int64_t q_stride = d + 3, p_stride = n_keys + 5, o_stride = d + 2;
      const auto qbuf = random_floats(rng, n_q * q_stride + 1);
      const auto pbuf = random_floats(rng, n_q * p_stride + 1, 0.3f);
      std::vector<int64_t> order(static_cast<size_t>(n_q));
      for (int64_t a = 0; a < n_q; ++a) order[a] = a;
      std::shuffle(order.begin(), order.end(), rng);
      std::vector<const float*> qs(order.size()), ps(order.size());
      for (int64_t a = 0; a < n_q; ++a) {
        qs[a] = qbuf.data() + order[a] * q_stride + 1;
        ps[a] = pbuf.data() + order[a] * p_stride + 1;
      }
      const auto out0 = random_floats(rng, n_q * o_stride);
      std::vector<float> want_s(static_cast<size_t>(n_q * p_stride), -7.0f), want_o = out0;
      for (int64_t a = 0; a < n_q; ++a) {
        dot_rows(qs[a], k.data(), k_stride, n_keys, d, want_s.data() + order[a] * p_stride, Isa::kScalar);
        axpy_rows(ps[a], k.data(), k_stride, n_keys, d, want_o.data() + order[a] * o_stride, Isa::kScalar);
      }
      for (Isa isa : supported_isas()) {
        SCOPED_TRACE(std::string(isa_name(isa)) + " d=" + std::to_string(d) + " n_q=" + std::to_string(n_q) +
                     " keys=" + std::to_string(n_keys));
        std::vector<float> got_s(want_s.size(), -7.0f), got_o = out0;
        std::vector<float*> ss(order.size()), os(order.size());
        for (int64_t a = 0; a < n_q; ++a) {
          ss[a] = got_s.data() + order[a] * p_stride;
          os[a] = got_o.data() + order[a] * o_stride;
        }
        dot_rows_multi(qs.data(), n_q, k.data(), k_stride, n_keys, d, ss.data(), isa);
        axpy_rows_multi(ps.data(), n_q, k.data(), k_stride, n_keys, d, os.data(), isa);
        for (size_t i = 0; i < want_s.size(); ++i) ASSERT_TRUE(same_bits(got_s[i], want_s[i])) << "score " << i;
        for (size_t i = 0; i < want_o.size(); ++i) ASSERT_TRUE(same_bits(got_o[i], want_o[i])) << "out " << i;
      }
    }
  }
}

// Attention's softmax: the same bits on every ISA (lengths around the 8/16-lane edges, scores
// spread over [-30, 30] and scaled), close to a float64 softmax with the true exponential, and the
// edges: one score, equal scores, a score 200 below the max (its weight underflows to 0).
TEST(AttentionRows, SoftmaxIsTheSameOnEveryIsaAndCloseToFloat64) {
  std::mt19937 rng(91);
  std::uniform_real_distribution<float> u(-30.0f, 30.0f);
  for (int64_t n : {1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 513, 2049}) {
    std::vector<float> x(static_cast<size_t>(n));
    for (float& v : x) v = u(rng);
    const float scale = 0.08838834764831845f;  // 1 / sqrt(128)
    std::vector<float> want = x;
    softmax(want.data(), n, scale, Isa::kScalar);
    for (Isa isa : supported_isas()) {
      std::vector<float> got = x;
      softmax(got.data(), n, scale, isa);
      for (int64_t j = 0; j < n; ++j) ASSERT_TRUE(same_bits(got[j], want[j])) << isa_name(isa) << " n=" << n << " j=" << j;
    }
    double m = -1e300;
    for (float v : x) m = std::max(m, double(v * scale));
    double sum = 0;
    for (float v : x) sum += std::exp(double(v * scale) - m);
    for (int64_t j = 0; j < n; ++j) {
      const double ref = std::exp(double(x[j] * scale) - m) / sum;
      EXPECT_NEAR(want[j], ref, 1e-5 * ref + 1e-37) << "n=" << n << " j=" << j;  // 2 ulp exp, fp32 sum
    }
  }
  for (Isa isa : supported_isas()) {
    std::vector<float> one = {3.5f};
    softmax(one.data(), 1, 1.0f, isa);
    EXPECT_EQ(one[0], 1.0f);
    std::vector<float> eq(37, -2.0f);
    softmax(eq.data(), 37, 1.0f, isa);
    for (float v : eq) EXPECT_FLOAT_EQ(v, 1.0f / 37.0f);
    std::vector<float> far = {0.0f, -200.0f, -87.0f};
    softmax(far.data(), 3, 1.0f, isa);
    EXPECT_EQ(far[1], 0.0f) << isa_name(isa);
    EXPECT_GT(far[2], 0.0f) << isa_name(isa);
    EXPECT_NEAR(far[2], std::exp(-87.0), 4e-7 * std::exp(-87.0)) << isa_name(isa);
  }
}

}  // namespace
}  // namespace onebit::cpu
