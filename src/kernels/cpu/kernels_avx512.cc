// AVX-512 (F, BW, VL, DQ, VNNI) kernels. Bit-identical to kernels_scalar.cc; see kernel_table.h for
// the shared numeric definitions and why this file includes nothing else.
// GCC 12's avx512fintrin.h builds some intrinsics on _mm512_undefined_*(), which -Wall flags as
// "used uninitialized" once inlined (a GCC header bug); silence that for this file only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// Products and sums must round separately, exactly as the reference does: no FMA contraction.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <immintrin.h>

#include "kernels/cpu/kernel_table.h"

namespace onebit::cpu::detail {
namespace {

constexpr int64_t kGroup = 16, kBlock = 16, kBlockBytes = 64;

// Four int8 activations broadcast to all 16 lanes; the compiler folds this into vpdpbusd's
// {1to16} memory operand.
inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

inline __mmask16 tail_mask(int64_t rem) {
  return rem >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << rem) - 1);
}

// acc (raw sums of (w+1) x for the 16 rows of group g) -> y for those rows.
inline void store_rows(const WeightsView& w, int64_t g, __m512i acc, int32_t qsum, float s, float* y) {
  acc = _mm512_sub_epi32(acc, _mm512_set1_epi32(qsum));
  const __m512 f = _mm512_div_ps(_mm512_load_ps(w.row_scales + g * kGroup), _mm512_set1_ps(s));
  const __m512 out = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), f);
  if (w.rows - g * kGroup >= kGroup) {
    _mm512_storeu_ps(y + g * kGroup, out);
  } else {
    _mm512_mask_storeu_ps(y + g * kGroup, tail_mask(w.rows - g * kGroup), out);
  }
}

// Decode: one activation row. Instead of shifting each 2-bit field down, the four fields are only
// masked in place (x1, x4, x16, x64) and kept in four accumulators, rescaled exactly at the end by
// arithmetic shifts: 4 ANDs + 4 vpdpbusd per 64-byte block. |acc3| <= 128*128*4 per block, so
// int32 cannot overflow below 2^31 / 65536 blocks (repack_for_cpu limits cols to 2^19).
void gemv(const WeightsView& w, const int8_t* q, float s, int32_t qsum, float* y, int64_t g0, int64_t g1) {
  const __m512i m0 = _mm512_set1_epi8(0x03), m1 = _mm512_set1_epi8(0x0c);
  const __m512i m2 = _mm512_set1_epi8(0x30), m3 = _mm512_set1_epi8(static_cast<char>(0xc0));
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* p = w.data + g * w.blocks * kBlockBytes;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    __m512i b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int64_t b = 0;
    for (; b + 2 <= w.blocks; b += 2) {
      const __m512i v = _mm512_load_si512(p + b * kBlockBytes);
      const __m512i u = _mm512_load_si512(p + (b + 1) * kBlockBytes);
      const int8_t* x = q + b * kBlock;
      a0 = _mm512_dpbusd_epi32(a0, _mm512_and_si512(v, m0), bcast4(x + 0));
      a1 = _mm512_dpbusd_epi32(a1, _mm512_and_si512(v, m1), bcast4(x + 4));
      a2 = _mm512_dpbusd_epi32(a2, _mm512_and_si512(v, m2), bcast4(x + 8));
      a3 = _mm512_dpbusd_epi32(a3, _mm512_and_si512(v, m3), bcast4(x + 12));
      b0 = _mm512_dpbusd_epi32(b0, _mm512_and_si512(u, m0), bcast4(x + 16));
      b1 = _mm512_dpbusd_epi32(b1, _mm512_and_si512(u, m1), bcast4(x + 20));
      b2 = _mm512_dpbusd_epi32(b2, _mm512_and_si512(u, m2), bcast4(x + 24));
      b3 = _mm512_dpbusd_epi32(b3, _mm512_and_si512(u, m3), bcast4(x + 28));
    }
    if (b < w.blocks) {
      const __m512i v = _mm512_load_si512(p + b * kBlockBytes);
      const int8_t* x = q + b * kBlock;
      a0 = _mm512_dpbusd_epi32(a0, _mm512_and_si512(v, m0), bcast4(x + 0));
      a1 = _mm512_dpbusd_epi32(a1, _mm512_and_si512(v, m1), bcast4(x + 4));
      a2 = _mm512_dpbusd_epi32(a2, _mm512_and_si512(v, m2), bcast4(x + 8));
      a3 = _mm512_dpbusd_epi32(a3, _mm512_and_si512(v, m3), bcast4(x + 12));
    }
    a0 = _mm512_add_epi32(a0, b0);
    a1 = _mm512_add_epi32(a1, b1);
    a2 = _mm512_add_epi32(a2, b2);
    a3 = _mm512_add_epi32(a3, b3);
    __m512i acc = _mm512_add_epi32(a0, _mm512_srai_epi32(a1, 2));
    acc = _mm512_add_epi32(acc, _mm512_srai_epi32(a2, 4));
    acc = _mm512_add_epi32(acc, _mm512_srai_epi32(a3, 6));
    store_rows(w, g, acc, qsum, s, y);
  }
}

// NT activation rows against one row group: the group's weights (<= 27 KB for BitNet shapes) are
// unpacked once per block and reused for NT rows from L1/L2.
template <int NT>
void gemm_tile(const WeightsView& w, const ActsView& x, int64_t n0, float* y, int64_t y_stride, int64_t g) {
  const __m512i m = _mm512_set1_epi8(0x03);
  const uint8_t* p = w.data + g * w.blocks * kBlockBytes;
  __m512i acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_si512();
  const int8_t* xq = x.q + n0 * x.stride;
  for (int64_t b = 0; b < w.blocks; ++b) {
    const __m512i v = _mm512_load_si512(p + b * kBlockBytes);
    const __m512i c0 = _mm512_and_si512(v, m);
    const __m512i c1 = _mm512_and_si512(_mm512_srli_epi16(v, 2), m);
    const __m512i c2 = _mm512_and_si512(_mm512_srli_epi16(v, 4), m);
    const __m512i c3 = _mm512_and_si512(_mm512_srli_epi16(v, 6), m);
    for (int t = 0; t < NT; ++t) {
      const int8_t* xt = xq + t * x.stride + b * kBlock;
      acc[t] = _mm512_dpbusd_epi32(acc[t], c0, bcast4(xt + 0));
      acc[t] = _mm512_dpbusd_epi32(acc[t], c1, bcast4(xt + 4));
      acc[t] = _mm512_dpbusd_epi32(acc[t], c2, bcast4(xt + 8));
      acc[t] = _mm512_dpbusd_epi32(acc[t], c3, bcast4(xt + 12));
    }
  }
  for (int t = 0; t < NT; ++t) {
    store_rows(w, g, acc[t], x.sum[n0 + t], x.scale[n0 + t], y + (n0 + t) * y_stride);
  }
}

constexpr int kTile = 8;

template <int NT>
void gemm_tail(const WeightsView& w, const ActsView& x, int64_t n0, int64_t rem, float* y, int64_t ys, int64_t g) {
  if constexpr (NT > 0) {
    if (rem == NT) {
      gemm_tile<NT>(w, x, n0, y, ys, g);
    } else {
      gemm_tail<NT - 1>(w, x, n0, rem, y, ys, g);
    }
  }
}

// ---- many token rows: weights unpacked once per tile, register tiling ----
//
// A tile is RG <= kGemmTileGroups row groups (64 rows). Its 2-bit weights are unpacked once into
// `scratch` as plain vpdpbusd u8 operands: step s (columns 4s..4s+3) of group i is the 64-byte
// vector at (s * RG + i) * 64, lane j = the four codes of row 16(g+i)+j. Every token row then reuses
// them from L1/L2: per step RG weight loads and T activation broadcasts feed RG x T independent
// vpdpbusd, with nothing else in the loop (on Zen 4 any other vector op issued beside vpdpbusd
// costs it throughput; docs/kernels-cpu.md has the measurements). RG = 4, T = 6: 24 accumulators.
constexpr int kTokTile = 6;
// Below this many token rows the per-block unpacking of gemm_tile is cheaper than the scratch.
constexpr int64_t kTiledMinRows = 4;

// Blocks [0, nblocks) of row groups [g, g + ng).
void unpack_tile(const WeightsView& w, int64_t g, int ng, int64_t nblocks, uint8_t* out) {
  const __m512i m = _mm512_set1_epi8(0x03);
  const int64_t step_bytes = ng * kBlockBytes;
  for (int i = 0; i < ng; ++i) {
    const uint8_t* p = w.data + (g + i) * w.blocks * kBlockBytes;
    uint8_t* o = out + i * kBlockBytes;
    for (int64_t b = 0; b < nblocks; ++b, o += 4 * step_bytes) {
      const __m512i v = _mm512_load_si512(p + b * kBlockBytes);
      _mm512_store_si512(o, _mm512_and_si512(v, m));
      _mm512_store_si512(o + step_bytes, _mm512_and_si512(_mm512_srli_epi16(v, 2), m));
      _mm512_store_si512(o + 2 * step_bytes, _mm512_and_si512(_mm512_srli_epi16(v, 4), m));
      _mm512_store_si512(o + 3 * step_bytes, _mm512_and_si512(_mm512_srli_epi16(v, 6), m));
    }
  }
}

template <int RG, int T>
void gemm_block(const WeightsView& w, const ActsView& x, int64_t n0, const uint8_t* wt, int64_t g, float* y,
                int64_t y_stride) {
  __m512i acc[RG][T];
#pragma GCC unroll 4
  for (int i = 0; i < RG; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_si512();
  const int8_t* xq = x.q + n0 * x.stride;
  const int64_t steps = 4 * w.blocks;
  for (int64_t s = 0; s < steps; ++s, wt += RG * kBlockBytes) {
    __m512i wv[RG];
#pragma GCC unroll 4
    for (int i = 0; i < RG; ++i) wv[i] = _mm512_load_si512(wt + i * kBlockBytes);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m512i b = bcast4(xq + t * x.stride + 4 * s);
#pragma GCC unroll 4
      for (int i = 0; i < RG; ++i) acc[i][t] = _mm512_dpbusd_epi32(acc[i][t], wv[i], b);
    }
  }
  // Through memory: with store_rows applied to acc[][] directly GCC 12 keeps acc on the stack in
  // the loop above (2.3x slower).
  alignas(64) int32_t sums[RG][T][16];
#pragma GCC unroll 4
  for (int i = 0; i < RG; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) _mm512_store_si512(sums[i][t], acc[i][t]);
  for (int t = 0; t < T; ++t) {
    for (int i = 0; i < RG; ++i) {
      store_rows(w, g + i, _mm512_load_si512(sums[i][t]), x.sum[n0 + t], x.scale[n0 + t], y + (n0 + t) * y_stride);
    }
  }
}

using BlockFn = void (*)(const WeightsView&, const ActsView&, int64_t, const uint8_t*, int64_t, float*, int64_t);
template <int RG>
constexpr BlockFn kBlockRow[kTokTile] = {gemm_block<RG, 1>, gemm_block<RG, 2>, gemm_block<RG, 3>,
                                         gemm_block<RG, 4>, gemm_block<RG, 5>, gemm_block<RG, 6>};
constexpr const BlockFn* kBlockFns[kGemmTileGroups] = {kBlockRow<1>, kBlockRow<2>, kBlockRow<3>, kBlockRow<4>};
static_assert(kGemmTileGroups == 4 && kTokTile == 6, "kBlockFns lists every (RG, T)");

// Token rows [n_begin, x.n), all through vpdpbusd.
void gemm_tiled(const WeightsView& w, const ActsView& x, float* y, int64_t y_stride, int64_t g0, int64_t g1,
                uint8_t* scratch, int64_t n_begin) {
  for (int64_t g = g0; g < g1; g += kGemmTileGroups) {
    const int ng = static_cast<int>(g1 - g < kGemmTileGroups ? g1 - g : kGemmTileGroups);
    unpack_tile(w, g, ng, w.blocks, scratch);
    const BlockFn* fns = kBlockFns[ng - 1];
    int64_t n0 = n_begin;
    for (; n0 + kTokTile <= x.n; n0 += kTokTile) fns[kTokTile - 1](w, x, n0, scratch, g, y, y_stride);
    if (n0 < x.n) fns[x.n - n0 - 1](w, x, n0, scratch, g, y, y_stride);
  }
}

// ---- VNNI + lookup tables side by side (gemm_lut_spans(blocks, n) > 0) ----
//
// vpdpbusd runs on Zen 4's two multiply pipes, one zmm per cycle; a 4 x 6 VNNI step (24 of them)
// leaves load-port and ALU slots free. Table lookups fill them (docs/kernels-cpu.md has the
// measurements): the last 3 * spans column blocks of every row are summed through tables while
// vpdpbusd does the first lb0 = blocks - 3 * spans blocks.
//  - a group is 3 columns (k, k+16, k+32) of one 48-column span (3 blocks), k = 0..15, so the 3
//    codes of a row sit at the same bit position of 3 consecutive blocks; its table has 27 entries,
//    entry e = 9 c0 + 3 c1 + c2 (codes c = w + 1) holding w0 x0 + w1 x1 + w2 x2 for a block of 32
//    token rows as int16 lanes (one 64-byte vector; lanes past the last token row are zero);
//  - a chunk is 8 groups (13,824 bytes of tables); a unit is one row x one chunk: 8 loads + vpaddw
//    into the row's int16 sums (|entry| <= 3 * 128 = 384, so kLutFlushChunks * 8 = 80 adds stay
//    below 32,768: exact), which are widened into int32 every kLutFlushChunks chunks;
//  - the tables of all the call's token blocks are built once per call; a pass over up to
//    kGemmLutPassGroups row groups (256 rows) walks the units in the order (token block, chunk,
//    row), so one chunk's tables stay in L1 while 256 rows use them. The per-row table indices
//    (one byte per group: e * 8, address = tables + 1728 * (group % 8) + 8 * byte) are derived once
//    per pass from the 2-bit layout;
//  - the VNNI tiles of the pass run in the usual order (64-row tile unpacked once, then every
//    token tile); each full 4 x 6 tile step pair carries 3 units (assembly: GCC keeps 24
//    accumulators passed between functions in memory).
// Every sum is exact integer arithmetic, so the result is bit-identical to the other paths:
// y = float(vnni + lut - sum_{vnni columns} x) * (row_scale / s).
constexpr int64_t kLutLanes = kGemmLutLanes, kEntryBytes = 64, kChunkGroups = 8, kGroupTableBytes = 27 * kEntryBytes;
constexpr int64_t kChunkTableBytes = kChunkGroups * kGroupTableBytes;  // 13,824
constexpr int64_t kLutFlushChunks = 10;                                 // 10 * 8 * 384 = 30,720
static_assert(kLutFlushChunks % 2 == 0, "LutState::fresh() and flush() must never meet (see lut_vnni_loop)");
constexpr int64_t kSpanCols = 3 * kBlock;
constexpr int kLutStepsPerIter = 2, kLutUnitsPerIter = 3;  // 1.5 units per VNNI step (kernel_table.h)

// Where the table walk of one pass stands. The int16 sums of a row restart at chunks c with
// c % kLutFlushChunks == 0 ("fresh": not loaded) and are widened into the int32 sums at the last
// chunk of such a run ("flush": the first flush of a token block stores, later ones add), inside
// the units themselves, so nothing needs zeroing and no separate pass runs.
struct LutState {
  const uint8_t* o;      // the next unit's 8 indices
  const char* tb;        // tables of the current (token block, chunk)
  int16_t* p16;          // the next unit's row of int16 sums
  int16_t* p16_end;      // a16 + rows * 32
  int16_t* a16;          // [rows][32] int16 sums of the current run of chunks
  int32_t* a32;          // [token block][rows][32] int32 sums
  const uint8_t* idx;    // [chunk][rows][8] indices of the pass
  int64_t rows, chunk, chunks, blk;
  int64_t units_left;    // units of the pass not yet run
  const char* wpf;       // the next pass's packed weights not yet prefetched, up to wpf_end
  const char* wpf_end;

  bool fresh() const { return chunk % kLutFlushChunks == 0; }  // never together with flush()
  // 0: keep the int16 sums, 1: add them to the int32 sums, 2: store them there (first flush).
  int flush() const {
    if (chunk % kLutFlushChunks != kLutFlushChunks - 1 && chunk != chunks - 1) return 0;
    return chunk < kLutFlushChunks ? 2 : 1;
  }
  // The int32 sums of the row p16 points at.
  int32_t* p32() const { return a32 + (blk * rows + (p16 - a16) / kLutLanes) * kLutLanes; }
};

// After the last row of a chunk: next chunk, next token block after the last chunk.
void lut_next_chunk(LutState& s) {
  s.p16 = s.a16;
  s.tb += kChunkTableBytes;
  if (++s.chunk == s.chunks) {
    s.chunk = 0;
    ++s.blk;
    s.o = s.idx;
  }
}

// One unit outside the assembly loop (chunk ends, the pass's last units); the same arithmetic.
__attribute__((noinline)) void lut_unit(LutState& s) {
  __m512i a = s.fresh() ? _mm512_setzero_si512() : _mm512_load_si512(s.p16);
#pragma GCC unroll 8
  for (int k = 0; k < kChunkGroups; ++k) {
    a = _mm512_add_epi16(a, _mm512_load_si512(s.tb + k * kGroupTableBytes + 8 * int64_t{s.o[k]}));
  }
  const int flush = s.flush();
  if (flush == 0) {
    _mm512_store_si512(s.p16, a);
  } else {
    int32_t* p = s.p32();
    __m512i lo = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(a));
    __m512i hi = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(a, 1));
    if (flush == 1) {
      lo = _mm512_add_epi32(lo, _mm512_load_si512(p));
      hi = _mm512_add_epi32(hi, _mm512_load_si512(p + 16));
    }
    _mm512_store_si512(p, lo);
    _mm512_store_si512(p + 16, hi);
  }
  s.o += kChunkGroups;
  s.p16 += kLutLanes;
  --s.units_left;
  if (s.p16 == s.p16_end) lut_next_chunk(s);
}

// The 4 x 6 VNNI step j of an iteration (weights zmm24-27, broadcast zmm28, sums zmm0-23 with
// zmm(4t + i) = token row t, row group i) and table unit k into zmm r (zmm24-28 are free between
// steps: the flush uses zmm26/27). AT&T operand order.
#define ONEBIT_LUT_BC(xo, a0, a1, a2, a3)                                                        \
  "vpbroadcastd " xo ", %%zmm28\n\t"                                                             \
  "vpdpbusd %%zmm28, %%zmm24, %%zmm" #a0 "\n\tvpdpbusd %%zmm28, %%zmm25, %%zmm" #a1 "\n\t" \
  "vpdpbusd %%zmm28, %%zmm26, %%zmm" #a2 "\n\tvpdpbusd %%zmm28, %%zmm27, %%zmm" #a3 "\n\t"
#define ONEBIT_LUT_STEP(j)                                                                                    \
  "vmovdqa64 " #j "*256(%[w]), %%zmm24\n\tvmovdqa64 " #j "*256+64(%[w]), %%zmm25\n\t"                       \
  "vmovdqa64 " #j "*256+128(%[w]), %%zmm26\n\tvmovdqa64 " #j "*256+192(%[w]), %%zmm27\n\t"                  \
  ONEBIT_LUT_BC(#j "*4(%[x0])", 0, 1, 2, 3) ONEBIT_LUT_BC(#j "*4(%[x0],%[s])", 4, 5, 6, 7)                  \
  ONEBIT_LUT_BC(#j "*4(%[x0],%[s],2)", 8, 9, 10, 11) ONEBIT_LUT_BC(#j "*4(%[x3])", 12, 13, 14, 15)          \
  ONEBIT_LUT_BC(#j "*4(%[x3],%[s])", 16, 17, 18, 19) ONEBIT_LUT_BC(#j "*4(%[x3],%[s],2)", 20, 21, 22, 23)
#define ONEBIT_LUT_ADD(reg, disp, r) "vpaddw " #disp "(%[tb],%%" reg ",8), %%zmm" #r ", %%zmm" #r "\n\t"
// Unit k: the int16 sums in (LOAD) or zero (FRESH), 8 lookups, then out to a16 (KEEP) or widened
// into a32 (ADD / SET). Each unit also prefetches the line at p + pf into L2.
#define ONEBIT_LUT_IN_LOAD(k, r) "vmovdqa64 " #k "*64(%[p]), %%zmm" #r "\n\t"
#define ONEBIT_LUT_IN_FRESH(k, r) "vpxord %%zmm" #r ", %%zmm" #r ", %%zmm" #r "\n\t"
#define ONEBIT_LUT_OUT_KEEP(k, r) "vmovdqa64 %%zmm" #r ", " #k "*64(%[p])\n\t"
#define ONEBIT_LUT_WIDEN(r) \
  "vextracti64x4 $1, %%zmm" #r ", %%ymm27\n\tvpmovsxwd %%ymm" #r ", %%zmm26\n\tvpmovsxwd %%ymm27, %%zmm27\n\t"
#define ONEBIT_LUT_OUT_ADD(k, r)                                                                    \
  ONEBIT_LUT_WIDEN(r) "vpaddd " #k "*128(%[q]), %%zmm26, %%zmm26\n\tvpaddd " #k "*128+64(%[q]), %%zmm27, %%zmm27\n\t" \
  "vmovdqa64 %%zmm26, " #k "*128(%[q])\n\tvmovdqa64 %%zmm27, " #k "*128+64(%[q])\n\t"
#define ONEBIT_LUT_OUT_SET(k, r) \
  ONEBIT_LUT_WIDEN(r) "vmovdqa64 %%zmm26, " #k "*128(%[q])\n\tvmovdqa64 %%zmm27, " #k "*128+64(%[q])\n\t"
#define ONEBIT_LUT_UNIT(k, r, IN, OUT)                                                                    \
  IN(k, r) "movq " #k "*8(%[o]), %%rax\n\tprefetcht1 " #k "*64(%[p],%[pf])\n\t"                           \
  "movzbl %%al, %%ecx\n\t" ONEBIT_LUT_ADD("rcx", 0, r) "movzbl %%ah, %%edx\n\t" ONEBIT_LUT_ADD("rdx", 1728, r) \
  "shrq $16, %%rax\n\t"                                                                                    \
  "movzbl %%al, %%ecx\n\t" ONEBIT_LUT_ADD("rcx", 3456, r) "movzbl %%ah, %%edx\n\t" ONEBIT_LUT_ADD("rdx", 5184, r) \
  "shrq $16, %%rax\n\t"                                                                                    \
  "movzbl %%al, %%ecx\n\t" ONEBIT_LUT_ADD("rcx", 6912, r) "movzbl %%ah, %%edx\n\t" ONEBIT_LUT_ADD("rdx", 8640, r) \
  "shrq $16, %%rax\n\t"                                                                                    \
  "movzbl %%al, %%ecx\n\t" ONEBIT_LUT_ADD("rcx", 10368, r) "movzbl %%ah, %%edx\n\t" ONEBIT_LUT_ADD("rdx", 12096, r) \
  OUT(k, r)
#define ONEBIT_LUT_LD(i) "vmovdqa64 " #i "*64(%[acc]), %%zmm" #i "\n\t"
#define ONEBIT_LUT_ST(i) "vmovdqa64 %%zmm" #i ", " #i "*64(%[acc])\n\t"
#define ONEBIT_LUT_ALL24(M)                                                                                 \
  M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15) M(16) M(17) M(18) \
  M(19) M(20) M(21) M(22) M(23)
#define ONEBIT_LUT_CLOBBER                                                                                 \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", \
      "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23",    \
      "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"
// `iters` iterations of 2 VNNI steps + 3 table units, the 24 VNNI sums in acc[24][16] before and
// after. Advances w, x0, o, p and q (the units' int32 sums, used when widening).
#define ONEBIT_LUT_LOOP(IN, OUT)                                                                               \
  asm volatile(ONEBIT_LUT_ALL24(ONEBIT_LUT_LD) "1:\n\t" ONEBIT_LUT_STEP(0) ONEBIT_LUT_UNIT(0, 29, IN, OUT)   \
                   ONEBIT_LUT_STEP(1) ONEBIT_LUT_UNIT(1, 30, IN, OUT) ONEBIT_LUT_UNIT(2, 31, IN, OUT)           \
               "add $512, %[w]\n\tadd $8, %[x0]\n\tadd $8, %[x3]\n\tadd $24, %[o]\n\tadd $192, %[p]\n\t"          \
               "add $384, %[q]\n\tdec %[n]\n\tjnz 1b\n\t" ONEBIT_LUT_ALL24(ONEBIT_LUT_ST)                        \
               : [w] "+r"(w), [x0] "+r"(x0), [x3] "+r"(x3), [o] "+r"(o), [p] "+r"(p), [q] "+r"(q), [n] "+r"(iters) \
               : [s] "r"(xs), [tb] "r"(tb), [acc] "r"(acc), [pf] "r"(pf)                                      \
               : "rax", "rcx", "rdx", "memory", "cc", ONEBIT_LUT_CLOBBER)
static_assert(kGroupTableBytes == 1728 && kChunkGroups == 8 && kLutLanes == 32, "the assembly hard-codes these");
static_assert(kLutStepsPerIter == 2 && kLutUnitsPerIter == 3, "the assembly hard-codes 2 steps + 3 units");

// `iters` iterations of 2 VNNI steps + 3 units of the current chunk (with its fresh / flush mode),
// or (Units = false) of 1 VNNI step.
template <bool Units>
void lut_vnni_loop(int32_t* acc, const uint8_t*& w, int64_t iters, const int8_t*& x0, int64_t xs, LutState& st) {
  if (iters <= 0) return;
  const int8_t* x3 = x0 + 3 * xs;
  if constexpr (Units) {
    const uint8_t* o = st.o;
    const char* tb = st.tb;
    int16_t* p = st.p16;
    int32_t* q = st.p32();
    // Unit u of a chunk prefetches line u of the next chunk's tables into L2.
    const int64_t pf = (st.tb + kChunkTableBytes) - reinterpret_cast<const char*>(st.a16);
    // A chunk is never both fresh and flushed: chunks = 2 * spans is even, so the last chunk
    // (chunks - 1) is odd and not a multiple of kLutFlushChunks.
    if (st.fresh()) {
      ONEBIT_LUT_LOOP(ONEBIT_LUT_IN_FRESH, ONEBIT_LUT_OUT_KEEP);
    } else if (st.flush() == 0) {
      ONEBIT_LUT_LOOP(ONEBIT_LUT_IN_LOAD, ONEBIT_LUT_OUT_KEEP);
    } else if (st.flush() == 1) {
      ONEBIT_LUT_LOOP(ONEBIT_LUT_IN_LOAD, ONEBIT_LUT_OUT_ADD);
    } else {
      ONEBIT_LUT_LOOP(ONEBIT_LUT_IN_LOAD, ONEBIT_LUT_OUT_SET);
    }
    st.o = o;
    st.p16 = p;
  } else {
    asm volatile(ONEBIT_LUT_ALL24(ONEBIT_LUT_LD)
                 "1:\n\t" ONEBIT_LUT_STEP(0) "add $256, %[w]\n\tadd $4, %[x0]\n\tadd $4, %[x3]\n\t"
                 "dec %[n]\n\tjnz 1b\n\t" ONEBIT_LUT_ALL24(ONEBIT_LUT_ST)
                 : [w] "+r"(w), [x0] "+r"(x0), [x3] "+r"(x3), [n] "+r"(iters)
                 : [s] "r"(xs), [acc] "r"(acc)
                 : "memory", "cc", ONEBIT_LUT_CLOBBER);
  }
}

// A full 4 x 6 tile over `steps` VNNI steps with as many table units as the pass has left, up to
// 1.5 per step; raw sums to vacc[t * rows + row]. Segments end at chunk ends (the tables and the
// unit mode change there).
void gemm_tile_lut(const uint8_t* wt, int64_t steps, const int8_t* xq, int64_t xs, int32_t* vacc, int64_t rows,
                   LutState& st) {
  alignas(64) int32_t acc[24 * 16];
  for (int i = 0; i < 24; ++i) _mm512_store_si512(acc + 16 * i, _mm512_setzero_si512());
  int64_t it_max = steps / kLutStepsPerIter, done = 0;
  for (;;) {
    // Spread over the pass: a few lines of the next pass's weights into L2 per segment.
    for (int i = 0; i < 24 && st.wpf < st.wpf_end; ++i, st.wpf += 64) _mm_prefetch(st.wpf, _MM_HINT_T1);
    int64_t it = st.units_left / kLutUnitsPerIter;
    if (it > it_max) it = it_max;
    if (it <= 0) break;
    int64_t seg = (st.p16_end - st.p16) / kLutLanes / kLutUnitsPerIter;  // whole iterations left in the chunk
    if (seg > it) seg = it;
    if (seg > 0) {
      lut_vnni_loop<true>(acc, wt, seg, xq, xs, st);
      done += seg * kLutStepsPerIter;
      it_max -= seg;
      st.units_left -= seg * kLutUnitsPerIter;
    }
    if (st.p16 == st.p16_end) {
      lut_next_chunk(st);
    } else if (seg < it) {  // fewer than 3 units left in this chunk: run them here
      int64_t r = (st.p16_end - st.p16) / kLutLanes;  // 1 or 2; the last one switches the chunk
      if (r > st.units_left) r = st.units_left;
      for (; r > 0; --r) lut_unit(st);
    }
  }
  lut_vnni_loop<false>(acc, wt, steps - done, xq, xs, st);
  for (int t = 0; t < kTokTile; ++t) {
    for (int i = 0; i < kGemmTileGroups; ++i) {
      _mm512_store_si512(vacc + t * rows + i * kGroup, _mm512_load_si512(acc + 16 * (4 * t + i)));
    }
  }
}

// Tiles of fewer than 4 row groups: plain VNNI, raw sums to vacc[t * rows + row].
template <int RG, int T>
void gemm_block_raw(const uint8_t* wt, int64_t steps, const int8_t* xq, int64_t xs, int32_t* vacc, int64_t rows) {
  __m512i acc[RG][T];
#pragma GCC unroll 4
  for (int i = 0; i < RG; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_si512();
  for (int64_t s = 0; s < steps; ++s, wt += RG * kBlockBytes) {
    __m512i wv[RG];
#pragma GCC unroll 4
    for (int i = 0; i < RG; ++i) wv[i] = _mm512_load_si512(wt + i * kBlockBytes);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m512i b = bcast4(xq + t * xs + 4 * s);
#pragma GCC unroll 4
      for (int i = 0; i < RG; ++i) acc[i][t] = _mm512_dpbusd_epi32(acc[i][t], wv[i], b);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < RG; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) _mm512_store_si512(vacc + t * rows + i * kGroup, acc[i][t]);
}

using RawBlockFn = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int32_t*, int64_t);
constexpr RawBlockFn kRawFns[kGemmTileGroups - 1] = {gemm_block_raw<1, kTokTile>, gemm_block_raw<2, kTokTile>,
                                                     gemm_block_raw<3, kTokTile>};

// Table indices of rows [16 g0, 16 g1) (one pass) for spans starting at block lb0:
// idx[(c * rows + row) * 8 + k % 8] = 8 * e for chunk c = 2 * span + k / 8, e = 9 c0 + 3 c1 + c2.
void build_lut_idx(const WeightsView& w, int64_t g0, int64_t g1, int64_t lb0, int64_t spans, uint8_t* idx) {
  const int64_t rows = (g1 - g0) * kGroup;
  const __m512i m3 = _mm512_set1_epi8(3);
  // qword q of the result = row q of the group: rows 4l, 4l+1 sit in 128-bit lane l of `lo`, rows
  // 4l+2, 4l+3 in lane l of `hi` (see below).
  const __m512i rows_0_7 = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
  const __m512i rows_8_15 = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* base = w.data + (g * w.blocks + lb0) * kBlockBytes;
    const int64_t r0 = (g - g0) * kGroup;
    for (int64_t sp = 0; sp < spans; ++sp) {
      const __m512i v0 = _mm512_load_si512(base + 3 * sp * kBlockBytes);
      const __m512i v1 = _mm512_load_si512(base + (3 * sp + 1) * kBlockBytes);
      const __m512i v2 = _mm512_load_si512(base + (3 * sp + 2) * kBlockBytes);
      for (int h = 0; h < 2; ++h) {
        __m512i e[2];
        for (int ii = 0; ii < 2; ++ii) {
          const unsigned sh = static_cast<unsigned>(2 * (2 * h + ii));
          const __m512i c0 = _mm512_and_si512(_mm512_srli_epi16(v0, sh), m3);
          const __m512i c1 = _mm512_and_si512(_mm512_srli_epi16(v1, sh), m3);
          const __m512i c2 = _mm512_and_si512(_mm512_srli_epi16(v2, sh), m3);
          // 8 * (9 c0 + 3 c1 + c2) per byte, <= 208; the 16-bit shifts cannot carry across bytes.
          const __m512i e1 = _mm512_add_epi8(_mm512_add_epi8(_mm512_slli_epi16(c0, 3), c0),
                                             _mm512_add_epi8(_mm512_add_epi8(_mm512_slli_epi16(c1, 1), c1), c2));
          e[ii] = _mm512_slli_epi16(e1, 3);
        }
        // Byte 4j + kk of e[ii] is (row j, group k = 4 (2h + ii) + kk): interleaving dwords gives
        // each row's 8 indices of chunk 2 sp + h (k % 8 = 4 ii + kk) in one qword.
        const __m512i lo = _mm512_unpacklo_epi32(e[0], e[1]), hi = _mm512_unpackhi_epi32(e[0], e[1]);
        uint8_t* out = idx + ((2 * sp + h) * rows + r0) * kChunkGroups;
        _mm512_storeu_si512(out, _mm512_permutex2var_epi64(lo, rows_0_7, hi));
        _mm512_storeu_si512(out + 64, _mm512_permutex2var_epi64(lo, rows_8_15, hi));
      }
    }
  }
}

// Tables of all chunks for one token block from xt[col][32] (int16, table columns only).
void build_tables(const int16_t* xt, int64_t spans, char* tab) {
  for (int64_t sp = 0; sp < spans; ++sp) {
    for (int64_t k = 0; k < 16; ++k) {
      const __m512i x0 = _mm512_load_si512(xt + (sp * kSpanCols + k) * kLutLanes);
      const __m512i x1 = _mm512_load_si512(xt + (sp * kSpanCols + 16 + k) * kLutLanes);
      const __m512i x2 = _mm512_load_si512(xt + (sp * kSpanCols + 32 + k) * kLutLanes);
      const __m512i z = _mm512_setzero_si512();
      const __m512i w1[3] = {_mm512_sub_epi16(z, x1), z, x1}, w2[3] = {_mm512_sub_epi16(z, x2), z, x2};
      const __m512i w0[3] = {_mm512_sub_epi16(z, x0), z, x0};
      char* t = tab + (2 * sp + k / 8) * kChunkTableBytes + (k % 8) * kGroupTableBytes;
      for (int b = 0; b < 3; ++b) {
        for (int c = 0; c < 3; ++c) {
          const __m512i bc = _mm512_add_epi16(w1[b], w2[c]);
          for (int a = 0; a < 3; ++a) _mm512_store_si512(t + (9 * a + 3 * b + c) * kEntryBytes, _mm512_add_epi16(w0[a], bc));
        }
      }
    }
  }
}

// src: 16 rows of >= 16 int32 (row stride ss) -> dst: 16 rows (stride ds), dst[c][r] = src[r][c].
inline void transpose16(const int32_t* src, int64_t ss, int32_t* dst, int64_t ds) {
  __m512i r[16], t[16], u[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(src + i * ss);
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {  // rows 4q..4q+3: u[4q + j] = column 4L + j of those rows, per lane L
    u[4 * q] = _mm512_unpacklo_epi64(t[4 * q], t[4 * q + 2]);
    u[4 * q + 1] = _mm512_unpackhi_epi64(t[4 * q], t[4 * q + 2]);
    u[4 * q + 2] = _mm512_unpacklo_epi64(t[4 * q + 1], t[4 * q + 3]);
    u[4 * q + 3] = _mm512_unpackhi_epi64(t[4 * q + 1], t[4 * q + 3]);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m512i a0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88), a1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xdd);
    const __m512i b0 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88), b1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xdd);
    _mm512_store_si512(dst + j * ds, _mm512_shuffle_i32x4(a0, b0, 0x88));         // column j
    _mm512_store_si512(dst + (8 + j) * ds, _mm512_shuffle_i32x4(a0, b0, 0xdd));   // column 8 + j
    _mm512_store_si512(dst + (4 + j) * ds, _mm512_shuffle_i32x4(a1, b1, 0x88));   // column 4 + j
    _mm512_store_si512(dst + (12 + j) * ds, _mm512_shuffle_i32x4(a1, b1, 0xdd));  // column 12 + j
  }
}

// xt[j][t] (int16, 32 lanes) = activation code of token row n0 + t, column c0 + j, for t < nb <= 32
// (other lanes zero) and j < cols (a multiple of 4): per 4 columns, two masked gathers of 4 bytes
// from up to 16 token rows each, then each byte sign-extended and narrowed to 16 bits.
void fill_lut_acts(const ActsView& x, int64_t n0, int64_t nb, int64_t c0, int64_t cols, int16_t* xt) {
  const __m512i rows_lo = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             _mm512_set1_epi32(static_cast<int>(x.stride)));
  const __m512i rows_hi = _mm512_add_epi32(rows_lo, _mm512_set1_epi32(static_cast<int>(16 * x.stride)));
  const __mmask16 lo_mask = nb >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << nb) - 1);
  const __mmask16 hi_mask = nb <= 16 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << (nb - 16)) - 1);
  const int8_t* base = x.q + n0 * x.stride + c0;
  for (int64_t j = 0; j < cols; j += 4) {
    const __m512i lo = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), lo_mask, rows_lo, base + j, 1);
    const __m512i hi = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), hi_mask, rows_hi, base + j, 1);
#pragma GCC unroll 4
    for (int b = 0; b < 4; ++b) {
      const __m256i l = _mm512_cvtepi32_epi16(_mm512_srai_epi32(_mm512_slli_epi32(lo, 24 - 8 * b), 24));
      const __m256i h = _mm512_cvtepi32_epi16(_mm512_srai_epi32(_mm512_slli_epi32(hi, 24 - 8 * b), 24));
      _mm512_store_si512(xt + (j + b) * kLutLanes, _mm512_inserti64x4(_mm512_castsi256_si512(l), h, 1));
    }
  }
}

// Per call: the sum of every token row over the VNNI columns, and the tables of all token blocks;
// then per pass of up to kGemmLutPassGroups row groups: the pass's table indices, each 64-row VNNI
// tile unpacked once and walked by every token tile (full tiles carrying the table units), the
// units the tiles left, and the sums combined into y.
void gemm_hybrid(const WeightsView& w, const ActsView& x, float* y, int64_t y_stride, int64_t g0, int64_t g1,
                 uint8_t* scratch) {
  const int64_t n = x.n, nb = (n + kLutLanes - 1) / kLutLanes, n6 = (n + kTokTile - 1) / kTokTile * kTokTile;
  const int64_t spans = gemm_lut_spans(w.blocks, n), chunks = 2 * spans, lb0 = w.blocks - 3 * spans;
  const int64_t r_max = (g1 - g0 < kGemmLutPassGroups ? g1 - g0 : kGemmLutPassGroups) * kGroup;
  // The parts of gemm_scratch_bytes, in its order.
  uint8_t* p = scratch;
  uint8_t* tile = p;
  p += round64(kGemmTileGroups * lb0 * kGemmScratchPerBlock);
  char* tab = reinterpret_cast<char*>(p);
  p += nb * chunks * kChunkTableBytes;
  int16_t* xt = reinterpret_cast<int16_t*>(p);
  p += spans * kSpanCols * 64;
  int32_t* vsum = reinterpret_cast<int32_t*>(p);
  p += round64(4 * n);
  uint8_t* idx = p;
  p += round64(chunks * r_max * kChunkGroups);
  int16_t* a16 = reinterpret_cast<int16_t*>(p);
  p += r_max * 64;
  int32_t* a32 = reinterpret_cast<int32_t*>(p);
  p += nb * r_max * 128;
  int32_t* a32t = reinterpret_cast<int32_t*>(p);
  p += 32 * r_max * 4;
  int32_t* vacc = reinterpret_cast<int32_t*>(p);
  p += n6 * r_max * 4;
  int8_t* xpad = reinterpret_cast<int8_t*>(p);
  const int64_t xpad_stride = round64(lb0 * kBlock);

  // The last n % 6 token rows (VNNI columns) zero-padded to a full token tile, so every token tile
  // runs the 4 x 6 loop with its table units (the padding rows' sums are never used).
  if (n6 > n) {
    for (int64_t t = 0; t < kTokTile; ++t) {
      const int64_t row = n6 - kTokTile + t;
      for (int64_t c = 0; c < xpad_stride; c += 64) {
        const int64_t rem = lb0 * kBlock - c;
        const __mmask64 mk = rem >= 64 ? ~__mmask64{0} : (__mmask64{1} << rem) - 1;
        const __m512i v = row < n ? _mm512_maskz_loadu_epi8(mk, x.q + row * x.stride + c) : _mm512_setzero_si512();
        _mm512_store_si512(xpad + t * xpad_stride + c, v);
      }
    }
  }

  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t t = 0; t < n; ++t) {  // sum over the vpdpbusd columns (codes are w + 1 there)
    const int8_t* q = x.q + t * x.stride;
    __m512i acc = _mm512_setzero_si512();
    for (int64_t c = 0; c < lb0 * kBlock; c += 64) {
      const int64_t rem = lb0 * kBlock - c;
      const __mmask64 mk = rem >= 64 ? ~__mmask64{0} : (__mmask64{1} << rem) - 1;
      acc = _mm512_dpbusd_epi32(acc, ones, _mm512_maskz_loadu_epi8(mk, q + c));
    }
    vsum[t] = _mm512_reduce_add_epi32(acc);
  }
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t nbk = n - b * kLutLanes < kLutLanes ? n - b * kLutLanes : kLutLanes;
    fill_lut_acts(x, b * kLutLanes, nbk, lb0 * kBlock, spans * kSpanCols, xt);
    build_tables(xt, spans, tab + b * chunks * kChunkTableBytes);
  }
  const int64_t steps = 4 * lb0;
  for (int64_t s0 = g0; s0 < g1; s0 += kGemmLutPassGroups) {
    const int64_t s1 = g1 - s0 < kGemmLutPassGroups ? g1 : s0 + kGemmLutPassGroups;
    const int64_t rows = (s1 - s0) * kGroup;
    build_lut_idx(w, s0, s1, lb0, spans, idx);
    const int64_t s2 = g1 - s1 < kGemmLutPassGroups ? g1 : s1 + kGemmLutPassGroups;  // the next pass
    const char* wnext = reinterpret_cast<const char*>(w.data + s1 * w.blocks * kBlockBytes);
    LutState st{idx,  tab,    a16, a16 + rows * kLutLanes, a16, a32, idx, rows, 0, chunks, 0, nb * chunks * rows,
                wnext, wnext + (s2 - s1) * w.blocks * kBlockBytes};
    for (int64_t g = s0; g < s1; g += kGemmTileGroups) {
      const int ng = static_cast<int>(s1 - g < kGemmTileGroups ? s1 - g : kGemmTileGroups);
      unpack_tile(w, g, ng, lb0, tile);
      for (int64_t n0 = 0; n0 < n6; n0 += kTokTile) {
        const bool pad = n0 + kTokTile > n;
        const int8_t* xq = pad ? xpad : x.q + n0 * x.stride;
        const int64_t xs = pad ? xpad_stride : x.stride;
        int32_t* out = vacc + n0 * rows + (g - s0) * kGroup;
        if (ng == kGemmTileGroups) {
          gemm_tile_lut(tile, steps, xq, xs, out, rows, st);
        } else {
          kRawFns[ng - 1](tile, steps, xq, xs, out, rows);
        }
      }
    }
    while (st.units_left > 0) lut_unit(st);
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t n0 = b * kLutLanes, nbk = n - n0 < kLutLanes ? n - n0 : kLutLanes;
      const int32_t* am = a32 + b * rows * kLutLanes;
      for (int64_t r0 = 0; r0 < rows; r0 += 16) {
        transpose16(am + r0 * kLutLanes, kLutLanes, a32t + r0, rows);
        transpose16(am + r0 * kLutLanes + 16, kLutLanes, a32t + 16 * rows + r0, rows);
      }
      for (int64_t t = 0; t < nbk; ++t) {
        for (int64_t g = s0; g < s1; ++g) {
          const int64_t r0 = (g - s0) * kGroup;
          const __m512i acc = _mm512_add_epi32(_mm512_load_si512(vacc + (n0 + t) * rows + r0),
                                               _mm512_load_si512(a32t + t * rows + r0));
          store_rows(w, g, acc, vsum[n0 + t], x.scale[n0 + t], y + (n0 + t) * y_stride);
        }
      }
    }
  }
}

void ternary_gemm(const WeightsView& w, const ActsView& x, float* y, int64_t y_stride, int64_t g0, int64_t g1,
                  uint8_t* scratch) {
  if (x.n == 1) {
    gemv(w, x.q, x.scale[0], x.sum[0], y, g0, g1);
    return;
  }
  if (scratch != nullptr && x.lut && gemm_lut_spans(w.blocks, x.n) > 0) {
    gemm_hybrid(w, x, y, y_stride, g0, g1, scratch);
    return;
  }
  if (x.n >= kTiledMinRows && scratch != nullptr) {
    gemm_tiled(w, x, y, y_stride, g0, g1, scratch, 0);
    return;
  }
  for (int64_t g = g0; g < g1; ++g) {
    int64_t n0 = 0;
    for (; n0 + kTile <= x.n; n0 += kTile) gemm_tile<kTile>(w, x, n0, y, y_stride, g);
    if (n0 < x.n) gemm_tail<kTile - 1>(w, x, n0, x.n - n0, y, y_stride, g);
  }
}

// ---- float kernels ----

inline __m512 abs_ps(__m512 v) { return _mm512_abs_ps(v); }

inline float hmax(__m512 v) { return _mm512_reduce_max_ps(v); }

// The canonical tree of kernel_table.h over 16 partial sums.
inline float tree_sum(__m512 p) {
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(p), _mm512_extractf32x8_ps(p, 1));
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

float dot(const float* a, const float* b, int64_t n) {
  __m512 p = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) p = _mm512_add_ps(p, _mm512_mul_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)));
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 prod = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i));
    p = _mm512_mask_add_ps(p, k, p, prod);
  }
  return tree_sum(p);
}

float rms_factor(const float* x, int64_t n, float eps) {
  const float mean = dot(x, x, n) / static_cast<float>(n);
  return 1.0f / __builtin_sqrtf(mean + eps);
}

inline float act_scale(float amax) { return 127.0f / (amax < kActMaxClamp ? kActMaxClamp : amax); }

// Rounds v*s half to even (MXCSR default), clamps to int8, stores the lanes in k, adds them to sum.
inline void quantize_store(__m512 v, __m512 s, __mmask16 k, int8_t* q, __m512i& sum) {
  __m512i iv = _mm512_cvtps_epi32(_mm512_mul_ps(v, s));
  iv = _mm512_min_epi32(_mm512_max_epi32(iv, _mm512_set1_epi32(-128)), _mm512_set1_epi32(127));
  sum = _mm512_mask_add_epi32(sum, k, sum, iv);
  _mm512_mask_cvtepi32_storeu_epi8(q, k, iv);
}

float quantize_row(const float* x, int64_t n, int8_t* q, int32_t* sum) {
  __m512 m = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) m = _mm512_max_ps(abs_ps(_mm512_loadu_ps(x + i)), m);
  if (i < n) m = _mm512_max_ps(abs_ps(_mm512_maskz_loadu_ps(tail_mask(n - i), x + i)), m);
  const float s = act_scale(hmax(m));
  const __m512 vs = _mm512_set1_ps(s);
  __m512i acc = _mm512_setzero_si512();
  for (i = 0; i + 16 <= n; i += 16) quantize_store(_mm512_loadu_ps(x + i), vs, 0xffff, q + i, acc);
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    quantize_store(_mm512_maskz_loadu_ps(k, x + i), vs, k, q + i, acc);
  }
  *sum = _mm512_reduce_add_epi32(acc);
  return s;
}

void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* y) {
  const __m512 r = _mm512_set1_ps(rms_factor(x, n, eps));
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), r), _mm512_loadu_ps(w + i)));
  }
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), r);
    _mm512_mask_storeu_ps(y + i, k, _mm512_mul_ps(t, _mm512_maskz_loadu_ps(k, w + i)));
  }
}

float rmsnorm_quantize_row(const float* x, const float* w, int64_t n, float eps, int8_t* q, int32_t* sum) {
  const __m512 r = _mm512_set1_ps(rms_factor(x, n, eps));
  __m512 m = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), r), _mm512_loadu_ps(w + i));
    m = _mm512_max_ps(abs_ps(v), m);
  }
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), r), _mm512_maskz_loadu_ps(k, w + i));
    m = _mm512_max_ps(abs_ps(v), m);
  }
  const float s = act_scale(hmax(m));
  const __m512 vs = _mm512_set1_ps(s);
  __m512i acc = _mm512_setzero_si512();
  for (i = 0; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), r), _mm512_loadu_ps(w + i));
    quantize_store(v, vs, 0xffff, q + i, acc);
  }
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), r), _mm512_maskz_loadu_ps(k, w + i));
    quantize_store(v, vs, k, q + i, acc);
  }
  *sum = _mm512_reduce_add_epi32(acc);
  return s;
}

inline __m512 relu2_mul16(__m512 g, __m512 u) {
  g = _mm512_max_ps(_mm512_setzero_ps(), g);  // operand order as std::max(g, 0): NaN g stays NaN
  return _mm512_mul_ps(_mm512_mul_ps(g, g), u);
}

void relu2_mul(const float* gate, const float* up, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, relu2_mul16(_mm512_loadu_ps(gate + i), _mm512_loadu_ps(up + i)));
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    _mm512_mask_storeu_ps(out + i, k, relu2_mul16(_mm512_maskz_loadu_ps(k, gate + i), _mm512_maskz_loadu_ps(k, up + i)));
  }
}

void axpy(float a, const float* x, float* y, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(y + i), _mm512_mul_ps(va, _mm512_loadu_ps(x + i))));
  }
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 t = _mm512_mul_ps(va, _mm512_maskz_loadu_ps(k, x + i));
    _mm512_mask_storeu_ps(y + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, y + i), t));
  }
}

// ---- attention: many keys per call, bit-identical to dot / axpy per key ----

// Four keys at a time: four independent partial-sum chains (dot alone is one chain of dependent
// adds, latency-bound), each in exactly dot's order, then dot's tree.
void dot_rows(const float* q, const float* k, int64_t k_stride, int64_t n_keys, int64_t d, float* out) {
  const int64_t full = d / 16 * 16;
  const __mmask16 tm = tail_mask(d - full);
  int64_t j = 0;
  for (; j + 4 <= n_keys; j += 4) {
    const float* k0 = k + j * k_stride;
    const float* k1 = k0 + k_stride;
    const float* k2 = k1 + k_stride;
    const float* k3 = k2 + k_stride;
    __m512 p0 = _mm512_setzero_ps(), p1 = p0, p2 = p0, p3 = p0;
    for (int64_t i = 0; i < full; i += 16) {
      const __m512 qv = _mm512_loadu_ps(q + i);
      p0 = _mm512_add_ps(p0, _mm512_mul_ps(qv, _mm512_loadu_ps(k0 + i)));
      p1 = _mm512_add_ps(p1, _mm512_mul_ps(qv, _mm512_loadu_ps(k1 + i)));
      p2 = _mm512_add_ps(p2, _mm512_mul_ps(qv, _mm512_loadu_ps(k2 + i)));
      p3 = _mm512_add_ps(p3, _mm512_mul_ps(qv, _mm512_loadu_ps(k3 + i)));
    }
    if (full < d) {
      const __m512 qv = _mm512_maskz_loadu_ps(tm, q + full);
      p0 = _mm512_mask_add_ps(p0, tm, p0, _mm512_mul_ps(qv, _mm512_maskz_loadu_ps(tm, k0 + full)));
      p1 = _mm512_mask_add_ps(p1, tm, p1, _mm512_mul_ps(qv, _mm512_maskz_loadu_ps(tm, k1 + full)));
      p2 = _mm512_mask_add_ps(p2, tm, p2, _mm512_mul_ps(qv, _mm512_maskz_loadu_ps(tm, k2 + full)));
      p3 = _mm512_mask_add_ps(p3, tm, p3, _mm512_mul_ps(qv, _mm512_maskz_loadu_ps(tm, k3 + full)));
    }
    out[j] = tree_sum(p0);
    out[j + 1] = tree_sum(p1);
    out[j + 2] = tree_sum(p2);
    out[j + 3] = tree_sum(p3);
  }
  for (; j < n_keys; ++j) out[j] = dot(q, k + j * k_stride, d);
}

// out (up to 8 vectors = 128 floats at a time) stays in registers across all keys; per element the
// operations are axpy's: y = y + (p * v), keys in order.
template <int NV>
void axpy_rows_chunk(const float* p, const float* v, int64_t v_stride, int64_t n_keys, float* out, __mmask16 last) {
  __m512 o[NV];
#pragma GCC unroll 8
  for (int r = 0; r < NV; ++r) o[r] = _mm512_maskz_loadu_ps(r == NV - 1 ? last : 0xffff, out + 16 * r);
  for (int64_t j = 0; j < n_keys; ++j) {
    const __m512 a = _mm512_set1_ps(p[j]);
    const float* vr = v + j * v_stride;
#pragma GCC unroll 8
    for (int r = 0; r < NV; ++r) {
      const __m512 x = _mm512_maskz_loadu_ps(r == NV - 1 ? last : 0xffff, vr + 16 * r);
      o[r] = _mm512_add_ps(o[r], _mm512_mul_ps(a, x));
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < NV; ++r) _mm512_mask_storeu_ps(out + 16 * r, r == NV - 1 ? last : 0xffff, o[r]);
}

void axpy_rows(const float* p, const float* v, int64_t v_stride, int64_t n_keys, int64_t d, float* out) {
  using ChunkFn = void (*)(const float*, const float*, int64_t, int64_t, float*, __mmask16);
  static constexpr ChunkFn kChunk[8] = {axpy_rows_chunk<1>, axpy_rows_chunk<2>, axpy_rows_chunk<3>,
                                        axpy_rows_chunk<4>, axpy_rows_chunk<5>, axpy_rows_chunk<6>,
                                        axpy_rows_chunk<7>, axpy_rows_chunk<8>};
  for (int64_t c = 0; c < d; c += 128) {
    const int64_t len = d - c < 128 ? d - c : 128;
    const int nv = static_cast<int>((len + 15) / 16);
    kChunk[nv - 1](p, v + c, v_stride, n_keys, out + c, tail_mask(len - 16 * (nv - 1)));
  }
}

// ---- attention: several queries against the same keys (bit-identical to dot_rows / axpy_rows per query) ----

// The four stages of tree_sum on two vectors' worth of partial sums each (see tree_sum16).
inline __m512 tree_stage8(__m512 a, __m512 b) {  // lanes: [a s8 | b s8]
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}
inline __m512 tree_stage4(__m512 a, __m512 b) {  // 128-bit lane l: s4 of the l-th of the four vectors
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}
inline __m512 tree_stage2(__m512 a, __m512 b) {  // lane l: s2 of a's l-th vector, then of b's
  return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}
inline __m512 tree_stage1(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

// tree_sum of 16 vectors at once, as a transpose: element 4 * l + m of the result is
// tree_sum(v_{4m + l}). Every addition is one of tree_sum's, same operands, same order (the lower
// lane first): stage 8 adds the 256-bit halves, 4 the 128-bit quarters, 2 and 1 the elements.
// (Arguments, not an array: GCC kept an array in memory.)
inline __m512 tree_sum16(__m512 v0, __m512 v1, __m512 v2, __m512 v3, __m512 v4, __m512 v5, __m512 v6, __m512 v7,
                         __m512 v8, __m512 v9, __m512 v10, __m512 v11, __m512 v12, __m512 v13, __m512 v14,
                         __m512 v15) {
  const __m512 t0 = tree_stage4(tree_stage8(v0, v1), tree_stage8(v2, v3));
  const __m512 t1 = tree_stage4(tree_stage8(v4, v5), tree_stage8(v6, v7));
  const __m512 t2 = tree_stage4(tree_stage8(v8, v9), tree_stage8(v10, v11));
  const __m512 t3 = tree_stage4(tree_stage8(v12, v13), tree_stage8(v14, v15));
  return tree_stage1(tree_stage2(t0, t1), tree_stage2(t2, t3));
}

// 4 queries x 4 keys: 16 independent chains, each dot's (full chunks, then the masked tail with
// mask_add), sharing every key and query load; then one tree_sum16 for all of them, whose lane a
// holds query a's four scores. Written out with named accumulators: as an array GCC keeps a copy
// in memory (a 1 KB memset per call and spills), at half the speed.
#define ONEBIT_DOT4(a, q_op, add_op)                  \
  {                                                  \
    const __m512 qv = q_op;                          \
    c##a##0 = add_op(c##a##0, _mm512_mul_ps(qv, k0)); \
    c##a##1 = add_op(c##a##1, _mm512_mul_ps(qv, k1)); \
    c##a##2 = add_op(c##a##2, _mm512_mul_ps(qv, k2)); \
    c##a##3 = add_op(c##a##3, _mm512_mul_ps(qv, k3)); \
  }
#define ONEBIT_ADD(acc, prod) _mm512_add_ps(acc, prod)
#define ONEBIT_MASK_ADD(acc, prod) _mm512_mask_add_ps(acc, tm, acc, prod)

inline __m512 dot_4x4(const float* const q[4], const float* const k[4], int64_t d) {
  const int64_t full = d / 16 * 16;
  const __mmask16 tm = tail_mask(d - full);
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00;
  __m512 c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
  const float *q0 = q[0], *q1 = q[1], *q2 = q[2], *q3 = q[3];
  for (int64_t i = 0; i < full; i += 16) {
    const __m512 k0 = _mm512_loadu_ps(k[0] + i), k1 = _mm512_loadu_ps(k[1] + i);
    const __m512 k2 = _mm512_loadu_ps(k[2] + i), k3 = _mm512_loadu_ps(k[3] + i);
    ONEBIT_DOT4(0, _mm512_loadu_ps(q0 + i), ONEBIT_ADD)
    ONEBIT_DOT4(1, _mm512_loadu_ps(q1 + i), ONEBIT_ADD)
    ONEBIT_DOT4(2, _mm512_loadu_ps(q2 + i), ONEBIT_ADD)
    ONEBIT_DOT4(3, _mm512_loadu_ps(q3 + i), ONEBIT_ADD)
  }
  if (full < d) {
    const __m512 k0 = _mm512_maskz_loadu_ps(tm, k[0] + full), k1 = _mm512_maskz_loadu_ps(tm, k[1] + full);
    const __m512 k2 = _mm512_maskz_loadu_ps(tm, k[2] + full), k3 = _mm512_maskz_loadu_ps(tm, k[3] + full);
    ONEBIT_DOT4(0, _mm512_maskz_loadu_ps(tm, q0 + full), ONEBIT_MASK_ADD)
    ONEBIT_DOT4(1, _mm512_maskz_loadu_ps(tm, q1 + full), ONEBIT_MASK_ADD)
    ONEBIT_DOT4(2, _mm512_maskz_loadu_ps(tm, q2 + full), ONEBIT_MASK_ADD)
    ONEBIT_DOT4(3, _mm512_maskz_loadu_ps(tm, q3 + full), ONEBIT_MASK_ADD)
  }
  // tree_sum16 wants (query a, key j) at index 4 * j + a.
  return tree_sum16(c00, c10, c20, c30, c01, c11, c21, c31, c02, c12, c22, c32, c03, c13, c23, c33);
}
#undef ONEBIT_DOT4
#undef ONEBIT_ADD
#undef ONEBIT_MASK_ADD

// Blocks of 4 queries x 4 keys, keys outer (4 key rows come into L1 once for all the queries). A
// last block of fewer queries or keys repeats the last one (the loads stay inside the arguments;
// the repeats' results are not stored). Queries are taken 64 at a time so that their padded
// pointer list sits on the stack, prepared once per key sweep.
void dot_rows_multi(const float* const* q, int64_t n_q, const float* k, int64_t k_stride, int64_t n_keys, int64_t d,
                    float* const* out) {
  constexpr int64_t kMaxQ = 64;
  for (int64_t b = 0; b < n_q; b += kMaxQ) {
    const int64_t m = n_q - b < kMaxQ ? n_q - b : kMaxQ;
    const float* qp[kMaxQ + 3];
    for (int64_t a = 0; a < (m + 3) / 4 * 4; ++a) qp[a] = q[b + (a < m ? a : m - 1)];
    float* const* ob = out + b;
    for (int64_t j = 0; j < n_keys; j += 4) {
      const int64_t nk = n_keys - j < 4 ? n_keys - j : 4;
      const float* kr[4];
      for (int64_t r = 0; r < 4; ++r) kr[r] = k + (r < nk ? j + r : n_keys - 1) * k_stride;
      for (int64_t a0 = 0; a0 < m; a0 += 4) {
        const __m512 s = dot_4x4(qp + a0, kr, d);
        if (nk == 4 && a0 + 4 <= m) {
          _mm_storeu_ps(ob[a0] + j, _mm512_castps512_ps128(s));
          _mm_storeu_ps(ob[a0 + 1] + j, _mm512_extractf32x4_ps(s, 1));
          _mm_storeu_ps(ob[a0 + 2] + j, _mm512_extractf32x4_ps(s, 2));
          _mm_storeu_ps(ob[a0 + 3] + j, _mm512_extractf32x4_ps(s, 3));
        } else {
          float tmp[16];
          _mm512_storeu_ps(tmp, s);
          for (int64_t a = 0; a < 4 && a0 + a < m; ++a)
            for (int64_t r = 0; r < nk; ++r) ob[a0 + a][j + r] = tmp[4 * a + r];
        }
      }
    }
  }
}

// NQ outputs x NV vectors (up to 64 columns) in registers across all keys; per element the
// operations are axpy's, y = y + (p * v), keys in order. Every value row load serves NQ outputs.
template <int NQ, int NV>
void axpy_rows_multi_block(const float* const* p, const float* v, int64_t v_stride, int64_t n_keys,
                           float* const* out, int64_t c, __mmask16 last) {
  __m512 o[NQ][NV];
#pragma GCC unroll 4
  for (int a = 0; a < NQ; ++a)
#pragma GCC unroll 4
    for (int r = 0; r < NV; ++r) o[a][r] = _mm512_maskz_loadu_ps(r == NV - 1 ? last : 0xffff, out[a] + c + 16 * r);
  for (int64_t j = 0; j < n_keys; ++j) {
    const float* vr = v + j * v_stride + c;
    __m512 x[NV];
#pragma GCC unroll 4
    for (int r = 0; r < NV; ++r) x[r] = _mm512_maskz_loadu_ps(r == NV - 1 ? last : 0xffff, vr + 16 * r);
#pragma GCC unroll 4
    for (int a = 0; a < NQ; ++a) {
      const __m512 pa = _mm512_set1_ps(p[a][j]);
#pragma GCC unroll 4
      for (int r = 0; r < NV; ++r) o[a][r] = _mm512_add_ps(o[a][r], _mm512_mul_ps(pa, x[r]));
    }
  }
#pragma GCC unroll 4
  for (int a = 0; a < NQ; ++a)
#pragma GCC unroll 4
    for (int r = 0; r < NV; ++r) _mm512_mask_storeu_ps(out[a] + c + 16 * r, r == NV - 1 ? last : 0xffff, o[a][r]);
}

void axpy_rows_multi(const float* const* p, int64_t n_q, const float* v, int64_t v_stride, int64_t n_keys, int64_t d,
                     float* const* out) {
  using BlockFn = void (*)(const float* const*, const float*, int64_t, int64_t, float* const*, int64_t, __mmask16);
  static constexpr BlockFn kBlock[4][4] = {
      {axpy_rows_multi_block<1, 1>, axpy_rows_multi_block<1, 2>, axpy_rows_multi_block<1, 3>,
       axpy_rows_multi_block<1, 4>},
      {axpy_rows_multi_block<2, 1>, axpy_rows_multi_block<2, 2>, axpy_rows_multi_block<2, 3>,
       axpy_rows_multi_block<2, 4>},
      {axpy_rows_multi_block<3, 1>, axpy_rows_multi_block<3, 2>, axpy_rows_multi_block<3, 3>,
       axpy_rows_multi_block<3, 4>},
      {axpy_rows_multi_block<4, 1>, axpy_rows_multi_block<4, 2>, axpy_rows_multi_block<4, 3>,
       axpy_rows_multi_block<4, 4>}};
  for (int64_t a = 0; a < n_q; a += 4) {
    const int64_t nq = n_q - a < 4 ? n_q - a : 4;
    for (int64_t c = 0; c < d; c += 64) {
      const int64_t len = d - c < 64 ? d - c : 64;
      const int64_t nv = (len + 15) / 16;
      kBlock[nq - 1][nv - 1](p + a, v, v_stride, n_keys, out + a, c, tail_mask(len - 16 * (nv - 1)));
    }
  }
}

// ---- KV cache rows to fp32 (the layouts of cpu_kernels.h) ----

inline float load_f32(const uint8_t* p) {
  float v;
  __builtin_memcpy(&v, p, 4);
  return v;
}

void rows_f16_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, float* out) {
  const int64_t full = d / 16 * 16;
  const __mmask16 tm = tail_mask(d - full);
  for (int64_t j = 0; j < n_rows; ++j) {
    const uint8_t* row = rows + j * row_bytes;
    float* o = out + j * d;
    for (int64_t i = 0; i < full; i += 16)
      _mm512_storeu_ps(o + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * i))));
    if (full < d) _mm512_mask_storeu_ps(o + full, tm, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tm, row + 2 * full)));
  }
}

void rows_q8_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, float* out) {
  const int64_t full = d / 16 * 16, so = kv_q8_scale_offset(d);
  const __mmask16 tm = tail_mask(d - full);
  for (int64_t j = 0; j < n_rows; ++j) {
    const uint8_t* row = rows + j * row_bytes;
    float* o = out + j * d;
    const __m512 s = _mm512_set1_ps(load_f32(row + so));
    for (int64_t i = 0; i < full; i += 16) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i));
      _mm512_storeu_ps(o + i, _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))));
    }
    if (full < d) {
      const __m128i b = _mm_maskz_loadu_epi8(tm, row + full);
      _mm512_mask_storeu_ps(o + full, tm, _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))));
    }
  }
}

// 8 bytes = 16 values: the low nibbles are values 0..7, the high ones 8..15, each code + 8. The 16
// possible values of a group, s * (n - 8), are one vector (one multiplication each, as in the
// scalar code); the nibbles then index it (vpermps).
void rows_q4_to_f32(const uint8_t* rows, int64_t row_bytes, int64_t n_rows, int64_t d, int64_t group, float* out) {
  const __m128i mask = _mm_set1_epi8(0x0f);
  const __m512 codes = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t j = 0; j < n_rows; ++j) {
    const uint8_t* row = rows + j * row_bytes;
    float* o = out + j * d;
    for (int64_t g = 0; g < d; g += group) {
      const __m512 table = _mm512_mul_ps(_mm512_set1_ps(load_f32(row + d / 2 + 4 * (g / group))), codes);
      for (int64_t i = g; i < g + group; i += 16) {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + i / 2));
        const __m128i v = _mm_unpacklo_epi64(_mm_and_si128(b, mask), _mm_and_si128(_mm_srli_epi16(b, 4), mask));
        _mm512_storeu_ps(o + i, _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(v), table));
      }
    }
  }
}

// Stages h = 1, 2, 4, 8 inside each 16-lane vector: lane j takes its partner j ^ h; lanes with bit
// h clear keep a + b (self + partner), the others a - b (partner - self): the scalar operations.
void hadamard(float* x, int64_t d, float scale) {
  if (d < 16) return hadamard_plain(x, d, scale);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i p1 = _mm512_xor_si512(lane, _mm512_set1_epi32(1)), p2 = _mm512_xor_si512(lane, _mm512_set1_epi32(2));
  const __m512i p4 = _mm512_xor_si512(lane, _mm512_set1_epi32(4)), p8 = _mm512_xor_si512(lane, _mm512_set1_epi32(8));
  for (int64_t i = 0; i < d; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    __m512 p = _mm512_permutexvar_ps(p1, v);
    v = _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xAAAA, p, v);
    p = _mm512_permutexvar_ps(p2, v);
    v = _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xCCCC, p, v);
    p = _mm512_permutexvar_ps(p4, v);
    v = _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xF0F0, p, v);
    p = _mm512_permutexvar_ps(p8, v);
    v = _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xFF00, p, v);
    _mm512_storeu_ps(x + i, v);
  }
  for (int64_t h = 16; h < d; h *= 2)
    for (int64_t i = 0; i < d; i += 2 * h)
      for (int64_t j = i; j < i + h; j += 16) {
        const __m512 a = _mm512_loadu_ps(x + j), b = _mm512_loadu_ps(x + j + h);
        _mm512_storeu_ps(x + j, _mm512_add_ps(a, b));
        _mm512_storeu_ps(x + j + h, _mm512_sub_ps(a, b));
      }
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < d; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), s));
}

// softmax_exp (kernel_table.h) on 16 lanes, step for step.
inline __m512 softmax_exp16(__m512 x) {
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  const __mmask16 low = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpMin), _CMP_LT_OQ);
  const __m512 xc = _mm512_min_ps(x, _mm512_set1_ps(kExpMax));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(kExpLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_sub_ps(xc, _mm512_mul_ps(n, _mm512_set1_ps(kExpLn2Hi)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(kExpLn2Lo)));
  const __m512 z = _mm512_mul_ps(r, r);
  __m512 y = _mm512_set1_ps(kExpPoly[0]);
  for (int k = 1; k < 6; ++k) y = _mm512_add_ps(_mm512_mul_ps(y, r), _mm512_set1_ps(kExpPoly[k]));
  y = _mm512_add_ps(_mm512_mul_ps(y, z), r);
  y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  const __m512 out = _mm512_maskz_mov_ps(static_cast<__mmask16>(~low), _mm512_mul_ps(y, _mm512_castsi512_ps(e)));
  return _mm512_mask_mov_ps(out, nan, x);
}

void softmax(float* s, int64_t n, float scale) {
  const __m512 vs = _mm512_set1_ps(scale);
  __m512 vm = _mm512_set1_ps(-__builtin_inff());
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(s + i), vs);
    _mm512_storeu_ps(s + i, x);
    vm = _mm512_max_ps(x, vm);  // a NaN score is passed over, as in the scalar loop
  }
  const __mmask16 k = i < n ? tail_mask(n - i) : 0;
  if (k != 0) {
    const __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + i), vs);
    _mm512_mask_storeu_ps(s + i, k, x);
    vm = _mm512_mask_max_ps(vm, k, x, vm);
  }
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(vm));
  __m512 acc = _mm512_setzero_ps();
  for (i = 0; i + 16 <= n; i += 16) {
    const __m512 e = softmax_exp16(_mm512_sub_ps(_mm512_loadu_ps(s + i), m));
    _mm512_storeu_ps(s + i, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (k != 0) {
    const __m512 e = softmax_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + i), m));
    _mm512_mask_storeu_ps(s + i, k, e);
    acc = _mm512_mask_add_ps(acc, k, acc, e);
  }
  const __m512 sum = _mm512_set1_ps(tree_sum(acc));
  for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(s + i, _mm512_div_ps(_mm512_loadu_ps(s + i), sum));
  if (k != 0) _mm512_mask_storeu_ps(s + i, k, _mm512_div_ps(_mm512_maskz_loadu_ps(k, s + i), sum));
}

}  // namespace

const KernelTable kAvx512Kernels = {
    ternary_gemm, quantize_row, rmsnorm, rmsnorm_quantize_row, relu2_mul, dot, axpy, dot_rows, axpy_rows,
    rows_f16_to_f32, rows_q8_to_f32, rows_q4_to_f32, hadamard, softmax, dot_rows_multi, axpy_rows_multi,
};

}  // namespace onebit::cpu::detail
