#include "engine/bitnet_graph.h"

#include <fmt/format.h>

#include "core/base/error.h"

namespace onebit {

GraphState::GraphState(Backend& be, const ModelConfig& c, int64_t n_batch, int64_t n_ctx, KvDtype kv_dtype)
    : be_(be), n_batch_(n_batch) {
  const int64_t hidden = c.hidden_size, qdim = c.num_heads * c.head_dim, kvdim = c.num_kv_heads * c.head_dim,
                inter = c.intermediate_size;
  auto f32 = [&](int64_t dim) { return static_cast<float*>(be_.alloc(static_cast<size_t>(n_batch * dim) * 4)); };
  kv_.dtype = kv_dtype;
  kv_.n_layers = c.num_layers;
  kv_.n_kv_heads = c.num_kv_heads;
  kv_.n_ctx = n_ctx;
  kv_.head_dim = c.head_dim;
  try {
    kv_.data = be_.alloc(kv_.bytes());
    x_ = f32(hidden);
    tmp_ = f32(hidden);
    q_ = f32(qdim);
    k_ = f32(kvdim);
    v_ = f32(kvdim);
    attn_ = f32(qdim);
    gate_ = f32(inter);
    up_ = f32(inter);
    q_hidden_ = be_.alloc_quant(n_batch, hidden);
    q_attn_ = be_.alloc_quant(n_batch, qdim);
    q_ffn_ = be_.alloc_quant(n_batch, inter);
  } catch (const std::bad_alloc&) {
    release();
    fail("out of memory allocating the KV cache ({:.1f} MiB for {} positions) and activations for {} tokens",
         static_cast<double>(kv_.bytes()) / (1 << 20), n_ctx, n_batch);
  }
}

GraphState::~GraphState() { release(); }

void GraphState::release() {
  for (void* p : {static_cast<void*>(x_), static_cast<void*>(tmp_), static_cast<void*>(q_), static_cast<void*>(k_),
                  static_cast<void*>(v_), static_cast<void*>(attn_), static_cast<void*>(gate_),
                  static_cast<void*>(up_), kv_.data})
    be_.free(p);
  x_ = tmp_ = q_ = k_ = v_ = attn_ = gate_ = up_ = nullptr;
  kv_.data = nullptr;
  for (QuantBuffer* q : {&q_hidden_, &q_attn_, &q_ffn_}) {
    if (q->impl != nullptr) be_.free_quant(*q);
    q->impl = nullptr;
  }
}

BitnetGraph::BitnetGraph(Backend& be, const Model& m, int64_t n_ctx, LmHead lm_head) : be_(be), c_(m.config) {
  m.validate();
  if (c_.hidden_act != "relu2")
    fail("{}: hidden_act \"{}\" is not supported (BitNet b1.58 uses relu2)", m.path, c_.hidden_act);
  if (c_.head_dim % 2 != 0) fail("{}: head_dim {} must be even for RoPE", m.path, c_.head_dim);
  token_embd_ = be_.add_dense(m.get("token_embd.weight"));
  for (int64_t l = 0; l < c_.num_layers; ++l) {
    auto name = [&](const char* s) { return fmt::format("blk.{}.{}.weight", l, s); };
    Layer L;
    L.attn_norm = be_.add_norm(m.get(name("attn_norm")));
    L.q = be_.add_ternary(m.get(name("attn_q")));
    L.k = be_.add_ternary(m.get(name("attn_k")));
    L.v = be_.add_ternary(m.get(name("attn_v")));
    L.attn_sub_norm = be_.add_norm(m.get(name("attn_sub_norm")));
    L.o = be_.add_ternary(m.get(name("attn_output")));
    L.ffn_norm = be_.add_norm(m.get(name("ffn_norm")));
    L.gate = be_.add_ternary(m.get(name("ffn_gate")));
    L.up = be_.add_ternary(m.get(name("ffn_up")));
    L.ffn_sub_norm = be_.add_norm(m.get(name("ffn_sub_norm")));
    L.down = be_.add_ternary(m.get(name("ffn_down")));
    layers_.push_back(L);
  }
  output_norm_ = be_.add_norm(m.get("output_norm.weight"));
  const Tensor* out = c_.tie_word_embeddings ? nullptr : m.find("output.weight");
  if (lm_head == LmHead::kInt8)
    output_ = be_.add_dense_int8(out != nullptr ? *out : m.get("token_embd.weight"));
  else
    output_ = out != nullptr ? be_.add_dense(*out) : token_embd_;
  be_.init_rope(c_.head_dim, c_.rope_theta, n_ctx);
}

void BitnetGraph::forward(GraphState& st, std::span<const int32_t> tokens, int64_t pos0, bool all_logits,
                          float* logits) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n <= 0 || n > st.n_batch_) fail("forward: {} tokens for a batch of at most {}", n, st.n_batch_);
  const int64_t hidden = c_.hidden_size, H = c_.num_heads, Hkv = c_.num_kv_heads;
  const int64_t inter = c_.intermediate_size;
  const float eps = static_cast<float>(c_.rms_norm_eps);
  Backend& be = be_;

  be.embed(token_embd_, tokens, st.x_);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    const int64_t li = static_cast<int64_t>(l);
    // Attention block: x += o(attn_sub_norm(attention(rope(q), rope(k), v))).
    be.rmsnorm_quantize(st.x_, L.attn_norm, n, eps, st.q_hidden_);
    be.ternary_matmul(L.q, st.q_hidden_, n, st.q_);
    be.ternary_matmul(L.k, st.q_hidden_, n, st.k_);
    be.ternary_matmul(L.v, st.q_hidden_, n, st.v_);
    be.rope(st.q_, n, H, pos0);
    be.rope(st.k_, n, Hkv, pos0);
    be.kv_store(st.kv_, li, st.k_, st.v_, n, pos0);
    be.attention(st.kv_, li, st.q_, n, H, pos0, st.attn_);
    be.rmsnorm_quantize(st.attn_, L.attn_sub_norm, n, eps, st.q_attn_);
    be.ternary_matmul(L.o, st.q_attn_, n, st.tmp_);
    be.add(st.x_, st.tmp_, n * hidden);
    // FFN block: x += down(ffn_sub_norm(relu(gate)^2 * up)).
    be.rmsnorm_quantize(st.x_, L.ffn_norm, n, eps, st.q_hidden_);
    be.ternary_matmul(L.gate, st.q_hidden_, n, st.gate_);
    be.ternary_matmul(L.up, st.q_hidden_, n, st.up_);
    be.relu2_mul(st.gate_, st.up_, n * inter, st.gate_);
    be.rmsnorm_quantize(st.gate_, L.ffn_sub_norm, n, eps, st.q_ffn_);
    be.ternary_matmul(L.down, st.q_ffn_, n, st.tmp_);
    be.add(st.x_, st.tmp_, n * hidden);
  }
  if (logits == nullptr) return;
  if (all_logits) {
    be.rmsnorm(st.x_, output_norm_, n, eps, st.tmp_);
    be.lm_head(output_, st.tmp_, n, logits);
  } else {
    be.rmsnorm(st.x_ + (n - 1) * hidden, output_norm_, 1, eps, st.tmp_);
    be.lm_head(output_, st.tmp_, 1, logits);
  }
}

}  // namespace onebit
