// Small device helpers shared by the CUDA kernel files (device code only; include from .cu files).
#pragma once

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

}  // namespace onebit::cuda
