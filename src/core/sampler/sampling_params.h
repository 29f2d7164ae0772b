// SamplingParams: everything a request says about how to pick the next token and when to stop.
//
// Field meanings follow the OpenAI API where it has the field (frequency/presence penalty,
// logit_bias, logprobs, stop, seed, max_tokens) and llama.cpp where it does not (top_k, min_p,
// typical_p, repetition_penalty). Every "off" value is the default, so a default-constructed
// SamplingParams samples from the plain softmax at temperature 1. docs/sampling.md has the
// order in which the Sampler applies them.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace onebit {

struct SamplingParams {
  static constexpr int32_t kMaxLogprobs = 20;      // OpenAI's top_logprobs limit
  static constexpr size_t kMaxStopStrings = 16;    // OpenAI allows 4; we accept a few more
  static constexpr size_t kMaxStopStringBytes = 256;
  static constexpr float kBanBias = -100.0f;       // a logit_bias of exactly this bans the token

  float temperature = 1.0f;          // >= 0; 0 = greedy (argmax, ties -> lowest id)
  int32_t top_k = 0;                 // >= 0; 0 = off; >= n_vocab is the same as off
  float top_p = 1.0f;                // (0, 1]; 1 = off
  float min_p = 0.0f;                // [0, 1]; 0 = off
  float typical_p = 1.0f;            // (0, 1]; 1 = off
  float repetition_penalty = 1.0f;   // > 0; 1 = off (divides positive logits, multiplies negative)
  int32_t penalty_last_n = 64;       // window of history the penalties look at; -1 = all, 0 = off
  float frequency_penalty = 0.0f;    // [-2, 2]; logit -= count * frequency_penalty
  float presence_penalty = 0.0f;     // [-2, 2]; logit -= (count > 0) * presence_penalty
  std::map<int32_t, float> logit_bias;  // token id -> additive bias in [-100, 100]; -100 bans
  std::optional<uint64_t> seed;      // unset: a random seed from the OS (Sampler::seed() tells it)
  int32_t n_logprobs = 0;            // [0, 20]: alternatives reported with each token
  int32_t max_tokens = -1;           // >= 0, or -1 = until the context is full
  std::vector<std::string> stop;     // up to kMaxStopStrings non-empty strings, never emitted
  std::vector<int32_t> stop_token_ids;  // generation ends when one of these is sampled

  // Throws Error naming the first field out of range, e.g. "top_p must be in (0, 1], got 1.5".
  // n_vocab bounds the token ids in logit_bias and stop_token_ids.
  void validate(int64_t n_vocab) const;

  bool greedy() const { return temperature == 0.0f; }
};

}  // namespace onebit
