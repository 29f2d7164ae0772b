// GGUF (llama.cpp / bitnet.cpp model files): reader and writer for BitNet b1.58 models.
//
// Reading: GGUF v2 and v3, little-endian. Every count, offset and size is checked against the file
// size; anything malformed throws Error naming the file and the field or tensor. Tensor bytes are
// not copied: the Model's tensors point into the memory map (load_gguf) or into the caller's buffer
// (parse_gguf). Supported ggml types: F32 (0), F16 (1), Q8_0 (8), BF16 (30), TQ1_0 (34),
// TQ2_0 (35), I2_S (36, bitnet.cpp's id). Architectures: "bitnet-b1.58", "bitnet-25", "bitnet",
// "bitnet-1.58"; hyper-parameters come from `<arch>.*` keys as llama.cpp names them.
//
// Q/K row order: llama.cpp's LLaMA converter permutes Q/K rows so that its "normal" RoPE (adjacent
// pairs) matches HF's split-half RoPE. For BitNet it does not: bitnet.cpp's llama.cpp
// (Eddie-Wang1120/llama.cpp, src/llama.cpp, llama_rope_type) lists LLM_ARCH_BITNET, _BITNET_25 and
// _BITNET_158 under LLAMA_ROPE_TYPE_NEOX ("pairs of head values offset by n_rot/2", i.e. split-half),
// upstream llama.cpp does the same for LLM_ARCH_BITNET, and microsoft/BitNet's
// utils/convert-ms-to-gguf-bitnet.py (the 2B-4T path, arch bitnet-25) has its permute calls commented
// out. So BitNet GGUF files keep the HF row order, which is our canonical layout: neither the reader
// nor the writer permutes anything.
//
// Ternary scales: I2_S embeds one f32 per tensor, TQ1_0/TQ2_0 one fp16 per 256-block; the reader
// fills Tensor::scales from them (one value when uniform across the tensor, else one per row) and
// refuses a tensor whose blocks within a row differ.
//
// The caller decides whether the model is complete: parse_gguf/load_gguf do not call
// Model::validate().
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/base/model.h"

namespace onebit {

// ggml tensor type ids as stored in GGUF tensor infos.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ8_0 = 8,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kI2_S = 36,  // bitnet.cpp fork only (upstream ggml never assigned 36 to a live type we read)
};

// general.file_type values written by the converters: llama.cpp's LLAMA_FTYPE_MOSTLY_TQ1_0 = 36,
// LLAMA_FTYPE_MOSTLY_TQ2_0 = 37, bitnet.cpp's LLAMA_FTYPE_MOSTLY_I2_S = 40.
constexpr uint32_t kGgufFileTypeTQ1_0 = 36;
constexpr uint32_t kGgufFileTypeTQ2_0 = 37;
constexpr uint32_t kGgufFileTypeI2_S = 40;

// True when the bytes start with the GGUF magic.
bool is_gguf(std::span<const uint8_t> head);

// Maps and parses a GGUF file; the Model keeps the map alive. Model::format = "gguf".
std::unique_ptr<Model> load_gguf(const std::string& path);

// Parses a GGUF image in memory. The Model's tensors point into `bytes`, which must outlive it.
// `name` is used as Model::path and in messages.
std::unique_ptr<Model> parse_gguf(std::span<const uint8_t> bytes, const std::string& name);

// Writes `m` as GGUF v3 (alignment 32). `ternary` (kTQ2_0 or kI2_S) is the packing of every ternary
// tensor; dense tensors are written as they are (F32/F16/BF16/Q8_0; 1-D tensors as F32).
// Architecture: m.config.architecture when it is one of the BitNet names above, else
// "bitnet-b1.58" (the name the official microsoft/bitnet-b1.58-2B-4T-gguf file uses).
// general.file_type: 40 for I2_S, 37 for TQ2_0. The tokenizer is written as tokenizer.ggml.*: from
// m.tokenizer's GGUF vocabulary, else converted from its tokenizer.json (gguf_vocab_from_hf_json);
// a tokenizer.json that cannot be converted is stored verbatim as tokenizer.huggingface.json.
// The file is written to `path`.part and renamed on success. progress(done, total) is called with
// tensor-data bytes after each tensor.
void write_gguf(const Model& m, const std::string& path, Packing ternary,
                const std::function<void(size_t done, size_t total)>& progress = {});

// Same, into memory (tests, fuzz seeds).
std::vector<uint8_t> write_gguf_to_memory(const Model& m, Packing ternary);

}  // namespace onebit
