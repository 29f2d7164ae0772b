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

// BatchOutput::kSample on the CPU: the items' samplers draw from the logits (the host path), the
// same tokens as Sampler::sample on the logits of a kLogits batch, step after step.
TEST(DecodeBatch, SampleEqualsTheSamplerOnTheLogits) {
  auto m = model();
  EngineOptions o;
  o.n_ctx = 128;
  o.n_batch = 16;
  auto e = Engine::load(*m, o);
  testing::expect_batch_sample_matches(
      *e, {batch_ids(7, 1), batch_ids(20, 2), batch_ids(1, 3), batch_ids(3, 4), batch_ids(2, 5)}, 6, "cpu");
}

// Session::decode_sample is decode() followed by Sampler::sample, on any chain (penalties and
// logit_bias included: those sample on the host on every backend).
TEST(DecodeBatch, DecodeSampleEqualsDecodeThenSample) {
  auto m = model();
  EngineOptions o;
  o.n_ctx = 64;
  auto e = Engine::load(*m, o);
  for (int chain = 0; chain < 3; ++chain) {
    SamplingParams p;
    p.seed = 9;
    p.temperature = 0.8f;
    p.top_k = chain == 1 ? 20 : 0;
    p.top_p = chain == 1 ? 0.9f : 1.0f;
    if (chain == 2) {
      p.repetition_penalty = 1.3f;
      p.logit_bias[7] = 2.0f;
    }
    Sampler a(p, e->n_vocab()), b(p, e->n_vocab());
    EXPECT_EQ(a.device_chain(), chain != 2);
    auto sa = e->new_session(), sb = e->new_session();
    std::vector<int32_t> history = batch_ids(6, chain);
    int32_t ta = sa->decode_sample(history, a, history);
    int32_t tb = b.sample(sb->decode(history), history);
    for (int step = 0; step < 20; ++step) {
      ASSERT_EQ(ta, tb) << "chain " << chain << ", step " << step;
      history.push_back(ta);
      const int32_t fed = ta;
      ta = sa->decode_sample(std::span(&fed, 1), a, history);
      tb = b.sample(sb->decode(std::span(&fed, 1)), history);
    }
    EXPECT_EQ(sa->n_past(), sb->n_past());
  }
  SamplingParams other;
  Sampler wrong_vocab(other, e->n_vocab() + 1);
  auto s = e->new_session();
  const std::vector<int32_t> ids = batch_ids(3, 1);
  EXPECT_THROW(s->decode_sample(ids, wrong_vocab), Error);
  EXPECT_EQ(s->n_past(), 0);
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
  // kSample: every item needs a sampler of this vocabulary whose chain a device can run.
  SamplingParams plain, biased;
  plain.seed = biased.seed = 1;
  biased.logit_bias[3] = 1.0f;
  Sampler sp(plain, e->n_vocab()), sb(biased, e->n_vocab()), sv(plain, e->n_vocab() - 1);
  auto expect_sample_refused = [&](Sampler* second) {
    std::vector<BatchItem> items = {{a.get(), ok, {}}, {b.get(), ok, {}}};
    items[0].sampler = &sp;
    items[1].sampler = second;
    EXPECT_THROW(e->decode_batch(items, BatchOutput::kSample), Error);
    EXPECT_EQ(a->n_past(), 0);
    EXPECT_EQ(b->n_past(), 0);
  };
  expect_sample_refused(nullptr);
  expect_sample_refused(&sb);
  expect_sample_refused(&sv);
  std::vector<BatchItem> none;
  e->decode_batch(none);
}

}  // namespace
}  // namespace onebit
