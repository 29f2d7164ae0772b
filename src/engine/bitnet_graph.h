// BitnetGraph: the BitNet b1.58 forward pass (transformers' BitNetForCausalLM semantics),
// written once against the Backend interface. docs/engine.md spells out the math.
//
// The graph holds the weight handles (uploaded to the backend at construction); a GraphState
// holds activation scratch for up to n_batch token rows in backend memory. The KV cache a pass
// reads and writes is a KvCacheView (the Session's blocks of a KvPool, kv_pool.h). The graph is
// stateless between calls, so any number of GraphStates may use it (one at a time per backend).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/base/model.h"
#include "engine/backend.h"

namespace onebit {

class GraphState {
 public:
  GraphState(Backend& be, const ModelConfig& c, int64_t n_batch);
  ~GraphState();
  GraphState(const GraphState&) = delete;
  GraphState& operator=(const GraphState&) = delete;

  int64_t n_batch() const { return n_batch_; }

 private:
  friend class BitnetGraph;
  void release();
  Backend& be_;
  int64_t n_batch_;
  // fp32 activations [n_batch][dim]
  float* x_ = nullptr;     // residual stream, hidden
  float* tmp_ = nullptr;   // projection output before the residual add / final norm, hidden
  float* q_ = nullptr;     // H*D
  float* k_ = nullptr;     // Hkv*D
  float* v_ = nullptr;     // Hkv*D
  float* attn_ = nullptr;  // H*D
  float* gate_ = nullptr;  // intermediate
  float* up_ = nullptr;    // intermediate
  QuantBuffer q_hidden_, q_attn_, q_ffn_;
};

class BitnetGraph {
 public:
  // Uploads every weight of `m` (validated) to `be` and sets up RoPE for n_ctx positions.
  // `m` must outlive the graph (dense matrices may stay in the model's memory). With
  // LmHead::kInt8 the LM head (output.weight, or token_embd when tied) goes through
  // Backend::add_dense_int8; the embedding lookup keeps reading the stored matrix.
  BitnetGraph(Backend& be, const Model& m, int64_t n_ctx, LmHead lm_head = LmHead::kAsStored);

  const ModelConfig& config() const { return c_; }

  // Runs tokens (1..st.n_batch() of them, ids in range) at positions pos0, pos0+1, ... of the KV
  // cache `kv` (mapped for positions up to pos0 + n) and
  // writes into host memory `logits` the logits of every row ([n][vocab]) when all_logits, else
  // of the last row only ([vocab]); logits == nullptr skips the LM head. The caller checks
  // pos0 + n <= n_ctx. With `hidden` != nullptr, also writes to that host memory the final-normed
  // hidden state of every row ([n][hidden_size], what the LM head multiplies). With `ids` (host
  // memory from Backend::alloc_host, [1]; logits nullptr, all_logits false) the last row's next
  // token is written there instead of logits: its argmax, or with `sample` (host memory from
  // alloc_host, read when the pass runs) the token Backend::lm_head_sample draws.
  void forward(GraphState& st, const KvCacheView& kv, std::span<const int32_t> tokens, int64_t pos0, bool all_logits,
               float* logits, float* hidden = nullptr, int32_t* ids = nullptr, const SampleRow* sample = nullptr);

  // Rows [r0, r0 + n) of one pass that belong to one sequence: its KV cache and first position.
  using SeqRows = onebit::SeqRows;  // backend.h
  // Several sequences in one pass (continuous batching): `tokens` is the concatenation of each
  // sequence's new tokens, in the order of `seqs`; every matrix product runs once over all rows,
  // RoPE, the KV store and attention per sequence. `scratch` provides the activation buffers (its
  // KV caches are the sequences'). Writes to host memory `logits` the logits of the rows listed in
  // `logit_rows` ([logit_rows.size()][vocab]). Per row the arithmetic is that of forward(), so each
  // sequence gets the same logits as alone. Backends without supports_multi_sequence() take one
  // sequence per pass. With `argmax` (host memory, [logit_rows.size()]) only the index of each
  // listed row's largest logit is written there (Backend::lm_head_argmax) and `logits` is unused;
  // with `sample` too ([logit_rows.size()], host memory from alloc_host) the token drawn with each
  // row's settings (Backend::lm_head_sample) instead of the argmax.
  void forward_multi(GraphState& scratch, std::span<const int32_t> tokens, std::span<const SeqRows> seqs,
                     std::span<const int64_t> logit_rows, float* logits, int32_t* argmax = nullptr,
                     const SampleRow* sample = nullptr);

 private:
  void run_ops(GraphState& st, const KvCacheView& kv, std::span<const int32_t> tokens, int64_t pos0,
               bool all_logits, float* logits, float* hidden_out, int32_t* ids, const SampleRow* sample);
  void run_layers(GraphState& st, std::span<const int32_t> tokens, std::span<const SeqRows> seqs);
  using Layer = Backend::LayerWeights;
  Backend& be_;
  ModelConfig c_;
  WeightHandle token_embd_, output_norm_, output_;
  std::vector<Layer> layers_;
};

}  // namespace onebit
