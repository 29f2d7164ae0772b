// The whole layer stack of a one-token decode step as one persistent kernel (docs/kernels-cuda.md,
// "Persistent decode step").
//
// A decode step of one sequence is a chain of small dependent kernels (five a layer), each of
// which waits for the previous one, loads its weights and input, and finishes in a few µs: the
// chain's latency, not bandwidth, bounded batch-1 decode. decode_step runs every layer in one
// launch of one block per SM (a cooperative launch: all blocks resident), with a grid-wide
// barrier between the phases of a layer:
//   1. RMSNorm + quantize x, q/k/v GEMV                          (fused_gemv.cuh)
//   2. RoPE, the new k/v into the cache, split-K attention; the last split of a kv head to
//      finish merges that head's splits (a ticket per kv head)   (attention_fast.cuh)
//   3. attn_sub_norm + quantize, o GEMV, x += o                  (fused_gemv.cuh)
//   4. ffn_norm + quantize, gate/up GEMV, relu(gate)^2 * up
//   5. ffn_sub_norm + quantize, down GEMV, x += down
// Each phase asks for its first weights (and attention for its first K/V tile) before the barrier
// that ends the previous phase, so weight reads overlap the wait. The phases run the arithmetic of
// fused_norm_gemv and attention_decode with the same split count: the same bits as the per-layer
// launches.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/decode_fused_cuda.h"
#include "kernels/cuda/ops_cuda.h"

namespace onebit::cuda {

// One layer's weights (ternary matrices with y unset: decode_step sets the outputs) and norms.
struct DecodeStepLayer {
  GemvMatrix q, k, v, o, gate, up, down;
  const float *attn_norm = nullptr, *attn_sub_norm = nullptr, *ffn_norm = nullptr, *ffn_sub_norm = nullptr;
};

// The activation buffers of the step (one row each): the residual stream x [hidden] in and out.
struct DecodeStepBuffers {
  float *x = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *attn = nullptr, *gate = nullptr, *up = nullptr;
};

// The device copy of a model's layers for one set of buffers, with the phase shapes for this GPU.
struct DecodeStepPlan;

// Whether decode_step serves this shape (fp16 KV cache, head_dim 64 or 128, widths within the
// fused GEMV's limits, a GPU that can hold one block per SM with the step's shared memory).
bool decode_step_supported(const KvView& kv, int64_t n_heads, int64_t hidden, int64_t qdim, int64_t inter);

// Builds the plan (allocates device memory: not while a graph is being recorded). Returns
// cudaErrorInvalidValue for a shape decode_step does not serve, with the reason in *why (if given).
cudaError_t decode_step_plan(const DecodeStepLayer* layers, int n_layers, int64_t hidden, int64_t inter,
                             const DecodeStepBuffers& buffers, float eps, DecodeStepPlan** out,
                             const char** why = nullptr);
void decode_step_free(DecodeStepPlan* plan);

// One decode step of one sequence through every layer of the plan: the token at position *pos0
// (device), its embedding already in buffers.x; on return x holds the last layer's output (before
// the final norm). cos_t / sin_t: the RoPE tables; scratch: attention_scratch_floats(kv.n_ctx, 1,
// n_heads, head_dim) floats. pdl: launched with programmatic dependent launch (sm_90).
// trace (optional, for measurements): decode_step_trace_words(plan) zeroed words that receive, for
// the k-th grid barrier of the step (k = 0 .. 5 * layers - 2; the barrier before phase k + 1 of the
// sequence q/k/v, attention, o, gate/up, down, q/k/v of the next layer, ...), the last block's
// arrival (word 2k) and block 0's departure (word 2k + 1) in %globaltimer ns, and in word
// 2 (5 * layers - 1) the last block's end: phase j > 0 ran from departure j - 1 to arrival j.
cudaError_t decode_step(const DecodeStepPlan* plan, const KvView& kv, int64_t n_heads, const int32_t* pos0,
                        const float* cos_t, const float* sin_t, float* scratch, bool pdl, cudaStream_t stream,
                        unsigned long long* trace = nullptr);
int decode_step_trace_words(const DecodeStepPlan* plan);

}  // namespace onebit::cuda
