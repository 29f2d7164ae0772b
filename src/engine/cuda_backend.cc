#include "engine/cuda_backend.h"

#include "core/base/error.h"

#if ONEBIT_HAVE_CUDA

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <stdexcept>
#include <utility>
#include <vector>

#include "core/base/ternary_packing.h"
#include "engine/cpu_backend.h"  // dense_row_to_f32
#include "engine/rope_tables.h"
#include "kernels/cuda/decode_fused_cuda.h"
#include "kernels/cuda/decode_step_cuda.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/sample_cuda.h"
#include "kernels/cuda/ternary_gemv_cuda.h"

namespace onebit {
namespace {

std::atomic<int64_t> g_decode_steps{0};  // cuda_decode_steps_issued

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA: {} failed: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

// Token ids one pass may carry (the device copy of begin_forward's ids is allocated once, at this
// size, so recorded graphs never see it move).
constexpr int64_t kMaxPassTokens = 1 << 16;

struct DevTernary {
  uint8_t* w = nullptr;
  float* row_scale = nullptr;
  int64_t rows = 0, cols = 0;
};

struct DevDense {
  void* w = nullptr;  // as stored (F32/F16/BF16) or converted to F32 (Q8_0)
  cuda::DenseType type = cuda::DenseType::kF32;
  int64_t rows = 0, cols = 0;
  bool int8 = false;  // add_dense_int8: q [rows][cuda_act_len(cols)] and d [rows]
  int8_t* q = nullptr;
  float* d = nullptr;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend() {
    std::string why;
    if (!cuda_available(&why)) fail("{}", why);
    check(cudaSetDevice(0), "cudaSetDevice");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    if (prop.major < 8) fail("CUDA device {} has compute capability {}.{}; 1bit needs 8.0 or newer", prop.name, prop.major, prop.minor);
    // ONEBIT_CUDA_PDL=0 / ONEBIT_CUDA_GRAPHS=0 / ONEBIT_CUDA_FUSE=0 turn programmatic dependent
    // launches / graphs / the fused decode attention off (for measurements and tests; same results).
    const char* pd = std::getenv("ONEBIT_CUDA_PDL");
    pdl_ = prop.major >= 9 && !(pd != nullptr && std::string_view(pd) == "0");
    cuda::set_pdl(pdl_);
    const char* fu = std::getenv("ONEBIT_CUDA_FUSE");
    fuse_ = !(fu != nullptr && std::string_view(fu) == "0");
    // ONEBIT_CUDA_FUSED_GEMV=0 keeps the norm kernels of a decode layer separate (decode_layer off);
    // "G,c,G,c,G,c,G,c" sets the block shapes (row groups, chunks per lane) of q/k/v, o, gate/up, down.
    const char* fg = std::getenv("ONEBIT_CUDA_FUSED_GEMV");
    fused_gemv_ = fuse_ && !(fg != nullptr && std::string_view(fg) == "0");
    if (fg != nullptr && std::string_view(fg) != "0" && std::string_view(fg) != "1") {
      int v[8];
      if (std::sscanf(fg, "%d,%d,%d,%d,%d,%d,%d,%d", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 8)
        fail("ONEBIT_CUDA_FUSED_GEMV: expected 0, 1 or eight comma-separated integers, got \"{}\"", fg);
      for (int i = 0; i < 4; ++i) fshape_[i] = cuda::FusedGemvShape{v[2 * i], v[2 * i + 1]};
    }
    // ONEBIT_CUDA_STEP=1: a one-sequence decode step as the persistent decode_step kernel instead
    // of per-layer launches (same results; off by default: slower so far, docs/PERF.md).
    const char* st = std::getenv("ONEBIT_CUDA_STEP");
    step_ = fused_gemv_ && st != nullptr && std::string_view(st) == "1";
    const char* tr = std::getenv("ONEBIT_CUDA_STEP_TRACE");
    trace_step_ = step_ && tr != nullptr && std::string_view(tr) == "1";
    const char* g = std::getenv("ONEBIT_CUDA_GRAPHS");
    use_graphs_ = !(g != nullptr && std::string_view(g) == "0");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaMalloc(&d_params_, static_cast<size_t>(kMaxPassTokens + 1) * 4), "cudaMalloc");
    check(cudaMallocHost(&h_params_, static_cast<size_t>(kMaxPassTokens + 1) * 4), "cudaMallocHost");
    check(cudaMalloc(&d_rows_, static_cast<size_t>(kMaxPassTokens) * sizeof(cuda::RowSeq)), "cudaMalloc");
    check(cudaMallocHost(&h_rows_, static_cast<size_t>(kMaxPassTokens) * sizeof(cuda::RowSeq)), "cudaMallocHost");
  }

  ~CudaBackend() override {
    drop_graphs();
    cudaStreamSynchronize(stream_);
    for (auto& [k, plan] : step_plans_) cuda::decode_step_free(plan);
    if (d_trace_ != nullptr) cudaFree(d_trace_);
    if (trace_steps_ > 0) {
      const double n = static_cast<double>(trace_steps_) * 1e3;  // ns -> µs per step
      std::fprintf(stderr,
                   "1bit: cuda: decode step trace over %lld steps, µs a step summed over layers (the slowest "
                   "block): q/k/v %.1f, attention %.1f, o %.1f, gate/up %.1f, down %.1f, grid barriers %.1f\n",
                   static_cast<long long>(trace_steps_), trace_sum_[0] / n, trace_sum_[1] / n, trace_sum_[2] / n,
                   trace_sum_[3] / n, trace_sum_[4] / n, trace_sum_[5] / n);
    }
    for (void* p : owned_) cudaFree(p);
    cudaFree(d_params_);
    cudaFreeHost(h_params_);
    cudaFree(d_rows_);
    cudaFreeHost(h_rows_);
    for (auto& [k, t] : tables_) cudaFree(t.d);
    cudaFreeHost(h_tab_);
    cudaFree(attn_scratch_);
    cudaFree(d_logits_);
    cudaFree(d_ids_);
    cudaFree(d_sample_);
    cudaFree(head_q_.codes);
    cudaFree(head_q_.scales);
    cudaFree(head_q_.sums);
    cudaStreamDestroy(stream_);
  }

  std::string_view name() const override { return "cuda"; }
  size_t weight_bytes() const override { return weight_bytes_; }
  bool supports_multi_sequence() const override { return true; }
  // Paged: the pool is device memory; each sequence's block table is copied to a device buffer of
  // its own before every pass (begin_forward_multi), so recorded graphs read the current one.
  bool supports_paged_kv() const override { return true; }
  // Every type: q8 and q4r rows are quantized on the device with kv_quant.h's arithmetic, bit for
  // bit, and attention reads them in place (docs/kernels-cuda.md, "Quantized KV caches").
  bool supports_kv_dtype(KvDtype) const override { return true; }
  void kv_copy_block(const KvCacheView& kv, int32_t src, int32_t dst, int64_t n) override {
    check(cuda::kv_copy_block(view(kv), src, dst, n, stream_), "kv_copy_block");
  }

  // ---- weights ----
  WeightHandle add_ternary(const Tensor& t) override {
    TernaryMatrix m = unpack_ternary(t);
    if (m.scales.size() != 1 && static_cast<int64_t>(m.scales.size()) != m.rows)
      fail("tensor {}: {} scales for {} rows", t.name, m.scales.size(), m.rows);
    std::vector<uint8_t> packed;
    try {
      packed = cuda::repack_for_cuda(m.codes.data(), m.rows, m.cols);
    } catch (const std::invalid_argument& e) {
      fail("tensor {}: {}", t.name, e.what());
    }
    std::vector<float> rs(static_cast<size_t>(m.rows));
    for (int64_t r = 0; r < m.rows; ++r) rs[static_cast<size_t>(r)] = m.scales.size() == 1 ? m.scales[0] : m.scales[static_cast<size_t>(r)];
    DevTernary w;
    w.w = static_cast<uint8_t*>(upload(packed.data(), packed.size()));
    w.row_scale = static_cast<float*>(upload(rs.data(), rs.size() * 4));
    weight_bytes_ += packed.size() + rs.size() * 4;
    w.rows = m.rows;
    w.cols = m.cols;
    ternary_.push_back(w);
    return {static_cast<int32_t>(ternary_.size() - 1), m.rows, m.cols};
  }

  WeightHandle add_norm(const Tensor& t) override {
    std::vector<float> w = dequantize(t);
    norms_.push_back(static_cast<float*>(upload(w.data(), w.size() * 4)));
    weight_bytes_ += w.size() * 4;
    return {static_cast<int32_t>(norms_.size() - 1), 1, static_cast<int64_t>(w.size())};
  }

  WeightHandle add_dense(const Tensor& t) override {
    if (t.shape.size() != 2) fail("tensor {}: expected a matrix, has shape {}", t.name, t.shape_str());
    DevDense d;
    d.rows = t.rows();
    d.cols = t.cols();
    size_t esize = 0;
    switch (t.packing) {
      case Packing::kF32: d.type = cuda::DenseType::kF32; esize = 4; break;
      case Packing::kF16: d.type = cuda::DenseType::kF16; esize = 2; break;
      case Packing::kBF16: d.type = cuda::DenseType::kBF16; esize = 2; break;
      default: break;
    }
    if (esize != 0) {
      const size_t bytes = static_cast<size_t>(d.rows * d.cols) * esize;
      if (t.data.size() < bytes)
        fail("tensor {}: {} {} needs {} bytes, has {}", t.name, packing_name(t.packing), t.shape_str(), bytes, t.data.size());
      d.w = upload(t.data.data(), bytes);
    } else {
      if (t.packing != Packing::kQ8_0)
        fail("tensor {}: packing {} is not supported for a dense matrix", t.name, packing_name(t.packing));
      std::vector<float> f(static_cast<size_t>(d.rows * d.cols));
      for (int64_t r = 0; r < d.rows; ++r) dense_row_to_f32(t, r, f.data() + r * d.cols);
      d.type = cuda::DenseType::kF32;
      d.w = upload(f.data(), f.size() * 4);
    }
    dense_.push_back(d);
    return {static_cast<int32_t>(dense_.size() - 1), d.rows, d.cols};
  }

  WeightHandle add_dense_int8(const Tensor& t) override {
    if (t.shape.size() != 2) fail("tensor {}: expected a matrix, has shape {}", t.name, t.shape_str());
    const int64_t rows = t.rows(), cols = t.cols();
    if (cols >= cuda::kMaxCols) fail("tensor {}: {} columns are too many for the CUDA int8 LM head", t.name, cols);
    const int64_t stride = cuda::cuda_act_len(cols);
    std::vector<int8_t> q(static_cast<size_t>(rows * stride), 0);
    std::vector<float> dv(static_cast<size_t>(rows), 0.0f), f(static_cast<size_t>(cols));
    // The CPU backend's per-row quantization (quantize_row_int8), so both heads hold the same codes.
    for (int64_t r = 0; r < rows; ++r) {
      dense_row_to_f32(t, r, f.data());
      const float d = quantize_row_int8(f.data(), cols, q.data() + r * stride);
      if (!std::isfinite(d)) fail("tensor {}: row {} has a non-finite value, cannot make an int8 LM head", t.name, r);
      dv[static_cast<size_t>(r)] = d;  // 0 for a zero row, codes 0
    }
    DevDense dd;
    dd.rows = rows;
    dd.cols = cols;
    dd.int8 = true;
    dd.q = static_cast<int8_t*>(upload(q.data(), q.size()));
    dd.d = static_cast<float*>(upload(dv.data(), dv.size() * 4));
    weight_bytes_ += q.size() + dv.size() * 4;
    dense_.push_back(dd);
    return {static_cast<int32_t>(dense_.size() - 1), rows, cols};
  }

  void init_rope(int64_t head_dim, double theta, int64_t n_pos) override {
    const RopeTables t = make_rope_tables(head_dim, theta, n_pos);
    head_dim_ = head_dim;
    n_pos_ = n_pos;
    cos_ = static_cast<float*>(upload(t.cos.data(), t.cos.size() * 4));
    sin_ = static_cast<float*>(upload(t.sin.data(), t.sin.size() * 4));
  }

  // ---- memory ----
  void* alloc(size_t bytes) override {
    if (capturing_) fail("cuda backend: allocation while recording a graph");
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 64));
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      throw std::bad_alloc();
    }
    check(e, "cudaMalloc");
    check(cudaMemset(p, 0, std::max<size_t>(bytes, 64)), "cudaMemset");
    return p;
  }
  void free(void* p) override {
    if (p != nullptr) {
      cudaStreamSynchronize(stream_);
      cudaFree(p);
    }
  }
  void download(const void* src, void* dst, size_t bytes) override {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync (download)");
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (download)");
  }
  float* alloc_host(size_t count) override {
    void* p = nullptr;
    check(cudaMallocHost(&p, std::max<size_t>(count, 1) * 4), "cudaMallocHost");
    std::memset(p, 0, std::max<size_t>(count, 1) * 4);
    return static_cast<float*>(p);
  }
  void free_host(float* p) override {
    if (p != nullptr) {
      cudaStreamSynchronize(stream_);
      cudaFreeHost(p);
    }
  }
  QuantBuffer alloc_quant(int64_t rows, int64_t cols) override {
    auto* q = new cuda::QuantActs;
    q->stride = cuda::cuda_act_len(cols);
    try {
      q->codes = static_cast<int8_t*>(alloc(static_cast<size_t>(rows * q->stride)));
      q->scales = static_cast<float*>(alloc(static_cast<size_t>(rows) * 4));
      q->sums = static_cast<int32_t*>(alloc(static_cast<size_t>(rows) * 4));
    } catch (...) {
      free_quant({q, rows, cols});
      throw;
    }
    return {q, rows, cols};
  }
  void free_quant(QuantBuffer qb) override {
    auto* q = static_cast<cuda::QuantActs*>(qb.impl);
    if (q == nullptr) return;
    free(q->codes);
    free(q->scales);
    free(q->sums);
    delete q;
  }

  // ---- one pass ----
  void begin_forward(std::span<const int32_t> tokens, int64_t pos0) override {
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (n > kMaxPassTokens) fail("cuda backend: {} tokens in one pass, at most {}", n, kMaxPassTokens);
    if (pos0 < 0 || pos0 + n > n_pos_) fail("cuda backend: positions [{}, {}) beyond the context ({})", pos0, pos0 + n, n_pos_);
    // The previous pass's copy of h_params_ may still be queued.
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    h_params_[0] = static_cast<int32_t>(pos0);
    std::memcpy(h_params_ + 1, tokens.data(), static_cast<size_t>(n) * 4);
    check(cudaMemcpyAsync(d_params_, h_params_, static_cast<size_t>(n + 1) * 4, cudaMemcpyHostToDevice, stream_),
          "cudaMemcpyAsync (ids)");
    cur_n_ = n;
    cur_pos_ = pos0;
    multi_ = false;
    pass_sig_ = 0;
    // PDL lets a kernel's blocks start (and wait) while the previous kernel runs: a win for the
    // small launches of a decode step, a loss for multi-wave prefill kernels whose later waves
    // would find those waiting blocks in their place (pp512 -12,392 vs 15,518 tok/s on the H200).
    cuda::set_pdl(pdl_ && n == 1);
  }

  // Several sequences: besides the ids, one RowSeq (cache, position) per row goes to the device;
  // the position-dependent kernels of the pass (rope_kv_attention_multi) read them there.
  void begin_forward_multi(std::span<const int32_t> tokens, std::span<const SeqRows> seqs) override {
    if (seqs.size() == 1) {
      begin_forward(tokens, seqs.front().pos0);  // synchronizes: the staging buffers are free
      upload_tables(seqs);
      return;
    }
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (n > kMaxPassTokens) fail("cuda backend: {} tokens in one pass, at most {}", n, kMaxPassTokens);
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    int64_t r = 0;
    for (const SeqRows& sq : seqs) {
      const KvCacheView& kv = *sq.kv;
      const KvCacheView& k0 = *seqs.front().kv;
      if (kv.dtype != k0.dtype || kv.n_layers != k0.n_layers || kv.n_kv_heads != k0.n_kv_heads ||
          kv.n_ctx != k0.n_ctx || kv.head_dim != k0.head_dim || kv.positions_per_block() != k0.positions_per_block() ||
          kv.n_blocks != k0.n_blocks)
        fail("cuda backend: the sequences of one pass have KV caches of different shapes");
      if (sq.pos0 < 0 || sq.n <= 0 || sq.pos0 + sq.n > kv.n_ctx || sq.pos0 + sq.n > n_pos_)
        fail("cuda backend: positions [{}, {}) beyond the context ({})", sq.pos0, sq.pos0 + sq.n, kv.n_ctx);
      if (r + sq.n > n) fail("cuda backend: the sequences cover more rows than the {} tokens of the pass", n);
      for (int64_t j = 0; j < sq.n; ++j, ++r)
        h_rows_[r] = cuda::RowSeq{kv.data, nullptr, static_cast<int32_t>(sq.pos0 + j), sq.n > 1 ? 1 : 0};
    }
    if (r != n) fail("cuda backend: the sequences cover {} rows of {}", r, n);
    upload_tables(seqs);
    r = 0;
    for (const SeqRows& sq : seqs)
      for (int64_t j = 0; j < sq.n; ++j, ++r) h_rows_[r].table = device_table(*sq.kv);
    h_params_[0] = 0;
    std::memcpy(h_params_ + 1, tokens.data(), static_cast<size_t>(n) * 4);
    check(cudaMemcpyAsync(d_params_, h_params_, static_cast<size_t>(n + 1) * 4, cudaMemcpyHostToDevice, stream_),
          "cudaMemcpyAsync (ids)");
    check(cudaMemcpyAsync(d_rows_, h_rows_, static_cast<size_t>(n) * sizeof(cuda::RowSeq), cudaMemcpyHostToDevice,
                          stream_),
          "cudaMemcpyAsync (rows)");
    cur_n_ = n;
    cur_pos_ = -1;  // no single position: the per-sequence operations below check the pass
    multi_ = true;
    // The cache geometry is baked into a recorded pass (its kernels get the pool's shape by value):
    // part of the recording's key, so a pass over another pool's shape records its own.
    const KvCacheView& g0 = *seqs.front().kv;
    pass_sig_ = (static_cast<uint64_t>(g0.n_blocks) << 32) ^ (static_cast<uint64_t>(g0.positions_per_block()) << 8) ^
                (static_cast<uint64_t>(g0.n_ctx) << 40) ^ static_cast<uint64_t>(g0.dtype);
    cuda::set_pdl(false);
    multi_seqs_ = static_cast<int64_t>(seqs.size());
  }

  void end_forward() override {
    check(cudaStreamSynchronize(stream_), "forward pass");
    check(cudaGetLastError(), "forward pass");
  }

  void run_cached(const ReplayKey& key, const std::function<void()>& ops) override {
    if (!use_graphs_) {
      ops();
      return;
    }
    const GraphKey gk{key, pass_sig_};
    auto it = graphs_.find(gk);
    if (it != graphs_.end() && it->second.exec != nullptr) {
      check(cudaGraphLaunch(it->second.exec, stream_), "cudaGraphLaunch");
      return;
    }
    if (it == graphs_.end()) {
      // First time: run eagerly, so that scratch buffers get allocated outside any recording.
      graphs_[gk] = Recording{};
      ops();
      return;
    }
    cudaGraph_t g = nullptr;
    check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    capturing_ = true;
    try {
      ops();
    } catch (...) {
      capturing_ = false;
      cudaStreamEndCapture(stream_, &g);
      if (g != nullptr) cudaGraphDestroy(g);
      cudaGetLastError();
      throw;
    }
    capturing_ = false;
    check(cudaStreamEndCapture(stream_, &g), "cudaStreamEndCapture");
    cudaGraphExec_t exec = nullptr;
    const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);
    check(e, "cudaGraphInstantiate");
    graphs_[gk].exec = exec;
    check(cudaGraphLaunch(exec, stream_), "cudaGraphLaunch");
  }

  void forget(const void* owner) override {
    for (auto it = graphs_.begin(); it != graphs_.end();) {
      if (it->first.first.owner == owner) {
        if (it->second.exec != nullptr) cudaGraphExecDestroy(it->second.exec);
        it = graphs_.erase(it);
      } else {
        ++it;
      }
    }
  }

  // ---- operations ----
  void embed(WeightHandle table, std::span<const int32_t> tokens, float* x) override {
    const DevDense& d = dw(table);
    if (d.int8) fail("cuda backend: embedding lookup on an int8 head copy");
    expect_pass(static_cast<int64_t>(tokens.size()));
    check(cuda::embed_rows(d.w, d.type, d.cols, d_params_ + 1, cur_n_, x, stream_), "embed");
  }
  void rmsnorm(const float* x, WeightHandle w, int64_t n, float eps, float* y) override {
    check(cuda::rmsnorm_rows(x, nw(w), n, w.cols, eps, y, stream_), "rmsnorm");
  }
  void rmsnorm_quantize(const float* x, WeightHandle w, int64_t n, float eps, QuantBuffer q) override {
    check(cuda::rmsnorm_quantize_rows(x, nw(w), n, w.cols, eps, qa(q, n), stream_), "rmsnorm_quantize");
  }
  void quantize(const float* x, int64_t n, int64_t dim, QuantBuffer q) override {
    check(cuda::rmsnorm_quantize_rows(x, nullptr, n, dim, 0.0f, qa(q, n), stream_), "quantize");
  }
  void ternary_matmul(WeightHandle wh, QuantBuffer qb, int64_t n, float* y) override {
    const DevTernary& w = tw(wh);
    const cuda::QuantActs& q = qa(qb, n);
    if (n == 1)
      check(cuda::ternary_gemv(w.w, w.row_scale, w.rows, w.cols, q.codes, q.scales, q.sums, y, stream_,
                               cuda::GemvConfig{2, pdl_}),
            "ternary_gemv");
    else
      check(cuda::ternary_gemm(w.w, w.row_scale, w.rows, w.cols, q, n, y, stream_), "ternary_gemm");
  }
  void rope(float* x, int64_t n, int64_t n_heads, int64_t pos0) override {
    expect_pos(pos0, n);
    check(cuda::rope_rows(x, n, n_heads, head_dim_, cos_, sin_, d_params_, stream_), "rope");
  }
  void kv_store(const KvCacheView& kv, int64_t layer, const float* k, const float* v, int64_t n,
                int64_t pos0) override {
    expect_pos(pos0, n);
    if (pos0 + n > kv.n_ctx) fail("kv cache: positions [{}, {}) beyond the context ({})", pos0, pos0 + n, kv.n_ctx);
    check(cuda::kv_store_rows(view(kv), layer, k, v, n, d_params_, stream_), "kv_store");
  }
  void attention(const KvCacheView& kv, int64_t layer, const float* q, int64_t n, int64_t n_heads, int64_t pos0,
                 float* out) override {
    expect_pos(pos0, n);
    const size_t need = cuda::attention_scratch_floats(kv.n_ctx, n, n_heads, kv.head_dim);
    grow(reinterpret_cast<void**>(&attn_scratch_), &attn_scratch_floats_, need, 4);
    check(cuda::attention_rows(view(kv), layer, q, n, n_heads, d_params_, attn_scratch_, out, stream_), "attention");
  }
  void relu2_mul(const float* gate, const float* up, int64_t count, float* out) override {
    check(cuda::relu2_mul(gate, up, count, out, stream_), "relu2_mul");
  }
  void add(float* x, const float* y, int64_t count) override { check(cuda::add_inplace(x, y, count, stream_), "add"); }

  void add_rmsnorm_quantize(float* x, const float* y, WeightHandle w, int64_t n, float eps, QuantBuffer q) override {
    if (w.cols > cuda::kFusedMaxDim) return Backend::add_rmsnorm_quantize(x, y, w, n, eps, q);
    check(cuda::add_rmsnorm_quantize_rows(x, y, nw(w), n, w.cols, eps, qa(q, n), stream_), "add_rmsnorm_quantize");
  }
  void relu2_mul_rmsnorm_quantize(float* gate, const float* up, WeightHandle w, int64_t n, float eps,
                                  QuantBuffer q) override {
    if (w.cols > cuda::kFusedMaxDim) return Backend::relu2_mul_rmsnorm_quantize(gate, up, w, n, eps, q);
    check(cuda::relu2_rmsnorm_quantize_rows(gate, up, nw(w), n, w.cols, eps, qa(q, n), stream_),
          "relu2_rmsnorm_quantize");
  }
  void rope_kv_store(const KvCacheView& kv, int64_t layer, float* q, float* k, const float* v, int64_t n,
                     int64_t n_heads, int64_t pos0) override {
    expect_pos(pos0, n);
    if (pos0 + n > kv.n_ctx) fail("kv cache: positions [{}, {}) beyond the context ({})", pos0, pos0 + n, kv.n_ctx);
    if (kv.head_dim != head_dim_) fail("cuda backend: head_dim {} but RoPE tables for {}", kv.head_dim, head_dim_);
    check(cuda::rope_kv_store_rows(q, k, v, n, n_heads, view(kv), layer, cos_, sin_, d_params_, stream_),
          "rope_kv_store");
  }
  void rope_kv_attention(const KvCacheView& kv, int64_t layer, float* q, float* k, const float* v, int64_t n,
                         int64_t n_heads, int64_t pos0, float* out) override {
    const cuda::KvView kvv = view(kv);
    if (n != 1 || !fuse_ || !cuda::attention_decode_fusable(kvv, n_heads))
      return Backend::rope_kv_attention(kv, layer, q, k, v, n, n_heads, pos0, out);
    expect_pos(pos0, n);
    if (pos0 + n > kv.n_ctx) fail("kv cache: positions [{}, {}) beyond the context ({})", pos0, pos0 + n, kv.n_ctx);
    if (kv.head_dim != head_dim_) fail("cuda backend: head_dim {} but RoPE tables for {}", kv.head_dim, head_dim_);
    grow(reinterpret_cast<void**>(&attn_scratch_), &attn_scratch_floats_,
         cuda::attention_scratch_floats(kv.n_ctx, 1, n_heads, kv.head_dim), 4);
    check(cuda::attention_decode(kvv, layer, q, k, v, 1, n_heads, cos_, sin_, d_params_, nullptr, attn_scratch_, out,
                                 stream_),
          "attention_decode");
  }
  void rope_kv_attention_multi(std::span<const SeqRows> seqs, int64_t layer, float* q, float* k, const float* v,
                               int64_t n_heads, float* out) override {
    if (!multi_) return Backend::rope_kv_attention_multi(seqs, layer, q, k, v, n_heads, out);
    if (static_cast<int64_t>(seqs.size()) != multi_seqs_)
      fail("cuda backend: {} sequences asked in a pass of {}", seqs.size(), multi_seqs_);
    cuda::KvView kvv = view(*seqs.front().kv);
    kvv.data = nullptr;  // each row's cache comes from d_rows_
    if (kvv.head_dim != head_dim_) fail("cuda backend: head_dim {} but RoPE tables for {}", kvv.head_dim, head_dim_);
    const int64_t n = cur_n_;
    const bool one_row_each = n == multi_seqs_;
    grow(reinterpret_cast<void**>(&attn_scratch_), &attn_scratch_floats_,
         cuda::attention_scratch_floats(kvv.n_ctx, n, n_heads, kvv.head_dim, true), 4);
    if (one_row_each && fuse_ && cuda::attention_decode_fusable(kvv, n_heads)) {
      check(cuda::attention_decode(kvv, layer, q, k, v, n, n_heads, cos_, sin_, nullptr, d_rows_, attn_scratch_, out,
                                   stream_),
            "attention_decode (multi)");
      return;
    }
    check(cuda::rope_kv_store_rows(q, k, v, n, n_heads, kvv, layer, cos_, sin_, nullptr, stream_, d_rows_),
          "rope_kv_store (multi)");
    check(cuda::attention_rows(kvv, layer, q, n, n_heads, nullptr, attn_scratch_, out, stream_, d_rows_),
          "attention (multi)");
  }
  void ternary_matmul_shared(std::span<const WeightHandle> ws, QuantBuffer qb, int64_t n,
                             std::span<float* const> ys) override {
    if (n != 1 || ws.size() > static_cast<size_t>(cuda::kMaxGemvParts) || ws.size() != ys.size())
      return Backend::ternary_matmul_shared(ws, qb, n, ys);
    const cuda::QuantActs& q = qa(qb, n);
    cuda::GemvMatrix mats[cuda::kMaxGemvParts];
    for (size_t i = 0; i < ws.size(); ++i) {
      const DevTernary& w = tw(ws[i]);
      if (w.cols != tw(ws[0]).cols) return Backend::ternary_matmul_shared(ws, qb, n, ys);
      mats[i] = cuda::GemvMatrix{w.w, w.row_scale, w.rows, ys[i]};
    }
    check(cuda::ternary_gemv_multi(mats, static_cast<int>(ws.size()), tw(ws[0]).cols, q.codes, q.scales, q.sums,
                                   stream_, cuda::GemvConfig{2, pdl_}),
          "ternary_gemv_multi");
  }

  // One-row passes: each layer as five launches (the norms inside the GEMVs, decode_fused_cuda.h):
  // q/k/v, attention, o (+ residual), gate/up (+ relu^2 * up), down (+ residual).
  bool fused_decode(int64_t n, int64_t hidden, int64_t qdim, int64_t inter) const override {
    if (!fused_gemv_ || n != 1 || multi_) return false;
    for (int64_t d : {hidden, qdim, inter})
      if (d % 4 != 0 || d > cuda::kFusedGemvMaxCols) return false;
    return true;
  }
  void decode_layer(const LayerWeights& L, int64_t layer, const LayerBuffers& b, std::span<const SeqRows> seqs,
                    int64_t n_heads, float eps) override {
    expect_pass(1);
    auto gemv = [&](const float* x, WeightHandle norm, std::initializer_list<std::pair<WeightHandle, float*>> mats,
                    cuda::FusedEpilogue epi, int shape, const char* what) {
      cuda::FusedGemvArgs a;
      a.x = x;
      a.norm_w = nw(norm);
      a.eps = eps;
      a.cols = norm.cols;
      for (const auto& [h, y] : mats) {
        const DevTernary& w = tw(h);
        if (w.cols != norm.cols) fail("cuda backend: {} has {} columns, its norm {}", what, w.cols, norm.cols);
        a.mats[a.count++] = cuda::GemvMatrix{w.w, w.row_scale, w.rows, y};
      }
      a.epilogue = epi;
      a.shape = fshape_[shape];
      a.pdl = pdl_;
      if (!cuda::fused_norm_gemv_ok(a)) fail("cuda backend: {}: no fused GEMV for this shape", what);
      check(cuda::fused_norm_gemv(a, stream_), what);
    };
    using E = cuda::FusedEpilogue;
    gemv(b.x, L.attn_norm, {{L.q, b.q}, {L.k, b.k}, {L.v, b.v}}, E::kStore, 0, "q/k/v");
    rope_kv_attention_multi(seqs, layer, b.q, b.k, b.v, n_heads, b.attn);
    gemv(b.attn, L.attn_sub_norm, {{L.o, b.x}}, E::kResidual, 1, "attn_output");
    gemv(b.x, L.ffn_norm, {{L.gate, b.gate}, {L.up, b.up}}, E::kRelu2, 2, "ffn_gate/up");
    gemv(b.gate, L.ffn_sub_norm, {{L.down, b.x}}, E::kResidual, 3, "ffn_down");
  }

  // The whole layer stack of a one-sequence decode step as one persistent kernel (decode_step_cuda.h),
  // where the cache type and widths allow; the plan (device copy of the layer table) is made once per
  // set of activation buffers.
  bool decode_layers(std::span<const LayerWeights> layers, const LayerBuffers& b, std::span<const SeqRows> seqs,
                     int64_t n_heads, float eps) override {
    if (!step_ || multi_ || cur_n_ != 1 || seqs.size() != 1 || layers.empty()) return false;
    const KvCacheView& kv = *seqs.front().kv;
    const cuda::KvView kvv = view(kv);
    const DevTernary& q0 = tw(layers.front().q);
    const int64_t hidden = q0.cols, qdim = q0.rows, inter = tw(layers.front().gate).rows;
    if (kv.head_dim != head_dim_ || !cuda::decode_step_supported(kvv, n_heads, hidden, qdim, inter)) return false;
    expect_pos(seqs.front().pos0, 1);
    if (seqs.front().pos0 + 1 > kv.n_ctx)
      fail("kv cache: position {} beyond the context ({})", seqs.front().pos0, kv.n_ctx);
    const StepKey key{layers.data(), b.x, b.q, b.k, b.v, b.attn, b.gate, b.up};
    auto it = step_plans_.find(key);
    if (it == step_plans_.end()) {
      if (capturing_) fail("cuda backend: a decode-step plan is made while recording a graph");
      std::vector<cuda::DecodeStepLayer> dl;
      for (const LayerWeights& L : layers) {
        auto mat = [&](WeightHandle h) {
          const DevTernary& w = tw(h);
          return cuda::GemvMatrix{w.w, w.row_scale, w.rows, nullptr};
        };
        dl.push_back(cuda::DecodeStepLayer{mat(L.q), mat(L.k), mat(L.v), mat(L.o), mat(L.gate), mat(L.up),
                                           mat(L.down), nw(L.attn_norm), nw(L.attn_sub_norm), nw(L.ffn_norm),
                                           nw(L.ffn_sub_norm)});
      }
      cuda::DecodeStepPlan* plan = nullptr;
      const char* why = nullptr;
      const cudaError_t e = cuda::decode_step_plan(dl.data(), static_cast<int>(dl.size()), hidden, inter,
                                                   cuda::DecodeStepBuffers{b.x, b.q, b.k, b.v, b.attn, b.gate, b.up},
                                                   eps, &plan, &why);
      if (e == cudaErrorInvalidValue) {
        cudaGetLastError();
        std::fprintf(stderr, "1bit: cuda: decode steps as per-layer launches (the persistent step kernel: %s)\n",
                     why != nullptr ? why : "?");
        step_ = false;  // a shape the step does not serve: per-layer launches from now on
        return false;
      }
      check(e, "decode_step_plan");
      it = step_plans_.emplace(key, plan).first;
    }
    grow(reinterpret_cast<void**>(&attn_scratch_), &attn_scratch_floats_,
         cuda::attention_scratch_floats(kv.n_ctx, 1, n_heads, kv.head_dim), 4);
    const int tw_words = cuda::decode_step_trace_words(it->second);
    if (trace_step_ && !capturing_ && static_cast<int>(trace_host_.size()) < tw_words) {
      if (d_trace_ != nullptr) cudaFree(d_trace_);
      check(cudaMalloc(&d_trace_, static_cast<size_t>(tw_words) * 8), "cudaMalloc (trace)");
      trace_host_.assign(static_cast<size_t>(tw_words), 0);
    }
    const bool tracing = trace_step_ && !capturing_ && d_trace_ != nullptr;
    if (tracing) check(cudaMemsetAsync(d_trace_, 0, static_cast<size_t>(tw_words) * 8, stream_), "cudaMemsetAsync");
    check(cuda::decode_step(it->second, kvv, n_heads, d_params_, cos_, sin_, attn_scratch_, pdl_, stream_,
                            tracing ? d_trace_ : nullptr),
          "decode_step");
    g_decode_steps.fetch_add(1, std::memory_order_relaxed);
    if (tracing) {  // phase j (j > 0) ran from block 0's departure of barrier j - 1 to the last arrival at j
      check(cudaMemcpyAsync(trace_host_.data(), d_trace_, static_cast<size_t>(tw_words) * 8, cudaMemcpyDeviceToHost,
                            stream_),
            "cudaMemcpyAsync (trace)");
      check(cudaStreamSynchronize(stream_), "decode_step (trace)");
      const int phases = tw_words / 2;
      for (int j = 1; j < phases; ++j) {
        const double work = static_cast<double>(trace_host_[2 * j] - trace_host_[2 * (j - 1) + 1]);
        trace_sum_[j % 5] += work;
        if (j < phases - 1) trace_sum_[5] += static_cast<double>(trace_host_[2 * j + 1] - trace_host_[2 * j]);
      }
      ++trace_steps_;
    }
    return true;
  }

  void lm_head(WeightHandle wh, const float* x, int64_t n, float* logits) override {
    const DevDense& d = dw(wh);
    head_on_device(d, x, n);
    check(cudaMemcpyAsync(logits, d_logits_, static_cast<size_t>(n * d.rows) * 4, cudaMemcpyDeviceToHost, stream_),
          "cudaMemcpyAsync (logits)");
  }

  // The argmax of each logit row on the device: n ids cross to the host instead of n * vocab floats.
  void lm_head_argmax(WeightHandle wh, const float* x, int64_t n, int32_t* ids) override {
    const DevDense& d = dw(wh);
    head_on_device(d, x, n);
    grow(reinterpret_cast<void**>(&d_ids_), &d_ids_count_, static_cast<size_t>(n), 4);
    check(cuda::argmax(d_logits_, d.rows, d_ids_, stream_, n), "argmax");
    check(cudaMemcpyAsync(ids, d_ids_, static_cast<size_t>(n) * 4, cudaMemcpyDeviceToHost, stream_),
          "cudaMemcpyAsync (ids)");
  }

  // Sampling on the device (sample_cuda.h): the settings go up and the ids come down with copies
  // that are part of a recorded pass (both buffers page-locked, filled / read around the pass).
  bool samples_on_device() const override { return true; }
  void lm_head_sample(WeightHandle wh, const float* x, int64_t n, const SampleRow* rows, int32_t* ids) override {
    static_assert(sizeof(SampleRow) == sizeof(cuda::SampleParams) && offsetof(SampleRow, u) == offsetof(cuda::SampleParams, u) &&
                  offsetof(SampleRow, min_p) == offsetof(cuda::SampleParams, min_p));
    const DevDense& d = dw(wh);
    head_on_device(d, x, n);
    grow(reinterpret_cast<void**>(&d_ids_), &d_ids_count_, static_cast<size_t>(n), 4);
    grow(reinterpret_cast<void**>(&d_sample_), &d_sample_count_, static_cast<size_t>(n), sizeof(cuda::SampleParams));
    check(cudaMemcpyAsync(d_sample_, rows, static_cast<size_t>(n) * sizeof(cuda::SampleParams), cudaMemcpyHostToDevice,
                          stream_),
          "cudaMemcpyAsync (sampling settings)");
    check(cuda::sample_rows(d_logits_, d.rows, n, d_sample_, d_ids_, stream_), "sample");
    check(cudaMemcpyAsync(ids, d_ids_, static_cast<size_t>(n) * 4, cudaMemcpyDeviceToHost, stream_),
          "cudaMemcpyAsync (ids)");
  }

 private:
  // Logits of n rows into d_logits_ ([n][rows]).
  void head_on_device(const DevDense& d, const float* x, int64_t n) {
    grow(reinterpret_cast<void**>(&d_logits_), &d_logits_floats_, static_cast<size_t>(n * d.rows), 4);
    if (d.int8) {
      const int64_t stride = cuda::cuda_act_len(d.cols);
      if (head_q_rows_ < n || head_q_.stride != stride) {
        if (capturing_) fail("cuda backend: LM head scratch grows while recording a graph");
        drop_graphs();
        cudaStreamSynchronize(stream_);
        cudaFree(head_q_.codes);
        cudaFree(head_q_.scales);
        cudaFree(head_q_.sums);
        head_q_ = {};
        head_q_rows_ = 0;
        check(cudaMalloc(&head_q_.codes, static_cast<size_t>(n * stride)), "cudaMalloc");
        check(cudaMalloc(&head_q_.scales, static_cast<size_t>(n) * 4), "cudaMalloc");
        check(cudaMalloc(&head_q_.sums, static_cast<size_t>(n) * 4), "cudaMalloc");
        head_q_.stride = stride;
        head_q_rows_ = n;
      }
      check(cuda::rmsnorm_quantize_rows(x, nullptr, n, d.cols, 0.0f, head_q_, stream_), "lm_head quantize");
      check(cuda::int8_gemv(d.q, d.d, d.rows, d.cols, head_q_, n, d_logits_, stream_), "int8 lm_head");
    } else {
      check(cuda::dense_gemv(d.w, d.type, d.rows, d.cols, x, n, d_logits_, stream_), "lm_head");
    }
  }

  struct Recording {
    cudaGraphExec_t exec = nullptr;
  };

  void* upload(const void* src, size_t bytes) {
    void* p = nullptr;
    check(cudaMalloc(&p, std::max<size_t>(bytes, 16)), "cudaMalloc (weights)");
    owned_.push_back(p);
    check(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (weights)");
    return p;
  }

  void drop_graphs() {
    for (auto& [k, r] : graphs_)
      if (r.exec != nullptr) cudaGraphExecDestroy(r.exec);
    graphs_.clear();
  }

  // Grows a scratch buffer to `need` elements (zero-filled); recordings that used the old one are dropped.
  void grow(void** p, size_t* cap, size_t need, size_t esize) {
    if (need <= *cap) return;
    if (capturing_) fail("cuda backend: scratch grows while recording a graph");
    drop_graphs();
    cudaStreamSynchronize(stream_);
    cudaFree(*p);
    *p = nullptr;
    *cap = 0;
    check(cudaMalloc(p, need * esize), "cudaMalloc (scratch)");
    check(cudaMemset(*p, 0, need * esize), "cudaMemset (scratch)");
    *cap = need;
  }

  void expect_pass(int64_t n) const {
    if (n != cur_n_) fail("cuda backend: an operation on {} rows in a pass of {} tokens", n, cur_n_);
  }
  void expect_pos(int64_t pos0, int64_t n) const {
    if (pos0 != cur_pos_ || n != cur_n_)
      fail("cuda backend: positions [{}, {}) asked in a pass at [{}, {})", pos0, pos0 + n, cur_pos_, cur_pos_ + cur_n_);
  }

  cuda::KvView view(const KvCacheView& kv) const {
    cuda::KvView v;
    v.data = kv.data;
    switch (kv.dtype) {
      case KvDtype::kF32: v.type = cuda::KvType::kF32; break;
      case KvDtype::kF16: v.type = cuda::KvType::kF16; break;
      case KvDtype::kQ8: v.type = cuda::KvType::kQ8; break;
      case KvDtype::kQ4R: v.type = cuda::KvType::kQ4R; break;
    }
    v.row_bytes = static_cast<int64_t>(kv.row_bytes());
    v.n_layers = kv.n_layers;
    v.n_kv_heads = kv.n_kv_heads;
    v.n_ctx = kv.n_ctx;
    v.head_dim = kv.head_dim;
    v.block_size = kv.positions_per_block();
    v.n_blocks = kv.n_blocks;
    v.table = device_table(kv);
    return v;
  }

  // The device copy of a sequence's block table (nullptr for a view without one). It is made and
  // filled by upload_tables at the start of the pass; its address never changes afterwards.
  const int32_t* device_table(const KvCacheView& kv) const {
    if (kv.block_table == nullptr) return nullptr;
    const auto it = tables_.find(kv.block_table);
    if (it == tables_.end()) fail("cuda backend: a KV block table that was not given at the start of the pass");
    return it->second.d;
  }

  // Copies the block tables of the pass's sequences to their device buffers (one page-locked
  // staging area, copies in stream order before the pass's kernels).
  void upload_tables(std::span<const SeqRows> seqs) {
    size_t total = 0;
    for (const SeqRows& sq : seqs) total += static_cast<size_t>(sq.kv->block_table_size);
    if (total > h_tab_cap_) {
      cudaFreeHost(h_tab_);
      h_tab_ = nullptr;
      h_tab_cap_ = 0;
      check(cudaMallocHost(&h_tab_, std::max<size_t>(total, 1024) * 4), "cudaMallocHost");
      h_tab_cap_ = std::max<size_t>(total, 1024);
    }
    size_t at = 0;
    for (const SeqRows& sq : seqs) {
      const KvCacheView& kv = *sq.kv;
      if (kv.block_table == nullptr) continue;
      const int64_t bs = kv.positions_per_block();
      const size_t cap = static_cast<size_t>((kv.n_ctx + bs - 1) / bs);
      if (static_cast<size_t>(kv.block_table_size) > cap)
        fail("cuda backend: a block table of {} blocks for a context of {}", kv.block_table_size, cap);
      DevTable& t = tables_[kv.block_table];
      if (t.cap < cap) {
        if (capturing_) fail("cuda backend: a block table grows while recording a graph");
        if (t.d != nullptr) {  // recordings may hold the old buffer
          drop_graphs();
          cudaStreamSynchronize(stream_);
          cudaFree(t.d);
          t = {};
        }
        check(cudaMalloc(&t.d, cap * 4), "cudaMalloc (block table)");
        t.cap = cap;
      }
      const size_t n = static_cast<size_t>(kv.block_table_size);
      if (n == 0) continue;
      std::memcpy(h_tab_ + at, kv.block_table, n * 4);
      check(cudaMemcpyAsync(t.d, h_tab_ + at, n * 4, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync (block table)");
      at += n;
    }
  }
  const DevTernary& tw(WeightHandle h) const {
    if (h.id < 0 || static_cast<size_t>(h.id) >= ternary_.size()) fail("cuda backend: bad ternary weight handle {}", h.id);
    return ternary_[static_cast<size_t>(h.id)];
  }
  const float* nw(WeightHandle h) const {
    if (h.id < 0 || static_cast<size_t>(h.id) >= norms_.size()) fail("cuda backend: bad norm weight handle {}", h.id);
    return norms_[static_cast<size_t>(h.id)];
  }
  const DevDense& dw(WeightHandle h) const {
    if (h.id < 0 || static_cast<size_t>(h.id) >= dense_.size()) fail("cuda backend: bad dense weight handle {}", h.id);
    return dense_[static_cast<size_t>(h.id)];
  }
  static const cuda::QuantActs& qa(QuantBuffer q, int64_t n) {
    if (q.impl == nullptr || n > q.rows) fail("cuda backend: {} rows for a quantized buffer of {}", n, q.rows);
    return *static_cast<const cuda::QuantActs*>(q.impl);
  }

  cudaStream_t stream_ = nullptr;
  bool pdl_ = false, use_graphs_ = true, capturing_ = false, fuse_ = true, fused_gemv_ = true;
  // Block shapes of the fused decode GEMVs: q/k/v, o, gate/up, down. Chosen so that on the 2B-4T
  // shapes each launch is about one wave of blocks on 132 SMs with every weight chunk of a lane
  // loaded before the wait for the previous kernel (docs/kernels-cuda.md).
  cuda::FusedGemvShape fshape_[4] = {{4, 5}, {2, 5}, {14, 10}, {3, 6}};
  std::vector<void*> owned_;
  std::vector<DevTernary> ternary_;
  std::vector<float*> norms_;
  std::vector<DevDense> dense_;
  float *cos_ = nullptr, *sin_ = nullptr;
  int64_t head_dim_ = 0, n_pos_ = 0;
  int32_t* d_params_ = nullptr;  // [0] = pos0, [1 ..] token ids of the pass
  int32_t* h_params_ = nullptr;  // page-locked staging of the same
  int64_t cur_n_ = 0, cur_pos_ = 0;
  bool multi_ = false;       // the pass holds several sequences (begin_forward_multi)
  int64_t multi_seqs_ = 0;
  struct DevTable {
    int32_t* d = nullptr;
    size_t cap = 0;
  };
  std::map<const int32_t*, DevTable> tables_;  // by the host table's address (a session's, stable)
  int32_t* h_tab_ = nullptr;                   // page-locked staging of the tables of a pass
  size_t h_tab_cap_ = 0;
  cuda::RowSeq* d_rows_ = nullptr;  // per row of a multi-sequence pass: its cache and position
  cuda::RowSeq* h_rows_ = nullptr;  // page-locked staging of the same
  float* attn_scratch_ = nullptr;
  size_t attn_scratch_floats_ = 0;
  float* d_logits_ = nullptr;
  size_t d_logits_floats_ = 0;
  int32_t* d_ids_ = nullptr;  // lm_head_argmax's results
  size_t d_ids_count_ = 0;
  cuda::SampleParams* d_sample_ = nullptr;  // lm_head_sample's settings
  size_t d_sample_count_ = 0;
  cuda::QuantActs head_q_{};
  int64_t head_q_rows_ = 0;
  using GraphKey = std::pair<ReplayKey, uint64_t>;  // the pass's key and cache geometry (pass_sig_)
  std::map<GraphKey, Recording> graphs_;
  using StepKey = std::array<const void*, 8>;  // the layer table and the activation buffers
  std::map<StepKey, cuda::DecodeStepPlan*> step_plans_;
  bool step_ = false;
  // ONEBIT_CUDA_STEP_TRACE=1 (with ONEBIT_CUDA_STEP=1): each eagerly launched step records its
  // phases' times (decode_step's trace); the sums per phase go to stderr when the backend closes.
  bool trace_step_ = false;
  unsigned long long* d_trace_ = nullptr;
  std::vector<unsigned long long> trace_host_;
  double trace_sum_[6] = {};  // q/k/v (from layer 1), attention, o, gate/up, down, barriers (ns)
  int64_t trace_steps_ = 0;
  uint64_t pass_sig_ = 0;
  size_t weight_bytes_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend() { return std::make_unique<CudaBackend>(); }

int64_t cuda_decode_steps_issued() { return g_decode_steps.load(std::memory_order_relaxed); }

double cuda_copy_bandwidth(size_t bytes, int passes) {
  check(cudaSetDevice(0), "cudaSetDevice");
  void *a = nullptr, *b = nullptr;
  check(cudaMalloc(&a, bytes), "cudaMalloc");
  check(cudaMalloc(&b, bytes), "cudaMalloc");
  check(cudaMemset(a, 1, bytes), "cudaMemset");
  cudaEvent_t e0, e1;
  check(cudaEventCreate(&e0), "cudaEventCreate");
  check(cudaEventCreate(&e1), "cudaEventCreate");
  double best = 0;
  for (int p = 0; p < passes + 1; ++p) {  // the first pass warms up
    check(cudaEventRecord(e0), "cudaEventRecord");
    check(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpyAsync");
    check(cudaEventRecord(e1), "cudaEventRecord");
    check(cudaEventSynchronize(e1), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
    if (p > 0 && ms > 0) best = std::max(best, 2.0 * static_cast<double>(bytes) / (ms * 1e-3));
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  return best;
}

bool cuda_available(std::string* why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    if (why != nullptr)
      *why = e != cudaSuccess ? std::string("no CUDA device: ") + cudaGetErrorString(e) : "no CUDA device";
    cudaGetLastError();
    return false;
  }
  return true;
}

}  // namespace onebit

#else  // no CUDA in this build

namespace onebit {

std::unique_ptr<Backend> make_cuda_backend() {
  fail("this build of 1bit has no CUDA backend (nvcc was not found when it was configured)");
}

bool cuda_available(std::string* why) {
  if (why != nullptr) *why = "this build has no CUDA backend";
  return false;
}

double cuda_copy_bandwidth(size_t, int) { fail("this build of 1bit has no CUDA backend"); }

int64_t cuda_decode_steps_issued() { return 0; }

}  // namespace onebit

#endif
