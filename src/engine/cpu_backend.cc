#include "engine/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <new>

#include "core/base/error.h"
#include "core/base/half.h"
#include "core/base/ternary_packing.h"
#include "engine/kv_quant.h"
#include "engine/rope_tables.h"
#include "kernels/cpu/cpu_kernels.h"

namespace onebit {

namespace engine_simd {
float bf16_dot_avx512(const uint16_t* w, const float* x, int64_t n);  // lm_head_avx512.cc
int32_t u8i8_dot_avx512(const uint8_t* a, const int8_t* b, int64_t n);  // lm_head_avx512.cc, n % 64 == 0
}

std::string_view lm_head_name(LmHead h) { return h == LmHead::kInt8 ? "int8" : "bf16"; }

LmHead lm_head_from_name(std::string_view name) {
  if (name == "bf16" || name == "stored") return LmHead::kAsStored;
  if (name == "int8") return LmHead::kInt8;
  fail("LM head '{}': expected bf16 (as stored in the file) or int8", name);
}

float quantize_row_int8(const float* f, int64_t cols, int8_t* q, int32_t* sum) {
  float amax = 0.0f;
  for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(f[c]));
  if (!std::isfinite(amax) || amax == 0.0f) return amax;
  const float d = amax / 127.0f;
  int32_t total = 0;
  for (int64_t c = 0; c < cols; ++c) {
    q[c] = static_cast<int8_t>(std::clamp(std::nearbyint(f[c] / d), -127.0f, 127.0f));  // half to even
    total += q[c];
  }
  if (sum != nullptr) *sum = total;
  return d;
}

void dense_row_to_f32(const Tensor& t, int64_t row, float* out) {
  const int64_t cols = t.cols();
  const uint8_t* d = t.data.data();
  switch (t.packing) {
    case Packing::kF32:
      std::memcpy(out, d + row * cols * 4, static_cast<size_t>(cols) * 4);
      return;
    case Packing::kF16: {
      const uint8_t* p = d + row * cols * 2;
      for (int64_t c = 0; c < cols; ++c) {
        uint16_t h;
        std::memcpy(&h, p + 2 * c, 2);
        out[c] = f16_to_f32(h);
      }
      return;
    }
    case Packing::kBF16: {
      const uint8_t* p = d + row * cols * 2;
      for (int64_t c = 0; c < cols; ++c) {
        uint16_t h;
        std::memcpy(&h, p + 2 * c, 2);
        out[c] = bf16_to_f32(h);
      }
      return;
    }
    case Packing::kQ8_0: {
      const int64_t nb = cols / 32;
      const uint8_t* p = d + row * nb * 34;
      for (int64_t b = 0; b < nb; ++b, p += 34) {
        uint16_t h;
        std::memcpy(&h, p, 2);
        const float s = f16_to_f32(h);
        for (int j = 0; j < 32; ++j) out[b * 32 + j] = s * static_cast<float>(static_cast<int8_t>(p[2 + j]));
      }
      return;
    }
    default: fail("tensor {}: packing {} is not a dense matrix", t.name, packing_name(t.packing));
  }
}

namespace {

struct TernaryWeight {
  cpu::PackedTernary packed;  // fast path
  TernaryMatrix ref;          // reference path: codes [rows][cols] and 1 or `rows` scales
  float ref_scale(int64_t r) const { return ref.scales.size() == 1 ? ref.scales[0] : ref.scales[r]; }
};

size_t dense_row_bytes(const Tensor& t) {
  switch (t.packing) {
    case Packing::kF32: return static_cast<size_t>(t.cols()) * 4;
    case Packing::kF16:
    case Packing::kBF16: return static_cast<size_t>(t.cols()) * 2;
    case Packing::kQ8_0: return static_cast<size_t>(t.cols() / 32) * 34;
    default: return 0;
  }
}

// Scratch that grows to the largest request, one per thread (attention scores, converted rows).
std::vector<float>& scratch(size_t n, int which) {
  thread_local std::vector<float> bufs[3];
  if (bufs[which].size() < n) bufs[which].resize(n);
  return bufs[which];
}

// ---- reference ops: plain loops, double accumulation where a sum is long ----

float ref_rms_factor(const float* x, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float mean = static_cast<float>(ss / static_cast<double>(n));
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(mean + eps)));
}

void ref_quantize_row(const float* x, int64_t n, int8_t* q, float* scale, int32_t* sum) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float s = 127.0f / std::max(amax, 1e-5f);
  int32_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::clamp(std::nearbyint(x[i] * s), -128.0f, 127.0f);  // half to even
    q[i] = static_cast<int8_t>(v);
    total += q[i];
  }
  *scale = s;
  *sum = total;
}

}  // namespace

namespace {

// A dense matrix: a view of the model's tensor, plus (add_dense_int8) the int8 copy.
struct DenseWeight {
  Tensor t;
  bool int8 = false;
  int64_t stride = 0;            // bytes per code row, cols rounded up to 64
  cpu::AlignedVector<int8_t> q;  // [rows][stride], padding zero
  std::vector<float> d;          // per-row scale max|w_r| / 127
  std::vector<int32_t> qsum;     // per-row sum of codes (the VNNI path's +128 offset correction)
};

}  // namespace

struct CpuBackend::Impl {
  explicit Impl(int n_threads) : pool(n_threads) {}
  cpu::ThreadPool pool;
  std::vector<TernaryWeight> ternary;
  std::vector<std::vector<float>> norms;
  std::vector<DenseWeight> dense;  // views into the model (+ int8 copies)
  std::vector<int8_t> head_xq;     // lm_head on an int8 head: x rows quantized, [n][stride]
  std::vector<uint8_t> head_xu;    // the same + 128 (vpdpbusd's unsigned operand)
  std::vector<float> head_xs;      // per-row activation scales s_i
  int64_t head_dim = 0, n_pos = 0;
  std::vector<float> cos, sin;  // [n_pos][head_dim / 2]
  std::vector<float> rot_q;     // attention over a q4r cache: the queries rotated by H

  const TernaryWeight& tw(WeightHandle h) const {
    if (h.id < 0 || static_cast<size_t>(h.id) >= ternary.size()) fail("cpu backend: bad ternary weight handle {}", h.id);
    return ternary[static_cast<size_t>(h.id)];
  }
  const std::vector<float>& nw(WeightHandle h) const {
    if (h.id < 0 || static_cast<size_t>(h.id) >= norms.size()) fail("cpu backend: bad norm weight handle {}", h.id);
    return norms[static_cast<size_t>(h.id)];
  }
  const DenseWeight& dw(WeightHandle h) const {
    if (h.id < 0 || static_cast<size_t>(h.id) >= dense.size()) fail("cpu backend: bad dense weight handle {}", h.id);
    return dense[static_cast<size_t>(h.id)];
  }
};

namespace {

cpu::QuantizedActs& qa(QuantBuffer q) { return *static_cast<cpu::QuantizedActs*>(q.impl); }

}  // namespace

CpuBackend::CpuBackend(const CpuBackendOptions& opts)
    : reference_(opts.reference), impl_(std::make_unique<Impl>(opts.reference ? 1 : opts.n_threads)) {}

CpuBackend::~CpuBackend() = default;

std::string_view CpuBackend::name() const { return reference_ ? "cpu-reference" : "cpu"; }

int CpuBackend::n_threads() const { return impl_->pool.num_threads(); }

WeightHandle CpuBackend::add_ternary(const Tensor& t) {
  TernaryWeight w;
  TernaryMatrix m = unpack_ternary(t);
  if (m.scales.size() != 1 && static_cast<int64_t>(m.scales.size()) != m.rows)
    fail("tensor {}: {} scales for {} rows", t.name, m.scales.size(), m.rows);
  if (reference_) {
    w.ref = std::move(m);
  } else {
    w.packed = cpu::repack_for_cpu(m);
  }
  impl_->ternary.push_back(std::move(w));
  return {static_cast<int32_t>(impl_->ternary.size() - 1), t.rows(), t.cols()};
}

WeightHandle CpuBackend::add_norm(const Tensor& t) {
  std::vector<float> w = dequantize(t);
  const int64_t n = static_cast<int64_t>(w.size());
  impl_->norms.push_back(std::move(w));
  return {static_cast<int32_t>(impl_->norms.size() - 1), 1, n};
}

WeightHandle CpuBackend::add_dense(const Tensor& t) {
  if (t.shape.size() != 2) fail("tensor {}: expected a matrix, has shape {}", t.name, t.shape_str());
  const size_t rb = dense_row_bytes(t);
  if (rb == 0) fail("tensor {}: packing {} is not supported for a dense matrix", t.name, packing_name(t.packing));
  if (t.packing == Packing::kQ8_0 && t.cols() % 32 != 0)
    fail("tensor {}: Q8_0 needs a column count divisible by 32, has {}", t.name, t.cols());
  if (t.data.size() < rb * static_cast<size_t>(t.rows()))
    fail("tensor {}: {} {} needs {} bytes, has {}", t.name, packing_name(t.packing), t.shape_str(),
         rb * static_cast<size_t>(t.rows()), t.data.size());
  DenseWeight w;
  w.t.name = t.name;
  w.t.packing = t.packing;
  w.t.shape = t.shape;
  w.t.data = t.data;
  impl_->dense.push_back(std::move(w));
  return {static_cast<int32_t>(impl_->dense.size() - 1), t.rows(), t.cols()};
}

WeightHandle CpuBackend::add_dense_int8(const Tensor& t) {
  const WeightHandle h = add_dense(t);  // validates; keeps the view for the name and shape
  DenseWeight& w = impl_->dense[static_cast<size_t>(h.id)];
  const int64_t rows = h.rows, cols = h.cols;
  // |sum| <= cols * 127 * 128 must fit in int32 (and, with the +128 offset, cols * 127 * 255).
  if (cols > (int64_t{1} << 31) / (127 * 255))
    fail("tensor {}: {} columns are too many for an exact int32 int8 LM head", t.name, cols);
  w.int8 = true;
  w.stride = (cols + 63) / 64 * 64;
  w.q.assign(static_cast<size_t>(rows * w.stride), 0);
  w.d.assign(static_cast<size_t>(rows), 0.0f);
  w.qsum.assign(static_cast<size_t>(rows), 0);
  std::atomic<int64_t> bad_row{-1};
  auto range = [&](int64_t r0, int64_t r1) {
    std::vector<float>& f = scratch(static_cast<size_t>(cols), 2);
    for (int64_t r = r0; r < r1; ++r) {
      dense_row_to_f32(w.t, r, f.data());
      const float d = quantize_row_int8(f.data(), cols, w.q.data() + r * w.stride, &w.qsum[static_cast<size_t>(r)]);
      if (!std::isfinite(d)) bad_row = r;  // not thrown from a pool thread
      else w.d[static_cast<size_t>(r)] = d;  // 0 for a zero row: codes and sum stay 0
    }
  };
  impl_->pool.parallel_for(rows, 256, range);  // each row on its own: the same result on any thread count
  if (bad_row >= 0) fail("tensor {}: row {} has a non-finite value, cannot make an int8 LM head", t.name, bad_row.load());
  return h;
}

void CpuBackend::init_rope(int64_t head_dim, double theta, int64_t n_pos) {
  RopeTables t = make_rope_tables(head_dim, theta, n_pos);
  impl_->head_dim = head_dim;
  impl_->n_pos = n_pos;
  impl_->cos = std::move(t.cos);
  impl_->sin = std::move(t.sin);
}

void* CpuBackend::alloc(size_t bytes) {
  bytes = std::max<size_t>(64, (bytes + 63) / 64 * 64);
  void* p = ::operator new(bytes, std::align_val_t{64});
  std::memset(p, 0, bytes);
  return p;
}

void CpuBackend::free(void* p) {
  if (p != nullptr) ::operator delete(p, std::align_val_t{64});
}

void CpuBackend::download(const void* src, void* dst, size_t bytes) { std::memcpy(dst, src, bytes); }

QuantBuffer CpuBackend::alloc_quant(int64_t rows, int64_t cols) {
  auto* q = new cpu::QuantizedActs(rows, cols);
  return {q, rows, cols};
}

void CpuBackend::free_quant(QuantBuffer q) { delete static_cast<cpu::QuantizedActs*>(q.impl); }

size_t CpuBackend::weight_bytes() const {
  size_t b = 0;
  for (const auto& w : impl_->ternary)
    b += w.packed.data.size() + w.packed.row_scales.size() * 4 + w.ref.codes.size() + w.ref.scales.size() * 4;
  for (const auto& n : impl_->norms) b += n.size() * 4;
  for (const auto& d : impl_->dense) b += d.q.size() + d.d.size() * 4 + d.qsum.size() * 4;
  return b;
}

void CpuBackend::embed(WeightHandle table, std::span<const int32_t> tokens, float* x) {
  const Tensor& t = impl_->dw(table).t;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= t.rows()) fail("token id {} out of range [0, {})", tokens[i], t.rows());
    dense_row_to_f32(t, tokens[i], x + static_cast<int64_t>(i) * t.cols());
  }
}

void CpuBackend::rmsnorm(const float* x, WeightHandle wh, int64_t n, float eps, float* y) {
  const std::vector<float>& w = impl_->nw(wh);
  const int64_t dim = static_cast<int64_t>(w.size());
  if (!reference_) {
    cpu::rmsnorm(x, w.data(), n, dim, eps, y);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float r = ref_rms_factor(x + i * dim, dim, eps);
    for (int64_t c = 0; c < dim; ++c) y[i * dim + c] = (x[i * dim + c] * r) * w[static_cast<size_t>(c)];
  }
}

void CpuBackend::rmsnorm_quantize(const float* x, WeightHandle wh, int64_t n, float eps, QuantBuffer q) {
  const std::vector<float>& w = impl_->nw(wh);
  const int64_t dim = static_cast<int64_t>(w.size());
  if (n > q.rows || dim != q.cols) fail("rmsnorm_quantize: {}x{} rows into a {}x{} buffer", n, dim, q.rows, q.cols);
  if (!reference_) {
    rows_then_rmsnorm_quantize(x, wh, n, eps, q, [](int64_t, int64_t) {});
    return;
  }
  std::vector<float>& tmp = scratch(static_cast<size_t>(dim), 0);
  cpu::QuantizedActs& out = qa(q);
  out.resize(n, dim);
  for (int64_t i = 0; i < n; ++i) {
    const float r = ref_rms_factor(x + i * dim, dim, eps);
    for (int64_t c = 0; c < dim; ++c) tmp[static_cast<size_t>(c)] = (x[i * dim + c] * r) * w[static_cast<size_t>(c)];
    ref_quantize_row(tmp.data(), dim, out.row(i), &out.scale[static_cast<size_t>(i)], &out.sum[static_cast<size_t>(i)]);
  }
}

// Rows [i0, i1) of x: first before(i0, i1) (an elementwise step that makes them), then their
// rmsnorm_quantize; ranges of at least 8 rows on the pool's threads. Rows are independent and
// each step is elementwise or per row, so this is the unfused sequence bit for bit, with one
// dispatch instead of two and each row still in cache for the second step. Before this the
// prefill's norms (and the relu2 and residual steps the graph fuses with them) ran on the calling
// thread alone while the other threads waited.
template <typename Before>
void CpuBackend::rows_then_rmsnorm_quantize(const float* x, WeightHandle wh, int64_t n, float eps, QuantBuffer q,
                                            Before&& before) {
  const std::vector<float>& w = impl_->nw(wh);
  const int64_t dim = static_cast<int64_t>(w.size());
  if (n > q.rows || dim != q.cols) fail("rmsnorm_quantize: {}x{} rows into a {}x{} buffer", n, dim, q.rows, q.cols);
  cpu::QuantizedActs& out = qa(q);
  out.resize(n, dim);
  impl_->pool.parallel_for(n, 8, [&](int64_t i0, int64_t i1) {
    before(i0, i1);
    cpu::rmsnorm_quantize_rows(x, w.data(), i0, i1, dim, eps, out);
  });
}

void CpuBackend::add_rmsnorm_quantize(float* x, const float* y, WeightHandle w, int64_t n, float eps, QuantBuffer q) {
  if (reference_) return Backend::add_rmsnorm_quantize(x, y, w, n, eps, q);
  const int64_t dim = w.cols;
  rows_then_rmsnorm_quantize(x, w, n, eps, q, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0 * dim; i < i1 * dim; ++i) x[i] += y[i];  // add()'s arithmetic
  });
}

void CpuBackend::relu2_mul_rmsnorm_quantize(float* gate, const float* up, WeightHandle w, int64_t n, float eps,
                                            QuantBuffer q) {
  if (reference_) return Backend::relu2_mul_rmsnorm_quantize(gate, up, w, n, eps, q);
  const int64_t dim = w.cols;
  rows_then_rmsnorm_quantize(gate, w, n, eps, q, [&](int64_t i0, int64_t i1) {
    cpu::relu2_mul(gate + i0 * dim, up + i0 * dim, (i1 - i0) * dim, gate + i0 * dim);
  });
}

void CpuBackend::quantize(const float* x, int64_t n, int64_t dim, QuantBuffer q) {
  if (n > q.rows || dim != q.cols) fail("quantize: {}x{} rows into a {}x{} buffer", n, dim, q.rows, q.cols);
  if (!reference_) {
    cpu::quantize_activations(x, n, dim, dim, qa(q));
    return;
  }
  cpu::QuantizedActs& out = qa(q);
  out.resize(n, dim);
  for (int64_t i = 0; i < n; ++i)
    ref_quantize_row(x + i * dim, dim, out.row(i), &out.scale[static_cast<size_t>(i)], &out.sum[static_cast<size_t>(i)]);
}

void CpuBackend::ternary_matmul(WeightHandle wh, QuantBuffer q, int64_t n, float* y) {
  const TernaryWeight& w = impl_->tw(wh);
  cpu::QuantizedActs& x = qa(q);
  if (x.rows() != n || x.cols() != wh.cols)
    fail("ternary_matmul: activations {}x{}, expected {}x{}", x.rows(), x.cols(), n, wh.cols);
  if (!reference_) {
    cpu::ternary_gemm(w.packed, x, y, wh.rows, &impl_->pool);
    return;
  }
  const int64_t rows = w.ref.rows, cols = w.ref.cols;
  for (int64_t i = 0; i < n; ++i) {
    const int8_t* xq = x.row(i);
    for (int64_t r = 0; r < rows; ++r) {
      const int8_t* wr = w.ref.codes.data() + r * cols;
      int32_t acc = 0;
      for (int64_t c = 0; c < cols; ++c) acc += static_cast<int32_t>(wr[c]) * xq[c];
      y[i * rows + r] = static_cast<float>(acc) / x.scale[static_cast<size_t>(i)] * w.ref_scale(r);
    }
  }
}

void CpuBackend::rope(float* x, int64_t n, int64_t n_heads, int64_t pos0) {
  const int64_t d = impl_->head_dim, half = d / 2;
  if (pos0 < 0 || pos0 + n > impl_->n_pos) fail("rope: positions [{}, {}) beyond the table ({})", pos0, pos0 + n, impl_->n_pos);
  auto rows = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* c = impl_->cos.data() + (pos0 + i) * half;
      const float* s = impl_->sin.data() + (pos0 + i) * half;
      for (int64_t h = 0; h < n_heads; ++h) {
        float* v = x + (i * n_heads + h) * d;
        // q*cos + rotate_half(q)*sin, rotate_half(q) = [-q2, q1]; pairs (j, j + D/2) share an angle.
        for (int64_t j = 0; j < half; ++j) {
          const float a = v[j], b = v[j + half];
          v[j] = a * c[j] - b * s[j];
          v[j + half] = b * c[j] + a * s[j];
        }
      }
    }
  };
  // Rows are independent (the same arithmetic on any thread); one decode row stays on this thread.
  if (reference_) {
    rows(0, n);
  } else {
    impl_->pool.parallel_for(n, 8, rows);
  }
}

namespace {

// Pool block of logical block i of the sequence (the table, or block i itself without one).
int64_t pool_block(const KvCacheView& kv, int64_t i) { return kv.block_table != nullptr ? kv.block_table[i] : i; }

// The row (kv.row_bytes() bytes) of position `pos` of (which = 0 for K, 1 for V, layer, head).
uint8_t* kv_row_ptr(const KvCacheView& kv, int64_t which, int64_t layer, int64_t head, int64_t pos) {
  const int64_t bs = kv.positions_per_block();
  return static_cast<uint8_t*>(kv.data) + kv.block_byte_offset(which, layer, pool_block(kv, pos / bs), head) +
         static_cast<size_t>(pos % bs) * kv.row_bytes();
}

// Pointer to the fp32 values of a row; for any other dtype, the row converted into `buf` (q4r:
// still rotated, H x).
const float* kv_row(const KvCacheView& kv, int64_t which, int64_t layer, int64_t head, int64_t pos, float* buf) {
  const uint8_t* r = kv_row_ptr(kv, which, layer, head, pos);
  if (kv.dtype == KvDtype::kF32) return reinterpret_cast<const float*>(r);
  dequantize_kv_row(kv.dtype, r, kv.head_dim, buf);
  return buf;
}

// Calls fn(j0, count, rows) for the positions [j0, j1) of (which, layer, head), one call per run of
// consecutive positions in one block (rows: `count` rows of kv.row_bytes() bytes), in increasing
// order; with max_run > 0 a run is at most max_run positions.
template <typename Fn>
void for_kv_runs(const KvCacheView& kv, int64_t which, int64_t layer, int64_t head, int64_t j0, int64_t j1,
                 int64_t max_run, Fn&& fn) {
  const int64_t bs = kv.positions_per_block();
  const size_t rb = kv.row_bytes();
  const uint8_t* base = static_cast<const uint8_t*>(kv.data);
  while (j0 < j1) {
    const int64_t blk = j0 / bs, slot = j0 % bs;
    int64_t count = std::min(bs - slot, j1 - j0);
    if (max_run > 0) count = std::min(count, max_run);
    fn(j0, count,
       base + kv.block_byte_offset(which, layer, pool_block(kv, blk), head) + static_cast<size_t>(slot) * rb);
    j0 += count;
  }
}

// Error unless positions [0, end) are mapped to blocks inside the pool.
void check_kv_map(const KvCacheView& kv, int64_t end, const char* op) {
  if (end > kv.n_ctx || end > kv.mapped_positions())
    fail("kv cache ({}): position {} beyond the context ({}) or the sequence's blocks ({} positions)", op, end - 1,
         kv.n_ctx, kv.mapped_positions());
  if (kv.block_table == nullptr) return;
  const int64_t n_tab = (end + kv.positions_per_block() - 1) / kv.positions_per_block();
  for (int64_t i = 0; i < n_tab; ++i)
    if (kv.block_table[i] < 0 || kv.block_table[i] >= kv.n_blocks)
      fail("kv cache ({}): block table entry {} is {}, outside the pool of {} blocks", op, i, kv.block_table[i],
           kv.n_blocks);
}

}  // namespace

void CpuBackend::kv_store(const KvCacheView& kv, int64_t layer, const float* k, const float* v, int64_t n,
                          int64_t pos0) {
  if (pos0 < 0) fail("kv cache: negative position {}", pos0);
  check_kv_map(kv, pos0 + n, "store");
  const int64_t hk = kv.n_kv_heads, d = kv.head_dim;
  // Rows are independent; quantization (q8, q4r) is the one scalar code of kv_quant.cc on both
  // paths, so the fast and the reference backend store the same bytes.
  auto rows = [&](int64_t i0, int64_t i1) {
    for (int64_t which = 0; which < 2; ++which) {
      const float* src = which == 0 ? k : v;
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t h = 0; h < hk; ++h) {
          const float* s = src + (i * hk + h) * d;
          uint8_t* dst = kv_row_ptr(kv, which, layer, h, pos0 + i);
          if (kv.dtype == KvDtype::kF32) {
            std::memcpy(dst, s, static_cast<size_t>(d) * 4);
          } else if (kv.dtype == KvDtype::kF16) {
            uint16_t* o = reinterpret_cast<uint16_t*>(dst);
            for (int64_t j = 0; j < d; ++j) o[j] = f32_to_f16(s[j]);
          } else {
            quantize_kv_row(kv.dtype, s, d, dst);
          }
        }
    }
  };
  if (reference_ || !kv_dtype_quantized(kv.dtype)) {
    rows(0, n);
  } else {
    impl_->pool.parallel_for(n, 16, rows);
  }
}

void CpuBackend::kv_copy_block(const KvCacheView& kv, int32_t src, int32_t dst, int64_t n) {
  const int64_t bs = kv.positions_per_block();
  if (src < 0 || src >= kv.n_blocks || dst < 0 || dst >= kv.n_blocks || n < 0 || n > bs)
    fail("kv cache: copying {} positions of block {} to block {} (pool of {} blocks of {})", n, src, dst, kv.n_blocks,
         bs);
  const size_t bytes = static_cast<size_t>(n) * kv.row_bytes();  // rows with their scales
  char* base = static_cast<char*>(kv.data);
  for (int64_t which = 0; which < 2; ++which)
    for (int64_t l = 0; l < kv.n_layers; ++l)
      for (int64_t h = 0; h < kv.n_kv_heads; ++h)
        std::memmove(base + kv.block_byte_offset(which, l, dst, h), base + kv.block_byte_offset(which, l, src, h),
                     bytes);
}

namespace {

// `count` consecutive rows of a KV cache as fp32: in place for an fp32 cache, else converted into
// `buf` (count x head_dim floats) by the kernels (f16 exactly; q8 / q4r as scale * code, exactly
// what dequantize_kv_row gives). The fast attention paths then run the fp32 kernels on them, so
// attention over an f16, q8 or q4r cache is, bit for bit, fp32 attention over the converted rows.
struct KvRowsAsF32 {
  explicit KvRowsAsF32(const KvCacheView& kv)
      : dtype(kv.dtype), d(kv.head_dim), row_bytes(static_cast<int64_t>(kv.row_bytes())), group(kv_q4_group(d)) {}
  const float* operator()(const uint8_t* rows, int64_t count, float* buf) const {
    switch (dtype) {
      case KvDtype::kF32: return reinterpret_cast<const float*>(rows);
      case KvDtype::kF16: cpu::kv_rows_f16_to_f32(rows, row_bytes, count, d, buf); break;
      case KvDtype::kQ8: cpu::kv_rows_q8_to_f32(rows, row_bytes, count, d, buf); break;
      case KvDtype::kQ4R: cpu::kv_rows_q4_to_f32(rows, row_bytes, count, d, group, buf); break;
    }
    return buf;
  }
  KvDtype dtype;
  int64_t d, row_bytes, group;
};

// One decode row over an fp32 cache: query vector qv (position n_keys - 1) of kv head kvh, a KV
// block's keys per kernel call.
void attention_row_f32(const KvCacheView& kv, int64_t layer, const float* qv, int64_t kvh, int64_t n_keys, float scale,
                       float* o) {
  const int64_t d = kv.head_dim;
  float* s = scratch(static_cast<size_t>(n_keys), 0).data();
  for_kv_runs(kv, 0, layer, kvh, 0, n_keys, 0, [&](int64_t j0, int64_t count, const uint8_t* kr) {
    cpu::dot_rows(qv, reinterpret_cast<const float*>(kr), d, count, d, s + j0);
  });
  cpu::softmax(s, n_keys, scale);  // the fast paths' one softmax: they agree to the bit
  std::fill(o, o + d, 0.0f);
  for_kv_runs(kv, 1, layer, kvh, 0, n_keys, 0, [&](int64_t j0, int64_t count, const uint8_t* vr) {
    cpu::axpy_rows(s + j0, reinterpret_cast<const float*>(vr), d, count, d, o);
  });
}

// Blocked attention, the same arithmetic as attention_row_f32 (and the per-(row, head) loop of
// attention()) for every (row, head), bit for bit: every score is one dot(q, k) in the kernels'
// fixed order, the softmax is the same cpu::softmax, and each output row accumulates p·v over keys in
// increasing order. Only the loop order changes: a task is one KV head and kQRows query rows
// (kQRows x group query vectors), and keys are visited in tiles of kKeyTile rows (16 KB at head_dim
// 128 in fp32) that stay in L1 while every query of the task uses them, instead of streaming each
// head's K and V from L2 once per query vector. Within a tile, the queries that see the same number
// of its keys (the heads of one row always do; all rows do except near the diagonal) go to one
// dot_rows_multi / axpy_rows_multi call, which loads each key and value row once per 4 queries.
// A tile of an f16, q8 or q4r cache is converted to fp32 once per task, not once per query vector;
// their tasks take 16 query rows instead of 4, so that a prefill converts each tile 4x less often
// (5 % faster q4r prefill on the default model).
void attention_blocked(cpu::ThreadPool& pool, const KvCacheView& kv, int64_t layer, const float* q, int64_t n,
                       int64_t n_heads, int64_t pos0, float* out) {
  constexpr int64_t kKeyTile = 32;
  const int64_t kQRows = kv.dtype == KvDtype::kF32 ? 4 : 16;
  const int64_t d = kv.head_dim, group = n_heads / kv.n_kv_heads;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  const int64_t n_blocks = (n + kQRows - 1) / kQRows;
  const KvRowsAsF32 as_f32(kv);
  auto task = [&](int64_t t) {
    const int64_t kvh = t % kv.n_kv_heads, i0 = t / kv.n_kv_heads * kQRows, i1 = std::min(n, i0 + kQRows);
    const int64_t max_keys = pos0 + i1;  // the last row sees the most keys
    const int64_t nq = (i1 - i0) * group;
    // Scores, then probabilities, of query a = (i - i0) * group + (h - kvh * group) at sc[a * max_keys].
    std::vector<float>& sc = scratch(static_cast<size_t>(nq * max_keys), 0);
    float* tile = scratch(static_cast<size_t>(kKeyTile * d), 1).data();
    // Per query a: its vector, scores, output; and the score pointers shifted to a tile's first key.
    thread_local std::vector<const float*> cptrs;
    thread_local std::vector<float*> mptrs;
    cptrs.resize(static_cast<size_t>(2 * nq));
    mptrs.resize(static_cast<size_t>(3 * nq));
    const float** qv = cptrs.data();
    const float** p_at = qv + nq;
    float** sv = mptrs.data();
    float** ov = sv + nq;
    float** s_at = ov + nq;
    for (int64_t a = 0; a < nq; ++a) {
      const int64_t i = i0 + a / group, h = kvh * group + a % group;
      qv[a] = q + (i * n_heads + h) * d;
      ov[a] = out + (i * n_heads + h) * d;
      sv[a] = sc.data() + a * max_keys;
    }
    auto keys_of = [&](int64_t a) { return pos0 + i0 + a / group + 1; };  // query a sees keys [0, keys_of(a))
    // Runs [a, a + m) of queries that see the same c > 0 keys of the tile [j0, j0 + count): rows see
    // ever more keys, so each run is whole rows.
    auto for_runs = [&](int64_t j0, int64_t count, auto&& fn) {
      for (int64_t a = 0; a < nq;) {
        const int64_t c = std::min(count, keys_of(a) - j0);
        int64_t b = a + group;
        while (b < nq && std::min(count, keys_of(b) - j0) == c) b += group;
        if (c > 0) fn(a, b - a, c);
        a = b;
      }
    };
    // Key tiles never cross a KV block (a block's rows of one head are contiguous).
    for_kv_runs(kv, 0, layer, kvh, 0, max_keys, kKeyTile, [&](int64_t j0, int64_t count, const uint8_t* rows) {
      const float* kr = as_f32(rows, count, tile);
      for (int64_t a = 0; a < nq; ++a) s_at[a] = sv[a] + j0;
      for_runs(j0, count,
               [&](int64_t a, int64_t m, int64_t c) { cpu::dot_rows_multi(qv + a, m, kr, d, c, d, s_at + a); });
    });
    for (int64_t a = 0; a < nq; ++a) {
      cpu::softmax(sv[a], keys_of(a), scale);
      std::fill(ov[a], ov[a] + d, 0.0f);
    }
    for_kv_runs(kv, 1, layer, kvh, 0, max_keys, kKeyTile, [&](int64_t j0, int64_t count, const uint8_t* rows) {
      const float* vr = as_f32(rows, count, tile);
      for (int64_t a = 0; a < nq; ++a) p_at[a] = sv[a] + j0;
      for_runs(j0, count,
               [&](int64_t a, int64_t m, int64_t c) { cpu::axpy_rows_multi(p_at + a, m, vr, d, c, d, ov + a); });
    });
  };
  // Last rows first: a task's cost grows with its row (it sees more keys), and the pool hands out
  // about 4 chunks of consecutive tasks per thread in order. In row order the largest chunk came
  // last and one thread waited for it (with 2 threads and 8 chunks: 36 vs the ideal 32 units of a
  // causal prefill's attention); largest first, the greedy claims come out even.
  const int64_t n_tasks = n_blocks * kv.n_kv_heads;
  pool.parallel_for(n_tasks, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) task(n_tasks - 1 - t);
  });
}

}  // namespace

void CpuBackend::attention(const KvCacheView& kv, int64_t layer, const float* q, int64_t n, int64_t n_heads,
                           int64_t pos0, float* out) {
  if (pos0 < 0) fail("kv cache: negative position {}", pos0);
  check_kv_map(kv, pos0 + n, "attention");
  const int64_t d = kv.head_dim, group = n_heads / kv.n_kv_heads;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  const bool ref = reference_;
  // Head vectors are independent: a range of them on any thread gives the same result.
  auto for_heads = [&](const std::function<void(int64_t, int64_t)>& fn) {
    if (ref) {
      fn(0, n * n_heads);
    } else {
      impl_->pool.parallel_for(n * n_heads, 64, fn);
    }
  };
  // q4r keeps H k and H v: scores need H q (Hq . Hk = q . k), and the weighted sum of the H v is H
  // times the one of the v, so the output is rotated back at the end (H H = I).
  const bool rotated = kv.dtype == KvDtype::kQ4R;
  if (rotated) {
    impl_->rot_q.assign(q, q + n * n_heads * d);
    float* rq = impl_->rot_q.data();
    for_heads([&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) cpu::hadamard(rq + r * d, d, ref ? cpu::Isa::kScalar : cpu::Isa::kAuto);
    });
    q = rq;
  }
  if (ref) {
    // Plain loops over rows converted one at a time (dequantize_kv_row), double dot products.
    for (int64_t task = 0; task < n * n_heads; ++task) {
      const int64_t i = task / n_heads, h = task % n_heads, kvh = h / group;
      const int64_t n_keys = pos0 + i + 1;
      const float* qv = q + (i * n_heads + h) * d;
      float* o = out + (i * n_heads + h) * d;
      std::vector<float>& sc = scratch(static_cast<size_t>(n_keys), 0);
      std::vector<float>& rowbuf = scratch(static_cast<size_t>(d), 1);
      float m = -INFINITY;
      for (int64_t j = 0; j < n_keys; ++j) {
        const float* kr = kv_row(kv, 0, layer, kvh, j, rowbuf.data());
        double acc = 0.0;
        for (int64_t c = 0; c < d; ++c) acc += static_cast<double>(qv[c]) * kr[c];
        sc[static_cast<size_t>(j)] = static_cast<float>(acc) * scale;
        m = std::max(m, sc[static_cast<size_t>(j)]);
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < n_keys; ++j) {
        sc[static_cast<size_t>(j)] = std::exp(sc[static_cast<size_t>(j)] - m);
        sum += sc[static_cast<size_t>(j)];
      }
      std::fill(o, o + d, 0.0f);
      for (int64_t j = 0; j < n_keys; ++j) {
        const float p = sc[static_cast<size_t>(j)] / sum;
        const float* vr = kv_row(kv, 1, layer, kvh, j, rowbuf.data());
        for (int64_t c = 0; c < d; ++c) o[c] += p * vr[c];
      }
    }
  } else if (kv.dtype == KvDtype::kF32 && n == 1) {
    // One decode row over fp32 keys read in place: a task per head (more parallel than per KV head).
    impl_->pool.parallel_for(n_heads, 1, [&](int64_t b, int64_t e) {
      for (int64_t h = b; h < e; ++h) attention_row_f32(kv, layer, q + h * d, h / group, pos0 + 1, scale, out + h * d);
    });
  } else {
    attention_blocked(impl_->pool, kv, layer, q, n, n_heads, pos0, out);
  }
  if (rotated) {
    for_heads([&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) cpu::hadamard(out + r * d, d, ref ? cpu::Isa::kScalar : cpu::Isa::kAuto);
    });
  }
}

void CpuBackend::relu2_mul(const float* gate, const float* up, int64_t count, float* out) {
  if (!reference_) {
    cpu::relu2_mul(gate, up, count, out);
    return;
  }
  for (int64_t i = 0; i < count; ++i) {
    const float g = std::max(gate[i], 0.0f);
    out[i] = (g * g) * up[i];
  }
}

void CpuBackend::add(float* x, const float* y, int64_t count) {
  auto range = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) x[i] += y[i];
  };
  // Element-wise, so any split gives the same result; below 16 Ki floats (a few decode rows) the
  // dispatch would cost more than the adds.
  if (reference_) {
    range(0, count);
  } else {
    impl_->pool.parallel_for(count, int64_t{1} << 14, range);
  }
}

namespace {

// lm_head on an add_dense_int8 handle (backend.h gives the formula).
void lm_head_int8(CpuBackend::Impl& im, bool reference_, const DenseWeight& w, const float* x, int64_t n,
                  float* logits) {
  const int64_t rows = w.t.rows(), cols = w.t.cols(), stride = w.stride;
  // Activations: per-row absmax int8 exactly as BitLinear (the same scalar code on both paths, so
  // fast and reference see identical codes); padding columns stay 0 (their weights are 0 anyway).
  im.head_xq.assign(static_cast<size_t>(n * stride), 0);
  im.head_xs.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    int32_t unused;
    ref_quantize_row(x + i * cols, cols, im.head_xq.data() + i * stride, &im.head_xs[static_cast<size_t>(i)], &unused);
  }
  if (reference_) {
    for (int64_t r = 0; r < rows; ++r) {
      const int8_t* q = w.q.data() + r * stride;
      for (int64_t i = 0; i < n; ++i) {
        const int8_t* xq = im.head_xq.data() + i * stride;
        int32_t acc = 0;
        for (int64_t c = 0; c < cols; ++c) acc += static_cast<int32_t>(q[c]) * static_cast<int32_t>(xq[c]);
        logits[i * rows + r] = (static_cast<float>(acc) / im.head_xs[static_cast<size_t>(i)]) * w.d[static_cast<size_t>(r)];
      }
    }
    return;
  }
  if (cpu::active_isa() == cpu::Isa::kAvx512) {
    im.head_xu.resize(static_cast<size_t>(n * stride));
    for (size_t k = 0; k < im.head_xu.size(); ++k)
      im.head_xu[k] = static_cast<uint8_t>(static_cast<int32_t>(im.head_xq[k]) + 128);
    const uint8_t* xu = im.head_xu.data();
    im.pool.parallel_for(rows, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int8_t* q = w.q.data() + r * stride;
        const int32_t off = 128 * w.qsum[static_cast<size_t>(r)];
        for (int64_t i = 0; i < n; ++i) {
          const int32_t acc = engine_simd::u8i8_dot_avx512(xu + i * stride, q, stride) - off;
          logits[i * rows + r] =
              (static_cast<float>(acc) / im.head_xs[static_cast<size_t>(i)]) * w.d[static_cast<size_t>(r)];
        }
      }
    });
    return;
  }
  im.pool.parallel_for(rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int8_t* q = w.q.data() + r * stride;
      for (int64_t i = 0; i < n; ++i) {
        const int8_t* xq = im.head_xq.data() + i * stride;
        int32_t acc = 0;
        for (int64_t c = 0; c < stride; ++c) acc += static_cast<int32_t>(q[c]) * static_cast<int32_t>(xq[c]);
        logits[i * rows + r] = (static_cast<float>(acc) / im.head_xs[static_cast<size_t>(i)]) * w.d[static_cast<size_t>(r)];
      }
    }
  });
}

}  // namespace

void CpuBackend::lm_head(WeightHandle wh, const float* x, int64_t n, float* logits) {
  const DenseWeight& dwt = impl_->dw(wh);
  if (dwt.int8) {
    lm_head_int8(*impl_, reference_, dwt, x, n, logits);
    return;
  }
  const Tensor& t = dwt.t;
  const int64_t rows = t.rows(), cols = t.cols();
  if (!reference_ && t.packing == Packing::kBF16 && cpu::active_isa() == cpu::Isa::kAvx512 &&
      reinterpret_cast<uintptr_t>(t.data.data()) % 2 == 0) {
    // bf16 rows read in place: no conversion pass over the (largest) matrix of a decode step.
    const uint16_t* w = reinterpret_cast<const uint16_t*>(t.data.data());
    impl_->pool.parallel_for(rows, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t i = 0; i < n; ++i)
          logits[i * rows + r] = engine_simd::bf16_dot_avx512(w + r * cols, x + i * cols, cols);
    });
    return;
  }
  auto range = [&](int64_t r0, int64_t r1) {
    std::vector<float>& w = scratch(static_cast<size_t>(cols), 2);
    for (int64_t r = r0; r < r1; ++r) {
      dense_row_to_f32(t, r, w.data());
      for (int64_t i = 0; i < n; ++i) {
        const float* xi = x + i * cols;
        float v;
        if (reference_) {
          double acc = 0.0;
          for (int64_t c = 0; c < cols; ++c) acc += static_cast<double>(w[static_cast<size_t>(c)]) * xi[c];
          v = static_cast<float>(acc);
        } else {
          v = cpu::dot(w.data(), xi, cols);
        }
        logits[i * rows + r] = v;
      }
    }
  };
  if (reference_) {
    range(0, rows);
  } else {
    impl_->pool.parallel_for(rows, 64, range);
  }
}

}  // namespace onebit
