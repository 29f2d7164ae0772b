// Writing a Model to a file, with the format chosen by the output path's extension:
// .h1b -> native .h1b; .gguf -> GGUF with ternary tensors in `gguf_type` ("tq2_0" or "i2_s").
#pragma once

#include <functional>
#include <string>

#include "core/base/model.h"

namespace onebit {

void write_model(const Model& m, const std::string& path, const std::string& gguf_type = "tq2_0",
                 const std::function<void(size_t done, size_t total)>& progress = {});

}  // namespace onebit
