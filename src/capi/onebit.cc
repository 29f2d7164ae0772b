// The C ABI (include/onebit/onebit.h) over the C++ engine and core.
//
// Every entry point runs its body inside guard(), which turns any exception into an onebit_error
// (or drops it when the caller passed err = NULL) and returns the function's failure value: no
// C++ exception ever crosses the ABI. Only the onebit_* functions are exported (the library is
// built with hidden visibility and src/capi/onebit.map).
#include "onebit/onebit.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/base/error.h"
#include "core/formats/model_loader.h"
#include "core/sampler/sampler.h"
#include "core/tokenizer/tokenizer.h"
#include "engine/engine.h"

struct onebit_error {
  std::string message;
};

struct onebit_model {
  std::unique_ptr<onebit::Model> model;
  std::optional<onebit::Tokenizer> tok;  // empty when the file carries no tokenizer
  std::vector<int32_t> stop_ids;         // end of sequence / end of turn

  const onebit::Tokenizer& tokenizer() const {
    if (!tok) onebit::fail("{}: the model carries no tokenizer", model->path);
    return *tok;
  }
};

struct onebit_context {
  const onebit_model* model = nullptr;
  std::unique_ptr<onebit::Engine> engine;
  std::unique_ptr<onebit::Session> session;
  std::vector<int32_t> cached;  // the tokens whose keys/values the session holds
};

namespace {

using onebit::fail;

void set_error(onebit_error** err, std::string msg) {
  if (err == nullptr) return;
  // If even this allocation fails there is nothing better to report than NULL.
  *err = new (std::nothrow) onebit_error{};
  if (*err != nullptr) {
    try {
      (*err)->message = std::move(msg);
    } catch (...) {
    }
  }
}

template <typename R, typename F>
R guard(onebit_error** err, R failed, F&& body) {
  if (err != nullptr) *err = nullptr;
  try {
    return body();
  } catch (const onebit::Error& e) {
    set_error(err, e.what());
  } catch (const std::bad_alloc&) {
    set_error(err, "out of memory");
  } catch (const std::exception& e) {
    set_error(err, std::string("internal error: ") + e.what());
  } catch (...) {
    set_error(err, "internal error: unknown exception");
  }
  return failed;
}

}  // namespace

extern "C" {

ONEBIT_API int onebit_abi_version(void) { return ONEBIT_ABI_VERSION; }

ONEBIT_API const char* onebit_error_message(const onebit_error* err) {
  return err == nullptr ? "" : err->message.c_str();
}

ONEBIT_API void onebit_error_free(onebit_error* err) { delete err; }

ONEBIT_API onebit_model* onebit_model_load(const char* path, onebit_error** err) {
  return guard<onebit_model*>(err, nullptr, [&]() -> onebit_model* {
    if (path == nullptr) fail("model path is NULL");
    auto m = std::make_unique<onebit_model>();
    m->model = onebit::load_model(path);
    if (!m->model->tokenizer.empty()) m->tok.emplace(onebit::Tokenizer::from_data(m->model->tokenizer));
    for (int64_t id : m->model->config.eos_token_ids) m->stop_ids.push_back(static_cast<int32_t>(id));
    if (m->tok)
      for (int32_t id : {m->tok->eos_id(), m->tok->eot_id()})
        if (id >= 0) m->stop_ids.push_back(id);
    return m.release();
  });
}

ONEBIT_API void onebit_model_free(onebit_model* model) { delete model; }

ONEBIT_API int32_t onebit_model_n_vocab(const onebit_model* model) {
  return model == nullptr ? 0 : static_cast<int32_t>(model->model->config.vocab_size);
}

ONEBIT_API int64_t onebit_model_max_context(const onebit_model* model) {
  return model == nullptr ? 0 : model->model->config.max_position_embeddings;
}

ONEBIT_API int32_t onebit_token_bos(const onebit_model* model) {
  if (model == nullptr) return -1;
  if (model->tok && model->tok->bos_id() >= 0) return model->tok->bos_id();
  return static_cast<int32_t>(model->model->config.bos_token_id);
}

ONEBIT_API int32_t onebit_token_eos(const onebit_model* model) {
  if (model == nullptr) return -1;
  if (model->tok && model->tok->eos_id() >= 0) return model->tok->eos_id();
  const auto& e = model->model->config.eos_token_ids;
  return e.empty() ? -1 : static_cast<int32_t>(e.front());
}

ONEBIT_API int onebit_tokenize(const onebit_model* model, const char* text, size_t len, int add_special,
                               int32_t* out, size_t cap, size_t* n_out, onebit_error** err) {
  return guard(err, ONEBIT_FAILED, [&] {
    if (model == nullptr) fail("model is NULL");
    if (text == nullptr && len > 0) fail("text is NULL but its length is {}", len);
    if (n_out == nullptr) fail("n_out is NULL");
    const std::vector<int32_t> ids =
        model->tokenizer().encode(std::string_view(text == nullptr ? "" : text, len), add_special != 0);
    *n_out = ids.size();
    if (cap < ids.size()) return ONEBIT_BUFFER_TOO_SMALL;
    if (!ids.empty()) {
      if (out == nullptr) fail("out is NULL but cap is {}", cap);
      std::memcpy(out, ids.data(), ids.size() * sizeof(int32_t));
    }
    return ONEBIT_OK;
  });
}

ONEBIT_API int onebit_detokenize(const onebit_model* model, const int32_t* ids, size_t n, int skip_special,
                                 char* out, size_t cap, size_t* n_out, onebit_error** err) {
  return guard(err, ONEBIT_FAILED, [&] {
    if (model == nullptr) fail("model is NULL");
    if (ids == nullptr && n > 0) fail("ids is NULL but n is {}", n);
    if (n_out == nullptr) fail("n_out is NULL");
    const std::string text =
        model->tokenizer().decode(std::span<const int32_t>(ids == nullptr ? nullptr : ids, n), skip_special != 0);
    *n_out = text.size();
    if (cap < text.size() + 1) return ONEBIT_BUFFER_TOO_SMALL;
    if (out == nullptr) fail("out is NULL but cap is {}", cap);
    std::memcpy(out, text.data(), text.size());
    out[text.size()] = '\0';
    return ONEBIT_OK;
  });
}

ONEBIT_API onebit_context_params onebit_context_params_default(void) {
  onebit_context_params p;
  p.n_ctx = 0;
  p.n_threads = 0;
  return p;
}

ONEBIT_API onebit_context* onebit_context_new(const onebit_model* model, const onebit_context_params* params,
                                              onebit_error** err) {
  return guard<onebit_context*>(err, nullptr, [&]() -> onebit_context* {
    if (model == nullptr) fail("model is NULL");
    const onebit_context_params p = params != nullptr ? *params : onebit_context_params_default();
    if (p.n_ctx < 0) fail("n_ctx must be >= 0, got {}", p.n_ctx);
    if (p.n_threads < 0) fail("n_threads must be >= 0, got {}", p.n_threads);
    auto c = std::make_unique<onebit_context>();
    c->model = model;
    onebit::EngineOptions eo;
    eo.n_ctx = p.n_ctx;
    eo.n_threads = p.n_threads;
    c->engine = onebit::Engine::load(*model->model, eo);
    c->session = c->engine->new_session();
    return c.release();
  });
}

ONEBIT_API void onebit_context_free(onebit_context* ctx) { delete ctx; }

ONEBIT_API int64_t onebit_context_n_ctx(const onebit_context* ctx) {
  return ctx == nullptr ? 0 : ctx->engine->n_ctx();
}

ONEBIT_API void onebit_context_reset(onebit_context* ctx) {
  if (ctx == nullptr) return;
  ctx->session->reset();
  ctx->cached.clear();
}

ONEBIT_API onebit_sampling_params onebit_sampling_params_default(void) {
  onebit_sampling_params p;
  p.temperature = 0.8f;
  p.top_k = 40;
  p.top_p = 0.95f;
  p.min_p = 0.0f;
  p.repetition_penalty = 1.0f;
  p.max_tokens = 256;
  p.seed = 0;
  p.has_seed = 0;
  p.ignore_eos = 0;
  return p;
}

ONEBIT_API int64_t onebit_generate(onebit_context* ctx, const int32_t* prompt, size_t n,
                                   const onebit_sampling_params* params, onebit_token_callback on_token, void* user,
                                   const volatile int* cancel, onebit_error** err) {
  return guard<int64_t>(err, -1, [&]() -> int64_t {
    if (ctx == nullptr) fail("context is NULL");
    if (prompt == nullptr || n == 0) fail("the prompt is empty (give at least one token id)");
    const onebit_sampling_params p = params != nullptr ? *params : onebit_sampling_params_default();
    if (p.max_tokens < -1) fail("max_tokens must be >= -1, got {}", p.max_tokens);
    onebit::Session& s = *ctx->session;
    if (static_cast<int64_t>(n) > s.n_ctx())
      fail("prompt has {} tokens but the context is {}", n, s.n_ctx());
    const int64_t vocab = s.n_vocab();
    for (size_t i = 0; i < n; ++i)
      if (prompt[i] < 0 || prompt[i] >= vocab)
        fail("prompt token {} (index {}) is outside the vocabulary [0, {})", prompt[i], i, vocab);

    onebit::SamplingParams sp;
    sp.temperature = p.temperature;
    sp.top_k = p.top_k;
    sp.top_p = p.top_p;
    sp.min_p = p.min_p;
    sp.repetition_penalty = p.repetition_penalty;
    if (p.has_seed != 0) sp.seed = p.seed;
    onebit::Sampler sampler(sp, vocab);  // validates the parameters
    if (cancel != nullptr && *cancel != 0) return 0;

    // Reuse the longest common prefix of the cached sequence (at least one token is fed so that
    // there are logits to sample from).
    const std::span<const int32_t> ids(prompt, n);
    size_t keep = 0;
    while (keep < ctx->cached.size() && keep < n && ctx->cached[keep] == ids[keep]) ++keep;
    keep = std::min(keep, n - 1);
    s.truncate(static_cast<int64_t>(keep));
    ctx->cached.resize(keep);
    std::span<const float> logits = s.decode(ids.subspan(keep));
    ctx->cached.assign(ids.begin(), ids.end());

    const auto& stops = ctx->model->stop_ids;
    std::optional<onebit::StreamDecoder> dec;
    if (ctx->model->tok) dec.emplace(*ctx->model->tok, /*skip_special=*/true);
    int64_t generated = 0;
    for (;;) {
      if (p.max_tokens >= 0 && generated >= p.max_tokens) break;
      if (cancel != nullptr && *cancel != 0) break;
      const int32_t next = sampler.sample(logits, ctx->cached);
      if (p.ignore_eos == 0 && std::find(stops.begin(), stops.end(), next) != stops.end()) break;
      ++generated;
      const std::string piece = dec ? dec->push(next) : std::string();
      if (on_token != nullptr && on_token(user, next, piece.c_str(), piece.size()) != 0) break;
      if (s.n_past() >= s.n_ctx()) break;
      // The token that ended generation is not run: the next call feeds it (or what replaces it).
      if (p.max_tokens >= 0 && generated >= p.max_tokens) break;
      if (cancel != nullptr && *cancel != 0) break;
      logits = s.decode(std::span(&next, 1));
      ctx->cached.push_back(next);
    }
    // Bytes held back at the end (a character cut by the stop) go out with id -1.
    if (dec && on_token != nullptr) {
      const std::string rest = dec->flush();
      if (!rest.empty()) on_token(user, -1, rest.c_str(), rest.size());
    }
    return generated;
  });
}

}  // extern "C"
