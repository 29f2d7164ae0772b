// safetensors files: an 8-byte little-endian header length N, N bytes of JSON describing each
// tensor ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}), then
// the data section that the offsets are relative to.
//
// The parser works on bytes the caller keeps alive (a MappedFile for real models, a buffer in
// tests and fuzzing); tensor views point into them. Only the dtypes a BitNet checkpoint uses are
// accepted (U8, I8, F16, BF16, F32); any other dtype is an Error naming the tensor and dtype.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace onebit {

enum class StDtype : uint8_t { kU8, kI8, kF16, kBF16, kF32 };

std::string_view st_dtype_name(StDtype d);  // "U8", "I8", "F16", "BF16", "F32"
size_t st_dtype_size(StDtype d);

struct StTensor {
  std::string name;
  StDtype dtype = StDtype::kU8;
  std::vector<int64_t> shape;      // empty for a scalar
  std::span<const uint8_t> data;   // exactly numel * dtype size bytes, inside the parsed buffer
  uint64_t offset = 0;             // begin offset within the data section

  int64_t numel() const;
};

struct SafetensorsFile {
  std::string name;                               // for messages (usually the path)
  std::vector<StTensor> tensors;                  // ordered by data offset
  std::map<std::string, std::string> metadata;   // "__metadata__" (string values only)

  const StTensor* find(std::string_view tensor_name) const;
};

// Largest JSON header accepted (the format's reference implementation uses the same bound).
inline constexpr uint64_t kMaxSafetensorsHeader = 100u * 1000u * 1000u;

// Parses a whole safetensors file held in `bytes`. Checks the header length, the JSON, every
// tensor's dtype/shape/offsets (inside the data section, size = numel * dtype size, no two tensors
// overlapping). Throws Error starting with `name` on any problem.
SafetensorsFile parse_safetensors(std::span<const uint8_t> bytes, const std::string& name);

// A tensor to write. `bytes` must stay alive during write_safetensors and hold numel * dtype size
// bytes in little-endian order.
struct StWriteTensor {
  std::string name;
  StDtype dtype = StDtype::kF32;
  std::vector<int64_t> shape;
  std::span<const uint8_t> bytes;
};

// Writes a safetensors file readable by the reference implementation: tensors stored back to back
// in the given order, the header padded with spaces so that the data section starts 8-aligned.
// Throws Error naming the path or tensor on a size mismatch or an I/O failure.
void write_safetensors(const std::string& path, const std::vector<StWriteTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace onebit
