// CpuBackend: the Backend on the host CPU.
//
// Two implementations of every operation live here, chosen at construction:
//  - fast (default): the SIMD kernels of src/kernels/cpu (ternary GEMM on int8 activations over
//    weights repacked to cpu::PackedTernary, fused RMSNorm+quantize, relu²·up, dot/axpy), the
//    work split over a ThreadPool the backend owns;
//  - reference: plain scalar loops written here over unpacked int8 codes, single-threaded and
//    obviously correct, used by tests to check the fast path (and the other way round).
// Both compute the same math (backend.h); they agree to float rounding, not bit for bit.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "engine/backend.h"

namespace onebit {

struct CpuBackendOptions {
  int n_threads = 0;       // 0 = hardware threads
  bool reference = false;  // scalar reference ops instead of the SIMD kernels
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& opts);
  ~CpuBackend() override;

  std::string_view name() const override;
  bool reference() const { return reference_; }
  int n_threads() const;

  WeightHandle add_ternary(const Tensor& t) override;
  WeightHandle add_norm(const Tensor& t) override;
  WeightHandle add_dense(const Tensor& t) override;
  // Codes in rows padded to a multiple of 64 bytes (zeros), fp32 scales and int32 code sums; the
  // fast lm_head uses AVX-512 VNNI (vpdpbusd on xq + 128, minus 128 * row sum: exact), else a
  // scalar int32 loop. Fast and reference give bit-identical logits on such a head.
  WeightHandle add_dense_int8(const Tensor& t) override;
  void init_rope(int64_t head_dim, double theta, int64_t n_pos) override;

  void* alloc(size_t bytes) override;
  void free(void* p) override;
  void download(const void* src, void* dst, size_t bytes) override;
  QuantBuffer alloc_quant(int64_t rows, int64_t cols) override;
  void free_quant(QuantBuffer q) override;

  void embed(WeightHandle table, std::span<const int32_t> tokens, float* x) override;
  void rmsnorm(const float* x, WeightHandle w, int64_t n, float eps, float* y) override;
  void rmsnorm_quantize(const float* x, WeightHandle w, int64_t n, float eps, QuantBuffer q) override;
  void add_rmsnorm_quantize(float* x, const float* y, WeightHandle w, int64_t n, float eps, QuantBuffer q) override;
  void relu2_mul_rmsnorm_quantize(float* gate, const float* up, WeightHandle w, int64_t n, float eps,
                                  QuantBuffer q) override;
  void quantize(const float* x, int64_t n, int64_t dim, QuantBuffer q) override;
  void ternary_matmul(WeightHandle w, QuantBuffer q, int64_t n, float* y) override;
  void rope(float* x, int64_t n, int64_t n_heads, int64_t pos0) override;
  void kv_store(const KvCacheView& kv, int64_t layer, const float* k, const float* v, int64_t n,
                int64_t pos0) override;
  // Paged: positions follow the block table (a contiguous cache is one block of n_ctx).
  bool supports_paged_kv() const override { return true; }
  // Every KvDtype: f32, f16, q8 and q4r (quantized by kv_store, dequantized inside attention's dot
  // and axpy kernels; kv_quant.h).
  bool supports_kv_dtype(KvDtype) const override { return true; }
  void kv_copy_block(const KvCacheView& kv, int32_t src, int32_t dst, int64_t n) override;
  void attention(const KvCacheView& kv, int64_t layer, const float* q, int64_t n, int64_t n_heads, int64_t pos0,
                 float* out) override;
  void relu2_mul(const float* gate, const float* up, int64_t count, float* out) override;
  void add(float* x, const float* y, int64_t count) override;
  void lm_head(WeightHandle w, const float* x, int64_t n, float* logits) override;

  // Bytes of weights the backend holds (repacked ternary + norms + int8 LM head copies with their
  // scales and sums; dense matrices added with add_dense stay in the model and are not counted).
  size_t weight_bytes() const;

  struct Impl;

 private:
  // rmsnorm_quantize of n rows of x, each range of rows made first by before(i0, i1); on the pool.
  template <typename Before>
  void rows_then_rmsnorm_quantize(const float* x, WeightHandle w, int64_t n, float eps, QuantBuffer q,
                                  Before&& before);

  bool reference_;
  std::unique_ptr<Impl> impl_;
};

// Converts row `row` of a dense [rows][cols] tensor (F32, F16, BF16, Q8_0) to fp32.
void dense_row_to_f32(const Tensor& t, int64_t row, float* out);

// One row of an int8 LM head copy (Backend::add_dense_int8), the same on every backend: returns
// d = max|f| / 127 and writes q[c] = clamp(rint(f[c] / d), -127, 127) (half to even) and, if
// `sum` is given, their sum. An all-zero row returns 0 and a row with a non-finite value returns a
// non-finite d; in both cases q and *sum are left as they are.
float quantize_row_int8(const float* f, int64_t cols, int8_t* q, int32_t* sum = nullptr);

}  // namespace onebit
