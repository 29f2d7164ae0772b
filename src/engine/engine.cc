#include "engine/engine.h"

#include <algorithm>

#include "core/base/error.h"
#include "engine/bitnet_graph.h"
#include "engine/cpu_backend.h"

namespace onebit {

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
  e->backend_ = std::make_unique<CpuBackend>(CpuBackendOptions{o.n_threads, o.reference});
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

Session::~Session() = default;

int64_t Session::n_ctx() const { return engine_.n_ctx(); }

int64_t Session::n_vocab() const { return engine_.n_vocab(); }

void Session::truncate(int64_t n) {
  if (n < 0 || n > n_past_) fail("cannot truncate a session of {} positions to {}", n_past_, n);
  n_past_ = n;
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
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      fail("token {} (position {} of the input) is outside the vocabulary [0, {})", tokens[i], i, vocab);

  logits_.resize(static_cast<size_t>((all_logits ? n : 1) * vocab));
  const int64_t batch = state_->n_batch();
  for (int64_t b = 0; b < n; b += batch) {
    const int64_t m = std::min(batch, n - b);
    // Without all_logits only the last chunk runs the LM head.
    float* out = all_logits ? logits_.data() + b * vocab : (b + m == n ? logits_.data() : nullptr);
    engine_.graph_->forward(*state_, tokens.subspan(static_cast<size_t>(b), static_cast<size_t>(m)), n_past_ + b,
                            all_logits, out);
  }
  n_past_ += n;
  return logits_;
}

}  // namespace onebit
