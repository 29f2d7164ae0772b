// Small device helpers shared by the CUDA kernel files (device code only; include from .cu files).
#pragma once

#include <cmath>
#include <cstdint>

namespace onebit::cuda {

// 16 bytes from memory that no kernel writes while it runs (weights), not kept in L1: each byte
// is used once per launch.
__device__ __forceinline__ uint4 load_stream16(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Programmatic dependent launch (sm_90): pdl_trigger lets the next kernel of the stream start;
// pdl_wait returns once the previous kernel has completed and its writes are visible. No-ops below
// sm_90 and in kernels launched without the programmatic-serialization attribute.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// ---- reductions ----
struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) { return warp_reduce(v, SumOp{}); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce(v, MaxOp{}); }
__device__ __forceinline__ int warp_isum(int v) { return warp_reduce(v, SumOp{}); }

// Block-wide reduction (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// `red` is 32 slots of shared memory; the call ends with a barrier so `red` can be reused. The
// warps' results are combined in a fixed order starting from `init`: the same in every thread.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T init, T* red, Op op) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_reduce(v, op);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  T t = init;
  for (int i = 0; i < nw; ++i) t = op(t, red[i]);
  __syncthreads();
  return t;
}
__device__ __forceinline__ float block_sum(float v, float* red) { return block_reduce(v, 0.0f, red, SumOp{}); }
__device__ __forceinline__ float block_max(float v, float* red) { return block_reduce(v, -INFINITY, red, MaxOp{}); }
__device__ __forceinline__ int block_isum(int v, int* red) { return block_reduce(v, 0, red, SumOp{}); }

// ---- the one-block-per-row RMSNorm + quantization (ops_cuda.cu, fused_norm_quant_kernel) ----
// Threads per row, each summing the squares of up to kNormPerThread elements t, t + T, ...: the
// fused decode GEMV (decode_fused_cuda.cu) replays this summation order to get the same bits.
constexpr int kNormPerThread = 8;
__host__ __device__ constexpr int norm_row_threads(int dim) {
  int t = 128;
  while (t < 1024 && t * kNormPerThread < dim) t *= 2;
  return t;
}

// ---- ternary dot products (layout: ternary_gemv_cuda.h) ----
// d = sum of 4 (unsigned byte of a) * (signed byte of b) + c.
__device__ __forceinline__ int dp4a_us(unsigned a, int b, int c) {
  int d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// Four accumulators, field i scaled by 4^i (the fields are masked, not shifted down).
__device__ __forceinline__ void dot_word(unsigned w, int4 x, int& a0, int& a1, int& a2, int& a3) {
  a0 = dp4a_us(w & 0x03030303u, x.x, a0);
  a1 = dp4a_us(w & 0x0c0c0c0cu, x.y, a1);
  a2 = dp4a_us(w & 0x30303030u, x.z, a2);
  a3 = dp4a_us(w & 0xc0c0c0c0u, x.w, a3);
}

}  // namespace onebit::cuda
