#include "core/sampler/sampling_params.h"

#include <cmath>

#include "core/base/error.h"

namespace onebit {

// Every check is written so that NaN fails it: `!(x >= lo)` rather than `x < lo`.
void SamplingParams::validate(int64_t n_vocab) const {
  if (n_vocab <= 0 || n_vocab > INT32_MAX) fail("n_vocab must be in [1, {}], got {}", INT32_MAX, n_vocab);
  if (!(temperature >= 0.0f) || !std::isfinite(temperature))
    fail("temperature must be a finite number >= 0 (0 = greedy), got {}", temperature);
  if (top_k < 0) fail("top_k must be >= 0 (0 = off), got {}", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("top_p must be in (0, 1], got {}", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f)) fail("min_p must be in [0, 1], got {}", min_p);
  if (!(typical_p > 0.0f && typical_p <= 1.0f)) fail("typical_p must be in (0, 1], got {}", typical_p);
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty))
    fail("repetition_penalty must be a finite number > 0 (1 = off), got {}", repetition_penalty);
  if (penalty_last_n < -1) fail("penalty_last_n must be >= -1 (-1 = whole context, 0 = off), got {}", penalty_last_n);
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f))
    fail("frequency_penalty must be in [-2, 2], got {}", frequency_penalty);
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f))
    fail("presence_penalty must be in [-2, 2], got {}", presence_penalty);
  for (const auto& [id, bias] : logit_bias) {
    if (id < 0 || id >= n_vocab) fail("logit_bias token id must be in [0, {}), got {}", n_vocab, id);
    if (!(bias >= -100.0f && bias <= 100.0f))
      fail("logit_bias for token {} must be in [-100, 100], got {}", id, bias);
  }
  if (n_logprobs < 0 || n_logprobs > kMaxLogprobs)
    fail("n_logprobs must be in [0, {}], got {}", kMaxLogprobs, n_logprobs);
  if (max_tokens < -1) fail("max_tokens must be >= 0, or -1 for no limit, got {}", max_tokens);
  if (stop.size() > kMaxStopStrings)
    fail("stop must hold at most {} strings, got {}", kMaxStopStrings, stop.size());
  for (size_t i = 0; i < stop.size(); ++i) {
    if (stop[i].empty()) fail("stop[{}] must not be empty", i);
    if (stop[i].size() > kMaxStopStringBytes)
      fail("stop[{}] must be at most {} bytes long, got {}", i, kMaxStopStringBytes, stop[i].size());
  }
  for (size_t i = 0; i < stop_token_ids.size(); ++i) {
    int32_t id = stop_token_ids[i];
    if (id < 0 || id >= n_vocab) fail("stop_token_ids[{}] must be in [0, {}), got {}", i, n_vocab, id);
  }
}

}  // namespace onebit
