// Kernel launch with an optional programmatic-dependent-launch attribute (ops_cuda.h, set_pdl),
// shared by the CUDA kernel files (host code; include from .cu files only).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

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

}  // namespace onebit::cuda
