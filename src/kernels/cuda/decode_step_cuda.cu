// The persistent decode step (decode_step_cuda.h).
#include "kernels/cuda/decode_step_cuda.h"

#include <cuda_fp16.h>

#include <initializer_list>
#include <memory>
#include <vector>

#include "kernels/cuda/attention_fast.cuh"
#include "kernels/cuda/fused_gemv.cuh"
#include "kernels/cuda/launch.cuh"

namespace onebit::cuda {
namespace {

using attn::kAttnThreads;
using fused::FSet;

// 16 warps (warps 0-3 also do attention), 128 registers a thread; the GEMV prologue holds 16 inputs
// a thread. (12 warps with 168 registers, and the phases inlined instead of called, measured the
// same: docs/PERF.md.)
constexpr int kStepThreads = 512;
constexpr int kStepMaxCols = 16 * kStepThreads;
constexpr size_t kCodesBytes = static_cast<size_t>(kFusedGemvMaxCols);  // the int8 codes of one input vector

struct StepGeo {
  int G = 0, Wk = 0, K = 0, cols = 0, blocks = 0;
  bool operator==(const StepGeo&) const = default;
};

struct StepLayerDev {
  FSet qkv, o, gu, down;
  const float *attn_norm, *attn_sub_norm, *ffn_norm, *ffn_sub_norm;
};

// sync words: [0] grid-barrier arrivals, [1] blocks that finished, [2 + hk] merge tickets. All zero
// between launches (the last block out resets the first two, the last split of a head its ticket).
constexpr int kSyncCount = 0, kSyncExit = 1, kSyncTickets = 2;
constexpr int kMaxKvHeads = 64;  // merge tickets in the sync words

struct StepArgs {
  const StepLayerDev* layers;
  int n_layers;
  StepGeo geo[4];  // q/k/v, o, gate/up, down
  float eps;
  DecodeStepBuffers buf;
  KvView kv;
  int n_heads, splits;
  const int32_t* pos0;
  const float *cos_t, *sin_t;
  float* scratch;
  unsigned* sync;
  unsigned long long* trace;  // nullptr, or decode_step_trace_words words (zeroed)
};

__device__ __forceinline__ void block_sync_all() { asm volatile("bar.sync 15, %0;" ::"n"(kStepThreads) : "memory"); }
__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Grid-wide barrier: every block's threads meet (named barrier 15: warps may arrive from different
// code, e.g. the attention warps from inside attention_fast_block), thread 0 publishes the block's
// writes and counts in, waits for the whole grid, and the block meets again.
// With a trace (decode_step_trace_words), barrier k records the last block's arrival (word 2k,
// atomicMax of %globaltimer) and block 0's departure (word 2k + 1).
__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}
struct GridBarrier {
  unsigned* count;
  unsigned target;
  unsigned long long* trace;
  __device__ __forceinline__ void operator()() {
    block_sync_all();
    target += gridDim.x;
    if (threadIdx.x == 0) {
      const unsigned k = target / gridDim.x - 1;
      if (trace != nullptr) atomicMax(trace + 2 * k, global_ns());
      __threadfence();
      atomicAdd(count, 1u);
      while (load_acquire(count) < target) {
      }
      __threadfence();
      if (trace != nullptr && blockIdx.x == 0) trace[2 * k + 1] = global_ns();
    }
    block_sync_all();
  }
};

// The blocks of one fused GEMV launch, block index b on block b % grid; wait() once before the
// first input read (the first block's weights are already requested).
template <FusedEpilogue kEpi, class Wait>
__device__ __noinline__ void gemv_phase(const FSet& set, const StepGeo& g, const float* x, const float* norm_w,
                                        float eps, int4* codes, fused::GemvSmem& sm, Wait&& wait) {
  bool waited = false;
  auto once = [&] {
    if (!waited) {
      waited = true;
      wait();
    }
  };
  for (int b = blockIdx.x; b < g.blocks; b += gridDim.x)
    fused::fused_norm_gemv_block<kEpi>(set, g.G, g.Wk, g.K, g.cols, x, norm_w, eps, b, codes, sm, once);
  once();
}

// Phase 2: item = split * n_kv + hk on warps 0-3; the other warps only take the barrier. (Phases
// are separate functions, not inlined: each gets the registers it needs without the others' state.)
template <int DPL>
__device__ __noinline__ void attention_phase(const StepArgs& a, int l, GridBarrier& bar, __half* stage,
                                             attn::MergeSmem& msm, int* s_last_p) {
  constexpr int D = 32 * DPL;
  int& s_last = *s_last_p;
  const int warp = threadIdx.x >> 5, tid = threadIdx.x;
  const int n_kv = static_cast<int>(a.kv.n_kv_heads), G = a.n_heads / n_kv;
  const int n_items = n_kv * a.splits;
  const int n_keys = *a.pos0 + 1;
  const int chunk = attn::split_chunk(n_keys, a.splits);
  const int active = (n_keys + chunk - 1) / chunk;
  const attn::DecodeFuse fuse{a.buf.k, a.buf.v, a.cos_t, a.sin_t};
  const int64_t rec = 2 + D;
  if (warp < kAttnThreads / 32) {
    bool waited = false;
    auto once = [&] {
      if (!waited) {
        waited = true;
        bar();
      }
    };
    for (int item = blockIdx.x; item < n_items; item += gridDim.x) {
      const int hk = item % n_kv, split = item / n_kv;
      attn::attention_fast_block<DPL, true>(a.kv, l, a.buf.q, a.n_heads, a.splits, a.pos0, nullptr, a.scratch,
                                            a.buf.attn, fuse, hk, 0, split, stage, once);
      if (a.splits == 1 || split >= active) continue;
      // The last of the head's active splits to finish merges them (attention_merge_kernel's
      // arithmetic), then re-arms the ticket for the next layer.
      attn::attn_sync();  // warp 0 wrote this split's record
      if (tid == 0) {
        __threadfence();
        s_last = atomicAdd(a.sync + kSyncTickets + hk, 1u) == static_cast<unsigned>(active - 1);
      }
      attn::attn_sync();
      if (s_last) {
        __threadfence();
        const float* base = a.scratch + static_cast<int64_t>(hk) * G * a.splits * rec;
        attn::merge_weights(base, a.splits * rec, rec, active, G, msm, tid, kAttnThreads, [] { attn::attn_sync(); });
        for (int e = tid; e < G * D; e += kAttnThreads) {
          const int g = e / D, d = e - g * D;
          a.buf.attn[(static_cast<int64_t>(hk) * G + g) * D + d] =
              attn::merge_value(base + g * a.splits * rec, rec, active, msm.w[g], msm.l[g], d);
        }
        if (tid == 0) a.sync[kSyncTickets + hk] = 0;
      }
    }
    once();
  } else {
    bar();
  }
}

template <int DPL>
__global__ void __launch_bounds__(kStepThreads, 1) decode_step_kernel(StepArgs a) {
  extern __shared__ __align__(16) int4 smem[];
  int4* const codes = smem;
  __half* const stage = reinterpret_cast<__half*>(reinterpret_cast<char*>(smem) + kCodesBytes);
  __shared__ int s_last;
  __shared__ fused::GemvSmem gsm;
  __shared__ attn::MergeSmem msm;
  GridBarrier bar{a.sync + kSyncCount, 0, a.trace};
  const int tid = threadIdx.x;

  for (int l = 0; l < a.n_layers; ++l) {
    const StepLayerDev& L = a.layers[l];
    // 1. q/k/v (layer 0 waits for the embedding kernel; later layers for the previous down GEMV).
    if (l == 0)
      gemv_phase<FusedEpilogue::kStore>(L.qkv, a.geo[0], a.buf.x, L.attn_norm, a.eps, codes, gsm, [] { pdl_wait(); });
    else
      gemv_phase<FusedEpilogue::kStore>(L.qkv, a.geo[0], a.buf.x, L.attn_norm, a.eps, codes, gsm, bar);

    // 2. attention (RoPE, the new k / v into the cache, splits, merges).
    attention_phase<DPL>(a, l, bar, stage, msm, &s_last);

    // 3. o (+ residual), 4. gate/up (+ relu^2 * up), 5. down (+ residual).
    gemv_phase<FusedEpilogue::kResidual>(L.o, a.geo[1], a.buf.attn, L.attn_sub_norm, a.eps, codes, gsm, bar);
    gemv_phase<FusedEpilogue::kRelu2>(L.gu, a.geo[2], a.buf.x, L.ffn_norm, a.eps, codes, gsm, bar);
    if (l == a.n_layers - 1) pdl_trigger();  // every block is resident and past its last wait but one
    gemv_phase<FusedEpilogue::kResidual>(L.down, a.geo[3], a.buf.gate, L.ffn_sub_norm, a.eps, codes, gsm, bar);
  }
  // The last block out re-arms the barrier for the next launch (no block still reads the counter).
  __syncthreads();
  if (tid == 0) {
    if (a.trace != nullptr) atomicMax(a.trace + 2 * (5 * a.n_layers - 1), global_ns());  // the last block's end
    __threadfence();
    if (atomicAdd(a.sync + kSyncExit, 1u) == gridDim.x - 1) {
      a.sync[kSyncCount] = 0;
      a.sync[kSyncExit] = 0;
      __threadfence();
    }
  }
}

size_t step_smem_bytes(int DPL) {
  return kCodesBytes + (DPL == 2 ? attn::attention_stage_bytes<2>() : attn::attention_stage_bytes<4>());
}

// The widest block shape whose blocks fit in one wave of `nsm` (rows spread over all warps).
bool step_geometry(FusedGemvArgs a, int nsm, StepGeo* g, fused::Geometry* out) {
  const int K = static_cast<int>(cuda_chunks(a.cols));
  const bool relu2 = a.epilogue == FusedEpilogue::kRelu2;
  fused::Geometry best{};
  bool found = false;
  for (int G = relu2 ? 2 : 1; G <= fused::kMaxGroups; G += relu2 ? 2 : 1) {
    const int wk = kStepThreads / 32 / G;
    a.shape = FusedGemvShape{G, (K + 4 * wk - 1) / (4 * wk)};
    fused::Geometry t;
    if (!fused::geometry(a, &t) || 32 * t.G * t.Wk > kStepThreads) continue;
    best = t;
    found = true;
    if (t.blocks <= nsm) break;
  }
  if (!found) return false;
  *out = best;
  *g = StepGeo{best.G, best.Wk, best.K, static_cast<int>(a.cols), best.blocks};
  return true;
}

}  // namespace

struct DecodeStepPlan {
  StepLayerDev* layers = nullptr;
  unsigned* sync = nullptr;
  int n_layers = 0, grid = 0;
  int64_t hidden = 0, inter = 0, qdim = 0, kvdim = 0;
  StepGeo geo[4];
  float eps = 0.0f;
  DecodeStepBuffers buf;
};

bool decode_step_supported(const KvView& kv, int64_t n_heads, int64_t hidden, int64_t qdim, int64_t inter) {
  if (kv.type != KvType::kF16 || (kv.head_dim != 64 && kv.head_dim != 128) || !attention_decode_fusable(kv, n_heads))
    return false;
  for (int64_t d : {hidden, qdim, inter})
    if (d <= 0 || d % 4 != 0 || d > kStepMaxCols) return false;
  return true;
}

cudaError_t decode_step_plan(const DecodeStepLayer* layers, int n_layers, int64_t hidden, int64_t inter,
                             const DecodeStepBuffers& buffers, float eps, DecodeStepPlan** out, const char** why) {
  *out = nullptr;
  const char* unused = nullptr;
  const char*& reason = why != nullptr ? *why : unused;
  reason = "";
  if (layers == nullptr || n_layers < 1 || hidden <= 0 || inter <= 0) {
    reason = "no layers";
    return cudaErrorInvalidValue;
  }
  int dev = 0, nsm = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev);
  if (e != cudaSuccess) return e;
  auto plan = std::make_unique<DecodeStepPlan>();
  plan->n_layers = n_layers;
  plan->hidden = hidden;
  plan->inter = inter;
  plan->qdim = layers[0].q.rows;
  plan->kvdim = layers[0].k.rows;
  plan->eps = eps;
  plan->buf = buffers;
  std::vector<StepLayerDev> host(static_cast<size_t>(n_layers));
  for (int l = 0; l < n_layers; ++l) {
    const DecodeStepLayer& L = layers[l];
    auto phase = [&](int which, int64_t cols, const float* x, const float* norm, std::initializer_list<GemvMatrix> mats,
                     FusedEpilogue epi, FSet* set) {
      FusedGemvArgs a;
      a.x = x;
      a.norm_w = norm;
      a.eps = eps;
      a.cols = cols;
      for (const GemvMatrix& m : mats) a.mats[a.count++] = m;
      a.epilogue = epi;
      StepGeo g;
      fused::Geometry geo;
      if (!step_geometry(a, nsm, &g, &geo)) {
        reason = "no block shape for a GEMV";
        return false;
      }
      if (l > 0 && !(g == plan->geo[which])) {
        reason = "layers of different shapes";
        return false;
      }
      plan->geo[which] = g;
      *set = geo.set;
      return true;
    };
    auto m = [](GemvMatrix g, float* y) {
      g.y = y;
      return g;
    };
    // (Column counts are the model's: the matrices were uploaded for hidden / q-width / inter inputs.)
    if (L.q.rows != plan->qdim || L.k.rows != plan->kvdim || L.gate.rows != inter || L.up.rows != inter ||
        L.down.rows != hidden || L.o.rows != hidden) {
      reason = "matrix shapes";
      return cudaErrorInvalidValue;
    }
    StepLayerDev& d = host[static_cast<size_t>(l)];
    const bool ok =
        phase(0, hidden, buffers.x, L.attn_norm, {m(L.q, buffers.q), m(L.k, buffers.k), m(L.v, buffers.v)},
              FusedEpilogue::kStore, &d.qkv) &&
        phase(1, plan->qdim, buffers.attn, L.attn_sub_norm, {m(L.o, buffers.x)}, FusedEpilogue::kResidual, &d.o) &&
        phase(2, hidden, buffers.x, L.ffn_norm, {m(L.gate, buffers.gate), m(L.up, buffers.up)}, FusedEpilogue::kRelu2,
              &d.gu) &&
        phase(3, inter, buffers.gate, L.ffn_sub_norm, {m(L.down, buffers.x)}, FusedEpilogue::kResidual, &d.down);
    if (!ok) return cudaErrorInvalidValue;  // reason set by phase
    d.attn_norm = L.attn_norm;
    d.attn_sub_norm = L.attn_sub_norm;
    d.ffn_norm = L.ffn_norm;
    d.ffn_sub_norm = L.ffn_sub_norm;
  }
  // One block per SM, all resident at once (the grid barrier needs them all).
  for (int dpl : {2, 4}) {
    const void* k = dpl == 2 ? reinterpret_cast<const void*>(decode_step_kernel<2>)
                             : reinterpret_cast<const void*>(decode_step_kernel<4>);
    e = allow_dynamic_smem(k, step_smem_bytes(dpl));
    if (e != cudaSuccess) return e;
    int per_sm = 0;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, kStepThreads, step_smem_bytes(dpl));
    if (e != cudaSuccess) return e;
    if (per_sm < 1) {
      reason = "one block does not fit on an SM";
      return cudaErrorInvalidValue;
    }
  }
  plan->grid = nsm;
  const size_t sync_bytes = static_cast<size_t>(kSyncTickets + kMaxKvHeads) * sizeof(unsigned);
  e = cudaMalloc(&plan->layers, host.size() * sizeof(StepLayerDev));
  if (e == cudaSuccess) e = cudaMalloc(&plan->sync, sync_bytes);
  if (e == cudaSuccess)
    e = cudaMemcpy(plan->layers, host.data(), host.size() * sizeof(StepLayerDev), cudaMemcpyHostToDevice);
  if (e == cudaSuccess) e = cudaMemset(plan->sync, 0, sync_bytes);
  if (e != cudaSuccess) {
    decode_step_free(plan.release());
    return e;
  }
  *out = plan.release();
  return cudaSuccess;
}

void decode_step_free(DecodeStepPlan* plan) {
  if (plan == nullptr) return;
  cudaFree(plan->layers);
  cudaFree(plan->sync);
  delete plan;
}

int decode_step_trace_words(const DecodeStepPlan* plan) { return plan == nullptr ? 0 : 2 * 5 * plan->n_layers; }

cudaError_t decode_step(const DecodeStepPlan* plan, const KvView& kv, int64_t n_heads, const int32_t* pos0,
                        const float* cos_t, const float* sin_t, float* scratch, bool pdl, cudaStream_t stream,
                        unsigned long long* trace) {
  if (plan == nullptr || pos0 == nullptr || cos_t == nullptr || sin_t == nullptr ||
      !decode_step_supported(kv, n_heads, plan->hidden, plan->qdim, plan->inter) || kv.n_layers < plan->n_layers ||
      kv.n_kv_heads > kMaxKvHeads || kv.n_kv_heads * kv.head_dim != plan->kvdim ||
      n_heads * kv.head_dim != plan->qdim)
    return cudaErrorInvalidValue;
  const int64_t splits = attention_splits(kv.n_ctx, 1, true);
  if (splits > 1 && scratch == nullptr) return cudaErrorInvalidValue;
  StepArgs a{};
  a.layers = plan->layers;
  a.n_layers = plan->n_layers;
  for (int i = 0; i < 4; ++i) a.geo[i] = plan->geo[i];
  a.eps = plan->eps;
  a.buf = plan->buf;
  a.kv = kv;
  a.n_heads = static_cast<int>(n_heads);
  a.splits = static_cast<int>(splits);
  a.pos0 = pos0;
  a.cos_t = cos_t;
  a.sin_t = sin_t;
  a.scratch = scratch;
  a.sync = plan->sync;
  a.trace = trace;
  const int dpl = static_cast<int>(kv.head_dim / 32);
  cudaLaunchConfig_t lc = {};
  lc.gridDim = dim3(static_cast<unsigned>(plan->grid));
  lc.blockDim = dim3(kStepThreads);
  lc.dynamicSmemBytes = step_smem_bytes(dpl);
  lc.stream = stream;
  cudaLaunchAttribute attr[2];
  int n = 0;
  attr[n].id = cudaLaunchAttributeCooperative;
  attr[n++].val.cooperative = 1;
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  lc.attrs = attr;
  lc.numAttrs = static_cast<unsigned>(n);
  return dpl == 2 ? cudaLaunchKernelEx(&lc, decode_step_kernel<2>, a)
                  : cudaLaunchKernelEx(&lc, decode_step_kernel<4>, a);
}

}  // namespace onebit::cuda
