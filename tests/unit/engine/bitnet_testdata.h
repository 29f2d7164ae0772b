// Test data for the engine: the golden files of tests/data/bitnet and the splitmix64 v1 checkpoint
// generator documented in tests/data/bitnet/README.md (rebuilds the 2b4t-2layer checkpoints,
// which are not committed).
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/base/half.h"
#include "core/base/model.h"
#include "core/formats/hf_model.h"
#include "core/formats/safetensors.h"
#include "core/formats/synth.h"

namespace onebit::testdata {

inline std::filesystem::path bitnet_dir() { return std::filesystem::path(ONEBIT_SOURCE_DIR) / "tests/data/bitnet"; }

// Where golden files are read from: ONEBIT_GOLDEN_DIR when set (e.g. goldens regenerated in
// float64 for a comparison), else tests/data/bitnet.
inline std::filesystem::path golden_dir() {
  const char* d = std::getenv("ONEBIT_GOLDEN_DIR");
  return d != nullptr && *d != '\0' ? std::filesystem::path(d) : bitnet_dir();
}

inline nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream f(p);
  if (!f) throw std::runtime_error("cannot open " + p.string());
  std::stringstream ss;
  ss << f.rdbuf();
  return nlohmann::json::parse(ss.str());
}

// The splitmix64 v1 generator is SynthStream (src/core/formats/synth.h), shared with `1bit synth`.

// Hugging Face name of a canonical tensor name (the inverse of hf_canonical_name).
inline std::string hf_name(const std::string& canon) {
  if (canon == "token_embd.weight") return "model.embed_tokens.weight";
  if (canon == "output_norm.weight") return "model.norm.weight";
  if (canon == "output.weight") return "lm_head.weight";
  static const std::map<std::string, std::string> kLayer = {
      {"attn_norm", "input_layernorm"},         {"attn_q", "self_attn.q_proj"},
      {"attn_k", "self_attn.k_proj"},           {"attn_v", "self_attn.v_proj"},
      {"attn_sub_norm", "self_attn.attn_sub_norm"}, {"attn_output", "self_attn.o_proj"},
      {"ffn_norm", "post_attention_layernorm"}, {"ffn_gate", "mlp.gate_proj"},
      {"ffn_up", "mlp.up_proj"},                {"ffn_sub_norm", "mlp.ffn_sub_norm"},
      {"ffn_down", "mlp.down_proj"}};
  // blk.<l>.<part>.weight
  const size_t a = canon.find('.', 4), b = canon.rfind('.');
  const std::string layer = canon.substr(4, a - 4), part = canon.substr(a + 1, b - a - 1);
  return "model.layers." + layer + "." + kLayer.at(part) + ".weight";
}

inline void put_bf16(std::vector<uint8_t>& out, float f) {
  const uint16_t h = f32_to_bf16(f);
  out.push_back(static_cast<uint8_t>(h & 0xff));
  out.push_back(static_cast<uint8_t>(h >> 8));
}

// Writes the Hugging Face folder the golden's generator describes (config.json from the golden,
// model.safetensors from splitmix64 v1) into `dir`.
inline void write_generated_checkpoint(const nlohmann::json& golden, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  const nlohmann::json& cfg = golden.at("config");
  {
    std::ofstream f(dir / "config.json");
    f << cfg.dump(2);
  }
  const HfConfig hc = parse_hf_config(cfg, "config.json");
  const std::string form = golden.at("form");
  const uint64_t seed = golden.at("seed");
  std::vector<std::vector<uint8_t>> bufs;  // kept alive until written
  std::vector<StWriteTensor> tensors;
  const auto expected = expected_tensors(hc.config);
  bufs.reserve(expected.size() * 2);
  for (size_t k = 0; k < expected.size(); ++k) {
    const ExpectedTensor& e = expected[k];
    int64_t numel = 1;
    for (int64_t d : e.shape) numel *= d;
    const SynthStream stream(seed, k);
    const std::string hf = hf_name(e.name);
    std::vector<uint8_t> bytes;
    if (!e.ternary || form == "bf16") {
      const bool norm = e.name.ends_with("norm.weight");
      bytes.reserve(static_cast<size_t>(numel) * 2);
      for (int64_t i = 0; i < numel; ++i) {
        const float u = SynthStream::unit(stream.at(static_cast<uint64_t>(i)));
        float v;
        if (!e.ternary) {
          v = norm ? 0.5f + u : u * 2.0f - 1.0f;
        } else {
          v = (u * 2.0f - 1.0f) * 0.05f;
        }
        put_bf16(bytes, v);
      }
      bufs.push_back(std::move(bytes));
      tensors.push_back({hf, StDtype::kBF16, e.shape, bufs.back()});
      continue;
    }
    // Packed: uint8 [ceil(out/4)][in], bits 2i..2i+1 of row r hold W[i*R + r] + 1.
    const int64_t out = e.shape[0], in = e.shape[1], R = (out + 3) / 4;
    bytes.assign(static_cast<size_t>(R * in), 0);
    for (int64_t row = 0; row < 4 * R; ++row)
      for (int64_t c = 0; c < in; ++c) {
        int code = 1;  // padding rows hold weight 0
        if (row < out) code = SynthStream::code(stream.at(static_cast<uint64_t>(row * in + c))) + 1;
        bytes[static_cast<size_t>((row % R) * in + c)] |= static_cast<uint8_t>(code << (2 * (row / R)));
      }
    bufs.push_back(std::move(bytes));
    tensors.push_back({hf, StDtype::kU8, {R, in}, bufs.back()});
    std::vector<uint8_t> sb;
    put_bf16(sb, (0.75f + 0.125f * static_cast<float>(k % 7)) / std::sqrt(static_cast<float>(in)));
    bufs.push_back(std::move(sb));
    tensors.push_back({hf.substr(0, hf.size() - 6) + "weight_scale", StDtype::kBF16, {1}, bufs.back()});
  }
  write_safetensors((dir / "model.safetensors").string(), tensors, {{"format", "pt"}});
}

// A temporary directory removed on destruction.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag) {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() /
           ("onebit-engine-" + tag + "-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// The checkpoint a golden file describes: the committed folder for tiny-*, a regenerated one
// (in `tmp`) for the others.
inline std::unique_ptr<Model> load_golden_model(const std::string& tag, const nlohmann::json& golden,
                                                std::unique_ptr<TempDir>& tmp) {
  const auto committed = bitnet_dir() / tag;
  if (std::filesystem::is_directory(committed)) return load_hf(committed.string());
  tmp = std::make_unique<TempDir>(tag);
  write_generated_checkpoint(golden, tmp->path);
  return load_hf(tmp->path.string());
}

inline std::vector<std::string> golden_tags() {
  std::vector<std::string> tags;
  for (const auto& e : std::filesystem::directory_iterator(golden_dir())) {
    const std::string n = e.path().filename().string();
    const std::string suffix = ".golden.json";
    if (n.size() > suffix.size() && n.ends_with(suffix)) tags.push_back(n.substr(0, n.size() - suffix.size()));
  }
  std::sort(tags.begin(), tags.end());
  return tags;
}

}  // namespace onebit::testdata
