// Decode GEMV with RMSNorm + quantization in the prologue (decode_fused_cuda.h).
#include "kernels/cuda/decode_fused_cuda.h"

#include "kernels/cuda/fused_gemv.cuh"

namespace onebit::cuda {
namespace {

using fused::FSet;
using fused::Geometry;
using fused::geometry;

template <FusedEpilogue kEpi, bool kPdl>
__global__ void __launch_bounds__(512)
    fused_norm_gemv_kernel(FSet set, int G, int Wk, int K, int cols, const float* __restrict__ x,
                           const float* __restrict__ norm_w, float eps) {
  extern __shared__ int4 s_codes[];  // K * 64 int8 codes
  __shared__ fused::GemvSmem sm;
  if constexpr (kPdl) pdl_trigger();
  fused::fused_norm_gemv_block<kEpi>(set, G, Wk, K, cols, x, norm_w, eps, blockIdx.x, s_codes, sm, [] {
    if constexpr (kPdl) pdl_wait();
  });
}

template <FusedEpilogue kEpi>
cudaError_t launch_fused(const FusedGemvArgs& a, const Geometry& g, cudaStream_t stream) {
  cudaLaunchConfig_t lc = {};
  lc.gridDim = dim3(static_cast<unsigned>(g.blocks));
  lc.blockDim = dim3(32u * static_cast<unsigned>(g.G * g.Wk));
  lc.dynamicSmemBytes = static_cast<size_t>(g.K) * kColsPerChunk;
  lc.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  lc.attrs = a.pdl ? attr : nullptr;
  lc.numAttrs = a.pdl ? 1 : 0;
  const int cols = static_cast<int>(a.cols);
  if (a.pdl)
    return cudaLaunchKernelEx(&lc, fused_norm_gemv_kernel<kEpi, true>, g.set, g.G, g.Wk, g.K, cols, a.x, a.norm_w,
                              a.eps);
  return cudaLaunchKernelEx(&lc, fused_norm_gemv_kernel<kEpi, false>, g.set, g.G, g.Wk, g.K, cols, a.x, a.norm_w,
                            a.eps);
}

}  // namespace

bool fused_norm_gemv_ok(const FusedGemvArgs& a) {
  Geometry g;
  return geometry(a, &g);
}

cudaError_t fused_norm_gemv(const FusedGemvArgs& a, cudaStream_t stream) {
  Geometry g;
  if (!geometry(a, &g)) return cudaErrorInvalidValue;
  switch (a.epilogue) {
    case FusedEpilogue::kStore: return launch_fused<FusedEpilogue::kStore>(a, g, stream);
    case FusedEpilogue::kResidual: return launch_fused<FusedEpilogue::kResidual>(a, g, stream);
    case FusedEpilogue::kRelu2: return launch_fused<FusedEpilogue::kRelu2>(a, g, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace onebit::cuda
