#include "core/formats/model_loader.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/base/error.h"
#include "core/formats/gguf.h"
#include "core/formats/h1b.h"
#include "core/formats/hf_model.h"
#include "core/formats/safetensors.h"

namespace onebit {

namespace fs = std::filesystem;

std::string detect_format_bytes(std::span<const uint8_t> head) {
  if (head.size() >= 8 && std::memcmp(head.data(), kH1bMagic, 8) == 0) return "h1b";
  if (head.size() >= 4 && std::memcmp(head.data(), kH1bLegacyMagic, 4) == 0) return "h1b-legacy";
  if (head.size() >= 4 && is_gguf(head)) return "gguf";
  if (head.size() >= 9) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | head[i];
    if (n >= 2 && n <= kMaxSafetensorsHeader && head[8] == '{') return "hf";
  }
  return "";
}

namespace {

std::string hex_bytes(std::span<const uint8_t> b) {
  std::string s;
  for (uint8_t c : b) s += fmt::format("{}{:02x}", s.empty() ? "" : " ", c);
  return s.empty() ? "(empty file)" : s;
}

}  // namespace

std::string detect_format(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return "hf";
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open: {}", path, std::strerror(errno));
  uint8_t head[16] = {};
  in.read(reinterpret_cast<char*>(head), sizeof head);
  const auto got = static_cast<size_t>(in.gcount());
  std::string f = detect_format_bytes({head, got});
  if (f.empty()) {
    fail("{}: unknown model format (first bytes: {}); expected a GGUF file, a .h1b file, a "
         "safetensors file or a Hugging Face model folder",
         path, hex_bytes({head, got}));
  }
  return f;
}

std::unique_ptr<Model> load_model(const std::string& path) {
  const std::string f = detect_format(path);
  std::error_code ec;
  std::unique_ptr<Model> m;
  if (f == "hf") {
    if (fs::is_directory(path, ec)) return load_hf(path);
    fs::path parent = fs::path(path).parent_path();
    return load_hf(parent.empty() ? std::string(".") : parent.string());
  }
  if (f == "h1b") return load_h1b(path);
  if (f == "h1b-legacy") return load_h1b_legacy(path);
  m = load_gguf(path);  // "gguf": its reader leaves completeness to the caller
  m->validate();
  return m;
}

}  // namespace onebit
