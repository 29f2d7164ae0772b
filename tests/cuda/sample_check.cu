// Checks cuda::sample_rows (src/kernels/cuda/sample_cuda.h) against the host Sampler
// (src/core/sampler/sampler.h), its definition:
//  1. choice for choice: fresh random logits (vocab 1 .. 128,256; with exact ties, -inf tokens and
//     peaked or flat distributions), every combination of temperature / top-k / top-p / min-p
//     below, and uniform numbers u including 0 and the largest double below 1: the device token
//     must be Sampler::sample_with(logits, {}, u). A difference is tolerated only at a boundary
//     (the host itself picks the device's token with u moved by 1e-9, or a top-p mass within 1e-9
//     of top_p), and every tolerated one is printed;
//  2. rows that cannot be sampled (a NaN, +inf, every logit -inf) give -1;
//  3. statistics: 102,400 draws from one row per setting against Sampler::distribution
//     (chi-square, tokens outside the survivors never drawn);
//  4. timing of the kernel alone at n_vocab 128,256, 1 and 64 rows (median of 50 launches).
// Exit 1 on a failure; "SKIPPED: ..." and exit 0 without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "check_util.h"
#include "core/sampler/sampler.h"
#include "kernels/cuda/sample_cuda.h"

using onebit::Sampler;
using onebit::SamplingParams;
using onebit::TokenProb;
namespace cuda = onebit::cuda;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
const double kUMax = std::nextafter(1.0, 0.0);

struct Setting {
  float temperature;
  int32_t top_k;
  float top_p;
  float min_p;
};

std::string describe(int64_t n, const Setting& s) {
  char b[160];
  std::snprintf(b, sizeof b, "n %lld, temp %g, top_k %d, top_p %g, min_p %g", static_cast<long long>(n),
                s.temperature, s.top_k, s.top_p, s.min_p);
  return b;
}

SamplingParams params_of(const Setting& s) {
  SamplingParams p;
  p.temperature = s.temperature;
  p.top_k = s.top_k;
  p.top_p = s.top_p;
  p.min_p = s.min_p;
  p.seed = 1;
  return p;
}

// Logits of one row: N(0, scale), some rounded to a grid (exact ties), some -inf.
std::vector<float> make_logits(int64_t n, float scale, bool ties, bool neg_inf) {
  std::vector<float> v = randn(static_cast<size_t>(n), scale);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (float& x : v) {
    if (ties && unit(rng) < 0.3f) x = std::round(x * 2.0f) / 2.0f;
    if (neg_inf && unit(rng) < 0.05f) x = kNegInf;
  }
  if (neg_inf && n > 1) v[0] = kNegInf;
  if (v[static_cast<size_t>(n - 1)] == kNegInf) v[static_cast<size_t>(n - 1)] = 0.5f;  // one finite logit at least
  return v;
}

// Whether the top-p cut of the host's chain lies within `eps` of top_p (then the kept set
// depends on the order of the sums). Candidates: the top-k in (logit desc, id asc) order.
bool top_p_boundary(const std::vector<float>& l, const Setting& s, double eps) {
  if (s.top_p >= 1.0f) return false;
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < static_cast<int32_t>(l.size()); ++i)
    if (l[i] != kNegInf) ids.push_back(i);
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
  if (s.top_k > 0 && static_cast<size_t>(s.top_k) < l.size() && ids.size() > static_cast<size_t>(s.top_k))
    ids.resize(static_cast<size_t>(s.top_k));
  const double max = l[ids[0]];
  double sum = 0.0;
  for (int32_t i : ids) sum += std::exp(static_cast<double>(l[i]) - max);
  double cum = 0.0;
  for (int32_t i : ids) {
    cum += std::exp(static_cast<double>(l[i]) - max) / sum;
    if (std::fabs(cum - s.top_p) < eps) return true;
    if (cum > s.top_p + eps) break;
  }
  return false;
}

struct Counts {
  long compared = 0, tolerated = 0;
};

// Part 1 for one vocabulary size: every setting x several logit rows x the u values.
void check_choices(int64_t n, const std::vector<Setting>& settings, Counts* counts) {
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  const int kRowsPerSetting = 3;
  std::vector<float> logits;
  std::vector<cuda::SampleParams> params;
  struct Case {
    size_t setting, row;
    double u;
  };
  std::vector<Case> cases;
  std::vector<std::vector<float>> rows;
  for (size_t si = 0; si < settings.size(); ++si) {
    for (int r = 0; r < kRowsPerSetting; ++r) {
      const float scale = r == 0 ? 1.0f : r == 1 ? 4.0f : 0.3f;
      rows.push_back(make_logits(n, scale, r != 1, r == 2));
      const size_t row = rows.size() - 1;
      std::vector<double> us = {0.0, kUMax};
      for (int k = 0; k < 4; ++k) us.push_back(ud(rng));
      for (double u : us) {
        const Setting& s = settings[si];
        params.push_back({s.temperature, s.top_k, s.top_p, s.min_p, u});
        cases.push_back({si, row, u});
        logits.insert(logits.end(), rows[row].begin(), rows[row].end());
      }
    }
  }
  const int64_t R = static_cast<int64_t>(cases.size());
  float* d_logits = dev(logits);
  cuda::SampleParams* d_params = dev(params);
  int32_t* d_ids = dev_poison<int32_t>(static_cast<size_t>(R));
  CK(cuda::sample_rows(d_logits, n, R, d_params, d_ids, nullptr));
  const std::vector<int32_t> ids = host(d_ids, static_cast<size_t>(R));
  free_all(d_logits, d_params, d_ids);
  for (int64_t c = 0; c < R; ++c) {
    const Case& k = cases[static_cast<size_t>(c)];
    const Setting& s = settings[k.setting];
    const std::vector<float>& l = rows[k.row];
    Sampler host_sampler(params_of(s), n);
    const int32_t want = host_sampler.sample_with(l, {}, k.u);
    const int32_t got = ids[static_cast<size_t>(c)];
    ++counts->compared;
    if (got == want) continue;
    // Boundary cases: u next to an edge of the CDF, or a top-p cut within rounding of top_p.
    bool boundary = top_p_boundary(l, s, 1e-9);
    for (double du : {-1e-9, 1e-9}) {
      const double u2 = std::clamp(k.u + du, 0.0, kUMax);
      if (host_sampler.sample_with(l, {}, u2) == got) boundary = true;
    }
    if (boundary) {
      ++counts->tolerated;
      std::printf("tolerated (boundary): %s, u %.17g: device %d, host %d\n", describe(n, s).c_str(), k.u, got, want);
    } else {
      expect(false, describe(n, s) + ", u " + std::to_string(k.u) + ": device " + std::to_string(got) + ", host " +
                        std::to_string(want));
    }
  }
}

void check_bad_rows() {
  const int64_t n = 1000;
  std::vector<float> logits;
  std::vector<cuda::SampleParams> params;
  auto add = [&](std::vector<float> row, float temp) {
    logits.insert(logits.end(), row.begin(), row.end());
    params.push_back({temp, 0, 1.0f, 0.0f, 0.5});
  };
  for (float temp : {0.0f, 1.0f}) {
    std::vector<float> nan = randn(n);
    nan[17] = std::numeric_limits<float>::quiet_NaN();
    add(nan, temp);
    std::vector<float> inf = randn(n);
    inf[999] = std::numeric_limits<float>::infinity();
    add(inf, temp);
    add(std::vector<float>(n, kNegInf), temp);
  }
  float* d_logits = dev(logits);
  cuda::SampleParams* d_params = dev(params);
  int32_t* d_ids = dev_poison<int32_t>(params.size());
  CK(cuda::sample_rows(d_logits, n, static_cast<int64_t>(params.size()), d_params, d_ids, nullptr));
  const std::vector<int32_t> ids = host(d_ids, params.size());
  for (size_t i = 0; i < ids.size(); ++i) expect(ids[i] == -1, "bad row " + std::to_string(i) + " gave " + std::to_string(ids[i]));
  free_all(d_logits, d_params, d_ids);
}

// Part 3: many draws from one row vs the host's distribution.
void check_statistics(int64_t n, const Setting& s) {
  const std::vector<float> row = make_logits(n, 1.5f, true, false);
  Sampler host_sampler(params_of(s), n);
  std::vector<TokenProb> dist;
  host_sampler.distribution(row, {}, &dist);
  const int kRows = 4096, kLaunches = 25;
  std::vector<float> logits;
  for (int r = 0; r < kRows; ++r) logits.insert(logits.end(), row.begin(), row.end());
  float* d_logits = dev(logits);
  int32_t* d_ids = dev_poison<int32_t>(kRows);
  cuda::SampleParams* d_params = dev_poison<cuda::SampleParams>(kRows);
  std::vector<long> count(static_cast<size_t>(n), 0);
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  std::vector<cuda::SampleParams> params(kRows);
  for (int launch = 0; launch < kLaunches; ++launch) {
    for (auto& p : params) p = {s.temperature, s.top_k, s.top_p, s.min_p, ud(rng)};
    CK(cudaMemcpy(d_params, params.data(), params.size() * sizeof(params[0]), cudaMemcpyHostToDevice));
    CK(cuda::sample_rows(d_logits, n, kRows, d_params, d_ids, nullptr));
    for (int32_t id : host(d_ids, kRows)) {
      if (id < 0 || id >= n) {
        expect(false, "statistics: id " + std::to_string(id));
        continue;
      }
      ++count[static_cast<size_t>(id)];
    }
  }
  free_all(d_logits, d_ids, d_params);
  const double total = static_cast<double>(kRows) * kLaunches;
  std::vector<double> expected(static_cast<size_t>(n), 0.0);
  for (const TokenProb& t : dist) expected[static_cast<size_t>(t.id)] = t.p * total;
  long outside = 0;
  double chi2 = 0.0, pooled_e = 0.0, pooled_o = 0.0;
  int df = -1;
  for (int64_t i = 0; i < n; ++i) {
    const double e = expected[static_cast<size_t>(i)];
    const double o = static_cast<double>(count[static_cast<size_t>(i)]);
    if (e == 0.0) {
      outside += count[static_cast<size_t>(i)];
      continue;
    }
    if (e < 5.0) {
      pooled_e += e;
      pooled_o += o;
      continue;
    }
    chi2 += (o - e) * (o - e) / e;
    ++df;
  }
  if (pooled_e > 0.0) {
    chi2 += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e;
    ++df;
  }
  df = std::max(df, 1);
  const double limit = df + 6.0 * std::sqrt(2.0 * df);  // ~6 sigma of a chi-square with df degrees
  std::printf("statistics: %s: %zu survivors, %.0f draws, chi2 %.1f (df %d, limit %.1f), %ld outside\n",
              describe(n, s).c_str(), dist.size(), total, chi2, df, limit, outside);
  expect(outside == 0, "statistics: draws outside the survivors for " + describe(n, s));
  expect(chi2 < limit, "statistics: chi-square too large for " + describe(n, s));
}

// Part 4: the kernel alone, median of 50 launches (events), n_vocab 128,256.
void time_kernel(const char* what, const Setting& s, int rows) {
  const int64_t n = 128256;
  std::vector<float> logits;
  for (int r = 0; r < rows; ++r) {
    const std::vector<float> row = randn(static_cast<size_t>(n), 2.0f);
    logits.insert(logits.end(), row.begin(), row.end());
  }
  std::vector<cuda::SampleParams> params(static_cast<size_t>(rows), {s.temperature, s.top_k, s.top_p, s.min_p, 0.5});
  float* d_logits = dev(logits);
  cuda::SampleParams* d_params = dev(params);
  int32_t* d_ids = dev_poison<int32_t>(static_cast<size_t>(rows));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 5; ++i) CK(cuda::sample_rows(d_logits, n, rows, d_params, d_ids, nullptr));
  std::vector<float> ms;
  for (int i = 0; i < 50; ++i) {
    CK(cudaEventRecord(a));
    CK(cuda::sample_rows(d_logits, n, rows, d_params, d_ids, nullptr));
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float t = 0;
    CK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  const double us = ms[ms.size() / 2] * 1e3;
  const double floor_us = static_cast<double>(rows) * n * 4 / 3.35e12 * 1e6;  // one read of the logits at 3.35 TB/s
  std::printf("time: %-34s rows %2d: %8.1f us (floor %.2f us, %.1f %% of it)\n", what, rows, us, floor_us,
              100.0 * floor_us / us);
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  free_all(d_logits, d_params, d_ids);
}

}  // namespace

int main() {
  if (skip_without_device()) return 0;
  std::vector<Setting> settings;
  for (float temp : {0.0f, 0.7f, 1.0f, 1.5f})
    for (int32_t k : {0, 1, 40, 2000})
      for (float p : {1.0f, 0.9f, 0.3f})
        for (float mp : {0.0f, 0.05f}) settings.push_back({temp, k, p, mp});
  Counts counts;
  if (small_checks()) {  // compute-sanitizer runs: every path once, no timing
    std::vector<Setting> ss = {{0.0f, 0, 1.0f, 0.0f}, {1.0f, 0, 1.0f, 0.0f}, {0.7f, 40, 0.9f, 0.0f},
                               {1.0f, 2000, 0.3f, 0.05f}, {1.5f, 0, 0.9f, 0.0f}, {1.0f, 0, 1.0f, 0.05f}};
    check_choices(7, ss, &counts);
    check_choices(32000, ss, &counts);
    check_bad_rows();
    std::printf("%s (small set): %ld choices compared, %d failures\n", failures ? "FAIL" : "PASS", counts.compared,
                failures);
    return failures ? 1 : 0;
  }
  for (int64_t n : {1, 7, 1000, 32000, 128256}) {
    std::vector<Setting> ss = settings;
    if (n > 1) ss.push_back({1.0f, static_cast<int32_t>(n - 1), 0.95f, 0.0f});  // top-k just under the vocabulary
    check_choices(n, ss, &counts);
    std::printf("choices: n %lld done (%ld compared so far, %d failures)\n", static_cast<long long>(n), counts.compared,
                failures);
  }
  check_bad_rows();
  check_statistics(1000, {1.2f, 0, 1.0f, 0.02f});
  check_statistics(1000, {0.8f, 50, 0.9f, 0.0f});
  check_statistics(1000, {1.0f, 0, 0.7f, 0.01f});
  check_statistics(1000, {2.0f, 300, 1.0f, 0.0f});
  for (int rows : {1, 64}) {
    time_kernel("greedy", {0.0f, 0, 1.0f, 0.0f}, rows);
    time_kernel("temp 1 (whole vocabulary)", {1.0f, 0, 1.0f, 0.0f}, rows);
    time_kernel("temp 0.8, top-k 40, top-p 0.95", {0.8f, 40, 0.95f, 0.0f}, rows);
    time_kernel("temp 0.8, top-p 0.9", {0.8f, 0, 0.9f, 0.0f}, rows);
    time_kernel("temp 0.8, min-p 0.05", {0.8f, 0, 1.0f, 0.05f}, rows);
  }
  std::printf("%s: %ld choices compared, %ld boundary cases tolerated, %d failures\n", failures ? "FAIL" : "PASS",
              counts.compared, counts.tolerated, failures);
  return failures ? 1 : 0;
}
