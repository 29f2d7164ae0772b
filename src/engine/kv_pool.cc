#include "engine/kv_pool.h"

#include <algorithm>
#include <new>

#include "core/base/error.h"

namespace onebit {

int64_t KvCacheView::mapped_positions() const {
  return (block_table != nullptr ? block_table_size : n_blocks) * positions_per_block();
}

size_t KvCacheView::bytes() const {
  return 2 * static_cast<size_t>(n_layers * n_blocks * n_kv_heads * positions_per_block()) * row_bytes();
}

void Backend::kv_copy_block(const KvCacheView&, int32_t, int32_t, int64_t) {
  fail("the {} backend has no paged KV cache (kv_copy_block)", name());
}

// ---- KvBlockManager ----

KvBlockManager::KvBlockManager(int64_t n_blocks, int64_t block_size, KeyFn key_fn)
    : block_size_(block_size), key_fn_(key_fn) {
  if (n_blocks < 1 || n_blocks > (int64_t{1} << 30)) fail("KV pool: {} blocks (expected 1 to 2^30)", n_blocks);
  if (block_size < 1) fail("KV pool: block size {} (expected >= 1)", block_size);
  blocks_.resize(static_cast<size_t>(n_blocks));
  tokens_.resize(static_cast<size_t>(n_blocks * block_size));
  free_.reserve(static_cast<size_t>(n_blocks));
  for (int64_t b = n_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));  // 0 comes out first
}

void KvBlockManager::check(int32_t b) const {
  if (b < 0 || b >= n_blocks()) fail("KV pool: block {} outside [0, {})", b, n_blocks());
}

void KvBlockManager::lru_remove(int32_t b) {
  Block& k = blocks_[static_cast<size_t>(b)];
  if (k.prev >= 0) blocks_[static_cast<size_t>(k.prev)].next = k.next;
  else lru_head_ = k.next;
  if (k.next >= 0) blocks_[static_cast<size_t>(k.next)].prev = k.prev;
  else lru_tail_ = k.prev;
  k.prev = k.next = -1;
  --n_cached_;
}

void KvBlockManager::lru_push(int32_t b) {
  Block& k = blocks_[static_cast<size_t>(b)];
  k.prev = lru_tail_;
  k.next = -1;
  if (lru_tail_ >= 0) blocks_[static_cast<size_t>(lru_tail_)].next = b;
  else lru_head_ = b;
  lru_tail_ = b;
  ++n_cached_;
}

void KvBlockManager::drop_key(int32_t b) {
  Block& k = blocks_[static_cast<size_t>(b)];
  if (!k.published) return;
  index_.erase(k.key);
  k.published = false;
  k.parent = -1;
  ++k.gen;  // blocks published after this one name it with the old generation: no longer its children
}

int32_t KvBlockManager::allocate() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (lru_head_ >= 0) {
    b = lru_head_;
    lru_remove(b);
    drop_key(b);
    ++evictions_;
  } else {
    return -1;
  }
  Block& k = blocks_[static_cast<size_t>(b)];
  k.ref = 1;
  ++k.gen;
  return b;
}

void KvBlockManager::release(int32_t b) {
  check(b);
  Block& k = blocks_[static_cast<size_t>(b)];
  if (k.ref <= 0) fail("KV pool: block {} released more often than referenced", b);
  if (--k.ref > 0) return;
  if (k.published) lru_push(b);
  else free_.push_back(b);
}

int32_t KvBlockManager::refcount(int32_t b) const {
  check(b);
  return blocks_[static_cast<size_t>(b)].ref;
}

bool KvBlockManager::published(int32_t b) const {
  check(b);
  return blocks_[static_cast<size_t>(b)].published;
}

uint64_t KvBlockManager::key(int32_t b) const {
  check(b);
  if (!blocks_[static_cast<size_t>(b)].published) fail("KV pool: block {} is not published", b);
  return blocks_[static_cast<size_t>(b)].key;
}

uint64_t KvBlockManager::chain_key(uint64_t parent_key, std::span<const int32_t> tokens) {
  auto fmix = [](uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
  };
  uint64_t h = fmix(parent_key ^ (0x9e3779b97f4a7c15ull * (tokens.size() + 1)));
  for (int32_t t : tokens) h = fmix(h ^ (static_cast<uint64_t>(static_cast<uint32_t>(t)) * 0x9e3779b97f4a7c15ull));
  return h;
}

bool KvBlockManager::publish(int32_t b, int32_t parent, std::span<const int32_t> tokens) {
  check(b);
  if (static_cast<int64_t>(tokens.size()) != block_size_)
    fail("KV pool: publishing {} tokens in a block of {}", tokens.size(), block_size_);
  Block& k = blocks_[static_cast<size_t>(b)];
  if (k.ref <= 0) fail("KV pool: publishing block {}, which nobody references", b);
  if (k.published) return false;
  uint64_t parent_key = kRootKey, parent_gen = 0;
  if (parent >= 0) {
    check(parent);
    const Block& p = blocks_[static_cast<size_t>(parent)];
    if (!p.published) return false;  // unreachable by a lookup: do not cache
    parent_key = p.key;
    parent_gen = p.gen;
  }
  const uint64_t key = key_fn_(parent_key, tokens);
  if (!index_.emplace(key, b).second) return false;  // the same content (or a collision) is there already
  k.published = true;
  k.key = key;
  k.parent = parent;
  k.parent_gen = parent_gen;
  std::copy(tokens.begin(), tokens.end(), tokens_.begin() + static_cast<std::ptrdiff_t>(b) * block_size_);
  return true;
}

void KvBlockManager::unpublish(int32_t b) {
  check(b);
  drop_key(b);
}

std::vector<int32_t> KvBlockManager::acquire_prefix(int32_t parent, std::span<const int32_t> tokens,
                                                    int64_t max_blocks) {
  std::vector<int32_t> out;
  uint64_t key = kRootKey;
  if (parent >= 0) {
    check(parent);
    if (!blocks_[static_cast<size_t>(parent)].published) return out;
    key = blocks_[static_cast<size_t>(parent)].key;
  }
  const int64_t n = std::min<int64_t>(max_blocks, static_cast<int64_t>(tokens.size()) / block_size_);
  for (int64_t i = 0; i < n; ++i) {
    const std::span<const int32_t> t =
        tokens.subspan(static_cast<size_t>(i * block_size_), static_cast<size_t>(block_size_));
    key = key_fn_(key, t);
    const auto it = index_.find(key);
    if (it == index_.end()) break;
    const int32_t b = it->second;
    const Block& k = blocks_[static_cast<size_t>(b)];
    // A 64-bit hash can collide: the content and the exact parent block must match as well.
    const bool same_parent =
        k.parent == parent && (parent < 0 || k.parent_gen == blocks_[static_cast<size_t>(parent)].gen);
    if (!same_parent || !std::equal(t.begin(), t.end(), tokens_of(b).begin())) break;
    out.push_back(b);
    parent = b;
  }
  for (int32_t b : out) {
    Block& k = blocks_[static_cast<size_t>(b)];
    if (k.ref++ == 0) lru_remove(b);
  }
  return out;
}

// ---- KvPool ----

KvPool::KvPool(Backend& be, const ModelConfig& c, KvDtype dtype, int64_t block_size, int64_t n_blocks,
               bool prefix_cache)
    : be_(be), blocks_(n_blocks, block_size), prefix_cache_(prefix_cache) {
  check_kv_dtype_head_dim(dtype, c.head_dim);
  if (!be_.supports_kv_dtype(dtype))
    fail("the {} backend has no {} KV cache", be_.name(), kv_dtype_name(dtype));
  view_.dtype = dtype;
  view_.n_layers = c.num_layers;
  view_.n_kv_heads = c.num_kv_heads;
  view_.head_dim = c.head_dim;
  view_.block_size = block_size;
  view_.n_ctx = block_size;  // until a Session sets its context
  view_.n_blocks = n_blocks;
  try {
    view_.data = be_.alloc(view_.bytes());
  } catch (const std::bad_alloc&) {
    fail("out of memory allocating the KV cache: {:.1f} MiB for {} blocks of {} positions",
         static_cast<double>(view_.bytes()) / (1 << 20), n_blocks, block_size);
  }
}

KvPool::~KvPool() { be_.free(view_.data); }

}  // namespace onebit
