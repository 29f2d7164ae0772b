// Engine::decode_batch (continuous batching): several sessions in shared passes give, session by
// session, exactly the logits of Session::decode; passes split long items; bad input runs nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "core/base/error.h"
#include "core/formats/model_loader.h"
#include "engine/engine.h"

namespace onebit {
namespace {

std::unique_ptr<Model> model() {
  return load_model((std::filesystem::path(ONEBIT_SOURCE_DIR) / "models/1bit-brown-26m.h1b").string());
}

std::vector<float> copy(std::span<const float> s) { return {s.begin(), s.end()}; }

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<int32_t> ids(int n, int seed) {
  std::vector<int32_t> v;
  for (int i = 0; i < n; ++i) v.push_back(3 + (i * 131 + seed * 977) % 4000);
  return v;
}

// Sessions at different positions, prompts and single tokens mixed, with passes of 16 rows so that
// items are split across passes; three rounds. Reference: the same calls one session at a time.
TEST(DecodeBatch, EqualsOneSessionAtATime) {
  auto m = model();
  EngineOptions o;
  o.n_ctx = 256;
  o.n_batch = 16;
  auto e = Engine::load(*m, o);
  constexpr int kSeqs = 4;
  std::vector<std::unique_ptr<Session>> batched, alone;
  for (int i = 0; i < kSeqs; ++i) {
    batched.push_back(e->new_session());
    alone.push_back(e->new_session());
  }
  const std::vector<std::vector<int32_t>> rounds[3] = {
      {ids(5, 1), ids(23, 2), ids(1, 3), ids(40, 4)},
      {ids(1, 5), ids(1, 6), ids(17, 7), ids(1, 8)},
      {ids(2, 9), ids(1, 10), ids(1, 11), ids(33, 12)},
  };
  for (const auto& r : rounds) {
    std::vector<BatchItem> items;
    for (int i = 0; i < kSeqs; ++i) items.push_back({batched[i].get(), r[i], {}});
    e->decode_batch(items);
    for (int i = 0; i < kSeqs; ++i) {
      const std::vector<float> want = copy(alone[i]->decode(r[i]));
      EXPECT_TRUE(same_bits(items[i].logits, want)) << "session " << i;
      EXPECT_EQ(batched[i]->n_past(), alone[i]->n_past());
    }
  }
  // The sessions keep working on their own afterwards.
  const int32_t t = 42;
  for (int i = 0; i < kSeqs; ++i) EXPECT_TRUE(same_bits(copy(batched[i]->decode(std::span(&t, 1))), alone[i]->decode(std::span(&t, 1))));
}

// BatchOutput::kArgmax: each item gets the index of its largest logit (the first among equals),
// the same as the logits of an identical batch run with kLogits, and greedy decoding driven by it
// follows the same tokens.
TEST(DecodeBatch, ArgmaxEqualsTheLogitsArgmax) {
  auto m = model();
  EngineOptions o;
  o.n_ctx = 128;
  o.n_batch = 16;
  auto e = Engine::load(*m, o);
  constexpr int kSeqs = 3;
  std::vector<std::unique_ptr<Session>> g, l;
  for (int i = 0; i < kSeqs; ++i) {
    g.push_back(e->new_session());
    l.push_back(e->new_session());
  }
  std::vector<std::vector<int32_t>> next = {ids(7, 1), ids(20, 2), ids(1, 3)};
  for (int step = 0; step < 6; ++step) {
    std::vector<BatchItem> gi, li;
    for (int i = 0; i < kSeqs; ++i) {
      gi.push_back({g[i].get(), next[i], {}});
      li.push_back({l[i].get(), next[i], {}});
    }
    e->decode_batch(gi, BatchOutput::kArgmax);
    e->decode_batch(li);
    for (int i = 0; i < kSeqs; ++i) {
      EXPECT_TRUE(gi[i].logits.empty());
      const auto& lg = li[i].logits;
      const int32_t want = static_cast<int32_t>(std::max_element(lg.begin(), lg.end()) - lg.begin());
      EXPECT_EQ(gi[i].argmax, want) << "step " << step << ", session " << i;
      next[i] = {want};
    }
  }
}

TEST(DecodeBatch, BadInputRunsNothing) {
  auto m = model();
  EngineOptions o;
  o.n_ctx = 32;
  auto e = Engine::load(*m, o);
  auto a = e->new_session(), b = e->new_session();
  const std::vector<int32_t> ok = ids(4, 1), too_long = ids(40, 2), bad = {5, 4096};
  auto expect_nothing_ran = [&](std::vector<BatchItem> items) {
    EXPECT_THROW(e->decode_batch(items), Error);
    EXPECT_EQ(a->n_past(), 0);
    EXPECT_EQ(b->n_past(), 0);
  };
  expect_nothing_ran({{a.get(), ok, {}}, {b.get(), too_long, {}}});
  expect_nothing_ran({{a.get(), ok, {}}, {b.get(), bad, {}}});
  expect_nothing_ran({{a.get(), ok, {}}, {a.get(), ok, {}}});
  expect_nothing_ran({{a.get(), ok, {}}, {b.get(), {}, {}}});
  auto other = Engine::load(*m, o);
  auto c = other->new_session();
  expect_nothing_ran({{a.get(), ok, {}}, {c.get(), ok, {}}});
  std::vector<BatchItem> none;
  e->decode_batch(none);
}

}  // namespace
}  // namespace onebit
