// Engine::decode_batch (continuous batching): several sessions in shared passes give, session by
// session, exactly the logits of Session::decode; passes split long items; bad input runs nothing.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/base/error.h"
#include "core/formats/model_loader.h"
#include "batch_check.h"
#include "engine/engine.h"

namespace onebit {
namespace {

std::unique_ptr<Model> model() {
  return load_model((std::filesystem::path(ONEBIT_SOURCE_DIR) / "models/1bit-brown-26m.h1b").string());
}

using testing::batch_ids;
using testing::same_bits;

// Sessions at different positions, prompts and single tokens mixed, with passes of 16 rows so that
// items are split across passes; three rounds. Reference: the same calls one session at a time.
TEST(DecodeBatch, EqualsOneSessionAtATime) {
  auto m = model();
  EngineOptions o;
  o.n_ctx = 256;
  o.n_batch = 16;
  auto e = Engine::load(*m, o);
  auto [batched, alone] = testing::expect_batch_equals_alone(
      *e,
      {{batch_ids(5, 1), batch_ids(23, 2), batch_ids(1, 3), batch_ids(40, 4)},
       {batch_ids(1, 5), batch_ids(1, 6), batch_ids(17, 7), batch_ids(1, 8)},
       {batch_ids(2, 9), batch_ids(1, 10), batch_ids(1, 11), batch_ids(33, 12)}},
      "cpu");
  // The sessions keep working on their own afterwards.
  const int32_t t = 42;
  for (size_t i = 0; i < batched.size(); ++i) {
    const std::span<const float> b = batched[i]->decode(std::span(&t, 1));
    const std::vector<float> keep(b.begin(), b.end());
    EXPECT_TRUE(same_bits(keep, alone[i]->decode(std::span(&t, 1))));
  }
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
  testing::expect_batch_argmax_matches(*e, {batch_ids(7, 1), batch_ids(20, 2), batch_ids(1, 3)}, 6, "cpu");
}

TEST(DecodeBatch, BadInputRunsNothing) {
  auto m = model();
  EngineOptions o;
  o.n_ctx = 32;
  auto e = Engine::load(*m, o);
  auto a = e->new_session(), b = e->new_session();
  const std::vector<int32_t> ok = batch_ids(4, 1), too_long = batch_ids(40, 2), bad = {5, 4096};
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
