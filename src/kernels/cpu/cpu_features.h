// Which SIMD instruction set the CPU kernels use, chosen once at run time.
//
// Every kernel exists in three versions: a plain scalar reference, AVX2 and AVX-512 (F, BW, VL,
// VNNI). The best one the CPU supports is used unless the environment variable
// ONEBIT_CPU_ISA=scalar|avx2|avx512 asks for another (tests, benchmarks, bug hunts). All three give
// bit-identical results, so the choice only changes speed.
#pragma once

#include <string_view>

namespace onebit::cpu {

enum class Isa {
  kAuto,  // "whatever active_isa() says"; only meaningful as a function argument
  kScalar,
  kAvx2,
  kAvx512,
};

std::string_view isa_name(Isa isa);
// Parses "scalar", "avx2", "avx512" (case-sensitive); throws Error on anything else.
Isa isa_from_name(std::string_view name);

// Whether this CPU (and OS) can run kernels of `isa`. kScalar and kAuto are always supported.
bool isa_supported(Isa isa);
// The best ISA this CPU supports.
Isa best_isa();
// The ISA the kernels use: ONEBIT_CPU_ISA when set (read once; throws Error if it names an unknown
// ISA or one this CPU cannot run), else best_isa().
Isa active_isa();
// kAuto -> active_isa(); any other value is checked with isa_supported (Error if not).
Isa resolve_isa(Isa isa);

}  // namespace onebit::cpu
