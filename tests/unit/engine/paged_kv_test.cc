// Paged KV cache (kv_pool.h, Session's block tables): any block size gives exactly the logits of a
// contiguous cache; sessions sharing prefix blocks of one pool get exactly what they get alone;
// truncating into a shared block copies it; a full pool is an Error that changes nothing. All of
// it for every KV cache type (f32, f16, q8, q4r).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>

#include "bitnet_testdata.h"
#include "core/base/error.h"
#include "core/formats/model_loader.h"
#include "engine/engine.h"

namespace onebit {
namespace {

std::unique_ptr<Model> default_model() {
  return load_model((std::filesystem::path(ONEBIT_SOURCE_DIR) / "models/1bit-brown-26m.h1b").string());
}

std::unique_ptr<Model> tiny() { return load_hf((testdata::bitnet_dir() / "tiny-packed-auto").string()); }

std::vector<float> copy(std::span<const float> s) { return {s.begin(), s.end()}; }

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<int32_t> ids(int n, int seed, int vocab = 4000) {
  std::vector<int32_t> v;
  for (int i = 0; i < n; ++i) v.push_back(3 + (i * 131 + seed * 977) % (vocab - 3));
  return v;
}

std::vector<int32_t> cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Prefill (every position's logits) then a few decode steps: the logits of each call, in order.
std::vector<std::vector<float>> run(Engine& e, const std::vector<int32_t>& prompt, const std::vector<int32_t>& steps) {
  auto s = e.new_session();
  std::vector<std::vector<float>> out;
  out.push_back(copy(s->decode(prompt, true)));
  for (int32_t t : steps) out.push_back(copy(s->decode(std::span(&t, 1))));
  return out;
}

// The same in a shared pool whose free blocks are every other block (two filler sessions took
// blocks alternately, then one gave its back): the session's table is 0, 2, 4, ..., not the identity.
std::vector<std::vector<float>> run_fragmented(Engine& e, const std::vector<int32_t>& prompt,
                                               const std::vector<int32_t>& steps) {
  auto pool = e.new_kv_pool(2 * e.blocks_per_context());
  auto f1 = e.new_session(pool), f2 = e.new_session(pool);
  for (int64_t i = 1; i <= e.blocks_per_context(); ++i) {
    EXPECT_TRUE(f1->reserve(std::min(e.n_ctx(), i * e.kv_block())));
    EXPECT_TRUE(f2->reserve(std::min(e.n_ctx(), i * e.kv_block())));
  }
  f1->reset();
  auto s = e.new_session(pool);
  std::vector<std::vector<float>> out;
  out.push_back(copy(s->decode(prompt, true)));
  // The other session writes its blocks (the odd ones) in between.
  f2->decode(std::vector<int32_t>(static_cast<size_t>(std::min(e.n_ctx(), 3 * e.kv_block())), 7));
  for (int32_t t : steps) out.push_back(copy(s->decode(std::span(&t, 1))));
  EXPECT_EQ(s->kv().block_table[1], 2);
  return out;
}

TEST(PagedKv, AnyBlockSizeGivesTheContiguousCachesLogits) {
  struct Case {
    const char* name;
    bool reference;
    KvDtype dtype;
    bool tiny_model;
  };
  const Case cases[] = {{"fast f32 (blocked prefill, decode fast path)", false, KvDtype::kF32, false},
                        {"fast f16", false, KvDtype::kF16, false},
                        {"fast q8", false, KvDtype::kQ8, false},
                        {"fast q4r", false, KvDtype::kQ4R, false},
                        {"reference f32", true, KvDtype::kF32, true},
                        {"reference f16", true, KvDtype::kF16, true},
                        {"reference q8", true, KvDtype::kQ8, true},
                        {"reference q4r (head_dim 16: one group per row)", true, KvDtype::kQ4R, true}};
  auto dm = default_model();
  auto tm = tiny();
  for (const Case& c : cases) {
    const Model& m = c.tiny_model ? *tm : *dm;
    const int vocab = static_cast<int>(m.config.vocab_size);
    const std::vector<int32_t> prompt = ids(45, 1, vocab), steps = ids(6, 2, vocab);
    EngineOptions o;
    o.n_ctx = 64;
    o.n_threads = 2;
    o.reference = c.reference;
    o.kv_dtype = c.dtype;
    o.kv_block = 0;
    auto contiguous = Engine::load(m, o);
    ASSERT_EQ(contiguous->kv_block(), 64);
    ASSERT_EQ(contiguous->blocks_per_context(), 1);
    const auto want = run(*contiguous, prompt, steps);
    for (int64_t bs : {16, 5, 1}) {
      o.kv_block = bs;
      auto paged = Engine::load(m, o);
      ASSERT_EQ(paged->kv_block(), bs);
      const auto got = run(*paged, prompt, steps);
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i)
        EXPECT_TRUE(same_bits(got[i], want[i])) << c.name << ", block size " << bs << ", call " << i;
      if (bs == 1) continue;
      const auto frag = run_fragmented(*paged, prompt, steps);
      for (size_t i = 0; i < frag.size(); ++i)
        EXPECT_TRUE(same_bits(frag[i], want[i])) << c.name << ", fragmented pool, block size " << bs << ", call " << i;
    }
  }
}

// Every test of the shared pool runs with each KV cache type (the pool's blocks hold quantized rows
// with their scales; kv_copy_block copies both).
class SharedPool : public ::testing::TestWithParam<KvDtype> {
 protected:
  void SetUp() override {
    model_ = default_model();
    EngineOptions o;
    o.n_ctx = 128;
    o.n_threads = 2;
    o.n_batch = 32;
    o.kv_dtype = GetParam();
    engine_ = Engine::load(*model_, o);
    ASSERT_EQ(engine_->kv_block(), 16);
  }
  // What a session with its own cache computes for `prompt` then `steps`.
  std::vector<std::vector<float>> alone(const std::vector<int32_t>& prompt, const std::vector<int32_t>& steps) {
    return run(*engine_, prompt, steps);
  }
  std::unique_ptr<Model> model_;
  std::unique_ptr<Engine> engine_;
};

TEST_P(SharedPool, SessionsSharingPrefixBlocksGetTheirOwnLogits) {
  auto pool = engine_->new_kv_pool(16);
  const std::vector<int32_t> p = ids(40, 3), q = ids(9, 4), a_next = ids(20, 5), b_next = ids(4, 6);
  auto a = engine_->new_session(pool);
  a->decode(p);
  EXPECT_EQ(a->blocks_held(), 3);
  EXPECT_EQ(pool->blocks().n_used(), 3);
  auto b = engine_->new_session(pool);
  const std::vector<int32_t> pq = cat(p, q);
  // Two full blocks of p are cached; the third is partial (a private block of a).
  EXPECT_EQ(b->reuse_prefix(pq, static_cast<int64_t>(pq.size()) - 1), 32);
  EXPECT_EQ(b->n_past(), 32);
  ASSERT_EQ(b->blocks_held(), 2);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(b->kv().block_table[i], a->kv().block_table[i]);
    EXPECT_EQ(pool->blocks().refcount(b->kv().block_table[i]), 2);
  }
  const std::vector<float> b_logits = copy(b->decode(std::span(pq).subspan(32)));
  const auto ref_b = alone(pq, b_next);
  EXPECT_TRUE(same_bits(b_logits, std::span(ref_b[0]).subspan((pq.size() - 1) * engine_->n_vocab())));
  // Both go on writing their own trailing blocks, interleaved; each gets what it gets alone.
  const auto ref_a = alone(p, a_next);
  for (size_t i = 0; i < a_next.size(); ++i) {
    EXPECT_TRUE(same_bits(a->decode(std::span(&a_next[i], 1)), ref_a[i + 1])) << "a step " << i;
    if (i < b_next.size()) {
      EXPECT_TRUE(same_bits(b->decode(std::span(&b_next[i], 1)), ref_b[i + 1])) << "b step " << i;
    }
  }
  // Releasing: the shared blocks are referenced once more, then cached.
  const int32_t shared0 = a->kv().block_table[0];
  a->reset();
  EXPECT_EQ(pool->blocks().refcount(shared0), 1);
  b->reset();
  EXPECT_EQ(pool->blocks().refcount(shared0), 0);
  EXPECT_EQ(pool->blocks().n_used(), 0);
  EXPECT_GE(pool->blocks().n_cached(), 4);  // p's 2 blocks, a's and b's later full blocks
  // A new session finds p's blocks again.
  auto c = engine_->new_session(pool);
  EXPECT_EQ(c->reuse_prefix(p, 39), 32);
  EXPECT_TRUE(same_bits(c->decode(std::span(p).subspan(32)),
                        std::span(ref_a[0]).subspan(39 * engine_->n_vocab())));
}

TEST_P(SharedPool, TruncatingIntoASharedBlockCopiesIt) {
  auto pool = engine_->new_kv_pool(16);
  const std::vector<int32_t> p = ids(40, 7), other = ids(10, 8), a_next = ids(3, 9);
  auto a = engine_->new_session(pool);
  a->decode(p);
  auto b = engine_->new_session(pool);
  ASSERT_EQ(b->reuse_prefix(p, 39), 32);
  const int32_t shared1 = b->kv().block_table[1];
  b->truncate(20);  // inside block 1, which a uses too
  EXPECT_NE(b->kv().block_table[1], shared1);
  EXPECT_EQ(b->kv().block_table[0], a->kv().block_table[0]);
  EXPECT_EQ(pool->blocks().refcount(shared1), 1);
  EXPECT_FALSE(pool->blocks().published(b->kv().block_table[1]));
  // b writes positions 20.. into its copy; a's block 1 is untouched.
  const std::vector<int32_t> b_seq = cat(std::vector<int32_t>(p.begin(), p.begin() + 20), other);
  const auto ref_b = alone(b_seq, {});
  EXPECT_TRUE(same_bits(b->decode(other), std::span(ref_b[0]).subspan((b_seq.size() - 1) * engine_->n_vocab())));
  const auto ref_a = alone(p, a_next);
  for (size_t i = 0; i < a_next.size(); ++i)
    EXPECT_TRUE(same_bits(a->decode(std::span(&a_next[i], 1)), ref_a[i + 1])) << "a step " << i;
  // A private tail block that is published (full) is withdrawn from the cache when cut.
  a->truncate(40);
  a->truncate(24);  // block 1 (positions 16..31) is a's own again and published: withdrawn
  EXPECT_FALSE(pool->blocks().published(a->kv().block_table[1]));
}

TEST_P(SharedPool, AFullPoolIsAnErrorThatChangesNothing) {
  auto pool = engine_->new_kv_pool(3);  // 48 positions
  auto a = engine_->new_session(pool), b = engine_->new_session(pool);
  a->decode(ids(40, 10));
  EXPECT_EQ(pool->blocks().n_available(), 0);
  const std::vector<int32_t> ten = ids(10, 11);
  try {
    b->decode(ten);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("KV cache is full"), std::string::npos) << e.what();
  }
  EXPECT_EQ(b->n_past(), 0);
  EXPECT_EQ(b->blocks_held(), 0);
  // decode_batch checks every session's blocks before running anything.
  const int32_t t = 5;
  std::vector<BatchItem> items = {{a.get(), std::span(&t, 1), {}}, {b.get(), ten, {}}};
  EXPECT_THROW(engine_->decode_batch(items), Error);
  EXPECT_EQ(a->n_past(), 40);
  EXPECT_EQ(b->n_past(), 0);
  EXPECT_FALSE(b->reserve(20));
  EXPECT_EQ(b->blocks_held(), 0);
  // a's blocks go back (two full ones cached); b's prompt evicts them and runs.
  a->reset();
  EXPECT_EQ(pool->blocks().n_cached(), 2);
  const std::vector<int32_t> long_b = ids(45, 12);
  EXPECT_TRUE(same_bits(b->decode(long_b), std::span(alone(long_b, {})[0]).subspan(44 * engine_->n_vocab())));
  EXPECT_EQ(pool->blocks().evictions(), 2u);
  EXPECT_THROW(engine_->new_kv_pool(0), Error);
  EngineOptions bad;
  bad.kv_block = -1;
  EXPECT_THROW(Engine::load(*model_, bad), Error);
}

INSTANTIATE_TEST_SUITE_P(KvDtypes, SharedPool, ::testing::ValuesIn(kAllKvDtypes),
                         [](const ::testing::TestParamInfo<KvDtype>& i) { return std::string(kv_dtype_name(i.param)); });

}  // namespace
}  // namespace onebit
