// Free-running greedy decoding of the same prompts on two sessions, compared step by step: how
// far an approximation (the int8 LM head, a quantized KV cache) moves the tokens a model picks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <span>
#include <sstream>
#include <vector>

#include "core/base/model.h"
#include "core/tokenizer/tokenizer.h"
#include "engine/engine.h"

namespace onebit {

// The default model's validation excerpt (tests/data/default_model/valid_excerpt.txt) as token ids
// of model m's tokenizer, without BOS: the prompts greedy_agreement takes.
inline std::vector<int32_t> excerpt_ids(const Model& m) {
  const Tokenizer tok = Tokenizer::from_data(m.tokenizer);
  std::ifstream f(std::filesystem::path(ONEBIT_SOURCE_DIR) / "tests/data/default_model/valid_excerpt.txt");
  std::stringstream ss;
  ss << f.rdbuf();
  return tok.encode(ss.str(), false);
}

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
