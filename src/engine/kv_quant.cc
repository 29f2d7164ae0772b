#include "engine/kv_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/base/error.h"
#include "core/base/half.h"
#include "kernels/cpu/cpu_kernels.h"

namespace onebit {

namespace {

int64_t round_up4(int64_t n) { return (n + 3) / 4 * 4; }

// Scale and codes of n values x against `levels` (127 for q8, 7 for q4r), as kv_quant.h defines:
// returns d and writes codes[i] = clamp(rint(x[i] / d), -levels, levels).
float quantize_group(const float* x, int64_t n, float levels, int8_t* codes) {
  float amax = 0.0f;
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    finite = finite && std::isfinite(x[i]);
    amax = std::max(amax, std::fabs(x[i]));
  }
  for (int64_t i = 0; i < n; ++i) codes[i] = 0;
  if (!finite) return std::numeric_limits<float>::quiet_NaN();
  const float d = amax / levels;
  if (!(d > 0.0f)) return 0.0f;  // all zero (or so small that the scale underflows)
  for (int64_t i = 0; i < n; ++i)
    codes[i] = static_cast<int8_t>(std::clamp(std::nearbyint(x[i] / d), -levels, levels));  // half to even
  return d;
}

}  // namespace

size_t kv_dtype_size(KvDtype t) {
  switch (t) {
    case KvDtype::kF32: return 4;
    case KvDtype::kF16: return 2;
    default: return 0;
  }
}

std::string_view kv_dtype_name(KvDtype t) {
  switch (t) {
    case KvDtype::kF32: return "f32";
    case KvDtype::kF16: return "f16";
    case KvDtype::kQ8: return "q8";
    case KvDtype::kQ4R: return "q4r";
  }
  return "?";
}

KvDtype kv_dtype_from_name(std::string_view name) {
  for (KvDtype t : kAllKvDtypes)
    if (name == kv_dtype_name(t)) return t;
  fail("KV cache type '{}': expected f32, f16, q8 (int8, a scale per row) or q4r (Hadamard-rotated 4-bit)", name);
}

bool kv_dtype_quantized(KvDtype t) { return t == KvDtype::kQ8 || t == KvDtype::kQ4R; }

int64_t kv_q4_group(int64_t head_dim) { return std::min<int64_t>(32, head_dim); }

void check_kv_dtype_head_dim(KvDtype t, int64_t head_dim) {
  if (head_dim < 1) fail("KV cache: head_dim {} (expected >= 1)", head_dim);
  if (t == KvDtype::kQ4R && (head_dim < 16 || (head_dim & (head_dim - 1)) != 0))
    fail("the q4r KV cache needs a head_dim that is a power of two of at least 16 (it rotates each head with a "
         "Walsh-Hadamard transform); this model's head_dim is {}: use --kv q8, f16 or f32",
         head_dim);
}

size_t kv_row_bytes(KvDtype t, int64_t head_dim) {
  const int64_t d = head_dim;
  switch (t) {
    case KvDtype::kF32: return static_cast<size_t>(d) * 4;
    case KvDtype::kF16: return static_cast<size_t>(d) * 2;
    case KvDtype::kQ8: return static_cast<size_t>(round_up4(d) + 4);
    case KvDtype::kQ4R: return static_cast<size_t>(d / 2 + d / kv_q4_group(d) * 4);
  }
  return 0;
}

// The scalar kernel: the plain loops (the SIMD versions, which the CPU backend's attention uses,
// give the same bits).
void hadamard_transform(float* x, int64_t d) { cpu::hadamard(x, d, cpu::Isa::kScalar); }

void quantize_kv_row(KvDtype t, const float* x, int64_t d, uint8_t* row) {
  thread_local std::vector<float> rotated;
  thread_local std::vector<int8_t> codes;
  if (codes.size() < static_cast<size_t>(d)) codes.resize(static_cast<size_t>(d));
  if (t == KvDtype::kQ8) {
    const float s = quantize_group(x, d, 127.0f, codes.data());
    std::memset(row, 0, static_cast<size_t>(round_up4(d)));
    std::memcpy(row, codes.data(), static_cast<size_t>(d));
    std::memcpy(row + round_up4(d), &s, 4);
    return;
  }
  if (t != KvDtype::kQ4R) fail("quantize_kv_row: {} is not a quantized KV type", kv_dtype_name(t));
  if (rotated.size() < static_cast<size_t>(d)) rotated.resize(static_cast<size_t>(d));
  std::copy(x, x + d, rotated.begin());
  hadamard_transform(rotated.data(), d);
  const int64_t g = kv_q4_group(d);
  for (int64_t k = 0; k < d / g; ++k) {
    const float s = quantize_group(rotated.data() + k * g, g, 7.0f, codes.data() + k * g);
    std::memcpy(row + d / 2 + 4 * k, &s, 4);
  }
  for (int64_t c = 0; c < d; c += 16)
    for (int64_t m = 0; m < 8; ++m)
      row[c / 2 + m] = static_cast<uint8_t>((codes[static_cast<size_t>(c + m)] + 8) |
                                            ((codes[static_cast<size_t>(c + m + 8)] + 8) << 4));
}

void dequantize_kv_row(KvDtype t, const uint8_t* row, int64_t d, float* out) {
  switch (t) {
    case KvDtype::kF32: std::memcpy(out, row, static_cast<size_t>(d) * 4); return;
    case KvDtype::kF16:
      for (int64_t i = 0; i < d; ++i) {
        uint16_t h;
        std::memcpy(&h, row + 2 * i, 2);
        out[i] = f16_to_f32(h);
      }
      return;
    case KvDtype::kQ8: {
      float s;
      std::memcpy(&s, row + round_up4(d), 4);
      for (int64_t i = 0; i < d; ++i) out[i] = s * static_cast<float>(static_cast<int8_t>(row[i]));
      return;
    }
    case KvDtype::kQ4R: {
      const int64_t g = kv_q4_group(d);
      for (int64_t i = 0; i < d; ++i) {
        float s;
        std::memcpy(&s, row + d / 2 + 4 * (i / g), 4);
        const int64_t c = i / 16 * 16, m = i % 16;
        const int nibble = (row[c / 2 + m % 8] >> (m < 8 ? 0 : 4)) & 15;
        out[i] = s * static_cast<float>(nibble - 8);
      }
      return;
    }
  }
}

}  // namespace onebit
