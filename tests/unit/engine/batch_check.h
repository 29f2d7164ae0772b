// Checks of Engine::decode_batch shared by the CPU (decode_batch_test.cc) and CUDA
// (cuda_engine_test.cc) tests.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace onebit::testing {

// n made-up token ids in [3, 4003), different for each seed.
inline std::vector<int32_t> batch_ids(int n, int seed) {
  std::vector<int32_t> v;
  for (int i = 0; i < n; ++i) v.push_back(3 + (i * 131 + seed * 977) % 4000);
  return v;
}

inline bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

inline int32_t argmax_of(std::span<const float> v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

// rounds[r][i]: the tokens session i gets in round r. Each round goes through one decode_batch on
// `batched` sessions and through Session::decode, one at a time, on as many `alone` sessions: the
// logits must be the same bits and the positions the same. Returns the sessions (batched, alone).
inline std::pair<std::vector<std::unique_ptr<Session>>, std::vector<std::unique_ptr<Session>>> expect_batch_equals_alone(
    Engine& e, const std::vector<std::vector<std::vector<int32_t>>>& rounds, const std::string& what) {
  const size_t n = rounds.front().size();
  std::vector<std::unique_ptr<Session>> batched, alone;
  for (size_t i = 0; i < n; ++i) {
    batched.push_back(e.new_session());
    alone.push_back(e.new_session());
  }
  for (size_t r = 0; r < rounds.size(); ++r) {
    std::vector<BatchItem> items;
    for (size_t i = 0; i < n; ++i) items.push_back({batched[i].get(), rounds[r][i], {}});
    e.decode_batch(items);
    for (size_t i = 0; i < n; ++i) {
      const std::span<const float> got = items[i].logits;
      const std::vector<float> keep(got.begin(), got.end());  // the next decode() may reuse the buffer
      EXPECT_TRUE(same_bits(keep, alone[i]->decode(rounds[r][i]))) << what << ": round " << r << ", session " << i;
      EXPECT_EQ(batched[i]->n_past(), alone[i]->n_past());
    }
  }
  return {std::move(batched), std::move(alone)};
}

// Greedy decoding of len(first) sessions for `steps` steps with BatchOutput::kArgmax, next to the
// same batches run with logits: each item's argmax must be the index of its largest logit.
inline void expect_batch_argmax_matches(Engine& e, std::vector<std::vector<int32_t>> next, int steps,
                                        const std::string& what) {
  const size_t n = next.size();
  std::vector<std::unique_ptr<Session>> g, l;
  for (size_t i = 0; i < n; ++i) {
    g.push_back(e.new_session());
    l.push_back(e.new_session());
  }
  for (int step = 0; step < steps; ++step) {
    std::vector<BatchItem> gi, li;
    for (size_t i = 0; i < n; ++i) {
      gi.push_back({g[i].get(), next[i], {}});
      li.push_back({l[i].get(), next[i], {}});
    }
    e.decode_batch(gi, BatchOutput::kArgmax);
    e.decode_batch(li);
    for (size_t i = 0; i < n; ++i) {
      EXPECT_TRUE(gi[i].logits.empty());
      const int32_t want = argmax_of(li[i].logits);
      EXPECT_EQ(gi[i].argmax, want) << what << ": step " << step << ", session " << i;
      next[i] = {want};
    }
  }
}

// BatchOutput::kSample: each item's token is what its sampler (a twin, same seed and settings)
// draws from the logits of an identical batch run with kLogits; the sessions then go on with those
// tokens. Several settings in one batch (greedy, temperature, top-k + top-p, top-p + min-p).
// Returns the number of steps x items where the two differ, which must be 0 except where a draw
// lies within rounding of a boundary (see docs/kernels-cuda.md); the caller says how many it allows.
inline int expect_batch_sample_matches(Engine& e, std::vector<std::vector<int32_t>> next, int steps,
                                       const std::string& what) {
  const size_t n = next.size();
  std::vector<std::unique_ptr<Session>> g, l;
  std::vector<Sampler> gs, ls;
  for (size_t i = 0; i < n; ++i) {
    g.push_back(e.new_session());
    l.push_back(e.new_session());
    SamplingParams p;
    p.seed = 100 + i;
    p.temperature = i % 4 == 0 ? 0.0f : 0.9f;
    p.top_k = i % 4 == 2 ? 40 : 0;
    p.top_p = i % 4 == 2 ? 0.9f : i % 4 == 3 ? 0.8f : 1.0f;
    p.min_p = i % 4 == 3 ? 0.05f : 0.0f;
    gs.emplace_back(p, e.n_vocab());
    ls.emplace_back(p, e.n_vocab());
  }
  int differ = 0;
  for (int step = 0; step < steps; ++step) {
    std::vector<BatchItem> gi, li;
    for (size_t i = 0; i < n; ++i) {
      gi.push_back({g[i].get(), next[i], {}});
      gi.back().sampler = &gs[i];
      li.push_back({l[i].get(), next[i], {}});
    }
    e.decode_batch(gi, BatchOutput::kSample);
    e.decode_batch(li);
    for (size_t i = 0; i < n; ++i) {
      EXPECT_TRUE(gi[i].logits.empty());
      const int32_t want = ls[i].sample(li[i].logits, {});
      if (gi[i].token != want) {
        ++differ;
        ADD_FAILURE() << what << ": step " << step << ", session " << i << ": sampled " << gi[i].token << ", host "
                      << want;
      }
      next[i] = {want};
    }
  }
  return differ;
}

}  // namespace onebit::testing
