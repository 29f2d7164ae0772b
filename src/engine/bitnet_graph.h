// BitnetGraph: the BitNet b1.58 forward pass (transformers' BitNetForCausalLM semantics),
// written once against the Backend interface. docs/engine.md spells out the math.
//
// The graph holds the weight handles (uploaded to the backend at construction); a GraphState
// holds one sequence's activation scratch for up to n_batch token rows and its KV cache, both in
// backend memory. The graph is stateless between calls, so any number of GraphStates may use it
// (one at a time per backend).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/base/model.h"
#include "engine/backend.h"

namespace onebit {

class GraphState {
 public:
  GraphState(Backend& be, const ModelConfig& c, int64_t n_batch, int64_t n_ctx, KvDtype kv_dtype);
  ~GraphState();
  GraphState(const GraphState&) = delete;
  GraphState& operator=(const GraphState&) = delete;

  int64_t n_batch() const { return n_batch_; }
  const KvCacheView& kv() const { return kv_; }

 private:
  friend class BitnetGraph;
  void release();
  Backend& be_;
  int64_t n_batch_;
  KvCacheView kv_;
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

  // Runs tokens (1..st.n_batch() of them, ids in range) at positions pos0, pos0+1, ... and
  // writes into host memory `logits` the logits of every row ([n][vocab]) when all_logits, else
  // of the last row only ([vocab]); logits == nullptr skips the LM head. The caller checks
  // pos0 + n <= n_ctx.
  void forward(GraphState& st, std::span<const int32_t> tokens, int64_t pos0, bool all_logits, float* logits);

 private:
  struct Layer {
    WeightHandle attn_norm, q, k, v, attn_sub_norm, o, ffn_norm, gate, up, ffn_sub_norm, down;
  };
  Backend& be_;
  ModelConfig c_;
  WeightHandle token_embd_, output_norm_, output_;
  std::vector<Layer> layers_;
};

}  // namespace onebit
