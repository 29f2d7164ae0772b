#include "engine/bitnet_graph.h"

#include <fmt/format.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "core/base/error.h"

namespace onebit {

GraphState::GraphState(Backend& be, const ModelConfig& c, int64_t n_batch)
    : be_(be), n_batch_(n_batch) {
  const int64_t hidden = c.hidden_size, qdim = c.num_heads * c.head_dim, kvdim = c.num_kv_heads * c.head_dim,
                inter = c.intermediate_size;
  auto f32 = [&](int64_t dim) { return static_cast<float*>(be_.alloc(static_cast<size_t>(n_batch * dim) * 4)); };
  try {
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
    fail("out of memory allocating activations for {} tokens", n_batch);
  }
}

GraphState::~GraphState() {
  be_.forget(this);
  release();
}

void Backend::lm_head_argmax(WeightHandle w, const float* x, int64_t n, int32_t* ids) {
  std::vector<float> logits(static_cast<size_t>(n * w.rows));
  lm_head(w, x, n, logits.data());
  for (int64_t i = 0; i < n; ++i) {
    const auto row = logits.begin() + i * w.rows;
    ids[i] = static_cast<int32_t>(std::max_element(row, row + w.rows) - row);
  }
}

void Backend::lm_head_sample(WeightHandle, const float*, int64_t, const SampleRow*, int32_t*) {
  fail("the {} backend does not sample on the device (the engine samples its logits on the host)", name());
}

void Backend::decode_layer(const LayerWeights&, int64_t, const LayerBuffers&, std::span<const SeqRows>, int64_t,
                           float) {
  fail("the {} backend has no fused decode layer", name());
}

bool Backend::ReplayKey::operator<(const ReplayKey& o) const {
  return std::tie(owner, out, n, all_logits) < std::tie(o.owner, o.out, o.n, o.all_logits);
}

void GraphState::release() {
  for (void* p : {static_cast<void*>(x_), static_cast<void*>(tmp_), static_cast<void*>(q_), static_cast<void*>(k_),
                  static_cast<void*>(v_), static_cast<void*>(attn_), static_cast<void*>(gate_),
                  static_cast<void*>(up_)})
    be_.free(p);
  x_ = tmp_ = q_ = k_ = v_ = attn_ = gate_ = up_ = nullptr;
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

void BitnetGraph::forward(GraphState& st, const KvCacheView& kv, std::span<const int32_t> tokens, int64_t pos0,
                          bool all_logits, float* logits, float* hidden_out, int32_t* ids, const SampleRow* sample) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n <= 0 || n > st.n_batch_) fail("forward: {} tokens for a batch of at most {}", n, st.n_batch_);
  if (ids != nullptr && (logits != nullptr || all_logits)) fail("forward: token ids and logits asked for together");
  Backend& be = be_;
  const SeqRows one{&kv, pos0, n};
  be.begin_forward_multi(tokens, std::span(&one, 1));  // with the KV view (a GPU copies its block table)
  auto ops = [&] { run_ops(st, kv, tokens, pos0, all_logits, logits, hidden_out, ids, sample); };
  // One-token steps (decode) may be recorded and replayed (CUDA graphs); hidden-state reads are rare.
  // The ids buffer differs from every logits buffer, so a step that samples is a recording of its own.
  if (n == 1 && hidden_out == nullptr)
    be.run_cached(Backend::ReplayKey{&st, ids != nullptr ? static_cast<const void*>(ids) : logits, n, all_logits}, ops);
  else
    ops();
  be.end_forward();
}

void BitnetGraph::run_ops(GraphState& st, const KvCacheView& kv, std::span<const int32_t> tokens, int64_t pos0,
                          bool all_logits, float* logits, float* hidden_out, int32_t* ids, const SampleRow* sample) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t hidden = c_.hidden_size;
  const float eps = static_cast<float>(c_.rms_norm_eps);
  Backend& be = be_;
  const SeqRows one{&kv, pos0, n};
  run_layers(st, tokens, std::span(&one, 1));
  if (hidden_out != nullptr) {
    be.rmsnorm(st.x_, output_norm_, n, eps, st.tmp_);
    be.download(st.tmp_, hidden_out, static_cast<size_t>(n * c_.hidden_size) * sizeof(float));
  }
  if (ids != nullptr) {
    be.rmsnorm(st.x_ + (n - 1) * hidden, output_norm_, 1, eps, st.tmp_);
    if (sample != nullptr)
      be.lm_head_sample(output_, st.tmp_, 1, sample, ids);
    else
      be.lm_head_argmax(output_, st.tmp_, 1, ids);
    return;
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

void BitnetGraph::forward_multi(GraphState& scratch, std::span<const int32_t> tokens, std::span<const SeqRows> seqs,
                                std::span<const int64_t> logit_rows, float* logits, int32_t* argmax,
                                const SampleRow* sample) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n <= 0 || n > scratch.n_batch_) fail("forward: {} tokens for a batch of at most {}", n, scratch.n_batch_);
  int64_t total = 0;
  for (const SeqRows& s : seqs) {
    if (s.n <= 0 || s.kv == nullptr) fail("forward: an empty sequence in a batch");
    total += s.n;
  }
  if (total != n) fail("forward: sequences cover {} rows of {}", total, n);
  if (!be_.supports_multi_sequence() && seqs.size() > 1)
    fail("forward: the {} backend runs one sequence per pass", be_.name());
  Backend& be = be_;
  const int64_t hidden = c_.hidden_size;
  const float eps = static_cast<float>(c_.rms_norm_eps);
  const int64_t m = static_cast<int64_t>(logit_rows.size());
  bool identity = m == n;  // every row, in order (a pass of decode steps): one launch for all of them
  for (int64_t j = 0; j < m; ++j) {
    const int64_t r = logit_rows[static_cast<size_t>(j)];
    if (r < 0 || r >= n) fail("forward: logits asked for row {} of {}", r, n);
    identity = identity && r == j;
  }
  be.begin_forward_multi(tokens, seqs);
  auto ops = [&] {
    run_layers(scratch, tokens, seqs);
    // Final norm of the requested rows, gathered into consecutive rows of tmp, then one LM head.
    if (identity) {
      be.rmsnorm(scratch.x_, output_norm_, n, eps, scratch.tmp_);
    } else {
      for (int64_t j = 0; j < m; ++j) {
        const int64_t r = logit_rows[static_cast<size_t>(j)];
        be.rmsnorm(scratch.x_ + r * hidden, output_norm_, 1, eps, scratch.tmp_ + j * hidden);
      }
    }
    if (m > 0 && argmax != nullptr && sample != nullptr)
      be.lm_head_sample(output_, scratch.tmp_, m, sample, argmax);
    else if (m > 0 && argmax != nullptr)
      be.lm_head_argmax(output_, scratch.tmp_, m, argmax);
    else if (m > 0)
      be.lm_head(output_, scratch.tmp_, m, logits);
  };
  // A pass of decode steps (one new row per sequence, every row's logits) is the same launches
  // for every pass of that many sequences: the backend may record it once per batch size and
  // replay it (CUDA graphs); positions, caches and ids travel in begin_forward_multi's buffers.
  // (Two or more sequences: a one-sequence pass bakes that sequence's cache into its launches.)
  const bool decode_only = identity && static_cast<int64_t>(seqs.size()) == n && n >= 2;
  if (decode_only)
    be.run_cached(Backend::ReplayKey{&scratch, argmax != nullptr ? static_cast<const void*>(argmax) : logits, n, false},
                  ops);
  else
    ops();
  be.end_forward();
}

void BitnetGraph::run_layers(GraphState& st, std::span<const int32_t> tokens, std::span<const SeqRows> seqs) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t hidden = c_.hidden_size, H = c_.num_heads;
  const float eps = static_cast<float>(c_.rms_norm_eps);
  Backend& be = be_;
  be.embed(token_embd_, tokens, st.x_);
  // A backend may run each layer as a few fused kernels (the CUDA backend, one-row passes).
  if (be.fused_decode(n, hidden, H * c_.head_dim, c_.intermediate_size)) {
    const Backend::LayerBuffers b{st.x_, st.q_, st.k_, st.v_, st.attn_, st.gate_, st.up_};
    if (be.decode_layers(layers_, b, seqs, H, eps)) return;  // the CUDA backend: one persistent kernel
    for (size_t l = 0; l < layers_.size(); ++l) be.decode_layer(layers_[l], static_cast<int64_t>(l), b, seqs, H, eps);
    return;
  }
  // The per-layer sequence (docs/engine.md), with the residual add of each block fused into the
  // norm that follows it:
  //   x += o(attn_sub_norm(attention(rope(q), rope(k), v)))  with q, k, v = qkv(attn_norm(x))
  //   x += down(ffn_sub_norm(relu(gate)^2 * up))             with gate, up = (ffn_norm(x))
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    const int64_t li = static_cast<int64_t>(l);
    if (l == 0)
      be.rmsnorm_quantize(st.x_, L.attn_norm, n, eps, st.q_hidden_);
    else
      be.add_rmsnorm_quantize(st.x_, st.tmp_, L.attn_norm, n, eps, st.q_hidden_);  // previous FFN's residual
    const WeightHandle qkv[] = {L.q, L.k, L.v};
    float* const qkv_out[] = {st.q_, st.k_, st.v_};
    be.ternary_matmul_shared(qkv, st.q_hidden_, n, qkv_out);
    // Position-dependent steps per sequence (its rows are consecutive); everything else spans all rows.
    be.rope_kv_attention_multi(seqs, li, st.q_, st.k_, st.v_, H, st.attn_);
    be.rmsnorm_quantize(st.attn_, L.attn_sub_norm, n, eps, st.q_attn_);
    be.ternary_matmul(L.o, st.q_attn_, n, st.tmp_);
    be.add_rmsnorm_quantize(st.x_, st.tmp_, L.ffn_norm, n, eps, st.q_hidden_);
    const WeightHandle gu[] = {L.gate, L.up};
    float* const gu_out[] = {st.gate_, st.up_};
    be.ternary_matmul_shared(gu, st.q_hidden_, n, gu_out);
    be.relu2_mul_rmsnorm_quantize(st.gate_, st.up_, L.ffn_sub_norm, n, eps, st.q_ffn_);
    be.ternary_matmul(L.down, st.q_ffn_, n, st.tmp_);
  }
  be.add(st.x_, st.tmp_, n * hidden);
}

}  // namespace onebit
