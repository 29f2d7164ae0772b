// KvBlockManager (src/engine/kv_pool.h): allocation, reference counts, the prefix cache's chained
// keys, collision checks, LRU eviction, exhaustion.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

#include "core/base/error.h"
#include "engine/kv_pool.h"

namespace onebit {
namespace {

constexpr int64_t kBs = 4;

std::vector<int32_t> toks(int32_t first, int64_t n = kBs) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), first);
  return v;
}

std::vector<int32_t> cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(KvBlockManager, AllocateReleaseRefcountExhaustion) {
  KvBlockManager m(3, kBs);
  EXPECT_EQ(m.n_free(), 3);
  std::set<int32_t> got;
  for (int i = 0; i < 3; ++i) got.insert(m.allocate());
  EXPECT_EQ(got, (std::set<int32_t>{0, 1, 2}));
  EXPECT_EQ(m.n_used(), 3);
  EXPECT_EQ(m.n_available(), 0);
  EXPECT_EQ(m.allocate(), -1);  // exhausted: no crash, no block
  EXPECT_EQ(m.refcount(1), 1);
  m.release(1);
  EXPECT_EQ(m.refcount(1), 0);
  EXPECT_EQ(m.n_free(), 1);
  EXPECT_EQ(m.allocate(), 1);
  m.release(1);
  EXPECT_THROW(m.release(1), Error);  // more releases than references
  EXPECT_THROW(m.release(7), Error);
  EXPECT_THROW(KvBlockManager(0, kBs), Error);
  EXPECT_THROW(KvBlockManager(4, 0), Error);
}

TEST(KvBlockManager, ChainedPrefixHitsAndMisses) {
  KvBlockManager m(8, kBs);
  const std::vector<int32_t> a = toks(10), b = toks(20), c = toks(30);
  // A sequence of three full blocks a|b|c, published as it fills.
  const int32_t b0 = m.allocate(), b1 = m.allocate(), b2 = m.allocate();
  EXPECT_TRUE(m.publish(b0, -1, a));
  EXPECT_TRUE(m.publish(b1, b0, b));
  EXPECT_TRUE(m.publish(b2, b1, c));
  EXPECT_EQ(m.key(b1), KvBlockManager::chain_key(KvBlockManager::chain_key(KvBlockManager::kRootKey, a), b));

  // The whole chain, a part of it, capped by max_blocks, and only whole blocks.
  EXPECT_EQ(m.acquire_prefix(-1, cat(cat(cat(a, b), c), toks(99)), 10), (std::vector<int32_t>{b0, b1, b2}));
  EXPECT_EQ(m.refcount(b1), 2);
  EXPECT_EQ(m.acquire_prefix(-1, cat(cat(a, b), c), 2), (std::vector<int32_t>{b0, b1}));
  EXPECT_EQ(m.acquire_prefix(-1, cat(a, toks(20, 3)), 10), (std::vector<int32_t>{b0}));  // b's block incomplete
  EXPECT_EQ(m.refcount(b0), 4);
  // Same tokens in another position of the chain, or after another parent: no hit.
  EXPECT_TRUE(m.acquire_prefix(-1, b, 10).empty());
  EXPECT_TRUE(m.acquire_prefix(-1, cat(b, c), 10).empty());
  EXPECT_EQ(m.acquire_prefix(b0, cat(b, c), 10), (std::vector<int32_t>{b1, b2}));  // continuing from a held block
  // A second copy of the same content is not published (the first one serves lookups).
  const int32_t dup = m.allocate();
  EXPECT_FALSE(m.publish(dup, -1, a));
  EXPECT_FALSE(m.published(dup));
  // A block after an unpublished parent is unreachable, so it is not cached.
  const int32_t orphan = m.allocate();
  EXPECT_FALSE(m.publish(orphan, dup, b));
  EXPECT_THROW(m.publish(orphan, -1, toks(1, 3)), Error);  // not a full block
}

// A key function that makes every block collide: the content and parent checks alone must keep
// lookups right.
uint64_t colliding(uint64_t, std::span<const int32_t>) { return 42; }

TEST(KvBlockManager, CollisionsNeverReturnWrongBlocks) {
  KvBlockManager m(8, kBs, colliding);
  const std::vector<int32_t> a = toks(10), b = toks(20);
  const int32_t b0 = m.allocate();
  ASSERT_TRUE(m.publish(b0, -1, a));
  EXPECT_TRUE(m.acquire_prefix(-1, b, 10).empty());  // same key, other tokens
  const int32_t b1 = m.allocate();
  EXPECT_FALSE(m.publish(b1, b0, b));  // its key is taken by b0: stays private
  EXPECT_TRUE(m.acquire_prefix(b0, b, 10).empty());
  // Same tokens as b0 but after b0 (a different parent): a miss even though key and tokens match.
  EXPECT_TRUE(m.acquire_prefix(b0, a, 10).empty());
  EXPECT_EQ(m.acquire_prefix(-1, a, 10), (std::vector<int32_t>{b0}));
}

TEST(KvBlockManager, CachedBlocksAreEvictedLeastRecentlyReleasedFirst) {
  KvBlockManager m(4, kBs);
  const std::vector<int32_t> p = toks(100), q = toks(200), r = toks(300);
  const int32_t bp = m.allocate(), bq = m.allocate(), br = m.allocate();
  ASSERT_TRUE(m.publish(bp, -1, p));
  ASSERT_TRUE(m.publish(bq, -1, q));
  ASSERT_TRUE(m.publish(br, -1, r));
  m.release(bq);  // oldest in the cache
  m.release(bp);
  m.release(br);
  EXPECT_EQ(m.n_cached(), 3);
  EXPECT_EQ(m.n_free(), 1);
  EXPECT_EQ(m.n_available(), 4);
  // A cache hit takes a block out of the cache list and re-releasing puts it last.
  ASSERT_EQ(m.acquire_prefix(-1, q, 1), (std::vector<int32_t>{bq}));
  EXPECT_EQ(m.n_cached(), 2);
  m.release(bq);  // order now: bp, br, bq
  const int32_t f = m.allocate();  // the free block goes first
  EXPECT_NE(f, bp);
  EXPECT_NE(f, bq);
  EXPECT_NE(f, br);
  EXPECT_EQ(m.evictions(), 0u);
  EXPECT_EQ(m.allocate(), bp);
  EXPECT_EQ(m.evictions(), 1u);
  EXPECT_FALSE(m.published(bp));
  EXPECT_TRUE(m.acquire_prefix(-1, p, 1).empty());  // evicted: gone from the cache
  EXPECT_EQ(m.allocate(), br);
  EXPECT_EQ(m.acquire_prefix(-1, q, 1), (std::vector<int32_t>{bq}));  // still cached
  EXPECT_EQ(m.allocate(), -1);  // everything referenced
  EXPECT_EQ(m.n_used(), 4);
}

// A weak key: the parent's key plus the block's first token. Collides whenever first tokens agree.
uint64_t weak(uint64_t parent, std::span<const int32_t> t) { return parent + static_cast<uint64_t>(t[0]); }

TEST(KvBlockManager, ChildOfAReusedParentBlockIsNeverReturned) {
  // a|b is cached. Block a is evicted and reused for x, which has a's first token, so with the
  // weak key x|b has exactly the key chain of a|b, and the cached b even has the same tokens and
  // the same parent block id. But b's keys and values were computed after a, not x: the parent's
  // generation tells them apart.
  KvBlockManager m(4, kBs, weak);
  const std::vector<int32_t> a = {1, 2, 3, 4}, b = {5, 6, 7, 8}, x = {1, 9, 9, 9};
  const int32_t ba = m.allocate(), bb = m.allocate();
  ASSERT_TRUE(m.publish(ba, -1, a));
  ASSERT_TRUE(m.publish(bb, ba, b));
  EXPECT_EQ(m.acquire_prefix(-1, cat(a, b), 2), (std::vector<int32_t>{ba, bb}));
  m.release(ba);
  m.release(bb);
  m.release(ba);  // cache order: ba (oldest), bb
  m.release(bb);
  m.allocate();
  m.allocate();  // the two free blocks
  ASSERT_EQ(m.allocate(), ba);  // evicts a
  EXPECT_TRUE(m.published(bb));
  ASSERT_TRUE(m.publish(ba, -1, x));
  EXPECT_EQ(m.key(ba), KvBlockManager::kRootKey + 1);  // a's old key
  EXPECT_EQ(m.acquire_prefix(-1, cat(x, b), 2), (std::vector<int32_t>{ba}));  // b is not found after x
  // Unpublishing (the content is about to change) cuts the children off the same way.
  KvBlockManager h(3, kBs);
  const int32_t p = h.allocate(), c = h.allocate();
  ASSERT_TRUE(h.publish(p, -1, a));
  ASSERT_TRUE(h.publish(c, p, b));
  h.unpublish(p);
  EXPECT_FALSE(h.published(p));
  EXPECT_TRUE(h.acquire_prefix(-1, cat(a, b), 2).empty());
  ASSERT_TRUE(h.publish(p, -1, a));
  EXPECT_EQ(h.acquire_prefix(-1, cat(a, b), 2), (std::vector<int32_t>{p}));
}

}  // namespace
}  // namespace onebit
