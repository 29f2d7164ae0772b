#include "engine/engine.h"

#include <algorithm>

#include <fmt/format.h>

#include "core/base/error.h"
#include "engine/bitnet_graph.h"
#include "engine/cpu_backend.h"
#include "engine/cuda_backend.h"

namespace onebit {

namespace {

// Every id in [0, vocab), else Error naming the first bad one (`where` prefixes the message).
void check_ids(std::span<const int32_t> tokens, int64_t vocab, std::string_view where) {
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      fail("{}token {} (position {} of the input) is outside the vocabulary [0, {})", where, tokens[i], i, vocab);
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
  o.n_batch = std::min(o.n_batch, o.n_ctx);

  std::unique_ptr<Engine> e(new Engine());
  e->opts_ = o;
  if (o.device == Device::kCuda) {
    if (o.reference) fail("the scalar reference ops exist on the CPU backend only (drop --reference or use --device cpu)");
    e->backend_ = make_cuda_backend();
  } else {
    e->backend_ = std::make_unique<CpuBackend>(CpuBackendOptions{o.n_threads, o.reference});
  }
  e->graph_ = std::make_unique<BitnetGraph>(*e->backend_, model, o.n_ctx, o.lm_head);
  return e;
}

Engine::~Engine() = default;

std::unique_ptr<Session> Engine::new_session() { return std::unique_ptr<Session>(new Session(*this)); }

const ModelConfig& Engine::config() const { return graph_->config(); }

int64_t Engine::n_vocab() const { return graph_->config().vocab_size; }

std::string_view Engine::backend_name() const { return backend_->name(); }

Session::Session(Engine& e)
    : engine_(e),
      state_(std::make_unique<GraphState>(*e.backend_, e.config(), e.opts_.n_batch, e.opts_.n_ctx, e.opts_.kv_dtype)) {}

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

void Engine::decode_batch(std::span<BatchItem> items) {
  const int64_t vocab = n_vocab(), ctx = n_ctx();
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
  }
  if (items.empty()) return;
  if (!backend_->supports_multi_sequence()) {
    for (BatchItem& it : items) it.logits = it.session->decode(it.tokens);
    return;
  }
  const int64_t batch = opts_.n_batch;
  if (!batch_state_) batch_state_ = std::make_unique<GraphState>(*backend_, config(), batch, 0, opts_.kv_dtype);
  batch_logits_.resize(static_cast<size_t>(batch * vocab));
  std::vector<int32_t> tokens;
  std::vector<BitnetGraph::SeqRows> seqs;
  std::vector<int64_t> logit_rows;
  std::vector<size_t> logit_items, seq_items;
  size_t item = 0;
  int64_t offset = 0;  // tokens of items[item] already placed in earlier passes
  while (item < items.size()) {
    tokens.clear();
    seqs.clear();
    logit_rows.clear();
    logit_items.clear();
    seq_items.clear();
    // Fill one pass with whole items or pieces of them, in order.
    while (item < items.size() && static_cast<int64_t>(tokens.size()) < batch) {
      BatchItem& it = items[item];
      const int64_t n = static_cast<int64_t>(it.tokens.size());
      const int64_t take = std::min(n - offset, batch - static_cast<int64_t>(tokens.size()));
      seqs.push_back({&it.session->state_->kv(), it.session->n_past_, take});  // n_past_ counts earlier passes
      seq_items.push_back(item);
      tokens.insert(tokens.end(), it.tokens.begin() + offset, it.tokens.begin() + offset + take);
      offset += take;
      if (offset == n) {  // the item's last token is in this pass
        logit_rows.push_back(static_cast<int64_t>(tokens.size()) - 1);
        logit_items.push_back(item);
        ++item;
        offset = 0;
      }
    }
    graph_->forward_multi(*batch_state_, tokens, seqs, logit_rows, batch_logits_.data());
    for (size_t s = 0; s < seqs.size(); ++s) items[seq_items[s]].session->n_past_ += seqs[s].n;
    for (size_t j = 0; j < logit_items.size(); ++j) {
      BatchItem& it = items[logit_items[j]];
      float* dst = it.session->logits_buffer(static_cast<size_t>(vocab));
      std::copy_n(batch_logits_.data() + j * vocab, vocab, dst);
      it.logits = std::span<const float>(dst, static_cast<size_t>(vocab));
    }
  }
}

Session::~Session() { engine_.backend_->free_host(logits_); }

int64_t Session::n_ctx() const { return engine_.n_ctx(); }

int64_t Session::n_vocab() const { return engine_.n_vocab(); }

void Session::truncate(int64_t n) {
  if (n < 0 || n > n_past_) fail("cannot truncate a session of {} positions to {}", n_past_, n);
  n_past_ = n;
}

std::vector<float> Session::hidden_states(std::span<const int32_t> tokens) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t vocab = n_vocab(), ctx = n_ctx(), dim = engine_.config().hidden_size;
  if (n == 0) fail("no tokens given");
  if (n > ctx) fail("input of {} tokens does not fit in the context of {} tokens", n, ctx);
  check_ids(tokens, vocab, "");
  n_past_ = 0;
  std::vector<float> out(static_cast<size_t>(n * dim));
  const int64_t batch = state_->n_batch();
  for (int64_t b = 0; b < n; b += batch) {
    const int64_t m = std::min(batch, n - b);
    engine_.graph_->forward(*state_, tokens.subspan(static_cast<size_t>(b), static_cast<size_t>(m)), b, false,
                            nullptr, out.data() + b * dim);
    n_past_ = b + m;
  }
  return out;
}

std::span<const float> Session::decode(std::span<const int32_t> tokens, bool all_logits) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t vocab = n_vocab(), ctx = n_ctx();
  if (n == 0) fail("decode: no tokens given");
  if (n_past_ + n > ctx) {
    if (n_past_ == 0) fail("prompt of {} tokens does not fit in the context of {} tokens", n, ctx);
    fail("{} new tokens do not fit in the context: {} of {} positions are used, {} left", n, n_past_, ctx,
         ctx - n_past_);
  }
  check_ids(tokens, vocab, "");

  const size_t need = static_cast<size_t>((all_logits ? n : 1) * vocab);
  logits_buffer(need);
  const int64_t batch = state_->n_batch();
  for (int64_t b = 0; b < n; b += batch) {
    const int64_t m = std::min(batch, n - b);
    // Without all_logits only the last chunk runs the LM head.
    float* out = all_logits ? logits_ + b * vocab : (b + m == n ? logits_ : nullptr);
    engine_.graph_->forward(*state_, tokens.subspan(static_cast<size_t>(b), static_cast<size_t>(m)), n_past_ + b,
                            all_logits, out);
  }
  n_past_ += n;
  return {logits_, need};
}

}  // namespace onebit
