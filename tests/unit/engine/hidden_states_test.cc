// Session::hidden_states (what /v1/embeddings pools): shape, determinism, causality, that it
// leaves the tokens in the session exactly as decode() would, and its errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/base/error.h"
#include "core/formats/model_loader.h"
#include "engine/engine.h"

namespace onebit {
namespace {

class HiddenStates : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = load_model((std::filesystem::path(ONEBIT_SOURCE_DIR) / "models/1bit-brown-26m.h1b").string());
    EngineOptions o;
    o.n_ctx = 64;
    o.n_batch = 8;  // so that the 20-token input below runs in three chunks
    o.n_threads = 1;
    engine_ = Engine::load(*model_, o);
    dim_ = engine_->config().hidden_size;
  }
  std::unique_ptr<Model> model_;
  std::unique_ptr<Engine> engine_;
  int64_t dim_ = 0;
};

const std::vector<int32_t> kTokens = {0, 312, 45, 1999, 7, 7, 7, 800, 801, 802, 64, 33, 1000, 2, 5, 9, 4000, 12, 13, 14};

TEST_F(HiddenStates, ShapeAndDeterminism) {
  auto s = engine_->new_session();
  const std::vector<float> h = s->hidden_states(kTokens);
  ASSERT_EQ(static_cast<int64_t>(h.size()), static_cast<int64_t>(kTokens.size()) * dim_);
  EXPECT_EQ(s->n_past(), static_cast<int64_t>(kTokens.size()));
  for (float x : h) ASSERT_TRUE(std::isfinite(x));
  // Rows differ (a broken forward pass that ignores the tokens would give equal rows).
  EXPECT_FALSE(std::equal(h.begin(), h.begin() + dim_, h.begin() + dim_));
  // Same tokens, same vectors: on this session again (it is reset first) and on another one.
  EXPECT_EQ(s->hidden_states(kTokens), h);
  auto other = engine_->new_session();
  other->decode(std::vector<int32_t>{5, 6, 7});  // a session with history: reset by hidden_states
  EXPECT_EQ(other->hidden_states(kTokens), h);
}

TEST_F(HiddenStates, RowsDoNotDependOnLaterTokens) {
  auto s = engine_->new_session();
  const std::vector<float> full = s->hidden_states(kTokens);
  for (size_t k : {size_t{1}, size_t{5}, size_t{8}, size_t{13}}) {
    const std::vector<int32_t> prefix(kTokens.begin(), kTokens.begin() + static_cast<std::ptrdiff_t>(k));
    const std::vector<float> h = s->hidden_states(prefix);
    ASSERT_EQ(h.size(), k * static_cast<size_t>(dim_));
    // Batched rows are computed independently (exact integer GEMM sums, per-row attention).
    EXPECT_TRUE(std::equal(h.begin(), h.end(), full.begin())) << "prefix of " << k;
  }
  // A different later token changes the last row only.
  std::vector<int32_t> changed = kTokens;
  changed.back() = 77;
  const std::vector<float> c = s->hidden_states(changed);
  const size_t last = (kTokens.size() - 1) * static_cast<size_t>(dim_);
  EXPECT_TRUE(std::equal(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(last), full.begin()));
  EXPECT_FALSE(std::equal(c.begin() + static_cast<std::ptrdiff_t>(last), c.end(), full.begin() + static_cast<std::ptrdiff_t>(last)));
}

TEST_F(HiddenStates, LeavesTheTokensInTheSession) {
  // After hidden_states, decoding one more token gives the logits a fresh session gets for the
  // whole sequence: the KV cache holds the tokens at positions 0..n-1.
  auto s = engine_->new_session();
  s->decode(std::vector<int32_t>{9, 9, 9});  // history that hidden_states must replace
  s->hidden_states(kTokens);
  const int32_t next = 123;
  const std::span<const float> l1 = s->decode(std::span(&next, 1));
  const std::vector<float> got(l1.begin(), l1.end());

  auto fresh = engine_->new_session();
  std::vector<int32_t> seq = kTokens;
  seq.push_back(next);
  const std::span<const float> l2 = fresh->decode(seq);
  ASSERT_EQ(got.size(), l2.size());
  EXPECT_TRUE(std::equal(got.begin(), got.end(), l2.begin()));
  EXPECT_EQ(s->n_past(), fresh->n_past());
}

TEST_F(HiddenStates, BadInputThrows) {
  auto s = engine_->new_session();
  EXPECT_THROW(s->hidden_states(std::vector<int32_t>{}), Error);
  EXPECT_THROW(s->hidden_states(std::vector<int32_t>{1, -1}), Error);
  EXPECT_THROW(s->hidden_states(std::vector<int32_t>{1, static_cast<int32_t>(engine_->n_vocab())}), Error);
  EXPECT_THROW(s->hidden_states(std::vector<int32_t>(65, 3)), Error);  // context is 64
  EXPECT_EQ(s->hidden_states(std::vector<int32_t>(64, 3)).size(), static_cast<size_t>(64 * dim_));
}

}  // namespace
}  // namespace onebit
