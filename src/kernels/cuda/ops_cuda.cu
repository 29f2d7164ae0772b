// CUDA kernels of the forward pass (see ops_cuda.h and docs/kernels-cuda.md).
#include "kernels/cuda/ops_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string_view>

#include "kernels/cuda/attention_fast.cuh"
#include "kernels/cuda/attention_prefill_cuda.h"
#include "kernels/cuda/device_inline.cuh"
#include "kernels/cuda/kv_layout.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ternary_gemv_cuda.h"

namespace onebit::cuda {
namespace {

using namespace attn;  // NOLINT: the attention constants and steps shared with decode_step


__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

int blocks_for(int64_t count, int threads) {
  int64_t b = (count + threads - 1) / threads;
  return static_cast<int>(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

// ---- programmatic dependent launch (sm_90) ----
// With PDL (set_pdl(true)) every kernel here is launched with programmatic stream serialization:
// it may start while the previous kernel of the stream is still running. Each kernel therefore
// (1) signals its own dependents at entry (pdl_trigger), (2) reads only constant data (weights)
// before pdl_wait, and (3) calls pdl_wait in every thread before it touches anything an earlier
// kernel writes or reads, and before its first global store. pdl_wait returns once the previous
// grid has completed and its memory is visible; since every grid waits for its predecessor before
// it can complete, the chain is transitive. Without the launch attribute (or below sm_90) both are
// no-ops.
bool g_pdl = false;

#define TRY_LAUNCH(...)                                  \
  do {                                                   \
    const cudaError_t launch_error = launch(__VA_ARGS__); \
    if (launch_error != cudaSuccess) return launch_error; \
  } while (0)

template <typename... KArgs, typename... Args>
cudaError_t launch_smem(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                        Args... args) {
  return launch_kernel(g_pdl, kernel, grid, block, smem, stream, args...);
}
template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t stream, Args... args) {
  return launch_smem(kernel, grid, block, 0, stream, args...);
}

// ---- embedding ----
template <typename T>
__global__ void embed_kernel(const T* __restrict__ table, int64_t cols, const int32_t* __restrict__ tokens,
                             float* __restrict__ x) {
  pdl_trigger();
  pdl_wait();
  const int64_t row = tokens[blockIdx.x];
  const T* src = table + row * cols;
  float* dst = x + static_cast<int64_t>(blockIdx.x) * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = to_f32(src[c]);
}

// ---- RMSNorm (+ quantization) ----
__device__ __forceinline__ float rms_factor(const float* x, int dim, float eps, float* red) {
  float ss = 0.0f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) ss = fmaf(x[c], x[c], ss);
  ss = block_sum(ss, red);
  return 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
}

__global__ void rmsnorm_kernel(const float* __restrict__ x, const float* __restrict__ w, int dim, float eps,
                               float* __restrict__ y) {
  pdl_trigger();
  pdl_wait();
  __shared__ float red[32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * dim;
  float* yr = y + static_cast<int64_t>(blockIdx.x) * dim;
  const float r = rms_factor(xr, dim, eps, red);
  for (int c = threadIdx.x; c < dim; c += blockDim.x) yr[c] = xr[c] * r * w[c];
}

__global__ void rmsnorm_quantize_kernel(const float* __restrict__ x, const float* __restrict__ w, int dim,
                                        float eps, int8_t* __restrict__ codes, int64_t stride,
                                        float* __restrict__ scales, int32_t* __restrict__ sums) {
  pdl_trigger();
  pdl_wait();
  __shared__ float red[32];
  __shared__ int ired[32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * dim;
  const float r = w != nullptr ? rms_factor(xr, dim, eps, red) : 1.0f;
  auto value = [&](int c) { return w != nullptr ? xr[c] * r * w[c] : xr[c]; };
  float m = 0.0f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) m = fmaxf(m, fabsf(value(c)));
  m = block_max(m, red);
  const float s = 127.0f / fmaxf(m, 1e-5f);
  int8_t* q = codes + static_cast<int64_t>(blockIdx.x) * stride;
  int sum = 0;
  for (int c = threadIdx.x; c < stride; c += blockDim.x) {
    int v = 0;
    if (c < dim) {
      v = __float2int_rn(__fmul_rn(value(c), s));  // half to even, like nearbyint
      v = v < -128 ? -128 : (v > 127 ? 127 : v);
    }
    q[c] = static_cast<int8_t>(v);
    sum += v;
  }
  sum = block_isum(sum, ired);
  if (threadIdx.x == 0) {
    scales[blockIdx.x] = s;
    sums[blockIdx.x] = sum;
  }
}

// One block per row, blockDim.x = T threads, the row's values kept in registers: thread t holds
// the kNormGroup-element groups t, t + T, ... (up to kFusedGroups of them; dim <= 16 * T), read
// with coalesced loads, one read of the inputs. The sum of squares is formed in the canonical order
// of norm_group_total (device_inline.cuh), which the fused decode GEMV (decode_fused_cuda.cu)
// follows too, so both give the same bits. kMode 0: x; 1: x += y (stored); 2: relu(x)^2 * y.
constexpr int kFusedGroups = 4;
constexpr int kFusedPer = kFusedGroups * kNormGroup;
template <int kMode>
__global__ void __launch_bounds__(1024)
    fused_norm_quant_kernel(float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ w, int dim,
                            float eps, int8_t* __restrict__ codes, int64_t stride, float* __restrict__ scales,
                            int32_t* __restrict__ sums) {
  pdl_trigger();
  __shared__ float red[32];
  __shared__ int ired[32];
  __shared__ float part[kNormMaxGroups];
  __shared__ float total;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * dim;
  const int T = blockDim.x, n_groups = (dim + kNormGroup - 1) / kNormGroup;
  auto col = [&](int i) {  // element i of this thread's kFusedPer
    return (static_cast<int>(threadIdx.x) + (i / kNormGroup) * T) * kNormGroup + i % kNormGroup;
  };
  // The norm weights are constants: loaded before waiting for the kernel that wrote x / y.
  float wv[kFusedPer];
#pragma unroll
  for (int i = 0; i < kFusedPer; ++i) {
    const int c = col(i);
    wv[i] = (w != nullptr && c < dim) ? __ldg(w + c) : 0.0f;
  }
  pdl_wait();
  float v[kFusedPer];
  float gs[kFusedGroups];
#pragma unroll
  for (int k = 0; k < kFusedGroups; ++k) gs[k] = 0.0f;
#pragma unroll
  for (int i = 0; i < kFusedPer; ++i) {
    const int c = col(i);
    v[i] = 0.0f;
    if (c < dim) {
      float a = x[base + c];
      if constexpr (kMode == 1) {
        a += y[base + c];
        x[base + c] = a;
      } else if constexpr (kMode == 2) {
        const float g = fmaxf(a, 0.0f);
        a = (g * g) * y[base + c];
      }
      v[i] = a;
      gs[i / kNormGroup] = fmaf(a, a, gs[i / kNormGroup]);
    }
  }
  float r = 1.0f;
  if (w != nullptr) {
#pragma unroll
    for (int k = 0; k < kFusedGroups; ++k) {
      const int g = static_cast<int>(threadIdx.x) + k * T;
      if (g < n_groups) part[g] = gs[k];
    }
    const float ss = norm_group_total(part, &total, n_groups);
    r = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
  }
  float m = 0.0f;
#pragma unroll
  for (int i = 0; i < kFusedPer; ++i) {
    const int c = col(i);
    if (c < dim) {
      if (w != nullptr) v[i] = v[i] * r * wv[i];
      m = fmaxf(m, fabsf(v[i]));
    }
  }
  m = block_max(m, red);
  const float s = 127.0f / fmaxf(m, 1e-5f);
  int8_t* q = codes + static_cast<int64_t>(blockIdx.x) * stride;
  int sum = 0;
#pragma unroll
  for (int i = 0; i < kFusedPer; ++i) {
    const int c = col(i);
    if (c < dim) {
      int t = __float2int_rn(__fmul_rn(v[i], s));
      t = t < -128 ? -128 : (t > 127 ? 127 : t);
      q[c] = static_cast<int8_t>(t);
      sum += t;
    }
  }
  for (int c = dim + threadIdx.x; c < stride; c += blockDim.x) q[c] = 0;
  sum = block_isum(sum, ired);
  if (threadIdx.x == 0) {
    scales[blockIdx.x] = s;
    sums[blockIdx.x] = sum;
  }
}

// Threads per row of fused_norm_quant_kernel: at least 128, kFusedPer elements each.
int fused_threads(int64_t dim) {
  int t = 128;
  while (t < 1024 && t * kFusedPer < dim) t *= 2;
  return t;
}

// ---- W2A8 GEMM on int8 tensor cores ----
// mma.m16n8k32: A = 16 weight rows x 32 columns as unsigned codes (w + 1), B = 32 columns x 8
// tokens of signed activations, C = int32. A block's tile is 4 warps x 16 rows (two 8-row groups
// of the layout each) x kGemmTokens tokens. Per 64-column chunk a slice of 4 warps copies, with
// cp.async and kGemmStages chunks ahead, the tokens' 64 activation bytes (shared by its 4 warps)
// and each warp's two 128-byte weight tiles into shared memory; the warps then read their
// fragments from there.
//
// K slices: a block of S slices (S x 4 warps, chosen at launch: more warps per SM where the grid is
// small, e.g. the 64 token rows of a batched decode step) splits the chunks of the tile, slice s
// taking chunks s, s + S, ..., each slice with its own staging buffers and barrier (bar.sync 1 + s);
// the slices' int32 sums are then added in shared memory. Integer sums are exact, so every S gives
// the same bits.
constexpr int kGemmWarps = 4;
constexpr int kGemmNTiles = 8;  // 8 tokens each
constexpr int kGemmTokens = 8 * kGemmNTiles;
constexpr int kGemmStages = 4;
constexpr int kGemmMaxSlices = 4;
// Bytes per token row of a staged chunk: 64 + 16 of padding, so that the 4-byte B-fragment reads
// of a warp (tokens g = 0..7, offsets 4t) fall in 32 different banks.
constexpr int kGemmBStride = 80;

struct GemmSliceSmem {
  int8_t sb[kGemmStages][kGemmTokens * kGemmBStride];
  uint4 sa[kGemmStages][kGemmWarps][2][8];
};
// Shared memory of an S-slice block: the staging of each slice; afterwards the partial sums of
// slices 1.. (kGemmWarps x 32 lanes x 32 values each) reuse it.
constexpr size_t gemm_smem_bytes(int slices) {
  const size_t stage = sizeof(GemmSliceSmem) * static_cast<size_t>(slices);
  const size_t red = static_cast<size_t>(slices - 1) * kGemmWarps * 32 * 4 * kGemmNTiles * sizeof(int);
  return stage > red ? stage : red;
}

__device__ __forceinline__ void mma_u8s8(int (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, int b0,
                                         int b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

template <int S>
__global__ void __launch_bounds__(32 * kGemmWarps * S)
    gemm_kernel(const uint4* __restrict__ w, const float* __restrict__ row_scale, int rows, int n_groups, int K,
                const int8_t* __restrict__ q, int64_t stride, const float* __restrict__ scales,
                const int32_t* __restrict__ sums, int n, float* __restrict__ y) {
  pdl_trigger();
  pdl_wait();
  extern __shared__ __align__(16) uint8_t gemm_smem[];
  constexpr int kSliceThreads = 32 * kGemmWarps;
  const int slice = static_cast<int>(threadIdx.x) / kSliceThreads, ltid = static_cast<int>(threadIdx.x) % kSliceThreads;
  GemmSliceSmem& sm = reinterpret_cast<GemmSliceSmem*>(gemm_smem)[slice];
  const int lane = ltid & 31, warp = ltid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int ga = (blockIdx.x * kGemmWarps + warp) * 2;
  // A warp past the last group still stages activations and meets the barriers; it stores nothing.
  const bool active = ga < n_groups;
  const int ga_c = active ? ga : n_groups - 1;
  const int gb = ga_c + 1 < n_groups ? ga_c + 1 : ga_c;  // a missing second group re-reads the first (not stored)
  const int tok0 = blockIdx.y * kGemmTokens;
  const uint4* wa = w + static_cast<size_t>(ga_c) * K * 8;
  const uint4* wb = w + static_cast<size_t>(gb) * K * 8;
  const int KS = (K - slice + S - 1) / S;  // this slice's chunks: slice + S * i, i < KS
  auto slice_sync = [&] {
    if constexpr (S == 1)
      __syncthreads();
    else
      asm volatile("bar.sync %0, %1;" ::"r"(1 + slice), "n"(kSliceThreads) : "memory");
  };
  // The slice's i-th chunk into buffer `buf`: 64 tokens x 64 bytes (2 x 16 bytes per thread;
  // tokens past n are zeros) and this warp's two tiles (lanes 0..15). Always one commit group,
  // even when empty.
  auto stage = [&](int i, int buf) {
    if (i < KS) {
      const int k = slice + S * i;
#pragma unroll
      for (int e = ltid; e < kGemmTokens * 4; e += kSliceThreads) {
        const int r = e >> 2, c = e & 3, tok = tok0 + r;
        const int8_t* src =
            q + static_cast<int64_t>(tok < n ? tok : 0) * stride + static_cast<int64_t>(k) * 64 + c * 16;
        cp_async16(&sm.sb[buf][r * kGemmBStride + c * 16], src, tok < n ? 16 : 0);
      }
      if (lane < 16)
        cp_async16(&sm.sa[buf][warp][lane >> 3][lane & 7],
                   (lane < 8 ? wa : wb) + static_cast<size_t>(k) * 8 + (lane & 7), 16);
    }
    cp_async_commit();
  };
  int acc[kGemmNTiles][4];
#pragma unroll
  for (int j = 0; j < kGemmNTiles; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0;
#pragma unroll
  for (int st = 0; st < kGemmStages - 1; ++st) stage(st, st);
  const unsigned shift = 2u * static_cast<unsigned>(t);
  for (int i = 0; i < KS; ++i) {
    cp_async_wait<kGemmStages - 2>();  // chunk i has landed (this thread's copies) ...
    slice_sync();                      // ... and every thread's of the slice; buffer (i - 1) % stages is free
    stage(i + kGemmStages - 1, (i + kGemmStages - 1) % kGemmStages);
    if (!active) continue;
    const int buf = i % kGemmStages;
    const uint4 va = sm.sa[buf][warp][0][g], vb = sm.sa[buf][warp][1][g];
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      const unsigned wa0 = ks == 0 ? va.x : va.z, wa1 = ks == 0 ? va.y : va.w;
      const unsigned wb0 = ks == 0 ? vb.x : vb.z, wb1 = ks == 0 ? vb.y : vb.w;
      const unsigned a0 = (wa0 >> shift) & 0x03030303u;  // row g,   columns 4t..4t+3
      const unsigned a1 = (wb0 >> shift) & 0x03030303u;  // row g+8
      const unsigned a2 = (wa1 >> shift) & 0x03030303u;  // row g,   columns 16+4t..
      const unsigned a3 = (wb1 >> shift) & 0x03030303u;  // row g+8
#pragma unroll
      for (int j = 0; j < kGemmNTiles; ++j) {
        const int8_t* br = &sm.sb[buf][(8 * j + g) * kGemmBStride + ks * 32 + 4 * t];
        const int b0 = *reinterpret_cast<const int*>(br);
        const int b1 = *reinterpret_cast<const int*>(br + 16);
        mma_u8s8(acc[j], a0, a1, a2, a3, b0, b1);
      }
    }
  }
  cp_async_wait<0>();
  if constexpr (S > 1) {
    // Slices 1.. hand their sums to slice 0 (value-major: a warp's 32 lanes write 32 consecutive ints).
    __syncthreads();  // every slice is done with its staging buffers
    int* red = reinterpret_cast<int*>(gemm_smem);
    constexpr int kVals = 4 * kGemmNTiles;
    if (slice > 0) {
      int* mine = red + ((slice - 1) * kGemmWarps + warp) * 32 * kVals;
#pragma unroll
      for (int j = 0; j < kGemmNTiles; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) mine[(j * 4 + e) * 32 + lane] = acc[j][e];
    }
    __syncthreads();
    if (slice > 0) return;
#pragma unroll
    for (int sl = 1; sl < S; ++sl) {
      const int* theirs = red + ((sl - 1) * kGemmWarps + warp) * 32 * kVals;
#pragma unroll
      for (int j = 0; j < kGemmNTiles; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] += theirs[(j * 4 + e) * 32 + lane];
    }
  }
  if (!active) return;
  const int r0 = ga * 8 + g, r1 = gb * 8 + g;
  const bool ok0 = r0 < rows, ok1 = gb != ga && r1 < rows;
  const float rs0 = ok0 ? row_scale[r0] : 0.0f, rs1 = ok1 ? row_scale[r1] : 0.0f;
#pragma unroll
  for (int j = 0; j < kGemmNTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int tok = tok0 + 8 * j + 2 * t + e;
      if (tok >= n) continue;
      const float s = scales[tok];
      const int qs = sums[tok];
      if (ok0) y[static_cast<int64_t>(tok) * rows + r0] = static_cast<float>(acc[j][e] - qs) * (rs0 / s);
      if (ok1) y[static_cast<int64_t>(tok) * rows + r1] = static_cast<float>(acc[j][2 + e] - qs) * (rs1 / s);
    }
  }
}

// ---- RoPE, KV store ----
__global__ void rope_kernel(float* __restrict__ x, int n_heads, int head_dim, const float* __restrict__ cos_t,
                            const float* __restrict__ sin_t, const int32_t* __restrict__ pos0) {
  pdl_trigger();
  pdl_wait();
  const int i = blockIdx.x, h = blockIdx.y, half = head_dim / 2;
  const int64_t pos = static_cast<int64_t>(*pos0) + i;
  float* v = x + (static_cast<int64_t>(i) * n_heads + h) * head_dim;
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    const float c = cos_t[pos * half + j], s = sin_t[pos * half + j];
    const float a = v[j], b = v[j + half];
    v[j] = rope_lo(a, b, c, s);
    v[j + half] = rope_hi(a, b, c, s);
  }
}

__device__ __forceinline__ bool kv_quantized(KvType t) { return t == KvType::kQ8 || t == KvType::kQ4R; }

// 1 / sqrt(D) rounded once to fp32, as the CPU's hadamard (kernels/cpu/cpu_kernels.cc) makes it.
__device__ __forceinline__ float hadamard_scale(int D) {
  return static_cast<float>(1.0 / sqrt(static_cast<double>(D)));
}

// ---- quantized KV rows (kv_quant.h) ----
// One warp quantizes one row of D <= 256 values: x[k] holds value 32 k + lane (0 beyond D). The
// arithmetic is quantize_kv_row's: for q4r first the fast Walsh-Hadamard transform, stage by
// stage h = 1, 2, 4, ... over the pairs (j, j + h) -> (a + b, a - b) in fp32 (stages h < 32 across
// lanes, the others across registers), then one multiplication by hadamard_scale(D); then per
// group (q8: the row; q4r: min(32, D) values) amax = max |x|, d = amax / levels (IEEE division),
// codes clamp(rint(x / d), -levels, levels) (half to even); a group with an inf or NaN gets d = NaN
// and codes 0, an all-zero one (or d underflowing to 0) d = 0 and codes 0. The bytes go to `dst`
// and, unless nullptr, to `dst2` (a shared-memory copy of the row).
constexpr int kQuantRegs = 8;
__device__ __forceinline__ float quant_group_scale(float amax, int bad, float levels) {
  if (bad) return __int_as_float(0x7fc00000);  // quiet NaN
  const float d = __fdiv_rn(amax, levels);
  return d > 0.0f ? d : 0.0f;
}
__device__ __forceinline__ int quant_code(float x, float d, float levels) {
  if (!(d > 0.0f)) return 0;  // also NaN
  return static_cast<int>(fminf(fmaxf(rintf(__fdiv_rn(x, d)), -levels), levels));
}
__device__ void quantize_row_warp(KvType t, float (&x)[kQuantRegs], int D, uint8_t* dst, uint8_t* dst2) {
  const unsigned full = 0xffffffffu;
  const int lane = threadIdx.x & 31;
  if (t == KvType::kQ8) {
    float amax = 0.0f;
    int bad = 0;
#pragma unroll
    for (int k = 0; k < kQuantRegs; ++k) {
      if (32 * k + lane < D) {
        bad |= !isfinite(x[k]);
        amax = fmaxf(amax, fabsf(x[k]));
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      amax = fmaxf(amax, __shfl_xor_sync(full, amax, o));
      bad |= __shfl_xor_sync(full, bad, o);
    }
    const float d = quant_group_scale(amax, bad, 127.0f);
    const int pad = (D + 3) / 4 * 4;
#pragma unroll
    for (int k = 0; k < kQuantRegs; ++k) {
      const int e = 32 * k + lane;
      if (e < pad) {
        const uint8_t b = e < D ? static_cast<uint8_t>(static_cast<int8_t>(quant_code(x[k], d, 127.0f))) : 0;
        dst[e] = b;
        if (dst2 != nullptr) dst2[e] = b;
      }
    }
    if (lane == 0) {
      *reinterpret_cast<float*>(dst + pad) = d;
      if (dst2 != nullptr) *reinterpret_cast<float*>(dst2 + pad) = d;
    }
    return;
  }
  // q4r: rotate.
#pragma unroll
  for (int h = 1; h < 32; h *= 2) {
    if (h >= D) break;
#pragma unroll
    for (int k = 0; k < kQuantRegs; ++k) {
      const float o = __shfl_xor_sync(full, x[k], h);
      x[k] = (lane & h) != 0 ? __fsub_rn(o, x[k]) : __fadd_rn(x[k], o);
    }
  }
#pragma unroll
  for (int hh = 1; hh < kQuantRegs; hh *= 2) {
    if (32 * hh >= D) break;
#pragma unroll
    for (int k = 0; k < kQuantRegs; ++k)
      if ((k & hh) == 0 && k + hh < kQuantRegs) {
        const float a = x[k], b = x[k + hh];
        x[k] = __fadd_rn(a, b);
        x[k + hh] = __fsub_rn(a, b);
      }
  }
  const float hs = hadamard_scale(D);
#pragma unroll
  for (int k = 0; k < kQuantRegs; ++k) x[k] = __fmul_rn(x[k], hs);
  // Groups of G = min(32, D) values: register k across the lanes (G = 16: each half warp).
  const int G = D < 32 ? D : 32;
#pragma unroll
  for (int k = 0; k < kQuantRegs; ++k) {
    if (32 * k >= D) break;
    float amax = fabsf(x[k]);
    int bad = !isfinite(x[k]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      if (o < G) {
        amax = fmaxf(amax, __shfl_xor_sync(full, amax, o));
        bad |= __shfl_xor_sync(full, bad, o);
      }
    }
    const float d = quant_group_scale(amax, bad, 7.0f);
    const int c = quant_code(x[k], d, 7.0f) + 8;
    const int hi = __shfl_down_sync(full, c, 8);
    // Chunk of 16 values 32k + 16 (lane / 16) ...: byte m < 8 holds value m (low) and m + 8 (high).
    if ((lane & 15) < 8 && 32 * k + lane < D) {
      const int at = 16 * k + (lane >> 4) * 8 + (lane & 7);
      const uint8_t b = static_cast<uint8_t>(c | (hi << 4));
      dst[at] = b;
      if (dst2 != nullptr) dst2[at] = b;
    }
    if (lane == 0) {  // group k (G = 32) or the only group (D = 16)
      *reinterpret_cast<float*>(dst + D / 2 + 4 * k) = d;
      if (dst2 != nullptr) *reinterpret_cast<float*>(dst2 + D / 2 + 4 * k) = d;
    }
  }
}

// Loads the D values of a row (fp32, global memory) into a warp's registers as quantize_row_warp takes them.
__device__ __forceinline__ void load_row_warp(const float* src, int D, float (&x)[kQuantRegs]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int k = 0; k < kQuantRegs; ++k) x[k] = 32 * k + lane < D ? src[32 * k + lane] : 0.0f;
}

__global__ void kv_store_kernel(KvView kv, int64_t layer, const float* __restrict__ k, const float* __restrict__ v,
                                const int32_t* __restrict__ pos0) {
  pdl_trigger();
  pdl_wait();
  const int i = blockIdx.x, which = blockIdx.y / static_cast<int>(kv.n_kv_heads);
  const int h = blockIdx.y % static_cast<int>(kv.n_kv_heads);
  const float* src = (which == 0 ? k : v) + (static_cast<int64_t>(i) * kv.n_kv_heads + h) * kv.head_dim;
  const int64_t pos = static_cast<int64_t>(*pos0) + i;
  if (kv_quantized(kv.type)) {  // one warp per row
    if (threadIdx.x >= 32) return;
    float x[kQuantRegs];
    load_row_warp(src, static_cast<int>(kv.head_dim), x);
    quantize_row_warp(kv.type, x, static_cast<int>(kv.head_dim), kv_row_ptr(kv, which, layer, h, pos), nullptr);
    return;
  }
  const size_t off = kv_off(kv, which, layer, h, pos);
  for (int d = threadIdx.x; d < kv.head_dim; d += blockDim.x) {
    if (kv.type == KvType::kF16)
      static_cast<__half*>(kv.data)[off + d] = __float2half_rn(src[d]);
    else
      static_cast<float*>(kv.data)[off + d] = src[d];
  }
}

// Blocks (row i, y): y < n_heads rotates q head y; else kv head y - n_heads: rotates k and stores k, v.
__global__ void rope_kv_kernel(float* __restrict__ q, float* __restrict__ k, const float* __restrict__ v, int n_heads,
                               KvView kv, int64_t layer, const float* __restrict__ cos_t,
                               const float* __restrict__ sin_t, const int32_t* __restrict__ pos0,
                               const RowSeq* __restrict__ rows) {
  pdl_trigger();
  pdl_wait();
  const int i = blockIdx.x, y = blockIdx.y, D = static_cast<int>(kv.head_dim), half = D / 2;
  const int64_t pos = row_pos(rows, pos0, i);
  if (rows != nullptr) {
    kv.data = rows[i].kv;
    kv.table = rows[i].table;
  }
  const int hkv = static_cast<int>(kv.n_kv_heads);
  float* row = y < n_heads ? q + (static_cast<int64_t>(i) * n_heads + y) * D
                           : k + (static_cast<int64_t>(i) * hkv + (y - n_heads)) * D;
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    const float c = cos_t[pos * half + j], s = sin_t[pos * half + j];
    const float a = row[j], b = row[j + half];
    row[j] = rope_lo(a, b, c, s);
    row[j + half] = rope_hi(a, b, c, s);
  }
  if (y < n_heads) return;
  __syncthreads();  // the rotated k row, written by other threads of this block
  const int h = y - n_heads;
  const float* vrow = v + (static_cast<int64_t>(i) * hkv + h) * D;
  if (kv_quantized(kv.type)) {  // warp 0 quantizes k, warp 1 (or 0 again) v
    for (int w = static_cast<int>(threadIdx.x >> 5); w < 2; w += static_cast<int>(blockDim.x >> 5)) {
      float x[kQuantRegs];
      load_row_warp(w == 0 ? row : vrow, D, x);
      quantize_row_warp(kv.type, x, D, kv_row_ptr(kv, w, layer, h, pos), nullptr);
    }
    return;
  }
  const size_t ko = kv_off(kv, 0, layer, h, pos), vo = kv_off(kv, 1, layer, h, pos);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    if (kv.type == KvType::kF16) {
      static_cast<__half*>(kv.data)[ko + d] = __float2half_rn(row[d]);
      static_cast<__half*>(kv.data)[vo + d] = __float2half_rn(vrow[d]);
    } else {
      static_cast<float*>(kv.data)[ko + d] = row[d];
      static_cast<float*>(kv.data)[vo + d] = vrow[d];
    }
  }
}

// ---- attention ----
// Value d of cache row `row` (kv_row_index) as fp32: q8 / q4r as scale * code (for q4r a value of
// the rotated row).
template <KvType kT>
__device__ __forceinline__ float kv_value(const KvView& kv, size_t row, int d) {
  const int D = static_cast<int>(kv.head_dim);
  if constexpr (kT == KvType::kF32) {
    return static_cast<const float*>(kv.data)[row * D + d];
  } else if constexpr (kT == KvType::kF16) {
    return __half2float(static_cast<const __half*>(kv.data)[row * D + d]);
  } else {
    const uint8_t* p = static_cast<const uint8_t*>(kv.data) + row * static_cast<size_t>(kv.row_bytes);
    if constexpr (kT == KvType::kQ8) {
      const float s = *reinterpret_cast<const float*>(p + (D + 3) / 4 * 4);
      return s * static_cast<float>(static_cast<int8_t>(p[d]));
    } else {
      const int G = D < 32 ? D : 32, m = d & 15;
      const float s = *reinterpret_cast<const float*>(p + D / 2 + 4 * (d / G));
      const int b = p[(d >> 4) * 8 + (m & 7)];
      return s * static_cast<float>((m < 8 ? b & 15 : b >> 4) - 8);
    }
  }
}

// In place: each of the n vectors of D values in shared memory x becomes H x (the stages and the
// arithmetic of hadamard_transform, kv_quant.h, so the same bits). Every thread of the block calls
// it after x is complete; x is complete again when it returns.
__device__ void hadamard_smem(float* x, int n, int D) {
  const int half = D / 2;
  for (int h = 1; h < D; h *= 2) {
    for (int p = threadIdx.x; p < n * half; p += blockDim.x) {
      const int v = p / half, r = p - v * half;
      const int j = v * D + (r / h) * 2 * h + r % h;
      const float a = x[j], b = x[j + h];
      x[j] = __fadd_rn(a, b);
      x[j + h] = __fsub_rn(a, b);
    }
    __syncthreads();
  }
  const float s = hadamard_scale(D);
  for (int e = threadIdx.x; e < n * D; e += blockDim.x) x[e] = __fmul_rn(x[e], s);
  __syncthreads();
}

template <KvType kT>
__global__ void __launch_bounds__(kAttnThreads)
    attention_kernel(KvView kv, int64_t layer, const float* __restrict__ q, int n_heads, int splits,
                     const int32_t* __restrict__ pos0, const RowSeq* __restrict__ rows, float* __restrict__ scratch,
                     float* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  __shared__ float qs[kAttnMaxG * kAttnMaxD];
  __shared__ float ps[kAttnMaxG][kAttnThreads];
  __shared__ float red[32];
  __shared__ float mrun[kAttnMaxG], lrun[kAttnMaxG], corr[kAttnMaxG];
  const int hk = blockIdx.x, i = blockIdx.y, split = blockIdx.z, tid = threadIdx.x;
  const int D = static_cast<int>(kv.head_dim), G = n_heads / static_cast<int>(kv.n_kv_heads);
  const int h0 = hk * G;
  const int n_keys = row_pos(rows, pos0, i) + 1;
  const int chunk = split_chunk(n_keys, row_splits(rows, i, splits));
  const int k0 = split * chunk, k1 = min(n_keys, k0 + chunk);
  if (k0 >= n_keys) return;  // beyond the active splits (the merge skips them too)
  if (rows != nullptr) {
    kv.data = rows[i].kv;
    kv.table = rows[i].table;
  }
  const float scale = 1.0f / sqrtf(static_cast<float>(D));
  for (int e = tid; e < G * D; e += kAttnThreads)
    qs[e] = q[(static_cast<int64_t>(i) * n_heads + h0) * D + e];
  if (tid < G) {
    mrun[tid] = -INFINITY;
    lrun[tid] = 0.0f;
  }
  float acc[kAttnOut];
#pragma unroll
  for (int o = 0; o < kAttnOut; ++o) acc[o] = 0.0f;
  __syncthreads();
  if constexpr (kT == KvType::kQ4R) hadamard_smem(qs, G, D);  // keys are H k: score H q
  for (int t0 = k0; t0 < k1; t0 += kAttnThreads) {
    const int key = t0 + tid;
    float sc[kAttnMaxG];
#pragma unroll
    for (int g = 0; g < kAttnMaxG; ++g) sc[g] = 0.0f;
    if (key < k1) {
      const size_t row = kv_row_index(kv, 0, layer, hk, key);
      for (int d = 0; d < D; ++d) {
        const float kd = kv_value<kT>(kv, row, d);
#pragma unroll
        for (int g = 0; g < kAttnMaxG; ++g)
          if (g < G) sc[g] = fmaf(qs[g * D + d], kd, sc[g]);
      }
    }
    // Per head: the tile max, the new running max, p = exp(s - m), and the tile sum.
#pragma unroll
    for (int g = 0; g < kAttnMaxG; ++g) {
      if (g >= G) break;
      const float s = key < k1 ? sc[g] * scale : -INFINITY;
      const float tmax = block_max(s, red);
      const float m_new = fmaxf(mrun[g], tmax);
      const float p = key < k1 ? expf(s - m_new) : 0.0f;
      ps[g][tid] = p;
      const float tsum = block_sum(p, red);
      if (tid == 0) {
        corr[g] = expf(mrun[g] - m_new);  // exp(-inf) = 0 on the first tile
        lrun[g] = lrun[g] * corr[g] + tsum;
        mrun[g] = m_new;
      }
    }
    __syncthreads();
    const int nk = min(kAttnThreads, k1 - t0);
#pragma unroll
    for (int o = 0; o < kAttnOut; ++o) {
      const int e = tid + o * kAttnThreads;
      if (e < G * D) {
        const int g = e / D, d = e % D;
        float a = acc[o] * corr[g];
        for (int j = 0; j < nk; ++j) a = fmaf(ps[g][j], kv_value<kT>(kv, kv_row_index(kv, 1, layer, hk, t0 + j), d), a);
        acc[o] = a;
      }
    }
    __syncthreads();  // ps and corr are rewritten by the next tile
  }
  if (splits == 1) {
#pragma unroll
    for (int o = 0; o < kAttnOut; ++o) {
      const int e = tid + o * kAttnThreads;
      if (e < G * D) {
        const int g = e / D;
        if constexpr (kT == KvType::kQ4R)
          qs[e] = acc[o] / lrun[g];
        else
          out[(static_cast<int64_t>(i) * n_heads + h0) * D + e] = acc[o] / lrun[g];
      }
    }
    if constexpr (kT == KvType::kQ4R) {  // the weighted sum of the H v: rotate it back
      __syncthreads();
      hadamard_smem(qs, G, D);
      for (int e = tid; e < G * D; e += kAttnThreads) out[(static_cast<int64_t>(i) * n_heads + h0) * D + e] = qs[e];
    }
    return;
  }  // (a split's partial result stays rotated: the merge kernel rotates the merged one back)
  // Partial result of this split: [row][head][split] x (m, l, acc[D]).
  const int64_t rec = 2 + D;
#pragma unroll
  for (int o = 0; o < kAttnOut; ++o) {
    const int e = tid + o * kAttnThreads;
    if (e < G * D) {
      const int g = e / D, d = e % D;
      float* p = scratch + ((static_cast<int64_t>(i) * n_heads + h0 + g) * splits + split) * rec;
      p[2 + d] = acc[o];
    }
  }
  if (tid < G) {
    float* p = scratch + ((static_cast<int64_t>(i) * n_heads + h0 + tid) * splits + split) * rec;
    p[0] = mrun[tid];
    p[1] = lrun[tid];
  }
}

template <int DPL, bool kStage>
__global__ void __launch_bounds__(kAttnThreads)
    attention_fast_kernel(KvView kv, int64_t layer, const float* __restrict__ q, int n_heads, int splits,
                          const int32_t* __restrict__ pos0, const RowSeq* __restrict__ rows,
                          float* __restrict__ scratch, float* __restrict__ out, DecodeFuse fuse) {
  pdl_trigger();
  extern __shared__ __align__(16) __half kv_stage[];
  attention_fast_block<DPL, kStage>(kv, layer, q, n_heads, splits, pos0, rows, scratch, out, fuse, blockIdx.x,
                                    blockIdx.y, blockIdx.z, kv_stage, [] { pdl_wait(); });
}

// ---- attention over q8 / q4r caches (head_dim D = 64 or 128) ----
// The fast kernel's shape and softmax (block = (kv head, row, split), 4 warps, 128-key tiles, the G
// query heads of the kv head sharing each K and V row), with every tile of K and V rows copied to
// shared memory first (4-byte cp.async, a warp per row: a row is only 4-byte aligned; the stage
// row stride padded to an odd number of words so the per-key reads hit distinct banks). Scores:
// thread t takes key t; the codes are widened to fp32 exactly (the float 2^23 + code, minus 2^23)
// and dotted with q in fp32, and each group's sum is multiplied once by its scale (q8: the row's;
// q4r: every 32 values). P.V: warp w takes keys w, w + 4, ..., lane l dims [l DPL, (l + 1) DPL);
// p times the row's (group's) scale once per key, then one FMA per code. fp32 throughout, so the
// result is fp32 attention over the dequantized rows up to the order of the roundings. q4r: q is
// rotated by H in shared memory (H q . H k = q . k), and the output rotated back (H H = I) here
// (one split) or by the merge kernel (the splits' partial sums stay rotated). In a decode step
// (fuse.k set) the split holding the new position quantizes its k (after RoPE) and v into the
// cache and into the stage.
template <KvType kT, int D>
__host__ __device__ constexpr int kv_q_row_words() {
  return kT == KvType::kQ8 ? D / 4 + 1 : D / 8 + D / 32;
}
template <KvType kT, int D>
__host__ __device__ constexpr int kv_q_stage_stride() {
  return kv_q_row_words<kT, D>() | 1;
}
template <KvType kT, int DPL>
constexpr size_t attention_q_stage_bytes() {
  return static_cast<size_t>(2 * kAttnThreads) * kv_q_stage_stride<kT, 32 * DPL>() * 4;
}
// Code of a q8 byte (any byte of u at bit `shift`) or a q4r nibble as an exact fp32 value.
__device__ __forceinline__ float q8_code(uint32_t u, int shift) {
  return __int_as_float(0x4B000000 | (((u >> shift) ^ 0x80u) & 0xFFu)) - 8388736.0f;  // 2^23 + 128
}
__device__ __forceinline__ float q4_code(uint32_t u, int shift) {
  return __int_as_float(0x4B000000 | ((u >> shift) & 0xFu)) - 8388616.0f;  // 2^23 + 8
}

template <int DPL, KvType kT>
__global__ void __launch_bounds__(kAttnThreads)
    attention_q_kernel(KvView kv, int64_t layer, const float* __restrict__ q, int n_heads, int splits,
                       const int32_t* __restrict__ pos0, const RowSeq* __restrict__ rows, float* __restrict__ scratch,
                       float* __restrict__ out, DecodeFuse fuse) {
  pdl_trigger();
  constexpr int D = 32 * DPL;
  constexpr int W = kv_q_row_words<kT, D>(), RS = kv_q_stage_stride<kT, D>();
  constexpr int kWarps = kAttnThreads / 32;
  extern __shared__ __align__(16) uint32_t kvq_stage[];
  uint32_t* const Ks = kvq_stage;
  uint32_t* const Vs = kvq_stage + kAttnThreads * RS;
  __shared__ __align__(16) float qs[kAttnMaxG * D];
  __shared__ float ps[kAttnMaxG][kAttnThreads];
  __shared__ float redm[kAttnMaxG][kWarps], reds[kAttnMaxG][kWarps];
  __shared__ float mrun[kAttnMaxG], lrun[kAttnMaxG], corr[kAttnMaxG];
  __shared__ float part[kWarps - 1][1024];
  const int hk = blockIdx.x, i = blockIdx.y, split = blockIdx.z, tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int G = n_heads / static_cast<int>(kv.n_kv_heads);
  const int h0 = hk * G;
  const int n_keys = row_pos(rows, pos0, i) + 1;
  const int chunk = split_chunk(n_keys, row_splits(rows, i, splits));
  const int k0 = split * chunk, k1 = min(n_keys, k0 + chunk);
  if (k0 >= n_keys) {  // beyond the active splits (the merge skips them too)
    pdl_wait();
    return;
  }
  if (rows != nullptr) {
    kv.data = rows[i].kv;
    kv.table = rows[i].table;
  }
  // Rows past the first tile: into L2 while the previous kernel runs (earlier keys are constants).
  {
    const int lines = static_cast<int>((kv.row_bytes + 127) / 128);
    const int p0 = k0 + kAttnThreads;
    const int per_which = (k1 > p0 ? k1 - p0 : 0) * lines;
    for (int t = tid; t < 2 * per_which; t += kAttnThreads) {
      const int which = t >= per_which ? 1 : 0, r = t - which * per_which;
      const uint8_t* p = kv_row_ptr(kv, which, layer, hk, p0 + r / lines) + (r % lines) * 128;
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
    }
  }
  // Copies the K and V rows of keys [t0, min(t0 + kAttnThreads, k1)) into Ks / Vs, except key `skip`.
  auto stage = [&](int t0, int skip) {
    const int nk = min(kAttnThreads, k1 - t0);
    for (int r = warp; r < 2 * nk; r += kWarps) {
      const int which = r >= nk ? 1 : 0, j = r - which * nk;
      if (t0 + j == skip) continue;
      const uint32_t* src = reinterpret_cast<const uint32_t*>(kv_row_ptr(kv, which, layer, hk, t0 + j));
      uint32_t* dst = (which == 0 ? Ks : Vs) + j * RS;
      for (int w = lane; w < W; w += 32) cp_async4(dst + w, src + w);
    }
    cp_async_commit();
  };
  const int new_key = fuse.k != nullptr ? n_keys - 1 : -1;
  if (fuse.k != nullptr) stage(k0, new_key);  // decode: constants only, before the wait
  pdl_wait();
  if (fuse.k == nullptr) stage(k0, -1);  // keys written by the previous kernel
  const float scale = 1.0f / sqrtf(static_cast<float>(D));
  if (fuse.k != nullptr) {
    constexpr int half = D / 2;
    const int pos = n_keys - 1;
    const float* ct = fuse.cos_t + static_cast<int64_t>(pos) * half;
    const float* st = fuse.sin_t + static_cast<int64_t>(pos) * half;
    rope_q_heads<D>(q + (static_cast<int64_t>(i) * n_heads + h0) * D, G, ct, st, qs);
    if (k0 <= pos && pos < k1 && warp < 2) {  // the split holding the new key: warp 0 stores k, warp 1 v
      float x[kQuantRegs];
#pragma unroll
      for (int r = 0; r < kQuantRegs; ++r) {
        const int d = 32 * r + lane;
        x[r] = 0.0f;
        if (d < D) {
          if (warp == 0) {
            const float* kh = fuse.k + (static_cast<int64_t>(i) * kv.n_kv_heads + hk) * D;
            const int j = d < half ? d : d - half;
            const float a = kh[j], b = kh[j + half];
            x[r] = d < half ? rope_lo(a, b, ct[j], st[j]) : rope_hi(a, b, ct[j], st[j]);
          } else {
            x[r] = fuse.v[(static_cast<int64_t>(i) * kv.n_kv_heads + hk) * D + d];
          }
        }
      }
      uint32_t* st_row = pos - k0 < kAttnThreads ? (warp == 0 ? Ks : Vs) + (pos - k0) * RS : nullptr;
      quantize_row_warp(kT, x, D, kv_row_ptr(kv, warp, layer, hk, pos), reinterpret_cast<uint8_t*>(st_row));
    }
  } else {
    for (int e = tid; e < G * D; e += kAttnThreads) qs[e] = q[(static_cast<int64_t>(i) * n_heads + h0) * D + e];
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
  // Where lane's DPL values sit in a V row: the word, the bit of its first code, the scale's word.
  int v_word, v_shift, v_scale;
  if constexpr (kT == KvType::kQ8) {
    v_word = lane * DPL / 4;
    v_shift = 8 * ((lane * DPL) & 3);
    v_scale = D / 4;
  } else {
    const int d0 = lane * DPL, b = (d0 >> 4) * 8 + (d0 & 7);  // byte of value d0 (low or high nibble)
    v_word = b >> 2;
    v_shift = 8 * (b & 3) + ((d0 & 15) >= 8 ? 4 : 0);
    v_scale = D / 8 + d0 / 32;
  }
  __syncthreads();  // qs
  if constexpr (kT == KvType::kQ4R) hadamard_smem(qs, G, D);  // keys are H k: score H q
  cp_async_wait<0>();
  __syncthreads();
  for (int t0 = k0; t0 < k1; t0 += kAttnThreads) {
    if (t0 != k0) {  // later tiles (the previous one's readers are past the barrier ending it)
      stage(t0, -1);
      cp_async_wait<0>();
      __syncthreads();
    }
    const int key = t0 + tid;
    float sc[kAttnMaxG];
#pragma unroll
    for (int g = 0; g < kAttnMaxG; ++g) sc[g] = 0.0f;
    if (key < k1) {
      const uint32_t* kr = Ks + tid * RS;
      if constexpr (kT == KvType::kQ8) {
#pragma unroll 4
        for (int w = 0; w < D / 4; ++w) {
          const uint32_t u = kr[w];
          const float c0 = q8_code(u, 0), c1 = q8_code(u, 8), c2 = q8_code(u, 16), c3 = q8_code(u, 24);
#pragma unroll
          for (int g = 0; g < kAttnMaxG; ++g)
            if (g < G) {
              const float4 qa = *reinterpret_cast<const float4*>(&qs[g * D + 4 * w]);
              float a = sc[g];
              a = fmaf(qa.x, c0, a);
              a = fmaf(qa.y, c1, a);
              a = fmaf(qa.z, c2, a);
              a = fmaf(qa.w, c3, a);
              sc[g] = a;
            }
        }
        const float s = __uint_as_float(kr[D / 4]);
#pragma unroll
        for (int g = 0; g < kAttnMaxG; ++g) sc[g] *= s;
      } else {
#pragma unroll
        for (int grp = 0; grp < D / 32; ++grp) {
          float pg[kAttnMaxG];
#pragma unroll
          for (int g = 0; g < kAttnMaxG; ++g) pg[g] = 0.0f;
          // Two chunks of 16 values (8 bytes: words u0, u1): low nibbles of u0 values 0-3, of u1
          // 4-7; high nibbles of u0 8-11, of u1 12-15.
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const uint32_t u0 = kr[4 * grp + 2 * c], u1 = kr[4 * grp + 2 * c + 1];
            const int base = 32 * grp + 16 * c;
#pragma unroll
            for (int quad = 0; quad < 4; ++quad) {
              const uint32_t u = (quad & 1) ? u1 : u0;
              const int sh = (quad & 2) ? 4 : 0;
              const float c0 = q4_code(u, sh), c1 = q4_code(u, sh + 8), c2 = q4_code(u, sh + 16),
                          c3 = q4_code(u, sh + 24);
#pragma unroll
              for (int g = 0; g < kAttnMaxG; ++g)
                if (g < G) {
                  const float4 qa = *reinterpret_cast<const float4*>(&qs[g * D + base + 4 * quad]);
                  float a = pg[g];
                  a = fmaf(qa.x, c0, a);
                  a = fmaf(qa.y, c1, a);
                  a = fmaf(qa.z, c2, a);
                  a = fmaf(qa.w, c3, a);
                  pg[g] = a;
                }
            }
          }
          const float s = __uint_as_float(kr[D / 8 + grp]);
#pragma unroll
          for (int g = 0; g < kAttnMaxG; ++g) sc[g] = fmaf(s, pg[g], sc[g]);
        }
      }
    }
    attn_tile_softmax<kWarps>(sc, key < k1, scale, G, lane, warp, tid, redm, reds, ps, mrun, lrun, corr);
    attn_rescale(acc, corr, G);
    const int nk = min(kAttnThreads, k1 - t0);
#pragma unroll 4
    for (int j = warp; j < nk; j += kWarps) {
      const uint32_t u = Vs[j * RS + v_word];
      const float s = __uint_as_float(Vs[j * RS + v_scale]);
      float vv[DPL];
#pragma unroll
      for (int d = 0; d < DPL; ++d)
        vv[d] = kT == KvType::kQ8 ? q8_code(u, v_shift + 8 * d) : q4_code(u, v_shift + 8 * d);
#pragma unroll
      for (int g = 0; g < kAttnMaxG; ++g)
        if (g < G) {
          const float p = ps[g][j] * s;
#pragma unroll
          for (int d = 0; d < DPL; ++d) acc[g][d] = fmaf(p, vv[d], acc[g][d]);
        }
    }
    __syncthreads();  // ps, corr and the stage rewritten by the next tile
  }
  // With q4r and one split the output is still rotated: into qs, rotated back below.
  attn_finish<DPL, kWarps>(acc, part, G, lane, warp, splits, split, i, n_heads, h0, mrun, lrun, scratch,
                           kT == KvType::kQ4R ? qs : out + (static_cast<int64_t>(i) * n_heads + h0) * D);
  if constexpr (kT == KvType::kQ4R) {
    if (splits == 1) {  // the weighted sum of the H v: rotate it back
      __syncthreads();
      hadamard_smem(qs, G, D);
      for (int e = tid; e < G * D; e += kAttnThreads) out[(static_cast<int64_t>(i) * n_heads + h0) * D + e] = qs[e];
    }
  }
}

// Merge of the splits: block = (row, head), threads over D.
// rotate (q4r caches): the merged sum is H times the output; rotated back in shared memory.
__global__ void attention_merge_kernel(const float* __restrict__ scratch, int n_heads, int D, int splits,
                                       const int32_t* __restrict__ pos0, const RowSeq* __restrict__ rows,
                                       float* __restrict__ out, int rotate, int skip_chunk_rows) {
  pdl_trigger();
  pdl_wait();
  __shared__ float o[kAttnMaxD];
  const int i = blockIdx.x, h = blockIdx.y;
  if (chunk_row_elsewhere(skip_chunk_rows, rows, i)) return;
  const int n_keys = row_pos(rows, pos0, i) + 1;
  const int chunk = split_chunk(n_keys, row_splits(rows, i, splits));
  const int active = (n_keys + chunk - 1) / chunk;
  const int64_t rec = 2 + D;
  const float* base = scratch + (static_cast<int64_t>(i) * n_heads + h) * splits * rec;
  __shared__ MergeSmem msm;
  merge_weights(base, 0, rec, active, 1, msm, threadIdx.x, blockDim.x, [] { __syncthreads(); });
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    const float v = merge_value(base, rec, active, msm.w[0], msm.l[0], d);
    if (rotate)
      o[d] = v;
    else
      out[(static_cast<int64_t>(i) * n_heads + h) * D + d] = v;
  }
  if (!rotate) return;
  __syncthreads();
  hadamard_smem(o, 1, D);
  for (int d = threadIdx.x; d < D; d += blockDim.x) out[(static_cast<int64_t>(i) * n_heads + h) * D + d] = o[d];
}

// ---- elementwise ----
__global__ void relu2_mul_kernel(const float* __restrict__ gate, const float* __restrict__ up, int64_t count,
                                 float* out) {
  pdl_trigger();
  pdl_wait();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = fmaxf(gate[i], 0.0f);
    out[i] = (g * g) * up[i];
  }
}

__global__ void add_kernel(float* x, const float* __restrict__ y, int64_t count) {
  pdl_trigger();
  pdl_wait();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] += y[i];
}

// ---- LM head ----
// One warp per row (grid-stride over rows), up to kHeadTokens token rows per pass over the weights.
constexpr int kHeadTokens = 8;
constexpr int kHeadThreads = 256;
constexpr int kHeadLoads = 8;


template <typename T>
struct Vec16 {
  static constexpr int kN = 16 / sizeof(T);
};

template <typename T>
__device__ __forceinline__ void unpack16(const uint4& v, float* f) {
  if constexpr (sizeof(T) == 4) {
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
  } else {
    const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      T lo, hi;
      const unsigned short a = static_cast<unsigned short>(u[i] & 0xffffu), b = static_cast<unsigned short>(u[i] >> 16);
      memcpy(&lo, &a, 2);
      memcpy(&hi, &b, 2);
      f[2 * i] = to_f32(lo);
      f[2 * i + 1] = to_f32(hi);
    }
  }
}

template <typename T, bool kVec>
__global__ void __launch_bounds__(kHeadThreads)
    dense_gemv_kernel(const T* __restrict__ w, int64_t rows, int cols, const float* __restrict__ x, int nt,
                      float* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kHeadThreads / 32);
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kHeadThreads / 32) + (threadIdx.x >> 5); r < rows; r += warps) {
    const T* wr = w + r * cols;
    float acc[kHeadTokens];
#pragma unroll
    for (int j = 0; j < kHeadTokens; ++j) acc[j] = 0.0f;
    if constexpr (kVec) {
      constexpr int V = Vec16<T>::kN;
      const uint4* w4 = reinterpret_cast<const uint4*>(wr);
      const int nv = cols / V;
      // kHeadLoads 16-byte weight loads in flight per lane before the first use (streamed, not
      // kept in L1); the activations are re-read from L1.
      for (int c0 = lane; c0 < nv; c0 += 32 * kHeadLoads) {
        uint4 wv[kHeadLoads];
#pragma unroll
        for (int u = 0; u < kHeadLoads; ++u)
          if (c0 + 32 * u < nv) wv[u] = load_stream16(w4 + c0 + 32 * u);
#pragma unroll
        for (int u = 0; u < kHeadLoads; ++u) {
          const int c = c0 + 32 * u;
          if (c >= nv) break;
          float f[V];
          unpack16<T>(wv[u], f);
#pragma unroll
          for (int j = 0; j < kHeadTokens; ++j) {
            if (j < nt) {
              const float4* xv = reinterpret_cast<const float4*>(x + static_cast<int64_t>(j) * cols + c * V);
#pragma unroll
              for (int e = 0; e < V / 4; ++e) {
                const float4 xx = __ldg(xv + e);
                acc[j] = fmaf(f[4 * e], xx.x, acc[j]);
                acc[j] = fmaf(f[4 * e + 1], xx.y, acc[j]);
                acc[j] = fmaf(f[4 * e + 2], xx.z, acc[j]);
                acc[j] = fmaf(f[4 * e + 3], xx.w, acc[j]);
              }
            }
          }
        }
      }
    } else {
      for (int c = lane; c < cols; c += 32) {
        const float wv = to_f32(wr[c]);
#pragma unroll
        for (int j = 0; j < kHeadTokens; ++j)
          if (j < nt) acc[j] = fmaf(wv, x[static_cast<int64_t>(j) * cols + c], acc[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < kHeadTokens; ++j) {
      if (j < nt) {
        const float s = warp_sum(acc[j]);
        if (lane == 0) out[static_cast<int64_t>(j) * rows + r] = s;
      }
    }
  }
}

// Decode LM head for one token row of 16-bit weights on sm_90 (head_stream_on): each block
// streams a contiguous range of rows through `stages` shared-memory stages of kStreamWarps rows,
// one bulk copy (TMA) per stage issued by a producer warp, which starts before the wait for the
// previous kernel (the weights are constants). Consumer warp w takes row w of each stage with x in
// registers. Per row, the lane -> column assignment, the FMA order and the warp sum are those of
// dense_gemv_kernel, so the logits are the same bits; only how the bytes arrive differs: whole
// stages in flight per SM instead of a few 16-byte loads per lane.
constexpr int kStreamWarps = 8;
constexpr int kStreamMaxStages = 4;
constexpr size_t kStreamSmem = 200 * 1024;

template <typename T, int kVec>
__global__ void __launch_bounds__(32 * (kStreamWarps + 1))
    head_stream_kernel(const T* __restrict__ w, int64_t rows, int cols, int64_t rows_per_block, int stages,
                       const float* __restrict__ x, float* __restrict__ out) {
  extern __shared__ __align__(128) uint4 stage_buf[];
  __shared__ __align__(8) uint64_t full[kStreamMaxStages], empty[kStreamMaxStages];
  pdl_trigger();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
  const int nv = cols / 8;  // 16-byte vectors per row
  const int n_it = r0 < r1 ? static_cast<int>((r1 - r0 + kStreamWarps - 1) / kStreamWarps) : 0;
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], kStreamWarps);
    }
    mbar_init_fence();
  }
  __syncthreads();
  if (warp == kStreamWarps) {  // producer
    if (lane == 0) {
      for (int it = 0; it < n_it; ++it) {
        const int s = it % stages;
        mbar_wait(&empty[s], ((it / stages) & 1) ^ 1);
        const int64_t ra = r0 + static_cast<int64_t>(it) * kStreamWarps;
        const int64_t nr = r1 - ra < kStreamWarps ? r1 - ra : kStreamWarps;
        const uint32_t bytes = static_cast<uint32_t>(nr * nv * 16);
        mbar_arrive_expect_tx(&full[s], bytes);
        bulk_copy_g2s(stage_buf + static_cast<size_t>(s) * kStreamWarps * nv, w + ra * cols, bytes, &full[s]);
      }
    }
    pdl_wait();
    return;
  }
  pdl_wait();
  float xr[kVec][8];
#pragma unroll
  for (int u = 0; u < kVec; ++u) {
    const int c = lane + 32 * u;
    if (c < nv) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(x) + 2 * c);
      const float4 b = __ldg(reinterpret_cast<const float4*>(x) + 2 * c + 1);
      xr[u][0] = a.x, xr[u][1] = a.y, xr[u][2] = a.z, xr[u][3] = a.w;
      xr[u][4] = b.x, xr[u][5] = b.y, xr[u][6] = b.z, xr[u][7] = b.w;
    }
  }
  for (int it = 0; it < n_it; ++it) {
    const int s = it % stages;
    mbar_wait(&full[s], (it / stages) & 1);
    const int64_t r = r0 + static_cast<int64_t>(it) * kStreamWarps + warp;
    if (r < r1) {
      const uint4* row = stage_buf + (static_cast<size_t>(s) * kStreamWarps + warp) * nv;
      float acc = 0.0f;
#pragma unroll
      for (int u = 0; u < kVec; ++u) {
        const int c = lane + 32 * u;
        if (c < nv) {
          float f[8];
          unpack16<T>(row[c], f);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc = fmaf(f[e], xr[u][e], acc);
        }
      }
      acc = warp_sum(acc);
      if (lane == 0) out[r] = acc;
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s]);
  }
}

__device__ __forceinline__ int dp4a_ss(int a, int b, int c) { return __dp4a(a, b, c); }

__global__ void __launch_bounds__(kHeadThreads)
    int8_gemv_kernel(const int8_t* __restrict__ w, const float* __restrict__ d, int64_t rows, int64_t stride,
                     const int8_t* __restrict__ q, int64_t qstride, const float* __restrict__ scales, int nt,
                     float* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kHeadThreads / 32);
  const int nv = static_cast<int>(stride / 16);
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kHeadThreads / 32) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int4* w4 = reinterpret_cast<const int4*>(w + r * stride);
    int acc[kHeadTokens];
#pragma unroll
    for (int j = 0; j < kHeadTokens; ++j) acc[j] = 0;
    for (int c0 = lane; c0 < nv; c0 += 32 * kHeadLoads) {
      uint4 wl[kHeadLoads];
#pragma unroll
      for (int u = 0; u < kHeadLoads; ++u)
        if (c0 + 32 * u < nv) wl[u] = load_stream16(reinterpret_cast<const uint4*>(w4) + c0 + 32 * u);
#pragma unroll
      for (int u = 0; u < kHeadLoads; ++u) {
        const int c = c0 + 32 * u;
        if (c >= nv) break;
        const int4 wv = make_int4(static_cast<int>(wl[u].x), static_cast<int>(wl[u].y), static_cast<int>(wl[u].z),
                                  static_cast<int>(wl[u].w));
#pragma unroll
        for (int j = 0; j < kHeadTokens; ++j) {
          if (j < nt) {
            const int4 xv = __ldg(reinterpret_cast<const int4*>(q + j * qstride) + c);
            acc[j] = dp4a_ss(wv.x, xv.x, acc[j]);
            acc[j] = dp4a_ss(wv.y, xv.y, acc[j]);
            acc[j] = dp4a_ss(wv.z, xv.z, acc[j]);
            acc[j] = dp4a_ss(wv.w, xv.w, acc[j]);
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kHeadTokens; ++j) {
      if (j < nt) {
        const int s = warp_isum(acc[j]);
        if (lane == 0) out[static_cast<int64_t>(j) * rows + r] = (static_cast<float>(s) / scales[j]) * d[r];
      }
    }
  }
}

// int8 LM head for many token rows on int8 tensor cores (mma.m16n8k32 s8 x s8): a warp owns 16
// rows x 64 tokens. Per 64-column chunk lane (g, t) loads 16 bytes, columns [16t, 16t + 16), of
// rows g and g + 8 and of its tokens' codes; words x, y feed one mma and z, w the next. That
// permutes the k order inside the chunk identically for weights and activations, so the int32 sums
// are exactly those of int8_gemv_kernel, and so are the logits.
constexpr int kHeadMmaWarps = 4;
constexpr int kHeadMmaTiles = 8;  // 8 tokens each

__device__ __forceinline__ void mma_s8s8(int (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                                         unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

__global__ void __launch_bounds__(32 * kHeadMmaWarps)
    int8_head_mma_kernel(const int8_t* __restrict__ w, const float* __restrict__ d, int64_t rows, int64_t stride,
                         const int8_t* __restrict__ q, int64_t qstride, const float* __restrict__ scales, int n,
                         float* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t r0 = (static_cast<int64_t>(blockIdx.x) * kHeadMmaWarps + warp) * 16;
  if (r0 >= rows) return;
  const int64_t ra = r0 + g, rb = r0 + g + 8;
  // Rows past the end read row r0 (their results are not stored).
  const uint4* wa = reinterpret_cast<const uint4*>(w + (ra < rows ? ra : r0) * stride) + t;
  const uint4* wb = reinterpret_cast<const uint4*>(w + (rb < rows ? rb : r0) * stride) + t;
  const int tok0 = blockIdx.y * 8 * kHeadMmaTiles;
  const uint4* xr[kHeadMmaTiles];
#pragma unroll
  for (int j = 0; j < kHeadMmaTiles; ++j) {
    const int tok = tok0 + 8 * j + g;
    xr[j] = reinterpret_cast<const uint4*>(q + static_cast<int64_t>(tok < n ? tok : 0) * qstride) + t;
  }
  int acc[kHeadMmaTiles][4];
#pragma unroll
  for (int j = 0; j < kHeadMmaTiles; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0;
  const int chunks = static_cast<int>(stride / 64);
#pragma unroll 2
  for (int k = 0; k < chunks; ++k) {
    const uint4 va = load_stream16(wa + 4 * k), vb = load_stream16(wb + 4 * k);
#pragma unroll
    for (int j = 0; j < kHeadMmaTiles; ++j) {
      const uint4 xb = __ldg(xr[j] + 4 * k);
      mma_s8s8(acc[j], va.x, vb.x, va.y, vb.y, xb.x, xb.y);
      mma_s8s8(acc[j], va.z, vb.z, va.w, vb.w, xb.z, xb.w);
    }
  }
  const float da = ra < rows ? d[ra] : 0.0f, db = rb < rows ? d[rb] : 0.0f;
#pragma unroll
  for (int j = 0; j < kHeadMmaTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int tok = tok0 + 8 * j + 2 * t + e;
      if (tok >= n) continue;
      const float s = scales[tok];
      if (ra < rows) out[static_cast<int64_t>(tok) * rows + ra] = (static_cast<float>(acc[j][e]) / s) * da;
      if (rb < rows) out[static_cast<int64_t>(tok) * rows + rb] = (static_cast<float>(acc[j][2 + e]) / s) * db;
    }
  }
}

// Block r: the argmax of row r of v ([rows][n]) into out[r].
__global__ void argmax_kernel(const float* __restrict__ v, int64_t n, int32_t* out) {
  pdl_trigger();
  pdl_wait();
  v += static_cast<int64_t>(blockIdx.x) * n;
  out += blockIdx.x;
  __shared__ float sv[32];
  __shared__ int64_t si[32];
  float best = -INFINITY;
  int64_t bi = n;  // larger than any index: loses every tie
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float x = v[i];
    if (bi == n || x > best) {  // increasing i: the first of equal maxima stays
      best = x;
      bi = i;
    }
  }
  warp_argmax(best, bi);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = best;
    si[warp] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w)
      if (sv[w] > best || (sv[w] == best && si[w] < bi)) {
        best = sv[w];
        bi = si[w];
      }
    *out = static_cast<int32_t>(bi < n ? bi : 0);
  }
}

// The streaming decode head (head_stream_kernel) needs sm_90 bulk copies; ONEBIT_CUDA_HEAD_STREAM=0
// turns it off (same bits either way).
bool head_stream_on() {
  static const bool on = [] {
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
      return false;
    const char* e = std::getenv("ONEBIT_CUDA_HEAD_STREAM");
    return major >= 9 && !(e != nullptr && e[0] == '0' && e[1] == 0);
  }();
  return on;
}

int sm_count() {
  static int count = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      return 132;
    return n;
  }();
  return count;
}

int norm_threads(int64_t dim) {
  int t = 32;
  while (t < 1024 && t < dim) t *= 2;
  return t < 128 ? 128 : t;
}

}  // namespace

void set_pdl(bool on) { g_pdl = on; }
bool pdl_enabled() { return g_pdl; }

cudaError_t embed_rows(const void* table, DenseType type, int64_t cols, const int32_t* tokens, int64_t n, float* x,
                       cudaStream_t stream) {
  if (n <= 0 || cols <= 0) return cudaErrorInvalidValue;
  const unsigned b = static_cast<unsigned>(n);
  switch (type) {
    case DenseType::kF32:
      TRY_LAUNCH(embed_kernel<float>, dim3(b), dim3(256), stream, static_cast<const float*>(table), cols, tokens, x);
      break;
    case DenseType::kF16:
      TRY_LAUNCH(embed_kernel<__half>, dim3(b), dim3(256), stream, static_cast<const __half*>(table), cols, tokens, x);
      break;
    case DenseType::kBF16:
      TRY_LAUNCH(embed_kernel<__nv_bfloat16>, dim3(b), dim3(256), stream, static_cast<const __nv_bfloat16*>(table),
                 cols, tokens, x);
      break;
  }
  return cudaGetLastError();
}

cudaError_t rmsnorm_rows(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* y,
                         cudaStream_t stream) {
  if (n <= 0 || dim <= 0 || dim >= kMaxCols) return cudaErrorInvalidValue;
  TRY_LAUNCH(rmsnorm_kernel, dim3(static_cast<unsigned>(n)), dim3(norm_threads(dim)), stream, x, w,
             static_cast<int>(dim), eps, y);
  return cudaGetLastError();
}

cudaError_t rmsnorm_quantize_rows(const float* x, const float* w, int64_t n, int64_t dim, float eps, QuantActs q,
                                  cudaStream_t stream) {
  if (n <= 0 || dim <= 0 || dim >= kMaxCols || q.stride < cuda_act_len(dim)) return cudaErrorInvalidValue;
  if (dim <= kFusedMaxDim) {  // one read of the row, values in registers
    TRY_LAUNCH(fused_norm_quant_kernel<0>, dim3(static_cast<unsigned>(n)), dim3(fused_threads(dim)), stream,
               const_cast<float*>(x), nullptr, w, static_cast<int>(dim), eps, q.codes, q.stride, q.scales, q.sums);
    return cudaGetLastError();
  }
  TRY_LAUNCH(rmsnorm_quantize_kernel, dim3(static_cast<unsigned>(n)), dim3(norm_threads(dim)), stream, x, w,
             static_cast<int>(dim), eps, q.codes, q.stride, q.scales, q.sums);
  return cudaGetLastError();
}

cudaError_t add_rmsnorm_quantize_rows(float* x, const float* y, const float* w, int64_t n, int64_t dim, float eps,
                                      QuantActs q, cudaStream_t stream) {
  if (n <= 0 || dim <= 0 || dim > kFusedMaxDim || q.stride < cuda_act_len(dim)) return cudaErrorInvalidValue;
  TRY_LAUNCH(fused_norm_quant_kernel<1>, dim3(static_cast<unsigned>(n)), dim3(fused_threads(dim)), stream, x, y, w,
             static_cast<int>(dim), eps, q.codes, q.stride, q.scales, q.sums);
  return cudaGetLastError();
}

cudaError_t relu2_rmsnorm_quantize_rows(const float* gate, const float* up, const float* w, int64_t n, int64_t dim,
                                        float eps, QuantActs q, cudaStream_t stream) {
  if (n <= 0 || dim <= 0 || dim > kFusedMaxDim || q.stride < cuda_act_len(dim)) return cudaErrorInvalidValue;
  TRY_LAUNCH(fused_norm_quant_kernel<2>, dim3(static_cast<unsigned>(n)), dim3(fused_threads(dim)), stream,
             const_cast<float*>(gate), up, w, static_cast<int>(dim), eps, q.codes, q.stride, q.scales, q.sums);
  return cudaGetLastError();
}

int64_t kv_type_row_bytes(KvType t, int64_t head_dim) {
  const int64_t d = head_dim;
  if (d < 1) return 0;
  switch (t) {
    case KvType::kF32: return 4 * d;
    case KvType::kF16: return 2 * d;
    case KvType::kQ8: return (d + 3) / 4 * 4 + 4;
    case KvType::kQ4R:
      if (d < 16 || (d & (d - 1)) != 0) return 0;
      return d / 2 + 4 * (d / (d < 32 ? d : 32));
  }
  return 0;
}

namespace {
// A view the kernels can use: its row size is its type's, and quantized rows fit one warp's registers.
bool kv_view_ok(const KvView& kv) {
  const int64_t rb = kv_type_row_bytes(kv.type, kv.head_dim);
  if (rb == 0 || kv.row_bytes != rb) return false;
  return !(kv.type == KvType::kQ8 || kv.type == KvType::kQ4R) || kv.head_dim <= 32 * kQuantRegs;
}
}  // namespace

cudaError_t rope_kv_store_rows(float* q, float* k, const float* v, int64_t n, int64_t n_heads, KvView kv, int64_t layer,
                               const float* cos_t, const float* sin_t, const int32_t* pos0, cudaStream_t stream,
                               const RowSeq* rows) {
  if (n <= 0 || n_heads <= 0 || kv.head_dim <= 0 || kv.head_dim % 2 != 0 || layer < 0 || layer >= kv.n_layers ||
      !kv_view_ok(kv))
    return cudaErrorInvalidValue;
  // Whole warps: a q8 / q4r row is quantized by one warp.
  const int threads = kv.head_dim < 64 ? 32 : (kv.head_dim > 512 ? 256 : static_cast<int>((kv.head_dim / 2 + 31) / 32 * 32));
  TRY_LAUNCH(rope_kv_kernel, dim3(static_cast<unsigned>(n), static_cast<unsigned>(n_heads + kv.n_kv_heads)),
             dim3(threads), stream, q, k, v, static_cast<int>(n_heads), kv, layer, cos_t, sin_t, pos0, rows);
  return cudaSuccess;
}

namespace {
// K slices per GEMM block (gemm_kernel): enough blocks x warps to fill the SMs, each slice still
// with at least 4 chunks. ONEBIT_CUDA_GEMM_SLICES=1|2|4 fixes it (read once).
int gemm_slices(int64_t blocks, int K) {
  static const int forced = [] {
    const char* e = std::getenv("ONEBIT_CUDA_GEMM_SLICES");
    const int v = e != nullptr ? std::atoi(e) : 0;
    return v == 1 || v == 2 || v == 4 ? v : 0;
  }();
  int s = forced;
  if (s == 0) {
    const int64_t sms = sm_count();
    s = blocks < sms ? kGemmMaxSlices : (blocks < 3 * sms ? 2 : 1);
  }
  while (s > 1 && K < 4 * s) s /= 2;
  return s;
}
}  // namespace

cudaError_t ternary_gemm(const uint8_t* w, const float* row_scale, int64_t rows, int64_t cols, QuantActs q,
                         int64_t n, float* y, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0 || cols >= kMaxCols || n <= 0 || n > (int64_t{1} << 30) ||
      q.stride < cuda_act_len(cols) || cuda_padded_rows(rows) / kRowsPerGroup > (int64_t{1} << 30))
    return cudaErrorInvalidValue;
  const int groups = static_cast<int>(cuda_padded_rows(rows) / kRowsPerGroup);
  const dim3 grid(static_cast<unsigned>((groups + 2 * kGemmWarps - 1) / (2 * kGemmWarps)),
                  static_cast<unsigned>((n + kGemmTokens - 1) / kGemmTokens));
  const int K = static_cast<int>(cuda_chunks(cols));
  const int slices = gemm_slices(static_cast<int64_t>(grid.x) * grid.y, K);
  auto go = [&](auto kernel, int s) -> cudaError_t {
    const cudaError_t e = allow_dynamic_smem(kernel, gemm_smem_bytes(s));  // 4 slices: over 48 KB
    if (e != cudaSuccess) return e;
    return launch_smem(kernel, grid, dim3(32 * kGemmWarps * s), gemm_smem_bytes(s), stream,
                       reinterpret_cast<const uint4*>(w), row_scale, static_cast<int>(rows), groups, K, q.codes,
                       q.stride, q.scales, q.sums, static_cast<int>(n), y);
  };
  if (slices == 4) return go(gemm_kernel<4>, 4);
  if (slices == 2) return go(gemm_kernel<2>, 2);
  return go(gemm_kernel<1>, 1);
}

cudaError_t rope_rows(float* x, int64_t n, int64_t n_heads, int64_t head_dim, const float* cos_t, const float* sin_t,
                      const int32_t* pos0, cudaStream_t stream) {
  if (n <= 0 || n_heads <= 0 || head_dim <= 0 || head_dim % 2 != 0) return cudaErrorInvalidValue;
  const int threads = head_dim / 2 < 32 ? 32 : (head_dim / 2 > 256 ? 256 : static_cast<int>(head_dim / 2));
  TRY_LAUNCH(rope_kernel, dim3(static_cast<unsigned>(n), static_cast<unsigned>(n_heads)), dim3(threads), stream, x,
             static_cast<int>(n_heads), static_cast<int>(head_dim), cos_t, sin_t, pos0);
  return cudaGetLastError();
}

cudaError_t kv_store_rows(KvView kv, int64_t layer, const float* k, const float* v, int64_t n, const int32_t* pos0,
                          cudaStream_t stream) {
  if (n <= 0 || layer < 0 || layer >= kv.n_layers || !kv_view_ok(kv)) return cudaErrorInvalidValue;
  const int threads = kv.head_dim < 32 ? 32 : (kv.head_dim > 256 ? 256 : static_cast<int>(kv.head_dim));
  TRY_LAUNCH(kv_store_kernel, dim3(static_cast<unsigned>(n), static_cast<unsigned>(2 * kv.n_kv_heads)), dim3(threads),
             stream, kv, layer, k, v, pos0);
  return cudaGetLastError();
}

int64_t attention_splits(int64_t n_ctx, int64_t n_rows, bool independent_rows) {
  if (n_rows > 1 && !independent_rows) return 1;
  const int64_t s = (n_ctx + 63) / 64;
  return s < 1 ? 1 : (s > 32 ? 32 : s);
}

size_t attention_scratch_floats(int64_t n_ctx, int64_t n_rows, int64_t n_heads, int64_t head_dim,
                                bool independent_rows) {
  const int64_t s = attention_splits(n_ctx, n_rows, independent_rows);
  return s == 1 ? 0 : static_cast<size_t>(n_rows * n_heads * s * (2 + head_dim));
}

namespace {

bool attention_shape_ok(const KvView& kv, int64_t n_heads, int64_t layer) {
  return kv.n_kv_heads > 0 && n_heads > 0 && n_heads % kv.n_kv_heads == 0 && n_heads / kv.n_kv_heads <= kAttnMaxG &&
         kv.head_dim > 0 && kv.head_dim <= kAttnMaxD && layer >= 0 && layer < kv.n_layers && kv_view_ok(kv);
}

bool attention_fast_shape(const KvView& kv, int64_t n_heads) {
  return (kv.head_dim == 64 || kv.head_dim == 128) && (n_heads / kv.n_kv_heads) * kv.head_dim <= 1024;
}

cudaError_t launch_attention_fast(const KvView& kv, int64_t layer, const float* q, int64_t n, int64_t n_heads,
                                  int64_t splits, const int32_t* pos0, const RowSeq* rows, float* scratch,
                                  float* out, const DecodeFuse& fuse, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(kv.n_kv_heads), static_cast<unsigned>(n), static_cast<unsigned>(splits));
  // fp16 caches stage K/V tiles in shared memory (more than the default 48 KB: opted in once).
  auto go = [&](auto kernel, size_t smem) -> cudaError_t {
    if (smem > 0) {
      const cudaError_t e = allow_dynamic_smem(kernel, smem);
      if (e != cudaSuccess) return e;
    }
    return launch_smem(kernel, grid, dim3(kAttnThreads), smem, stream, kv, layer, q, static_cast<int>(n_heads),
                       static_cast<int>(splits), pos0, rows, scratch, out, fuse);
  };
  // Staging pays for decode steps, whose few blocks each wait for their tiles; with 88 KB of shared
  // memory a block, only two fit on an SM, so grids of more than one such wave (prefill rows, big
  // batches) keep the unstaged kernel, which many more blocks per SM run at once (pp4096 fell from
  // 13.2k to 7.5k tok/s and 256 sequences from 14.6k to 10.0k with staging everywhere).
  if (kv.type == KvType::kQ8 || kv.type == KvType::kQ4R) {  // always staged (small rows: 2 KV tiles of 11-34 KB)
    const bool q8 = kv.type == KvType::kQ8;
    if (kv.head_dim == 64)
      return q8 ? go(attention_q_kernel<2, KvType::kQ8>, attention_q_stage_bytes<KvType::kQ8, 2>())
                : go(attention_q_kernel<2, KvType::kQ4R>, attention_q_stage_bytes<KvType::kQ4R, 2>());
    return q8 ? go(attention_q_kernel<4, KvType::kQ8>, attention_q_stage_bytes<KvType::kQ8, 4>())
              : go(attention_q_kernel<4, KvType::kQ4R>, attention_q_stage_bytes<KvType::kQ4R, 4>());
  }
  const bool stage = kv.type == KvType::kF16 && fuse.k != nullptr &&
                     static_cast<int64_t>(grid.x) * grid.y * grid.z <= 2 * static_cast<int64_t>(sm_count());
  if (kv.head_dim == 64)
    return stage ? go(attention_fast_kernel<2, true>, attention_stage_bytes<2>()) : go(attention_fast_kernel<2, false>, 0);
  return stage ? go(attention_fast_kernel<4, true>, attention_stage_bytes<4>()) : go(attention_fast_kernel<4, false>, 0);
}

cudaError_t launch_attention_merge(const KvView& kv, int64_t n, int64_t n_heads, int64_t splits, const int32_t* pos0,
                                   const RowSeq* rows, float* scratch, float* out, cudaStream_t stream,
                                   int skip_chunk_rows = 0) {
  TRY_LAUNCH(attention_merge_kernel, dim3(static_cast<unsigned>(n), static_cast<unsigned>(n_heads)), dim3(128), stream,
             scratch, static_cast<int>(n_heads), static_cast<int>(kv.head_dim), static_cast<int>(splits), pos0, rows,
             out, kv.type == KvType::kQ4R ? 1 : 0, skip_chunk_rows);
  return cudaSuccess;
}

// Prompt rows on tensor cores (attention_prefill) unless ONEBIT_CUDA_PREFILL_ATTN=0 (read at each
// call, so a test can compare both paths in one process).
bool prefill_attention_on(const KvView& kv, int64_t n_heads) {
  const char* e = std::getenv("ONEBIT_CUDA_PREFILL_ATTN");
  return (e == nullptr || std::string_view(e) != "0") && attention_prefill_supported(kv, n_heads);
}

}  // namespace

cudaError_t attention_rows(KvView kv, int64_t layer, const float* q, int64_t n, int64_t n_heads, const int32_t* pos0,
                           float* scratch, float* out, cudaStream_t stream, const RowSeq* rows) {
  if (n <= 0 || !attention_shape_ok(kv, n_heads, layer)) return cudaErrorInvalidValue;
  // Several rows of one sequence (a prompt), or the prompt rows of a multi-sequence pass: tensor
  // cores. The other rows of a multi-sequence pass (one each of their sequence) stay below.
  const bool tc = prefill_attention_on(kv, n_heads);
  if (tc && rows == nullptr && n > 1) return attention_prefill(kv, layer, q, n, n_heads, pos0, nullptr, out, stream);
  const int64_t splits = attention_splits(kv.n_ctx, n, rows != nullptr);
  if (splits > 1 && scratch == nullptr) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(kv.n_kv_heads), static_cast<unsigned>(n), static_cast<unsigned>(splits));
  const int skip_chunk_rows = tc && rows != nullptr ? 1 : 0;
  if (skip_chunk_rows != 0) {
    const cudaError_t e = attention_prefill(kv, layer, q, n, n_heads, pos0, rows, out, stream);
    if (e != cudaSuccess) return e;
  }
  if (attention_fast_shape(kv, n_heads)) {
    DecodeFuse plain;
    plain.skip_chunk_rows = skip_chunk_rows;
    const cudaError_t e = launch_attention_fast(kv, layer, q, n, n_heads, splits, pos0, rows, scratch, out, plain,
                                                stream);
    if (e != cudaSuccess) return e;
  } else {
    auto go = [&](auto kernel) {
      return launch(kernel, grid, dim3(kAttnThreads), stream, kv, layer, q, static_cast<int>(n_heads),
                    static_cast<int>(splits), pos0, rows, scratch, out);
    };
    cudaError_t e = cudaErrorInvalidValue;
    switch (kv.type) {
      case KvType::kF32: e = go(attention_kernel<KvType::kF32>); break;
      case KvType::kF16: e = go(attention_kernel<KvType::kF16>); break;
      case KvType::kQ8: e = go(attention_kernel<KvType::kQ8>); break;
      case KvType::kQ4R: e = go(attention_kernel<KvType::kQ4R>); break;
    }
    if (e != cudaSuccess) return e;
  }
  if (splits == 1) return cudaSuccess;
  return launch_attention_merge(kv, n, n_heads, splits, pos0, rows, scratch, out, stream, skip_chunk_rows);
}

cudaError_t kv_copy_block(const KvView& kv, int32_t src, int32_t dst, int64_t n, cudaStream_t stream) {
  const int64_t bs = kv.block_size > 0 ? kv.block_size : kv.n_ctx;
  if (src < 0 || dst < 0 || src >= kv.n_blocks || dst >= kv.n_blocks || n < 0 || n > bs || !kv_view_ok(kv))
    return cudaErrorInvalidValue;
  if (n == 0 || src == dst) return cudaSuccess;
  // Rows of any type with their scales: bytes are bytes.
  const size_t row = static_cast<size_t>(kv.row_bytes), head = static_cast<size_t>(bs) * row;
  // Per (K|V, layer) a block holds n_kv_heads runs of bs rows: copy the first n rows of each.
  for (int64_t wl = 0; wl < 2 * kv.n_layers; ++wl) {
    const size_t base = static_cast<size_t>(wl * kv.n_blocks) * static_cast<size_t>(kv.n_kv_heads) * head;
    char* d = static_cast<char*>(kv.data) + base + static_cast<size_t>(dst) * static_cast<size_t>(kv.n_kv_heads) * head;
    const char* s = static_cast<const char*>(kv.data) + base + static_cast<size_t>(src) * static_cast<size_t>(kv.n_kv_heads) * head;
    const cudaError_t e = cudaMemcpy2DAsync(d, head, s, head, static_cast<size_t>(n) * row,
                                            static_cast<size_t>(kv.n_kv_heads), cudaMemcpyDeviceToDevice, stream);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

bool attention_decode_fusable(const KvView& kv, int64_t n_heads) {
  return attention_shape_ok(kv, n_heads, 0) && attention_fast_shape(kv, n_heads);
}

cudaError_t attention_decode(KvView kv, int64_t layer, const float* q, const float* k, const float* v, int64_t n,
                             int64_t n_heads, const float* cos_t, const float* sin_t, const int32_t* pos0,
                             const RowSeq* rows, float* scratch, float* out, cudaStream_t stream) {
  if (n <= 0 || (n > 1 && rows == nullptr) || !attention_decode_fusable(kv, n_heads) || layer < 0 ||
      layer >= kv.n_layers || k == nullptr || v == nullptr || cos_t == nullptr || sin_t == nullptr)
    return cudaErrorInvalidValue;
  const int64_t splits = attention_splits(kv.n_ctx, n, true);
  if (splits > 1 && scratch == nullptr) return cudaErrorInvalidValue;
  const cudaError_t e = launch_attention_fast(kv, layer, q, n, n_heads, splits, pos0, rows, scratch, out,
                                              DecodeFuse{k, v, cos_t, sin_t}, stream);
  if (e != cudaSuccess || splits == 1) return e;
  return launch_attention_merge(kv, n, n_heads, splits, pos0, rows, scratch, out, stream);
}

cudaError_t relu2_mul(const float* gate, const float* up, int64_t count, float* out, cudaStream_t stream) {
  if (count <= 0) return cudaErrorInvalidValue;
  TRY_LAUNCH(relu2_mul_kernel, dim3(blocks_for(count, 256)), dim3(256), stream, gate, up, count, out);
  return cudaGetLastError();
}

cudaError_t add_inplace(float* x, const float* y, int64_t count, cudaStream_t stream) {
  if (count <= 0) return cudaErrorInvalidValue;
  TRY_LAUNCH(add_kernel, dim3(blocks_for(count, 256)), dim3(256), stream, x, y, count);
  return cudaGetLastError();
}

cudaError_t dense_gemv(const void* w, DenseType type, int64_t rows, int64_t cols, const float* x, int64_t n,
                       float* logits, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0 || cols >= (int64_t{1} << 30) || n <= 0) return cudaErrorInvalidValue;
  const int64_t want = (rows + kHeadThreads / 32 - 1) / (kHeadThreads / 32);
  const unsigned blocks = static_cast<unsigned>(want < 8 * sm_count() ? want : 8 * sm_count());
  const size_t esize = type == DenseType::kF32 ? 4 : 2;
  const bool vec =
      (cols * esize) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  const int c = static_cast<int>(cols);
  if (n == 1 && vec && type != DenseType::kF32 && head_stream_on()) {
    const int nv = c / 8;
    const size_t stage_bytes = static_cast<size_t>(kStreamWarps) * nv * 16;
    const int stages = static_cast<int>(std::min<size_t>(kStreamMaxStages, kStreamSmem / stage_bytes));
    if (stages >= 2 && nv <= 32 * 16) {
      const int64_t per_block = (rows + sm_count() - 1) / sm_count();
      const dim3 grid(static_cast<unsigned>((rows + per_block - 1) / per_block)), block(32 * (kStreamWarps + 1));
      const size_t smem = static_cast<size_t>(stages) * stage_bytes;
      auto go = [&](auto kernel, const auto* wt) -> cudaError_t {
        const cudaError_t a = allow_dynamic_smem(kernel, smem);
        if (a != cudaSuccess) return a;
        return launch_smem(kernel, grid, block, smem, stream, wt, rows, c, per_block, stages, x, logits);
      };
      if (type == DenseType::kBF16) {
        const auto* wt = static_cast<const __nv_bfloat16*>(w);
        return nv <= 320 ? go(head_stream_kernel<__nv_bfloat16, 10>, wt) : go(head_stream_kernel<__nv_bfloat16, 16>, wt);
      }
      const auto* wt = static_cast<const __half*>(w);
      return nv <= 320 ? go(head_stream_kernel<__half, 10>, wt) : go(head_stream_kernel<__half, 16>, wt);
    }
  }
  for (int64_t j = 0; j < n; j += kHeadTokens) {
    const int nt = static_cast<int>(n - j < kHeadTokens ? n - j : kHeadTokens);
    const float* xj = x + j * cols;
    float* oj = logits + j * rows;
    switch (type) {
      case DenseType::kF32:
        if (vec)
          TRY_LAUNCH(dense_gemv_kernel<float, true>, dim3(blocks), dim3(kHeadThreads), stream,
                     static_cast<const float*>(w), rows, c, xj, nt, oj);
        else
          TRY_LAUNCH(dense_gemv_kernel<float, false>, dim3(blocks), dim3(kHeadThreads), stream,
                     static_cast<const float*>(w), rows, c, xj, nt, oj);
        break;
      case DenseType::kF16:
        if (vec)
          TRY_LAUNCH(dense_gemv_kernel<__half, true>, dim3(blocks), dim3(kHeadThreads), stream,
                     static_cast<const __half*>(w), rows, c, xj, nt, oj);
        else
          TRY_LAUNCH(dense_gemv_kernel<__half, false>, dim3(blocks), dim3(kHeadThreads), stream,
                     static_cast<const __half*>(w), rows, c, xj, nt, oj);
        break;
      case DenseType::kBF16:
        if (vec)
          TRY_LAUNCH(dense_gemv_kernel<__nv_bfloat16, true>, dim3(blocks), dim3(kHeadThreads), stream,
                     static_cast<const __nv_bfloat16*>(w), rows, c, xj, nt, oj);
        else
          TRY_LAUNCH(dense_gemv_kernel<__nv_bfloat16, false>, dim3(blocks), dim3(kHeadThreads), stream,
                     static_cast<const __nv_bfloat16*>(w), rows, c, xj, nt, oj);
        break;
    }
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

cudaError_t int8_gemv(const int8_t* w, const float* d, int64_t rows, int64_t cols, QuantActs q, int64_t n,
                      float* logits, cudaStream_t stream) {
  const int64_t stride = cuda_act_len(cols);
  if (rows <= 0 || cols <= 0 || cols >= kMaxCols || n <= 0 || q.stride != stride) return cudaErrorInvalidValue;
  if (n > kHeadTokens) {  // tensor cores: the weights are read once per 64 tokens instead of per 8
    const dim3 grid(static_cast<unsigned>((rows + 16 * kHeadMmaWarps - 1) / (16 * kHeadMmaWarps)),
                    static_cast<unsigned>((n + 8 * kHeadMmaTiles - 1) / (8 * kHeadMmaTiles)));
    TRY_LAUNCH(int8_head_mma_kernel, grid, dim3(32 * kHeadMmaWarps), stream, w, d, rows, stride, q.codes, q.stride,
               q.scales, static_cast<int>(n), logits);
    return cudaSuccess;
  }
  const int64_t want = (rows + kHeadThreads / 32 - 1) / (kHeadThreads / 32);
  const unsigned blocks = static_cast<unsigned>(want < 8 * sm_count() ? want : 8 * sm_count());
  for (int64_t j = 0; j < n; j += kHeadTokens) {
    const int nt = static_cast<int>(n - j < kHeadTokens ? n - j : kHeadTokens);
    TRY_LAUNCH(int8_gemv_kernel, dim3(blocks), dim3(kHeadThreads), stream, w, d, rows, stride, q.codes + j * q.stride,
               q.stride, q.scales + j, nt, logits + j * rows);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

cudaError_t argmax(const float* logits, int64_t n, int32_t* out, cudaStream_t stream, int64_t rows) {
  if (n <= 0 || rows <= 0 || rows > (int64_t{1} << 31) - 1) return cudaErrorInvalidValue;
  TRY_LAUNCH(argmax_kernel, dim3(static_cast<unsigned>(rows)), dim3(1024), stream, logits, n, out);
  return cudaGetLastError();
}

}  // namespace onebit::cuda
