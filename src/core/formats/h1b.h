// The native .h1b format (docs/formats/h1b.md) and the legacy halo .h1b v1/v2 layout.
//
// Native: a 128-byte header, a JSON metadata block (config, tokenizer, chat template), a JSON
// tensor table and 64-byte-aligned data, with XXH64 checksums of the header, metadata, table and
// each tensor. Loading maps the file and checks its structure (and the small checksums); tensor
// data is hashed only by verify_h1b.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/base/model.h"

namespace onebit {

inline constexpr uint8_t kH1bMagic[8] = {'1', 'B', 'I', 'T', 'H', '1', 'B', '\n'};
inline constexpr uint32_t kH1bVersion = 1;
inline constexpr size_t kH1bHeaderSize = 128;
inline constexpr size_t kH1bAlign = 64;
inline constexpr uint8_t kH1bLegacyMagic[4] = {'H', '1', 'B', '\0'};

// XXH64 of `bytes` (the xxHash 64-bit hash), used for every .h1b checksum.
uint64_t xxh64(std::span<const uint8_t> bytes, uint64_t seed = 0);

// Maps `path` and parses it; tensors point into the map, which the Model keeps alive. Checks the
// structure, the header/metadata/table checksums and Model::validate(); throws Error naming the
// file and the field or tensor at fault.
std::unique_ptr<Model> load_h1b(const std::string& path);

// The same from bytes the caller keeps alive for the Model's lifetime (tests, fuzzing).
// With check_checksums false the header/metadata/table checksums are not compared (fuzzing).
std::unique_ptr<Model> parse_h1b(std::span<const uint8_t> bytes, const std::string& name,
                                 bool check_checksums = true);

// Writes `m` as .h1b version 1: ternary tensors repacked to kTernary2 with their scales in the data
// region, dense tensors as they are. Written to `path`.tmp and renamed, so a failed write leaves no
// partial file at `path`. `progress(done, total)` is called after each tensor with tensor bytes.
void write_h1b(const Model& m, const std::string& path,
               const std::function<void(size_t done, size_t total)>& progress = {});

struct H1bVerifyResult {
  bool ok = true;
  std::vector<std::string> problems;  // one line each, naming the region or tensor
};
// Checks everything load_h1b checks plus every tensor's checksum; never throws on a bad file
// (only reports), but does throw Error when the file cannot be opened.
H1bVerifyResult verify_h1b(const std::string& path);
H1bVerifyResult verify_h1b_bytes(std::span<const uint8_t> bytes, const std::string& name);

// Legacy halo .h1b v1/v2 (magic "H1B\0"); layout and assumptions in docs/formats/h1b.md.
// Ternary tensors are Packing::kTernaryLegacyH1b (codes then per-row f32 scales), dense ones f32.
std::unique_ptr<Model> load_h1b_legacy(const std::string& path);
std::unique_ptr<Model> parse_h1b_legacy(std::span<const uint8_t> bytes, const std::string& name);

}  // namespace onebit
