// Paged KV cache: KvBlockManager (which block holds what, refcounts, the prefix cache) and KvPool
// (the blocks' memory in a backend, with its manager).
//
// A pool has n_blocks blocks of block_size positions (every layer and KV head; backend.h gives the
// layout). A Session maps its positions to blocks through its block table (engine.h). Blocks are
// reference counted; a FULL block may be shared by several sequences whose tokens agree up to and
// including it, and a sequence only ever writes into its own unshared trailing block, so nothing
// is copied on write (Session::truncate copies the one block it cuts into if that is shared).
//
// Prefix cache: a full block is published under a chained key, key = H(key of its parent block,
// its block_size tokens), the parent being the block before it in its sequence (the first block's
// parent key is kRootKey). A lookup walks a prompt block by block; a hit must also have exactly
// the same tokens and the very same parent block (id and generation: a block that was evicted and
// reused is a different parent), so a hash collision can never return wrong KV. A published block
// whose refcount drops to 0 stays cached (least recently released first out) and is evicted only
// when a new block is needed and no block is free.
//
// Not thread-safe: one thread (the engine's) uses a pool and its sessions.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/base/model.h"
#include "engine/backend.h"

namespace onebit {

class KvBlockManager {
 public:
  static constexpr uint64_t kRootKey = 0x243f6a8885a308d3ull;  // parent key of a sequence's first block

  using KeyFn = uint64_t (*)(uint64_t parent_key, std::span<const int32_t> tokens);
  // Throws Error unless n_blocks >= 1 and block_size >= 1. `key_fn` computes the chained keys
  // (tests pass a colliding one; the content and parent checks must make up for it).
  KvBlockManager(int64_t n_blocks, int64_t block_size, KeyFn key_fn = chain_key);

  int64_t n_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  int64_t block_size() const { return block_size_; }
  int64_t n_free() const { return static_cast<int64_t>(free_.size()); }  // unreferenced, holding nothing
  int64_t n_cached() const { return n_cached_; }  // unreferenced, published: reusable until evicted
  int64_t n_used() const { return n_blocks() - n_free() - n_cached(); }  // referenced by a sequence
  int64_t n_available() const { return n_free() + n_cached(); }  // what allocate() can still hand out
  uint64_t evictions() const { return evictions_; }

  // A block for new KV (refcount 1, unpublished): a free one, else the least recently released
  // cached one (its key is dropped), else -1 (every block is referenced).
  int32_t allocate();
  // Drops one reference. At 0 a published block joins the cache (most recently released last),
  // an unpublished one is free again.
  void release(int32_t b);
  int32_t refcount(int32_t b) const;
  bool published(int32_t b) const;

  // Publishes referenced block `b`, full of `tokens` (block_size of them), as the block after
  // `parent` (-1: the first block of a sequence; otherwise a published block). Returns false and
  // changes nothing if the parent is not published or another block already holds this content
  // (two sequences that computed the same prefix at once: the second copy stays private).
  bool publish(int32_t b, int32_t parent, std::span<const int32_t> tokens);
  // Withdraws b from the prefix cache (its content is about to change).
  void unpublish(int32_t b);
  // The longest run of published blocks that continue `parent` (-1 or a published block) with the
  // whole blocks at the start of `tokens`, at most max_blocks of them. Each returned block gains a
  // reference (and leaves the cache list if it was there).
  std::vector<int32_t> acquire_prefix(int32_t parent, std::span<const int32_t> tokens, int64_t max_blocks);

  // H(parent_key, tokens): 64-bit, chained (MurmurHash3's finalizer per token).
  static uint64_t chain_key(uint64_t parent_key, std::span<const int32_t> tokens);
  uint64_t key(int32_t b) const;  // of a published block

 private:
  struct Block {
    int32_t ref = 0;
    bool published = false;
    uint64_t key = 0;
    int32_t parent = -1;      // published: the block before it in its sequence (-1: first)
    uint64_t parent_gen = 0;  // the parent's generation when this block was published
    uint64_t gen = 0;         // bumped whenever the block's content changes owner or is withdrawn
    int32_t prev = -1, next = -1;  // cache list (n_cached_ blocks), oldest at lru_head_
  };
  void check(int32_t b) const;
  void lru_remove(int32_t b);
  void lru_push(int32_t b);
  void drop_key(int32_t b);
  std::span<const int32_t> tokens_of(int32_t b) const {
    return std::span(tokens_).subspan(static_cast<size_t>(b) * static_cast<size_t>(block_size_),
                                      static_cast<size_t>(block_size_));
  }

  int64_t block_size_;
  KeyFn key_fn_;
  std::vector<Block> blocks_;
  std::vector<int32_t> tokens_;  // [n_blocks][block_size]: the tokens of published blocks
  std::vector<int32_t> free_;    // a stack
  int32_t lru_head_ = -1, lru_tail_ = -1;
  int64_t n_cached_ = 0;
  uint64_t evictions_ = 0;
  std::unordered_map<uint64_t, int32_t> index_;  // key -> published block
};

// The memory of n_blocks KV blocks for every layer and KV head of a model, in a backend, and the
// manager of those blocks. Engine::new_kv_pool makes one that sessions share (the server); a
// Session made without a pool gets a private one, just big enough for its context, without the
// prefix cache. Must not outlive the Engine (its backend).
class KvPool {
 public:
  // Throws Error when the memory cannot be allocated.
  KvPool(Backend& be, const ModelConfig& c, KvDtype dtype, int64_t block_size, int64_t n_blocks, bool prefix_cache);
  ~KvPool();
  KvPool(const KvPool&) = delete;
  KvPool& operator=(const KvPool&) = delete;

  KvBlockManager& blocks() { return blocks_; }
  const KvBlockManager& blocks() const { return blocks_; }
  int64_t block_size() const { return blocks_.block_size(); }
  bool prefix_cache() const { return prefix_cache_; }
  // The pool without a block table (Session fills in n_ctx and its table).
  const KvCacheView& view() const { return view_; }
  Backend& backend() { return be_; }
  size_t bytes() const { return view_.bytes(); }

 private:
  Backend& be_;
  KvCacheView view_;
  KvBlockManager blocks_;
  bool prefix_cache_;
};

}  // namespace onebit
