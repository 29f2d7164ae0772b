// The inner-loop ceilings behind the AVX-512 GEMM's lookup-table share (docs/kernels-cpu.md,
// "VNNI + lookup tables"): what one core sustains when vpdpbusd steps and table lookups share a
// loop, from L1/L2-resident data, and what the pieces cost beside vpdpbusd.
//
//   build/<dir>/bench/bench_lut_loop            (pin with taskset -c N on a busy machine)
//
// Rates are MACs per core cycle, the cycle taken as the time of one vpdpbusd zmm (measured here,
// 1.00 per cycle on Zen 4), in thread CPU time, best of 11 runs. The loops are written in
// assembly (the AT&T operand order: vpdpbusd s8, u8, acc) and need AVX-512 VNNI.
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "thread_timing.h"

namespace {

using onebit::bench::best_rate;
using onebit::bench::cpu_now;

alignas(64) char g_tables[64 * 1024];
alignas(64) uint8_t g_idx[1 << 16];
alignas(64) int16_t g_sums[256 * 32];
alignas(64) char g_buf[8192];

#define LB_S2(x) #x
#define LB_S(x) LB_S2(x)
#define LB_ALL_ZMM                                                                                         \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", \
      "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23",    \
      "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"

// ---- pairs: 8 vpdpbusd, each beside one or two other instructions ----
#define LB_DP(r) "vpdpbusd %%zmm30, %%zmm31, %%zmm" #r "\n\t"
#define LB_MIX(o) \
  LB_DP(0) o(8) LB_DP(1) o(9) LB_DP(2) o(10) LB_DP(3) o(11) LB_DP(4) o(12) LB_DP(5) o(13) LB_DP(6) o(14) LB_DP(7) o(15)
#define LB_MIX2(o)                                                                                          \
  LB_DP(0) o(8) o(16) LB_DP(1) o(9) o(17) LB_DP(2) o(10) o(18) LB_DP(3) o(11) o(19) LB_DP(4) o(12) o(20) \
      LB_DP(5) o(13) o(21) LB_DP(6) o(14) o(22) LB_DP(7) o(15) o(23)
#define LB_NONE(r)
#define LB_ADDW_Z(r) "vpaddw 64*(" #r "-8)(%0), %%zmm" #r ", %%zmm" #r "\n\t"
#define LB_ADDW_Y(r) "vpaddw 32*(" #r "-8)(%0), %%ymm" #r ", %%ymm" #r "\n\t"
#define LB_ST_Z(r) "vmovdqa64 %%zmm" #r ", 64*(" #r "-8)(%1)\n\t"
#define LB_BF16(r) "vdpbf16ps %%zmm29, %%zmm27, %%zmm" #r "\n\t"
#define LB_FMA(r) "vfmadd231ps %%zmm29, %%zmm27, %%zmm" #r "\n\t"
#define LB_ST_Z4(r) ".if (" #r " %% 4) == 0\n\tvmovdqa64 %%zmm" #r ", 64*(" #r "-8)(%1)\n\t.endif\n\t"
#define LB_PAIR(name, body)                                                                                         \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), noinline)) void name(int64_t n) {                  \
    for (int64_t i = 0; i < n; ++i) asm volatile(body ::"r"(g_buf), "r"(g_buf + 4096) : "memory", LB_ALL_ZMM);      \
  }
LB_PAIR(dp_alone, LB_MIX(LB_NONE))
LB_PAIR(dp_addw_zmm, LB_MIX(LB_ADDW_Z))
LB_PAIR(dp_addw_ymm, LB_MIX(LB_ADDW_Y))
LB_PAIR(dp_addw_ymm2, LB_MIX2(LB_ADDW_Y))
LB_PAIR(dp_store_zmm, LB_MIX(LB_ST_Z))
LB_PAIR(dp_store_zmm_per4, LB_MIX(LB_ST_Z4))
LB_PAIR(dp_fma, LB_MIX(LB_FMA))
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16"), noinline)) void dp_bf16(int64_t n) {
  for (int64_t i = 0; i < n; ++i) asm volatile(LB_MIX(LB_BF16) ::"r"(g_buf), "r"(g_buf + 4096) : "memory", LB_ALL_ZMM);
}

// ---- the GEMM step loop: 4 row groups x 6 token rows of vpdpbusd + U table units per 2 steps ----
// As in kernels_avx512.cc: weights zmm24-27 from an unpacked tile, activations broadcast into zmm28,
// a unit = one row's 32 int16 sums loaded, 8 table lookups (vpaddw of a 64-byte entry at
// tables + 1728 * k + 8 * index byte), stored back. Offsets span 8 groups of 27 entries (13.8 KB).
#define LB_BC(t, a0, a1, a2, a3)                                                                 \
  "vpbroadcastd " LB_S(t) "*2560(%[x]), %%zmm28\n\t"                                             \
  "vpdpbusd %%zmm28, %%zmm24, %%zmm" #a0 "\n\tvpdpbusd %%zmm28, %%zmm25, %%zmm" #a1 "\n\t" \
  "vpdpbusd %%zmm28, %%zmm26, %%zmm" #a2 "\n\tvpdpbusd %%zmm28, %%zmm27, %%zmm" #a3 "\n\t"
#define LB_STEP                                                                                                   \
  "vmovdqa64 (%[w]), %%zmm24\n\tvmovdqa64 64(%[w]), %%zmm25\n\tvmovdqa64 128(%[w]), %%zmm26\n\t"                  \
  "vmovdqa64 192(%[w]), %%zmm27\n\t" LB_BC(0, 0, 1, 2, 3) LB_BC(1, 4, 5, 6, 7) LB_BC(2, 8, 9, 10, 11)            \
  LB_BC(3, 12, 13, 14, 15) LB_BC(4, 16, 17, 18, 19) LB_BC(5, 20, 21, 22, 23) "add $256, %[w]\n\tadd $4, %[x]\n\t"
#define LB_ADD(reg, disp, r) "vpaddw " #disp "(%[tb],%%" reg ",8), %%zmm" #r ", %%zmm" #r "\n\t"
#define LB_UNIT(k, r)                                                                                            \
  ".if %c[mem]\n\tvmovdqa64 " #k "*64(%[p]), %%zmm" #r "\n\t.else\n\tvpxord %%zmm" #r ", %%zmm" #r ", %%zmm" #r \
  "\n\t.endif\n\tmovq " #k "*8(%[o]), %%rax\n\t"                                                                \
  "movzbl %%al, %%ecx\n\t" LB_ADD("rcx", 0, r) "movzbl %%ah, %%edx\n\t" LB_ADD("rdx", 1728, r) "shrq $16, %%rax\n\t" \
  "movzbl %%al, %%ecx\n\t" LB_ADD("rcx", 3456, r) "movzbl %%ah, %%edx\n\t" LB_ADD("rdx", 5184, r) "shrq $16, %%rax\n\t" \
  "movzbl %%al, %%ecx\n\t" LB_ADD("rcx", 6912, r) "movzbl %%ah, %%edx\n\t" LB_ADD("rdx", 8640, r) "shrq $16, %%rax\n\t" \
  "movzbl %%al, %%ecx\n\t" LB_ADD("rcx", 10368, r) "movzbl %%ah, %%edx\n\t" LB_ADD("rdx", 12096, r)                 \
  ".if %c[mem]\n\tvmovdqa64 %%zmm" #r ", " #k "*64(%[p])\n\t.endif\n\t"

// iters x (2 steps + U units), in the kernel's order (step, unit, step, units); Mem: the units'
// int16 sums loaded and stored (the real kernel) or kept in a register. The sums cycle over 256
// rows, as in a table pass.
template <int U, bool Mem>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), noinline)) void step_loop(const uint8_t* w, int64_t iters,
                                                                                           const int8_t* x) {
  const uint8_t* o = g_idx;
  int16_t* p = g_sums;
  int16_t* const p0 = g_sums;
  int16_t* const pe = g_sums + 256 * 32;
  asm volatile(
      "1:\n\t" LB_STEP ".if %c[u] >= 1\n\t" LB_UNIT(0, 29) ".endif\n\t" LB_STEP ".if %c[u] >= 2\n\t" LB_UNIT(1, 30)
      ".endif\n\t.if %c[u] >= 3\n\t" LB_UNIT(2, 31) ".endif\n\t.if %c[u] >= 4\n\t" LB_UNIT(3, 29) ".endif\n\t"
      "add $8*%c[u], %[o]\n\tadd $64*%c[u], %[p]\n\tcmp %[p], %[pe]\n\tcmove %[p0], %[p]\n\t"
      "dec %[n]\n\tjnz 1b\n\t"
      : [w] "+r"(w), [x] "+r"(x), [o] "+r"(o), [p] "+r"(p), [n] "+r"(iters)
      : [tb] "r"(g_tables), [u] "i"(U), [mem] "i"(Mem ? 1 : 0), [pe] "r"(pe), [p0] "r"(p0)
      : "rax", "rcx", "rdx", "memory", "cc", LB_ALL_ZMM);
}

}  // namespace

int main() {
  if (!__builtin_cpu_supports("avx512vnni") || !__builtin_cpu_supports("avx512bw")) {
    std::printf("needs AVX-512 VNNI\n");
    return 0;
  }
  for (size_t i = 0; i < sizeof g_idx; ++i) g_idx[i] = static_cast<uint8_t>(8 * (std::rand() % 27));
  for (size_t i = 0; i < sizeof g_tables; ++i) g_tables[i] = static_cast<char>(i & 7);
  const int64_t n = 5'000'000;
  const double dp_per_s = best_rate([&] { dp_alone(n); }, 8.0 * n);
  std::printf("vpdpbusd zmm alone: %.3f G/s (taken as 1 per cycle = 64 MAC/cycle)\n\n", dp_per_s / 1e9);
  std::printf("%-46s %s\n", "beside each vpdpbusd", "vpdpbusd per cycle");
  const struct {
    const char* name;
    void (*fn)(int64_t);
  } pairs[] = {{"vpaddw zmm, 64-byte memory operand", dp_addw_zmm},
               {"vpaddw ymm, 32-byte memory operand", dp_addw_ymm},
               {"2 x vpaddw ymm, 32-byte memory operands", dp_addw_ymm2},
               {"zmm store", dp_store_zmm},
               {"zmm store beside every 4th", dp_store_zmm_per4},
               {"vfmadd231ps zmm", dp_fma}};
  for (const auto& c : pairs) std::printf("%-46s %.3f\n", c.name, best_rate([&] { c.fn(n); }, 8.0 * n) / dp_per_s);
  if (__builtin_cpu_supports("avx512bf16")) {
    std::printf("%-46s %.3f\n", "vdpbf16ps zmm", best_rate([&] { dp_bf16(n); }, 8.0 * n) / dp_per_s);
  }

  const int64_t iters = 160;  // 320 steps: 80 KB of unpacked weights
  uint8_t* w = static_cast<uint8_t*>(std::aligned_alloc(64, 2 * iters * 256));
  int8_t* x = static_cast<int8_t*>(std::aligned_alloc(64, 6 * 2560));
  for (int64_t i = 0; i < 2 * iters * 256; ++i) w[i] = static_cast<uint8_t>(std::rand() % 3);
  for (int64_t i = 0; i < 6 * 2560; ++i) x[i] = static_cast<int8_t>(std::rand());
  const int calls = 4000;
  std::printf("\n%-58s %s\n", "step loop (4 x 6 vpdpbusd tile, 8-lookup table units)", "MAC/cycle");
  auto loop = [&](auto fn, int units, const char* name) {
    const double macs = double(calls) * double(iters) * (2 * 24 * 64 + units * 8 * 96);
    const double r = best_rate([&] { for (int c = 0; c < calls; ++c) fn(w, iters, x); }, macs);
    std::printf("%-58s %6.1f\n", name, r / dp_per_s);
  };
  loop(step_loop<0, true>, 0, "VNNI only");
  loop(step_loop<2, true>, 2, "+ 1 unit per step (sums loaded/stored)");
  loop(step_loop<3, true>, 3, "+ 1.5 units per step (sums loaded/stored): the kernel");
  loop(step_loop<4, true>, 4, "+ 2 units per step (sums loaded/stored)");
  loop(step_loop<3, false>, 3, "+ 1.5 units per step, sums kept in registers");
  loop(step_loop<4, false>, 4, "+ 2 units per step, sums kept in registers");
  std::free(w);
  std::free(x);
  return 0;
}
