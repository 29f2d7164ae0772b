// Checks the quantized KV caches of the CUDA kernels (ops_cuda.h, KvType::kQ8 and kQ4R) against
// the engine's definition of them (engine/kv_quant.h) on fresh random inputs, outputs poisoned:
//  - rows stored by kv_store_rows, rope_kv_store_rows and attention_decode (its fused store) are,
//    byte for byte, quantize_kv_row of the same fp32 values (k after RoPE), including an all-zero
//    row, rows with an inf or a NaN, rows whose scale is subnormal, exact rounding ties and huge
//    values; no other row of the cache is touched;
//  - attention_rows (decode rows with the keys split, prefill rows in one split, the fast kernel at
//    head_dim 64 / 128 and the generic one at other sizes, GQA ratios 1 to 8, paged caches) and
//    attention_decode over such caches: within fp32 rounding of a double-precision reference over
//    the dequantized rows (dequantize_kv_row; for q4r with the exact Hadamard matrix around it);
//  - views the kernels cannot use are refused (q4r at head_dim 96, a wrong row size).
// Exit 0 = all pass, 1 = a mismatch or a CUDA error. Without a CUDA device: "SKIPPED: ..." and 0.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "check_util.h"
#include "engine/kv_quant.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"

using namespace onebit::cuda;
using onebit::KvDtype;

namespace {

KvDtype engine_type(KvType t) { return t == KvType::kQ8 ? KvDtype::kQ8 : KvDtype::kQ4R; }
std::string name(KvType t) { return t == KvType::kQ8 ? "q8" : "q4r"; }

// A cache of L layers, n_kv heads, n_ctx positions of head_dim D; paged when bs > 0 (a pool of
// n_ctx / bs + 3 blocks, the sequence's blocks in shuffled order).
struct Cache {
  KvView kv;
  std::vector<int32_t> table;  // host copy (empty: contiguous)
  int64_t rows = 0;            // rows in the pool
  int64_t row_index(int which, int64_t layer, int64_t head, int64_t pos) const {
    const int64_t bs = kv.block_size > 0 ? kv.block_size : kv.n_ctx;
    const int64_t blk = table.empty() ? pos / bs : table[static_cast<size_t>(pos / bs)];
    return (((which * kv.n_layers + layer) * kv.n_blocks + blk) * kv.n_kv_heads + head) * bs + pos % bs;
  }
};
Cache make_cache(KvType t, int64_t L, int64_t n_kv, int64_t n_ctx, int64_t D, int64_t bs) {
  Cache c;
  c.kv.type = t;
  c.kv.row_bytes = kv_type_row_bytes(t, D);
  c.kv.n_layers = L;
  c.kv.n_kv_heads = n_kv;
  c.kv.n_ctx = n_ctx;
  c.kv.head_dim = D;
  if (bs > 0) {
    const int64_t nb_seq = (n_ctx + bs - 1) / bs, nb = nb_seq + 3;
    std::vector<int32_t> perm(static_cast<size_t>(nb));
    for (int32_t i = 0; i < nb; ++i) perm[static_cast<size_t>(i)] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    c.table.assign(perm.begin(), perm.begin() + nb_seq);
    c.kv.block_size = bs;
    c.kv.n_blocks = nb;
    c.kv.table = dev(c.table);
    c.rows = 2 * L * nb * n_kv * bs;
  } else {
    c.rows = 2 * L * n_kv * n_ctx;
  }
  return c;
}

// n rows of D values for the store checks: N(0, s) with s varying per row, and special rows.
std::vector<float> test_rows(int64_t n, int64_t D) {
  std::vector<float> x(static_cast<size_t>(n * D));
  std::lognormal_distribution<float> sd(0.0f, 1.5f);
  for (int64_t r = 0; r < n; ++r) {
    const float s = sd(rng);
    std::normal_distribution<float> nd(0.0f, s);
    float* row = &x[static_cast<size_t>(r * D)];
    for (int64_t d = 0; d < D; ++d) row[d] = nd(rng);
    switch (r % 9) {
      case 1:  // all zero
        std::fill(row, row + D, 0.0f);
        break;
      case 2:  // an inf
        row[std::uniform_int_distribution<int64_t>(0, D - 1)(rng)] = (r & 1) ? INFINITY : -INFINITY;
        break;
      case 3:  // a NaN
        row[std::uniform_int_distribution<int64_t>(0, D - 1)(rng)] = std::numeric_limits<float>::quiet_NaN();
        break;
      case 4:  // tiny values: the scale is subnormal (or 0)
        for (int64_t d = 0; d < D; ++d) row[d] = std::ldexp(row[d] / s, -135);
        break;
      case 5:  // ties: max 127, the rest halves (q8: x / d = k + 0.5 exactly)
        for (int64_t d = 0; d < D; ++d)
          row[d] = static_cast<float>(std::uniform_int_distribution<int>(-126, 125)(rng)) + 0.5f;
        row[0] = 127.0f;
        break;
      case 6:  // huge
        for (int64_t d = 0; d < D; ++d) row[d] = row[d] / s * 1e37f;
        break;
      default: break;
    }
  }
  return x;
}

// The host bytes of one row as quantize_kv_row makes them.
std::vector<uint8_t> cpu_row(KvType t, const float* x, int64_t D) {
  std::vector<uint8_t> r(static_cast<size_t>(kv_type_row_bytes(t, D)));
  onebit::quantize_kv_row(engine_type(t), x, D, r.data());
  return r;
}

// ---- stores: kv_store_rows, rope_kv_store_rows, attention_decode, byte for byte ----
void check_store(KvType t, int64_t Hkv, int64_t D, int64_t n, int64_t pos0, int64_t bs) {
  const int64_t L = 2, layer = 1, n_ctx = 64, H = 2 * Hkv;
  const std::string what = name(t) + " store D=" + std::to_string(D) + " n=" + std::to_string(n) + " pos=" +
                           std::to_string(pos0) + " bs=" + std::to_string(bs);
  Cache c = make_cache(t, L, Hkv, n_ctx, D, bs);
  const size_t rb = static_cast<size_t>(c.kv.row_bytes), bytes = static_cast<size_t>(c.rows) * rb;
  const std::vector<float> k = test_rows(n * Hkv, D), v = test_rows(n * Hkv, D), q = randn(static_cast<size_t>(n * H * D));
  std::vector<float> ct(static_cast<size_t>(n_ctx * D / 2)), st(ct.size());
  for (size_t i = 0; i < ct.size(); ++i) {
    const double a = std::uniform_real_distribution<double>(-3.2, 3.2)(rng);
    ct[i] = float(std::cos(a));
    st[i] = float(std::sin(a));
  }
  float *dk = dev(k), *dv = dev(v), *dq = dev(q), *dc = dev(ct), *ds = dev(st);
  int32_t* dpos = dev(std::vector<int32_t>{static_cast<int32_t>(pos0)});
  // Compares the pool with the expected rows (k_rows: the k values stored), the rest untouched (0x7f).
  auto compare = [&](const uint8_t* pool, const std::vector<float>& k_rows, const std::string& path) {
    const std::vector<uint8_t> got = host(pool, bytes);
    std::vector<uint8_t> want(bytes, 0x7f);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < Hkv; ++h)
        for (int which = 0; which < 2; ++which) {
          const float* x = &(which == 0 ? k_rows : v)[static_cast<size_t>((i * Hkv + h) * D)];
          const std::vector<uint8_t> r = cpu_row(t, x, D);
          std::memcpy(&want[static_cast<size_t>(c.row_index(which, layer, h, pos0 + i)) * rb], r.data(), rb);
        }
    int64_t bad = 0;
    for (int64_t r = 0; r < c.rows; ++r)
      bad += std::memcmp(&got[static_cast<size_t>(r) * rb], &want[static_cast<size_t>(r) * rb], rb) != 0;
    expect(bad == 0, what + " (" + path + "): " + std::to_string(bad) + " rows differ from quantize_kv_row");
  };
  // kv_store_rows
  c.kv.data = dev_poison<uint8_t>(bytes);
  CK(kv_store_rows(c.kv, layer, dk, dv, n, dpos, nullptr));
  compare(static_cast<uint8_t*>(c.kv.data), k, "kv_store_rows");
  // rope_kv_store_rows: k is rotated in place; the stored rows are the rotated ones.
  cudaFree(c.kv.data);
  c.kv.data = dev_poison<uint8_t>(bytes);
  float *dq2 = dev(q), *dk2 = dev(k);
  CK(rope_kv_store_rows(dq2, dk2, dv, n, H, c.kv, layer, dc, ds, dpos, nullptr));
  const std::vector<float> k_rot = host(dk2, k.size());
  compare(static_cast<uint8_t*>(c.kv.data), k_rot, "rope_kv_store_rows");
  // attention_decode stores the new row itself (one row, head dims of the fast kernel).
  if (n == 1 && attention_decode_fusable(c.kv, H)) {
    cudaFree(c.kv.data);
    c.kv.data = dev_poison<uint8_t>(bytes);
    // Earlier positions must hold valid rows for attention to read: quantize some, then poison
    // check only the new one (the rest is compared as written).
    std::vector<uint8_t> pool(bytes, 0x7f);
    for (int64_t p = 0; p < pos0; ++p)
      for (int64_t h = 0; h < Hkv; ++h)
        for (int which = 0; which < 2; ++which) {
          const std::vector<float> x = randn(static_cast<size_t>(D));
          const std::vector<uint8_t> r = cpu_row(t, x.data(), D);
          std::memcpy(&pool[static_cast<size_t>(c.row_index(which, layer, h, p)) * rb], r.data(), rb);
        }
    CK(cudaMemcpy(c.kv.data, pool.data(), bytes, cudaMemcpyHostToDevice));
    const size_t sfl = attention_scratch_floats(n_ctx, 1, H, D, true);
    float* scratch = sfl ? dev_poison<float>(sfl) : nullptr;
    float* out = dev_poison<float>(static_cast<size_t>(H * D));
    CK(attention_decode(c.kv, layer, dq, dk, dv, 1, H, dc, ds, dpos, nullptr, scratch, out, nullptr));
    const std::vector<uint8_t> got = host(static_cast<uint8_t*>(c.kv.data), bytes);
    for (int64_t h = 0; h < Hkv; ++h)
      for (int which = 0; which < 2; ++which) {
        const float* x = &(which == 0 ? k_rot : v)[static_cast<size_t>(h * D)];
        const std::vector<uint8_t> r = cpu_row(t, x, D);
        std::memcpy(&pool[static_cast<size_t>(c.row_index(which, layer, h, pos0)) * rb], r.data(), rb);
      }
    expect(got == pool, what + " (attention_decode): the cache differs from quantize_kv_row of the new rows");
    free_all(scratch, out);
  }
  free_all(c.kv.data, c.kv.table, dk, dv, dq, dc, ds, dpos, dq2, dk2);
}

// ---- attention vs a double-precision reference over the dequantized rows ----
// H x in double (the exact normalized Sylvester-Hadamard matrix).
std::vector<double> hadamard_double(const std::vector<double>& x) {
  const int64_t D = static_cast<int64_t>(x.size());
  std::vector<double> y(x.size(), 0.0);
  const double s = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t i = 0; i < D; ++i)
    for (int64_t j = 0; j < D; ++j)
      y[static_cast<size_t>(i)] += (std::popcount(static_cast<uint64_t>(i & j)) & 1 ? -s : s) * x[static_cast<size_t>(j)];
  return y;
}

// mode: 0 = kv_store_rows + attention_rows (q as given), 1 = rope_kv_store_rows + attention_rows,
// 2 = attention_decode (n = 1).
void check_attention(KvType t, int64_t H, int64_t Hkv, int64_t D, int64_t n_ctx, int64_t pos0, int64_t n, int mode,
                     int64_t bs) {
  const int64_t L = 2, layer = 1;
  const std::string what = name(t) + " attention H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv) + " D=" +
                           std::to_string(D) + " ctx=" + std::to_string(n_ctx) + " pos=" + std::to_string(pos0) +
                           " n=" + std::to_string(n) + " mode=" + std::to_string(mode) + " bs=" + std::to_string(bs);
  Cache c = make_cache(t, L, Hkv, n_ctx, D, bs);
  const size_t rb = static_cast<size_t>(c.kv.row_bytes), bytes = static_cast<size_t>(c.rows) * rb;
  // Earlier positions of both layers: quantize_kv_row of random rows (a few outlier values).
  std::vector<uint8_t> pool(bytes, 0x5a);
  for (int64_t l = 0; l < L; ++l)
    for (int64_t p = 0; p < pos0; ++p)
      for (int64_t h = 0; h < Hkv; ++h)
        for (int which = 0; which < 2; ++which) {
          std::vector<float> x = randn(static_cast<size_t>(D));
          x[static_cast<size_t>(std::uniform_int_distribution<int64_t>(0, D - 1)(rng))] *= 8.0f;
          const std::vector<uint8_t> r = cpu_row(t, x.data(), D);
          std::memcpy(&pool[static_cast<size_t>(c.row_index(which, l, h, p)) * rb], r.data(), rb);
        }
  c.kv.data = dev(pool);
  const std::vector<float> q = randn(static_cast<size_t>(n * H * D)), k = randn(static_cast<size_t>(n * Hkv * D)),
                           v = randn(static_cast<size_t>(n * Hkv * D));
  std::vector<float> ct(static_cast<size_t>(n_ctx * D / 2)), st(ct.size());
  for (size_t i = 0; i < ct.size(); ++i) {
    const double a = std::uniform_real_distribution<double>(-3.2, 3.2)(rng);
    ct[i] = float(std::cos(a));
    st[i] = float(std::sin(a));
  }
  float *dq = dev(q), *dk = dev(k), *dv = dev(v), *dc = dev(ct), *ds = dev(st);
  int32_t* dpos = dev(std::vector<int32_t>{static_cast<int32_t>(pos0)});
  const size_t sfl = attention_scratch_floats(n_ctx, n, H, D, mode == 2);
  float* scratch = sfl ? dev_poison<float>(sfl) : nullptr;
  float* out = dev_poison<float>(static_cast<size_t>(n * H * D));
  std::vector<float> q_used = q;  // the queries attention scores (after RoPE in modes 1, 2)
  if (mode == 0) {
    CK(kv_store_rows(c.kv, layer, dk, dv, n, dpos, nullptr));
    CK(attention_rows(c.kv, layer, dq, n, H, dpos, scratch, out, nullptr));
  } else if (mode == 1) {
    CK(rope_kv_store_rows(dq, dk, dv, n, H, c.kv, layer, dc, ds, dpos, nullptr));
    CK(attention_rows(c.kv, layer, dq, n, H, dpos, scratch, out, nullptr));
    q_used = host(dq, q.size());
  } else {
    float* dq2 = dev(q);
    CK(attention_decode(c.kv, layer, dq, dk, dv, 1, H, dc, ds, dpos, nullptr, scratch, out, nullptr));
    CK(rope_rows(dq2, 1, H, D, dc, ds, dpos, nullptr));
    q_used = host(dq2, q.size());
    cudaFree(dq2);
  }
  const std::vector<float> got = host(out, static_cast<size_t>(n * H * D));
  const std::vector<uint8_t> stored = host(static_cast<uint8_t*>(c.kv.data), bytes);
  auto row_values = [&](int which, int64_t h, int64_t p) {
    std::vector<float> f(static_cast<size_t>(D));
    onebit::dequantize_kv_row(engine_type(t), &stored[static_cast<size_t>(c.row_index(which, layer, h, p)) * rb], D,
                              f.data());
    return std::vector<double>(f.begin(), f.end());
  };
  const int64_t G = H / Hkv;
  double worst = 0;
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t hk = h / G, nk = pos0 + i + 1;
      std::vector<double> qv(q_used.begin() + (i * H + h) * D, q_used.begin() + (i * H + h + 1) * D);
      if (t == KvType::kQ4R) qv = hadamard_double(qv);  // the keys are H k
      std::vector<double> sc(static_cast<size_t>(nk));
      double m = -1e300;
      for (int64_t j = 0; j < nk; ++j) {
        const std::vector<double> kr = row_values(0, hk, j);
        double s = 0;
        for (int64_t d = 0; d < D; ++d) s += qv[static_cast<size_t>(d)] * kr[static_cast<size_t>(d)];
        sc[static_cast<size_t>(j)] = s / std::sqrt(double(D));
        m = std::max(m, sc[static_cast<size_t>(j)]);
      }
      double l = 0;
      for (auto& s : sc) l += (s = std::exp(s - m));
      std::vector<double> o(static_cast<size_t>(D), 0.0);
      for (int64_t j = 0; j < nk; ++j) {
        const std::vector<double> vr = row_values(1, hk, j);
        for (int64_t d = 0; d < D; ++d) o[static_cast<size_t>(d)] += sc[static_cast<size_t>(j)] / l * vr[static_cast<size_t>(d)];
      }
      if (t == KvType::kQ4R) o = hadamard_double(o);  // back from the rotated values
      for (int64_t d = 0; d < D; ++d) {
        const double want = o[static_cast<size_t>(d)], g = got[static_cast<size_t>((i * H + h) * D + d)];
        const double err = std::fabs(g - want) / (std::fabs(want) + 1e-2);
        bad += !(err <= 2e-4);  // NaN and unwritten (poison) outputs fail
        if (err > worst || std::isnan(err)) worst = std::isnan(err) ? INFINITY : err;
      }
    }
  // fp32 scores (D products), an fp32 running softmax and fp32 sums of up to 4096 terms, plus for
  // q4r the fp32 rotations of q and of the output (log2 D stages): relative error ~1e-6 per term,
  // well under 2e-4 (the bound the fp32 / fp16 attention check uses).
  expect(bad == 0, what + ": " + std::to_string(bad) + " outputs off, worst rel err " + std::to_string(worst));
  free_all(c.kv.data, c.kv.table, dq, dk, dv, dc, ds, dpos, scratch, out);
}

void check_refusals() {
  expect(kv_type_row_bytes(KvType::kQ4R, 96) == 0 && kv_type_row_bytes(KvType::kQ4R, 8) == 0 &&
             kv_type_row_bytes(KvType::kQ4R, 128) == 80 && kv_type_row_bytes(KvType::kQ8, 96) == 100 &&
             kv_type_row_bytes(KvType::kQ8, 128) == 132 && kv_type_row_bytes(KvType::kQ4R, 16) == 12,
         "kv_type_row_bytes");
  for (int64_t D : {int64_t{16}, int64_t{64}, int64_t{128}, int64_t{256}})
    for (KvType t : {KvType::kQ8, KvType::kQ4R})
      expect(kv_type_row_bytes(t, D) == static_cast<int64_t>(onebit::kv_row_bytes(engine_type(t), D)),
             "kv_type_row_bytes vs the engine's kv_row_bytes, " + name(t) + " D=" + std::to_string(D));
  Cache c = make_cache(KvType::kQ8, 2, 2, 64, 96, 0);
  c.kv.type = KvType::kQ4R;  // q4r at head_dim 96, row size of q8
  c.kv.data = dev_poison<uint8_t>(static_cast<size_t>(c.rows * 100));
  float* x = dev_poison<float>(4 * 2 * 96);
  int32_t* dpos = dev(std::vector<int32_t>{0});
  expect(kv_store_rows(c.kv, 1, x, x, 1, dpos, nullptr) == cudaErrorInvalidValue, "q4r at head_dim 96 not refused");
  c.kv.type = KvType::kQ8;
  c.kv.row_bytes = 96;
  expect(attention_rows(c.kv, 1, x, 1, 4, dpos, nullptr, x, nullptr) == cudaErrorInvalidValue,
         "a view with the wrong row size not refused");
  cudaGetLastError();
  free_all(c.kv.data, x, dpos);
}

}  // namespace

int main() {
  if (skip_without_device()) return 0;
  check_refusals();
  if (small_checks()) {  // compute-sanitizer runs: each kernel path once
    for (KvType t : {KvType::kQ8, KvType::kQ4R}) {
      check_store(t, 2, 128, 9, 3, 0);
      check_store(t, 3, 64, 1, 63, 5);
      check_attention(t, 20, 5, 128, 1024, 1000, 1, 2, 16);
      check_attention(t, 8, 2, 64, 512, 33, 40, 1, 16);
      check_attention(t, 4, 2, 16, 64, 10, 5, 1, 0);
    }
    std::printf("kv_quant_check (small set): %s\n", failures == 0 ? "PASS" : "FAILED");
    return failures == 0 ? 0 : 1;
  }
  for (KvType t : {KvType::kQ8, KvType::kQ4R}) {
    // Stores: head sizes 16..256, several rows, contiguous and paged.
    for (int64_t D : {16, 32, 64, 128, 256}) {
      check_store(t, 2, D, 9, 3, 0);
      check_store(t, 5, D, 18, 40, 16);
      check_store(t, 2, D, 1, 37, 0);
      check_store(t, 3, D, 1, 63, 5);
    }
    // Attention. Fast kernel (D 64 / 128): 2B-4T (20/5 x 128, GQA 4) decode with 1, some and 32
    // splits, prefill rows; the default model (8/2 x 64); GQA 8 and 1; fused decode; paged.
    for (int64_t pos : {0, 77, 2047, 4095}) check_attention(t, 20, 5, 128, 4096, pos, 1, 0, 0);
    check_attention(t, 20, 5, 128, 4096, 3000, 1, 2, 0);
    check_attention(t, 20, 5, 128, 512, 100, 37, 1, 0);
    check_attention(t, 8, 2, 64, 512, 0, 130, 1, 0);
    check_attention(t, 8, 2, 64, 512, 300, 1, 2, 0);
    check_attention(t, 8, 2, 64, 512, 200, 1, 0, 0);
    check_attention(t, 8, 1, 128, 1024, 900, 1, 2, 0);
    check_attention(t, 16, 2, 64, 256, 10, 20, 0, 0);
    check_attention(t, 4, 4, 128, 300, 299, 1, 0, 0);
    check_attention(t, 20, 5, 128, 1024, 1000, 1, 2, 16);
    check_attention(t, 8, 2, 64, 512, 33, 40, 1, 16);
    check_attention(t, 8, 2, 64, 512, 200, 1, 2, 5);
    // Generic kernel (other head sizes), split and unsplit.
    check_attention(t, 4, 2, 16, 64, 10, 5, 1, 0);
    check_attention(t, 4, 2, 16, 64, 63, 1, 0, 0);
    check_attention(t, 4, 1, 32, 512, 400, 1, 0, 7);
    check_attention(t, 4, 4, 256, 300, 299, 1, 0, 0);
    check_attention(t, 2, 2, 256, 300, 40, 9, 1, 0);
  }
  check_attention(KvType::kQ8, 3, 1, 96, 200, 150, 1, 0, 0);  // q8 at a head size q4r refuses
  check_attention(KvType::kQ8, 3, 1, 96, 200, 20, 6, 1, 0);
  if (failures != 0) {
    std::printf("kv_quant_check: %d FAILED\n", failures);
    return 1;
  }
  std::printf("kv_quant_check: PASS\n");
  return 0;
}
