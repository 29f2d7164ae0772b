// Engine and Session: run a loaded BitNet b1.58 model.
//
//   auto model = load_model(path);
//   auto engine = Engine::load(*model, {.n_ctx = 2048});
//   auto s = engine->new_session();
//   std::span<const float> logits = s->decode(prompt_ids);   // prefill, logits of the last token
//   logits = s->decode(std::span(&next, 1));                 // one decode step
//
// The Engine owns the backend and the weights repacked for it; the Model must outlive the Engine
// (embedding and LM head are read from the model's memory without a copy) and the Engine must
// outlive its Sessions. A Session is one sequence: its KV cache (n_ctx positions) and scratch.
// Sessions of one Engine may be used from one thread at a time (the backend is shared).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "core/base/model.h"
#include "engine/backend.h"

namespace onebit {

class BitnetGraph;
class GraphState;

// Where the model runs (`--device`).
enum class Device : uint8_t { kCpu, kCuda };
std::string_view device_name(Device d);  // "cpu" / "cuda"
// Parses "cpu" or "cuda"; throws Error naming the accepted values otherwise.
Device device_from_name(std::string_view name);

struct EngineOptions {
  Device device = Device::kCpu;  // kCuda: the CUDA backend on GPU 0 (Error if none or not built)
  int64_t n_ctx = 0;      // context length (KV cache positions); 0 = min(max_position_embeddings, 4096)
  int n_threads = 0;      // CPU threads, 0 = all hardware threads
  int64_t n_batch = 256;  // token rows per forward pass; longer prompts are split into chunks
  KvDtype kv_dtype = KvDtype::kF32;
  bool reference = false;  // scalar reference ops instead of the SIMD kernels (tests, debugging)
  // kInt8: quantize the LM head per row to int8 at load (an engine-owned copy, 1 byte per weight
  // instead of bf16's 2) and compute logits with int8 activations and exact int32 sums.
  LmHead lm_head = LmHead::kAsStored;
};

class Session;

// One sequence's part of Engine::decode_batch.
struct BatchItem {
  Session* session = nullptr;
  std::span<const int32_t> tokens;  // appended at session->n_past()
  std::span<const float> logits;    // out: logits of the last token ([n_vocab]), valid until the session's next call
};

class Engine {
 public:
  // Validates the model and the options (Error naming the problem), uploads the weights.
  static std::unique_ptr<Engine> load(const Model& model, const EngineOptions& opts = {});
  ~Engine();

  std::unique_ptr<Session> new_session();

  // Continuous batching: appends each item's tokens to its session in shared forward passes of up
  // to n_batch rows (every matrix product reads the weights once for all sequences; RoPE, the KV
  // cache and attention stay per sequence). Items are packed in order; a long item is split over
  // passes. For each session the result is what session->decode(tokens) computes, to the bit.
  // Everything is checked first (an empty item, an id outside the vocabulary, tokens that do not
  // fit the context, a session given twice or from another engine): Error, and nothing runs.
  // Backends that run one sequence per pass (CUDA) run the items one after another.
  void decode_batch(std::span<BatchItem> items);

  const ModelConfig& config() const;
  const EngineOptions& options() const { return opts_; }  // n_ctx resolved
  int64_t n_ctx() const { return opts_.n_ctx; }
  int64_t n_vocab() const;
  Backend& backend() { return *backend_; }
  std::string_view backend_name() const;

 private:
  friend class Session;
  Engine() = default;
  EngineOptions opts_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<BitnetGraph> graph_;
  std::unique_ptr<GraphState> batch_state_;  // decode_batch's activation scratch (no KV cache)
  std::vector<float> batch_logits_;
};

class Session {
 public:
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Appends `tokens` at positions n_past().. (the prompt goes through the batched GEMM path, in
  // chunks of n_batch rows) and returns the logits of the last new token ([n_vocab]) or, with
  // all_logits, of every new token ([tokens.size()][n_vocab]). The span stays valid until the next
  // call. Throws Error (and leaves the session unchanged) on an empty list, an id outside the
  // vocabulary, or when the tokens do not fit in the context.
  std::span<const float> decode(std::span<const int32_t> tokens, bool all_logits = false);

  // The final-normed hidden state of every token ([tokens.size()][hidden_size], row-major), with
  // the tokens run from position 0 (the session is reset first and holds them afterwards). The
  // server's /v1/embeddings pools these. Same checks as decode().
  std::vector<float> hidden_states(std::span<const int32_t> tokens);

  int64_t n_past() const { return n_past_; }
  int64_t n_ctx() const;
  int64_t n_vocab() const;
  // Forgets everything (n_past = 0).
  void reset() { n_past_ = 0; }
  // Keeps the first n positions of the KV cache (chat: reuse a common prefix); n <= n_past.
  void truncate(int64_t n);

 private:
  friend class Engine;
  explicit Session(Engine& e);
  Engine& engine_;
  std::unique_ptr<GraphState> state_;
  int64_t n_past_ = 0;
  float* logits_buffer(size_t count);  // logits_ with room for `count` floats
  // Logits in host memory from the backend (page-locked on a GPU), grown as needed.
  float* logits_ = nullptr;
  size_t logits_cap_ = 0;
};

}  // namespace onebit
