#include "kernels/cpu/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <cstdlib>

#include "core/base/error.h"

namespace onebit::cpu {

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAuto: return "auto";
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "?";
}

Isa isa_from_name(std::string_view name) {
  if (name == "scalar") return Isa::kScalar;
  if (name == "avx2") return Isa::kAvx2;
  if (name == "avx512") return Isa::kAvx512;
  fail("unknown CPU ISA '{}': expected scalar, avx2 or avx512", name);
}

#if defined(__x86_64__) || defined(__i386__)
// clang 14 does not know "f16c" in __builtin_cpu_supports: read CPUID leaf 1, ECX bit 29.
static bool has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & (1u << 29)) != 0;
}
#endif

bool isa_supported(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  switch (isa) {
    case Isa::kAuto:
    case Isa::kScalar: return true;
    // __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0).
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    case Isa::kAvx512:
      return isa_supported(Isa::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
  }
  return false;
#else
  return isa == Isa::kAuto || isa == Isa::kScalar;
#endif
}

Isa best_isa() {
  if (isa_supported(Isa::kAvx512)) return Isa::kAvx512;
  if (isa_supported(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

namespace {
Isa isa_from_env() {
  const char* env = std::getenv("ONEBIT_CPU_ISA");
  if (env == nullptr || *env == '\0') return best_isa();
  Isa isa = isa_from_name(env);
  if (!isa_supported(isa)) fail("ONEBIT_CPU_ISA={}: this CPU does not support it", env);
  return isa;
}
}  // namespace

Isa active_isa() {
  static const Isa isa = isa_from_env();
  return isa;
}

Isa resolve_isa(Isa isa) {
  if (isa == Isa::kAuto) return active_isa();
  if (!isa_supported(isa)) fail("CPU kernels: ISA {} requested but this CPU does not support it", isa_name(isa));
  return isa;
}

}  // namespace onebit::cpu
