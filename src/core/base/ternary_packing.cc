// Ternary packings <-> codes, and dense packings <-> float. Layout facts: docs/BITNET.md.
//
// Byte orders, restated so that this file can be checked on its own:
//  - kTernaryI8: one int8 code per weight, row-major.
//  - kTernary2 and kTernaryLegacyH1b: per row ceil(cols/4) bytes; weight c sits in byte c/4, bits
//    2*(c%4)..+1 (LSB first), as code+1 (00=-1, 01=0, 10=+1). The two are byte-identical; the legacy
//    file's per-row f32 scales follow each row in the file but live in Tensor::scales here, so
//    packed_size()/pack_ternary() cover the code bytes only.
//  - kTernaryHF: uint8 [R = ceil(rows/4)][cols]; bits 2i of byte [r][c] hold W[i*R + r][c] + 1.
//  - kI2_S: the tensor flattened row-major in 128-weight blocks of 32 bytes; byte m of block b
//    holds weights 128b + m, +32, +64, +96 in bits [7:6], [5:4], [3:2], [1:0] (code+1); then one
//    f32 scale at byte n/4, then padding to n/4 + 32 bytes (bitnet.cpp's converter writes the
//    scale 8 times; we do the same).
//  - kTQ2_0: per row, 256-weight blocks {uint8 qs[64]; fp16 d}. Weight j of a block: half h = j/128,
//    k = j%128, byte 32h + k%32, bits 2*(k/32) (LSB first), code+1.
//  - kTQ1_0: per row, 256-weight blocks {uint8 qs[48]; uint8 qh[4]; fp16 d}. Five trits per byte,
//    the first trit most significant, stored as ceil(v * 256 / 243) so that trit n is recovered as
//    ((uint8)(byte * 3^n) * 3) >> 8. Weights 0..159: qs[j%32] trit j/32; 160..239 (k = j-160):
//    qs[32 + k%16] trit k/16; 240..255 (k = j-240): qh[k%4] trit k/4 (only 4 trits, the fifth 0).
//    This is the element order of llama.cpp's quantize_row_tq1_0_ref / dequantize_row_tq1_0.
#include "core/base/ternary_packing.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/base/error.h"
#include "core/base/half.h"

namespace onebit {

namespace {

constexpr int64_t kMaxElements = int64_t{1} << 40;

int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r) || r > kMaxElements * 4)
    fail("{}: size {} x {} overflows", what, a, b);
  return r;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void store_f32(uint8_t* p, float v) { std::memcpy(p, &v, 4); }
float load_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}
void store_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xff);
  p[1] = static_cast<uint8_t>(v >> 8);
}
uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

constexpr int kTq2Block = 66, kTq1Block = 54;
constexpr uint8_t kPow3[6] = {1, 3, 9, 27, 81, 243};

// Where weight j (0..255) of a TQ1_0 block lives: byte index within the 52 code bytes, trit index.
struct TritPos {
  int byte, trit;
};
constexpr TritPos tq1_pos(int j) {
  if (j < 160) return {j % 32, j / 32};
  if (j < 240) return {32 + (j - 160) % 16, (j - 160) / 16};
  return {48 + (j - 240) % 4, (j - 240) / 4};
}

int8_t decode_trit(uint8_t byte, int n) {
  const uint8_t q = static_cast<uint8_t>(byte * kPow3[n]);
  return static_cast<int8_t>(((static_cast<uint16_t>(q) * 3) >> 8) - 1);
}

// Shape of a ternary tensor as a matrix; 1-D tensors are one row.
void matrix_shape(const Tensor& t, int64_t& rows, int64_t& cols) {
  if (t.shape.empty() || t.shape.size() > 2)
    fail("tensor {}: a ternary tensor must be 1-D or 2-D, it has shape [{}]", t.name, t.shape_str());
  for (int64_t d : t.shape)
    if (d <= 0) fail("tensor {}: dimension {} is not positive", t.name, d);
  rows = t.rows();
  cols = t.cols();
}

[[noreturn]] void bad_code(const std::string& name, int64_t r, int64_t c) {
  fail("tensor {}: invalid ternary code (2-bit value 3) at row {}, col {}", name, r, c);
}

}  // namespace

size_t packed_size(Packing p, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) fail("packing {}: shape {}x{} must be positive", packing_name(p), rows, cols);
  const int64_t n = checked_mul(rows, cols, "tensor");
  if (n > kMaxElements) fail("packing {}: {}x{} is too many elements", packing_name(p), rows, cols);
  switch (p) {
    case Packing::kF32: return static_cast<size_t>(n) * 4;
    case Packing::kF16:
    case Packing::kBF16: return static_cast<size_t>(n) * 2;
    case Packing::kQ8_0:
      if (cols % 32 != 0) fail("packing q8_0: cols {} is not a multiple of 32", cols);
      return static_cast<size_t>(n / 32) * 34;
    case Packing::kTernaryI8: return static_cast<size_t>(n);
    case Packing::kTernary2:
    case Packing::kTernaryLegacyH1b: return static_cast<size_t>(rows * ceil_div(cols, 4));
    case Packing::kTernaryHF: return static_cast<size_t>(ceil_div(rows, 4) * cols);
    case Packing::kI2_S:
      if (n % 128 != 0) fail("packing i2_s: {}x{} = {} weights is not a multiple of 128", rows, cols, n);
      return static_cast<size_t>(n / 4 + 32);
    case Packing::kTQ2_0:
      if (cols % 256 != 0) fail("packing tq2_0: cols {} is not a multiple of 256", cols);
      return static_cast<size_t>(rows * (cols / 256) * kTq2Block);
    case Packing::kTQ1_0:
      if (cols % 256 != 0) fail("packing tq1_0: cols {} is not a multiple of 256", cols);
      return static_cast<size_t>(rows * (cols / 256) * kTq1Block);
  }
  fail("unknown packing {}", static_cast<int>(p));
}

std::vector<float> embedded_scales(Packing p, std::span<const uint8_t> bytes, int64_t rows, int64_t cols) {
  if (p != Packing::kI2_S && p != Packing::kTQ1_0 && p != Packing::kTQ2_0) return {};
  const size_t want = packed_size(p, rows, cols);
  if (bytes.size() != want)
    fail("packing {}: {}x{} needs {} bytes, got {}", packing_name(p), rows, cols, want, bytes.size());
  if (p == Packing::kI2_S) return {load_f32(bytes.data() + rows * cols / 4)};

  const int block = p == Packing::kTQ2_0 ? kTq2Block : kTq1Block;
  const int d_off = block - 2;
  const int64_t nb = cols / 256;
  // A block whose 256 weights are all zero carries no information about the scale (llama.cpp's
  // quantizer writes d = 0 there), so it is ignored when checking that a row has one scale.
  auto all_zero = [&](const uint8_t* b) {
    if (p == Packing::kTQ2_0) return std::all_of(b, b + 64, [](uint8_t v) { return v == 0x55; });
    for (int j = 0; j < 256; ++j) {
      TritPos tp = tq1_pos(j);
      if (decode_trit(b[tp.byte], tp.trit) != 0) return false;
    }
    return true;
  };
  std::vector<float> out(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = bytes.data() + r * nb * block;
    bool have = false;
    uint16_t d = load_u16(row + d_off);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * block;
      if (all_zero(blk)) continue;
      const uint16_t db = load_u16(blk + d_off);
      if (!have) {
        d = db;
        have = true;
      } else if (db != d) {
        fail("packing {}: row {} has blocks with different scales ({} in block 0.., {} in block {}); "
             "only one scale per row is supported",
             packing_name(p), r, f16_to_f32(d), f16_to_f32(db), b);
      }
    }
    out[static_cast<size_t>(r)] = f16_to_f32(d);
  }
  return out;
}

TernaryMatrix unpack_ternary(const Tensor& t) {
  if (!is_ternary(t.packing))
    fail("tensor {}: packing {} is not ternary", t.name, packing_name(t.packing));
  int64_t rows = 0, cols = 0;
  matrix_shape(t, rows, cols);
  const size_t want = packed_size(t.packing, rows, cols);
  if (t.data.size() != want)
    fail("tensor {}: {} {} needs {} bytes, found {}", t.name, packing_name(t.packing), t.shape_str(), want,
         t.data.size());

  TernaryMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.codes.resize(static_cast<size_t>(rows * cols));
  const uint8_t* d = t.data.data();
  int8_t* out = m.codes.data();

  switch (t.packing) {
    case Packing::kTernaryI8:
      for (int64_t i = 0; i < rows * cols; ++i) {
        const int8_t v = static_cast<int8_t>(d[i]);
        if (v < -1 || v > 1)
          fail("tensor {}: invalid ternary code {} at row {}, col {}", t.name, v, i / cols, i % cols);
        out[i] = v;
      }
      break;
    case Packing::kTernary2:
    case Packing::kTernaryLegacyH1b: {
      const int64_t rb = ceil_div(cols, 4);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const int v = (d[r * rb + c / 4] >> (2 * (c % 4))) & 3;
          if (v == 3) bad_code(t.name, r, c);
          out[r * cols + c] = static_cast<int8_t>(v - 1);
        }
      break;
    }
    case Packing::kTernaryHF: {
      const int64_t R = ceil_div(rows, 4);
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const uint8_t b = d[r * cols + c];
          for (int i = 0; i < 4; ++i) {
            const int64_t row = i * R + r;
            if (row >= rows) break;
            const int v = (b >> (2 * i)) & 3;
            if (v == 3) bad_code(t.name, row, c);
            out[row * cols + c] = static_cast<int8_t>(v - 1);
          }
        }
      break;
    }
    case Packing::kI2_S: {
      const int64_t n = rows * cols;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t blk = i / 128, j = i % 128;
        const int v = (d[blk * 32 + j % 32] >> (6 - 2 * (j / 32))) & 3;
        if (v == 3) bad_code(t.name, i / cols, i % cols);
        out[i] = static_cast<int8_t>(v - 1);
      }
      break;
    }
    case Packing::kTQ2_0: {
      const int64_t nb = rows * cols / 256;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = d + b * kTq2Block;
        for (int j = 0; j < 256; ++j) {
          const int h = j / 128, k = j % 128;
          const int v = (blk[h * 32 + k % 32] >> (2 * (k / 32))) & 3;
          const int64_t i = b * 256 + j;
          if (v == 3) bad_code(t.name, i / cols, i % cols);
          out[i] = static_cast<int8_t>(v - 1);
        }
      }
      break;
    }
    case Packing::kTQ1_0: {
      const int64_t nb = rows * cols / 256;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = d + b * kTq1Block;
        for (int j = 0; j < 256; ++j) {
          const TritPos tp = tq1_pos(j);
          out[b * 256 + j] = decode_trit(blk[tp.byte], tp.trit);
        }
      }
      break;
    }
    default: fail("tensor {}: packing {} is not ternary", t.name, packing_name(t.packing));
  }

  m.scales = t.scales;
  if (m.scales.empty()) m.scales = embedded_scales(t.packing, t.data, rows, cols);
  return m;
}

std::vector<uint8_t> pack_ternary(const TernaryMatrix& m, Packing p) {
  if (!is_ternary(p)) fail("pack_ternary: packing {} is not ternary", packing_name(p));
  const size_t size = packed_size(p, m.rows, m.cols);
  const int64_t rows = m.rows, cols = m.cols, n = rows * cols;
  if (static_cast<int64_t>(m.codes.size()) != n)
    fail("pack_ternary: {}x{} matrix has {} codes", rows, cols, m.codes.size());
  for (int64_t i = 0; i < n; ++i)
    if (m.codes[i] < -1 || m.codes[i] > 1)
      fail("pack_ternary: invalid code {} at row {}, col {}", m.codes[i], i / cols, i % cols);
  if (!m.scales.empty() && m.scales.size() != 1 && static_cast<int64_t>(m.scales.size()) != rows)
    fail("pack_ternary: {} scales for {} rows (expected 1 or {})", m.scales.size(), rows, rows);
  auto row_scale = [&](int64_t r) { return m.scales.size() == 1 ? m.scales[0] : m.scales[r]; };

  std::vector<uint8_t> out(size, 0);
  const int8_t* c8 = m.codes.data();
  auto code = [&](int64_t i) { return static_cast<uint8_t>(c8[i] + 1); };

  switch (p) {
    case Packing::kTernaryI8:
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(c8[i]);
      break;
    case Packing::kTernary2:
    case Packing::kTernaryLegacyH1b: {
      const int64_t rb = ceil_div(cols, 4);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) out[r * rb + c / 4] |= code(r * cols + c) << (2 * (c % 4));
      break;
    }
    case Packing::kTernaryHF: {
      const int64_t R = ceil_div(rows, 4);
      for (int64_t row = 0; row < rows; ++row)
        for (int64_t c = 0; c < cols; ++c)
          out[(row % R) * cols + c] |= code(row * cols + c) << (2 * (row / R));
      break;
    }
    case Packing::kI2_S: {
      if (m.scales.empty()) fail("pack_ternary: i2_s needs a scale");
      for (float s : m.scales)
        if (std::bit_cast<uint32_t>(s) != std::bit_cast<uint32_t>(m.scales[0]))
          fail("pack_ternary: i2_s holds one scale per tensor, but the rows have different scales "
               "({} and {})", m.scales[0], s);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t blk = i / 128, j = i % 128;
        out[blk * 32 + j % 32] |= code(i) << (6 - 2 * (j / 32));
      }
      for (int k = 0; k < 8; ++k) store_f32(out.data() + n / 4 + 4 * k, m.scales[0]);
      break;
    }
    case Packing::kTQ2_0:
    case Packing::kTQ1_0: {
      if (m.scales.empty()) fail("pack_ternary: {} needs scales", packing_name(p));
      const int block = p == Packing::kTQ2_0 ? kTq2Block : kTq1Block;
      const int64_t nb = n / 256;
      for (int64_t b = 0; b < nb; ++b) {
        uint8_t* blk = out.data() + b * block;
        const int64_t base = b * 256;
        if (p == Packing::kTQ2_0) {
          for (int j = 0; j < 256; ++j) {
            const int h = j / 128, k = j % 128;
            blk[h * 32 + k % 32] |= code(base + j) << (2 * (k / 32));
          }
        } else {
          int value[52] = {};
          for (int j = 0; j < 256; ++j) {
            const TritPos tp = tq1_pos(j);
            value[tp.byte] += code(base + j) * kPow3[4 - tp.trit];
          }
          for (int k = 0; k < 52; ++k) blk[k] = static_cast<uint8_t>((value[k] * 256 + 242) / 243);
        }
        store_u16(blk + block - 2, f32_to_f16(row_scale(base / cols)));
      }
      break;
    }
    default: fail("pack_ternary: packing {} is not ternary", packing_name(p));
  }
  return out;
}

std::vector<float> dequantize(const Tensor& t) {
  for (int64_t d : t.shape)
    if (d <= 0) fail("tensor {}: dimension {} is not positive", t.name, d);
  const int64_t cols = t.cols();
  int64_t n = 1;
  for (int64_t d : t.shape) n = checked_mul(n, d, t.name.c_str());
  if (n > kMaxElements) fail("tensor {}: shape [{}] is too large", t.name, t.shape_str());
  const int64_t rows = n / cols;
  if (is_ternary(t.packing))
    fail("tensor {}: dequantize handles dense packings; {} is ternary", t.name, packing_name(t.packing));
  const size_t want = packed_size(t.packing, rows, cols);
  if (t.data.size() != want)
    fail("tensor {}: {} [{}] needs {} bytes, found {}", t.name, packing_name(t.packing), t.shape_str(), want,
         t.data.size());
  std::vector<float> out(static_cast<size_t>(n));
  const uint8_t* d = t.data.data();
  switch (t.packing) {
    case Packing::kF32:
      std::memcpy(out.data(), d, want);
      break;
    case Packing::kF16:
      for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(load_u16(d + 2 * i));
      break;
    case Packing::kBF16:
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(load_u16(d + 2 * i));
      break;
    case Packing::kQ8_0:
      for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t* blk = d + b * 34;
        const float s = f16_to_f32(load_u16(blk));
        for (int j = 0; j < 32; ++j) out[b * 32 + j] = s * static_cast<float>(static_cast<int8_t>(blk[2 + j]));
      }
      break;
    default: fail("tensor {}: cannot dequantize packing {}", t.name, packing_name(t.packing));
  }
  return out;
}

std::vector<uint8_t> pack_dense(std::span<const float> values, Packing p) {
  const size_t n = values.size();
  std::vector<uint8_t> out;
  switch (p) {
    case Packing::kF32:
      out.resize(n * 4);
      if (n != 0) std::memcpy(out.data(), values.data(), n * 4);
      break;
    case Packing::kF16:
      out.resize(n * 2);
      for (size_t i = 0; i < n; ++i) store_u16(out.data() + 2 * i, f32_to_f16(values[i]));
      break;
    case Packing::kBF16:
      out.resize(n * 2);
      for (size_t i = 0; i < n; ++i) store_u16(out.data() + 2 * i, f32_to_bf16(values[i]));
      break;
    case Packing::kQ8_0: {
      if (n % 32 != 0) fail("pack_dense: q8_0 needs a multiple of 32 values, got {}", n);
      out.resize(n / 32 * 34);
      for (size_t b = 0; b < n / 32; ++b) {
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(values[b * 32 + j]));
        const float d = amax / 127.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        uint8_t* blk = out.data() + b * 34;
        store_u16(blk, f32_to_f16(d));
        for (int j = 0; j < 32; ++j) {
          const float q = std::clamp(std::nearbyint(values[b * 32 + j] * id), -127.0f, 127.0f);
          blk[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(q));
        }
      }
      break;
    }
    default: fail("pack_dense: packing {} is not dense", packing_name(p));
  }
  return out;
}

// Matches transformers' BitNet weight quantization (and bitnet.cpp's preprocess script):
//   s = 1 / clamp(mean(|W|), min=1e-5);  code = clamp(round(W * s), -1, 1)   (all fp32)
// torch.round rounds half to even, as std::nearbyint does in the default rounding mode. The mean is
// accumulated in double and rounded once to fp32, i.e. the correctly rounded fp32 mean (torch's fp32
// reduction can differ from it in the last ulp for huge tensors; codes only change when W*s lands
// within an ulp of +-0.5). The stored scale is the clamped mean itself, the multiplier that
// dequantizes (weight = code * mean); transformers divides by s = 1/mean, which agrees to one ulp.
TernaryMatrix quantize_absmean(std::span<const float> w, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) fail("quantize_absmean: shape {}x{} must be positive", rows, cols);
  const int64_t n = checked_mul(rows, cols, "quantize_absmean");
  if (static_cast<int64_t>(w.size()) != n)
    fail("quantize_absmean: {}x{} matrix has {} values", rows, cols, w.size());
  double sum = 0;
  for (float v : w) sum += std::fabs(static_cast<double>(v));
  const float mean = std::max(static_cast<float>(sum / static_cast<double>(n)), 1e-5f);
  const float s = 1.0f / mean;
  TernaryMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.codes.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float x = w[i] * s;
    if (std::isnan(x)) fail("quantize_absmean: NaN weight at row {}, col {}", i / cols, i % cols);
    m.codes[i] = static_cast<int8_t>(std::clamp(std::nearbyint(x), -1.0f, 1.0f));
  }
  m.scales = {mean};
  return m;
}

}  // namespace onebit
