// Engine behaviour beyond the goldens: batched prefill == token-by-token decode, chunked prefill,
// fast backend vs scalar reference, truncate/reset, and errors on bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "bitnet_testdata.h"
#include "core/base/error.h"
#include "engine/engine.h"

namespace onebit {
namespace {

std::unique_ptr<Model> tiny(const char* form = "tiny-packed-auto") {
  return load_hf((testdata::bitnet_dir() / form).string());
}

double max_abs_diff(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

std::vector<float> copy(std::span<const float> s) { return {s.begin(), s.end()}; }

double max_abs(std::span<const float> a) {
  double m = 0;
  for (float v : a) m = std::max(m, std::fabs(double(v)));
  return m;
}

const std::vector<int32_t> kPrompt = {1, 200, 201, 202, 5, 5, 5, 60, 61, 62, 63, 120, 7, 8, 9};

// Prefill as one batch, token by token, and in chunks of 4 rows: the per-row math is the same
// (integer GEMM sums are exact, attention handles each row alone), so the logits are identical.
void check_batching(const Model& m, bool reference) {
  EngineOptions o;
  o.reference = reference;
  o.n_ctx = 64;
  auto e = Engine::load(m, o);
  const int64_t V = e->n_vocab();
  auto s = e->new_session();
  const std::vector<float> all = copy(s->decode(kPrompt, true));
  EXPECT_EQ(s->n_past(), static_cast<int64_t>(kPrompt.size()));
  s->reset();
  for (size_t i = 0; i < kPrompt.size(); ++i) {
    std::span<const float> l = s->decode(std::span(&kPrompt[i], 1));
    ASSERT_EQ(static_cast<int64_t>(l.size()), V);
    EXPECT_EQ(max_abs_diff(l, std::span(all).subspan(i * V, V)), 0.0) << "position " << i;
  }
  EXPECT_EQ(s->n_past(), static_cast<int64_t>(kPrompt.size()));

  o.n_batch = 4;
  auto e4 = Engine::load(m, o);
  auto s4 = e4->new_session();
  std::span<const float> chunked = s4->decode(kPrompt, true);
  EXPECT_EQ(max_abs_diff(chunked, std::span(all).subspan(0, kPrompt.size() * V)), 0.0);
  s4->reset();
  std::span<const float> last = s4->decode(kPrompt);
  EXPECT_EQ(max_abs_diff(last, std::span(all).subspan((kPrompt.size() - 1) * V, V)), 0.0);
}

// How inputs are cut into passes: every piece of a multi-token input keeps at least 2 rows where
// the pass allows it (the backends' multi-row attention then takes every row of a prompt, however
// it is cut), and every piece fits the pass.
TEST(Engine, InputPiecesKeepTwoRows) {
  EXPECT_EQ(input_piece_rows(1, 1), 1);   // a decode step
  EXPECT_EQ(input_piece_rows(5, 16), 5);  // fits
  EXPECT_EQ(input_piece_rows(17, 16), 15);  // 16 would leave 1 behind
  EXPECT_EQ(input_piece_rows(18, 16), 16);
  EXPECT_EQ(input_piece_rows(3, 2), 0);   // 2 + 1 or 1 + 2: wait for a bigger pass
  EXPECT_EQ(input_piece_rows(9, 1), 0);
  EXPECT_EQ(input_piece_rows(9, 0), 0);
  for (int64_t room = 1; room <= 40; ++room)
    for (int64_t left = 1; left <= 100; ++left) {
      const int64_t t = input_piece_rows(left, room);
      ASSERT_LE(t, room);
      ASSERT_LE(t, left);
      if (t > 0 && t < left) {
        EXPECT_GE(t, 2) << left << " in " << room;
        EXPECT_GE(left - t, 2) << left << " in " << room;
      }
      if (left <= room) {
        EXPECT_EQ(t, left);
      } else if (room >= 4) {
        EXPECT_GT(t, 0) << left << " in " << room;  // an empty pass always progresses
      }
    }
}

TEST(Engine, BatchedPrefillEqualsTokenByToken) {
  auto m = tiny();
  check_batching(*m, false);
  check_batching(*m, true);
}

TEST(Engine, BatchedPrefillEqualsTokenByToken2b4tShape) {
  const nlohmann::json g = testdata::read_json(testdata::bitnet_dir() / "2b4t-2layer-packed-auto.golden.json");
  std::unique_ptr<testdata::TempDir> tmp;
  auto m = testdata::load_golden_model("2b4t-2layer-packed-auto", g, tmp);
  check_batching(*m, false);
}

TEST(Engine, TruncateReusesPrefix) {
  auto m = tiny();
  auto e = Engine::load(*m, {.n_ctx = 64});
  const int64_t V = e->n_vocab();
  auto s = e->new_session();
  const std::vector<float> want = copy(s->decode(kPrompt, true));
  s->reset();
  std::vector<int32_t> other = kPrompt;
  other[10] = 99;
  s->decode(other);
  s->truncate(10);
  EXPECT_EQ(s->n_past(), 10);
  std::span<const float> tail = s->decode(std::span(kPrompt).subspan(10), true);
  EXPECT_EQ(max_abs_diff(tail, std::span(want).subspan(10 * V, (kPrompt.size() - 10) * V)), 0.0);
  EXPECT_THROW(s->truncate(100), Error);
  EXPECT_THROW(s->truncate(-1), Error);
}

TEST(Engine, KvF16IsClose) {
  auto m = tiny();
  auto e32 = Engine::load(*m, {.n_ctx = 64});
  auto e16 = Engine::load(*m, {.n_ctx = 64, .kv_dtype = KvDtype::kF16});
  auto a = e32->new_session();
  auto b = e16->new_session();
  std::span<const float> la = a->decode(kPrompt);
  std::span<const float> lb = b->decode(kPrompt);
  EXPECT_LE(max_abs_diff(la, lb), 5e-2 * max_abs(la));  // fp16 keys/values move int8 codes
}

TEST(Engine, FastMatchesReference) {
  for (const char* form : {"tiny-packed-auto", "tiny-packed-bit", "tiny-bf16"}) {
    auto m = tiny(form);
    auto f = Engine::load(*m, {.n_ctx = 64});
    auto r = Engine::load(*m, {.n_ctx = 64, .reference = true});
    auto sf = f->new_session();
    auto sr = r->new_session();
    std::span<const float> lf = sf->decode(kPrompt, true);
    std::span<const float> lr = sr->decode(kPrompt, true);
    const double d = max_abs_diff(lf, lr), mx = max_abs(lr);
    std::printf("[engine] %s fast vs reference: max|diff| %.3g of max|logit| %.3g\n", form, d, mx);
    EXPECT_LE(d, 1e-4 * mx) << form;
  }
}

TEST(Engine, Errors) {
  auto m = tiny();
  auto e = Engine::load(*m, {.n_ctx = 16});
  auto s = e->new_session();
  EXPECT_THROW(s->decode({}), Error);
  const std::vector<int32_t> bad = {1, 256};
  try {
    s->decode(bad);
    ADD_FAILURE() << "no error for an id outside the vocabulary";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("256"), std::string::npos) << err.what();
  }
  const std::vector<int32_t> neg = {-3};
  EXPECT_THROW(s->decode(neg), Error);
  EXPECT_EQ(s->n_past(), 0);
  const std::vector<int32_t> longp(17, 5);
  try {
    s->decode(longp);
    ADD_FAILURE() << "no error for a prompt longer than the context";
  } catch (const Error& err) {
    const std::string msg = err.what();
    EXPECT_NE(msg.find("17"), std::string::npos) << msg;
    EXPECT_NE(msg.find("16"), std::string::npos) << msg;
  }
  const std::vector<int32_t> ten(10, 5);
  s->decode(ten);
  EXPECT_THROW(s->decode(ten), Error);  // 20 > 16
  EXPECT_EQ(s->n_past(), 10);
  s->decode(std::span(ten).subspan(0, 6));  // exactly fills the context
  EXPECT_EQ(s->n_past(), 16);
  EXPECT_THROW(s->decode(std::span(ten).subspan(0, 1)), Error);

  EXPECT_THROW(Engine::load(*m, {.n_ctx = 100000}), Error);
  EXPECT_THROW(Engine::load(*m, {.n_ctx = -1}), Error);
  EXPECT_THROW(Engine::load(*m, {.n_batch = 0}), Error);
}

TEST(Engine, RejectsBrokenModel) {
  auto m = tiny();
  // Drop a tensor: load must name it.
  auto it = std::find_if(m->tensors.begin(), m->tensors.end(),
                         [](const Tensor& t) { return t.name == "blk.1.ffn_up.weight"; });
  ASSERT_NE(it, m->tensors.end());
  m->tensors.erase(it);
  try {
    Engine::load(*m);
    ADD_FAILURE() << "no error for a missing tensor";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("blk.1.ffn_up.weight"), std::string::npos) << err.what();
  }
}

// Diagnostic: how far apart do the fast and reference backends (both ours, fp32 with different
// summation orders) land on the 2B-4T-shaped random model? Sets the scale of what the golden
// comparison can expect there.
TEST(Engine, FastVsReference2b4tShape) {
  for (const char* tag : {"2b4t-2layer-packed-auto", "2b4t-2layer-bf16"}) {
    const nlohmann::json g = testdata::read_json(testdata::bitnet_dir() / (std::string(tag) + ".golden.json"));
    std::unique_ptr<testdata::TempDir> tmp;
    auto m = testdata::load_golden_model(tag, g, tmp);
    auto f = Engine::load(*m, {.n_ctx = 64});
    auto r = Engine::load(*m, {.n_ctx = 64, .reference = true});
    const std::vector<int32_t> p = g.at("results")[1].at("prompt").get<std::vector<int32_t>>();
    auto sf = f->new_session();
    auto sr = r->new_session();
    std::span<const float> lf = sf->decode(p, true);
    std::span<const float> lr = sr->decode(p, true);
    const int64_t V = f->n_vocab();
    std::string per;
    for (size_t i = 0; i < p.size(); ++i)
      per += fmt::format(" {:.2g}", max_abs_diff(lf.subspan(i * V, V), lr.subspan(i * V, V)));
    std::printf("[engine] %s fast vs reference per position:%s (max|logit| %.3g)\n", tag, per.c_str(), max_abs(lr));
  }
}

}  // namespace
}  // namespace onebit
