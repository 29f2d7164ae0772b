#include "kernels/cpu/cpu_kernels.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/base/error.h"
#include "kernels/cpu/kernel_table.h"

namespace onebit::cpu {

namespace {

const detail::KernelTable& table(Isa isa) {
  switch (resolve_isa(isa)) {
    case Isa::kAvx512: return detail::kAvx512Kernels;
    case Isa::kAvx2: return detail::kAvx2Kernels;
    default: return detail::kScalarKernels;
  }
}

detail::WeightsView view(const PackedTernary& w) {
  return {w.data.data(), w.row_scales.data(), w.rows, w.cols, w.row_groups, w.blocks};
}

// Per-thread scratch for the AVX-512 many-row GEMM (unpacked weight tiles, lookup tables and
// their accumulators; detail::gemm_scratch_bytes), grown to the largest request and kept.
uint8_t* gemm_scratch(int64_t bytes) {
  thread_local AlignedVector<uint8_t> buf;
  if (static_cast<int64_t>(buf.size()) < bytes) buf.resize(static_cast<size_t>(bytes));
  return buf.data();
}

// ONEBIT_GEMM_LUT=0 turns the AVX-512 GEMM's lookup-table share off (same results, for comparing).
bool gemm_lut_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("ONEBIT_GEMM_LUT");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  return on;
}

void zero_padding(QuantizedActs& q, int64_t i) {
  std::memset(q.row(i) + q.cols(), 0, static_cast<size_t>(q.stride() - q.cols()));
}

}  // namespace

void QuantizedActs::resize(int64_t rows, int64_t cols) {
  if (rows < 0 || cols <= 0) fail("QuantizedActs: bad shape {}x{}", rows, cols);
  rows_ = rows;
  cols_ = cols;
  stride_ = (cols + 63) / 64 * 64;
  data_.resize(static_cast<size_t>(rows * stride_));
  scale.resize(static_cast<size_t>(rows));
  sum.resize(static_cast<size_t>(rows));
}

void quantize_activations(const float* x, int64_t rows, int64_t cols, int64_t x_stride, QuantizedActs& out,
                          Isa isa) {
  const auto& k = table(isa);
  out.resize(rows, cols);
  for (int64_t i = 0; i < rows; ++i) {
    out.scale[i] = k.quantize_row(x + i * x_stride, cols, out.row(i), &out.sum[i]);
    zero_padding(out, i);
  }
}

void ternary_gemm(const PackedTernary& w, const QuantizedActs& x, float* y, int64_t y_stride, ThreadPool* pool,
                  Isa isa) {
  if (x.cols() != w.cols) fail("ternary_gemm: activations have {} columns, weights {}x{}", x.cols(), w.rows, w.cols);
  if (x.stride() < w.cols_padded()) fail("ternary_gemm: activation stride {} < {}", x.stride(), w.cols_padded());
  if (x.rows() == 0) return;
  const auto& k = table(isa);
  const detail::WeightsView wv = view(w);
  const int64_t n = x.rows();
  const bool lut = gemm_lut_enabled();
  if (pool == nullptr) pool = &ThreadPool::global();
  if (n == 1) {
    const detail::ActsView xv{x.row(0), x.stride(), x.scale.data(), x.sum.data(), 1};
    pool->parallel_for(w.row_groups, 1, [&](int64_t g0, int64_t g1) { k.ternary_gemm(wv, xv, y, y_stride, g0, g1, nullptr); });
    return;
  }
  const int64_t threads = pool->num_threads();
  if (n >= 2 * detail::kGemmTokenChunkMin) {
    // Prefill: chunks of whole token rows over all weight rows (also with one thread), so each
    // builds the lookup tables of its own token rows only and its working set stays in L2 (the
    // AVX-512 table share; the other paths do not care). At least one chunk per thread, at most
    // kGemmTokenChunkMax token rows each (measured: 256-row chunks are slower), >= kGemmTokenChunkMin.
    const int64_t parts = std::min(std::max(threads, (n + detail::kGemmTokenChunkMax - 1) / detail::kGemmTokenChunkMax),
                                   n / detail::kGemmTokenChunkMin);
    const int64_t per = (n + parts - 1) / parts;
    pool->parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t part = p0; part < p1; ++part) {
        const int64_t n0 = part * per, m = std::min(n, n0 + per) - n0;
        const detail::ActsView xv{x.row(n0), x.stride(), x.scale.data() + n0, x.sum.data() + n0, m, lut};
        k.ternary_gemm(wv, xv, y + n0 * y_stride, y_stride, 0, w.row_groups,
                       gemm_scratch(detail::gemm_scratch_bytes(wv, w.row_groups, lut ? m : 0)));
      }
    });
    return;
  }
  // Chunks of whole tiles, so each tile's weights are unpacked once; about two chunks per thread.
  const detail::ActsView xv{x.row(0), x.stride(), x.scale.data(), x.sum.data(), n, lut};
  const int64_t tiles = (w.row_groups + detail::kGemmTileGroups - 1) / detail::kGemmTileGroups;
  const int64_t per_chunk = std::max<int64_t>(1, tiles / (2 * threads));
  pool->parallel_for(w.row_groups, per_chunk * detail::kGemmTileGroups, [&](int64_t g0, int64_t g1) {
    k.ternary_gemm(wv, xv, y, y_stride, g0, g1, gemm_scratch(detail::gemm_scratch_bytes(wv, g1 - g0, lut ? n : 0)));
  });
}

void ternary_gemv(const PackedTernary& w, const QuantizedActs& x, float* y, ThreadPool* pool, Isa isa, int64_t n) {
  if (n < 0 || n >= x.rows()) fail("ternary_gemv: row {} of {} activation rows", n, x.rows());
  if (x.cols() != w.cols) fail("ternary_gemv: activations have {} columns, weights {}x{}", x.cols(), w.rows, w.cols);
  if (x.stride() < w.cols_padded()) fail("ternary_gemv: activation stride {} < {}", x.stride(), w.cols_padded());
  const auto& k = table(isa);
  const detail::WeightsView wv = view(w);
  const detail::ActsView xv{x.row(n), x.stride(), &x.scale[n], &x.sum[n], 1};
  if (pool == nullptr) pool = &ThreadPool::global();
  pool->parallel_for(w.row_groups, 1, [&](int64_t g0, int64_t g1) { k.ternary_gemm(wv, xv, y, 0, g0, g1, nullptr); });
}

void rmsnorm(const float* x, const float* weight, int64_t rows, int64_t cols, float eps, float* y, Isa isa) {
  const auto& k = table(isa);
  for (int64_t i = 0; i < rows; ++i) k.rmsnorm(x + i * cols, weight, cols, eps, y + i * cols);
}

void rmsnorm_quantize(const float* x, const float* weight, int64_t rows, int64_t cols, float eps,
                      QuantizedActs& out, Isa isa) {
  out.resize(rows, cols);
  rmsnorm_quantize_rows(x, weight, 0, rows, cols, eps, out, isa);
}

void rmsnorm_quantize_rows(const float* x, const float* weight, int64_t r0, int64_t r1, int64_t cols, float eps,
                           QuantizedActs& out, Isa isa) {
  if (r0 < 0 || r1 > out.rows() || cols != out.cols())
    fail("rmsnorm_quantize_rows: rows [{}, {}) of {} columns into a {}x{} buffer", r0, r1, cols, out.rows(),
         out.cols());
  const auto& k = table(isa);
  for (int64_t i = r0; i < r1; ++i) {
    out.scale[i] = k.rmsnorm_quantize_row(x + i * cols, weight, cols, eps, out.row(i), &out.sum[i]);
    zero_padding(out, i);
  }
}

void relu2_mul(const float* gate, const float* up, int64_t n, float* out, Isa isa) {
  table(isa).relu2_mul(gate, up, n, out);
}

float dot(const float* a, const float* b, int64_t n, Isa isa) { return table(isa).dot(a, b, n); }

void axpy(float a, const float* x, float* y, int64_t n, Isa isa) { table(isa).axpy(a, x, y, n); }

void dot_rows(const float* q, const float* k, int64_t k_stride, int64_t n_keys, int64_t d, float* out, Isa isa) {
  if (n_keys > 0) table(isa).dot_rows(q, k, k_stride, n_keys, d, out);
}

void axpy_rows(const float* p, const float* v, int64_t v_stride, int64_t n_keys, int64_t d, float* out, Isa isa) {
  if (n_keys > 0) table(isa).axpy_rows(p, v, v_stride, n_keys, d, out);
}

void dot_rows_multi(const float* const* q, int64_t n_q, const float* k, int64_t k_stride, int64_t n_keys, int64_t d,
                    float* const* out, Isa isa) {
  if (n_q > 0 && n_keys > 0) table(isa).dot_rows_multi(q, n_q, k, k_stride, n_keys, d, out);
}

void axpy_rows_multi(const float* const* p, int64_t n_q, const float* v, int64_t v_stride, int64_t n_keys, int64_t d,
                     float* const* out, Isa isa) {
  if (n_q > 0 && n_keys > 0) table(isa).axpy_rows_multi(p, n_q, v, v_stride, n_keys, d, out);
}

void softmax(float* s, int64_t n, float scale, Isa isa) {
  if (n > 0) table(isa).softmax(s, n, scale);
}

void kv_rows_f16_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, float* out, Isa isa) {
  if (n_rows > 0) table(isa).rows_f16_to_f32(rows, row_bytes, n_rows, d, out);
}

void kv_rows_q8_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, float* out, Isa isa) {
  if (n_rows > 0) table(isa).rows_q8_to_f32(rows, row_bytes, n_rows, d, out);
}

void kv_rows_q4_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, int64_t group, float* out,
                       Isa isa) {
  if (d <= 0 || d % 16 != 0 || group <= 0 || group % 16 != 0 || d % group != 0)
    fail("q4 KV rows: head_dim {} and group {} (need multiples of 16, the group dividing head_dim)", d, group);
  if (n_rows > 0) table(isa).rows_q4_to_f32(rows, row_bytes, n_rows, d, group, out);
}

void hadamard(float* x, int64_t d, Isa isa) {
  if (d < 1 || (d & (d - 1)) != 0) fail("hadamard: size {} is not a power of two", d);
  table(isa).hadamard(x, d, static_cast<float>(1.0 / std::sqrt(static_cast<double>(d))));
}

}  // namespace onebit::cpu
