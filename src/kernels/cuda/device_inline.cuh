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

// ---- cp.async (sm_80+) ----
// 16 bytes global -> shared, asynchronous; src_bytes = 0 writes zeros (src must still be valid).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(src_bytes) : "memory");
#endif
}
// 4-byte copy (rows of q8 / q4r caches are only 4-byte aligned). .ca: the only form for 4 bytes.
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(gmem) : "memory");
#else
  *static_cast<uint32_t*>(smem) = *static_cast<const uint32_t*>(gmem);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
#endif
}

// ---- bulk copies into shared memory (sm_90: the TMA engine), completion on an mbarrier ----
// Shared-memory addresses are 32-bit (cvta). The bulk copy's size is a multiple of 16 bytes, both
// addresses 16-byte aligned. All of these compile to nothing below sm_90 (callers check the arch).
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
#endif
}
// Makes initialized barriers visible to the async (bulk copy) proxy; then __syncthreads().
__device__ __forceinline__ void mbar_init_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
#endif
}
// Returns once the phase of `bar` with this parity has completed (a fresh barrier: parity 1 at once).
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
#endif
}
// `bytes` from global `src` to shared `dst`, counted against `bar`'s expected transaction bytes.
__device__ __forceinline__ void bulk_copy_g2s(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
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
// A warp's largest value and its index (the lowest index among equal maxima), in every lane.
__device__ __forceinline__ void warp_argmax(float& best, int64_t& index) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, index, o);
    if (ob > best || (ob == best && oi < index)) {
      best = ob;
      index = oi;
    }
  }
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

// ---- the canonical sum of squares of an RMSNorm row ----
// Per group of kNormGroup (4) consecutive elements, an fmaf chain in element order from 0 (the
// caller's, stored in part[g]); then lane l of warp 0 adds groups l, l + 32, ... in order, and the
// warp's xor butterfly; every thread gets lane 0's value. The one-block norm kernel (ops_cuda.cu)
// and the fused decode GEMV (decode_fused_cuda.cu) both sum this way, whatever their block shape,
// so they give the same bits; a group is one float4, so both read the row with coalesced loads.
// part: n_groups (<= kNormMaxGroups) floats of shared memory written by the caller before the
// call; out: one shared float. Contains two __syncthreads.
constexpr int kNormGroup = 4;
constexpr int kNormMaxGroups = 2048;  // rows of up to 8192 elements
__device__ __forceinline__ float norm_group_total(const float* part, float* out, int n_groups) {
  __syncthreads();
  if (threadIdx.x < 32) {
    float s = 0.0f;
    for (int g = threadIdx.x; g < n_groups; g += 32) s += part[g];
    s = warp_sum(s);
    if (threadIdx.x == 0) *out = s;
  }
  __syncthreads();
  return *out;
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

// One 16-byte chunk of weights (64 columns of a row) against its 64 int8 activations x0..x3.
__device__ __forceinline__ void dot_chunk4(uint4 w, int4 x0, int4 x1, int4 x2, int4 x3, int& a0, int& a1, int& a2,
                                           int& a3) {
  dot_word(w.x, x0, a0, a1, a2, a3);
  dot_word(w.y, x1, a0, a1, a2, a3);
  dot_word(w.z, x2, a0, a1, a2, a3);
  dot_word(w.w, x3, a0, a1, a2, a3);
}

}  // namespace onebit::cuda
