// Conversions between ternary packings (see Packing in model.h) and plain codes, and between dense
// packings and float. Every packing round-trips codes exactly; scales round-trip exactly except
// where the packing itself stores them in fp16 (TQ1_0, TQ2_0).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/base/model.h"

namespace onebit {

// Ternary codes in {-1, 0, +1}, row-major [rows][cols], one int8 each. Weight = code * scale,
// scales has 1 entry (per tensor) or `rows` entries (per row).
struct TernaryMatrix {
  int64_t rows = 0, cols = 0;
  std::vector<int8_t> codes;
  std::vector<float> scales;
};

// Byte size of a rows x cols tensor in packing p (for ternary packings with embedded scales,
// including them). Throws Error when the packing cannot hold that shape (e.g. TQ2_0 needs cols % 256 == 0).
size_t packed_size(Packing p, int64_t rows, int64_t cols);

// Decodes any ternary tensor into codes + scales (scales copied from Tensor::scales).
// Throws Error naming the tensor on a wrong byte size or an invalid code (the 2-bit value 3).
TernaryMatrix unpack_ternary(const Tensor& t);

// Encodes codes into packing p. For packings that embed the scale (I2_S, TQ1_0, TQ2_0) it is
// written into the bytes (the legacy .h1b per-row scales stay in Tensor::scales); those that hold one value per tensor (I2_S) or per block
// (TQ*) need scales uniform across the tensor / each row respectively, else Error.
std::vector<uint8_t> pack_ternary(const TernaryMatrix& m, Packing p);

// Reads the scales a packing embeds in its bytes (I2_S: one; TQ*: one per row, Error when the
// blocks of a row differ). Empty for packings that keep scales outside (including legacy .h1b).
std::vector<float> embedded_scales(Packing p, std::span<const uint8_t> bytes, int64_t rows, int64_t cols);

// Dense tensors (F32, F16, BF16, Q8_0) to float, and float to a dense packing.
std::vector<float> dequantize(const Tensor& t);
std::vector<uint8_t> pack_dense(std::span<const float> values, Packing p);

// absmean ternary quantization of a float matrix (BitNet b1.58 weights):
// scale = max(mean|W|, 1e-5); code = clamp(round(W / scale), -1, 1); one scale per tensor.
TernaryMatrix quantize_absmean(std::span<const float> w, int64_t rows, int64_t cols);

}  // namespace onebit
