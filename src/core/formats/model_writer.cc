#include "core/formats/model_writer.h"

#include <filesystem>

#include "core/base/error.h"
#include "core/formats/gguf.h"
#include "core/formats/h1b.h"

namespace onebit {

void write_model(const Model& m, const std::string& path, const std::string& gguf_type,
                 const std::function<void(size_t, size_t)>& progress) {
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".h1b") {
    write_h1b(m, path, progress);
  } else if (ext == ".gguf") {
    Packing p;
    if (gguf_type == "tq2_0") {
      p = Packing::kTQ2_0;
    } else if (gguf_type == "i2_s") {
      p = Packing::kI2_S;
    } else {
      fail("GGUF ternary type must be tq2_0 or i2_s, got '{}'", gguf_type);
    }
    write_gguf(m, path, p, progress);
  } else {
    fail("{}: cannot tell the output format from the extension '{}' (use .h1b or .gguf)", path, ext);
  }
}

}  // namespace onebit
