#include "core/sampler/sampling_params.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "core/base/error.h"

namespace onebit {
namespace {

constexpr int64_t kVocab = 1000;

// Applies `edit` to default params and returns validate()'s message ("" if it passed).
std::string error_of(const std::function<void(SamplingParams&)>& edit) {
  SamplingParams p;
  edit(p);
  try {
    p.validate(kVocab);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(SamplingParams, DefaultsAreValid) {
  EXPECT_EQ(error_of([](SamplingParams&) {}), "");
  EXPECT_FALSE(SamplingParams{}.greedy());
}

TEST(SamplingParams, EdgesOfEachRangeAreValid) {
  EXPECT_EQ(error_of([](SamplingParams& p) {
              p.temperature = 0;
              p.top_k = 5000;  // more than the vocabulary: same as off
              p.top_p = 1;
              p.min_p = 1;
              p.typical_p = 0.01f;
              p.repetition_penalty = 0.5f;
              p.penalty_last_n = -1;
              p.frequency_penalty = -2;
              p.presence_penalty = 2;
              p.logit_bias = {{0, -100.0f}, {999, 100.0f}};
              p.n_logprobs = 20;
              p.max_tokens = 0;
              p.stop = std::vector<std::string>(SamplingParams::kMaxStopStrings, "x");
              p.stop_token_ids = {0, 999};
            }),
            "");
}

TEST(SamplingParams, EachFieldNamesItsRange) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  using ::testing::HasSubstr;
  EXPECT_EQ(error_of([](SamplingParams& p) { p.top_p = 1.5f; }), "top_p must be in (0, 1], got 1.5");
  EXPECT_EQ(error_of([](SamplingParams& p) { p.top_p = 0.0f; }), "top_p must be in (0, 1], got 0");
  EXPECT_THAT(error_of([&](SamplingParams& p) { p.top_p = nan; }), HasSubstr("top_p must be in (0, 1]"));
  EXPECT_THAT(error_of([](SamplingParams& p) { p.temperature = -0.1f; }), HasSubstr("temperature must be"));
  EXPECT_THAT(error_of([](SamplingParams& p) { p.temperature = INFINITY; }), HasSubstr("temperature must be"));
  EXPECT_THAT(error_of([&](SamplingParams& p) { p.temperature = nan; }), HasSubstr("temperature must be"));
  EXPECT_EQ(error_of([](SamplingParams& p) { p.top_k = -1; }), "top_k must be >= 0 (0 = off), got -1");
  EXPECT_EQ(error_of([](SamplingParams& p) { p.min_p = 1.1f; }), "min_p must be in [0, 1], got 1.1");
  EXPECT_EQ(error_of([](SamplingParams& p) { p.typical_p = 0; }), "typical_p must be in (0, 1], got 0");
  EXPECT_THAT(error_of([](SamplingParams& p) { p.repetition_penalty = 0; }),
              HasSubstr("repetition_penalty must be a finite number > 0"));
  EXPECT_THAT(error_of([](SamplingParams& p) { p.penalty_last_n = -2; }), HasSubstr("penalty_last_n must be >= -1"));
  EXPECT_EQ(error_of([](SamplingParams& p) { p.frequency_penalty = 2.5f; }),
            "frequency_penalty must be in [-2, 2], got 2.5");
  EXPECT_EQ(error_of([](SamplingParams& p) { p.presence_penalty = -3; }),
            "presence_penalty must be in [-2, 2], got -3");
  EXPECT_EQ(error_of([](SamplingParams& p) { p.logit_bias[1000] = 1; }),
            "logit_bias token id must be in [0, 1000), got 1000");
  EXPECT_EQ(error_of([](SamplingParams& p) { p.logit_bias[-1] = 1; }),
            "logit_bias token id must be in [0, 1000), got -1");
  EXPECT_EQ(error_of([](SamplingParams& p) { p.logit_bias[5] = -101; }),
            "logit_bias for token 5 must be in [-100, 100], got -101");
  EXPECT_EQ(error_of([](SamplingParams& p) { p.n_logprobs = 21; }), "n_logprobs must be in [0, 20], got 21");
  EXPECT_THAT(error_of([](SamplingParams& p) { p.max_tokens = -2; }), HasSubstr("max_tokens must be >= 0"));
  EXPECT_EQ(error_of([](SamplingParams& p) { p.stop = std::vector<std::string>(17, "x"); }),
            "stop must hold at most 16 strings, got 17");
  EXPECT_EQ(error_of([](SamplingParams& p) { p.stop = {"a", ""}; }), "stop[1] must not be empty");
  EXPECT_THAT(error_of([](SamplingParams& p) { p.stop = {std::string(300, 'x')}; }),
              HasSubstr("stop[0] must be at most 256 bytes"));
  EXPECT_EQ(error_of([](SamplingParams& p) { p.stop_token_ids = {1, 1000}; }),
            "stop_token_ids[1] must be in [0, 1000), got 1000");
}

TEST(SamplingParams, RejectsBadVocab) {
  EXPECT_THROW(SamplingParams{}.validate(0), Error);
}

}  // namespace
}  // namespace onebit
