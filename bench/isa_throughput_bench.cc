// Instruction throughput on this CPU, for the prefill floor in docs/kernels-cpu.md: what one core
// issues per cycle of the instructions a ternary GEMM could be built from (VNNI multiply-add,
// byte/word table lookups, adds), alone and mixed, plus three candidate GEMM inner loops run
// from L1/L2-resident data. Needs AVX-512 VNNI + VBMI (vpermb); prints nothing useful otherwise.
//
//   build/<dir>/bench/bench_isa_throughput            (pin with taskset -c N on a busy machine)
//
// The clock is measured with a chain of dependent 64-bit adds (one per cycle), so "per cycle" is
// per core clock, whatever the turbo state; each figure is the best of 5 runs of ~20 M iterations.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

constexpr int64_t kIters = 5'000'000;

#define ONEBIT_CLOBBER12 "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11"
// Without -mavx512f the compiler knows only xmm0-15; zmm16-31 are read, never written, by the asm.
#define ONEBIT_CLOBBER16 ONEBIT_CLOBBER12, "xmm12", "xmm13", "xmm14", "xmm15"

void clock_chain(int64_t n) {
  int64_t a = 0;
  for (int64_t i = 0; i < n; ++i) {
    asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                 "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t" : "+r"(a));
  }
}

// Twelve independent instances of one instruction (operands in registers, no dependencies).
#define ONEBIT_X12(op, a, b)                                                                                        \
  op " " a ", " b ", %%zmm0\n\t" op " " a ", " b ", %%zmm1\n\t" op " " a ", " b ", %%zmm2\n\t" op " " a ", " b    \
     ", %%zmm3\n\t" op " " a ", " b ", %%zmm4\n\t" op " " a ", " b ", %%zmm5\n\t" op " " a ", " b                  \
     ", %%zmm6\n\t" op " " a ", " b ", %%zmm7\n\t" op " " a ", " b ", %%zmm8\n\t" op " " a ", " b                  \
     ", %%zmm9\n\t" op " " a ", " b ", %%zmm10\n\t" op " " a ", " b ", %%zmm11\n\t"
void dpbusd(int64_t n) { for (int64_t i = 0; i < n; ++i) asm volatile(ONEBIT_X12("vpdpbusd", "%%zmm30", "%%zmm31") ::: ONEBIT_CLOBBER12); }
void vpermw(int64_t n) { for (int64_t i = 0; i < n; ++i) asm volatile(ONEBIT_X12("vpermw", "%%zmm30", "%%zmm20") ::: ONEBIT_CLOBBER12); }
void vpermb(int64_t n) { for (int64_t i = 0; i < n; ++i) asm volatile(ONEBIT_X12("vpermb", "%%zmm30", "%%zmm20") ::: ONEBIT_CLOBBER12); }
void vpshufb(int64_t n) { for (int64_t i = 0; i < n; ++i) asm volatile(ONEBIT_X12("vpshufb", "%%zmm20", "%%zmm30") ::: ONEBIT_CLOBBER12); }
void vpaddw(int64_t n) { for (int64_t i = 0; i < n; ++i) asm volatile(ONEBIT_X12("vpaddw", "%%zmm30", "%%zmm20") ::: ONEBIT_CLOBBER12); }
void vpdpwssd(int64_t n) { for (int64_t i = 0; i < n; ++i) asm volatile(ONEBIT_X12("vpdpwssd", "%%zmm30", "%%zmm31") ::: ONEBIT_CLOBBER12); }

// Eight vpdpbusd, each paired with one other instruction.
#define ONEBIT_DP(r) "vpdpbusd %%zmm30, %%zmm31, %%zmm" #r "\n\t"
#define ONEBIT_MIX8(other)                                                                                          \
  ONEBIT_DP(0) other(8) ONEBIT_DP(1) other(9) ONEBIT_DP(2) other(10) ONEBIT_DP(3) other(11) ONEBIT_DP(4) other(12) \
  ONEBIT_DP(5) other(13) ONEBIT_DP(6) other(14) ONEBIT_DP(7) other(15)
#define ONEBIT_SHUFB(r) "vpshufb %%zmm20, %%zmm29, %%zmm" #r "\n\t"
#define ONEBIT_ADDW(r) "vpaddw %%zmm20, %%zmm" #r ", %%zmm" #r "\n\t"
#define ONEBIT_LOADZ(r) "vmovdqa64 (%0), %%zmm" #r "\n\t"
void dp_shufb(int64_t n) { for (int64_t i = 0; i < n; ++i) asm volatile(ONEBIT_MIX8(ONEBIT_SHUFB) ::: ONEBIT_CLOBBER16); }
void dp_addw(int64_t n) { for (int64_t i = 0; i < n; ++i) asm volatile(ONEBIT_MIX8(ONEBIT_ADDW) ::: ONEBIT_CLOBBER16); }
// Row-lane lookup (T-MAC style): vpermw with the table in a register, result added to an int16
// accumulator; and the same pair beside a vpdpbusd.
#define ONEBIT_PERMW_ADD(r) "vpermw %%zmm30, %%zmm20, %%zmm" #r "\n\tvpaddw %%zmm21, %%zmm" #r ", %%zmm" #r "\n\t"
void permw_addw(int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    asm volatile(ONEBIT_PERMW_ADD(8) ONEBIT_PERMW_ADD(9) ONEBIT_PERMW_ADD(10) ONEBIT_PERMW_ADD(11)
                 ONEBIT_PERMW_ADD(12) ONEBIT_PERMW_ADD(13) ONEBIT_PERMW_ADD(14) ONEBIT_PERMW_ADD(15) ::: ONEBIT_CLOBBER16);
  }
}
void permw_addw_dp(int64_t n) { for (int64_t i = 0; i < n; ++i) asm volatile(ONEBIT_MIX8(ONEBIT_PERMW_ADD) ::: ONEBIT_CLOBBER16); }
alignas(64) int32_t g_mem[1024];
void dp_load(int64_t n) { for (int64_t i = 0; i < n; ++i) asm volatile(ONEBIT_MIX8(ONEBIT_LOADZ) :: "r"(g_mem) : ONEBIT_CLOBBER16); }

struct Case {
  const char* name;
  void (*fn)(int64_t);
  int per_iter;  // instructions (or pairs) counted per loop iteration
};

double best_rate(void (*fn)(int64_t), int per_iter) {
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const double t0 = now();
    fn(kIters);
    best = std::max(best, double(kIters) * per_iter / (now() - t0));
  }
  return best;
}

// ---- candidate GEMM inner loops ----

// The candidate inner loops are written in assembly: GCC 12 keeps a 24-accumulator array on the
// stack when the ISA comes from a target attribute rather than the command line.
//
// VNNI step as in kernels_avx512.cc's gemm_block: weights already unpacked to u8 codes, 4 row
// groups x 6 token rows, 24 accumulators (zmm0-23); x rows `kXs` bytes apart. Then L lookup-table
// adds (LUT with token lanes, see below) of independent work, zmm29/30 accumulators.
constexpr int64_t kXs = 2560;
#define ONEBIT_STR2(x) #x
#define ONEBIT_STR(x) ONEBIT_STR2(x)
#define ONEBIT_BC(t, a0, a1, a2, a3)                                         \
  "vpbroadcastd " ONEBIT_STR(t) "*2560(%[x]), %%zmm28\n\t"                  \
  "vpdpbusd %%zmm28, %%zmm24, %%zmm" #a0 "\n\tvpdpbusd %%zmm28, %%zmm25, %%zmm" #a1 "\n\t" \
  "vpdpbusd %%zmm28, %%zmm26, %%zmm" #a2 "\n\tvpdpbusd %%zmm28, %%zmm27, %%zmm" #a3 "\n\t"
#define ONEBIT_VNNI_STEP                                                                                   \
  "vmovdqa64 (%[w]), %%zmm24\n\tvmovdqa64 64(%[w]), %%zmm25\n\t"                                          \
  "vmovdqa64 128(%[w]), %%zmm26\n\tvmovdqa64 192(%[w]), %%zmm27\n\t"                                      \
  ONEBIT_BC(0, 0, 1, 2, 3) ONEBIT_BC(1, 4, 5, 6, 7) ONEBIT_BC(2, 8, 9, 10, 11)                            \
  ONEBIT_BC(3, 12, 13, 14, 15) ONEBIT_BC(4, 16, 17, 18, 19) ONEBIT_BC(5, 20, 21, 22, 23)
#define ONEBIT_LUT_ADD(k, acc)                                             \
  "movzwl " #k "*2(%[o]), %%eax\n\tvpaddw (%[tb],%%rax), %%zmm" #acc ", %%zmm" #acc "\n\t"
#define ONEBIT_LUT4(k0) ONEBIT_LUT_ADD(k0, 29) ONEBIT_LUT_ADD(k0 + 1, 30) ONEBIT_LUT_ADD(k0 + 2, 29) ONEBIT_LUT_ADD(k0 + 3, 30)
#define ONEBIT_ALL_ZMM                                                                                        \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", \
      "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23",     \
      "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30"

// L = 0, 8, 12 or 16 table adds per VNNI step. `off`: 16 table offsets per step.
template <int L>
__attribute__((target("avx512f,avx512bw,avx512vnni"), noinline)) void vnni_lut_loop(const uint8_t* w, int64_t steps,
                                                                                    const int8_t* x,
                                                                                    const char* tables,
                                                                                    const uint16_t* off) {
  asm volatile(
      "1:\n\t" ONEBIT_VNNI_STEP
      ".if %c[l] >= 8\n\t" ONEBIT_LUT4(0) ONEBIT_LUT4(4) ".endif\n\t"
      ".if %c[l] >= 12\n\t" ONEBIT_LUT4(8) ".endif\n\t"
      ".if %c[l] >= 16\n\t" ONEBIT_LUT4(12) ".endif\n\t"
      "add $256, %[w]\n\tadd $4, %[x]\n\tadd $32, %[o]\n\tdec %[n]\n\tjnz 1b\n\t"
      : [w] "+r"(w), [x] "+r"(x), [o] "+r"(off), [n] "+r"(steps)
      : [tb] "r"(tables), [l] "i"(L)
      : "rax", "memory", "cc", ONEBIT_ALL_ZMM);
}

// Lookup table with token lanes (T-MAC's idea turned around for many tokens): for a group of 3
// ternary columns, table entry e (27 of them) holds, for 32 tokens as int16, the partial sum
// w0*x0 + w1*x1 + w2*x2 of the weight triple numbered e; a row's contribution over the group is one
// 64-byte load + vpaddw (96 multiply-adds). 12 groups of tables (20 KB) in L1, offsets per row.
__attribute__((target("avx512f,avx512bw"), noinline)) void lut_token_lanes(const char* tables, const uint16_t* off,
                                                                           int16_t* acc, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    __m512i a = _mm512_load_si512(acc + r * 32);
    const uint16_t* o = off + r * 16;
#pragma GCC unroll 12
    for (int k = 0; k < 12; ++k) a = _mm512_add_epi16(a, _mm512_load_si512(tables + o[k]));
    _mm512_store_si512(acc + r * 32, a);
  }
}

template <typename T>
T* aligned(int64_t n) {
  return static_cast<T*>(std::aligned_alloc(64, static_cast<size_t>((n * int64_t(sizeof(T)) + 63) / 64 * 64)));
}

}  // namespace

int main() {
  if (!__builtin_cpu_supports("avx512vnni") || !__builtin_cpu_supports("avx512vbmi")) {
    std::printf("needs AVX-512 VNNI and VBMI\n");
    return 0;
  }
  best_rate(clock_chain, 8);  // let the clock ramp up
  const double hz = best_rate(clock_chain, 8);
  std::printf("core clock (dependent add chain): %.3f GHz\n\n%-40s %10s %10s\n", hz / 1e9, "instruction (zmm)", "G/s",
              "per cycle");
  const Case cases[] = {{"vpdpbusd (64 int8 MACs)", dpbusd, 12},  {"vpdpwssd (32 int16 MACs)", vpdpwssd, 12},
                        {"vpermw (32 word lookups)", vpermw, 12}, {"vpermb (64 byte lookups)", vpermb, 12},
                        {"vpshufb (64 byte lookups)", vpshufb, 12}, {"vpaddw", vpaddw, 12},
                        {"vpdpbusd + vpshufb, per pair", dp_shufb, 8}, {"vpdpbusd + vpaddw, per pair", dp_addw, 8},
                        {"vpdpbusd + 64-byte load, per pair", dp_load, 8},
                        {"vpermw + vpaddw, per pair", permw_addw, 8},
                        {"vpdpbusd + vpermw + vpaddw, per triple", permw_addw_dp, 8}};
  for (const Case& c : cases) {
    const double r = best_rate(c.fn, c.per_iter);
    std::printf("%-40s %10.3f %10.3f\n", c.name, r / 1e9, r / hz);
  }

  // Candidate inner loops: MACs per cycle.
  const int64_t steps = kXs / 4;
  uint8_t* w = aligned<uint8_t>(4 * steps * 64);
  int8_t* x = aligned<int8_t>(6 * kXs);
  for (int64_t i = 0; i < 4 * steps * 64; ++i) w[i] = uint8_t(std::rand() % 3);
  for (int64_t i = 0; i < 6 * kXs; ++i) x[i] = int8_t(std::rand());
  const int64_t rows = 1024;
  char* tables = aligned<char>(12 * 27 * 64);
  uint16_t* off = aligned<uint16_t>(std::max(rows, steps) * 16);
  int16_t* acc = aligned<int16_t>(rows * 32);
  for (int64_t i = 0; i < 12 * 27 * 64; ++i) tables[i] = char(i & 7);
  for (int64_t r = 0; r < std::max(rows, steps); ++r)
    for (int k = 0; k < 16; ++k) off[r * 16 + k] = uint16_t(((k % 12) * 27 + std::rand() % 27) * 64);
  for (int64_t i = 0; i < rows * 32; ++i) acc[i] = 0;
  auto rate = [&](auto&& fn, double macs_per_call, int calls) {
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
      const double t0 = now();
      for (int i = 0; i < calls; ++i) fn();
      best = std::max(best, macs_per_call * calls / (now() - t0));
    }
    return best;
  };
  std::printf("\n%-56s %10s %10s\n", "inner loop (L1/L2-resident data, one core)", "GMAC/s", "MAC/cycle");
  const double v = rate([&] { vnni_lut_loop<0>(w, steps, x, tables, off); }, 24.0 * 64 * double(steps), 4000);
  std::printf("%-56s %10.1f %10.1f\n", "VNNI 64 rows x 6 tokens, unpacked weights", v / 1e9, v / hz);
  const double l = rate([&] { lut_token_lanes(tables, off, acc, rows); }, 96.0 * 12 * double(rows), 4000);
  std::printf("%-56s %10.1f %10.1f\n", "LUT, 32 token lanes, 3-column groups (1 load+add = 96)", l / 1e9, l / hz);
  const double h8 = rate([&] { vnni_lut_loop<8>(w, steps, x, tables, off); }, (24.0 * 64 + 8 * 96) * double(steps), 4000);
  std::printf("%-56s %10.1f %10.1f\n", "VNNI step + 8 LUT adds (independent work)", h8 / 1e9, h8 / hz);
  const double h12 = rate([&] { vnni_lut_loop<12>(w, steps, x, tables, off); }, (24.0 * 64 + 12 * 96) * double(steps), 4000);
  std::printf("%-56s %10.1f %10.1f\n", "VNNI step + 12 LUT adds (independent work)", h12 / 1e9, h12 / hz);
  const double h16 = rate([&] { vnni_lut_loop<16>(w, steps, x, tables, off); }, (24.0 * 64 + 16 * 96) * double(steps), 4000);
  std::printf("%-56s %10.1f %10.1f\n", "VNNI step + 16 LUT adds (independent work)", h16 / 1e9, h16 / hz);
  std::free(w);
  std::free(x);
  std::free(tables);
  std::free(off);
  std::free(acc);
  return 0;
}
