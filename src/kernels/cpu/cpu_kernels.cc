#include "kernels/cpu/cpu_kernels.h"

#include <algorithm>
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
  const detail::ActsView xv{x.row(0), x.stride(), x.scale.data(), x.sum.data(), x.rows()};
  if (pool == nullptr) pool = &ThreadPool::global();
  if (x.rows() == 1) {
    pool->parallel_for(w.row_groups, 1, [&](int64_t g0, int64_t g1) { k.ternary_gemm(wv, xv, y, y_stride, g0, g1, nullptr); });
    return;
  }
  // Chunks of whole tiles, so each tile's weights are unpacked once; about two chunks per thread,
  // since the AVX-512 kernel's lookup tables are built per chunk and pay off over many rows.
  const int64_t tiles = (w.row_groups + detail::kGemmTileGroups - 1) / detail::kGemmTileGroups;
  const int64_t per_chunk = std::max<int64_t>(1, tiles / (2 * int64_t{pool->num_threads()}));
  pool->parallel_for(w.row_groups, per_chunk * detail::kGemmTileGroups, [&](int64_t g0, int64_t g1) {
    k.ternary_gemm(wv, xv, y, y_stride, g0, g1, gemm_scratch(detail::gemm_scratch_bytes(wv, g1 - g0)));
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
  const auto& k = table(isa);
  out.resize(rows, cols);
  for (int64_t i = 0; i < rows; ++i) {
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

}  // namespace onebit::cpu
