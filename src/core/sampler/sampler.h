// Sampler: turns one step's logits into the next token id, following a SamplingParams.
//
// The chain, in order (docs/sampling.md says why and gives each definition):
//   logit_bias -> repetition / frequency / presence penalties
//   -> temperature == 0: argmax (ties -> lowest id), done
//   -> top-k -> typical-p -> top-p -> min-p -> temperature -> softmax -> draw
// The filters all judge tokens by the softmax at temperature 1 over the tokens still in play;
// temperature only reshapes the distribution among the survivors.
//
// Determinism: the draw uses std::mt19937_64 (fully specified by the C++ standard) and turns its
// 64 raw bits into a double itself; probabilities come from deterministic_exp, and every list the
// draw walks is in an order fixed by (value, token id). So the same seed, params, logits and
// history give the same token on any conforming platform and standard library.
//
// A Sampler keeps its RNG state between calls (one Sampler per generation stream) and owns
// vocab-sized scratch buffers, so sample() allocates nothing after the first call. Not
// thread-safe; use one per stream.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "core/sampler/sampling_params.h"

namespace onebit {

struct TokenLogprob {
  int32_t id = -1;
  float logprob = 0.0f;  // natural log
};

// What OpenAI's `logprobs` reports for one generated token. The values are the log-softmax of the
// logits after logit_bias and penalties, before top-k/p, min-p, typical-p and temperature: the
// model's distribution as the request shaped it, not the truncated one the token was drawn from.
// A banned token has logprob -inf and is never listed in `top`.
struct TokenLogprobs {
  TokenLogprob chosen;
  std::vector<TokenLogprob> top;  // the n_logprobs most likely, most likely first, ties -> lowest id
};

// One entry of the distribution a draw uses (see Sampler::distribution).
struct TokenProb {
  int32_t id = -1;
  double p = 0.0;
};

class Sampler {
 public:
  // Validates params against n_vocab (throws Error naming the bad field). An unset seed is
  // replaced by 64 bits from std::random_device; seed() reports the one in use.
  Sampler(SamplingParams params, int64_t n_vocab);

  // Picks the next token. `logits` has n_vocab entries (finite or -inf; NaN and +inf throw Error).
  // `history` is the prompt followed by the tokens generated so far; only its last
  // penalty_last_n entries are read, and only when a penalty is set. If `logprobs` is not null it
  // is filled (its vector's capacity is reused). Throws Error if every token is banned.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history,
                 TokenLogprobs* logprobs = nullptr);

  // Sampling somewhere else (the GPU, kernels/cuda/sample_cuda.h) with this sampler's stream of
  // random numbers. device_chain(): the chain is one a device sampler runs, i.e. nothing but
  // temperature, top_k, top_p and min_p is set (no logit_bias, penalties, typical_p, logprobs).
  // draw(): the uniform number the next sample() would use, taken now; the RNG advances exactly as
  // in sample() (one draw for a non-greedy chain; none for greedy, which returns 0). sample_with()
  // is sample() with that number given instead of drawn (u in [0, 1), else Error); the RNG is not
  // touched. So draw() followed by sample_with(logits, history, u) is sample(logits, history).
  bool device_chain() const;
  double draw();
  int32_t sample_with(std::span<const float> logits, std::span<const int32_t> history, double u,
                      TokenLogprobs* logprobs = nullptr);

  // The distribution the next draw would use, after every step of the chain: survivors in the
  // order the draw walks them, probabilities summing to 1. Greedy gives the argmax with p = 1.
  // Does not advance the RNG. For tests and for explaining a choice.
  void distribution(std::span<const float> logits, std::span<const int32_t> history,
                    std::vector<TokenProb>* out);

  uint64_t seed() const { return seed_; }
  const SamplingParams& params() const { return params_; }
  int64_t n_vocab() const { return n_vocab_; }

 private:
  struct Candidate {
    float logit;  // after bias and penalties
    int32_t id;
  };
  // The softmax at temperature 1 over cands_: p_i = deterministic_exp(logit_i - max) / sum.
  struct Softmax {
    double max;
    double sum;
  };

  // Copies logits into work_, checks them, applies logit_bias and the penalties.
  void adjust(std::span<const float> logits, std::span<const int32_t> history);
  int32_t argmax() const;
  // Runs top-k, typical-p, top-p, min-p and temperature on work_. Leaves the survivors either in
  // cands_ with their unnormalized final weights in weights_ (same order), or, when no filter
  // needs a candidate list (dense_), weights_ indexed by token id with 0 for the dropped ones.
  // Returns the weights' sum.
  double shape();
  double shape_dense();
  void select_top_k(size_t k);
  void filter_typical();
  void filter_top_p();
  void filter_min_p();
  // Also leaves exp(logit - max) of each candidate in weights_ (scratch until the final weights).
  Softmax softmax();
  // Keeps the shortest run of cands_, in increasing (key, id) order, whose softmax mass reaches
  // `mass`; key(c) >= 0. Buckets the keys in one pass and sorts only the bucket where the mass
  // is reached, so the cost is O(n) plus a small sort instead of a full sort of the vocabulary.
  template <typename Key>
  void keep_mass(double mass, const Softmax& sm, Key key);
  void fill_logprobs(int32_t chosen, TokenLogprobs* out);
  double next_uniform();  // in [0, 1), from the top 53 bits of one mt19937_64 output
  // sample() with u given, or drawn from the RNG (after shaping) when u is null.
  int32_t sample_impl(std::span<const float> logits, std::span<const int32_t> history, const double* u,
                      TokenLogprobs* logprobs);

  SamplingParams params_;
  int64_t n_vocab_;
  uint64_t seed_;
  std::mt19937_64 rng_;
  bool has_penalties_;
  std::vector<std::pair<int32_t, float>> bias_;  // logit_bias, sorted by id
  std::vector<float> work_;                       // n_vocab adjusted logits
  std::vector<int32_t> counts_;                   // n_vocab, all zero between calls
  std::vector<int32_t> touched_;                  // ids with counts_ != 0 during adjust()
  std::vector<Candidate> cands_;                  // tokens still in play
  std::vector<double> weights_;                   // final weights of cands_, or by id if dense_
  std::vector<Candidate> kept_;                   // keep_mass's output before it swaps into cands_
  std::vector<uint16_t> bucket_;                  // keep_mass: each candidate's key bucket
  std::vector<double> bucket_mass_;               // keep_mass: softmax mass per bucket
  bool sorted_by_logit_ = false;                  // cands_ is in (logit desc, id asc) order
  bool dense_ = false;
};

}  // namespace onebit
