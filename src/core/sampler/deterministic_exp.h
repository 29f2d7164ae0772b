// exp() built from IEEE-754 basic operations only, so that every platform computes the same bits.
//
// The sampler turns logits into probabilities with this instead of std::exp: libm's exp is not
// correctly rounded and differs by an ulp between C libraries, and such a difference can move a
// draw across a bucket boundary. With this function (and no FMA contraction: no
// a*b+c contracted into one fused multiply-add) the same seed, settings and logits pick the same
// token everywhere. GCC contracts only in GNU mode (the project builds with -std=c++20, not
// gnu++20); clang contracts within an expression unless told not to, hence the pragma below.
// tests/unit/sampler/deterministic_exp_test.cc pins exact output bits, so a build that fuses fails.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace onebit {

namespace detail {
constexpr double kExpLog2e = 1.4426950408889634;
constexpr double kExpLn2Hi = 0x1.62e42feep-1;  // 32 significant bits: k*kExpLn2Hi is exact for |k| < 2^21
constexpr double kExpLn2Lo = 0.69314718055994530942 - 0x1.62e42feep-1;
constexpr double kExpRound = 0x1.8p52;  // adding then subtracting it rounds to an integer
constexpr double kExpMin = -700.0;      // below this the result is 0

// One lane of the computation; both entry points below inline it, so they give the same bits.
inline double exp_lane(double x) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  // live: all ones when x > kExpMin (false for -inf). Selects are done on bits, without branches,
  // so that loops over lanes vectorize.
  const uint64_t live = 0 - static_cast<uint64_t>(x > kExpMin);
  const double xc = std::bit_cast<double>((std::bit_cast<uint64_t>(x) & live) |
                                          (std::bit_cast<uint64_t>(kExpMin) & ~live));
  // xc = k*ln2 + r with |r| <= ln2/2: the shifted sum holds round(xc*log2e) in its low bits.
  const double scaled = xc * kExpLog2e;
  const double shifted = scaled + kExpRound;
  const double k = shifted - kExpRound;
  const double hi = k * kExpLn2Hi;
  const double lo = k * kExpLn2Lo;
  const double r0 = xc - hi;
  const double r = r0 - lo;
  // Taylor polynomial of degree 11 in Horner form: the next term, r^12/12!, is < 6e-15 for |r| <= ln2/2.
  double p = 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // 2^k for k in [-1010, 0] is a normal double with exponent field k + 1023; k sits in the low
  // bits of `shifted` (integer arithmetic, exact). Multiplying by a power of two is exact.
  const uint64_t k_bits = std::bit_cast<uint64_t>(shifted) - std::bit_cast<uint64_t>(kExpRound);
  const double scale = std::bit_cast<double>((k_bits + 1023) << 52);
  const double y = p * scale;
  return std::bit_cast<double>(std::bit_cast<uint64_t>(y) & live);
}
}  // namespace detail

// exp(x) for x <= 0, relative error below 1e-13 for x in (-700, 0]; 0 for x <= -700 and for -inf.
// (The sampler only calls it on logit - max_logit, where e^-700 is far below any useful mass.)
inline double deterministic_exp(double x) { return detail::exp_lane(x); }

// out[i] = deterministic_exp(x[i]) for 8 values, bit for bit. Written as independent lanes so
// that the compiler can vectorize it and the CPU overlaps the 8 dependency chains; the sampler's
// passes over the whole vocabulary go through it.
inline void deterministic_exp8(const double* x, double* out) {
  for (int j = 0; j < 8; ++j) out[j] = detail::exp_lane(x[j]);
}

}  // namespace onebit
