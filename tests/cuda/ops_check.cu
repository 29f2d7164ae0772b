// Checks the forward-pass kernels of src/kernels/cuda/ops_cuda.h against plain host computations
// on fresh random inputs (outputs poisoned before every launch):
//  - ternary_gemm (int8 tensor cores) vs ternary_gemv_reference per token row: bit for bit;
//  - int8_gemv, embed_rows, relu2_mul, add_inplace, kv_store_rows, argmax: exact;
//  - rmsnorm_rows, rmsnorm_quantize_rows, rope_rows, dense_gemv, attention_rows: within fp32
//    rounding of a double-precision host reference (tolerances below, each justified);
//  - attention_decode (fused RoPE + KV store + attention + merge) vs the unfused launches, a
//    multi-sequence pass vs each row alone, a paged cache vs the contiguous one: bit for bit, for
//    every cache type (f32, f16, q8, q4r; kv_quant_check.cu checks the quantized rows and attention
//    over them against the CPU quantizer and a double-precision reference).
// Exit 0 = all pass, 1 = a mismatch or a CUDA error. Without a CUDA device: "SKIPPED: ..." and 0.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "check_util.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/ternary_gemv_cuda.h"

using namespace onebit::cuda;

namespace {

// A KV cache's shape (data set by the caller): layers, kv heads, positions, head size, type.
KvView kv_shape(int64_t layers, int64_t n_kv, int64_t n_ctx, int64_t D, KvType t) {
  KvView kv;
  kv.type = t;
  kv.row_bytes = kv_type_row_bytes(t, D);
  kv.n_layers = layers;
  kv.n_kv_heads = n_kv;
  kv.n_ctx = n_ctx;
  kv.head_dim = D;
  return kv;
}
KvView kv_shape(int64_t layers, int64_t n_kv, int64_t n_ctx, int64_t D, bool f16) {
  return kv_shape(layers, n_kv, n_ctx, D, f16 ? KvType::kF16 : KvType::kF32);
}

const char* type_name(KvType t) {
  switch (t) {
    case KvType::kF32: return " f32";
    case KvType::kF16: return " f16";
    case KvType::kQ8: return " q8";
    case KvType::kQ4R: return " q4r";
  }
  return " ?";
}

// `rows` valid random cache rows of type t (f32 / f16: N(0, 1) values; q8: codes in [-127, 127]
// and a positive scale; q4r: codes in [-7, 7] (nibbles 1..15) and positive group scales), for the
// checks that compare two paths over the same bytes. kv_quant_check.cu checks the quantizer.
std::vector<uint8_t> random_rows(KvType t, int64_t D, size_t rows) {
  const size_t rb = static_cast<size_t>(kv_type_row_bytes(t, D));
  std::vector<uint8_t> out(rows * rb, 0);
  std::uniform_real_distribution<float> scale(0.002f, 0.05f);
  for (size_t r = 0; r < rows; ++r) {
    uint8_t* row = &out[r * rb];
    if (t == KvType::kF32 || t == KvType::kF16) {
      const std::vector<float> f = randn(static_cast<size_t>(D));
      for (int64_t d = 0; d < D; ++d) {
        if (t == KvType::kF32) {
          std::memcpy(row + 4 * d, &f[static_cast<size_t>(d)], 4);
        } else {
          const __half h = __float2half_rn(f[static_cast<size_t>(d)]);
          std::memcpy(row + 2 * d, &h, 2);
        }
      }
    } else if (t == KvType::kQ8) {
      std::uniform_int_distribution<int> code(-127, 127);
      for (int64_t d = 0; d < D; ++d) row[d] = static_cast<uint8_t>(static_cast<int8_t>(code(rng)));
      const float s = scale(rng);
      std::memcpy(row + (D + 3) / 4 * 4, &s, 4);
    } else {
      std::uniform_int_distribution<int> nib(1, 15);
      for (int64_t b = 0; b < D / 2; ++b) row[b] = static_cast<uint8_t>(nib(rng) | (nib(rng) << 4));
      for (int64_t g = 0; g < D / std::min<int64_t>(32, D); ++g) {
        const float s = 18.0f * scale(rng);
        std::memcpy(row + D / 2 + 4 * g, &s, 4);
      }
    }
  }
  return out;
}

// Host quantization (the documented formula).
void quantize_host(const float* x, int64_t cols, int64_t stride, int8_t* q, float* s, int32_t* sum) {
  float m = 0;
  for (int64_t c = 0; c < cols; ++c) m = std::max(m, std::fabs(x[c]));
  *s = 127.0f / std::max(m, 1e-5f);
  int32_t t = 0;
  for (int64_t c = 0; c < stride; ++c) {
    int v = 0;
    if (c < cols) v = static_cast<int>(std::clamp(std::nearbyint(x[c] * *s), -128.0f, 127.0f));
    q[c] = static_cast<int8_t>(v);
    t += v;
  }
  *sum = t;
}

// ---- ternary_gemm vs the reference GEMV, bit for bit ----
void check_gemm(int64_t rows, int64_t cols, int64_t n) {
  std::uniform_int_distribution<int> code(-1, 1);
  std::vector<int8_t> codes(static_cast<size_t>(rows * cols));
  for (auto& c : codes) c = static_cast<int8_t>(code(rng));
  const std::vector<uint8_t> packed = repack_for_cuda(codes.data(), rows, cols);
  std::vector<float> rs(static_cast<size_t>(rows));
  for (auto& r : rs) r = 0.5f + std::uniform_real_distribution<float>(0, 1)(rng);
  const int64_t stride = cuda_act_len(cols);
  std::vector<int8_t> q(static_cast<size_t>(n * stride));
  std::vector<float> sc(static_cast<size_t>(n));
  std::vector<int32_t> sums(static_cast<size_t>(n));
  const std::vector<float> x = randn(static_cast<size_t>(n * cols));
  for (int64_t i = 0; i < n; ++i) quantize_host(&x[i * cols], cols, stride, &q[i * stride], &sc[i], &sums[i]);
  uint8_t* dw = dev(packed);
  float* drs = dev(rs);
  QuantActs qa{dev(q), dev(sc), dev(sums), stride};
  float* y = dev_poison<float>(static_cast<size_t>(n * rows));
  float* yr = dev_poison<float>(static_cast<size_t>(rows));
  CK(ternary_gemm(dw, drs, rows, cols, qa, n, y, nullptr));
  const std::vector<float> got = host(y, static_cast<size_t>(n * rows));
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    CK(ternary_gemv_reference(dw, drs, rows, cols, qa.codes + i * stride, qa.scales + i, yr, nullptr));
    const std::vector<float> want = host(yr, static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r)
      if (std::memcmp(&got[i * rows + r], &want[r], 4) != 0) ++bad;
  }
  expect(bad == 0, "ternary_gemm " + std::to_string(rows) + "x" + std::to_string(cols) + " n=" + std::to_string(n) +
                       ": " + std::to_string(bad) + " outputs differ from the reference");
  cudaFree(dw);
  cudaFree(drs);
  cudaFree(qa.codes);
  cudaFree(qa.scales);
  cudaFree(qa.sums);
  cudaFree(y);
  cudaFree(yr);
}

// ---- rmsnorm and rmsnorm+quantize ----
void check_norm(int64_t n, int64_t dim) {
  const std::vector<float> x = randn(static_cast<size_t>(n * dim), 3.0f), w = randn(static_cast<size_t>(dim));
  float* dx = dev(x);
  float* dwt = dev(w);
  float* y = dev_poison<float>(static_cast<size_t>(n * dim));
  CK(rmsnorm_rows(dx, dwt, n, dim, 1e-5f, y, nullptr));
  const std::vector<float> got = host(y, static_cast<size_t>(n * dim));
  // fp32 sum of squares in a different order than double: relative error ~1e-6 on the factor.
  double worst = 0;
  std::vector<float> ref(static_cast<size_t>(n * dim));
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t c = 0; c < dim; ++c) ss += double(x[i * dim + c]) * x[i * dim + c];
    const double r = 1.0 / std::sqrt(ss / double(dim) + 1e-5);
    for (int64_t c = 0; c < dim; ++c) {
      const double want = double(x[i * dim + c]) * r * w[c];
      ref[i * dim + c] = static_cast<float>(want);
      worst = std::max(worst, std::fabs(got[i * dim + c] - want) / (std::fabs(want) + 1e-3));
    }
  }
  expect(worst < 1e-5, "rmsnorm n=" + std::to_string(n) + " dim=" + std::to_string(dim) + ": rel err " + std::to_string(worst));
  // Quantize: with the kernel's own normalised values as input (w = nullptr) the codes must be
  // exactly the host formula's; with the norm fused, codes may move by one step only where the
  // value sits within rounding of a .5 boundary.
  const int64_t stride = cuda_act_len(dim);
  QuantActs qa{dev_poison<int8_t>(static_cast<size_t>(n * stride)), dev_poison<float>(static_cast<size_t>(n)),
               dev_poison<int32_t>(static_cast<size_t>(n)), stride};
  CK(rmsnorm_quantize_rows(y, nullptr, n, dim, 0.0f, qa, nullptr));
  std::vector<int8_t> q = host(qa.codes, static_cast<size_t>(n * stride)), hq(static_cast<size_t>(stride));
  std::vector<float> s = host(qa.scales, static_cast<size_t>(n));
  std::vector<int32_t> sum = host(qa.sums, static_cast<size_t>(n));
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    float hs;
    int32_t hsum;
    quantize_host(&got[i * dim], dim, stride, hq.data(), &hs, &hsum);
    if (std::memcmp(&hs, &s[i], 4) != 0 || hsum != sum[i]) ++bad;
    for (int64_t c = 0; c < stride; ++c) bad += hq[c] != q[i * stride + c];
  }
  expect(bad == 0, "quantize n=" + std::to_string(n) + " dim=" + std::to_string(dim) + ": " + std::to_string(bad) + " mismatches");
  CK(rmsnorm_quantize_rows(dx, dwt, n, dim, 1e-5f, qa, nullptr));
  q = host(qa.codes, static_cast<size_t>(n * stride));
  s = host(qa.scales, static_cast<size_t>(n));
  sum = host(qa.sums, static_cast<size_t>(n));
  int64_t moved = 0, far = 0, badsum = 0;
  for (int64_t i = 0; i < n; ++i) {
    float hs;
    int32_t hsum;
    quantize_host(&ref[i * dim], dim, stride, hq.data(), &hs, &hsum);
    if (std::fabs(hs - s[i]) > 1e-5 * hs) ++far;
    int32_t t = 0;
    for (int64_t c = 0; c < stride; ++c) {
      const int d = std::abs(int(hq[c]) - int(q[i * stride + c]));
      moved += d == 1;
      far += d > 1 || (c >= dim && q[i * stride + c] != 0);
      t += q[i * stride + c];
    }
    badsum += t != sum[i];
  }
  expect(far == 0 && badsum == 0 && moved <= 2 + n * dim / 1000,
         "rmsnorm_quantize n=" + std::to_string(n) + " dim=" + std::to_string(dim) + ": " + std::to_string(moved) +
             " codes one step off, " + std::to_string(far) + " far off, " + std::to_string(badsum) + " bad sums");
  cudaFree(dx);
  cudaFree(dwt);
  cudaFree(y);
  cudaFree(qa.codes);
  cudaFree(qa.scales);
  cudaFree(qa.sums);
}

// ---- attention (+ rope + kv_store) ----
void check_attention(int64_t n_heads, int64_t n_kv, int64_t D, int64_t n_ctx, int64_t pos0, int64_t n, bool f16) {
  const int64_t L = 2, layer = 1;
  KvView kv = kv_shape(L, n_kv, n_ctx, D, f16);
  const size_t kv_elems = static_cast<size_t>(2 * L * n_kv * n_ctx * D);
  // Earlier positions: random values written directly; the new n rows go through kv_store_rows.
  std::vector<float> kvf = randn(kv_elems);
  std::vector<uint16_t> kvh(kv_elems);
  for (size_t i = 0; i < kv_elems; ++i) {
    const __half h = __float2half_rn(kvf[i]);
    std::memcpy(&kvh[i], &h, 2);
    if (f16) kvf[i] = __half2float(h);
  }
  kv.data = f16 ? static_cast<void*>(dev(kvh)) : static_cast<void*>(dev(kvf));
  const std::vector<float> k = randn(static_cast<size_t>(n * n_kv * D)), v = randn(static_cast<size_t>(n * n_kv * D));
  std::vector<float> q = randn(static_cast<size_t>(n * n_heads * D));
  int32_t pos32 = static_cast<int32_t>(pos0);
  int32_t* dpos = dev(std::vector<int32_t>{pos32});
  float *dk = dev(k), *dv = dev(v), *dq = dev(q);
  CK(kv_store_rows(kv, layer, dk, dv, n, dpos, nullptr));
  auto off = [&](int which, int64_t h, int64_t p) {
    return static_cast<size_t>((((which * L + layer) * n_kv + h) * n_ctx + p) * D);
  };
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < n_kv; ++h)
      for (int64_t d = 0; d < D; ++d)
        for (int which = 0; which < 2; ++which) {
          float val = (which == 0 ? k : v)[static_cast<size_t>((i * n_kv + h) * D + d)];
          if (f16) val = __half2float(__float2half_rn(val));
          kvf[off(which, h, pos0 + i) + d] = val;
        }
  // kv_store wrote exactly those values.
  if (f16) {
    const std::vector<uint16_t> got = host(static_cast<uint16_t*>(kv.data), kv_elems);
    int64_t bad = 0;
    for (size_t i = 0; i < kv_elems; ++i) {
      const __half h = __float2half_rn(kvf[i]);
      uint16_t u;
      std::memcpy(&u, &h, 2);
      bad += got[i] != u;
    }
    expect(bad == 0, "kv_store f16: " + std::to_string(bad) + " values differ");
  } else {
    const std::vector<float> got = host(static_cast<float*>(kv.data), kv_elems);
    expect(std::memcmp(got.data(), kvf.data(), kv_elems * 4) == 0, "kv_store f32 differs");
  }
  const size_t sfl = attention_scratch_floats(n_ctx, n, n_heads, D);
  float* scratch = sfl ? dev_poison<float>(sfl) : nullptr;
  float* out = dev_poison<float>(static_cast<size_t>(n * n_heads * D));
  CK(attention_rows(kv, layer, dq, n, n_heads, dpos, scratch, out, nullptr));
  const std::vector<float> got = host(out, static_cast<size_t>(n * n_heads * D));
  // Reference in double. fp32 scores and an fp32 running softmax: relative error ~1e-6 per term.
  double worst = 0;
  const int64_t G = n_heads / n_kv;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < n_heads; ++h) {
      const int64_t hk = h / G, nk = pos0 + i + 1;
      std::vector<double> sc(static_cast<size_t>(nk));
      double m = -1e300;
      for (int64_t j = 0; j < nk; ++j) {
        double s = 0;
        for (int64_t d = 0; d < D; ++d) s += double(q[(i * n_heads + h) * D + d]) * kvf[off(0, hk, j) + d];
        sc[j] = s / std::sqrt(double(D));
        m = std::max(m, sc[j]);
      }
      double l = 0;
      for (auto& s : sc) l += (s = std::exp(s - m));
      for (int64_t d = 0; d < D; ++d) {
        double o = 0;
        for (int64_t j = 0; j < nk; ++j) o += sc[j] * kvf[off(1, hk, j) + d];
        o /= l;
        worst = std::max(worst, std::fabs(got[(i * n_heads + h) * D + d] - o) / (std::fabs(o) + 1e-2));
      }
    }
  expect(worst < 2e-4, "attention H=" + std::to_string(n_heads) + " Hkv=" + std::to_string(n_kv) + " D=" +
                           std::to_string(D) + " ctx=" + std::to_string(n_ctx) + " pos0=" + std::to_string(pos0) +
                           " n=" + std::to_string(n) + (f16 ? " f16" : " f32") + ": rel err " + std::to_string(worst));
  // RoPE on q against the host formula with the same tables.
  const int64_t half = D / 2;
  std::vector<float> ct(static_cast<size_t>(n_ctx * half)), st(static_cast<size_t>(n_ctx * half));
  for (int64_t p = 0; p < n_ctx; ++p)
    for (int64_t j = 0; j < half; ++j) {
      const double a = double(p) * std::pow(10000.0, -2.0 * double(j) / double(D));
      ct[p * half + j] = float(std::cos(a));
      st[p * half + j] = float(std::sin(a));
    }
  float *dct = dev(ct), *dst = dev(st);
  CK(rope_rows(dq, n, n_heads, D, dct, dst, dpos, nullptr));
  const std::vector<float> rq = host(dq, q.size());
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < n_heads; ++h)
      for (int64_t j = 0; j < half; ++j) {
        const float* v0 = &q[(i * n_heads + h) * D];
        const float c = ct[(pos0 + i) * half + j], s = st[(pos0 + i) * half + j];
        const float a = v0[j] * c - v0[j + half] * s, b = v0[j + half] * c + v0[j] * s;
        const float* g = &rq[(i * n_heads + h) * D];
        // fp32 with possible FMA contraction on either side: a few ulps.
        bad += std::fabs(g[j] - a) > 1e-6f * (std::fabs(a) + 1) || std::fabs(g[j + half] - b) > 1e-6f * (std::fabs(b) + 1);
      }
  expect(bad == 0, "rope: " + std::to_string(bad) + " values off");
  cudaFree(kv.data);
  cudaFree(dpos);
  cudaFree(dk);
  cudaFree(dv);
  cudaFree(dq);
  cudaFree(scratch);
  cudaFree(out);
  cudaFree(dct);
  cudaFree(dst);
}

// ---- LM heads ----
void check_dense(DenseType type, int64_t rows, int64_t cols, int64_t n) {
  const std::vector<float> wf = randn(static_cast<size_t>(rows * cols)), x = randn(static_cast<size_t>(n * cols));
  std::vector<float> wv(wf.size());
  void* dw = nullptr;
  if (type == DenseType::kF32) {
    wv = wf;
    dw = dev(wf);
  } else {
    std::vector<uint16_t> h(wf.size());
    for (size_t i = 0; i < wf.size(); ++i) {
      if (type == DenseType::kF16) {
        const __half v = __float2half_rn(wf[i]);
        std::memcpy(&h[i], &v, 2);
        wv[i] = __half2float(v);
      } else {
        const __nv_bfloat16 v = __float2bfloat16_rn(wf[i]);
        std::memcpy(&h[i], &v, 2);
        wv[i] = __bfloat162float(v);
      }
    }
    dw = dev(h);
  }
  float* dx = dev(x);
  float* out = dev_poison<float>(static_cast<size_t>(n * rows));
  CK(dense_gemv(dw, type, rows, cols, dx, n, out, nullptr));
  const std::vector<float> got = host(out, static_cast<size_t>(n * rows));
  double worst = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0, sa = 0;
      for (int64_t c = 0; c < cols; ++c) {
        s += double(wv[r * cols + c]) * x[i * cols + c];
        sa += std::fabs(double(wv[r * cols + c]) * x[i * cols + c]);
      }
      worst = std::max(worst, std::fabs(got[i * rows + r] - s) / (sa + 1e-30));
    }
  // fp32 accumulation of `cols` products: error <= ~cols * 2^-24 * sum|terms|, far less in practice.
  expect(worst < 1e-6 * std::sqrt(double(cols)) + 1e-7,
         "dense_gemv type " + std::to_string(int(type)) + " " + std::to_string(rows) + "x" + std::to_string(cols) +
             " n=" + std::to_string(n) + ": err/sum|terms| " + std::to_string(worst));
  if (n >= 2) {
    // One row alone (decode: on sm_90 the streaming kernel for 16-bit weights) gives the bits of the
    // same row in a pass of several.
    float* one = dev_poison<float>(static_cast<size_t>(rows));
    CK(dense_gemv(dw, type, rows, cols, dx, 1, one, nullptr));
    const std::vector<float> alone = host(one, static_cast<size_t>(rows));
    int64_t differ = 0;
    for (int64_t r = 0; r < rows; ++r)
      if (std::memcmp(&alone[r], &got[r], 4) != 0) ++differ;
    expect(differ == 0, "dense_gemv type " + std::to_string(int(type)) + " " + std::to_string(rows) + "x" +
                            std::to_string(cols) + ": one row alone differs from the pass of " + std::to_string(n) +
                            " in " + std::to_string(differ) + " outputs");
    cudaFree(one);
  }
  cudaFree(dw);
  cudaFree(dx);
  cudaFree(out);
}

void check_int8_head(int64_t rows, int64_t cols, int64_t n) {
  const int64_t stride = cuda_act_len(cols);
  std::uniform_int_distribution<int> code(-127, 127);
  std::vector<int8_t> w(static_cast<size_t>(rows * stride), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) w[r * stride + c] = static_cast<int8_t>(code(rng));
  std::vector<float> d(static_cast<size_t>(rows));
  for (auto& v : d) v = std::uniform_real_distribution<float>(0.001f, 0.02f)(rng);
  const std::vector<float> x = randn(static_cast<size_t>(n * cols));
  std::vector<int8_t> q(static_cast<size_t>(n * stride));
  std::vector<float> s(static_cast<size_t>(n));
  std::vector<int32_t> sums(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) quantize_host(&x[i * cols], cols, stride, &q[i * stride], &s[i], &sums[i]);
  int8_t* dwq = dev(w);
  float* dd = dev(d);
  QuantActs qa{dev(q), dev(s), dev(sums), stride};
  float* out = dev_poison<float>(static_cast<size_t>(n * rows));
  CK(int8_gemv(dwq, dd, rows, cols, qa, n, out, nullptr));
  const std::vector<float> got = host(out, static_cast<size_t>(n * rows));
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < rows; ++r) {
      int64_t acc = 0;
      for (int64_t c = 0; c < cols; ++c) acc += int64_t(w[r * stride + c]) * q[i * stride + c];
      const float want = (static_cast<float>(acc) / s[i]) * d[r];
      bad += std::memcmp(&want, &got[i * rows + r], 4) != 0;
    }
  expect(bad == 0, "int8_gemv " + std::to_string(rows) + "x" + std::to_string(cols) + " n=" + std::to_string(n) + ": " +
                       std::to_string(bad) + " differ");
  cudaFree(dwq);
  cudaFree(dd);
  cudaFree(qa.codes);
  cudaFree(qa.scales);
  cudaFree(qa.sums);
  cudaFree(out);
}

void check_small_ops() {
  // embed (bf16 table), relu2_mul, add, argmax (with ties).
  const int64_t rows = 300, cols = 72, n = 5;
  std::vector<uint16_t> table(static_cast<size_t>(rows * cols));
  for (auto& t : table) {
    const __nv_bfloat16 b = __float2bfloat16_rn(std::normal_distribution<float>(0, 1)(rng));
    std::memcpy(&t, &b, 2);
  }
  const std::vector<int32_t> ids = {0, 299, 17, 17, 150};
  uint16_t* dt = dev(table);
  int32_t* di = dev(ids);
  float* x = dev_poison<float>(static_cast<size_t>(n * cols));
  CK(embed_rows(dt, DenseType::kBF16, cols, di, n, x, nullptr));
  const std::vector<float> got = host(x, static_cast<size_t>(n * cols));
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < cols; ++c) {
      const float want = std::bit_cast<float>(uint32_t(table[ids[i] * cols + c]) << 16);
      bad += std::memcmp(&want, &got[i * cols + c], 4) != 0;
    }
  expect(bad == 0, "embed_rows bf16: " + std::to_string(bad) + " differ");
  const int64_t count = 100003;
  const std::vector<float> g = randn(count), u = randn(count);
  float *dg = dev(g), *du = dev(u), *o = dev_poison<float>(count);
  CK(relu2_mul(dg, du, count, o, nullptr));
  std::vector<float> r = host(o, count);
  bad = 0;
  for (int64_t i = 0; i < count; ++i) {
    const float gg = std::max(g[i], 0.0f), want = (gg * gg) * u[i];
    bad += std::memcmp(&want, &r[i], 4) != 0;
  }
  expect(bad == 0, "relu2_mul: " + std::to_string(bad) + " differ");
  CK(add_inplace(dg, du, count, nullptr));
  r = host(dg, count);
  bad = 0;
  for (int64_t i = 0; i < count; ++i) {
    const float want = g[i] + u[i];
    bad += std::memcmp(&want, &r[i], 4) != 0;
  }
  expect(bad == 0, "add_inplace: " + std::to_string(bad) + " differ");
  for (int trial = 0; trial < 4; ++trial) {
    const int64_t len = trial == 0 ? 1 : (trial == 1 ? 4096 : 128256);
    std::vector<float> l = randn(static_cast<size_t>(len));
    if (trial == 3) {  // ties: the lowest index wins
      const float big = 100.0f;
      l[77777] = big;
      l[5000] = big;
      l[100000] = big;
    }
    float* dl = dev(l);
    int32_t* res = dev_poison<int32_t>(1);
    CK(argmax(dl, len, res, nullptr));
    const int32_t want = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    expect(host(res, 1)[0] == want, "argmax len " + std::to_string(len));
    cudaFree(dl);
    cudaFree(res);
  }
  {  // several rows at once
    const int64_t rows = 37, len = 128256;
    std::vector<float> l = randn(static_cast<size_t>(rows * len));
    l[5 * len + 9] = l[5 * len + 100] = 50.0f;  // a tie in row 5
    float* dl = dev(l);
    int32_t* res = dev_poison<int32_t>(static_cast<size_t>(rows));
    CK(argmax(dl, len, res, nullptr, rows));
    const std::vector<int32_t> got = host(res, static_cast<size_t>(rows));
    int64_t bad = 0;
    for (int64_t r = 0; r < rows; ++r)
      bad += got[static_cast<size_t>(r)] !=
             static_cast<int32_t>(std::max_element(l.begin() + r * len, l.begin() + (r + 1) * len) - (l.begin() + r * len));
    expect(bad == 0 && got[5] == 9, "argmax, " + std::to_string(rows) + " rows: " + std::to_string(bad) + " differ");
    cudaFree(dl);
    cudaFree(res);
  }
  cudaFree(dt);
  cudaFree(di);
  cudaFree(x);
  cudaFree(dg);
  cudaFree(du);
  cudaFree(o);
}

// The fused kernels against the unfused sequences they replace: bit for bit.
void check_fused(int64_t n, int64_t dim) {
  const int64_t stride = cuda_act_len(dim);
  const std::vector<float> x = randn(static_cast<size_t>(n * dim), 2.0f), y = randn(static_cast<size_t>(n * dim)),
                           w = randn(static_cast<size_t>(dim));
  auto quant = [&] {
    return QuantActs{dev_poison<int8_t>(static_cast<size_t>(n * stride)), dev_poison<float>(static_cast<size_t>(n)),
                     dev_poison<int32_t>(static_cast<size_t>(n)), stride};
  };
  auto same = [&](const QuantActs& a, const QuantActs& b) {
    return host(a.codes, static_cast<size_t>(n * stride)) == host(b.codes, static_cast<size_t>(n * stride)) &&
           host(a.sums, static_cast<size_t>(n)) == host(b.sums, static_cast<size_t>(n)) &&
           std::memcmp(host(a.scales, static_cast<size_t>(n)).data(), host(b.scales, static_cast<size_t>(n)).data(),
                       static_cast<size_t>(n) * 4) == 0;
  };
  float *x1 = dev(x), *x2 = dev(x), *dy = dev(y), *dw = dev(w);
  QuantActs a = quant(), b = quant();
  CK(add_rmsnorm_quantize_rows(x1, dy, dw, n, dim, 1e-5f, a, nullptr));
  CK(add_inplace(x2, dy, n * dim, nullptr));
  CK(rmsnorm_quantize_rows(x2, dw, n, dim, 1e-5f, b, nullptr));
  expect(host(x1, x.size()) == host(x2, x.size()) && same(a, b), "add_rmsnorm_quantize dim " + std::to_string(dim));
  float* g = dev(x);
  float* h = dev_poison<float>(x.size());
  CK(relu2_rmsnorm_quantize_rows(g, dy, dw, n, dim, 1e-5f, a, nullptr));
  CK(relu2_mul(g, dy, n * dim, h, nullptr));
  CK(rmsnorm_quantize_rows(h, dw, n, dim, 1e-5f, b, nullptr));
  expect(same(a, b), "relu2_rmsnorm_quantize dim " + std::to_string(dim));
  for (float* p : {x1, x2, dy, dw, g, h}) cudaFree(p);
  for (QuantActs* p : {&a, &b}) {
    cudaFree(p->codes);
    cudaFree(p->scales);
    cudaFree(p->sums);
  }
}

void check_gemv_multi() {
  const int64_t cols = 2560, rows[3] = {2560, 640, 640};
  std::uniform_int_distribution<int> code(-1, 1);
  std::vector<uint8_t*> ws;
  std::vector<float*> rss, ya, yb;
  GemvMatrix mats[3];
  for (int m = 0; m < 3; ++m) {
    std::vector<int8_t> c(static_cast<size_t>(rows[m] * cols));
    for (auto& v : c) v = static_cast<int8_t>(code(rng));
    ws.push_back(dev(repack_for_cuda(c.data(), rows[m], cols)));
    rss.push_back(dev(randn(static_cast<size_t>(rows[m]))));
    ya.push_back(dev_poison<float>(static_cast<size_t>(rows[m])));
    yb.push_back(dev_poison<float>(static_cast<size_t>(rows[m])));
    mats[m] = GemvMatrix{ws[m], rss[m], rows[m], ya[m]};
  }
  const std::vector<float> x = randn(static_cast<size_t>(cols));
  const int64_t stride = cuda_act_len(cols);
  std::vector<int8_t> q(static_cast<size_t>(stride));
  float s;
  int32_t sum;
  quantize_host(x.data(), cols, stride, q.data(), &s, &sum);
  int8_t* dq = dev(q);
  float* ds = dev(std::vector<float>{s});
  int32_t* dsum = dev(std::vector<int32_t>{sum});
  for (bool pdl : {false, true}) {
    CK(ternary_gemv_multi(mats, 3, cols, dq, ds, dsum, nullptr, GemvConfig{2, pdl}));
    for (int m = 0; m < 3; ++m) CK(ternary_gemv(ws[m], rss[m], rows[m], cols, dq, ds, dsum, yb[m], nullptr));
    for (int m = 0; m < 3; ++m)
      expect(std::memcmp(host(ya[m], static_cast<size_t>(rows[m])).data(), host(yb[m], static_cast<size_t>(rows[m])).data(),
                         static_cast<size_t>(rows[m]) * 4) == 0,
             "ternary_gemv_multi part " + std::to_string(m));
  }
  for (int m = 0; m < 3; ++m) {
    cudaFree(ws[m]);
    cudaFree(rss[m]);
    cudaFree(ya[m]);
    cudaFree(yb[m]);
  }
  cudaFree(dq);
  cudaFree(ds);
  cudaFree(dsum);
}

void check_rope_kv(int64_t H, int64_t Hkv, int64_t D, int64_t n, KvType t) {
  const KvView kv = kv_shape(2, Hkv, 64, D, t);
  const size_t elems = static_cast<size_t>(2 * 2 * Hkv * 64 * kv.row_bytes);
  void* kv1 = dev_poison<uint8_t>(elems);
  void* kv2 = dev_poison<uint8_t>(elems);
  const std::vector<float> q = randn(static_cast<size_t>(n * H * D)), k = randn(static_cast<size_t>(n * Hkv * D)),
                           v = randn(static_cast<size_t>(n * Hkv * D));
  std::vector<float> ct = randn(static_cast<size_t>(64 * D / 2)), st = randn(static_cast<size_t>(64 * D / 2));
  float *q1 = dev(q), *q2 = dev(q), *k1 = dev(k), *k2 = dev(k), *dv = dev(v), *dc = dev(ct), *ds = dev(st);
  int32_t* pos = dev(std::vector<int32_t>{7});
  KvView a = kv, b = kv;
  a.data = kv1;
  b.data = kv2;
  CK(rope_kv_store_rows(q1, k1, dv, n, H, a, 1, dc, ds, pos, nullptr));
  CK(rope_rows(q2, n, H, D, dc, ds, pos, nullptr));
  CK(rope_rows(k2, n, Hkv, D, dc, ds, pos, nullptr));
  CK(kv_store_rows(b, 1, k2, dv, n, pos, nullptr));
  expect(host(q1, q.size()) == host(q2, q.size()) && host(k1, k.size()) == host(k2, k.size()) &&
             host(static_cast<uint8_t*>(kv1), elems) == host(static_cast<uint8_t*>(kv2), elems),
         "rope_kv_store D " + std::to_string(D) + type_name(t));
  free_all(kv1, kv2, q1, q2, k1, k2, dv, dc, ds, pos);
}

// attention_decode (RoPE, KV store and attention in one kernel, then the merge) against
// rope_kv_store_rows + attention_rows on the same inputs: output, cache and (unrotated) q and k,
// bit for bit.
void check_attention_decode(int64_t H, int64_t Hkv, int64_t D, int64_t n_ctx, int64_t pos, KvType t) {
  const KvView kv = kv_shape(2, Hkv, n_ctx, D, t);
  const std::string what = "attention_decode H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv) + " D=" +
                           std::to_string(D) + " ctx=" + std::to_string(n_ctx) + " pos=" + std::to_string(pos) +
                           type_name(t);
  if (!attention_decode_fusable(kv, H)) {
    expect(false, what + ": not fusable");
    return;
  }
  const std::vector<uint8_t> cache = random_rows(t, D, static_cast<size_t>(2 * 2 * Hkv * n_ctx));
  auto fresh_cache = [&]() -> void* { return dev(cache); };
  const size_t bytes = cache.size();
  const std::vector<float> q = randn(static_cast<size_t>(H * D)), k = randn(static_cast<size_t>(Hkv * D)),
                           v = randn(static_cast<size_t>(Hkv * D));
  std::vector<float> ct(static_cast<size_t>(n_ctx * D / 2)), st(ct.size());
  for (size_t i = 0; i < ct.size(); ++i) {
    const double a = std::uniform_real_distribution<double>(-3.2, 3.2)(rng);
    ct[i] = float(std::cos(a));
    st[i] = float(std::sin(a));
  }
  float *dc = dev(ct), *ds = dev(st), *dv = dev(v);
  int32_t* dpos = dev(std::vector<int32_t>{static_cast<int32_t>(pos)});
  const size_t sfl = attention_scratch_floats(n_ctx, 1, H, D);
  // Reference: the unfused launches.
  KvView a = kv;
  a.data = fresh_cache();
  float *q1 = dev(q), *k1 = dev(k);
  float* scratch1 = sfl ? dev_poison<float>(sfl) : nullptr;
  float* out1 = dev_poison<float>(static_cast<size_t>(H * D));
  CK(rope_kv_store_rows(q1, k1, dv, 1, H, a, 1, dc, ds, dpos, nullptr));
  CK(attention_rows(a, 1, q1, 1, H, dpos, scratch1, out1, nullptr));
  const std::vector<float> want = host(out1, static_cast<size_t>(H * D));
  const std::vector<uint8_t> want_cache = host(static_cast<uint8_t*>(a.data), bytes);
  KvView b = kv;
  b.data = fresh_cache();
  float *q2 = dev(q), *k2 = dev(k);
  float* scratch2 = sfl ? dev_poison<float>(sfl) : nullptr;
  float* out2 = dev_poison<float>(static_cast<size_t>(H * D));
  CK(attention_decode(b, 1, q2, k2, dv, 1, H, dc, ds, dpos, nullptr, scratch2, out2, nullptr));
  expect(host(out2, static_cast<size_t>(H * D)) == want, what + ": output differs");
  expect(host(static_cast<uint8_t*>(b.data), bytes) == want_cache, what + ": cache differs");
  expect(host(q2, q.size()) == q && host(k2, k.size()) == k, what + ": q or k was modified");
  free_all(b.data, q2, k2, scratch2, out2);
  free_all(a.data, q1, k1, scratch1, out1, dc, ds, dv, dpos);
}

// A multi-sequence pass: sequence i has counts[i] consecutive rows (default: S sequences of one
// row), each sequence its own cache and positions (RowSeq; one_split on the rows of a sequence
// with several), through attention_decode (one row each only) and through rope_kv_store_rows +
// attention_rows, against each sequence run alone: outputs and caches bit for bit. Several rows of
// a sequence go to the tensor-core prefill kernel (fp16 caches) alone and in the pass, the single
// rows to the split kernels.
void check_attention_multi(int64_t H, int64_t Hkv, int64_t D, int64_t n_ctx, int64_t S, KvType t,
                           std::vector<int64_t> counts = {}) {
  if (counts.empty()) counts.assign(static_cast<size_t>(S), 1);
  S = static_cast<int64_t>(counts.size());
  int64_t N = 0;
  for (int64_t c : counts) N += c;
  const KvView kv = kv_shape(2, Hkv, n_ctx, D, t);
  const std::string what = "multi-sequence attention S=" + std::to_string(S) + " rows=" + std::to_string(N) +
                           " D=" + std::to_string(D) + " ctx=" + std::to_string(n_ctx) + type_name(t);
  const size_t rows_per_cache = static_cast<size_t>(2 * 2 * Hkv * n_ctx);
  const size_t bytes = rows_per_cache * static_cast<size_t>(kv.row_bytes);
  std::vector<std::vector<uint8_t>> caches;
  std::vector<int32_t> pos;  // each sequence's first position
  for (int64_t i = 0; i < S; ++i) {
    caches.push_back(random_rows(t, D, rows_per_cache));
    const int64_t last = n_ctx - counts[static_cast<size_t>(i)];
    pos.push_back(static_cast<int32_t>(std::uniform_int_distribution<int64_t>(0, last)(rng)));
  }
  pos[0] = 0;
  pos[static_cast<size_t>(S - 1)] = static_cast<int32_t>(n_ctx - counts.back());
  const std::vector<float> q = randn(static_cast<size_t>(N * H * D)), k = randn(static_cast<size_t>(N * Hkv * D)),
                           v = randn(static_cast<size_t>(N * Hkv * D));
  std::vector<float> ct(static_cast<size_t>(n_ctx * D / 2)), st(ct.size());
  for (size_t i = 0; i < ct.size(); ++i) {
    const double a = std::uniform_real_distribution<double>(-3.2, 3.2)(rng);
    ct[i] = float(std::cos(a));
    st[i] = float(std::sin(a));
  }
  float *dc = dev(ct), *ds = dev(st);
  const size_t hd = static_cast<size_t>(H * D), kd = static_cast<size_t>(Hkv * D);
  // Each sequence alone.
  std::vector<float> want(static_cast<size_t>(N) * hd);
  std::vector<std::vector<uint8_t>> want_cache;
  for (int64_t i = 0, r0 = 0; i < S; r0 += counts[static_cast<size_t>(i)], ++i) {
    const int64_t c = counts[static_cast<size_t>(i)];
    KvView a = kv;
    a.data = dev(caches[static_cast<size_t>(i)]);
    float* dq = dev(std::vector<float>(q.begin() + r0 * hd, q.begin() + (r0 + c) * hd));
    float* dk = dev(std::vector<float>(k.begin() + r0 * kd, k.begin() + (r0 + c) * kd));
    float* dv = dev(std::vector<float>(v.begin() + r0 * kd, v.begin() + (r0 + c) * kd));
    int32_t* dp = dev(std::vector<int32_t>{pos[static_cast<size_t>(i)]});
    const size_t sfl = attention_scratch_floats(n_ctx, c, H, D);
    float* scratch = sfl ? dev_poison<float>(sfl) : nullptr;
    float* out = dev_poison<float>(static_cast<size_t>(c) * hd);
    CK(rope_kv_store_rows(dq, dk, dv, c, H, a, 1, dc, ds, dp, nullptr));
    CK(attention_rows(a, 1, dq, c, H, dp, scratch, out, nullptr));
    const std::vector<float> o = host(out, static_cast<size_t>(c) * hd);
    std::copy(o.begin(), o.end(), want.begin() + r0 * static_cast<int64_t>(hd));
    want_cache.push_back(host(static_cast<uint8_t*>(a.data), bytes));
    free_all(a.data, dq, dk, dv, dp, scratch, out);
  }
  const bool one_row_each = N == S;
  for (bool fused : {true, false}) {
    if (fused && !one_row_each) continue;
    std::vector<RowSeq> rows;
    std::vector<void*> bufs;
    for (int64_t i = 0; i < S; ++i) {
      void* c = dev(caches[static_cast<size_t>(i)]);
      bufs.push_back(c);
      const int64_t cnt = counts[static_cast<size_t>(i)];
      for (int64_t j = 0; j < cnt; ++j)
        rows.push_back(RowSeq{c, nullptr, static_cast<int32_t>(pos[static_cast<size_t>(i)] + j), cnt > 1 ? 1 : 0});
    }
    RowSeq* drows = dev(rows);
    float *dq = dev(q), *dk = dev(k), *dv = dev(v);
    const size_t sfl = attention_scratch_floats(n_ctx, N, H, D, true);
    float* scratch = sfl ? dev_poison<float>(sfl) : nullptr;
    float* out = dev_poison<float>(static_cast<size_t>(N) * hd);
    KvView b = kv;
    b.data = nullptr;  // every row names its cache
    if (fused) {
      CK(attention_decode(b, 1, dq, dk, dv, N, H, dc, ds, nullptr, drows, scratch, out, nullptr));
    } else {
      CK(rope_kv_store_rows(dq, dk, dv, N, H, b, 1, dc, ds, nullptr, nullptr, drows));
      CK(attention_rows(b, 1, dq, N, H, nullptr, scratch, out, nullptr, drows));
    }
    const std::string w = what + (fused ? " (attention_decode)" : " (rope_kv_store_rows + attention_rows)");
    expect(host(out, static_cast<size_t>(N) * hd) == want, w + ": output differs from the sequences run alone");
    bool same_cache = true;
    for (int64_t i = 0; i < S; ++i)
      same_cache = same_cache && host(static_cast<uint8_t*>(bufs[static_cast<size_t>(i)]), bytes) ==
                                     want_cache[static_cast<size_t>(i)];
    expect(same_cache, w + ": a cache differs");
    for (void* p : bufs) cudaFree(p);
    free_all(drows, dq, dk, dv, scratch, out);
  }
  cudaFree(dc);
  cudaFree(ds);
}

// The same cache contiguous and paged (blocks of bs positions in a pool with spare blocks, in a
// shuffled order through a device block table): RoPE + KV store + attention give the same bits,
// for a decode row (attention_decode) and for prefill rows (rope_kv_store_rows + attention_rows),
// and the new rows land in the right slots; kv_copy_block copies the first n rows of a block.
void check_attention_paged(int64_t H, int64_t Hkv, int64_t D, int64_t n_ctx, int64_t bs, int64_t pos, int64_t n,
                           KvType t) {
  const int64_t L = 2, nb_seq = (n_ctx + bs - 1) / bs, nb = nb_seq + 3;
  const std::string what = "paged attention D=" + std::to_string(D) + " bs=" + std::to_string(bs) + " pos=" +
                           std::to_string(pos) + " n=" + std::to_string(n) + type_name(t);
  const size_t row = static_cast<size_t>(kv_type_row_bytes(t, D));
  // Contiguous cache bytes, random.
  const std::vector<uint8_t> flat = random_rows(t, D, static_cast<size_t>(2 * L * Hkv * n_ctx));
  std::vector<int32_t> table(static_cast<size_t>(nb_seq));
  std::vector<int32_t> perm(static_cast<size_t>(nb));
  for (int32_t i = 0; i < nb; ++i) perm[static_cast<size_t>(i)] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int64_t i = 0; i < nb_seq; ++i) table[static_cast<size_t>(i)] = perm[static_cast<size_t>(i)];
  std::vector<uint8_t> pool(static_cast<size_t>(2 * L * nb * Hkv * bs) * row, 0x5a);  // junk in unused slots
  auto flat_at = [&](int64_t w, int64_t l, int64_t h, int64_t p) { return (((w * L + l) * Hkv + h) * n_ctx + p) * row; };
  auto pool_at = [&](int64_t w, int64_t l, int64_t h, int64_t p) {
    const int64_t blk = table[static_cast<size_t>(p / bs)];
    return ((((w * L + l) * nb + blk) * Hkv + h) * bs + p % bs) * row;
  };
  for (int64_t w = 0; w < 2; ++w)
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t p = 0; p < n_ctx; ++p)
          std::memcpy(&pool[pool_at(w, l, h, p)], &flat[flat_at(w, l, h, p)], row);
  KvView a = kv_shape(L, Hkv, n_ctx, D, t), b = a;
  a.data = dev(flat);
  b.data = dev(pool);
  b.block_size = bs;
  b.n_blocks = nb;
  int32_t* dtable = dev(table);
  b.table = dtable;
  const std::vector<float> q = randn(static_cast<size_t>(n * H * D)), k = randn(static_cast<size_t>(n * Hkv * D)),
                           v = randn(static_cast<size_t>(n * Hkv * D));
  std::vector<float> ct(static_cast<size_t>(n_ctx * D / 2)), st(ct.size());
  for (size_t i = 0; i < ct.size(); ++i) {
    const double ang = std::uniform_real_distribution<double>(-3.2, 3.2)(rng);
    ct[i] = float(std::cos(ang));
    st[i] = float(std::sin(ang));
  }
  float *dc = dev(ct), *ds = dev(st), *dv = dev(v);
  int32_t* dpos = dev(std::vector<int32_t>{static_cast<int32_t>(pos)});
  const size_t sfl = attention_scratch_floats(n_ctx, n, H, D);
  std::vector<float> outs[2];
  for (int which = 0; which < 2; ++which) {
    const KvView& kv = which == 0 ? a : b;
    float *dq = dev(q), *dk = dev(k);
    float* scratch = sfl ? dev_poison<float>(sfl) : nullptr;
    float* out = dev_poison<float>(static_cast<size_t>(n * H * D));
    if (n == 1) {
      CK(attention_decode(kv, 1, dq, dk, dv, 1, H, dc, ds, dpos, nullptr, scratch, out, nullptr));
    } else {
      CK(rope_kv_store_rows(dq, dk, dv, n, H, kv, 1, dc, ds, dpos, nullptr));
      CK(attention_rows(kv, 1, dq, n, H, dpos, scratch, out, nullptr));
    }
    outs[which] = host(out, static_cast<size_t>(n * H * D));
    free_all(dq, dk, scratch, out);
  }
  expect(outs[0] == outs[1], what + ": output differs from the contiguous cache");
  const std::vector<uint8_t> fa = host(static_cast<uint8_t*>(a.data), flat.size()),
                             pb = host(static_cast<uint8_t*>(b.data), pool.size());
  int64_t bad = 0;
  for (int64_t w = 0; w < 2; ++w)
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t p = pos; p < pos + n; ++p)
        bad += std::memcmp(&fa[flat_at(w, 1, h, p)], &pb[pool_at(w, 1, h, p)], row) != 0;
  expect(bad == 0, what + ": " + std::to_string(bad) + " stored rows differ");
  // kv_copy_block: the first m rows of the sequence's first block into a spare block.
  const int64_t m = bs > 1 ? bs - 1 : 1;
  const int32_t spare = perm[static_cast<size_t>(nb - 1)];
  CK(kv_copy_block(b, table[0], spare, m, nullptr));
  const std::vector<uint8_t> pc = host(static_cast<uint8_t*>(b.data), pool.size());
  bad = 0;
  for (int64_t w = 0; w < 2; ++w)
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t slot = 0; slot < bs; ++slot) {
          const size_t src = ((((w * L + l) * nb + table[0]) * Hkv + h) * bs + slot) * row;
          const size_t dst = ((((w * L + l) * nb + spare) * Hkv + h) * bs + slot) * row;
          const bool copied = slot < m;
          bad += (std::memcmp(&pc[dst], &(copied ? pc : pb)[copied ? src : dst], row) != 0);
        }
  expect(bad == 0, what + ": kv_copy_block, " + std::to_string(bad) + " rows wrong");
  free_all(a.data, b.data, dtable, dc, ds, dv, dpos);
}

}  // namespace

// Every kernel and launch path once, on small shapes (small_checks: compute-sanitizer runs).
void check_small_set() {
  check_gemm(13, 300, 17);     // one chunk group: one slice
  check_gemm(640, 2560, 2);    // a small grid: 4 K slices
  check_gemm(2560, 2560, 512); // 2 slices
  check_gemm(6912, 2560, 256); // a large grid: one slice
  check_norm(3, 100);
  check_norm(3, 2560);
  for (bool f16 : {false, true}) {
    check_attention(8, 2, 64, 512, 300, 1, f16);   // decode rows, splits + merge
    check_attention(20, 5, 128, 512, 100, 37, f16);  // prompt rows (tensor cores for f16)
    check_attention(4, 2, 16, 64, 10, 5, f16);     // the generic kernel
  }
  check_attention(8, 8, 64, 256, 3, 70, true);     // tensor cores, G = 1
  check_attention(12, 4, 64, 200, 0, 2, true);     // G = 3: the split kernels
  for (DenseType t : {DenseType::kF32, DenseType::kF16, DenseType::kBF16}) {
    check_dense(t, 4096, 512, 1);
    check_dense(t, 257, 65, 3);
    check_dense(t, 1001, 4096, 2);
  }
  check_int8_head(77, 100, 3);
  check_int8_head(4099, 2560, 64);
  check_small_ops();
  check_fused(5, 2560);
  check_gemv_multi();
  for (KvType t : {KvType::kF32, KvType::kF16, KvType::kQ8, KvType::kQ4R}) {
    check_rope_kv(4, 2, 16, 3, t);
    check_attention_decode(8, 2, 64, 512, 200, t);
    check_attention_decode(20, 5, 128, 4096, 2047, t);
    check_attention_multi(8, 2, 64, 64, 3, t);
    check_attention_multi(16, 2, 64, 256, 0, t, {9, 7, 1});
    check_attention_paged(8, 2, 64, 512, 16, 33, 40, t);
    check_attention_paged(8, 2, 64, 512, 5, 200, 1, t);
  }
}

int main() {
  if (skip_without_device()) return 0;
  if (small_checks()) {
    check_small_set();
    std::printf("ops_check (small set): %s\n", failures == 0 ? "PASS" : "FAILED");
    return failures == 0 ? 0 : 1;
  }
  // GEMM: 2B-4T shapes at prefill/batch sizes, odd shapes, n around the 8/64 tile edges.
  const int64_t shapes[][2] = {{2560, 2560}, {640, 2560}, {6912, 2560}, {2560, 6912}, {8, 64},   {9, 65},
                               {13, 300},    {300, 13},   {100, 4097},  {24, 128},   {1, 1},    {17, 9000}};
  const int64_t ns[] = {2, 3, 8, 17, 64, 65, 130};
  for (auto& s : shapes)
    for (int64_t n : ns)
      if (s[0] * s[1] * n <= int64_t{2560} * 6912 * 130) check_gemm(s[0], s[1], n);
  check_gemm(2560, 2560, 512);
  for (int64_t dim : {1, 16, 64, 100, 512, 2560, 6912}) check_norm(3, dim);
  check_norm(64, 2560);
  // Attention: 2B-4T (20/5 x 128), default model (8/2 x 64), tiny goldens (4/2 x 16); decode with
  // splits (n = 1 at long contexts), prefill rows, fp32 and fp16 caches.
  for (bool f16 : {false, true}) {
    check_attention(20, 5, 128, 4096, 0, 1, f16);
    check_attention(20, 5, 128, 4096, 2047, 1, f16);
    check_attention(20, 5, 128, 4096, 4095, 1, f16);
    check_attention(20, 5, 128, 512, 100, 37, f16);
    check_attention(8, 2, 64, 512, 0, 130, f16);
    check_attention(8, 2, 64, 512, 300, 1, f16);
    check_attention(4, 2, 16, 64, 10, 5, f16);
    check_attention(4, 2, 16, 64, 63, 1, f16);
    check_attention(4, 4, 256, 300, 299, 1, f16);
    // Prompt rows on the tensor-core kernel (fp16 caches, head_dim 64/128, G = 1, 2, 4, 8): a long
    // prompt after earlier positions, a block's rows cut by the end, rows not a multiple of 64 / G.
    check_attention(20, 5, 128, 4096, 1000, 300, f16);
    check_attention(8, 8, 64, 256, 3, 70, f16);
    check_attention(16, 8, 128, 512, 0, 33, f16);
    check_attention(16, 2, 64, 512, 17, 9, f16);
    check_attention(8, 1, 128, 300, 250, 50, f16);
    check_attention(12, 4, 64, 200, 0, 2, f16);  // G = 3: the split kernels
  }
  for (DenseType t : {DenseType::kF32, DenseType::kF16, DenseType::kBF16}) {
    check_dense(t, 4096, 512, 1);
    check_dense(t, 1000, 2560, 9);
    check_dense(t, 257, 65, 3);  // unaligned rows: the scalar path
    check_dense(t, 20000, 2560, 2);  // the 2B-4T head width: several stages per block
    check_dense(t, 1001, 4096, 2);
    check_dense(t, 77, 8, 2);
    check_dense(t, 9, 5120, 2);
  }
  check_int8_head(4096, 512, 1);
  check_int8_head(1000, 2560, 10);
  check_int8_head(77, 100, 3);
  check_int8_head(4099, 2560, 64);  // n > 8: the tensor-core path, same bits
  check_int8_head(77, 100, 65);
  check_int8_head(1000, 2560, 130);
  check_small_ops();
  for (int64_t dim : {64, 512, 1280, 2560, 6912, 8192}) check_fused(5, dim);
  check_gemv_multi();
  // Every cache type: the paths compared with each other (kv_quant_check.cu checks the q8 / q4r
  // rows against the CPU quantizer and attention over them against a double-precision reference).
  for (KvType t : {KvType::kF32, KvType::kF16, KvType::kQ8, KvType::kQ4R}) {
    check_rope_kv(20, 5, 128, 9, t);
    check_rope_kv(4, 2, 16, 3, t);
  }
  for (KvType t : {KvType::kF32, KvType::kF16, KvType::kQ8, KvType::kQ4R}) {
    // 2B-4T (20/5 x 128) and the default model (8/2 x 64): one split, a few, all 32, last position.
    for (int64_t pos : {0, 5, 31, 32, 100, 1000, 2047, 4095}) check_attention_decode(20, 5, 128, 4096, pos, t);
    for (int64_t pos : {0, 63, 64, 200, 511}) check_attention_decode(8, 2, 64, 512, pos, t);
    check_attention_decode(8, 2, 64, 64, 40, t);
    check_attention_multi(20, 5, 128, 1024, 7, t);
    check_attention_multi(8, 2, 64, 512, 33, t);
    check_attention_multi(8, 2, 64, 64, 3, t);
    // Prompt chunks beside decode rows: each sequence's rows get what they get alone.
    check_attention_multi(20, 5, 128, 1024, 0, t, {5, 1, 70, 1, 17, 2});
    check_attention_multi(8, 2, 64, 512, 0, t, {1, 33, 1, 1, 130});
    check_attention_multi(16, 2, 64, 256, 0, t, {9, 7, 1});
    for (int64_t pos : {0, 15, 16, 100, 1000}) check_attention_paged(20, 5, 128, 1024, 16, pos, 1, t);
    check_attention_paged(8, 2, 64, 512, 16, 33, 40, t);
    check_attention_paged(8, 2, 64, 512, 5, 200, 1, t);
    check_attention_paged(4, 2, 16, 64, 7, 10, 5, t);  // the generic kernel (head size 16)
  }
  if (failures != 0) {
    std::printf("ops_check: %d FAILED\n", failures);
    return 1;
  }
  std::printf("ops_check: PASS\n");
  return 0;
}
