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
  _mm512_mask_storeu_ps(y + g * kGroup, tail_mask(w.rows - g * kGroup), out);
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

// ---- VNNI + lookup tables side by side (x.n >= kHybTok) ----
//
// On Zen 4 a vpdpbusd step (4 weight loads, 6 broadcasts, 24 vpdpbusd) leaves the load ports and
// some integer ALU slots idle: measured, 12 extra 64-byte load + vpaddw pairs per step cost almost
// nothing (bench_isa_throughput: 64 -> 109 MAC/cycle). The idle slots run a lookup-table GEMM
// over the last 3 * spans column blocks of every row, while vpdpbusd does the first `lb0` blocks:
//  - a group is 3 columns (k, k+16, k+32) of one 48-column span (3 blocks), k = 0..15; its table
//    has 27 entries, entry e = 9 c0 + 3 c1 + c2 (codes c = w + 1) holding w0 x0 + w1 x1 + w2 x2
//    for 32 token rows as int16 lanes (the 30 of a token block, 2 zero lanes);
//  - a row's contribution over 8 groups (a "unit") is 8 table loads + vpaddw into an int16
//    accumulator: |entry| <= 3 * 128 = 384, so <= kFlushChunks * 8 = 80 adds stay below 32,768
//    (exact), then the lanes are widened into int32;
//  - tables of one chunk (8 groups, 13.8 KB) stay in L1 while all rows of a 256-row sub-range use
//    them; the per-row 16-bit table offsets are derived once per call from the 2-bit layout.
// Every sum is exact integer arithmetic, so the result is bit-identical to the other paths:
// y = float(vnni + lut - sum_{vnni columns} x) * (row_scale / s).
constexpr int kHybTok = 30;  // token rows per block: 5 VNNI token tiles
static_assert(kHybTok % kTokTile == 0);
constexpr int64_t kLutLanes = 32, kEntryBytes = 64, kChunkGroups = 8;
constexpr int64_t kChunkTableBytes = kChunkGroups * 27 * kEntryBytes;  // 13,824 (kernel_table.h)
constexpr int64_t kFlushChunks = 10;                                   // 10 * 8 * 384 = 30,720
constexpr int64_t kSpanCols = 3 * kBlock;

struct LutRun {
  const uint16_t* idx;  // offsets of the next unit: [chunk][row][8]
  const char* tab;      // tables of chunk c
  int16_t* a16;         // [rows][32] int16 partial sums
  int32_t* a32;         // [rows][32] int32 sums
  int64_t r, rows, c, chunks;
};

// The loop state of a LutRun in locals (registers), and one unit: row r, the 8 groups of chunk c.
struct LutCursor {
  const uint16_t* idx;
  const char* tab;
  int16_t* p16;  // row r's int16 sums
  int32_t* p32;  // row r's int32 sums
  int64_t left;  // rows left in this chunk
  int64_t c;
  bool fresh, flush;  // chunk starts an int16 run / ends one

  void set_chunk(const LutRun& run) {
    fresh = c % kFlushChunks == 0;
    flush = c % kFlushChunks == kFlushChunks - 1 || c == run.chunks - 1;
    p16 = run.a16;
    p32 = run.a32;
    left = run.rows;
  }
  explicit LutCursor(const LutRun& run) : idx(run.idx), tab(run.tab), c(run.c) {
    set_chunk(run);
    p16 += run.r * kLutLanes;
    p32 += run.r * kLutLanes;
    left -= run.r;
  }
  void save(LutRun& run) const {
    run.idx = idx;
    run.tab = tab;
    run.c = c;
    run.r = run.rows - left;
  }
  // Returns false once all units are done.
  bool unit(const LutRun& run) {
    if (c >= run.chunks) return false;
    __m512i a = fresh ? _mm512_setzero_si512() : _mm512_load_si512(p16);
#pragma GCC unroll 8
    for (int k = 0; k < kChunkGroups; ++k) a = _mm512_add_epi16(a, _mm512_load_si512(tab + idx[k]));
    if (flush) {
      _mm512_store_si512(p32, _mm512_add_epi32(_mm512_load_si512(p32), _mm512_cvtepi16_epi32(_mm512_castsi512_si256(a))));
      _mm512_store_si512(p32 + 16, _mm512_add_epi32(_mm512_load_si512(p32 + 16),
                                                    _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(a, 1))));
    } else {
      _mm512_store_si512(p16, a);
    }
    idx += kChunkGroups;
    p16 += kLutLanes;
    p32 += kLutLanes;
    if (--left == 0) {
      ++c;
      tab += kChunkTableBytes;
      set_chunk(run);
    }
    return true;
  }
};

// gemm_block<RG, T> with one table unit per step; raw sums to vacc[t * rows + row].
template <int RG, int T>
void gemm_block_lut(const uint8_t* wt, int64_t steps, const int8_t* xq, int64_t x_stride, int32_t* vacc,
                    int64_t rows, LutRun& run) {
  __m512i acc[RG][T];
#pragma GCC unroll 4
  for (int i = 0; i < RG; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_si512();
  LutCursor cur(run);
  for (int64_t s = 0; s < steps; ++s, wt += RG * kBlockBytes) {
    __m512i wv[RG];
#pragma GCC unroll 4
    for (int i = 0; i < RG; ++i) wv[i] = _mm512_load_si512(wt + i * kBlockBytes);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m512i b = bcast4(xq + t * x_stride + 4 * s);
#pragma GCC unroll 4
      for (int i = 0; i < RG; ++i) acc[i][t] = _mm512_dpbusd_epi32(acc[i][t], wv[i], b);
    }
    cur.unit(run);
  }
  cur.save(run);
#pragma GCC unroll 4
  for (int i = 0; i < RG; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) _mm512_store_si512(vacc + t * rows + i * kGroup, acc[i][t]);
}

using LutBlockFn = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int32_t*, int64_t, LutRun&);
template <int RG>
constexpr LutBlockFn kLutBlockRow[kTokTile] = {gemm_block_lut<RG, 1>, gemm_block_lut<RG, 2>, gemm_block_lut<RG, 3>,
                                               gemm_block_lut<RG, 4>, gemm_block_lut<RG, 5>, gemm_block_lut<RG, 6>};
constexpr const LutBlockFn* kLutBlockFns[kGemmTileGroups] = {kLutBlockRow<1>, kLutBlockRow<2>, kLutBlockRow<3>,
                                                             kLutBlockRow<4>};

// Table offsets of rows [16 g0, 16 g1) for spans starting at block lb0, per sub-range of
// kGemmLutSubGroups row groups: idx[sub * chunks * kSubRows * 8 + (c * sub_rows + row) * 8 + k % 8]
// = ((k % 8) * 27 + e) * 64 for chunk c = 2 * span + k / 8 (the order a LutCursor walks them).
void build_lut_offsets(const WeightsView& w, int64_t g0, int64_t g1, int64_t lb0, int64_t spans, uint16_t* idx) {
  const int64_t chunks = 2 * spans;
  const __m512i m3 = _mm512_set1_epi8(3);
  const __m512i kconst = _mm512_set_epi16(189, 162, 135, 108, 81, 54, 27, 0, 189, 162, 135, 108, 81, 54, 27, 0, 189,
                                          162, 135, 108, 81, 54, 27, 0, 189, 162, 135, 108, 81, 54, 27, 0);
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t sub = (g - g0) / kGemmLutSubGroups;
    const int64_t sub_groups = g1 - g0 - sub * kGemmLutSubGroups;
    const int64_t rows = (sub_groups < kGemmLutSubGroups ? sub_groups : kGemmLutSubGroups) * kGroup;
    const int64_t r0 = (g - g0 - sub * kGemmLutSubGroups) * kGroup;
    uint16_t* const sidx = idx + sub * chunks * kGemmLutSubGroups * kGroup * kChunkGroups;
    const uint8_t* base = w.data + (g * w.blocks + lb0) * kBlockBytes;
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
          // 9 c0 + 3 c1 + c2 per byte; the 16-bit shifts cannot carry across bytes (c <= 2).
          e[ii] = _mm512_add_epi8(_mm512_add_epi8(_mm512_slli_epi16(c0, 3), c0),
                                  _mm512_add_epi8(_mm512_add_epi8(_mm512_slli_epi16(c1, 1), c1), c2));
        }
        // Byte 4j + kk of e[ii] is (row j, k = 4 (2h + ii) + kk): interleaving dwords gives each row's
        // 8 offsets of this chunk in one qword; 128-bit lane l of lo holds rows 4l, 4l+1, of hi 4l+2, 4l+3.
        const __m512i lo = _mm512_unpacklo_epi32(e[0], e[1]), hi = _mm512_unpackhi_epi32(e[0], e[1]);
        uint16_t* out = sidx + ((2 * sp + h) * rows + r0) * kChunkGroups;
        for (int part = 0; part < 4; ++part) {
          const __m512i src = part < 2 ? lo : hi;
          const __m256i half = part % 2 == 0 ? _mm512_castsi512_si256(src) : _mm512_extracti64x4_epi64(src, 1);
          const __m512i words = _mm512_slli_epi16(_mm512_add_epi16(_mm512_cvtepu8_epi16(half), kconst), 6);
          // words: 128-bit piece q = lane 2 (part % 2) + q / 2, row 4 * lane + 2 (part / 2) + q % 2.
          const int64_t lane0 = 2 * (part % 2), roff = 2 * (part / 2);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (4 * lane0 + roff) * kChunkGroups),
                           _mm512_extracti32x4_epi32(words, 0));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (4 * lane0 + roff + 1) * kChunkGroups),
                           _mm512_extracti32x4_epi32(words, 1));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (4 * lane0 + 4 + roff) * kChunkGroups),
                           _mm512_extracti32x4_epi32(words, 2));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (4 * lane0 + 4 + roff + 1) * kChunkGroups),
                           _mm512_extracti32x4_epi32(words, 3));
        }
      }
    }
  }
}

// Tables of all chunks for one token block from xt[col][32] (int16, LUT columns only).
void build_tables(const int16_t* xt, int64_t spans, char* tab) {
  for (int64_t sp = 0; sp < spans; ++sp) {
    for (int64_t k = 0; k < 16; ++k) {
      const __m512i x0 = _mm512_load_si512(xt + (sp * kSpanCols + k) * kLutLanes);
      const __m512i x1 = _mm512_load_si512(xt + (sp * kSpanCols + 16 + k) * kLutLanes);
      const __m512i x2 = _mm512_load_si512(xt + (sp * kSpanCols + 32 + k) * kLutLanes);
      const __m512i z = _mm512_setzero_si512();
      const __m512i w1[3] = {_mm512_sub_epi16(z, x1), z, x1}, w2[3] = {_mm512_sub_epi16(z, x2), z, x2};
      const __m512i w0[3] = {_mm512_sub_epi16(z, x0), z, x0};
      char* t = tab + (2 * sp + k / 8) * kChunkTableBytes + (k % 8) * 27 * kEntryBytes;
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

// xt[j][t] (int16, 32 lanes) = activation code of token row n0 + t, column c0 + j, for t < nb <= 30
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

// Loop order: per super-block of up to kGemmLutBlocks token blocks (30 token rows each, the last
// one possibly partial), build every block's tables; then per sub-range of kGemmLutSubGroups row
// groups, unpack each 64-row VNNI tile once and walk it with every token tile of the super-block,
// each token tile running its own block's table units beside its steps; finally add the table sums.
void gemm_hybrid(const WeightsView& w, const ActsView& x, float* y, int64_t y_stride, int64_t g0, int64_t g1,
                 uint8_t* scratch) {
  const int64_t spans = gemm_lut_spans(w.blocks), chunks = 2 * spans;
  const int64_t lb0 = w.blocks - 3 * spans, lut_cols = spans * kSpanCols;
  const int64_t sub_max = (g1 - g0 < kGemmLutSubGroups ? g1 - g0 : kGemmLutSubGroups) * kGroup;
  constexpr int64_t M = kGemmLutBlocks;
  // The parts of gemm_scratch_bytes, in its order.
  uint8_t* p = scratch;
  uint8_t* tile = p;
  p += round64(kGemmTileGroups * w.blocks * kGemmScratchPerBlock);
  uint16_t* idx = reinterpret_cast<uint16_t*>(p);
  p += round64(chunks * ((g1 - g0 + kGemmLutSubGroups - 1) / kGemmLutSubGroups) * kGemmLutSubGroups * kGroup * 16);
  char* tab = reinterpret_cast<char*>(p);
  p += M * chunks * kChunkTableBytes;
  int16_t* a16 = reinterpret_cast<int16_t*>(p);
  p += M * sub_max * 64;
  int32_t* a32 = reinterpret_cast<int32_t*>(p);
  p += M * sub_max * 128;
  int32_t* a32t = reinterpret_cast<int32_t*>(p);
  p += sub_max * 128;
  int32_t* vacc = reinterpret_cast<int32_t*>(p);
  p += M * kHybTok * sub_max * 4;
  int16_t* xt = reinterpret_cast<int16_t*>(p);
  p += spans * kSpanCols * 64;
  int32_t* vsum = reinterpret_cast<int32_t*>(p);

  build_lut_offsets(w, g0, g1, lb0, spans, idx);
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t sb0 = 0; sb0 < x.n; sb0 += M * kHybTok) {
    const int64_t sb_n = x.n - sb0 < M * kHybTok ? x.n - sb0 : M * kHybTok;
    const int64_t nblk = (sb_n + kHybTok - 1) / kHybTok;
    for (int64_t m = 0; m < nblk; ++m) {
      const int64_t n0 = sb0 + m * kHybTok, nb = sb_n - m * kHybTok < kHybTok ? sb_n - m * kHybTok : kHybTok;
      fill_lut_acts(x, n0, nb, lb0 * kBlock, lut_cols, xt);
      build_tables(xt, spans, tab + m * chunks * kChunkTableBytes);
      for (int64_t t = 0; t < nb; ++t) {  // sum over the vpdpbusd columns (codes are w + 1 there)
        const int8_t* q = x.q + (n0 + t) * x.stride;
        __m512i acc = _mm512_setzero_si512();
        for (int64_t c = 0; c < lb0 * kBlock; c += 64) {
          const int64_t rem = lb0 * kBlock - c;
          const __mmask64 mk = rem >= 64 ? ~__mmask64{0} : (__mmask64{1} << rem) - 1;
          acc = _mm512_dpbusd_epi32(acc, ones, _mm512_maskz_loadu_epi8(mk, q + c));
        }
        vsum[m * kLutLanes + t] = _mm512_reduce_add_epi32(acc);
      }
    }
    for (int64_t s0 = g0; s0 < g1; s0 += kGemmLutSubGroups) {
      const int64_t s1 = g1 - s0 < kGemmLutSubGroups ? g1 : s0 + kGemmLutSubGroups;
      const int64_t rows = (s1 - s0) * kGroup;
      const uint16_t* sidx = idx + (s0 - g0) / kGemmLutSubGroups * chunks * kGemmLutSubGroups * kGroup * kChunkGroups;
      LutRun runs[M];
      for (int64_t m = 0; m < nblk; ++m) {
        int32_t* am = a32 + m * sub_max * kLutLanes;
        for (int64_t i = 0; i < rows * kLutLanes; ++i) am[i] = 0;
        runs[m] = LutRun{sidx, tab + m * chunks * kChunkTableBytes, a16 + m * sub_max * kLutLanes, am, 0, rows, 0, chunks};
      }
      for (int64_t g = s0; g < s1; g += kGemmTileGroups) {
        const int ng = static_cast<int>(s1 - g < kGemmTileGroups ? s1 - g : kGemmTileGroups);
        unpack_tile(w, g, ng, lb0, tile);
        const LutBlockFn* fns = kLutBlockFns[ng - 1];
        for (int64_t n0 = 0; n0 < sb_n; n0 += kTokTile) {
          const int64_t nt = sb_n - n0 < kTokTile ? sb_n - n0 : kTokTile;
          fns[nt - 1](tile, 4 * lb0, x.q + (sb0 + n0) * x.stride, x.stride, vacc + n0 * rows + (g - s0) * kGroup, rows,
                      runs[n0 / kHybTok]);
        }
      }
      for (int64_t m = 0; m < nblk; ++m) {
        LutCursor rest(runs[m]);
        while (rest.unit(runs[m])) {
        }
        const int64_t n0 = m * kHybTok, nb = sb_n - n0 < kHybTok ? sb_n - n0 : kHybTok;
        const int32_t* am = a32 + m * sub_max * kLutLanes;
        for (int64_t r0 = 0; r0 < rows; r0 += 16) {
          transpose16(am + r0 * kLutLanes, kLutLanes, a32t + r0, rows);
          transpose16(am + r0 * kLutLanes + 16, kLutLanes, a32t + 16 * rows + r0, rows);
        }
        for (int64_t t = 0; t < nb; ++t) {
          for (int64_t g = s0; g < s1; ++g) {
            const int64_t r0 = (g - s0) * kGroup;
            const __m512i acc = _mm512_add_epi32(_mm512_load_si512(vacc + (n0 + t) * rows + r0),
                                                 _mm512_load_si512(a32t + t * rows + r0));
            store_rows(w, g, acc, vsum[m * kLutLanes + t], x.scale[sb0 + n0 + t], y + (sb0 + n0 + t) * y_stride);
          }
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
  if (x.n >= kHybTok && scratch != nullptr && gemm_lut_spans(w.blocks) > 0) {
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

}  // namespace

const KernelTable kAvx512Kernels = {
    ternary_gemm, quantize_row, rmsnorm, rmsnorm_quantize_row, relu2_mul, dot, axpy, dot_rows, axpy_rows,
};

}  // namespace onebit::cpu::detail
