#include "core/sampler/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/base/error.h"
#include "core/sampler/deterministic_exp.h"

// Results must not depend on whether the compiler fuses a*b+c (see deterministic_exp.h).
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

namespace onebit {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
// top-k up to this size keeps a heap while scanning the vocabulary; larger k uses nth_element.
constexpr size_t kHeapTopK = 512;
// keep_mass buckets keys (in nats) into kBuckets of width 1/kBucketsPerNat, plus one overflow
// bucket for keys beyond 64 nats (probability ratios below e^-64: never decide a cut in practice).
constexpr size_t kBucketsPerNat = 16;
constexpr size_t kBuckets = 64 * kBucketsPerNat;

// The passes below over the whole vocabulary are written as 8 independent lanes with the same
// operations in each, so that the compiler can vectorize them and the CPU can overlap them.

// True if some value is NaN or +inf (-inf is allowed: a masked token).
bool any_nan_or_pos_inf(const float* v, size_t n) {
  uint32_t acc[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (size_t j = 0; j < 8; ++j) {
      const auto u = std::bit_cast<uint32_t>(v[i + j]);
      // +inf and positive NaNs are 0x7f800000..0x7fffffff; negative NaNs 0xff800001..0xffffffff.
      acc[j] |= static_cast<uint32_t>(u - 0x7f800000u < 0x00800000u) | static_cast<uint32_t>(u - 0xff800001u < 0x007fffffu);
    }
  }
  uint32_t any = 0;
  for (uint32_t a : acc) any |= a;
  for (; i < n; ++i) any |= static_cast<uint32_t>(!(v[i] < kInf));
  return any != 0;
}

float max_of(const float* v, size_t n) {
  float m[8];
  for (float& x : m) x = -kInf;
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (size_t j = 0; j < 8; ++j) m[j] = v[i + j] > m[j] ? v[i + j] : m[j];
  float best = -kInf;
  for (float x : m) best = x > best ? x : best;
  for (; i < n; ++i) best = v[i] > best ? v[i] : best;
  return best;
}

// Calls out(i, deterministic_exp(arg(i))) for i = 0, 1, ..., n-1 in that order, eight at a time
// through deterministic_exp8: the same values (and sums, if out accumulates) as a plain loop.
template <typename Arg, typename Out>
void exp_each(size_t n, Arg arg, Out out) {
  double x[8], y[8];
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (size_t j = 0; j < 8; ++j) x[j] = arg(i + j);
    deterministic_exp8(x, y);
    for (size_t j = 0; j < 8; ++j) out(i + j, y[j]);
  }
  for (; i < n; ++i) out(i, deterministic_exp(arg(i)));
}

}  // namespace

Sampler::Sampler(SamplingParams params, int64_t n_vocab) : params_(std::move(params)), n_vocab_(n_vocab) {
  params_.validate(n_vocab);
  if (params_.seed) {
    seed_ = *params_.seed;
  } else {
    std::random_device rd;
    seed_ = (static_cast<uint64_t>(rd()) << 32) ^ static_cast<uint64_t>(rd());
  }
  rng_.seed(seed_);
  has_penalties_ = params_.penalty_last_n != 0 &&
                   (params_.repetition_penalty != 1.0f || params_.frequency_penalty != 0.0f ||
                    params_.presence_penalty != 0.0f);
  bias_.assign(params_.logit_bias.begin(), params_.logit_bias.end());
  const auto n = static_cast<size_t>(n_vocab);
  work_.resize(n);
  counts_.assign(n, 0);
  cands_.reserve(n);
  kept_.reserve(n);
  bucket_.reserve(n);
  bucket_mass_.resize(kBuckets + 1);
  weights_.reserve(n);
}

double Sampler::next_uniform() {
  // 53 random bits scaled by 2^-53: every double in [0, 1) that is a multiple of 2^-53, equally likely.
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

void Sampler::adjust(std::span<const float> logits, std::span<const int32_t> history) {
  if (static_cast<int64_t>(logits.size()) != n_vocab_)
    fail("sampler: logits has {} entries, expected n_vocab = {}", logits.size(), n_vocab_);
  const size_t n = logits.size();
  if (any_nan_or_pos_inf(logits.data(), n)) {
    for (size_t i = 0; i < n; ++i)
      if (!(logits[i] < kInf))
        fail("sampler: logits[{}] is {}; logits must be finite or -inf (the model produced a bad value)",
             i, logits[i]);
  }
  std::memcpy(work_.data(), logits.data(), n * sizeof(float));

  for (const auto& [id, bias] : bias_) {
    if (bias <= SamplingParams::kBanBias)
      work_[id] = -kInf;
    else
      work_[id] += bias;
  }

  if (!has_penalties_ || history.empty()) return;
  size_t start = 0;
  if (params_.penalty_last_n > 0 && static_cast<size_t>(params_.penalty_last_n) < history.size())
    start = history.size() - static_cast<size_t>(params_.penalty_last_n);
  // Check the window before counting, so that a throw leaves counts_ all zero.
  for (size_t i = start; i < history.size(); ++i)
    if (history[i] < 0 || history[i] >= n_vocab_)
      fail("sampler: history[{}] = {} is not a token id in [0, {})", i, history[i], n_vocab_);
  for (size_t i = start; i < history.size(); ++i)
    if (counts_[history[i]]++ == 0) touched_.push_back(history[i]);

  const float rep = params_.repetition_penalty;
  const float freq = params_.frequency_penalty;
  const float pres = params_.presence_penalty;
  for (int32_t id : touched_) {
    float l = work_[id];
    // CTRL / llama.cpp: dividing a negative logit would raise it, so negative ones are multiplied.
    l = l > 0.0f ? l / rep : l * rep;
    const float by_count = static_cast<float>(counts_[id]) * freq;
    l -= by_count + pres;  // count > 0 for every touched id
    work_[id] = l;
    counts_[id] = 0;
  }
  touched_.clear();
}

int32_t Sampler::argmax() const {
  // The first index holding the maximum: ties go to the lowest id.
  const float max = max_of(work_.data(), work_.size());
  if (max == -kInf) fail("sampler: every token is banned (all logits are -inf after logit_bias)");
  const auto it = std::find(work_.begin(), work_.end(), max);
  return static_cast<int32_t>(it - work_.begin());
}

namespace {

// Most likely first; equal logits by lowest id. A strict total order, so any correct sort or
// selection algorithm leaves the same sequence.
struct ByLogit {
  template <typename C>
  bool operator()(const C& a, const C& b) const {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  }
};

}  // namespace

void Sampler::select_top_k(size_t k) {
  cands_.clear();
  const ByLogit before;
  if (k <= kHeapTopK) {
    // cands_ is a heap whose front is the worst of the best k seen so far. Ids arrive in
    // increasing order, so a token that only ties the front comes after it and is rejected.
    const size_t n = work_.size();
    for (size_t i = 0; i < n; ++i) {
      // Once the heap is full, skip whole blocks of 8 that cannot beat its front.
      if (cands_.size() == k && i % 8 == 0 && i + 8 <= n && max_of(&work_[i], 8) <= cands_.front().logit) {
        i += 7;
        continue;
      }
      const float l = work_[i];
      if (l == -kInf) continue;
      if (cands_.size() < k) {
        cands_.push_back({l, static_cast<int32_t>(i)});
        std::push_heap(cands_.begin(), cands_.end(), before);
      } else if (l > cands_.front().logit) {
        std::pop_heap(cands_.begin(), cands_.end(), before);
        cands_.back() = {l, static_cast<int32_t>(i)};
        std::push_heap(cands_.begin(), cands_.end(), before);
      }
    }
    std::sort_heap(cands_.begin(), cands_.end(), before);
  } else {
    for (size_t i = 0; i < work_.size(); ++i)
      if (work_[i] != -kInf) cands_.push_back({work_[i], static_cast<int32_t>(i)});
    if (k < cands_.size()) {
      std::nth_element(cands_.begin(), cands_.begin() + static_cast<ptrdiff_t>(k), cands_.end(), before);
      cands_.resize(k);
    }
    std::sort(cands_.begin(), cands_.end(), before);
  }
  sorted_by_logit_ = true;
}

Sampler::Softmax Sampler::softmax() {
  Softmax sm{-std::numeric_limits<double>::infinity(), 0.0};
  for (const Candidate& c : cands_) sm.max = std::max(sm.max, static_cast<double>(c.logit));
  // weights_ is scratch until the final weighting: keep each exp for keep_mass.
  weights_.resize(cands_.size());
  exp_each(
      cands_.size(), [&](size_t i) { return static_cast<double>(cands_[i].logit) - sm.max; },
      [&](size_t i, double w) {
        weights_[i] = w;
        sm.sum += w;
      });
  return sm;
}

template <typename Key>
void Sampler::keep_mass(double mass, const Softmax& sm, Key key) {
  const size_t n = cands_.size();
  auto prob = [&sm](const Candidate& c) { return deterministic_exp(static_cast<double>(c.logit) - sm.max) / sm.sum; };
  // 1. Each candidate's bucket, and the mass in each bucket. Buckets are ordered like keys, so
  //    whole buckets can be kept or dropped without sorting inside them.
  bucket_.resize(n);
  std::fill(bucket_mass_.begin(), bucket_mass_.end(), 0.0);
  for (size_t i = 0; i < n; ++i) {
    const double b = key(cands_[i]) * static_cast<double>(kBucketsPerNat);
    const size_t bi = b < static_cast<double>(kBuckets) ? static_cast<size_t>(b) : kBuckets;
    bucket_[i] = static_cast<uint16_t>(bi);
    bucket_mass_[bi] += weights_[i] / sm.sum;  // softmax() left exp(logit - max) there
  }
  // 2. The bucket where the running mass reaches `mass`.
  double cum = 0.0;
  size_t cut = kBuckets + 1;
  for (size_t b = 0; b <= kBuckets; ++b) {
    if (cum + bucket_mass_[b] >= mass) {
      cut = b;
      break;
    }
    cum += bucket_mass_[b];
  }
  if (cut > kBuckets) return;  // rounding left the total just under `mass`: keep everything
  // 3. Keep the buckets before the cut (in their current order), then walk the cut bucket sorted
  //    by (key, id) until the mass is reached.
  kept_.clear();
  for (size_t i = 0; i < n; ++i)
    if (bucket_[i] < cut) kept_.push_back(cands_[i]);
  const size_t head = kept_.size();
  for (size_t i = 0; i < n; ++i)
    if (bucket_[i] == cut) kept_.push_back(cands_[i]);
  std::sort(kept_.begin() + static_cast<ptrdiff_t>(head), kept_.end(), [&key](const Candidate& a, const Candidate& b) {
    const double ka = key(a), kb = key(b);
    return ka < kb || (ka == kb && a.id < b.id);
  });
  for (size_t i = head; i < kept_.size(); ++i) {
    cum += prob(kept_[i]);
    if (cum >= mass) {
      kept_.resize(i + 1);
      break;
    }
  }
  cands_.swap(kept_);
  sorted_by_logit_ = false;
}

void Sampler::filter_typical() {
  // Locally typical sampling (Meister et al. 2022): keep the tokens whose surprisal -log p is
  // closest to the entropy H, up to typical_p of the mass. With d = logit - max and
  // log p = d - log(sum), -log p - H = E[d] - d: the log(sum) cancels, so no log() is needed.
  const Softmax sm = softmax();
  double mean_d = 0.0;
  for (size_t i = 0; i < cands_.size(); ++i) {
    const double d = static_cast<double>(cands_[i].logit) - sm.max;
    const double p = weights_[i] / sm.sum;  // softmax() left exp(d) there
    const double pd = p * d;
    mean_d += pd;
  }
  const double max = sm.max;
  keep_mass(params_.typical_p, sm,
            [mean_d, max](const Candidate& c) { return std::fabs(mean_d - (static_cast<double>(c.logit) - max)); });
}

void Sampler::filter_top_p() {
  const Softmax sm = softmax();
  if (sorted_by_logit_) {
    // Already in order (after top-k): just walk.
    double cum = 0.0;
    for (size_t i = 0; i < cands_.size(); ++i) {
      cum += weights_[i] / sm.sum;
      if (cum >= params_.top_p) {
        cands_.resize(i + 1);
        break;
      }
    }
    return;
  }
  // key = max - logit: increasing key is decreasing logit, so (key, id) order is ByLogit's.
  const double max = sm.max;
  keep_mass(params_.top_p, sm, [max](const Candidate& c) { return max - static_cast<double>(c.logit); });
}

void Sampler::filter_min_p() {
  // p / p_max = exp(logit - max_logit) >= min_p. remove_if keeps the order of the survivors.
  double max = -std::numeric_limits<double>::infinity();
  for (const Candidate& c : cands_) max = std::max(max, static_cast<double>(c.logit));
  const double min_p = params_.min_p;
  auto end = std::remove_if(cands_.begin(), cands_.end(), [max, min_p](const Candidate& c) {
    return deterministic_exp(static_cast<double>(c.logit) - max) < min_p;
  });
  cands_.erase(end, cands_.end());
}

double Sampler::shape_dense() {
  // No filter that needs a candidate list: weigh the whole vocabulary in id order, min-p by
  // zeroing. Same survivors, order and sums as the candidate path would give.
  const double max = max_of(work_.data(), work_.size());
  if (max == -std::numeric_limits<double>::infinity())
    fail("sampler: every token is banned (all logits are -inf after logit_bias)");
  const double t = params_.temperature;
  const double min_p = params_.min_p;
  weights_.resize(work_.size());
  double sum = 0.0;
  auto d = [&](size_t i) { return static_cast<double>(work_[i]) - max; };
  if (t == 1.0) {
    exp_each(work_.size(), d, [&](size_t i, double w) {
      const double kept = w < min_p ? 0.0 : w;  // min_p = 0 keeps all
      weights_[i] = kept;
      sum += kept;
    });
    dense_ = true;
    return sum;
  }
  if (min_p > 0.0) {
    // p / p_max at temperature 1 decides; zero the dropped weights before scaling the rest.
    exp_each(work_.size(), d, [&](size_t i, double w) { weights_[i] = w < min_p ? 0.0 : 1.0; });
  }
  exp_each(
      work_.size(), [&](size_t i) { return d(i) / t; },
      [&](size_t i, double w) {
        const double kept = min_p > 0.0 ? (weights_[i] == 0.0 ? 0.0 : w) : w;
        weights_[i] = kept;
        sum += kept;
      });
  dense_ = true;
  return sum;
}

double Sampler::shape() {
  const size_t k = static_cast<size_t>(params_.top_k);
  const bool top_k = k > 0 && k < work_.size();
  if (!top_k && params_.typical_p >= 1.0f && params_.top_p >= 1.0f) return shape_dense();
  dense_ = false;
  if (top_k) {
    select_top_k(k);
  } else {
    cands_.clear();
    for (size_t i = 0; i < work_.size(); ++i)
      if (work_[i] != -kInf) cands_.push_back({work_[i], static_cast<int32_t>(i)});
    sorted_by_logit_ = false;
  }
  if (cands_.empty()) fail("sampler: every token is banned (all logits are -inf after logit_bias)");

  if (params_.typical_p < 1.0f) filter_typical();
  if (params_.top_p < 1.0f) filter_top_p();
  if (params_.min_p > 0.0f) filter_min_p();

  double max = -std::numeric_limits<double>::infinity();
  for (const Candidate& c : cands_) max = std::max(max, static_cast<double>(c.logit));
  const double t = params_.temperature;
  weights_.clear();
  double sum = 0.0;
  for (const Candidate& c : cands_) {
    const double w = deterministic_exp((static_cast<double>(c.logit) - max) / t);
    weights_.push_back(w);
    sum += w;
  }
  return sum;  // >= 1: the most likely survivor has weight exactly 1
}

void Sampler::fill_logprobs(int32_t chosen, TokenLogprobs* out) {
  // Reported numbers, not a decision: libm's expf is fine here (and faster).
  const float max_f = max_of(work_.data(), work_.size());
  const double max = max_f;
  double sum = 0.0;
  for (float l : work_) sum += static_cast<double>(std::exp(l - max_f));
  const double log_sum = std::log(sum);
  auto logprob = [&](float l) { return static_cast<float>(static_cast<double>(l) - max - log_sum); };
  out->chosen = {chosen, logprob(work_[chosen])};

  // Top n as a heap of (id, logit) with the worst in front, as in select_top_k.
  auto& top = out->top;
  top.clear();
  const auto n = static_cast<size_t>(params_.n_logprobs);
  auto before = [](const TokenLogprob& a, const TokenLogprob& b) {
    return a.logprob > b.logprob || (a.logprob == b.logprob && a.id < b.id);
  };
  if (n > 0) {
    for (size_t i = 0; i < work_.size(); ++i) {
      const float l = work_[i];
      if (l == -kInf) continue;
      if (top.size() < n) {
        top.push_back({static_cast<int32_t>(i), l});
        std::push_heap(top.begin(), top.end(), before);
      } else if (l > top.front().logprob) {
        std::pop_heap(top.begin(), top.end(), before);
        top.back() = {static_cast<int32_t>(i), l};
        std::push_heap(top.begin(), top.end(), before);
      }
    }
    std::sort_heap(top.begin(), top.end(), before);
  }
  for (TokenLogprob& t : top) t.logprob = logprob(t.logprob);
}

bool Sampler::device_chain() const {
  return !has_penalties_ && bias_.empty() && params_.typical_p >= 1.0f && params_.n_logprobs == 0;
}

double Sampler::draw() { return params_.greedy() ? 0.0 : next_uniform(); }

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history, TokenLogprobs* logprobs) {
  return sample_impl(logits, history, nullptr, logprobs);
}

int32_t Sampler::sample_with(std::span<const float> logits, std::span<const int32_t> history, double u,
                             TokenLogprobs* logprobs) {
  if (!(u >= 0.0 && u < 1.0)) fail("sampler: the uniform number must be in [0, 1), got {}", u);
  return sample_impl(logits, history, &u, logprobs);
}

int32_t Sampler::sample_impl(std::span<const float> logits, std::span<const int32_t> history, const double* u,
                             TokenLogprobs* logprobs) {
  adjust(logits, history);
  int32_t chosen;
  if (params_.greedy()) {
    chosen = argmax();
  } else {
    const double total = shape();
    const double target = (u != nullptr ? *u : next_uniform()) * total;
    // The walk order is id order (dense_) or the candidates' order; both are fixed by values and
    // ids alone. If rounding carries target past the last bucket, the last survivor is taken.
    const size_t n = weights_.size();
    auto id_at = [this](size_t i) { return dense_ ? static_cast<int32_t>(i) : cands_[i].id; };
    double cum = 0.0;
    size_t last = n;
    chosen = -1;
    for (size_t i = 0; i < n; ++i) {
      if (weights_[i] == 0.0) continue;
      cum += weights_[i];
      last = i;
      if (target < cum) {
        chosen = id_at(i);
        break;
      }
    }
    if (chosen < 0) chosen = id_at(last);  // last < n: the top survivor has weight 1
  }
  if (logprobs) fill_logprobs(chosen, logprobs);
  return chosen;
}

void Sampler::distribution(std::span<const float> logits, std::span<const int32_t> history,
                           std::vector<TokenProb>* out) {
  adjust(logits, history);
  out->clear();
  if (params_.greedy()) {
    out->push_back({argmax(), 1.0});
    return;
  }
  const double total = shape();
  for (size_t i = 0; i < weights_.size(); ++i) {
    if (weights_[i] == 0.0) continue;
    out->push_back({dense_ ? static_cast<int32_t>(i) : cands_[i].id, weights_[i] / total});
  }
}

}  // namespace onebit
