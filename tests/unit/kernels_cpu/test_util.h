// Shared helpers for the CPU kernel tests: random inputs and the list of ISAs this CPU can run.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/base/ternary_packing.h"
#include "kernels/cpu/cpu_features.h"

namespace onebit::cpu::testing {

inline std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (isa_supported(isa)) out.push_back(isa);
  }
  return out;
}

// Codes with P(-1) = P(+1) = 0.3 (BitNet weights are roughly a third zeros) and 1 or per-row scales.
inline TernaryMatrix random_ternary(std::mt19937& rng, int64_t rows, int64_t cols, bool per_row_scales) {
  TernaryMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.codes.resize(static_cast<size_t>(rows * cols));
  std::uniform_int_distribution<int> d(0, 9);
  for (auto& c : m.codes) {
    const int v = d(rng);
    c = static_cast<int8_t>(v < 3 ? -1 : (v < 6 ? 1 : 0));
  }
  std::uniform_real_distribution<float> s(0.5f, 2.0f);
  m.scales.resize(per_row_scales ? static_cast<size_t>(rows) : 1);
  for (auto& x : m.scales) x = s(rng);
  return m;
}

// Activations like a transformer's: mostly N(0,1), a few outliers.
inline std::vector<float> random_floats(std::mt19937& rng, int64_t n, float sigma = 1.0f) {
  std::normal_distribution<float> d(0.0f, sigma);
  std::uniform_int_distribution<int> outlier(0, 63);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng) * (outlier(rng) == 0 ? 20.0f : 1.0f);
  return v;
}

inline bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace onebit::cpu::testing
