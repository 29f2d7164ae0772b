// Quantized KV cache rows (KvDtype::kQ8, kQ4R): their byte layout, the one quantizer every backend
// must reproduce, a plain dequantizer, and the Walsh-Hadamard rotation of q4r.
//
// A row is head_dim (D) values of one position of one (layer, kv head), K or V (backend.h gives
// where rows sit in a KV block). Byte layouts, little-endian:
//
//   q8:  [round_up(D, 4) bytes: int8 codes c_0..c_{D-1}, then zero padding][fp32 scale d]
//        value i = d * c_i. d = max_i |x_i| / 127, c_i = clamp(rint(x_i / d), -127, 127) with
//        rint rounding half to even; an all-zero row has d = 0 and codes 0.
//   q4r: [D/2 bytes: 4-bit codes][D/G fp32 scales d_0..d_{D/G-1}], G = kv_q4_group(D) = min(32, D).
//        The row is first rotated: y = H x (hadamard_transform). Code of value i: c_i =
//        clamp(rint(y_i / d_g), -7, 7) with g = i / G and d_g = max over the group of |y| / 7
//        (symmetric: 15 levels, -8 is never used); value i = d_g * c_i (of y, the rotated row).
//        Every 16 consecutive values take 8 bytes: byte m of the chunk holds value m of the chunk
//        in its low nibble and value m + 8 in its high nibble, each stored as c + 8 (1..15).
//
// Non-finite input (an inf or NaN in a row or group) gives scale NaN and codes 0, so the NaN
// reaches attention as it would from an fp32 cache.
#pragma once

#include <cstdint>

#include "engine/backend.h"

namespace onebit {

// In place: x = H x with H the D x D Sylvester Hadamard matrix scaled by 1/sqrt(D)
// (H[i][j] = (-1)^popcount(i & j) / sqrt(D)): orthonormal and symmetric, so H H = I. The fast
// Walsh-Hadamard transform: log2(D) butterfly stages (a, b) -> (a + b, a - b) in fp32, then one
// multiplication by 1/sqrt(D) (rounded to fp32); the scalar version of cpu::hadamard, whose SIMD
// versions give the same bits. D must be a power of two (Error otherwise).
void hadamard_transform(float* x, int64_t d);

// Writes one row of dtype `t` (q8 or q4r) for the D values x (q4r rotates them first; x itself is
// not changed) into `row` (kv_row_bytes(t, d) bytes).
void quantize_kv_row(KvDtype t, const float* x, int64_t d, uint8_t* row);
// The values a row of any dtype stands for, into out[0..d): for q4r still rotated (H x, not x).
void dequantize_kv_row(KvDtype t, const uint8_t* row, int64_t d, float* out);

}  // namespace onebit
