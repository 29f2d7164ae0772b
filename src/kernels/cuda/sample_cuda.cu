// Token sampling on the GPU (sample_cuda.h, docs/kernels-cuda.md "Sampling").
//
// One block of 1024 threads per logit row. No sort: every selection is a threshold search.
//  - pass 0: max, first index of the max, finite count, NaN / +inf check. Greedy ends here.
//  - bucket pass: each finite token's bucket floor(16 * (max - logit)) (1/16 nat wide, 1024 of
//    them plus one for keys beyond 64 nats: the host sampler's keep_mass buckets) with the mass
//    (or count) of a weight per bucket. Buckets are ordered like (logit desc), so a scan over
//    them finds the bucket where a running mass (or count) reaches a target.
//  - radix select inside one bucket: over the 64-bit key (~ordered logit bits, id), which orders
//    tokens exactly as the host's (logit desc, id asc); 8-bit digits from the highest bit where the
//    bucket's keys differ, each pass a histogram of the weight per digit; stops when the chosen
//    digit holds one token.
//  - id-order scan (dense draw, top-p's head): tiles of 8192 tokens, a block scan of per-thread
//    sums, the first token where the running weight exceeds the target.
// Weights are deterministic_exp (core/sampler/deterministic_exp.h) evaluated with explicit IEEE
// double operations (__dmul_rn etc.: no contraction into FMA), so they are the host's bits.
#include "kernels/cuda/sample_cuda.h"

#include <cstdint>

#include "kernels/cuda/device_inline.cuh"

namespace onebit::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kBucketsPerNat = 16;
constexpr int kBuckets = 64 * kBucketsPerNat;  // + 1 overflow bucket
constexpr int kBins = kBuckets + 1;
constexpr int kScanPerThread = 8;
constexpr uint64_t kNoKey = ~0ull;
// Top-k candidates up to this many are gathered into shared memory once, and the later passes
// (the rest of the top-k select, top-p, min-p, the draw) read them there instead of the row.
constexpr int kListCap = 2048;

// deterministic_exp (same constants and operation order as core/sampler/deterministic_exp.h).
__device__ __forceinline__ double dexp(double x) {
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2Hi = 0x1.62e42feep-1;
  constexpr double kLn2Lo = 0.69314718055994530942 - 0x1.62e42feep-1;
  constexpr double kRound = 0x1.8p52;
  constexpr double kMin = -700.0;
  const bool live = x > kMin;
  const double xc = live ? x : kMin;
  const double scaled = __dmul_rn(xc, kLog2e);
  const double shifted = __dadd_rn(scaled, kRound);
  const double k = __dsub_rn(shifted, kRound);
  const double hi = __dmul_rn(k, kLn2Hi);
  const double lo = __dmul_rn(k, kLn2Lo);
  const double r0 = __dsub_rn(xc, hi);
  const double r = __dsub_rn(r0, lo);
  double p = 1.0 / 39916800.0;
  p = __dadd_rn(__dmul_rn(p, r), 1.0 / 3628800.0);
  p = __dadd_rn(__dmul_rn(p, r), 1.0 / 362880.0);
  p = __dadd_rn(__dmul_rn(p, r), 1.0 / 40320.0);
  p = __dadd_rn(__dmul_rn(p, r), 1.0 / 5040.0);
  p = __dadd_rn(__dmul_rn(p, r), 1.0 / 720.0);
  p = __dadd_rn(__dmul_rn(p, r), 1.0 / 120.0);
  p = __dadd_rn(__dmul_rn(p, r), 1.0 / 24.0);
  p = __dadd_rn(__dmul_rn(p, r), 1.0 / 6.0);
  p = __dadd_rn(__dmul_rn(p, r), 0.5);
  p = __dadd_rn(__dmul_rn(p, r), 1.0);
  p = __dadd_rn(__dmul_rn(p, r), 1.0);
  const uint64_t k_bits = static_cast<uint64_t>(__double_as_longlong(shifted)) -
                          static_cast<uint64_t>(__double_as_longlong(kRound));
  const double scale = __longlong_as_double(static_cast<long long>((k_bits + 1023) << 52));
  const double y = __dmul_rn(p, scale);
  return live ? y : 0.0;
}

// Ascending key = the host's (logit desc, id asc) order: ~(order-preserving bits of the logit), id.
__device__ __forceinline__ uint64_t order_key(float l, int64_t i) {
  const uint32_t u = __float_as_uint(l == 0.0f ? 0.0f : l);  // -0 and +0 are one value (ties by id)
  const uint32_t ord = u ^ ((u >> 31) != 0 ? 0xffffffffu : 0x80000000u);  // increasing with l
  return (static_cast<uint64_t>(~ord) << 32) | static_cast<uint32_t>(i);
}

struct Shared {
  double mass[kBins];
  uint64_t lo[kBins];  // smallest / largest key with weight > 0 in each bucket
  uint64_t hi[kBins];
  double dmass[256];   // radix digit histogram
  uint64_t dhi[256];
  int dcount[256];
  int32_t list_id[kListCap];  // the gathered candidates (any order)
  float list_l[kListCap];
  int list_n;
  double red[kWarps];  // block reductions
  uint64_t redk[kWarps];
  float redf[kWarps];
  int64_t redi[kWarps];
  // find_bin's answer
  int bin;
  double before;
  int64_t pick;
};

struct Row {
  const float* v;
  int64_t n;
  float max;
  double maxd;
  // Bucket of a finite logit (the host's keep_mass bucket of key = max - logit).
  __device__ __forceinline__ int bucket(float l) const {
    const double b = __dmul_rn(__dsub_rn(maxd, static_cast<double>(l)), static_cast<double>(kBucketsPerNat));
    return b < static_cast<double>(kBuckets) ? static_cast<int>(b) : kBuckets;
  }
};

// What a pass reads: the whole row, or the candidates gathered into shared memory.
struct RowSrc {
  const float* v;
  int64_t n;
  __device__ __forceinline__ int64_t size() const { return n; }
  __device__ __forceinline__ void get(int64_t j, int64_t* i, float* l) const {
    *i = j;
    *l = v[j];
  }
};
struct ListSrc {
  const int32_t* id;
  const float* l;
  int n;
  __device__ __forceinline__ int64_t size() const { return n; }
  __device__ __forceinline__ void get(int64_t j, int64_t* i, float* lv) const {
    *i = id[j];
    *lv = l[j];
  }
};

__device__ double block_sum(double x, Shared& s) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) s.red[warp] = x;
  __syncthreads();
  double t = 0.0;
  for (int w = 0; w < kWarps; ++w) t += s.red[w];  // every thread, same order: same value
  return t;
}

__device__ uint64_t block_max_key(uint64_t k, Shared& s) {
  for (int o = 16; o > 0; o >>= 1) {
    const uint64_t ok = __shfl_xor_sync(0xffffffffu, k, o);
    k = ok > k ? ok : k;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) s.redk[warp] = k;
  __syncthreads();
  uint64_t m = 0;
  for (int w = 0; w < kWarps; ++w) m = s.redk[w] > m ? s.redk[w] : m;
  return m;
}

// Warp 0 finds the first of `nbins` bins where before + mass[bin] reaches `target` (>= or, with
// strict, >), before = the sum of the bins ahead of it; s.bin = -1 if none does. All threads call.
__device__ void find_bin(const double* mass, int nbins, double target, bool strict, Shared& s) {
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const int per = (nbins + 31) / 32;
    const int b0 = lane * per, b1 = min(nbins, b0 + per);
    double sum = 0.0;
    for (int b = b0; b < b1; ++b) sum += mass[b];
    double ex = sum;  // exclusive scan over lanes
    for (int o = 1; o < 32; o <<= 1) {
      const double y = __shfl_up_sync(0xffffffffu, ex, o);
      if (lane >= o) ex += y;
    }
    ex -= sum;
    const double inc = ex + sum;
    const unsigned hit = __ballot_sync(0xffffffffu, strict ? inc > target : inc >= target);
    if (lane == 0) s.bin = -1;
    __syncwarp();
    // The first lane whose range reaches the target walks on from there in bin order (past its
    // range if rounding of the lane sums put the crossing a little later).
    if (hit != 0 && lane == __ffs(hit) - 1) {
      double cum = ex;
      for (int b = b0; b < nbins; ++b) {
        const double next = cum + mass[b];
        if (mass[b] > 0.0 && (strict ? next > target : next >= target)) {  // never an empty bin
          s.bin = b;
          s.before = cum;
          break;
        }
        cum = next;
      }
    }
  }
  __syncthreads();
}

// Adds each active lane's (w, key) to bin `bin` (-1: inactive) of shared histograms: the sum of w,
// the count (if `count`), the smallest key (if `lo`) and the largest. Every lane of the warp calls
// it. When the warp's active lanes fall into at most 4 bins, each bin gets one atomic after a warp
// reduction: a row whose logits lie close together sends most of a warp to one bin, where per-lane
// atomics on one address serialize (seen: top-k 40 on a synthetic model, 5 ms a token).
__device__ __forceinline__ void hist_add(double* mass, int* count, uint64_t* lo, uint64_t* hi, int bin, double w,
                                         uint64_t key) {
  constexpr unsigned kFull = 0xffffffffu;
  const bool active = bin >= 0;
  const int lane = threadIdx.x & 31;
  const unsigned group = __match_any_sync(kFull, bin);
  const unsigned leaders = __ballot_sync(kFull, active && lane == __ffs(group) - 1);
  if (__popc(leaders) > 4) {
    if (active) {
      atomicAdd(&mass[bin], w);
      if (count != nullptr) atomicAdd(&count[bin], 1);
      if (lo != nullptr) atomicMin(reinterpret_cast<unsigned long long*>(&lo[bin]), static_cast<unsigned long long>(key));
      atomicMax(reinterpret_cast<unsigned long long*>(&hi[bin]), static_cast<unsigned long long>(key));
    }
    return;
  }
  for (unsigned todo = leaders; todo != 0; todo &= todo - 1) {
    const int leader = __ffs(todo) - 1;
    const int b = __shfl_sync(kFull, bin, leader);
    const bool mine = active && bin == b;
    double sw = mine ? w : 0.0;
    uint64_t mn = mine ? key : kNoKey, mx = mine ? key : 0;
    int c = mine ? 1 : 0;
    for (int o = 16; o > 0; o >>= 1) {
      sw += __shfl_xor_sync(kFull, sw, o);
      const uint64_t omn = __shfl_xor_sync(kFull, mn, o), omx = __shfl_xor_sync(kFull, mx, o);
      mn = omn < mn ? omn : mn;
      mx = omx > mx ? omx : mx;
      c += __shfl_xor_sync(kFull, c, o);
    }
    if (lane == leader) {
      atomicAdd(&mass[b], sw);
      if (count != nullptr) atomicAdd(&count[b], c);
      if (lo != nullptr) atomicMin(reinterpret_cast<unsigned long long*>(&lo[b]), static_cast<unsigned long long>(mn));
      atomicMax(reinterpret_cast<unsigned long long*>(&hi[b]), static_cast<unsigned long long>(mx));
    }
  }
}

// Pass over the row: per bucket the sum of weight(i, l) over the tokens with in(i, l) (finite
// logits only), and the smallest / largest key among those with weight > 0. Returns the total.
template <typename Src, typename In, typename Weight>
__device__ double bucket_pass(const Row& r, const Src& src, Shared& s, In in, Weight weight) {
  for (int b = threadIdx.x; b < kBins; b += kThreads) {
    s.mass[b] = 0.0;
    s.lo[b] = kNoKey;
    s.hi[b] = 0;
  }
  __syncthreads();
  // Warp-uniform trip count (hist_add needs every lane); lanes past the end are inactive.
  const int64_t n = src.size();
  for (int64_t base = threadIdx.x & ~int64_t{31}; base < n; base += kThreads) {
    const int64_t j = base + (threadIdx.x & 31);
    int bin = -1;
    double w = 0.0;
    uint64_t k = 0;
    if (j < n) {
      int64_t i;
      float l;
      src.get(j, &i, &l);
      if (l != -INFINITY) {
        const int b = r.bucket(l);
        if (in(i, l, b)) {
          w = weight(l);
          if (w > 0.0) {
            bin = b;
            k = order_key(l, i);
          }
        }
      }
    }
    hist_add(s.mass, nullptr, s.lo, s.hi, bin, w, k);
  }
  __syncthreads();
  double t = 0.0;
  for (int b = threadIdx.x; b < kBins; b += kThreads) t += s.mass[b];
  return block_sum(t, s);
}

// Inside bucket `bin` (keys in [lo, hi]), among the tokens with in(), the first in key order
// where the running weight reaches `target` (>=, or > with strict). kNoKey if none does.
template <typename Src, typename In, typename Weight>
__device__ uint64_t select_in_bucket(const Row& r, const Src& src, Shared& s, int bin, uint64_t lo, uint64_t hi,
                                     In in, Weight weight, double target, bool strict) {
  if (lo > hi) return kNoKey;
  const uint64_t diff = lo ^ hi;
  const int top = diff == 0 ? 0 : 63 - __clzll(static_cast<long long>(diff));  // highest differing bit
  int shift = top >= 7 ? top - 7 : 0;
  uint64_t mask = top == 63 ? 0 : ~((2ull << top) - 1);  // bits above `top` are common to all keys
  uint64_t prefix = lo & mask;
  for (;;) {
    for (int d = threadIdx.x; d < 256; d += kThreads) {
      s.dmass[d] = 0.0;
      s.dhi[d] = 0;
      s.dcount[d] = 0;
    }
    __syncthreads();
    const int64_t n = src.size();
    for (int64_t base = threadIdx.x & ~int64_t{31}; base < n; base += kThreads) {
      const int64_t j = base + (threadIdx.x & 31);
      int digit = -1;
      double w = 0.0;
      uint64_t k = 0;
      if (j < n) {
        int64_t i;
        float l;
        src.get(j, &i, &l);
        if (l != -INFINITY && r.bucket(l) == bin) {
          k = order_key(l, i);
          if ((k & mask) == prefix && in(i, l, bin)) {
            w = weight(l);
            if (w > 0.0) digit = static_cast<int>((k >> shift) & 0xff);
          }
        }
      }
      hist_add(s.dmass, s.dcount, nullptr, s.dhi, digit, w, k);
    }
    find_bin(s.dmass, 256, target, strict, s);
    const int d = s.bin;
    if (d < 0) return kNoKey;
    target -= s.before;
    if (s.dcount[d] == 1) return s.dhi[d];
    prefix = (prefix & ~(0xffull << shift)) | (static_cast<uint64_t>(d) << shift);
    mask |= 0xffull << shift;
    if (shift == 0) return prefix;
    shift = shift >= 8 ? shift - 8 : 0;
    __syncthreads();
  }
}

// The first token in id order where the running sum of weight(i, l) (0 = not in the set)
// exceeds target; -1 if none does. Tiles of kThreads * kScanPerThread tokens.
template <typename Weight>
__device__ int64_t scan_pick(const Row& r, Shared& s, Weight weight, double target) {
  double base = 0.0;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t tile = 0; tile < r.n; tile += int64_t{kThreads} * kScanPerThread) {
    const int64_t i0 = tile + static_cast<int64_t>(threadIdx.x) * kScanPerThread;
    double w[kScanPerThread];
    double sum = 0.0;
    for (int j = 0; j < kScanPerThread; ++j) {
      const int64_t i = i0 + j;
      w[j] = i < r.n ? weight(i, r.v[i]) : 0.0;
      sum += w[j];
    }
    // Block exclusive scan of the thread sums (warps, then warp totals).
    double ex = sum;
    for (int o = 1; o < 32; o <<= 1) {
      const double y = __shfl_up_sync(0xffffffffu, ex, o);
      if (lane >= o) ex += y;
    }
    __syncthreads();
    if (lane == 31) s.red[warp] = ex;
    if (threadIdx.x == 0) s.pick = -1;
    __syncthreads();
    double wbase = 0.0, total = 0.0;
    for (int k = 0; k < kWarps; ++k) {
      if (k < warp) wbase += s.red[k];
      total += s.red[k];
    }
    ex = base + wbase + ex - sum;
    if (ex + sum > target) {
      double cum = ex;
      for (int j = 0; j < kScanPerThread; ++j) {
        cum += w[j];
        if (w[j] > 0.0 && cum > target) {
          atomicMin(reinterpret_cast<unsigned long long*>(&s.pick), static_cast<unsigned long long>(i0 + j));
          break;
        }
      }
    }
    __syncthreads();
    if (s.pick >= 0) return s.pick;
    base += total;
  }
  return -1;
}

// The largest id with weight(i, l) > 0, or -1.
template <typename Weight>
__device__ int64_t last_positive(const Row& r, Shared& s, Weight weight) {
  uint64_t best = 0;  // id + 1
  for (int64_t i = threadIdx.x; i < r.n; i += kThreads)
    if (weight(i, r.v[i]) > 0.0) best = static_cast<uint64_t>(i) + 1;
  return static_cast<int64_t>(block_max_key(best, s)) - 1;
}

__device__ int64_t id_of(uint64_t key) { return static_cast<int64_t>(key & 0xffffffffu); }

// Copies the finite tokens of the row whose bucket is <= last_bucket (at most kListCap of them:
// the caller has counted) into s.list_*, in no particular order.
__device__ ListSrc gather(const Row& r, Shared& s, int last_bucket) {
  if (threadIdx.x == 0) s.list_n = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  for (int64_t base = threadIdx.x & ~int64_t{31}; base < r.n; base += kThreads) {
    const int64_t i = base + lane;
    const float l = i < r.n ? r.v[i] : -INFINITY;
    const bool take = l != -INFINITY && r.bucket(l) <= last_bucket;
    const unsigned mask = __ballot_sync(0xffffffffu, take);
    int slot = 0;
    if (lane == 0 && mask != 0) slot = atomicAdd(&s.list_n, __popc(mask));
    slot = __shfl_sync(0xffffffffu, slot, 0) + __popc(mask & ((1u << lane) - 1));
    if (take && slot < kListCap) {
      s.list_id[slot] = static_cast<int32_t>(i);
      s.list_l[slot] = l;
    }
  }
  __syncthreads();
  return ListSrc{s.list_id, s.list_l, min(s.list_n, kListCap)};
}

// After top-k (survivors: bucket < cut_k, or bucket == cut_k and key <= key_k, all within src):
// top-p over them in key order, min-p, then the draw in key order.
template <typename Src, typename E, typename W, typename M>
__device__ int64_t top_k_rest(const Row& r, const Src& src, Shared& s, const SampleParams& p, int cut_k,
                              uint64_t key_k, E e, W final_w, M keep_minp) {
  auto in_k = [cut_k, key_k](int64_t i, float l, int b) {
    return b < cut_k || (b == cut_k && order_key(l, i) <= key_k);
  };
  int cut_p = kBins;
  uint64_t key_p = kNoKey;
  if (p.top_p < 1.0f) {
    // The smallest key-order prefix of the top-k whose softmax mass reaches top_p.
    const double top_p = p.top_p;
    const double sum = bucket_pass(r, src, s, in_k, e);
    find_bin(s.mass, kBins, top_p * sum, false, s);
    if (s.bin >= 0) {
      cut_p = s.bin;
      // kNoKey (rounding): the whole bucket stays
      key_p = select_in_bucket(r, src, s, cut_p, s.lo[cut_p], s.hi[cut_p], in_k, e, top_p * sum - s.before, false);
    }
  }
  auto in = [=](int64_t i, float l, int b) {
    return in_k(i, l, b) && (b < cut_p || (b == cut_p && order_key(l, i) <= key_p)) && keep_minp(l);
  };
  const double total = bucket_pass(r, src, s, in, final_w);
  const double target = p.u * total;
  find_bin(s.mass, kBins, target, true, s);
  if (s.bin >= 0) {
    const int b = s.bin;
    const uint64_t k = select_in_bucket(r, src, s, b, s.lo[b], s.hi[b], in, final_w, target - s.before, true);
    return id_of(k != kNoKey ? k : s.hi[b]);
  }
  // Rounding carried the target past the end: the last survivor.
  uint64_t last = 0;
  for (int b = threadIdx.x; b < kBins; b += kThreads) last = s.hi[b] > last ? s.hi[b] : last;
  return id_of(block_max_key(last, s));
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* __restrict__ logits, int64_t n,
                                                          const SampleParams* __restrict__ params,
                                                          int32_t* __restrict__ ids) {
  __shared__ Shared s;
  const SampleParams p = params[blockIdx.x];
  Row r{logits + static_cast<int64_t>(blockIdx.x) * n, n, 0.0f, 0.0};

  // Pass 0: max and its first index, finite count, NaN / +inf.
  float best = -INFINITY;
  int64_t bi = n;
  int64_t finite = 0;
  bool bad = false;
  // Four loads in flight per thread (one block streams the whole row); each thread still visits
  // its indices in increasing order, so the first of equal maxima stays.
  constexpr int kUnroll = 4;
  for (int64_t i0 = threadIdx.x; i0 < n; i0 += int64_t{kThreads} * kUnroll) {
    float v[kUnroll];
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + int64_t{u} * kThreads;
      v[u] = i < n ? r.v[i] : NAN;
    }
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + int64_t{u} * kThreads;
      if (i >= n) break;
      const float l = v[u];
      bad |= !(l < INFINITY);
      finite += l != -INFINITY;
      if (bi == n || l > best) {
        best = l;
        bi = i;
      }
    }
  }
  warp_argmax(best, bi);
  for (int o = 16; o > 0; o >>= 1) finite += __shfl_xor_sync(0xffffffffu, finite, o);
  const int anybad = __syncthreads_or(bad);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    s.redf[warp] = best;
    s.redi[warp] = bi;
    s.redk[warp] = static_cast<uint64_t>(finite);
  }
  __syncthreads();
  best = s.redf[0];
  bi = s.redi[0];
  finite = 0;
  for (int w = 0; w < kWarps; ++w) {
    if (s.redf[w] > best || (s.redf[w] == best && s.redi[w] < bi)) {
      best = s.redf[w];
      bi = s.redi[w];
    }
    finite += static_cast<int64_t>(s.redk[w]);
  }
  __syncthreads();
  if (anybad || best == -INFINITY) {
    if (threadIdx.x == 0) ids[blockIdx.x] = -1;
    return;
  }
  if (p.temperature == 0.0f) {
    if (threadIdx.x == 0) ids[blockIdx.x] = static_cast<int32_t>(bi);
    return;
  }
  r.max = best;
  r.maxd = best;
  const double maxd = best;
  const double t = p.temperature;
  const double min_p = p.min_p;
  const double top_p = p.top_p;
  const bool minp_on = p.min_p > 0.0f;
  auto e = [maxd](float l) { return dexp(__dsub_rn(static_cast<double>(l), maxd)); };
  auto final_w = [maxd, t](float l) { return dexp(__ddiv_rn(__dsub_rn(static_cast<double>(l), maxd), t)); };
  auto keep_minp = [=](float l) { return !minp_on || !(e(l) < min_p); };
  int64_t chosen = -1;

  const bool top_k = p.top_k > 0 && p.top_k < n;
  if (!top_k && p.top_p >= 1.0f) {
    // Dense: id order, min-p by zeroing (Sampler::shape_dense).
    auto w = [&](int64_t, float l) { return keep_minp(l) ? final_w(l) : 0.0; };
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) sum += w(i, r.v[i]);
    const double total = block_sum(sum, s);
    chosen = scan_pick(r, s, w, p.u * total);
    if (chosen < 0) chosen = last_positive(r, s, w);
  } else if (top_k) {
    // Survivors are a prefix of key order; the draw walks it in key order. When the candidates
    // (the buckets up to the one holding the k-th token) fit in shared memory they are gathered
    // once and every later pass reads them there.
    auto all = [](int64_t, float, int) { return true; };
    auto one = [](float) { return 1.0; };
    const RowSrc row{r.v, n};
    if (p.top_k < finite) {
      bucket_pass(r, row, s, all, one);  // counts
      find_bin(s.mass, kBins, static_cast<double>(p.top_k), false, s);
      const int cut_k = s.bin;
      const double before = s.before;
      const uint64_t lo = s.lo[cut_k], hi = s.hi[cut_k];
      if (before + s.mass[cut_k] <= kListCap) {
        const ListSrc list = gather(r, s, cut_k);
        const uint64_t key_k = select_in_bucket(r, list, s, cut_k, lo, hi, all, one, p.top_k - before, false);
        chosen = top_k_rest(r, list, s, p, cut_k, key_k, e, final_w, keep_minp);
      } else {
        const uint64_t key_k = select_in_bucket(r, row, s, cut_k, lo, hi, all, one, p.top_k - before, false);
        chosen = top_k_rest(r, row, s, p, cut_k, key_k, e, final_w, keep_minp);
      }
    } else if (finite <= kListCap) {
      chosen = top_k_rest(r, gather(r, s, kBuckets), s, p, kBins, kNoKey, e, final_w, keep_minp);
    } else {
      chosen = top_k_rest(r, row, s, p, kBins, kNoKey, e, final_w, keep_minp);
    }
  } else {
    // Top-p without top-k (Sampler::keep_mass): buckets before the cut bucket are kept whole and
    // walked in id order, then the cut bucket's head in key order.
    auto all = [](int64_t, float, int) { return true; };
    const RowSrc row{r.v, n};
    const double sum = bucket_pass(r, row, s, all, e);
    find_bin(s.mass, kBins, top_p * sum, false, s);
    if (s.bin < 0) {
      // Rounding left the total under top_p: everything stays, in id order (as dense).
      auto w = [&](int64_t, float l) { return l != -INFINITY && keep_minp(l) ? final_w(l) : 0.0; };
      double part = 0.0;
      for (int64_t i = threadIdx.x; i < n; i += kThreads) part += w(i, r.v[i]);
      const double total = block_sum(part, s);
      chosen = scan_pick(r, s, w, p.u * total);
      if (chosen < 0) chosen = last_positive(r, s, w);
    } else {
      const int cut = s.bin;
      const uint64_t lo = s.lo[cut], hi = s.hi[cut];
      const uint64_t key_p = select_in_bucket(r, row, s, cut, lo, hi, all, e, top_p * sum - s.before, false);
      auto head = [=](int64_t, float l) {
        return l != -INFINITY && r.bucket(l) < cut && keep_minp(l) ? final_w(l) : 0.0;
      };
      auto in_tail = [=](int64_t i, float l, int b) { return b == cut && order_key(l, i) <= key_p && keep_minp(l); };
      double wa = 0.0, wb = 0.0;
      for (int64_t i = threadIdx.x; i < n; i += kThreads) {
        const float l = r.v[i];
        if (l == -INFINITY) continue;
        const int b = r.bucket(l);
        if (b < cut)
          wa += keep_minp(l) ? final_w(l) : 0.0;
        else if (b == cut && in_tail(i, l, b))
          wb += final_w(l);
      }
      const double head_w = block_sum(wa, s);
      const double tail_w = block_sum(wb, s);
      const double target = p.u * (head_w + tail_w);
      if (target < head_w) chosen = scan_pick(r, s, head, target);
      if (chosen < 0) {
        const uint64_t k = select_in_bucket(r, row, s, cut, lo, hi, in_tail, final_w, target - head_w, true);
        if (k != kNoKey) {
          chosen = id_of(k);
        } else {  // rounding: the last survivor in walk order
          uint64_t last = 0;
          for (int64_t i = threadIdx.x; i < n; i += kThreads) {
            const float l = r.v[i];
            if (l == -INFINITY || r.bucket(l) != cut) continue;
            const uint64_t key = order_key(l, i);
            if (in_tail(i, l, cut) && final_w(l) > 0.0 && key + 1 > last) last = key + 1;
          }
          last = block_max_key(last, s);
          chosen = last > 0 ? id_of(last - 1) : last_positive(r, s, head);
        }
      }
    }
  }
  if (threadIdx.x == 0) ids[blockIdx.x] = static_cast<int32_t>(chosen);
}

}  // namespace

cudaError_t sample_rows(const float* logits, int64_t n_vocab, int64_t rows, const SampleParams* params, int32_t* ids,
                        cudaStream_t stream) {
  if (n_vocab <= 0 || n_vocab > INT32_MAX || rows < 0 || rows > INT32_MAX) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  sample_kernel<<<dim3(static_cast<unsigned>(rows)), dim3(kThreads), 0, stream>>>(logits, n_vocab, params, ids);
  return cudaGetLastError();
}

}  // namespace onebit::cuda
