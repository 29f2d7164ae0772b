// Kernel launch with an optional programmatic-dependent-launch attribute (ops_cuda.h, set_pdl),
// shared by the CUDA kernel files (host code; include from .cu files only).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <mutex>
#include <unordered_map>

namespace onebit::cuda {

// Launches kernel<<<grid, block, smem, stream>>>(args...); with pdl, with programmatic stream
// serialization (the kernel may start while the previous one of the stream still runs: it must
// call pdl_wait before it reads what that one writes). Returns the launch's error.
template <typename... KArgs, typename... Args>
cudaError_t launch_kernel(bool pdl, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          Args... args) {
  cudaLaunchConfig_t lc = {};
  lc.gridDim = grid;
  lc.blockDim = block;
  lc.dynamicSmemBytes = smem;
  lc.stream = stream;
  cudaLaunchAttribute attr[1];
  if (pdl) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    lc.attrs = attr;
    lc.numAttrs = 1;
  }
  const cudaError_t e = cudaLaunchKernelEx(&lc, kernel, static_cast<KArgs>(args)...);
  if (e != cudaSuccess) return e;
  return cudaGetLastError();
}

// Lets `kernel` launch with `bytes` of dynamic shared memory (more than the default 48 KB needs an
// opt-in): the attribute is set at the first call that needs more than the kernel was given
// before, so a launcher can call this before every launch and pays for the host call once.
inline cudaError_t allow_dynamic_smem(const void* kernel, size_t bytes) {
  static std::mutex mu;
  static std::unordered_map<const void*, size_t> granted;
  std::lock_guard<std::mutex> lock(mu);
  auto it = granted.find(kernel);
  if (it != granted.end() && it->second >= bytes) return cudaSuccess;
  const cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (e == cudaSuccess) granted[kernel] = bytes;
  return e;
}
template <typename... KArgs>
cudaError_t allow_dynamic_smem(void (*kernel)(KArgs...), size_t bytes) {
  return allow_dynamic_smem(reinterpret_cast<const void*>(kernel), bytes);
}

}  // namespace onebit::cuda
