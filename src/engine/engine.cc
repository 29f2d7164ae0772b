#include "engine/engine.h"

#include <algorithm>
#include <string>

#include <fmt/format.h>

#include "core/base/error.h"
#include "engine/bitnet_graph.h"
#include "engine/cpu_backend.h"
#include "engine/cuda_backend.h"

namespace onebit {

int64_t input_piece_rows(int64_t left, int64_t room) {
  if (left <= room) return left;
  const int64_t t = std::min(room, left - 2);
  return t >= 2 ? t : 0;
}

namespace {
// input_piece_rows for a pass that is still empty: some rows always go (a batch of 1 to 3 rows
// cannot always keep pieces of 2).
int64_t pass_piece(int64_t left, int64_t batch) {
  const int64_t t = input_piece_rows(left, batch);
  return t > 0 ? t : std::min(left, batch);
}

// Every id in [0, vocab), else Error naming the first bad one (`where` prefixes the message).
void check_ids(std::span<const int32_t> tokens, int64_t vocab, std::string_view where) {
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      fail("{}token {} (position {} of the input) is outside the vocabulary [0, {})", where, tokens[i], i, vocab);
}

// A device sampler's answer for a row it could not sample (the host Sampler throws for those).
constexpr const char* kBadLogits =
    "the logits hold a NaN or +inf, or every token is banned (the model produced a bad value)";

// The settings of a device_chain() sampler and its draw for this step (advances its RNG).
SampleRow sample_row(Sampler& s) {
  const SamplingParams& p = s.params();
  return SampleRow{p.temperature, p.top_k, p.top_p, p.min_p, s.draw()};
}

}  // namespace

std::string_view device_name(Device d) { return d == Device::kCuda ? "cuda" : "cpu"; }

Device device_from_name(std::string_view name) {
  if (name == "cpu") return Device::kCpu;
  if (name == "cuda" || name == "gpu") return Device::kCuda;
  fail("unknown device \"{}\" (expected cpu or cuda)", name);
}

std::unique_ptr<Engine> Engine::load(const Model& model, const EngineOptions& opts) {
  const ModelConfig& c = model.config;
  EngineOptions o = opts;
  const int64_t max_pos = c.max_position_embeddings > 0 ? c.max_position_embeddings : 4096;
  if (o.n_ctx < 0) fail("context length must be positive, got {}", o.n_ctx);
  if (o.n_ctx == 0) o.n_ctx = std::min<int64_t>(max_pos, 4096);
  if (o.n_ctx > max_pos)
    fail("context length {} exceeds the model's maximum of {} positions (max_position_embeddings)", o.n_ctx,
         max_pos);
  if (o.n_batch <= 0) fail("batch size must be positive, got {}", o.n_batch);
  if (o.n_threads < 0) fail("thread count must be >= 0, got {}", o.n_threads);
  if (o.kv_block < 0) fail("KV block size must be >= 0 positions (0 = the whole context), got {}", o.kv_block);
  o.n_batch = std::min(o.n_batch, o.n_ctx);
  check_kv_dtype_head_dim(o.kv_dtype, c.head_dim);

  std::unique_ptr<Engine> e(new Engine());
  e->opts_ = o;
  if (o.device == Device::kCuda) {
    if (o.reference) fail("the scalar reference ops exist on the CPU backend only (drop --reference or use --device cpu)");
    e->backend_ = make_cuda_backend();
  } else {
    e->backend_ = std::make_unique<CpuBackend>(CpuBackendOptions{o.n_threads, o.reference});
  }
  if (!e->backend_->supports_kv_dtype(o.kv_dtype)) {
    std::string have;
    for (KvDtype t : kAllKvDtypes)
      if (e->backend_->supports_kv_dtype(t)) have += fmt::format("{}{}", have.empty() ? "" : ", ", kv_dtype_name(t));
    fail("the {} backend has no {} KV cache (it supports {}): choose one of those with --kv, or --device cpu",
         e->backend_->name(), kv_dtype_name(o.kv_dtype), have);
  }
  // Without paged KV a sequence's cache must be one contiguous block of the whole context.
  if (o.kv_block == 0 || o.kv_block > o.n_ctx || !e->backend_->supports_paged_kv()) o.kv_block = o.n_ctx;
  e->opts_.kv_block = o.kv_block;
  e->graph_ = std::make_unique<BitnetGraph>(*e->backend_, model, o.n_ctx, o.lm_head);
  return e;
}

bool Engine::paged_kv() const { return backend_->supports_paged_kv(); }

std::shared_ptr<KvPool> Engine::new_kv_pool(int64_t n_blocks) {
  if (!paged_kv())
    fail("the {} backend has no paged KV cache: each session keeps its own contiguous cache", backend_->name());
  if (n_blocks < 1) fail("a KV pool needs at least 1 block, got {}", n_blocks);
  return std::make_shared<KvPool>(*backend_, config(), opts_.kv_dtype, opts_.kv_block, n_blocks,
                                  /*prefix_cache=*/true);
}

Engine::~Engine() {
  if (backend_ != nullptr) {
    backend_->free_host(batch_logits_);
    backend_->free_host(reinterpret_cast<float*>(batch_argmax_));
    backend_->free_host(reinterpret_cast<float*>(batch_sampled_));
    backend_->free_host(reinterpret_cast<float*>(batch_sample_rows_));
  }
}

std::unique_ptr<Session> Engine::new_session(std::shared_ptr<KvPool> pool) {
  if (pool != nullptr && &pool->backend() != backend_.get()) fail("new_session: the KV pool belongs to another engine");
  return std::unique_ptr<Session>(new Session(*this, std::move(pool)));
}

const ModelConfig& Engine::config() const { return graph_->config(); }

int64_t Engine::n_vocab() const { return graph_->config().vocab_size; }

std::string_view Engine::backend_name() const { return backend_->name(); }

Session::Session(Engine& e, std::shared_ptr<KvPool> pool)
    : engine_(e), state_(std::make_unique<GraphState>(*e.backend_, e.config(), e.opts_.n_batch)), pool_(std::move(pool)) {
  if (pool_ == nullptr)
    pool_ = std::make_shared<KvPool>(*e.backend_, e.config(), e.opts_.kv_dtype, e.opts_.kv_block, e.blocks_per_context(),
                                     /*prefix_cache=*/false);
  kv_ = pool_->view();
  kv_.n_ctx = e.opts_.n_ctx;
  table_.reserve(static_cast<size_t>(e.blocks_per_context()));  // data() never moves
  sync_view();
}

void Session::sync_view() {
  kv_.block_table = table_.data();
  kv_.block_table_size = static_cast<int64_t>(table_.size());
}

int64_t Session::blocks_needed(int64_t positions) const {
  const int64_t bs = pool_->block_size();
  return std::max<int64_t>(0, (positions + bs - 1) / bs - static_cast<int64_t>(table_.size()));
}

bool Session::reserve(int64_t positions) {
  if (positions > n_ctx()) fail("reserve: {} positions in a context of {}", positions, n_ctx());
  const int64_t need = blocks_needed(positions);
  if (need == 0) return true;
  KvBlockManager& m = pool_->blocks();
  if (need > m.n_available()) return false;
  for (int64_t i = 0; i < need; ++i) table_.push_back(m.allocate());
  sync_view();
  return true;
}

void Session::append(std::span<const int32_t> t) {
  tokens_.insert(tokens_.end(), t.begin(), t.end());
  n_past_ += static_cast<int64_t>(t.size());
  if (!pool_->prefix_cache()) return;
  const int64_t bs = pool_->block_size(), full = n_past_ / bs;
  KvBlockManager& m = pool_->blocks();
  for (; published_ < full; ++published_) {
    const size_t i = static_cast<size_t>(published_), n = static_cast<size_t>(bs);
    // false for a second copy of cached content: the block then stays private (freed, not cached).
    m.publish(table_[i], i == 0 ? -1 : table_[i - 1], std::span(tokens_).subspan(i * n, n));
  }
}

int64_t Session::reuse_prefix(std::span<const int32_t> tokens, int64_t max) {
  max = std::clamp<int64_t>(max, 0, std::min<int64_t>(static_cast<int64_t>(tokens.size()), n_ctx()));
  const auto mis = std::mismatch(tokens_.begin(), tokens_.end(), tokens.begin(), tokens.end());
  truncate(std::min<int64_t>(max, mis.first - tokens_.begin()));
  const int64_t bs = pool_->block_size();
  if (pool_->prefix_cache() && n_past_ % bs == 0 && max / bs > n_past_ / bs) {
    const std::vector<int32_t> got = pool_->blocks().acquire_prefix(
        table_.empty() ? -1 : table_.back(), tokens.subspan(static_cast<size_t>(n_past_)), max / bs - n_past_ / bs);
    if (!got.empty()) {
      table_.insert(table_.end(), got.begin(), got.end());
      sync_view();
      const int64_t n = static_cast<int64_t>(got.size()) * bs;
      tokens_.insert(tokens_.end(), tokens.begin() + n_past_, tokens.begin() + n_past_ + n);
      n_past_ += n;
      published_ = static_cast<int64_t>(table_.size());
    }
  }
  return n_past_;
}

float* Session::logits_buffer(size_t count) {
  if (count > logits_cap_) {
    engine_.backend_->free_host(logits_);
    logits_ = nullptr;
    logits_cap_ = 0;
    logits_ = engine_.backend_->alloc_host(count);
    logits_cap_ = count;
  }
  return logits_;
}

void Engine::decode_batch(std::span<BatchItem> items, BatchOutput out) {
  const int64_t vocab = n_vocab(), ctx = n_ctx();
  std::vector<std::pair<KvPool*, int64_t>> need;  // new blocks per pool
  for (size_t i = 0; i < items.size(); ++i) {
    const BatchItem& it = items[i];
    if (it.session == nullptr || &it.session->engine_ != this) fail("batch item {}: not a session of this engine", i);
    if (it.tokens.empty()) fail("batch item {}: no tokens", i);
    for (size_t j = 0; j < i; ++j)
      if (items[j].session == it.session) fail("batch items {} and {} are the same session", j, i);
    const int64_t n = static_cast<int64_t>(it.tokens.size()), past = it.session->n_past_;
    if (past + n > ctx)
      fail("batch item {}: {} new tokens do not fit in the context: {} of {} positions are used", i, n, past, ctx);
    check_ids(it.tokens, vocab, fmt::format("batch item {}: ", i));
    if (out == BatchOutput::kSample) {
      if (it.sampler == nullptr) fail("batch item {}: BatchOutput::kSample needs a sampler", i);
      if (it.sampler->n_vocab() != vocab)
        fail("batch item {}: the sampler is for {} tokens, the model has {}", i, it.sampler->n_vocab(), vocab);
      if (!it.sampler->device_chain())
        fail("batch item {}: its sampling settings (logit_bias, penalties, typical_p or logprobs) need the logits: "
             "use BatchOutput::kLogits",
             i);
    }
    KvPool* pool = it.session->pool_.get();
    auto p = std::find_if(need.begin(), need.end(), [&](const auto& x) { return x.first == pool; });
    if (p == need.end()) p = need.insert(need.end(), {pool, 0});
    p->second += it.session->blocks_needed(past + n);
  }
  for (const auto& [pool, blocks] : need)
    if (blocks > pool->blocks().n_available())
      fail("the KV cache is full: this batch needs {} more blocks of {} positions, {} of {} are available", blocks,
           pool->block_size(), pool->blocks().n_available(), pool->blocks().n_blocks());
  if (items.empty()) return;
  for (BatchItem& it : items) it.session->reserve(it.session->n_past_ + static_cast<int64_t>(it.tokens.size()));
  const bool argmax = out == BatchOutput::kArgmax;
  // kSample on a backend without device sampling: the logits path, then each item's sampler.
  const bool sample = out == BatchOutput::kSample && backend_->samples_on_device();
  const bool host_sample = out == BatchOutput::kSample && !sample;
  if (!backend_->supports_multi_sequence()) {
    for (BatchItem& it : items) {
      if (out == BatchOutput::kSample) {
        it.logits = it.session->decode(it.tokens);
        try {
          it.token = it.sampler->sample(it.logits, {});
        } catch (const Error&) {
          it.token = -1;
        }
        it.logits = {};
        continue;
      }
      it.logits = it.session->decode(it.tokens);
      if (argmax) it.argmax = static_cast<int32_t>(std::max_element(it.logits.begin(), it.logits.end()) - it.logits.begin());
    }
    return;
  }
  const int64_t batch = opts_.n_batch;
  if (!batch_state_) batch_state_ = std::make_unique<GraphState>(*backend_, config(), batch);
  if (argmax) {
    // Page-locked (on a GPU) and at a fixed address, so the copy into it can be part of a CUDA graph.
    if (batch_argmax_ == nullptr)
      batch_argmax_ = reinterpret_cast<int32_t*>(backend_->alloc_host(static_cast<size_t>(batch)));
  } else if (sample) {
    // Another ids buffer than kArgmax's, so that a recorded pass that samples is a recording of its own.
    if (batch_sampled_ == nullptr) {
      batch_sampled_ = reinterpret_cast<int32_t*>(backend_->alloc_host(static_cast<size_t>(batch)));
      batch_sample_rows_ = reinterpret_cast<SampleRow*>(
          backend_->alloc_host(static_cast<size_t>(batch) * sizeof(SampleRow) / sizeof(float)));
    }
  } else if (batch_logits_cap_ < static_cast<size_t>(batch * vocab)) {
    backend_->free_host(batch_logits_);
    batch_logits_ = nullptr;
    batch_logits_cap_ = 0;
    batch_logits_ = backend_->alloc_host(static_cast<size_t>(batch * vocab));
    batch_logits_cap_ = static_cast<size_t>(batch * vocab);
  }
  std::vector<int32_t> tokens;
  std::vector<BitnetGraph::SeqRows> seqs;
  std::vector<int64_t> logit_rows;
  std::vector<size_t> logit_items, seq_items;
  std::vector<int64_t> seq_offsets;
  size_t item = 0;
  int64_t offset = 0;  // tokens of items[item] already placed in earlier passes
  while (item < items.size()) {
    tokens.clear();
    seqs.clear();
    logit_rows.clear();
    logit_items.clear();
    seq_items.clear();
    seq_offsets.clear();
    // Fill one pass with whole items or pieces of them, in order.
    while (item < items.size() && static_cast<int64_t>(tokens.size()) < batch) {
      BatchItem& it = items[item];
      const int64_t n = static_cast<int64_t>(it.tokens.size());
      const int64_t room = batch - static_cast<int64_t>(tokens.size());
      const int64_t take = tokens.empty() ? pass_piece(n - offset, room) : input_piece_rows(n - offset, room);
      if (take == 0) break;  // the rest of this item starts the next pass
      seqs.push_back({&it.session->kv_, it.session->n_past_, take});  // n_past_ counts earlier passes
      seq_items.push_back(item);
      seq_offsets.push_back(offset);
      tokens.insert(tokens.end(), it.tokens.begin() + offset, it.tokens.begin() + offset + take);
      offset += take;
      if (offset == n) {  // the item's last token is in this pass
        logit_rows.push_back(static_cast<int64_t>(tokens.size()) - 1);
        logit_items.push_back(item);
        ++item;
        offset = 0;
      }
    }
    if (sample)  // each finished item's settings and draw, in place before the pass (or its replay) reads them
      for (size_t j = 0; j < logit_items.size(); ++j) batch_sample_rows_[j] = sample_row(*items[logit_items[j]].sampler);
    graph_->forward_multi(*batch_state_, tokens, seqs, logit_rows, batch_logits_,
                          argmax ? batch_argmax_ : sample ? batch_sampled_ : nullptr,
                          sample ? batch_sample_rows_ : nullptr);
    for (size_t s = 0; s < seqs.size(); ++s) {
      BatchItem& it = items[seq_items[s]];
      it.session->append(it.tokens.subspan(static_cast<size_t>(seq_offsets[s]), static_cast<size_t>(seqs[s].n)));
    }
    for (size_t j = 0; j < logit_items.size(); ++j) {
      BatchItem& it = items[logit_items[j]];
      if (argmax) {
        it.argmax = batch_argmax_[j];
        it.logits = {};
        continue;
      }
      if (sample) {
        it.token = batch_sampled_[j];  // -1 for a row the device could not sample
        it.logits = {};
        continue;
      }
      float* dst = it.session->logits_buffer(static_cast<size_t>(vocab));
      std::copy_n(batch_logits_ + j * vocab, vocab, dst);
      it.logits = std::span<const float>(dst, static_cast<size_t>(vocab));
      if (host_sample) {
        try {  // the pass has run: report a row that cannot be sampled as the device does, with -1
          it.token = it.sampler->sample(it.logits, {});
        } catch (const Error&) {
          it.token = -1;
        }
        it.logits = {};
      }
    }
  }
}

Session::~Session() {
  reset();
  engine_.backend_->free_host(logits_);
  engine_.backend_->free_host(reinterpret_cast<float*>(sample_row_));
  engine_.backend_->free_host(reinterpret_cast<float*>(sample_id_));
}

int64_t Session::n_ctx() const { return engine_.n_ctx(); }

int64_t Session::n_vocab() const { return engine_.n_vocab(); }

void Session::truncate(int64_t n) {
  if (n < 0 || n > n_past_) fail("cannot truncate a session of {} positions to {}", n_past_, n);
  KvBlockManager& m = pool_->blocks();
  const int64_t bs = pool_->block_size(), keep = (n + bs - 1) / bs;
  // Later blocks first, so that a sequence's tail leaves the prefix cache before its head.
  while (static_cast<int64_t>(table_.size()) > keep) {
    m.release(table_.back());
    table_.pop_back();
  }
  published_ = std::min(published_, n / bs);
  tokens_.resize(static_cast<size_t>(n));
  n_past_ = n;
  sync_view();
  if (n % bs == 0) return;
  // The block cut in the middle will be written again: it must be this sequence's alone and
  // out of the prefix cache.
  const size_t last = table_.size() - 1;
  const int32_t b = table_[last];
  if (m.refcount(b) == 1) {
    m.unpublish(b);
    return;
  }
  const int32_t copy = m.allocate();
  if (copy < 0) {
    m.release(b);
    table_.pop_back();
    n_past_ = n / bs * bs;
    tokens_.resize(static_cast<size_t>(n_past_));
    sync_view();
    fail("truncate: the KV pool has no free block to copy the shared block at position {} into; the session keeps "
         "{} positions",
         n, n_past_);
  }
  engine_.backend_->kv_copy_block(kv_, b, copy, n % bs);
  m.release(b);
  table_[last] = copy;
  sync_view();
}

std::vector<float> Session::hidden_states(std::span<const int32_t> tokens) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t vocab = n_vocab(), ctx = n_ctx(), dim = engine_.config().hidden_size;
  if (n == 0) fail("no tokens given");
  if (n > ctx) fail("input of {} tokens does not fit in the context of {} tokens", n, ctx);
  check_ids(tokens, vocab, "");
  reset();
  if (!reserve(n))
    fail("the KV cache is full: {} tokens need {} blocks of {} positions, {} of {} are available", n, blocks_needed(n),
         pool_->block_size(), pool_->blocks().n_available(), pool_->blocks().n_blocks());
  std::vector<float> out(static_cast<size_t>(n * dim));
  const int64_t batch = state_->n_batch();
  for (int64_t b = 0, m = 0; b < n; b += m) {
    m = pass_piece(n - b, batch);
    const std::span<const int32_t> chunk = tokens.subspan(static_cast<size_t>(b), static_cast<size_t>(m));
    engine_.graph_->forward(*state_, kv_, chunk, b, false, nullptr, out.data() + b * dim);
    append(chunk);
  }
  return out;
}

void Session::prepare(std::span<const int32_t> tokens) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t vocab = n_vocab(), ctx = n_ctx();
  if (n == 0) fail("decode: no tokens given");
  if (n_past_ + n > ctx) {
    if (n_past_ == 0) fail("prompt of {} tokens does not fit in the context of {} tokens", n, ctx);
    fail("{} new tokens do not fit in the context: {} of {} positions are used, {} left", n, n_past_, ctx,
         ctx - n_past_);
  }
  check_ids(tokens, vocab, "");
  if (!reserve(n_past_ + n))
    fail("the KV cache is full: {} new tokens need {} more blocks of {} positions, {} of {} are available", n,
         blocks_needed(n_past_ + n), pool_->block_size(), pool_->blocks().n_available(), pool_->blocks().n_blocks());
}

int32_t Session::decode_sample(std::span<const int32_t> tokens, Sampler& sampler, std::span<const int32_t> history) {
  if (sampler.n_vocab() != n_vocab())
    fail("decode_sample: the sampler is for {} tokens, the model has {}", sampler.n_vocab(), n_vocab());
  Backend& be = *engine_.backend_;
  if (!be.samples_on_device() || !sampler.device_chain()) return sampler.sample(decode(tokens), history);
  prepare(tokens);
  if (sample_row_ == nullptr) {  // page-locked, fixed addresses: a recorded step reads and writes them
    sample_row_ = reinterpret_cast<SampleRow*>(be.alloc_host(sizeof(SampleRow) / sizeof(float)));
    sample_id_ = reinterpret_cast<int32_t*>(be.alloc_host(1));
  }
  *sample_row_ = sample_row(sampler);
  *sample_id_ = -1;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t batch = state_->n_batch();
  for (int64_t b = 0, m = 0; b < n; b += m) {
    m = pass_piece(n - b, batch);  // pieces as decode() cuts them: the same bits
    const bool last = b + m == n;  // only the last chunk runs the LM head
    const std::span<const int32_t> chunk = tokens.subspan(static_cast<size_t>(b), static_cast<size_t>(m));
    engine_.graph_->forward(*state_, kv_, chunk, n_past_, false, nullptr, nullptr, last ? sample_id_ : nullptr,
                            last ? sample_row_ : nullptr);
    append(chunk);
  }
  if (*sample_id_ < 0) fail("decode_sample: {}", kBadLogits);
  return *sample_id_;
}

std::span<const float> Session::decode(std::span<const int32_t> tokens, bool all_logits) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t vocab = n_vocab();
  prepare(tokens);

  const size_t need = static_cast<size_t>((all_logits ? n : 1) * vocab);
  logits_buffer(need);
  const int64_t batch = state_->n_batch();
  for (int64_t b = 0, m = 0; b < n; b += m) {
    m = pass_piece(n - b, batch);
    // Without all_logits only the last chunk runs the LM head.
    float* out = all_logits ? logits_ + b * vocab : (b + m == n ? logits_ : nullptr);
    const std::span<const int32_t> chunk = tokens.subspan(static_cast<size_t>(b), static_cast<size_t>(m));
    engine_.graph_->forward(*state_, kv_, chunk, n_past_, all_logits, out);
    append(chunk);
  }
  return {logits_, need};
}

}  // namespace onebit
