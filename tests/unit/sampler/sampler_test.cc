#include "core/sampler/sampler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "core/base/error.h"

namespace onebit {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

std::vector<float> log_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

SamplingParams seeded(uint64_t seed = 1) {
  SamplingParams p;
  p.seed = seed;
  return p;
}

std::vector<TokenProb> dist(const SamplingParams& params, const std::vector<float>& logits,
                            const std::vector<int32_t>& history = {}) {
  Sampler s(params, static_cast<int64_t>(logits.size()));
  std::vector<TokenProb> out;
  s.distribution(logits, history, &out);
  return out;
}

std::vector<int32_t> ids_of(const std::vector<TokenProb>& d) {
  std::vector<int32_t> ids;
  for (const auto& t : d) ids.push_back(t.id);
  return ids;
}

// The survivors as a set, for filters whose output order is an implementation detail.
std::vector<int32_t> id_set(const std::vector<TokenProb>& d) {
  auto ids = ids_of(d);
  std::sort(ids.begin(), ids.end());
  return ids;
}

double p_of(const std::vector<TokenProb>& d, int32_t id) {
  for (const auto& t : d)
    if (t.id == id) return t.p;
  return -1;
}

std::vector<double> softmax(const std::vector<float>& l) {
  double max = *std::max_element(l.begin(), l.end());
  std::vector<double> p;
  double sum = 0;
  for (float x : l) sum += std::exp(x - max);
  for (float x : l) p.push_back(std::exp(x - max) / sum);
  return p;
}

std::vector<float> random_logits(size_t n, uint64_t seed, float scale = 3.0f) {
  std::mt19937_64 rng(seed);
  std::vector<float> l(n);
  for (float& x : l) x = static_cast<float>(static_cast<double>(rng() >> 11) * 0x1.0p-53 * 2 - 1) * scale;
  return l;
}

// ---- greedy ----

TEST(Sampler, GreedyPicksArgmaxTiesToLowestId) {
  SamplingParams p = seeded();
  p.temperature = 0;
  Sampler s(p, 5);
  EXPECT_EQ(s.sample(std::vector<float>{0.1f, 2.0f, -1.0f, 1.9f, 0.0f}, {}), 1);
  EXPECT_EQ(s.sample(std::vector<float>{0.1f, 2.0f, -1.0f, 2.0f, 2.0f}, {}), 1);
  EXPECT_EQ(s.sample(std::vector<float>{kNegInf, kNegInf, -5.0f, kNegInf, -5.0f}, {}), 2);
  // Greedy ignores the filters that could drop the argmax (typical-p) and the seed.
  p.typical_p = 0.1f;
  p.seed = 99;
  Sampler s2(p, 5);
  EXPECT_EQ(s2.sample(std::vector<float>{0.1f, 2.0f, -1.0f, 1.9f, 0.0f}, {}), 1);
}

// ---- filters, on distributions with known survivors ----

TEST(Sampler, NoFiltersGivesSoftmaxInIdOrder) {
  std::vector<float> l = {1.0f, -2.0f, 0.5f, 3.0f};
  auto d = dist(seeded(), l);
  ASSERT_EQ(ids_of(d), (std::vector<int32_t>{0, 1, 2, 3}));
  auto want = softmax(l);
  for (size_t i = 0; i < d.size(); ++i) EXPECT_NEAR(d[i].p, want[i], 1e-12);
}

TEST(Sampler, TopKKeepsTheKLargest) {
  SamplingParams p = seeded();
  p.top_k = 2;
  auto d = dist(p, {2.0f, 1.0f, 3.0f, 0.0f});
  ASSERT_EQ(ids_of(d), (std::vector<int32_t>{2, 0}));
  auto want = softmax({3.0f, 2.0f});
  EXPECT_NEAR(d[0].p, want[0], 1e-12);
  EXPECT_NEAR(d[1].p, want[1], 1e-12);
  // Ties at the cut go to the lowest ids; banned tokens never count.
  EXPECT_EQ(ids_of(dist(p, {1.0f, 1.0f, 1.0f, 0.0f})), (std::vector<int32_t>{0, 1}));
  p.logit_bias = {{0, -100.0f}};
  EXPECT_EQ(ids_of(dist(p, {5.0f, 1.0f, 1.0f, 0.0f})), (std::vector<int32_t>{1, 2}));
  p.top_k = 3;
  p.logit_bias = {{0, -100.0f}, {1, -100.0f}};
  EXPECT_EQ(ids_of(dist(p, {5.0f, 1.0f, 1.0f, 0.0f})), (std::vector<int32_t>{2, 3}));
}

TEST(Sampler, TopKHeapAndSelectPathsMatchAFullSort) {
  // Logits rounded to a coarse grid so there are many ties.
  std::vector<float> l = random_logits(5000, 3);
  for (float& x : l) x = std::round(x * 4) / 4;
  std::vector<int32_t> order(l.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
  for (int32_t k : {1, 7, 512, 513, 2000, 4999}) {
    SamplingParams p = seeded();
    p.top_k = k;
    auto ids = ids_of(dist(p, l));
    ASSERT_EQ(ids, std::vector<int32_t>(order.begin(), order.begin() + k)) << "k = " << k;
  }
}

TEST(Sampler, TopPKeepsSmallestPrefixReachingP) {
  // Probabilities 0.4, 0.3, 0.2, 0.1, given in shuffled id order.
  std::vector<float> l = log_of({0.2, 0.4, 0.1, 0.3});
  SamplingParams p = seeded();
  p.top_p = 0.5f;
  auto d = dist(p, l);
  ASSERT_EQ(id_set(d), (std::vector<int32_t>{1, 3}));
  EXPECT_NEAR(p_of(d, 1), 4.0 / 7, 1e-7);
  EXPECT_NEAR(p_of(d, 3), 3.0 / 7, 1e-7);
  p.top_p = 0.35f;
  EXPECT_EQ(id_set(dist(p, l)), (std::vector<int32_t>{1}));
  p.top_p = 0.75f;
  EXPECT_EQ(id_set(dist(p, l)), (std::vector<int32_t>{0, 1, 3}));
  p.top_p = 0.95f;
  EXPECT_EQ(id_set(dist(p, l)), (std::vector<int32_t>{0, 1, 2, 3}));
}

TEST(Sampler, TopPAfterTopKRenormalizes) {
  // top-k 3 leaves 0.4/0.9, 0.3/0.9, 0.2/0.9; top-p 0.7 needs the first two (0.78 >= 0.7).
  std::vector<float> l = log_of({0.2, 0.4, 0.1, 0.3});
  SamplingParams p = seeded();
  p.top_k = 3;
  p.top_p = 0.7f;
  EXPECT_EQ(ids_of(dist(p, l)), (std::vector<int32_t>{1, 3}));
  p.top_p = 0.8f;  // 0.78 < 0.8
  EXPECT_EQ(ids_of(dist(p, l)), (std::vector<int32_t>{1, 3, 0}));
}

TEST(Sampler, TopPOnALargeShuffledVocabulary) {
  // p_i proportional to 0.999^i: the smallest prefix with mass >= 0.9 has 2302 tokens
  // (1 - 0.999^2301 = 0.89994, 1 - 0.999^2302 = 0.90004). Ids are shuffled, so the sampler must sort.
  const size_t n = 128256;
  std::vector<int32_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(5));
  std::vector<float> l(n);
  for (size_t rank = 0; rank < n; ++rank) l[perm[rank]] = static_cast<float>(rank * std::log(0.999));
  SamplingParams p = seeded();
  p.top_p = 0.9f;
  std::vector<int32_t> want(perm.begin(), perm.begin() + 2302);
  std::sort(want.begin(), want.end());
  ASSERT_EQ(id_set(dist(p, l)), want);
}

TEST(Sampler, MinPKeepsTokensAboveAFractionOfTheMax) {
  std::vector<float> l = log_of({0.5, 0.3, 0.15, 0.05});
  SamplingParams p = seeded();
  p.min_p = 0.2f;  // threshold 0.1
  auto d = dist(p, l);
  ASSERT_EQ(ids_of(d), (std::vector<int32_t>{0, 1, 2}));
  EXPECT_NEAR(d[0].p, 0.5 / 0.95, 1e-7);
  p.min_p = 0.5f;  // threshold 0.25
  EXPECT_EQ(ids_of(dist(p, l)), (std::vector<int32_t>{0, 1}));
  p.min_p = 1.0f;  // only the max (and ties with it)
  EXPECT_EQ(ids_of(dist(p, {1.0f, 3.0f, 3.0f})), (std::vector<int32_t>{1, 2}));
}

TEST(Sampler, TypicalPWorkedExample) {
  // p = [1/2, 1/4, 1/8, 1/8]: H = 1.75 ln2; surprisals 1, 2, 3, 3 (x ln2), so |surprisal - H| is
  // 0.75, 0.25, 1.25, 1.25: token 1 is the most typical, then 0, then 2 and 3.
  std::vector<float> l = log_of({0.5, 0.25, 0.125, 0.125});
  SamplingParams p = seeded();
  p.typical_p = 0.5f;  // 0.25 < 0.5, 0.25 + 0.5 >= 0.5
  auto d = dist(p, l);
  ASSERT_EQ(id_set(d), (std::vector<int32_t>{0, 1}));
  EXPECT_NEAR(p_of(d, 1), 1.0 / 3, 1e-7);
  EXPECT_NEAR(p_of(d, 0), 2.0 / 3, 1e-7);
  p.typical_p = 0.2f;  // the most likely token is not the most typical one
  EXPECT_EQ(id_set(dist(p, l)), (std::vector<int32_t>{1}));
  p.typical_p = 0.8f;  // 0.25 + 0.5 < 0.8: one of the two 1/8 tokens joins, the lower id
  EXPECT_EQ(id_set(dist(p, l)), (std::vector<int32_t>{0, 1, 2}));
  p.typical_p = 0.9f;
  EXPECT_EQ(id_set(dist(p, l)), (std::vector<int32_t>{0, 1, 2, 3}));
}

TEST(Sampler, TemperatureReshapesSurvivors) {
  std::vector<float> l = {1.0f, -2.0f, 0.5f, 3.0f};
  SamplingParams p = seeded();
  p.temperature = 0.5f;
  auto d = dist(p, l);
  auto want = softmax({2.0f, -4.0f, 1.0f, 6.0f});
  for (size_t i = 0; i < d.size(); ++i) EXPECT_NEAR(d[i].p, want[i], 1e-12);
  // Filters judge at temperature 1: top-p 0.5 keeps only token 3 whatever the temperature.
  p.temperature = 5.0f;
  p.top_p = 0.5f;
  EXPECT_EQ(ids_of(dist(p, l)), (std::vector<int32_t>{3}));
}

// A plain model of the filters: full sorts, std::exp, nothing clever. Survivor sets must match.
std::vector<int32_t> reference_survivors(const SamplingParams& p, const std::vector<float>& l) {
  std::vector<int32_t> c(l.size());
  std::iota(c.begin(), c.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); };
  std::sort(c.begin(), c.end(), by_logit);
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < c.size()) c.resize(p.top_k);
  auto probs = [&](const std::vector<int32_t>& set) {
    double max = -INFINITY, sum = 0;
    for (int32_t i : set) max = std::max(max, static_cast<double>(l[i]));
    std::vector<double> pr;
    for (int32_t i : set) sum += std::exp(l[i] - max);
    for (int32_t i : set) pr.push_back(std::exp(l[i] - max) / sum);
    return pr;
  };
  auto keep_mass = [&](std::vector<double> key, double mass) {
    auto pr = probs(c);
    std::vector<size_t> order(c.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return key[a] < key[b] || (key[a] == key[b] && c[a] < c[b]); });
    std::vector<int32_t> kept;
    double cum = 0;
    for (size_t o : order) {
      kept.push_back(c[o]);
      cum += pr[o];
      if (cum >= mass) break;
    }
    c = kept;
  };
  if (p.typical_p < 1) {
    auto pr = probs(c);
    double h = 0;
    for (double x : pr) h -= x * std::log(x);
    std::vector<double> key;
    for (double x : pr) key.push_back(std::fabs(-std::log(x) - h));
    keep_mass(key, p.typical_p);
  }
  if (p.top_p < 1) {
    std::vector<double> key;
    for (int32_t i : c) key.push_back(-l[i]);
    keep_mass(key, p.top_p);
  }
  if (p.min_p > 0) {
    double max = -INFINITY;
    for (int32_t i : c) max = std::max(max, static_cast<double>(l[i]));
    std::vector<int32_t> kept;
    for (int32_t i : c)
      if (std::exp(l[i] - max) >= p.min_p) kept.push_back(i);
    c = kept;
  }
  std::sort(c.begin(), c.end());
  return c;
}

TEST(Sampler, FiltersMatchAPlainModel) {
  std::mt19937_64 rng(77);
  for (int iter = 0; iter < 200; ++iter) {
    const size_t n = iter % 3 == 0 ? 20000 : 300;
    std::vector<float> l = random_logits(n, 1000 + iter, iter % 2 ? 8.0f : 2.0f);
    SamplingParams p = seeded();
    const int pick = iter % 5;
    if (pick == 0 || pick == 4) p.top_k = 1 + static_cast<int32_t>(rng() % 1000);
    if (pick == 1 || pick == 4) p.top_p = 0.05f + 0.9f * static_cast<float>(rng() % 1000) / 1000;
    if (pick == 2) p.typical_p = 0.05f + 0.9f * static_cast<float>(rng() % 1000) / 1000;
    if (pick == 3 || pick == 4) p.min_p = 0.5f * static_cast<float>(rng() % 1000) / 1000;
    ASSERT_EQ(id_set(dist(p, l)), reference_survivors(p, l))
        << "iteration " << iter << " top_k " << p.top_k << " top_p " << p.top_p << " typical_p " << p.typical_p
        << " min_p " << p.min_p;
  }
}

// ---- bias and penalties ----

// The adjusted logit differences, read back from the distribution at temperature 1.
std::vector<double> adjusted_minus(const SamplingParams& params, const std::vector<float>& l,
                                   const std::vector<int32_t>& history, int32_t ref) {
  auto d = dist(params, l, history);
  std::map<int32_t, double> p;
  for (auto& t : d) p[t.id] = t.p;
  std::vector<double> out;
  for (size_t i = 0; i < l.size(); ++i) out.push_back(std::log(p[static_cast<int32_t>(i)] / p[ref]));
  return out;
}

TEST(Sampler, RepetitionFrequencyPresencePenalties) {
  std::vector<float> l = {2.0f, -1.0f, 0.5f, 3.0f};
  std::vector<int32_t> history = {0, 1, 1, 3};
  SamplingParams p = seeded();
  p.penalty_last_n = -1;
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  // id0: 2/2 - 0.5 - 0.25 = 0.25; id1: -1*2 - 2*0.5 - 0.25 = -3.25; id2: untouched 0.5;
  // id3: 3/2 - 0.5 - 0.25 = 0.75.
  auto got = adjusted_minus(p, l, history, 2);
  std::vector<double> want = {0.25 - 0.5, -3.25 - 0.5, 0.0, 0.75 - 0.5};
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << "token " << i;
}

TEST(Sampler, PenaltyWindow) {
  std::vector<float> l = {1.0f, 1.0f, 1.0f};
  SamplingParams p = seeded();
  p.presence_penalty = 1.0f;
  p.penalty_last_n = 2;  // sees {1, 2}, not the 0 before them
  auto got = adjusted_minus(p, l, {0, 1, 2}, 0);
  EXPECT_NEAR(got[1], -1.0, 1e-6);
  EXPECT_NEAR(got[2], -1.0, 1e-6);
  p.penalty_last_n = 0;  // off
  got = adjusted_minus(p, l, {0, 1, 2}, 0);
  EXPECT_NEAR(got[1], 0.0, 1e-6);
  p.penalty_last_n = -1;  // whole history
  got = adjusted_minus(p, l, {0, 0, 1}, 2);
  EXPECT_NEAR(got[0], -1.0, 1e-6);
  EXPECT_NEAR(got[1], -1.0, 1e-6);
}

TEST(Sampler, PenaltiesDoNotLeakBetweenCalls) {
  SamplingParams p = seeded();
  p.frequency_penalty = 1.0f;
  Sampler s(p, 3);
  std::vector<TokenProb> d;
  s.distribution(std::vector<float>{0, 0, 0}, std::vector<int32_t>{0, 0}, &d);
  s.distribution(std::vector<float>{0, 0, 0}, std::vector<int32_t>{}, &d);
  EXPECT_NEAR(d[0].p, 1.0 / 3, 1e-12);
}

TEST(Sampler, LogitBias) {
  SamplingParams p = seeded();
  p.logit_bias = {{0, -100.0f}};
  Sampler s(p, 3);
  std::vector<float> l = {10.0f, 0.0f, 0.0f};
  for (int i = 0; i < 1000; ++i) ASSERT_NE(s.sample(l, {}), 0);
  p.temperature = 0;
  EXPECT_EQ(Sampler(p, 3).sample(l, {}), 1);
  // Any other bias adds: token 0 becomes 10 + 5 = 15 > 14.
  p.logit_bias = {{0, 5.0f}};
  EXPECT_EQ(Sampler(p, 3).sample(std::vector<float>{10.0f, 14.0f, 0.0f}, {}), 0);
  p.logit_bias = {{0, -99.0f}};
  p.temperature = 1;
  auto d = dist(p, l);
  ASSERT_EQ(d.size(), 3u);  // -99 lowers but does not ban
  EXPECT_NEAR(std::log(d[0].p / d[1].p), 10.0 - 99.0, 1e-6);
}

TEST(Sampler, EverythingBannedThrows) {
  SamplingParams p = seeded();
  p.logit_bias = {{0, -100.0f}, {1, -100.0f}};
  Sampler s(p, 2);
  EXPECT_THROW(s.sample(std::vector<float>{1, 2}, {}), Error);
  p.temperature = 0;
  Sampler g(p, 2);
  EXPECT_THROW(g.sample(std::vector<float>{1, 2}, {}), Error);
}

TEST(Sampler, BadInputsThrow) {
  Sampler s(seeded(), 3);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(s.sample(std::vector<float>{1, 2}, {}), Error);
  try {
    s.sample(std::vector<float>{1, nan, 2}, {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("logits[1]"));
  }
  EXPECT_THROW(s.sample(std::vector<float>{1, INFINITY, 2}, {}), Error);
  SamplingParams p = seeded();
  p.repetition_penalty = 1.1f;
  Sampler pen(p, 3);
  EXPECT_THROW(pen.sample(std::vector<float>{1, 2, 3}, std::vector<int32_t>{0, 3}), Error);
  EXPECT_NO_THROW(pen.sample(std::vector<float>{1, 2, 3}, std::vector<int32_t>{0, 2}));
  p.top_p = 2;
  EXPECT_THROW(Sampler(p, 3), Error);
}

// ---- randomness ----

TEST(Sampler, Mt19937_64IsTheStandardEngine) {
  // [rand.predef]: the 10000th output of a default-constructed mt19937_64.
  std::mt19937_64 e;
  e.discard(9999);
  EXPECT_EQ(e(), 9981545732273789042ull);
}

std::vector<int32_t> draws(uint64_t seed, const std::vector<float>& l, int n, SamplingParams p = {}) {
  p.seed = seed;
  Sampler s(p, static_cast<int64_t>(l.size()));
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) out.push_back(s.sample(l, {}));
  return out;
}

TEST(Sampler, SameSeedSameSamples) {
  std::vector<float> l = random_logits(1000, 11, 2.0f);
  EXPECT_EQ(draws(42, l, 100), draws(42, l, 100));
  EXPECT_NE(draws(42, l, 100), draws(43, l, 100));
  SamplingParams p;
  p.top_k = 40;
  p.top_p = 0.9f;
  p.min_p = 0.01f;
  p.temperature = 0.8f;
  EXPECT_EQ(draws(7, l, 100, p), draws(7, l, 100, p));
  EXPECT_NE(draws(7, l, 100, p), draws(8, l, 100, p));
}

TEST(Sampler, UnsetSeedIsReportedAndReproduces) {
  std::vector<float> l = random_logits(1000, 12, 2.0f);
  Sampler a(SamplingParams{}, 1000);
  std::vector<int32_t> first;
  for (int i = 0; i < 50; ++i) first.push_back(a.sample(l, {}));
  EXPECT_EQ(draws(a.seed(), l, 50), first);
}

TEST(Sampler, GoldenSequence) {
  // Pinned output for seed 1234: any change to the RNG use, the exp, or the walk order shows up
  // here. The same numbers must come out on every platform. They were checked against an
  // independent Python model of the chain (a from-scratch mt19937_64, math.exp, sorted()).
  std::vector<float> l = {0.0f, 1.0f, 2.0f, 0.5f, -1.0f, 1.5f, 0.25f, 3.0f};
  SamplingParams p;
  p.temperature = 0.9f;
  p.top_k = 6;
  p.top_p = 0.95f;
  EXPECT_EQ(draws(1234, l, 20, p), (std::vector<int32_t>{1, 7, 3, 1, 7, 1, 5, 1, 7, 2, 1, 7, 7, 3, 7, 2, 7, 7, 7, 2}));
  EXPECT_EQ(draws(1234, l, 20), (std::vector<int32_t>{7, 1, 7, 7, 2, 7, 7, 7, 1, 7, 7, 2, 6, 7, 2, 7, 1, 1, 2, 7}));
}

TEST(Sampler, EmpiricalDistributionMatchesSoftmax) {
  std::vector<float> l = {1.0f, 0.0f, -0.5f, 2.0f, 0.3f, -2.0f, 1.2f, 0.7f};
  auto want = softmax(l);
  const int n = 20000;
  std::vector<int> counts(l.size());
  for (int32_t id : draws(2024, l, n)) counts[id]++;
  double chi2 = 0;
  for (size_t i = 0; i < l.size(); ++i) {
    const double e = want[i] * n;
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  // 7 degrees of freedom: P(chi2 > 24.32) = 0.001.
  EXPECT_LT(chi2, 24.32) << "counts far from softmax";
}

TEST(Sampler, EmpiricalDistributionAfterFilters) {
  // top-k 3 at temperature 0.5: draws follow softmax(2 * top three logits) and nothing else.
  std::vector<float> l = {1.0f, 0.0f, -0.5f, 2.0f, 0.3f, -2.0f, 1.2f, 0.7f};
  SamplingParams p;
  p.top_k = 3;
  p.temperature = 0.5f;
  auto want = softmax({4.0f, 2.4f, 2.0f});  // ids 3, 6, 0
  const int n = 20000;
  std::map<int32_t, int> counts;
  for (int32_t id : draws(99, l, n, p)) counts[id]++;
  ASSERT_EQ(counts.size(), 3u);
  double chi2 = 0;
  const int32_t ids[3] = {3, 6, 0};
  for (int i = 0; i < 3; ++i) {
    const double e = want[i] * n;
    chi2 += (counts[ids[i]] - e) * (counts[ids[i]] - e) / e;
  }
  EXPECT_LT(chi2, 13.82);  // 2 degrees of freedom, p = 0.001
}

// ---- logprobs ----

TEST(Sampler, LogprobsAreTheAdjustedModelDistribution) {
  std::vector<float> l = {1.0f, 0.0f, -0.5f, 2.0f, 0.3f, -2.0f};
  SamplingParams p = seeded(5);
  p.n_logprobs = 20;  // more than the vocabulary: all non-banned tokens
  p.top_k = 2;         // truncation and temperature do not change reported logprobs
  p.temperature = 0.3f;
  p.logit_bias = {{5, -100.0f}, {1, 1.0f}};
  Sampler s(p, 6);
  TokenLogprobs lp;
  for (int iter = 0; iter < 20; ++iter) {
    int32_t id = s.sample(l, {}, &lp);
    EXPECT_EQ(lp.chosen.id, id);
    EXPECT_TRUE(id == 3 || id == 0);  // top-2 of {1, 1, -0.5, 2, 0.3}: 3, then 0 (ties with 1 -> lower id)
    ASSERT_EQ(lp.top.size(), 5u);  // token 5 is banned
    std::vector<float> adjusted = {1.0f, 1.0f, -0.5f, 2.0f, 0.3f};
    auto want = softmax(adjusted);
    EXPECT_EQ(lp.top[0].id, 3);
    EXPECT_EQ(lp.top[1].id, 0);  // ties with 1: lower id first
    EXPECT_EQ(lp.top[2].id, 1);
    double sum = 0;
    for (size_t i = 0; i < lp.top.size(); ++i) {
      if (i > 0) {
        EXPECT_GE(lp.top[i - 1].logprob, lp.top[i].logprob);
      }
      EXPECT_NEAR(lp.top[i].logprob, std::log(want[lp.top[i].id]), 1e-5);
      sum += std::exp(lp.top[i].logprob);
      if (lp.top[i].id == id) {
        EXPECT_EQ(lp.top[i].logprob, lp.chosen.logprob);
      }
    }
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
}

TEST(Sampler, LogprobsTopNAndGreedy) {
  std::vector<float> l = random_logits(50000, 21);
  SamplingParams p = seeded();
  p.temperature = 0;
  p.n_logprobs = 3;
  Sampler s(p, 50000);
  TokenLogprobs lp;
  int32_t id = s.sample(l, {}, &lp);
  std::vector<int32_t> order(l.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + 3, order.end(),
                    [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
  ASSERT_EQ(lp.top.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(lp.top[i].id, order[i]);
  EXPECT_EQ(id, order[0]);
  EXPECT_EQ(lp.chosen.logprob, lp.top[0].logprob);
  EXPECT_LT(lp.chosen.logprob, 0.0f);
  p.n_logprobs = 0;
  Sampler none(p, 50000);
  none.sample(l, {}, &lp);
  EXPECT_TRUE(lp.top.empty());
  EXPECT_EQ(lp.chosen.id, id);
}

}  // namespace
}  // namespace onebit

namespace onebit {
namespace {

// draw() then sample_with(u) is sample(): the same RNG stream, on every chain (what device
// sampling relies on to give the host's tokens for a seed); greedy draws nothing.
TEST(Sampler, DrawThenSampleWithEqualsSample) {
  std::mt19937_64 gen(77);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  const int64_t n = 3000;
  for (int chain = 0; chain < 5; ++chain) {
    SamplingParams p = seeded(1234 + chain);
    p.temperature = chain == 0 ? 0.0f : 0.7f + 0.2f * chain;
    p.top_k = chain == 2 ? 50 : 0;
    p.top_p = chain == 2 || chain == 3 ? 0.9f : 1.0f;
    p.min_p = chain == 4 ? 0.05f : 0.0f;
    if (chain == 4) p.repetition_penalty = 1.2f;
    Sampler a(p, n), b(p, n);
    EXPECT_EQ(a.device_chain(), chain != 4);
    std::vector<int32_t> history = {1, 2, 3};
    for (int step = 0; step < 50; ++step) {
      std::vector<float> l(static_cast<size_t>(n));
      for (float& x : l) x = nd(gen);
      const double u = b.draw();
      if (chain == 0) {
        EXPECT_EQ(u, 0.0);
      }
      EXPECT_TRUE(u >= 0.0 && u < 1.0);
      const int32_t want = a.sample(l, history);
      EXPECT_EQ(b.sample_with(l, history, u), want) << "chain " << chain << ", step " << step;
      history.push_back(want);
    }
  }
}

TEST(Sampler, DeviceChainAndBadUniformNumber) {
  SamplingParams p = seeded();
  EXPECT_TRUE(Sampler(p, 10).device_chain());
  SamplingParams typical = p, logprobs = p, bias = p, freq = p;
  typical.typical_p = 0.5f;
  logprobs.n_logprobs = 2;
  bias.logit_bias[1] = 1.0f;
  freq.frequency_penalty = 0.5f;
  for (const SamplingParams& q : {typical, logprobs, bias, freq}) EXPECT_FALSE(Sampler(q, 10).device_chain());
  SamplingParams window_off = freq;
  window_off.penalty_last_n = 0;  // penalties without a window change nothing
  EXPECT_TRUE(Sampler(window_off, 10).device_chain());
  Sampler s(p, 3);
  const std::vector<float> l = {0.0f, 1.0f, 2.0f};
  EXPECT_THROW(s.sample_with(l, {}, 1.0), Error);
  EXPECT_THROW(s.sample_with(l, {}, -0.1), Error);
  EXPECT_THROW(s.sample_with(l, {}, std::nan("")), Error);
  EXPECT_EQ(s.sample_with(l, {}, 0.0), 0);  // the walk is in id order: u = 0 takes the first token
}

}  // namespace
}  // namespace onebit
