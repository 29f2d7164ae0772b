// One entry point for every model file 1bit reads: picks the reader by what the path is.
//   - a directory                      -> Hugging Face folder (load_hf)
//   - "GGUF" magic                      -> load_gguf
//   - "1BITH1B\n" magic                 -> native .h1b (load_h1b)
//   - "H1B\0" magic                     -> legacy halo .h1b (load_h1b_legacy)
//   - a safetensors file (8-byte header length followed by '{') -> its parent folder (load_hf)
// The returned Model has passed Model::validate().
#pragma once

#include <memory>
#include <span>
#include <string>

#include "core/base/model.h"

namespace onebit {

// "hf", "gguf", "h1b", "h1b-legacy" (the value Model::format will have; a lone safetensors file
// reports "hf"). Throws Error naming the path and the first bytes when the format is unknown, or
// when the path cannot be read.
std::string detect_format(const std::string& path);

// The same decision from the first bytes of a file (at least 16 are looked at when present);
// returns "" when unknown. Directories are not seen here.
std::string detect_format_bytes(std::span<const uint8_t> head);

std::unique_ptr<Model> load_model(const std::string& path);

}  // namespace onebit
