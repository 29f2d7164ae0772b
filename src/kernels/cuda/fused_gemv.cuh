// The body of the decode GEMV with RMSNorm + quantization in the prologue (decode_fused_cuda.h),
// as a device function of one block's rows: fused_norm_gemv_kernel runs it once per block, and the
// persistent decode step (decode_step_cuda.h) runs it for each block index of a phase it owns.
// Include from .cu files only.
#pragma once

#include "kernels/cuda/decode_fused_cuda.h"
#include "kernels/cuda/device_inline.cuh"

namespace onebit::cuda::fused {

constexpr int kVec = 4;  // float4 of the input per thread in the prologue (cols <= 16 * threads)
constexpr int kPre = 8;        // weight chunks per lane loaded before waiting for the previous kernel
constexpr int kMaxGroups = 16;  // row groups per block
constexpr int kMaxWarps = 16;  // 512 threads (__launch_bounds__: registers for the prefetched weights)

struct FPart {
  const uint4* w;
  const float* row_scale;
  float* y;
  int rows;
  int block_begin;  // first block of this matrix
};
struct FSet {
  FPart p[kMaxGemvParts];
  int count;
};

// The block's shared scratch besides the input codes (one per kernel, whatever the epilogues).
struct GemvSmem {
  float red[32];
  float gpart[kNormMaxGroups];  // per float4 group sums of squares
  float gtotal;
  int qred[kMaxWarps];
  int acc_red[kMaxWarps][kRowsPerGroup];
  float ybuf[kMaxGroups * kRowsPerGroup];
};

// The body of block b (the launch's blocks are 32 * G * Wk threads or more: warps beyond G * Wk
// take part in the prologue and the barriers only). wait() is called once by every thread, after
// the block's first weights are requested and before the input vector x is read: the kernel's PDL
// wait, or decode_step's grid barrier. x and the residual are read through L2 (__ldcg), so a
// block never sees a stale L1 copy of a vector another block rewrote since.
// Block b of a kStore / kResidual launch: row groups [G*(b - begin), G*(b - begin) + G) of its
// matrix; warp w serves group w / Wk and chunks 4*(w % Wk) + kk + 4*Wk*t, lane = 8*kk + rr (row rr
// of the group). kRelu2: block b holds gate groups [G/2 * b, +G/2) (warps of the first half) and
// the same up groups (second half); the epilogue pairs them.
template <FusedEpilogue kEpi, class Wait>
__device__ __forceinline__ void fused_norm_gemv_block(const FSet& set, int G, int Wk, int K, int cols,
                                                      const float* __restrict__ x, const float* __restrict__ norm_w,
                                                      float eps, int b, int4* __restrict__ s_codes, GemvSmem& sm,
                                                      Wait&& wait) {
  float* const red = sm.red;
  float* const gpart = sm.gpart;
  auto& qred = sm.qred;
  auto& acc_red = sm.acc_red;
  auto& ybuf = sm.ybuf;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nthreads = blockDim.x;
  const int rr = lane & 7, kk = lane >> 3;
  const int gi = warp / Wk, wk = warp % Wk;

  // This warp's matrix and row group (constant indices into the parameter array only).
  FPart part = set.p[0];
  int group;
  if constexpr (kEpi == FusedEpilogue::kRelu2) {
    const int half = G / 2;
    if (gi >= half) part = set.p[1];
    group = b * half + (gi % half);
  } else {
#pragma unroll
    for (int i = 1; i < kMaxGemvParts; ++i)
      if (i < set.count && b >= set.p[i].block_begin) part = set.p[i];
    group = (b - part.block_begin) * G + gi;
  }
  const bool group_ok = warp < G * Wk && group * kRowsPerGroup < part.rows;  // warps beyond G * Wk: prologue only
  const uint4* __restrict__ wg = part.w + static_cast<size_t>(group) * K * kRowsPerGroup + rr;
  const int stride = 4 * Wk;
  const int k0 = 4 * wk + kk;

  // Constants first (weights, row scales), then wait for the input vector.
  uint4 pre[kPre];
#pragma unroll
  for (int t = 0; t < kPre; ++t) {
    const int k = k0 + t * stride;
    if (group_ok && k < K) pre[t] = load_stream16(wg + static_cast<size_t>(k) * kRowsPerGroup);
  }
  const int my_row = group * kRowsPerGroup + rr;
  const bool writer = kk == 0 && wk == 0 && group_ok && my_row < part.rows;
  const float rsc = writer ? __ldg(part.row_scale + my_row) : 0.0f;
  const int n4 = cols >> 2;
  const float4* x4 = reinterpret_cast<const float4*>(x);
  const float4* w4 = reinterpret_cast<const float4*>(norm_w);
  wait();

  // RMSNorm + per-token quantization of x with the bits of rmsnorm_quantize_rows: y = x * r * w,
  // s = 127 / max(max|y|, 1e-5), codes = clamp(rint(y * s)); thread t holds the float4 groups
  // t, t + nthreads, ... and the sum of squares follows the canonical order of norm_group_total.
  float4 xv[kVec], wv[kVec];
#pragma unroll
  for (int v = 0; v < kVec; ++v) {
    const int i = tid + v * nthreads;
    if (i < n4) {
      xv[v] = __ldcg(x4 + i);  // L2: in decode_step, written by other blocks of the same launch
      wv[v] = __ldg(w4 + i);
    }
  }
#pragma unroll
  for (int v = 0; v < kVec; ++v) {
    const int i = tid + v * nthreads;
    if (i < n4) {
      float g = 0.0f;
      g = fmaf(xv[v].x, xv[v].x, g);
      g = fmaf(xv[v].y, xv[v].y, g);
      g = fmaf(xv[v].z, xv[v].z, g);
      g = fmaf(xv[v].w, xv[v].w, g);
      gpart[i] = g;
    }
  }
  const float ss = norm_group_total(gpart, &sm.gtotal, n4);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(cols) + eps);
  float m = 0.0f;
#pragma unroll
  for (int v = 0; v < kVec; ++v) {
    const int i = tid + v * nthreads;
    if (i < n4) {
      xv[v].x = xv[v].x * r * wv[v].x;
      xv[v].y = xv[v].y * r * wv[v].y;
      xv[v].z = xv[v].z * r * wv[v].z;
      xv[v].w = xv[v].w * r * wv[v].w;
      m = fmaxf(m, fmaxf(fmaxf(fabsf(xv[v].x), fabsf(xv[v].y)), fmaxf(fabsf(xv[v].z), fabsf(xv[v].w))));
    }
  }
  m = block_max(m, red);
  const float s = 127.0f / fmaxf(m, 1e-5f);
  int* codes32 = reinterpret_cast<int*>(s_codes);
  int qsum = 0;
  auto code = [&](float y) {
    int t = __float2int_rn(__fmul_rn(y, s));
    t = t < -128 ? -128 : (t > 127 ? 127 : t);
    qsum += t;
    return static_cast<unsigned>(t) & 0xffu;
  };
#pragma unroll
  for (int v = 0; v < kVec; ++v) {
    const int i = tid + v * nthreads;
    if (i < n4) {
      const unsigned c0 = code(xv[v].x), c1 = code(xv[v].y), c2 = code(xv[v].z), c3 = code(xv[v].w);
      codes32[i] = static_cast<int>(c0 | (c1 << 8) | (c2 << 16) | (c3 << 24));
    }
  }
  for (int i = n4 + tid; i < K * 16; i += nthreads) codes32[i] = 0;  // zero tail of the last chunk
  qsum = warp_isum(qsum);
  if (lane == 0) qred[warp] = qsum;
  __syncthreads();

  // The GEMV: exact int32 sums of (w + 1) * q over this lane's chunks.
  int a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  if (group_ok) {
#pragma unroll
    for (int t = 0; t < kPre; ++t) {
      const int k = k0 + t * stride;
      if (k < K) {
        const int4* q4 = s_codes + k * 4;
        dot_chunk4(pre[t], q4[0], q4[1], q4[2], q4[3], a0, a1, a2, a3);
      }
    }
    for (int kb = k0 + kPre * stride; kb < K; kb += kPre * stride) {
      uint4 wv2[kPre];
#pragma unroll
      for (int t = 0; t < kPre; ++t) {
        const int k = kb + t * stride;
        if (k < K) wv2[t] = load_stream16(wg + static_cast<size_t>(k) * kRowsPerGroup);
      }
#pragma unroll
      for (int t = 0; t < kPre; ++t) {
        const int k = kb + t * stride;
        if (k < K) {
          const int4* q4 = s_codes + k * 4;
          dot_chunk4(wv2[t], q4[0], q4[1], q4[2], q4[3], a0, a1, a2, a3);
        }
      }
    }
  }
  // a_i is an exact multiple of 4^i: the arithmetic shifts are exact.
  int acc = a0 + (a1 >> 2) + (a2 >> 4) + (a3 >> 6);
  acc += __shfl_xor_sync(0xffffffffu, acc, 8);
  acc += __shfl_xor_sync(0xffffffffu, acc, 16);
  if (kk == 0) acc_red[warp][rr] = acc;
  __syncthreads();
  float yv = 0.0f;
  if (writer) {
    int sum = 0;
    for (int i = 0; i < Wk; ++i) sum += acc_red[gi * Wk + i][rr];
    int tq = 0;
    for (int i = 0; i < (nthreads >> 5); ++i) tq += qred[i];
    yv = static_cast<float>(sum - tq) * (rsc / s);
  }
  if constexpr (kEpi == FusedEpilogue::kStore) {
    if (writer) part.y[my_row] = yv;
  } else if constexpr (kEpi == FusedEpilogue::kResidual) {
    if (writer) part.y[my_row] = __fadd_rn(__ldcg(part.y + my_row), yv);  // rounded like add_inplace (no fma)
  } else {
    // gate (first half of the groups) and up (second half) of the same rows meet in shared memory.
    if (writer) ybuf[gi * kRowsPerGroup + rr] = yv;
    __syncthreads();
    const int half_rows = (G / 2) * kRowsPerGroup;
    if (tid < half_rows) {
      const int row = b * half_rows + tid;
      if (row < set.p[0].rows) {
        const float g = fmaxf(ybuf[tid], 0.0f);
        set.p[0].y[row] = (g * g) * ybuf[tid + half_rows];
      }
    }
  }
}

// The launch shape of a fused_norm_gemv call (nullptr-free arguments, limits as in fused_norm_gemv_ok).
struct Geometry {
  int G = 0, Wk = 0, K = 0, blocks = 0;
  FSet set{};
};

inline bool geometry(const FusedGemvArgs& a, Geometry* out) {
  if (a.x == nullptr || a.norm_w == nullptr || a.cols <= 0 || a.cols % 4 != 0 || a.cols > kFusedGemvMaxCols)
    return false;
  if (a.count < 1 || a.count > kMaxGemvParts) return false;
  const int G = a.shape.groups, cpt = a.shape.chunks_per_thread;
  if (G < 1 || G > kMaxGroups || cpt < 1) return false;
  if (a.epilogue == FusedEpilogue::kRelu2 && (a.count != 2 || G % 2 != 0 || a.mats[0].rows != a.mats[1].rows))
    return false;
  if (a.epilogue == FusedEpilogue::kResidual && a.count != 1) return false;
  const int K = static_cast<int>(cuda_chunks(a.cols));
  int Wk = (K + 4 * cpt - 1) / (4 * cpt);
  if (Wk < 1) Wk = 1;
  // The prologue holds kVec float4 of the input per thread.
  const int64_t need_threads = (a.cols / 4 + kVec - 1) / kVec;
  while (static_cast<int64_t>(32) * G * Wk < need_threads) ++Wk;
  if (G * Wk > kMaxWarps) return false;
  Geometry g;
  g.G = G;
  g.Wk = Wk;
  g.K = K;
  g.set.count = a.count;
  int64_t blocks = 0;
  for (int m = 0; m < a.count; ++m) {
    const GemvMatrix& mm = a.mats[m];
    if (mm.w == nullptr || mm.row_scale == nullptr || mm.y == nullptr || mm.rows <= 0 || mm.rows >= (int64_t{1} << 30))
      return false;
    const int64_t groups = cuda_padded_rows(mm.rows) / kRowsPerGroup;
    g.set.p[m] = FPart{reinterpret_cast<const uint4*>(mm.w), mm.row_scale, mm.y, static_cast<int>(mm.rows),
                       static_cast<int>(blocks)};
    if (a.epilogue == FusedEpilogue::kRelu2) {
      blocks = (groups + G / 2 - 1) / (G / 2);  // gate and up share the blocks
      g.set.p[m].block_begin = 0;
    } else {
      blocks += (groups + G - 1) / G;
    }
  }
  if (blocks < 1 || blocks > (int64_t{1} << 30)) return false;
  g.blocks = static_cast<int>(blocks);
  *out = g;
  return true;
}


}  // namespace onebit::cuda::fused
