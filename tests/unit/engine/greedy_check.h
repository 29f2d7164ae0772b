// Free-running greedy decoding of the same prompts on two sessions, compared step by step: how
// far an approximation (the int8 LM head, a quantized KV cache) moves the tokens a model picks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "engine/engine.h"

namespace onebit {

struct GreedyAgreement {
  int identical = 0;    // prompts whose `steps` greedy tokens are all equal
  int prefix = 0;       // common prefix lengths, summed over the prompts
  int min_prefix = 0;   // the shortest common prefix of one prompt
  int equal_steps = 0;  // steps (over all prompts) that picked the same token
};

// `prompts` prompts of 32 tokens taken from ids at 300 + 100 p (ids must hold them), each decoded
// greedily for `steps` tokens by a and by b (both reset first).
inline GreedyAgreement greedy_agreement(Session& a, Session& b, std::span<const int32_t> ids, int prompts, int steps) {
  auto argmax = [](std::span<const float> v) {
    return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
  };
  GreedyAgreement g;
  g.min_prefix = steps;
  for (int p = 0; p < prompts; ++p) {
    const std::span<const int32_t> prompt = ids.subspan(static_cast<size_t>(300 + 100 * p), 32);
    std::vector<int32_t> ga, gb;
    for (auto [s, out] : {std::pair{&a, &ga}, std::pair{&b, &gb}}) {
      s->reset();
      std::span<const float> l = s->decode(prompt);
      for (int k = 0; k < steps; ++k) {
        const int32_t next = argmax(l);
        out->push_back(next);
        l = s->decode(std::span(&next, 1));
      }
    }
    int pre = 0;
    while (pre < steps && ga[static_cast<size_t>(pre)] == gb[static_cast<size_t>(pre)]) ++pre;
    g.prefix += pre;
    g.min_prefix = std::min(g.min_prefix, pre);
    g.identical += pre == steps;
    for (int k = 0; k < steps; ++k) g.equal_steps += ga[static_cast<size_t>(k)] == gb[static_cast<size_t>(k)];
  }
  return g;
}

}  // namespace onebit
