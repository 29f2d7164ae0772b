// CUDA W2A8 ternary GEMV (decode). Layout and numerics: ternary_gemv_cuda.h, docs/kernels-cuda.md.
#include "kernels/cuda/ternary_gemv_cuda.h"

#include <stdexcept>
#include <string>

#include "kernels/cuda/device_inline.cuh"

namespace onebit::cuda {

std::vector<uint8_t> repack_for_cuda(const int8_t* codes, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0 || cols >= kMaxCols || cuda_padded_rows(rows) / kRowsPerGroup > (int64_t{1} << 30))
    throw std::invalid_argument("repack_for_cuda: shape out of range: " + std::to_string(rows) + " x " +
                                std::to_string(cols));
  const int64_t K = cuda_chunks(cols);
  std::vector<uint8_t> out(cuda_packed_bytes(rows, cols), 0x55);  // every field = code 1 (w = 0)
  // The layout of cuda_weight_pos, one 16-byte chunk at a time: column 64k + 16j + 4i + b goes to
  // byte 4j + b, bits 2i.
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* row = codes + r * cols;
    for (int64_t k = 0; k < K; ++k) {
      uint8_t* chunk = out.data() + ((r / kRowsPerGroup) * K + k) * 128 + (r % kRowsPerGroup) * 16;
      const int64_t c0 = k * kColsPerChunk, n = cols - c0 < kColsPerChunk ? cols - c0 : kColsPerChunk;
      uint8_t bytes[16];
      for (int e = 0; e < 16; ++e) bytes[e] = 0x55;
      for (int64_t in = 0; in < n; ++in) {
        const int8_t w = row[c0 + in];
        if (w < -1 || w > 1)
          throw std::invalid_argument("repack_for_cuda: code " + std::to_string(w) + " at (" + std::to_string(r) +
                                      ", " + std::to_string(c0 + in) + ") is not ternary");
        const int j = static_cast<int>(in >> 4), i = static_cast<int>((in >> 2) & 3), b = static_cast<int>(in & 3);
        uint8_t& byte = bytes[4 * j + b];
        byte = static_cast<uint8_t>((byte & ~(3u << (2 * i))) | (static_cast<unsigned>(w + 1) << (2 * i)));
      }
      for (int e = 0; e < 16; ++e) chunk[e] = bytes[e];
    }
  }
  return out;
}

namespace {

constexpr int kQuantThreads = 1024;

__global__ void quantize_kernel(const float* __restrict__ x, int cols, int padded, int8_t* __restrict__ q,
                                float* __restrict__ scale, int32_t* __restrict__ qsum) {
  __shared__ float smax[32];
  __shared__ int ssum[32];
  __shared__ float s_shared;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
  float m = 0.0f;
  for (int c = tid; c < cols; c += blockDim.x) m = fmaxf(m, fabsf(x[c]));
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (lane == 0) smax[warp] = m;
  __syncthreads();
  if (tid == 0) {
    float mm = 0.0f;
    for (int w = 0; w < nw; ++w) mm = fmaxf(mm, smax[w]);
    s_shared = 127.0f / fmaxf(mm, 1e-5f);  // IEEE division (no fast-math)
  }
  __syncthreads();
  const float s = s_shared;
  int sum = 0;
  for (int c = tid; c < padded; c += blockDim.x) {
    int v = 0;
    if (c < cols) {
      v = __float2int_rn(__fmul_rn(x[c], s));  // round half to even, like nearbyint / torch.round
      v = v < -128 ? -128 : (v > 127 ? 127 : v);
    }
    q[c] = static_cast<int8_t>(v);
    sum += v;
  }
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) ssum[warp] = sum;
  __syncthreads();
  if (tid == 0) {
    int t = 0;
    for (int w = 0; w < nw; ++w) t += ssum[w];
    *qsum = t;
    *scale = s;
  }
}

__device__ __forceinline__ void dot_chunk(uint4 w, const int8_t* __restrict__ qk, int& a0, int& a1, int& a2, int& a3) {
  const int4* q4 = reinterpret_cast<const int4*>(qk);
  dot_chunk4(w, __ldg(q4 + 0), __ldg(q4 + 1), __ldg(q4 + 2), __ldg(q4 + 3), a0, a1, a2, a3);
}

constexpr int kPrefetch = 4;  // weight loads issued per thread before the first use

// Block = one row group (8 rows) x all K chunks; lane = 8*kk + rr handles row rr of chunks
// k = 4*(warp + nwarps*t) + kk, t = 0, 1, ...
// Up to kMaxGemvParts matrices of the same width that read the same activations (q/k/v, gate/up)
// run as one launch: blocks [group_begin[m], group_begin[m + 1]) belong to matrix m.
struct GemvPart {
  const uint4* w;
  const float* row_scale;
  float* y;
  int rows;
  int group_begin;
};
struct GemvSet {
  GemvPart p[kMaxGemvParts];
  int count;
};

template <bool kPdl>
__global__ void __launch_bounds__(1024) gemv_kernel(GemvSet set, int K, const int8_t* __restrict__ q,
                                                    const float* __restrict__ scale, const int32_t* __restrict__ qsum) {
  __shared__ int red[32][kRowsPerGroup];
  // This block's matrix, chosen with constant indices only: indexing the parameter array with a
  // run-time index would copy it to local memory in every thread (a 104-byte stack frame that
  // cost more memory traffic than the weights).
  GemvPart part = set.p[0];
#pragma unroll
  for (int i = 1; i < kMaxGemvParts; ++i)
    if (i < set.count && static_cast<int>(blockIdx.x) >= set.p[i].group_begin) part = set.p[i];
  const uint4* __restrict__ w = part.w;
  const float* __restrict__ row_scale = part.row_scale;
  float* __restrict__ y = part.y;
  const int rows = part.rows;
  const int group = static_cast<int>(blockIdx.x) - part.group_begin;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int rr = lane & 7, kk = lane >> 3;
  const uint4* wg = w + static_cast<size_t>(group) * K * kRowsPerGroup + rr;
  const int stride = 4 * nwarps;
  const int k0 = 4 * warp + kk;
  if constexpr (kPdl) pdl_trigger();
  uint4 pre[kPrefetch];
#pragma unroll
  for (int t = 0; t < kPrefetch; ++t) {
    const int k = k0 + t * stride;
    if (k < K) pre[t] = load_stream16(wg + static_cast<size_t>(k) * kRowsPerGroup);
  }
  // Row scales are constants like the weights: load them before the wait too; the activation
  // scale and sum right after it, so no dependent memory round trip is left after the reduction.
  const int row = group * kRowsPerGroup + static_cast<int>(threadIdx.x);
  const bool writer = threadIdx.x < kRowsPerGroup && row < rows;
  const float rsc = writer ? __ldg(row_scale + row) : 0.0f;
  // Weights never change; activations (q, scale, qsum) come from the previous kernel.
  if constexpr (kPdl) pdl_wait();
  float act_scale = 1.0f;
  int act_sum = 0;
  if (writer) {
    act_scale = *scale;
    act_sum = *qsum;
  }
  int a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma unroll
  for (int t = 0; t < kPrefetch; ++t) {
    const int k = k0 + t * stride;
    if (k < K) dot_chunk(pre[t], q + static_cast<size_t>(k) * kColsPerChunk, a0, a1, a2, a3);
  }
  for (int kb = k0 + kPrefetch * stride; kb < K; kb += kPrefetch * stride) {
    uint4 v[kPrefetch];
#pragma unroll
    for (int t = 0; t < kPrefetch; ++t) {
      const int k = kb + t * stride;
      if (k < K) v[t] = load_stream16(wg + static_cast<size_t>(k) * kRowsPerGroup);
    }
#pragma unroll
    for (int t = 0; t < kPrefetch; ++t) {
      const int k = kb + t * stride;
      if (k < K) dot_chunk(v[t], q + static_cast<size_t>(k) * kColsPerChunk, a0, a1, a2, a3);
    }
  }
  // a_i is an exact multiple of 4^i: the arithmetic shifts are exact.
  int acc = a0 + (a1 >> 2) + (a2 >> 4) + (a3 >> 6);
  acc += __shfl_xor_sync(0xffffffffu, acc, 8);
  acc += __shfl_xor_sync(0xffffffffu, acc, 16);
  if (kk == 0) red[warp][rr] = acc;
  __syncthreads();
  if (writer) {
    int sum = 0;
    for (int i = 0; i < nwarps; ++i) sum += red[i][threadIdx.x];
    sum -= act_sum;
    y[row] = static_cast<float>(sum) * (rsc / act_scale);
  }
}

__global__ void gemv_reference_kernel(const uint8_t* __restrict__ w, const float* __restrict__ row_scale, int rows,
                                      int cols, int K, const int8_t* __restrict__ q, const float* __restrict__ scale,
                                      float* __restrict__ y) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  int acc = 0;
  for (int c = 0; c < cols; ++c) {
    size_t byte;
    int shift;
    cuda_weight_pos(K, r, c, &byte, &shift);
    const int code = (w[byte] >> shift) & 3;
    acc += (code - 1) * static_cast<int>(q[c]);
  }
  y[r] = static_cast<float>(acc) * (row_scale[r] / *scale);
}

bool shape_ok(int64_t rows, int64_t cols) {
  return rows > 0 && cols > 0 && cols < kMaxCols && cuda_padded_rows(rows) / kRowsPerGroup <= (int64_t{1} << 30);
}

}  // namespace

cudaError_t quantize_activations(const float* x, int64_t cols, int8_t* q, float* scale, int32_t* qsum,
                                 cudaStream_t stream) {
  if (cols <= 0 || cols >= kMaxCols) return cudaErrorInvalidValue;
  quantize_kernel<<<1, kQuantThreads, 0, stream>>>(x, static_cast<int>(cols), static_cast<int>(cuda_act_len(cols)), q,
                                                   scale, qsum);
  return cudaGetLastError();
}

cudaError_t ternary_gemv_multi(const GemvMatrix* mats, int count, int64_t cols, const int8_t* q, const float* scale,
                               const int32_t* qsum, cudaStream_t stream, GemvConfig cfg) {
  if (count < 1 || count > kMaxGemvParts || cfg.chunks_per_thread < 1 || cols <= 0 || cols >= kMaxCols)
    return cudaErrorInvalidValue;
  GemvSet set{};
  set.count = count;
  int64_t groups = 0;
  for (int m = 0; m < count; ++m) {
    if (!shape_ok(mats[m].rows, cols)) return cudaErrorInvalidValue;
    set.p[m] = GemvPart{reinterpret_cast<const uint4*>(mats[m].w), mats[m].row_scale, mats[m].y,
                        static_cast<int>(mats[m].rows), static_cast<int>(groups)};
    groups += cuda_padded_rows(mats[m].rows) / kRowsPerGroup;
    if (groups > (int64_t{1} << 30)) return cudaErrorInvalidValue;
  }
  const int K = static_cast<int>(cuda_chunks(cols));
  const int per_warp = 4 * cfg.chunks_per_thread;
  int warps = (K + per_warp - 1) / per_warp;
  warps = warps < 1 ? 1 : (warps > 32 ? 32 : warps);
  cudaLaunchConfig_t lc = {};
  lc.gridDim = dim3(static_cast<unsigned>(groups));
  lc.blockDim = dim3(32u * static_cast<unsigned>(warps));
  lc.dynamicSmemBytes = 0;
  lc.stream = stream;
  cudaLaunchAttribute attr[1];
  cudaError_t e;
  if (cfg.pdl) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    lc.attrs = attr;
    lc.numAttrs = 1;
    e = cudaLaunchKernelEx(&lc, gemv_kernel<true>, set, K, q, scale, qsum);
  } else {
    lc.attrs = nullptr;
    lc.numAttrs = 0;
    e = cudaLaunchKernelEx(&lc, gemv_kernel<false>, set, K, q, scale, qsum);
  }
  if (e != cudaSuccess) return e;
  return cudaGetLastError();
}

cudaError_t ternary_gemv(const uint8_t* w, const float* row_scale, int64_t rows, int64_t cols, const int8_t* q,
                         const float* scale, const int32_t* qsum, float* y, cudaStream_t stream, GemvConfig cfg) {
  const GemvMatrix m{w, row_scale, rows, y};
  return ternary_gemv_multi(&m, 1, cols, q, scale, qsum, stream, cfg);
}

cudaError_t ternary_gemv_reference(const uint8_t* w, const float* row_scale, int64_t rows, int64_t cols,
                                   const int8_t* q, const float* scale, float* y, cudaStream_t stream) {
  if (!shape_ok(rows, cols) || rows >= (int64_t{1} << 31)) return cudaErrorInvalidValue;
  const int threads = 128;
  const unsigned blocks = static_cast<unsigned>((rows + threads - 1) / threads);
  gemv_reference_kernel<<<blocks, threads, 0, stream>>>(w, row_scale, static_cast<int>(rows), static_cast<int>(cols),
                                                        static_cast<int>(cuda_chunks(cols)), q, scale, y);
  return cudaGetLastError();
}

}  // namespace onebit::cuda
