// Token sampling on the GPU: one token id per logit row, so that only the id crosses to the host.
//
// The chain is the host Sampler's (src/core/sampler/sampler.h) restricted to the settings below:
//   temperature == 0: argmax (ties -> lowest id)
//   else: top-k -> top-p -> min-p -> temperature -> softmax -> draw with the uniform number u
// Every filter judges tokens by the softmax at temperature 1, ties at a top-k / top-p boundary are
// broken by the lowest id, min-p keeps exp(logit - max) >= min_p, and the draw walks the survivors
// in the host's order (id order without top-k / top-p; (logit desc, id asc) after top-k; after
// top-p without top-k, the tokens of the host's 1/16-nat buckets before the cut bucket in id order,
// then the cut bucket's in (logit desc, id asc)). Probabilities use the same exp (deterministic_exp's
// formula, in IEEE double operations), so each token's weight has the host's bits; only the sums
// are formed in another order, so a device choice can differ from the host's only where u, top_p
// or a top-k mass lies within rounding (~1e-15 relative) of a boundary. docs/kernels-cuda.md.
//
// Device pointers, a stream, no host sync; returns cudaError_t. Kernel files depend only on the
// CUDA runtime and the C++ standard library.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace onebit::cuda {

// One row's settings, as in SamplingParams (temperature >= 0, top_k >= 0 with 0 or >= n_vocab = off,
// top_p in (0, 1], min_p in [0, 1]) and the uniform number in [0, 1) that the host sampler's RNG
// gave for this step. 24 bytes; the engine's SampleRow has the same layout.
struct SampleParams {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  double u = 0.0;
};

// ids[r] = the token chosen from row r of logits ([rows][n_vocab] fp32) with params[r]; -1 when
// the row holds a NaN or +inf, or every logit is -inf (the host sampler throws for those). One
// block of 1024 threads per row.
cudaError_t sample_rows(const float* logits, int64_t n_vocab, int64_t rows, const SampleParams* params, int32_t* ids,
                        cudaStream_t stream);

}  // namespace onebit::cuda
