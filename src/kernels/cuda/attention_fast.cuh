// Decode attention shared by ops_cuda.cu (the split-K kernels and their merge) and the persistent
// decode step (decode_step_cuda.cu): constants, the online-softmax steps, and the fast kernel's
// block as a device function. Include from .cu files only.
#pragma once

#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/device_inline.cuh"
#include "kernels/cuda/kv_layout.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace onebit::cuda::attn {

// Split-half rotation of the pair (a, b) = (x[j], x[j + half]): (a c - b s, b c + a s), each
// product and sum rounded separately (no FMA contraction), so every kernel that rotates (the RoPE
// kernels and the fused decode attention) gets the same bits.
__device__ __forceinline__ float rope_lo(float a, float b, float c, float s) {
  return __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
}
__device__ __forceinline__ float rope_hi(float a, float b, float c, float s) {
  return __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}
// ---- attention ----
// Block = (kv head, query row, key split); 128 threads. Per tile of 128 keys: thread t scores
// key t against the G query heads of this kv head (q in shared memory), the block updates the
// running max / sum per head, and then thread t accumulates outputs t, t+128, ... of the G x D
// (head, dim) outputs over the tile's keys (V rows read coalesced).
constexpr int kAttnThreads = 128;
// Keys per split at least kMinSplitKeys: a short context uses fewer splits (the split count is
// fixed when a decode step is recorded, from the cache size; the active ones follow the position).
constexpr int kMinSplitKeys = 32;
__device__ __forceinline__ int split_chunk(int n_keys, int splits) {
  const int c = (n_keys + splits - 1) / splits;
  return c < kMinSplitKeys ? kMinSplitKeys : c;
}
constexpr int kAttnMaxG = 8;
constexpr int kAttnMaxD = 256;
constexpr int kAttnOut = kAttnMaxG * kAttnMaxD / kAttnThreads;  // outputs per thread, at most

// The barrier of a 128-thread attention block: named barrier 1 (the same as __syncthreads in a
// kernel of 128 threads; in decode_step, only the 4 warps doing attention take part).
__device__ __forceinline__ void attn_sync() { asm volatile("bar.sync 1, 128;" ::: "memory"); }

__device__ __forceinline__ float2 half2_bits_to_float2(unsigned u) {
  __half2 h;
  memcpy(&h, &u, 4);
  return __half22float2(h);
}

// Faster form for head_dim = 32 * DPL (DPL = 2 or 4: 64 or 128) and G * D <= 1024. Block = (kv
// head, row, split), 4 warps. Scores: thread t takes key t of a 128-key tile and reads its K row
// with 16-byte loads. Softmax: the G heads' tile maxima and sums in one reduction each. P.V: warp
// w takes keys w, w + 4, ... of the tile and lane l dims [l * DPL, (l + 1) * DPL) of every head,
// one vector load of V per key; the 4 warps' partial sums are added at the end.
template <int DPL>
struct KvVec;
template <>
struct KvVec<2> {
  static __device__ __forceinline__ void load(const void* base, size_t off, bool f16, float* out) {
    if (f16) {
      const __half2 h = *reinterpret_cast<const __half2*>(static_cast<const __half*>(base) + off);
      const float2 f = __half22float2(h);
      out[0] = f.x;
      out[1] = f.y;
    } else {
      const float2 f = *reinterpret_cast<const float2*>(static_cast<const float*>(base) + off);
      out[0] = f.x;
      out[1] = f.y;
    }
  }
};
template <>
struct KvVec<4> {
  static __device__ __forceinline__ void load(const void* base, size_t off, bool f16, float* out) {
    if (f16) {
      const uint2 u = *reinterpret_cast<const uint2*>(static_cast<const __half*>(base) + off);
      const float2 a = half2_bits_to_float2(u.x);
      const float2 b = half2_bits_to_float2(u.y);
      out[0] = a.x;
      out[1] = a.y;
      out[2] = b.x;
      out[3] = b.y;
    } else {
      const float4 f = *reinterpret_cast<const float4*>(static_cast<const float*>(base) + off);
      out[0] = f.x;
      out[1] = f.y;
      out[2] = f.z;
      out[3] = f.w;
    }
  }
};

// The online-softmax step of a 128-key tile shared by the fast kernels (one key a thread, sc[g] =
// its raw score for head g, valid = the key is in range): the G tile maxima and sums in one
// reduction each, p = exp(s - m_new) into ps, and thread g < G updates the running max, sum and
// the correction of head g. Ends past a barrier: ps, corr, mrun and lrun are ready.
template <int kWarps>
__device__ __forceinline__ void attn_tile_softmax(float (&sc)[kAttnMaxG], bool valid, float scale, int G, int lane,
                                                  int warp, int tid, float (*redm)[kWarps], float (*reds)[kWarps],
                                                  float (*ps)[kAttnThreads], float* mrun, float* lrun,
                                                  float* corr) {
  // Tile maxima of the G heads in one reduction.
#pragma unroll
  for (int g = 0; g < kAttnMaxG; ++g) {
    sc[g] = valid ? sc[g] * scale : -INFINITY;
    const float m = warp_max(sc[g]);
    if (g < G && lane == 0) redm[g][warp] = m;
  }
  attn_sync();
  // The new running maximum of head g (every thread computes it the same way; thread g again
  // below, from the same values, rather than indexing a register array with its thread id).
  auto new_max = [&](int g) {
    float m = mrun[g];
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, redm[g][w]);
    return m;
  };
#pragma unroll
  for (int g = 0; g < kAttnMaxG; ++g) {
    const float p = (g < G && valid) ? expf(sc[g] - new_max(g)) : 0.0f;
    if (g < G) ps[g][tid] = p;
    const float su = warp_sum(p);
    if (g < G && lane == 0) reds[g][warp] = su;
  }
  attn_sync();
  if (tid < G) {
    float su = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) su += reds[tid][w];
    const float mn = new_max(tid);
    corr[tid] = expf(mrun[tid] - mn);  // 0 on the first tile (exp(-inf))
    lrun[tid] = lrun[tid] * corr[tid] + su;
    mrun[tid] = mn;
  }
  attn_sync();
}

// acc of head g times the tile's correction of the running sums.
template <int DPL>
__device__ __forceinline__ void attn_rescale(float (&acc)[kAttnMaxG][DPL], const float* corr, int G) {
#pragma unroll
  for (int g = 0; g < kAttnMaxG; ++g)
    if (g < G) {
      const float c = corr[g];
#pragma unroll
      for (int d = 0; d < DPL; ++d) acc[g][d] *= c;
    }
}

// The end of the fast kernels: the 4 warps' partial P.V added in warp 0 (warps 1.. through
// shared memory `part`); with one split the normalized output of head g, dim e goes to dst[e]
// (e = g * D + dim), else the split's partial record (m, l, acc) to the scratch.
template <int DPL, int kWarps>
__device__ __forceinline__ void attn_finish(const float (&acc)[kAttnMaxG][DPL], float (*part)[1024], int G, int lane,
                                            int warp, int splits, int split, int64_t i, int n_heads, int h0,
                                            const float* mrun, const float* lrun, float* __restrict__ scratch,
                                            float* dst) {
  constexpr int D = 32 * DPL;
  if (warp > 0) {
#pragma unroll
    for (int g = 0; g < kAttnMaxG; ++g)
      if (g < G)
#pragma unroll
        for (int d = 0; d < DPL; ++d) part[warp - 1][g * D + lane * DPL + d] = acc[g][d];
  }
  attn_sync();
  if (warp != 0) return;
#pragma unroll
  for (int g = 0; g < kAttnMaxG; ++g) {
    if (g >= G) continue;
#pragma unroll
    for (int d = 0; d < DPL; ++d) {
      const int e = g * D + lane * DPL + d;
      float a = acc[g][d];
#pragma unroll
      for (int w = 0; w < kWarps - 1; ++w) a += part[w][e];
      if (splits == 1) {
        dst[e] = a / lrun[g];
      } else {
        float* p = scratch + ((i * n_heads + h0 + g) * splits + split) * (2 + D);
        p[2 + lane * DPL + d] = a;
        if (lane == 0 && d == 0) {
          p[0] = mrun[g];
          p[1] = lrun[g];
        }
      }
    }
  }
}

// The G query heads of a decode row (q: the first head's first value, heads consecutive) rotated
// with the position's cos/sin rows ct, st into shared memory qs, q itself left as it is (the fast
// kernels' decode path).
template <int D>
__device__ __forceinline__ void rope_q_heads(const float* q, int G, const float* ct, const float* st, float* qs) {
  constexpr int half = D / 2;
  for (int e = threadIdx.x; e < G * D; e += kAttnThreads) {
    const float* qh = q + (e / D) * D;
    const int d = e % D, j = d < half ? d : d - half;
    const float a = __ldcg(qh + j), b = __ldcg(qh + j + half);
    qs[e] = d < half ? rope_lo(a, b, ct[j], st[j]) : rope_hi(a, b, ct[j], st[j]);
  }
}

// Decode extras of the fast kernel (each row the only new row of its sequence): with `k` set, q is
// rotated here (left as it is in memory) and the split that holds the new position rotates k and
// stores k, v into the cache before reading it.
struct DecodeFuse {
  const float* k = nullptr;
  const float* v = nullptr;
  const float* cos_t = nullptr;
  const float* sin_t = nullptr;
  // A multi-sequence pass whose prompt rows (one_split) attention_prefill computes: skip them.
  int skip_chunk_rows = 0;
};
// Rows of a multi-sequence pass that attention_prefill computes instead (attention_rows).
__device__ __forceinline__ bool chunk_row_elsewhere(int skip_chunk_rows, const RowSeq* rows, int i) {
  return skip_chunk_rows != 0 && rows != nullptr && rows[i].one_split != 0;
}

// kStage (fp16 caches): each tile's K and V rows are copied into shared memory with cp.async
// first (K rows padded to D + 8 halves so the per-key 16-byte reads hit distinct banks), so a
// tile costs one round trip to memory instead of one per batch of loads. In a decode step the
// first tile is copied before the wait for the previous kernel (earlier keys are constants; the
// new key, written by this kernel, goes to shared memory when it is stored). Same values, same
// arithmetic: the same bits as without staging.
template <int DPL>
constexpr size_t attention_stage_bytes() {
  return static_cast<size_t>(kAttnThreads) * (32 * DPL + 8) * 2 + static_cast<size_t>(kAttnThreads) * 32 * DPL * 2;
}

// The fast kernel's block (hk, i, split) as a device function of 128 threads (kAttnThreads; the
// barriers are named barrier 1 of 128 threads, so other warps of a larger block may do other work):
// attention_fast_kernel runs it once per block, decode_step once per (kv head, split) it owns.
// kv_stage: the dynamic shared memory (attention_stage_bytes with kStage). wait() is called once
// by every thread, after the constant prefetches and before q, k and v are read (through L2).
template <int DPL, bool kStage, class Wait>
__device__ __forceinline__ void attention_fast_block(KvView kv, int64_t layer, const float* __restrict__ q,
                                                     int n_heads, int splits, const int32_t* __restrict__ pos0,
                                                     const RowSeq* __restrict__ rows, float* __restrict__ scratch,
                                                     float* __restrict__ out, const DecodeFuse& fuse, int hk, int i,
                                                     int split, __half* __restrict__ kv_stage, Wait&& wait) {
  constexpr int D = 32 * DPL;
  constexpr int KS = D + 8;  // staged K row stride (halves)
  __half* const Ks = kv_stage;
  __half* const Vs = kv_stage + kAttnThreads * KS;
  constexpr int kWarps = kAttnThreads / 32;
  __shared__ __align__(16) float qs[kAttnMaxG * D];
  __shared__ float ps[kAttnMaxG][kAttnThreads];
  __shared__ float redm[kAttnMaxG][kWarps], reds[kAttnMaxG][kWarps];  // per-warp tile maxima, sums
  __shared__ float mrun[kAttnMaxG], lrun[kAttnMaxG], corr[kAttnMaxG];
  __shared__ float part[kWarps - 1][1024];
  const int tid = threadIdx.x & (kAttnThreads - 1);
  const int lane = tid & 31, warp = tid >> 5;
  const int G = n_heads / static_cast<int>(kv.n_kv_heads);
  const int h0 = hk * G;
  const int n_keys = row_pos(rows, pos0, i) + 1;
  const int chunk = split_chunk(n_keys, row_splits(rows, i, splits));
  const int k0 = split * chunk, k1 = min(n_keys, k0 + chunk);
  // Beyond the active splits (the merge skips them too), or a prompt row attention_prefill takes.
  if (k0 >= n_keys || chunk_row_elsewhere(fuse.skip_chunk_rows, rows, i)) {
    wait();
    return;
  }
  if (rows != nullptr) {
    kv.data = rows[i].kv;
    kv.table = rows[i].table;
  }
  // Positions, block tables and the keys and values of earlier steps do not change during the
  // pass: pull this split's K and V rows into L2 while the previous kernel (the q/k/v GEMV) runs,
  // so the dependent loads below (q, then K, then V) find them there. The new key's row is
  // prefetched too (stale, harmless: L2 is where this kernel's store of it lands).
  {
    const int esize = kv.type == KvType::kF16 ? 2 : 4;
    const int lines = (D * esize + 127) / 128;  // 128-byte lines per row
    // (with staging, the first tile is copied to shared memory below instead)
    const int p0 = kStage && fuse.k != nullptr ? k0 + kAttnThreads : k0;
    const int per_which = (k1 > p0 ? k1 - p0 : 0) * lines;
    for (int t = tid; t < 2 * per_which; t += kAttnThreads) {
      const int which = t >= per_which ? 1 : 0, r = t - which * per_which;
      const char* p = static_cast<const char*>(kv.data) +
                      kv_off(kv, which, layer, hk, p0 + r / lines) * static_cast<size_t>(esize) + (r % lines) * 128;
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
    }
  }
  // Copies the K and V rows of keys [t0, min(t0 + kAttnThreads, k1)) into Ks / Vs, except key `skip`.
  auto stage = [&](int t0, int skip) {
    const int nk = min(kAttnThreads, k1 - t0), per = D / 8;
    for (int t = tid; t < 2 * nk * per; t += kAttnThreads) {
      const int which = t >= nk * per ? 1 : 0, r = t - which * nk * per, j = r / per, c = r % per;
      if (t0 + j == skip) continue;
      const __half* src = static_cast<const __half*>(kv.data) + kv_off(kv, which, layer, hk, t0 + j) + 8 * c;
      cp_async16(which == 0 ? Ks + j * KS + 8 * c : Vs + j * D + 8 * c, src, 16);
    }
  };
  const int new_key = fuse.k != nullptr ? n_keys - 1 : -1;
  if constexpr (kStage) {
    if (fuse.k != nullptr) stage(k0, new_key);  // decode: constants only, before the wait
  }
  wait();
  if constexpr (kStage) {
    if (fuse.k == nullptr) stage(k0, -1);  // keys written by the previous kernel
  }
  const float scale = 1.0f / sqrtf(static_cast<float>(D));
  if (fuse.k != nullptr) {
    constexpr int half = D / 2;
    const int pos = n_keys - 1;
    const float* ct = fuse.cos_t + static_cast<int64_t>(pos) * half;
    const float* st = fuse.sin_t + static_cast<int64_t>(pos) * half;
    rope_q_heads<D>(q + (static_cast<int64_t>(i) * n_heads + h0) * D, G, ct, st, qs);
    if (k0 <= pos && pos < k1) {  // the split holding the new key writes it (and v) first
      const float* kh = fuse.k + (static_cast<int64_t>(i) * kv.n_kv_heads + hk) * D;
      const float* vh = fuse.v + (static_cast<int64_t>(i) * kv.n_kv_heads + hk) * D;
      const size_t ko = kv_off(kv, 0, layer, hk, pos), vo = kv_off(kv, 1, layer, hk, pos);
      for (int d = tid; d < D; d += kAttnThreads) {
        const int j = d < half ? d : d - half;
        const float a = __ldcg(kh + j), b = __ldcg(kh + j + half);
        const float kr = d < half ? rope_lo(a, b, ct[j], st[j]) : rope_hi(a, b, ct[j], st[j]);
        if (kv.type == KvType::kF16) {
          const __half kh16 = __float2half_rn(kr), vh16 = __float2half_rn(__ldcg(vh + d));
          static_cast<__half*>(kv.data)[ko + d] = kh16;
          static_cast<__half*>(kv.data)[vo + d] = vh16;
          if constexpr (kStage) {
            if (pos - k0 < kAttnThreads) {  // the first tile's copy skipped it
              Ks[(pos - k0) * KS + d] = kh16;
              Vs[(pos - k0) * D + d] = vh16;
            }
          }
        } else {
          static_cast<float*>(kv.data)[ko + d] = kr;
          static_cast<float*>(kv.data)[vo + d] = __ldcg(vh + d);
        }
      }
    }
  } else {
    for (int e = tid; e < G * D; e += kAttnThreads) qs[e] = __ldcg(q + (static_cast<int64_t>(i) * n_heads + h0) * D + e);
  }
  if (tid < G) {
    mrun[tid] = -INFINITY;
    lrun[tid] = 0.0f;
  }
  float acc[kAttnMaxG][DPL];
#pragma unroll
  for (int g = 0; g < kAttnMaxG; ++g)
#pragma unroll
    for (int d = 0; d < DPL; ++d) acc[g][d] = 0.0f;
  if constexpr (kStage) {
    cp_async_commit();
    cp_async_wait<0>();
  }
  attn_sync();
  for (int t0 = k0; t0 < k1; t0 += kAttnThreads) {
    if constexpr (kStage) {
      if (t0 != k0) {  // later tiles (the previous one's readers are past the barrier ending it)
        stage(t0, -1);
        cp_async_commit();
        cp_async_wait<0>();
        attn_sync();
      }
    }
    const int key = t0 + tid;
    float sc[kAttnMaxG];
#pragma unroll
    for (int g = 0; g < kAttnMaxG; ++g) sc[g] = 0.0f;
    if (key < k1) {
      const size_t off = kStage ? 0 : kv_off(kv, 0, layer, hk, key);
#pragma unroll 4
      for (int d0 = 0; d0 < D; d0 += 8) {
        float kd[8];
        if (kStage || kv.type == KvType::kF16) {
          const uint4 u = kStage ? *reinterpret_cast<const uint4*>(Ks + tid * KS + d0)
                                 : *reinterpret_cast<const uint4*>(static_cast<const __half*>(kv.data) + off + d0);
          const float2 f0 = half2_bits_to_float2(u.x), f1 = half2_bits_to_float2(u.y);
          const float2 f2 = half2_bits_to_float2(u.z), f3 = half2_bits_to_float2(u.w);
          kd[0] = f0.x, kd[1] = f0.y, kd[2] = f1.x, kd[3] = f1.y, kd[4] = f2.x, kd[5] = f2.y, kd[6] = f3.x,
          kd[7] = f3.y;
        } else {
          const float4 a = *reinterpret_cast<const float4*>(static_cast<const float*>(kv.data) + off + d0);
          const float4 b = *reinterpret_cast<const float4*>(static_cast<const float*>(kv.data) + off + d0 + 4);
          kd[0] = a.x, kd[1] = a.y, kd[2] = a.z, kd[3] = a.w, kd[4] = b.x, kd[5] = b.y, kd[6] = b.z, kd[7] = b.w;
        }
#pragma unroll
        for (int g = 0; g < kAttnMaxG; ++g) {
          if (g < G) {
            const float4 qa = *reinterpret_cast<const float4*>(&qs[g * D + d0]);
            const float4 qb = *reinterpret_cast<const float4*>(&qs[g * D + d0 + 4]);
            float a = sc[g];
            a = fmaf(qa.x, kd[0], a);
            a = fmaf(qa.y, kd[1], a);
            a = fmaf(qa.z, kd[2], a);
            a = fmaf(qa.w, kd[3], a);
            a = fmaf(qb.x, kd[4], a);
            a = fmaf(qb.y, kd[5], a);
            a = fmaf(qb.z, kd[6], a);
            a = fmaf(qb.w, kd[7], a);
            sc[g] = a;
          }
        }
      }
    }
    attn_tile_softmax<kWarps>(sc, key < k1, scale, G, lane, warp, tid, redm, reds, ps, mrun, lrun, corr);
    attn_rescale(acc, corr, G);
    const int nk = min(kAttnThreads, k1 - t0);
#pragma unroll 4
    for (int j = warp; j < nk; j += kWarps) {
      float vv[DPL];
      if constexpr (kStage)
        KvVec<DPL>::load(Vs, static_cast<size_t>(j) * D + lane * DPL, true, vv);
      else
        KvVec<DPL>::load(kv.data, kv_off(kv, 1, layer, hk, t0 + j) + lane * DPL, kv.type == KvType::kF16, vv);
#pragma unroll
      for (int g = 0; g < kAttnMaxG; ++g)
        if (g < G) {
          const float p = ps[g][j];
#pragma unroll
          for (int d = 0; d < DPL; ++d) acc[g][d] = fmaf(p, vv[d], acc[g][d]);
        }
    }
    attn_sync();  // ps, corr rewritten by the next tile
  }
  // Sum the warps' partial P.V (warps 1.. through shared memory, into warp 0).
  attn_finish<DPL, kWarps>(acc, part, G, lane, warp, splits, split, i, n_heads, h0, mrun, lrun, scratch,
                           out + (static_cast<int64_t>(i) * n_heads + h0) * D);
}


// The merge of the splits of G consecutive heads (attention_merge_kernel: one head a block;
// decode_step: the G heads of a kv head). Head g's records start at base + g * head_stride (m, l,
// then D sums each, rec floats apart), `active` of them. First the weights w_s = exp(m_s - M) and
// l = sum_s l_s w_s (in split order) into shared memory, then each output d = (sum_s a_s[d] w_s) / l.
// Loads go through L2 (other blocks wrote the records).
constexpr int kMergeMaxSplits = 32;  // attention_splits' largest count
struct MergeSmem {
  float w[kAttnMaxG][kMergeMaxSplits];
  float M[kAttnMaxG], l[kAttnMaxG];
};
template <class Sync>
__device__ __forceinline__ void merge_weights(const float* base, int64_t head_stride, int64_t rec, int active, int G,
                                              MergeSmem& sm, int tid, int nthreads, Sync&& sync) {
  for (int g = tid; g < G; g += nthreads) {
    const float* b = base + g * head_stride;
    float M = -INFINITY;
#pragma unroll 8
    for (int s = 0; s < active; ++s) M = fmaxf(M, __ldcg(b + s * rec));
    sm.M[g] = M;
  }
  sync();
  for (int e = tid; e < G * active; e += nthreads) {
    const int g = e / active, s = e - g * active;
    sm.w[g][s] = expf(__ldcg(base + g * head_stride + s * rec) - sm.M[g]);
  }
  sync();
  for (int g = tid; g < G; g += nthreads) {
    const float* b = base + g * head_stride;
    float l = 0.0f;
#pragma unroll 8
    for (int s = 0; s < active; ++s) l += __ldcg(b + s * rec + 1) * sm.w[g][s];
    sm.l[g] = l;
  }
  sync();
}
__device__ __forceinline__ float merge_value(const float* head_base, int64_t rec, int active, const float* w, float l,
                                             int d) {
  float a = 0.0f;
#pragma unroll 8
  for (int s = 0; s < active; ++s) a += __ldcg(head_base + s * rec + 2 + d) * w[s];
  return a / l;
}

}  // namespace onebit::cuda::attn
