// Prefill attention on fp16 tensor cores (see attention_prefill_cuda.h).
#include "kernels/cuda/attention_prefill_cuda.h"

#include <cuda_fp16.h>

#include <cmath>
#include <cstring>

#include "kernels/cuda/device_inline.cuh"
#include "kernels/cuda/kv_layout.cuh"
#include "kernels/cuda/launch.cuh"

namespace onebit::cuda {
namespace {

// A block serves one KV head and kPfVecs query vectors: 64 / G consecutive rows times the G query
// heads of that KV head, vector v = (row v / G, head v % G). Warp w owns vectors 16w .. 16w + 15,
// the 16 rows of its mma tiles. Keys go by tiles of kPfKeys, K and V rows copied into shared
// memory with cp.async, two stages (the next tile loads while this one is used).
constexpr int kPfWarps = 4;
constexpr int kPfThreads = 32 * kPfWarps;
constexpr int kPfVecs = 16 * kPfWarps;
constexpr int kPfKeys = 64;

// Staged row stride in halves: D + 8 puts the 8 rows an ldmatrix reads in distinct banks.
template <int D>
__host__ __device__ constexpr int pf_stride() {
  return D + 8;
}
template <int D>
constexpr size_t pf_smem_bytes() {
  return static_cast<size_t>(2 /*stages*/ * 2 /*K, V*/ * kPfKeys * pf_stride<D>()) * sizeof(__half);
}

__device__ __forceinline__ uint32_t half2_bits(__half2 h) {
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}

// (a, b) as two fp16 pairs: hi = fp16(a, b), lo = fp16 of what hi misses. a goes to the low half
// (the lower column of an mma fragment).
__device__ __forceinline__ void split_f16x2(float a, float b, uint32_t& hi, uint32_t& lo) {
  const __half2 h = __floats2half2_rn(a, b);
  const float2 back = __half22float2(h);
  hi = half2_bits(h);
  lo = half2_bits(__floats2half2_rn(a - back.x, b - back.y));
}

__device__ __forceinline__ void mma_f16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Four 8x8 fp16 matrices from shared memory; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const __half* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
#endif
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const __half* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
#endif
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// One run of rows [s0, s1) of one sequence (cache kv), inside the block's rows [r_begin, ...).
// Thread (warp w, lane l) holds in its fragments vectors va = 16w + l / 4 and vb = va + 8.
//
// A row's result depends on its own scores only: key tiles always start at key 0 and go up by
// kPfKeys; a tile past the row's position (reached because a later row of the block needs it) is
// all masked and leaves the row's state unchanged to the bit (max unchanged, correction exp(0) = 1,
// weights 0, and 0 * V = 0 added); keys past the run's last position are zero-filled.
template <int D>
__device__ __forceinline__ void attend_run(const KvView& kv, int64_t layer, const float* __restrict__ q, int n_heads,
                                           int G, int hk, int r_begin, int s0, int s1,
                                           const int32_t* __restrict__ pos0, const RowSeq* __restrict__ rows,
                                           __half* Ks, __half* Vs, float* __restrict__ out) {
  constexpr int S = pf_stride<D>();
  constexpr int KT = D / 16;  // k-steps of the q.k products
  constexpr int NT = D / 8;   // 8-column tiles of the output
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gq = lane >> 2, tq = lane & 3;
  const int va = warp * 16 + gq, vb = va + 8;
  const int ra = r_begin + va / G, rb = r_begin + vb / G;
  const int ha = hk * G + va % G, hb = hk * G + vb % G;
  const bool oka = ra >= s0 && ra < s1, okb = rb >= s0 && rb < s1;
  const int pa = oka ? row_pos(rows, pos0, ra) : -1, pb = okb ? row_pos(rows, pos0, rb) : -1;
  const int n_keys = row_pos(rows, pos0, s1 - 1) + 1;
  const float scale = 1.0f / sqrtf(static_cast<float>(D));

  // q fragments (A operand, rows = vectors), hi and lo parts.
  uint32_t qh[KT][4], ql[KT][4];
  {
    const float* qa = q + (static_cast<int64_t>(oka ? ra : s0) * n_heads + (oka ? ha : 0)) * D;
    const float* qb = q + (static_cast<int64_t>(okb ? rb : s0) * n_heads + (okb ? hb : 0)) * D;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      const int d = kk * 16 + 2 * tq;
      const float2 zero = make_float2(0.0f, 0.0f);
      const float2 x0 = oka ? *reinterpret_cast<const float2*>(qa + d) : zero;
      const float2 x1 = okb ? *reinterpret_cast<const float2*>(qb + d) : zero;
      const float2 x2 = oka ? *reinterpret_cast<const float2*>(qa + d + 8) : zero;
      const float2 x3 = okb ? *reinterpret_cast<const float2*>(qb + d + 8) : zero;
      split_f16x2(x0.x, x0.y, qh[kk][0], ql[kk][0]);
      split_f16x2(x1.x, x1.y, qh[kk][1], ql[kk][1]);
      split_f16x2(x2.x, x2.y, qh[kk][2], ql[kk][2]);
      split_f16x2(x3.x, x3.y, qh[kk][3], ql[kk][3]);
    }
  }

  const __half* cache = static_cast<const __half*>(kv.data);
  auto load_tile = [&](int t, int stage) {
    constexpr int kChunks = D / 8;  // 16-byte pieces of a row
    __half* kd = Ks + stage * kPfKeys * S;
    __half* vd = Vs + stage * kPfKeys * S;
    for (int c = tid; c < kPfKeys * kChunks; c += kPfThreads) {
      const int j = c / kChunks, part = c % kChunks;
      const int key = t * kPfKeys + j;
      const bool valid = key < n_keys;
      const size_t ko = valid ? kv_off(kv, 0, layer, hk, key) : 0, vo = valid ? kv_off(kv, 1, layer, hk, key) : 0;
      cp_async16(kd + j * S + part * 8, cache + ko + part * 8, valid ? 16 : 0);
      cp_async16(vd + j * S + part * 8, cache + vo + part * 8, valid ? 16 : 0);
    }
    cp_async_commit();
  };

  float o[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float ma = -INFINITY, mb = -INFINITY, la = 0.0f, lb = 0.0f;
  const int n_tiles = (n_keys + kPfKeys - 1) / kPfKeys;
  load_tile(0, 0);
  for (int t = 0; t < n_tiles; ++t) {
    const int stage = t & 1;
    if (t + 1 < n_tiles) {
      load_tile(t + 1, stage ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const __half* Kt = Ks + stage * kPfKeys * S;
    const __half* Vt = Vs + stage * kPfKeys * S;

    // Scores: s[j] is the 16 x 8 tile of keys t * kPfKeys + 8j ...; per k-step hi then lo.
    float s[kPfKeys / 8][4];
#pragma unroll
    for (int j = 0; j < kPfKeys / 8; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KT; kk += 2) {
        uint32_t b[4];
        ldsm_x4(b, Kt + (8 * j + (lane & 7)) * S + kk * 16 + 8 * (lane >> 3));
        mma_f16(s[j], qh[kk], b[0], b[1]);
        mma_f16(s[j], ql[kk], b[0], b[1]);
        mma_f16(s[j], qh[kk + 1], b[2], b[3]);
        mma_f16(s[j], ql[kk + 1], b[2], b[3]);
      }
    }
    // Online softmax; the four threads of a quad hold the same two rows.
    const int key0 = t * kPfKeys + 2 * tq;
    float tma = -INFINITY, tmb = -INFINITY;
#pragma unroll
    for (int j = 0; j < kPfKeys / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int key = key0 + 8 * j + e;
        s[j][e] = key <= pa ? s[j][e] * scale : -INFINITY;
        s[j][2 + e] = key <= pb ? s[j][2 + e] * scale : -INFINITY;
        tma = fmaxf(tma, s[j][e]);
        tmb = fmaxf(tmb, s[j][2 + e]);
      }
    }
    const float mna = fmaxf(ma, quad_max(tma)), mnb = fmaxf(mb, quad_max(tmb));
    const float ua = mna == -INFINITY ? 0.0f : mna, ub = mnb == -INFINITY ? 0.0f : mnb;  // rows with no key yet
    const float ca = expf(ma - ua), cb = expf(mb - ub);
    ma = mna;
    mb = mnb;
    float suma = 0.0f, sumb = 0.0f;
#pragma unroll
    for (int j = 0; j < kPfKeys / 8; ++j) {
      s[j][0] = expf(s[j][0] - ua);
      s[j][1] = expf(s[j][1] - ua);
      s[j][2] = expf(s[j][2] - ub);
      s[j][3] = expf(s[j][3] - ub);
      suma += s[j][0] + s[j][1];
      sumb += s[j][2] + s[j][3];
    }
    la = la * ca + suma;
    lb = lb * cb + sumb;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      o[j][0] *= ca;
      o[j][1] *= ca;
      o[j][2] *= cb;
      o[j][3] *= cb;
    }
    // o += p . V: the score tile's accumulator layout is the A layout of the next product.
#pragma unroll
    for (int kk = 0; kk < kPfKeys / 16; ++kk) {
      uint32_t ph[4], pl[4];
      split_f16x2(s[2 * kk][0], s[2 * kk][1], ph[0], pl[0]);
      split_f16x2(s[2 * kk][2], s[2 * kk][3], ph[1], pl[1]);
      split_f16x2(s[2 * kk + 1][0], s[2 * kk + 1][1], ph[2], pl[2]);
      split_f16x2(s[2 * kk + 1][2], s[2 * kk + 1][3], ph[3], pl[3]);
#pragma unroll
      for (int j = 0; j < NT; j += 2) {
        uint32_t b[4];
        ldsm_x4_trans(b, Vt + (16 * kk + (lane & 7) + 8 * ((lane >> 3) & 1)) * S + 8 * j + 8 * (lane >> 4));
        mma_f16(o[j], ph, b[0], b[1]);
        mma_f16(o[j], pl, b[0], b[1]);
        mma_f16(o[j + 1], ph, b[2], b[3]);
        mma_f16(o[j + 1], pl, b[2], b[3]);
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's load
  }
  la = quad_sum(la);
  lb = quad_sum(lb);
  float* oa = out + (static_cast<int64_t>(ra) * n_heads + ha) * D;
  float* ob = out + (static_cast<int64_t>(rb) * n_heads + hb) * D;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int d = 8 * j + 2 * tq;
    if (oka) *reinterpret_cast<float2*>(oa + d) = make_float2(o[j][0] / la, o[j][1] / la);
    if (okb) *reinterpret_cast<float2*>(ob + d) = make_float2(o[j][2] / lb, o[j][3] / lb);
  }
}

template <int D>
__global__ void __launch_bounds__(kPfThreads)
    attention_prefill_kernel(KvView kv, int64_t layer, const float* __restrict__ q, int n, int n_heads,
                             const int32_t* __restrict__ pos0, const RowSeq* __restrict__ rows,
                             float* __restrict__ out) {
  pdl_trigger();
  extern __shared__ __align__(16) __half pf_smem[];
  __half* const Ks = pf_smem;
  __half* const Vs = pf_smem + 2 * kPfKeys * pf_stride<D>();
  const int hk = blockIdx.x;
  const int G = n_heads / static_cast<int>(kv.n_kv_heads);
  const int R = kPfVecs / G;  // rows per block
  // The last rows (the most keys) first: the long blocks start in the first wave.
  const int block_rows = static_cast<int>(gridDim.y) - 1 - static_cast<int>(blockIdx.y);
  const int r_begin = block_rows * R, r_end = min(n, r_begin + R);
  pdl_wait();
  if (rows == nullptr) {
    attend_run<D>(kv, layer, q, n_heads, G, hk, r_begin, r_begin, r_end, pos0, rows, Ks, Vs, out);
    return;
  }
  // A multi-sequence pass: runs of consecutive rows of one sequence marked one_split.
  for (int s0 = r_begin; s0 < r_end;) {
    if (rows[s0].one_split == 0) {
      ++s0;
      continue;
    }
    int s1 = s0 + 1;
    while (s1 < r_end && rows[s1].one_split != 0 && rows[s1].kv == rows[s0].kv && rows[s1].table == rows[s0].table &&
           rows[s1].pos == rows[s1 - 1].pos + 1)
      ++s1;
    KvView kvs = kv;
    kvs.data = rows[s0].kv;
    kvs.table = rows[s0].table;
    attend_run<D>(kvs, layer, q, n_heads, G, hk, r_begin, s0, s1, pos0, rows, Ks, Vs, out);
    __syncthreads();  // shared memory is reused by the next run
    s0 = s1;
  }
}

template <int D>
cudaError_t launch_prefill(const KvView& kv, int64_t layer, const float* q, int64_t n, int64_t n_heads,
                           const int32_t* pos0, const RowSeq* rows, float* out, cudaStream_t stream) {
  // More than the default 48 KB of dynamic shared memory for D = 128.
  const cudaError_t opt_in = allow_dynamic_smem(attention_prefill_kernel<D>, pf_smem_bytes<D>());
  if (opt_in != cudaSuccess) return opt_in;
  const int64_t G = n_heads / kv.n_kv_heads, R = kPfVecs / G;
  const dim3 grid(static_cast<unsigned>(kv.n_kv_heads), static_cast<unsigned>((n + R - 1) / R));
  return launch_kernel(pdl_enabled(), attention_prefill_kernel<D>, grid, dim3(kPfThreads), pf_smem_bytes<D>(), stream,
                       kv, layer, q, static_cast<int>(n), static_cast<int>(n_heads), pos0, rows, out);
}

}  // namespace

bool attention_prefill_supported(const KvView& kv, int64_t n_heads) {
  if (kv.type != KvType::kF16 || kv.n_kv_heads <= 0 || n_heads <= 0 || n_heads % kv.n_kv_heads != 0) return false;
  const int64_t G = n_heads / kv.n_kv_heads;
  return (kv.head_dim == 64 || kv.head_dim == 128) && (G == 1 || G == 2 || G == 4 || G == 8);
}

cudaError_t attention_prefill(const KvView& kv, int64_t layer, const float* q, int64_t n, int64_t n_heads,
                              const int32_t* pos0, const RowSeq* rows, float* out, cudaStream_t stream) {
  if (n <= 0 || layer < 0 || layer >= kv.n_layers || !attention_prefill_supported(kv, n_heads))
    return cudaErrorInvalidValue;
  if (kv.head_dim == 64) return launch_prefill<64>(kv, layer, q, n, n_heads, pos0, rows, out, stream);
  return launch_prefill<128>(kv, layer, q, n, n_heads, pos0, rows, out, stream);
}

}  // namespace onebit::cuda
