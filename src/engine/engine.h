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
// outlive its Sessions and KV pools. A Session is one sequence: its KV blocks (kv_pool.h) and
// scratch. Sessions of one Engine may be used from one thread at a time (the backend is shared).
//
// KV memory is paged on backends that support it (CPU): blocks of kv_block positions in a KvPool,
// mapped by each Session's block table. new_session() gives a Session a private pool just big
// enough for its context; new_session(pool) makes it draw blocks from a pool that several
// Sessions share (the server), with the prefix cache: full blocks of earlier sequences are reused
// by reuse_prefix(). On other backends (CUDA) every Session gets one contiguous cache.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "core/base/model.h"
#include "core/sampler/sampler.h"
#include "engine/backend.h"
#include "engine/kv_pool.h"

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
  // KV cache type (`--kv`): f32, f16, q8 or q4r (backend.h, kv_quant.h). Error at load when the
  // backend has no such cache (Backend::supports_kv_dtype) or q4r meets an unsuitable head_dim.
  KvDtype kv_dtype = KvDtype::kF32;
  bool reference = false;  // scalar reference ops instead of the SIMD kernels (tests, debugging)
  // kInt8: quantize the LM head per row to int8 at load (an engine-owned copy, 1 byte per weight
  // instead of bf16's 2) and compute logits with int8 activations and exact int32 sums.
  LmHead lm_head = LmHead::kAsStored;
  // Positions per KV block (paged KV, `--kv-block`); 0 = one block of n_ctx (a contiguous cache).
  // Resolved at load to at most n_ctx, and to n_ctx on a backend without paged KV.
  int64_t kv_block = 16;
};

// How many rows of an input with `left` tokens still to run go into a pass with `room` free rows:
// all of them if they fit; else as many as fit while both this piece and the rest keep at least 2
// rows, so that every row of a multi-token input goes through the backend's multi-row (prompt)
// attention however the input is cut (alone, or packed beside other sequences) and gets the same
// bits there; 0 when no such cut fits in `room` (the piece starts in a later pass).
int64_t input_piece_rows(int64_t left, int64_t room);

class Session;

// One sequence's part of Engine::decode_batch.
struct BatchItem {
  Session* session = nullptr;
  std::span<const int32_t> tokens;  // appended at session->n_past()
  std::span<const float> logits;    // out: logits of the last token ([n_vocab]), valid until the session's next call
  int32_t argmax = -1;              // out, with BatchOutput::kArgmax: the index of the largest of those logits
  Sampler* sampler = nullptr;       // in, with BatchOutput::kSample: draws the next token (device_chain() only)
  int32_t token = -1;               // out, with BatchOutput::kSample: what sampler->sample(logits, {}) gives, or
                                    // -1 where that throws (NaN / +inf logits, every token banned)
};

// What Engine::decode_batch returns per item: the logits, only the greedy choice, or only the token
// the item's Sampler draws. kArgmax and kSample are computed where the logits are (on the GPU for the
// CUDA backend), so that only one id per sequence is copied back; on the CPU kSample runs the
// Sampler on the logits.
enum class BatchOutput : uint8_t { kLogits, kArgmax, kSample };

class Engine {
 public:
  // Validates the model and the options (Error naming the problem), uploads the weights.
  static std::unique_ptr<Engine> load(const Model& model, const EngineOptions& opts = {});
  ~Engine();

  // A Session with a private KV pool of blocks_per_context() blocks (no prefix cache), or, with
  // `pool` (from new_kv_pool), one that draws its blocks from that shared pool.
  std::unique_ptr<Session> new_session(std::shared_ptr<KvPool> pool = nullptr);

  // A pool of n_blocks KV blocks that Sessions share, with the prefix cache. Error on a backend
  // without paged KV (paged_kv() false), for n_blocks < 1, or when the memory is not there.
  std::shared_ptr<KvPool> new_kv_pool(int64_t n_blocks);
  bool paged_kv() const;                 // the backend follows block tables
  int64_t kv_block() const { return opts_.kv_block; }  // positions per block (resolved)
  int64_t blocks_per_context() const { return (opts_.n_ctx + opts_.kv_block - 1) / opts_.kv_block; }

  // Continuous batching: appends each item's tokens to its session in shared forward passes of up
  // to n_batch rows (every matrix product reads the weights once for all sequences; RoPE, the KV
  // cache and attention stay per sequence). Items are packed in order; a long item is split over
  // passes. For each session the result is what session->decode(tokens) computes, to the bit.
  // Everything is checked first (an empty item, an id outside the vocabulary, tokens that do not
  // fit the context, a session given twice or from another engine, more new KV blocks than the
  // sessions' pools have available): Error, and nothing runs.
  // Backends without multi-sequence passes run the items one after another. With
  // BatchOutput::kArgmax each item gets `argmax` (the greedy next token) and no logits. With
  // kSample each item gets `token`, drawn by its `sampler` as Session::decode_sample does (Error,
  // before anything runs, for an item without a sampler, with one of another vocabulary size, or
  // one whose chain is not Sampler::device_chain(): those need the logits), and no logits. Every
  // item's sampler draws once (Sampler::draw) per call, so give kSample only items whose next
  // token is wanted (a prompt's last chunk, a decode step).
  void decode_batch(std::span<BatchItem> items, BatchOutput out = BatchOutput::kLogits);

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
  float* batch_logits_ = nullptr;             // decode_batch's logits (Backend::alloc_host: page-locked on a GPU)
  size_t batch_logits_cap_ = 0;
  int32_t* batch_argmax_ = nullptr;  // decode_batch's argmax ids, n_batch (alloc_host: page-locked on a GPU)
  int32_t* batch_sampled_ = nullptr;  // decode_batch's sampled ids and their settings, n_batch of each
  SampleRow* batch_sample_rows_ = nullptr;
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
  // vocabulary, when the tokens do not fit in the context, or when the pool has too few free
  // blocks for them.
  std::span<const float> decode(std::span<const int32_t> tokens, bool all_logits = false);

  // decode(tokens), then the next token as sampler.sample(logits, history) picks it from the last
  // token's logits. On a backend that samples on the device (CUDA) with a chain it runs
  // (Sampler::device_chain(): temperature, top-k, top-p, min-p) the draw happens there with the
  // sampler's own uniform number (Sampler::draw) and only the id crosses to the host; a one-token
  // step stays one CUDA graph. Same tokens as the host sampler except where a random number or a
  // top-p / top-k mass falls within rounding of a boundary (docs/kernels-cuda.md, "Sampling").
  // Otherwise the logits come to the host and the sampler runs there. Throws Error as decode()
  // does, for a sampler of another vocabulary size, and when the logits hold a NaN or +inf or
  // every token is banned (the session then holds the tokens).
  int32_t decode_sample(std::span<const int32_t> tokens, Sampler& sampler, std::span<const int32_t> history = {});

  // The final-normed hidden state of every token ([tokens.size()][hidden_size], row-major), with
  // the tokens run from position 0 (the session is reset first and holds them afterwards). The
  // server's /v1/embeddings pools these. Same checks as decode().
  std::vector<float> hidden_states(std::span<const int32_t> tokens);

  int64_t n_past() const { return n_past_; }
  int64_t n_ctx() const;
  int64_t n_vocab() const;
  // The tokens in the KV cache (n_past() of them).
  std::span<const int32_t> tokens() const { return tokens_; }
  // Forgets everything (n_past = 0) and gives its blocks back to the pool (published full blocks
  // stay there in the prefix cache).
  void reset() { truncate(0); }
  // Keeps the first n positions of the KV cache (chat: reuse a common prefix); n <= n_past.
  // Blocks past them go back to the pool; a block cut in the middle that another sequence shares is
  // copied first (Error if the pool has no block for the copy: the session then keeps the whole
  // blocks below n).
  void truncate(int64_t n);
  // Makes the KV cache hold the longest available prefix of `tokens`, at most `max` positions:
  // the common prefix of tokens() and `tokens` is kept (truncate), then, with a shared pool, whole
  // cached blocks of the pool that continue it are taken (prefix cache). Returns n_past().
  int64_t reuse_prefix(std::span<const int32_t> tokens, int64_t max);
  // Makes sure blocks for positions [0, positions) are held (positions <= n_ctx), taking new ones
  // from the pool (evicting cached blocks if needed); false, and nothing taken, if the pool does
  // not have enough. decode() does this itself; a scheduler calls it to plan.
  bool reserve(int64_t positions);
  // New blocks reserve(positions) would take.
  int64_t blocks_needed(int64_t positions) const;
  int64_t blocks_held() const { return static_cast<int64_t>(table_.size()); }
  const KvPool& pool() const { return *pool_; }
  const KvCacheView& kv() const { return kv_; }

 private:
  friend class Engine;
  Session(Engine& e, std::shared_ptr<KvPool> pool);
  // Records `t` as written at positions n_past().. (by a forward pass) and publishes the blocks
  // that became full to the prefix cache.
  void append(std::span<const int32_t> t);
  void sync_view();  // kv_ follows table_
  // decode()'s checks and KV reservation (Error, and the session unchanged, when they fail).
  void prepare(std::span<const int32_t> tokens);
  Engine& engine_;
  std::unique_ptr<GraphState> state_;
  std::shared_ptr<KvPool> pool_;
  KvCacheView kv_;
  std::vector<int32_t> table_;   // pool block of positions [i * block_size, (i + 1) * block_size)
  std::vector<int32_t> tokens_;  // what the KV cache holds
  int64_t published_ = 0;        // leading blocks already offered to the prefix cache
  int64_t n_past_ = 0;
  float* logits_buffer(size_t count);  // logits_ with room for `count` floats
  // Logits in host memory from the backend (page-locked on a GPU), grown as needed.
  float* logits_ = nullptr;
  size_t logits_cap_ = 0;
  // decode_sample's settings and id on the device path (alloc_host: page-locked, fixed addresses).
  SampleRow* sample_row_ = nullptr;
  int32_t* sample_id_ = nullptr;
};

}  // namespace onebit
