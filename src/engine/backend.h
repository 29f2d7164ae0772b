// Backend: the small table of operations the BitNet graph is written against.
//
// The graph code (bitnet_graph.h) never touches activation memory itself: it allocates buffers
// through the backend and passes their pointers back to the backend's operations. For the CPU
// backend those pointers are host memory; for a GPU backend they would be device pointers, and
// the only host<->device transfers are the token ids going in (embed) and the logits coming out
// (lm_head). A backend prepares (repacks) weights once at load and refers to them by handle.
//
// Row conventions: an activation matrix of `n` token rows and `dim` columns is row-major
// float[n][dim]. Rows of one call are consecutive positions pos0, pos0 + 1, ... of one sequence.
//
// KV cache layout (every backend): paged. A pool of n_blocks blocks of block_size positions holds
// [K|V][layer][block][kv_head][block_size] rows, a row being one position's head_dim values of one
// (layer, kv head) in the cache's KvDtype (kv_row_bytes: fp32, fp16, or int8 / 4-bit codes followed
// by their scales), so one block's positions of one (layer, kv head) are one contiguous run of
// rows. A sequence maps its position p to slot p % block_size of pool block
// block_table[p / block_size]. A contiguous cache is the case of one block of n_ctx positions
// (n_blocks = 1, table {0}): its layout is [K|V][layer][kv_head][pos][row], which is all a backend
// without supports_paged_kv() is ever given.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>

#include "core/base/model.h"

namespace onebit {

// A weight prepared by a backend. rows/cols are the logical [out][in] shape.
struct WeightHandle {
  int32_t id = -1;
  int64_t rows = 0, cols = 0;
};

// Quantized activations (BitLinear input): int8 codes with one scale s = 127/absmax per row.
// Made by Backend::alloc_quant; what `impl` points to (codes, per-row scales and sums, padding)
// is the backend's own business: only the backend reads and writes it.
struct QuantBuffer {
  void* impl = nullptr;
  int64_t rows = 0, cols = 0;  // capacity
};

// How the KV cache stores a row of head_dim values (EngineOptions::kv_dtype, `--kv`):
//  - kF32 ("f32"), kF16 ("f16"): the values;
//  - kQ8 ("q8"): int8 codes, one fp32 scale per row (per position and kv head): d = max|x| / 127,
//    code = rint(x / d) (half to even) in [-127, 127], x ~ d * code;
//  - kQ4R ("q4r"): the row rotated by the normalized Walsh-Hadamard matrix H (head_dim must be a
//    power of two, >= 16), then 4-bit codes in [-7, 7] with one fp32 scale d = max|y| / 7 per group
//    of kv_q4_group(head_dim) = min(32, head_dim) values. H is orthonormal and symmetric, so
//    attention rotates q by H (q.k = Hq.Hk) and un-rotates the weighted sum of values (H^-1 = H).
// Byte layout of one row (engine/kv_quant.h gives the details): kv_row_bytes(dtype, head_dim).
enum class KvDtype : uint8_t { kF32, kF16, kQ8, kQ4R };
inline constexpr KvDtype kAllKvDtypes[] = {KvDtype::kF32, KvDtype::kF16, KvDtype::kQ8, KvDtype::kQ4R};
// Bytes per value of the plain dtypes (f32: 4, f16: 2); 0 for the quantized ones, whose rows
// carry scales (use kv_row_bytes).
size_t kv_dtype_size(KvDtype t);
std::string_view kv_dtype_name(KvDtype t);  // "f32", "f16", "q8", "q4r"
// Parses those names; throws Error naming the accepted values otherwise.
KvDtype kv_dtype_from_name(std::string_view name);
bool kv_dtype_quantized(KvDtype t);  // q8, q4r
// Values per q4r scale: min(32, head_dim).
int64_t kv_q4_group(int64_t head_dim);
// Throws Error when `t` cannot store heads of head_dim values (q4r: not a power of two >= 16).
void check_kv_dtype_head_dim(KvDtype t, int64_t head_dim);
// Bytes of one row (head_dim values of one position, one kv head, K or V) with its scales:
// f32 4·D, f16 2·D, q8 round_up(D, 4) + 4, q4r D/2 + 4·D/kv_q4_group(D).
size_t kv_row_bytes(KvDtype t, int64_t head_dim);

// How the LM head is computed (EngineOptions::lm_head, `--lm-head`):
//  - kAsStored ("bf16"): the matrix as the file stores it (bf16 for 2B-4T), fp32 dot products;
//  - kInt8 ("int8"): a per-row int8 copy made at load (Backend::add_dense_int8) times the final
//    hidden state quantized per token to int8, exact int32 sums (half the bytes of bf16).
enum class LmHead : uint8_t { kAsStored, kInt8 };
std::string_view lm_head_name(LmHead h);  // "bf16" (= as stored) or "int8"
// Parses "bf16" (also "stored") or "int8"; throws Error naming the accepted values otherwise.
LmHead lm_head_from_name(std::string_view name);

// One sequence's view of a KV cache in backend memory (see the layout above). The fields data,
// dtype, n_layers, n_kv_heads, n_ctx and head_dim mean for a contiguous cache (block_size ==
// n_ctx, n_blocks == 1) exactly what they meant before paging: a backend that does not support
// paged KV reads only those.
struct KvCacheView {
  void* data = nullptr;  // the pool: [2][layer][block][kv_head][block_size] rows of row_bytes()
  KvDtype dtype = KvDtype::kF32;
  int64_t n_layers = 0, n_kv_heads = 0;
  int64_t n_ctx = 0;  // positions the sequence may address (its context)
  int64_t head_dim = 0;
  int64_t block_size = 0;  // positions per block; 0 = n_ctx (one contiguous block)
  int64_t n_blocks = 1;    // blocks in the pool
  // Host memory: block_table[i] is the pool block of positions [i * block_size, (i + 1) *
  // block_size); entries [0, block_table_size) are valid. nullptr = block i is pool block i.
  const int32_t* block_table = nullptr;
  int64_t block_table_size = 0;

  int64_t positions_per_block() const { return block_size > 0 ? block_size : n_ctx; }
  // Positions the view can store now: block_table_size blocks, or n_blocks without a table.
  int64_t mapped_positions() const;
  // Elements (not bytes) from `data` to the first value of (which = 0 for K, 1 for V, layer,
  // pool block, kv head): block_size rows of head_dim follow. For f32 and f16 only (a quantized
  // row is not a whole number of values: use block_byte_offset).
  size_t block_offset(int64_t which, int64_t layer, int64_t block, int64_t head) const {
    return static_cast<size_t>((((which * n_layers + layer) * n_blocks + block) * n_kv_heads + head) *
                               positions_per_block() * head_dim);
  }
  size_t row_bytes() const { return kv_row_bytes(dtype, head_dim); }
  // Bytes from `data` to the first row of (which, layer, pool block, kv head), any dtype:
  // block_size rows of row_bytes() follow.
  size_t block_byte_offset(int64_t which, int64_t layer, int64_t block, int64_t head) const {
    return static_cast<size_t>((((which * n_layers + layer) * n_blocks + block) * n_kv_heads + head) *
                               positions_per_block()) *
           row_bytes();
  }
  size_t bytes() const;  // of the whole pool
};
// Rows [r0, r0 + n) of one pass that belong to one sequence: its KV cache and first position
// (rows of a pass are grouped by sequence, in order; r0 is the sum of the earlier groups' n).
struct SeqRows {
  const KvCacheView* kv = nullptr;
  int64_t pos0 = 0;
  int64_t n = 0;
};

// One row's settings for Backend::lm_head_sample: the part of a Sampler's chain a device runs
// (Sampler::device_chain(): temperature, top_k, top_p, min_p as in SamplingParams) and the uniform
// number in [0, 1) the Sampler drew for this step (Sampler::draw; 0 when greedy). 24 bytes, the
// layout of cuda::SampleParams (kernels/cuda/sample_cuda.h).
struct SampleRow {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  double u = 0.0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  // ---- weights (called at load) ----
  // Any ternary packing; scales (1 or one per row) come from the tensor.
  virtual WeightHandle add_ternary(const Tensor& t) = 0;
  // A 1-D norm weight (any dense packing), kept as fp32.
  virtual WeightHandle add_norm(const Tensor& t) = 0;
  // A dense [rows][cols] matrix used by embed() and lm_head() (F32/F16/BF16/Q8_0). The backend
  // may keep pointing at the tensor's bytes: the Model must outlive the backend.
  virtual WeightHandle add_dense(const Tensor& t) = 0;
  // An int8 copy of a dense [rows][cols] matrix, for lm_head() only, owned by the backend:
  // per row r, d_r = max_c |w[r][c]| / 127 and q[r][c] = rint(w[r][c] / d_r) (half to even; a
  // zero row has d_r = 0 and q = 0). lm_head() on this handle quantizes each x row like
  // BitLinear (s_i = 127 / max(max|x_i|, 1e-5), xq = clamp(rint(x*s_i), -128, 127)) and returns
  // logits[i][r] = (float(sum_c q[r][c] * xq[i][c]) / s_i) * d_r with the integer sum exact.
  virtual WeightHandle add_dense_int8(const Tensor& t) = 0;
  // Precomputes the rotary tables: split-half RoPE over head_dim, inv_freq[i] = 1/theta^(2i/D)
  // in fp32, positions [0, n_pos).
  virtual void init_rope(int64_t head_dim, double theta, int64_t n_pos) = 0;

  // Bytes of weights one decode step reads that the backend holds in its own layout: repacked
  // ternary matrices with their scales, norm weights, int8 LM head copies (dense matrices added
  // with add_dense are not counted; `1bit bench` adds the LM head as stored).
  virtual size_t weight_bytes() const { return 0; }

  // ---- memory ----
  virtual void* alloc(size_t bytes) = 0;  // zero-filled, 64-byte aligned
  virtual void free(void* p) = 0;
  // Copies `bytes` from backend memory `src` (from alloc) to host memory `dst`; returns when done.
  virtual void download(const void* src, void* dst, size_t bytes) = 0;
  virtual QuantBuffer alloc_quant(int64_t rows, int64_t cols) = 0;
  virtual void free_quant(QuantBuffer q) = 0;

  // Host memory for results the backend writes (logits): page-locked on a GPU backend so that
  // copies into it can be captured in a graph. Zero-filled; free_host(nullptr) is a no-op.
  // The defaults (host backends) use plain heap memory.
  virtual float* alloc_host(size_t count) { return new float[count == 0 ? 1 : count](); }
  virtual void free_host(float* p) { delete[] p; }

  // ---- one forward pass ----
  // BitnetGraph::forward calls begin_forward (the token ids and first position of the pass), then
  // the operations, directly or inside run_cached, then end_forward, which returns once every
  // result written to host memory is there. A GPU backend copies ids and position to the device
  // in begin_forward and its kernels read them there, so a recorded pass replays for any position.
  virtual void begin_forward(std::span<const int32_t> /*tokens*/, int64_t /*pos0*/) {}
  // begin_forward of a pass holding several sequences (BitnetGraph::forward_multi).
  virtual void begin_forward_multi(std::span<const int32_t> tokens, std::span<const SeqRows> seqs) {
    begin_forward(tokens, seqs.empty() ? 0 : seqs.front().pos0);
  }
  virtual void end_forward() {}
  // Runs `ops` (one whole pass's operations). A backend may record them the first times a `key`
  // is seen and replay the recording for later calls with an equal key (a CUDA graph); the caller
  // guarantees that equal keys mean the same operations on the same buffers, with only the ids
  // and position of begin_forward changed. The CPU backend just calls ops().
  struct ReplayKey {
    const void* owner = nullptr;  // the GraphState
    const void* out = nullptr;    // host logits pointer
    int64_t n = 0;
    bool all_logits = false;
    bool operator<(const ReplayKey& o) const;
  };
  virtual void run_cached(const ReplayKey& /*key*/, const std::function<void()>& ops) { ops(); }
  // Whether one pass may hold rows of several sequences (different KV caches and positions, as
  // BitnetGraph::forward_multi does). The CUDA backend keeps one position per pass on the device.
  virtual bool supports_multi_sequence() const { return true; }
  // Whether kv_store / attention / rope_kv_store follow KvCacheView::block_table (paged KV: a pool
  // of small blocks shared by sequences, prefix caching, kv_copy_block). Without it the engine
  // gives each sequence its own contiguous cache (one block of n_ctx positions) and never shares.
  virtual bool supports_paged_kv() const { return false; }
  // Whether kv_store / attention handle a cache of this dtype. Engine::load refuses the others with
  // an Error. Default: f32 and f16 (the CPU and CUDA backends also do q8 and q4r).
  virtual bool supports_kv_dtype(KvDtype t) const { return t == KvDtype::kF32 || t == KvDtype::kF16; }
  // Drops the recordings of `owner` (a GraphState being destroyed).
  virtual void forget(const void* /*owner*/) {}

  // ---- operations (n = token rows in this call) ----
  // x[i] = row tokens[i] of `table` converted to fp32. Ids are checked by the caller.
  virtual void embed(WeightHandle table, std::span<const int32_t> tokens, float* x) = 0;
  // y = x * rsqrt(mean(x^2) + eps) * w, per row, fp32.
  virtual void rmsnorm(const float* x, WeightHandle w, int64_t n, float eps, float* y) = 0;
  // rmsnorm then per-row activation quantization, into q (rows [0, n)).
  virtual void rmsnorm_quantize(const float* x, WeightHandle w, int64_t n, float eps, QuantBuffer q) = 0;
  // Per-row activation quantization: s = 127/max(absmax, 1e-5), q = clamp(rint(x*s), -128, 127).
  virtual void quantize(const float* x, int64_t n, int64_t dim, QuantBuffer q) = 0;
  // y[i][r] = (sum_c w[r][c] * q[i][c]) / s_i * scale_r, y is [n][w.rows].
  virtual void ternary_matmul(WeightHandle w, QuantBuffer q, int64_t n, float* y) = 0;
  // Rotates each of n_heads heads of every row in place; row i is at position pos0 + i.
  virtual void rope(float* x, int64_t n, int64_t n_heads, int64_t pos0) = 0;
  // Writes k/v rows ([n][kv_heads*head_dim]) at positions pos0.. of `layer`.
  virtual void kv_store(const KvCacheView& kv, int64_t layer, const float* k, const float* v, int64_t n,
                        int64_t pos0) = 0;
  // Paged KV only: copies positions [0, n) of pool block `src` to pool block `dst`, every layer
  // and KV head (copy-on-write of a shared block). The default throws Error.
  virtual void kv_copy_block(const KvCacheView& kv, int32_t src, int32_t dst, int64_t n);
  // Causal GQA attention: q is [n][n_heads*head_dim], row i (position pos0 + i) attends to
  // positions [0, pos0 + i] of the cache; kv head = q head / (n_heads / kv_heads).
  // out = softmax(q.k / sqrt(head_dim)) . v, same shape as q.
  virtual void attention(const KvCacheView& kv, int64_t layer, const float* q, int64_t n, int64_t n_heads,
                         int64_t pos0, float* out) = 0;
  // out = relu(gate)^2 * up, elementwise over `count` values.
  virtual void relu2_mul(const float* gate, const float* up, int64_t count, float* out) = 0;
  // x += y over `count` values.
  virtual void add(float* x, const float* y, int64_t count) = 0;
  // ---- fused forms: each defined as the sequence of operations its default runs; a backend may
  // do it in fewer passes over memory (same arithmetic) ----
  // x += y (n rows of w.cols), then rmsnorm_quantize(x, w, ...).
  virtual void add_rmsnorm_quantize(float* x, const float* y, WeightHandle w, int64_t n, float eps, QuantBuffer q) {
    add(x, y, n * w.cols);
    rmsnorm_quantize(x, w, n, eps, q);
  }
  // rmsnorm_quantize of relu(gate)^2 * up (n rows of w.cols); `gate` may be overwritten with it.
  virtual void relu2_mul_rmsnorm_quantize(float* gate, const float* up, WeightHandle w, int64_t n, float eps,
                                          QuantBuffer q) {
    relu2_mul(gate, up, n * w.cols, gate);
    rmsnorm_quantize(gate, w, n, eps, q);
  }
  // rope(q), rope(k), kv_store(k, v).
  virtual void rope_kv_store(const KvCacheView& kv, int64_t layer, float* q, float* k, const float* v, int64_t n,
                             int64_t n_heads, int64_t pos0) {
    rope(q, n, n_heads, pos0);
    rope(k, n, kv.n_kv_heads, pos0);
    kv_store(kv, layer, k, v, n, pos0);
  }
  // rope_kv_store then attention(kv, layer, q, ...): one step of a sequence. Afterwards q and k may
  // hold their rotated values or not (a backend may rotate them on the fly).
  virtual void rope_kv_attention(const KvCacheView& kv, int64_t layer, float* q, float* k, const float* v, int64_t n,
                                 int64_t n_heads, int64_t pos0, float* out) {
    rope_kv_store(kv, layer, q, k, v, n, n_heads, pos0);
    attention(kv, layer, q, n, n_heads, pos0, out);
  }
  // rope_kv_attention for each sequence of a pass (q, k, v, out hold every row of the pass).
  virtual void rope_kv_attention_multi(std::span<const SeqRows> seqs, int64_t layer, float* q, float* k,
                                       const float* v, int64_t n_heads, float* out) {
    int64_t r0 = 0;
    for (const SeqRows& s : seqs) {
      const int64_t qd = n_heads * s.kv->head_dim, kd = s.kv->n_kv_heads * s.kv->head_dim;
      rope_kv_attention(*s.kv, layer, q + r0 * qd, k + r0 * kd, v + r0 * kd, s.n, n_heads, s.pos0, out + r0 * qd);
      r0 += s.n;
    }
  }
  // ternary_matmul(w[i], q, n, y[i]) for each i (matrices of equal width reading the same q).
  virtual void ternary_matmul_shared(std::span<const WeightHandle> w, QuantBuffer q, int64_t n,
                                     std::span<float* const> y) {
    for (size_t i = 0; i < w.size(); ++i) ternary_matmul(w[i], q, n, y[i]);
  }

  // logits[i][v] = sum_c w[v][c] * x[i][c] (fp32 accumulation); `logits` is HOST memory [n][w.rows].
  // On a handle from add_dense_int8, the int8 formula given there.
  virtual void lm_head(WeightHandle w, const float* x, int64_t n, float* logits) = 0;
  // ids[i] = the index of the largest of the n logit rows lm_head(w, x, n) computes (the lowest
  // index among equal maxima); `ids` is HOST memory [n]. Greedy decoding without moving the logits:
  // a GPU backend computes it on the device. The default runs lm_head into host memory.
  virtual void lm_head_argmax(WeightHandle w, const float* x, int64_t n, int32_t* ids);
  // Whether lm_head_sample works: the backend draws tokens where the logits are (CUDA).
  virtual bool samples_on_device() const { return false; }
  // ids[i] = the token drawn from logit row i of lm_head(w, x, n) with rows[i] (SampleRow: the
  // host Sampler's chain restricted to temperature / top-k / top-p / min-p, with the Sampler's own
  // uniform draw), or -1 for a row holding a NaN or +inf or only -inf. `rows` and `ids` are HOST
  // memory from alloc_host; a recorded pass reads `rows` when it is replayed, so the caller fills
  // them before every pass. The default throws Error: the engine then samples logits on the host.
  virtual void lm_head_sample(WeightHandle w, const float* x, int64_t n, const SampleRow* rows, int32_t* ids);

  // ---- a whole decode layer (optional) ----
  // The weights of one BitNet layer and the activation buffers of a pass (BitnetGraph).
  struct LayerWeights {
    WeightHandle attn_norm, q, k, v, attn_sub_norm, o, ffn_norm, gate, up, ffn_sub_norm, down;
  };
  struct LayerBuffers {
    float* x = nullptr;  // the residual stream [n][hidden]
    float *q = nullptr, *k = nullptr, *v = nullptr, *attn = nullptr, *gate = nullptr, *up = nullptr;
  };
  // Whether this backend runs every layer of a pass of n rows (model widths hidden, n_heads *
  // head_dim, intermediate) with decode_layer. Then BitnetGraph calls decode_layer for each layer
  // instead of the operation sequence, and each call leaves x complete (its residual adds done).
  virtual bool fused_decode(int64_t /*n*/, int64_t /*hidden*/, int64_t /*qdim*/, int64_t /*inter*/) const {
    return false;
  }
  // One layer, same math as BitnetGraph's operation sequence: x += o(attn_sub_norm(attention(...)))
  // with q, k, v from attn_norm(x); then x += down(ffn_sub_norm(relu(gate)^2 * up)) with gate, up
  // from ffn_norm(x). The default throws Error (only called when fused_decode said yes).
  virtual void decode_layer(const LayerWeights& L, int64_t layer, const LayerBuffers& b, std::span<const SeqRows> seqs,
                            int64_t n_heads, float eps);
  // Every layer of such a pass at once (optional): true if the backend ran them all (x complete),
  // false to have decode_layer called per layer instead. The default returns false.
  virtual bool decode_layers(std::span<const LayerWeights> /*layers*/, const LayerBuffers& /*b*/,
                             std::span<const SeqRows> /*seqs*/, int64_t /*n_heads*/, float /*eps*/) {
    return false;
  }
};

}  // namespace onebit
