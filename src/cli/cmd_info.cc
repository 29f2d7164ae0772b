// `1bit info FILE [--json] [--tensors]`: what is inside a model file.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/progress.h"
#include "core/base/error.h"
#include "core/base/ternary_packing.h"
#include "core/formats/h1b.h"
#include "core/formats/model_loader.h"
#include "core/tokenizer/tokenizer.h"

namespace onebit::cli {
namespace {

struct InfoOptions {
  std::string path;
  bool json = false;
  bool tensors = false;
  bool digest = false;
};

// A digest of what a tensor means, independent of its packing: XXH64 of the int8 codes followed by
// the f32 scales (ternary), or of the f32 values (dense). Equal digests across two files mean that a
// conversion kept every code and scale (or value) identical.
std::string content_digest(const Tensor& t) {
  std::vector<uint8_t> buf;
  auto append = [&buf](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf.insert(buf.end(), b, b + n);
  };
  if (is_ternary(t.packing)) {
    TernaryMatrix m = unpack_ternary(t);
    append(m.codes.data(), m.codes.size());
    // A per-row scale vector whose values are all equal means the same as a single scale.
    bool uniform = std::all_of(m.scales.begin(), m.scales.end(), [&](float s) { return s == m.scales[0]; });
    append(m.scales.data(), (uniform ? 1 : m.scales.size()) * sizeof(float));
  } else {
    std::vector<float> v = dequantize(t);
    append(v.data(), v.size() * sizeof(float));
  }
  return fmt::format("{:016x}", xxh64(buf));
}

nlohmann::ordered_json describe(const Model& m, bool with_tensors, bool with_digest) {
  nlohmann::ordered_json j;
  j["path"] = m.path;
  j["format"] = m.format;
  std::error_code ec;
  if (std::filesystem::is_regular_file(m.path, ec)) j["file_bytes"] = std::filesystem::file_size(m.path, ec);
  j["config"] = m.config.to_json();

  struct Sum {
    size_t count = 0, bytes = 0;
    int64_t params = 0;
  };
  std::map<std::string, Sum> by_packing;
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  int64_t ternary_params = 0, dense_params = 0;
  for (const auto& t : m.tensors) {
    auto& s = by_packing[std::string(packing_name(t.packing))];
    ++s.count;
    s.bytes += t.data.size();
    s.params += t.numel();
    (is_ternary(t.packing) ? ternary_params : dense_params) += t.numel();
    if (with_tensors || with_digest) {
      nlohmann::ordered_json e = {{"name", t.name},
                                  {"packing", packing_name(t.packing)},
                                  {"shape", t.shape},
                                  {"bytes", t.data.size()},
                                  {"scales", t.scales.size()}};
      if (with_digest) e["digest"] = content_digest(t);
      list.push_back(std::move(e));
    }
  }
  nlohmann::ordered_json packings = nlohmann::ordered_json::object();
  for (const auto& [name, s] : by_packing)
    packings[name] = {{"tensors", s.count}, {"params", s.params}, {"bytes", s.bytes}};
  j["tensors"] = {{"count", m.tensors.size()},
                  {"ternary_params", ternary_params},
                  {"dense_params", dense_params},
                  {"bytes", m.total_bytes()},
                  {"by_packing", packings}};
  if (with_tensors || with_digest) j["tensors"]["list"] = list;

  nlohmann::ordered_json tj;
  if (m.tokenizer.empty()) {
    tj["kind"] = "none";
  } else {
    tj["kind"] = m.tokenizer.hf_json.empty() ? "gguf-vocab" : "tokenizer.json";
    Tokenizer tok = Tokenizer::from_data(m.tokenizer);
    tj["vocab"] = tok.n_vocab();
    auto special = [&](int32_t id) -> nlohmann::ordered_json {
      if (id < 0) return nullptr;
      return {{"id", id}, {"text", tok.token_text(id)}};
    };
    tj["bos"] = special(tok.bos_id());
    tj["eos"] = special(tok.eos_id());
    tj["eot"] = special(tok.eot_id());
    if (!m.tokenizer.hf_json.empty()) {
      tj["json_bytes"] = m.tokenizer.hf_json.size();
    } else {
      tj["model"] = m.tokenizer.model;
      tj["pre"] = m.tokenizer.pre;
      tj["merges"] = m.tokenizer.merges.size();
    }
  }
  j["tokenizer"] = tj;
  j["chat_template"] = m.chat_template.empty()
                           ? nlohmann::ordered_json{{"source", "none (the default template applies)"}}
                           : nlohmann::ordered_json{{"source", "model"}, {"bytes", m.chat_template.size()}};
  if (!m.extra.empty()) j["metadata"] = m.extra;
  return j;
}

void print_text(const nlohmann::ordered_json& j) {
  std::printf("file:      %s\n", j["path"].get<std::string>().c_str());
  std::printf("format:    %s", j["format"].get<std::string>().c_str());
  if (j.contains("file_bytes")) std::printf(" (%s)", human_bytes(j["file_bytes"].get<double>()).c_str());
  std::printf("\n\nconfig\n");
  for (const auto& [k, v] : j["config"].items()) std::printf("  %-24s %s\n", k.c_str(), v.dump().c_str());
  const auto& t = j["tensors"];
  std::printf("\ntensors   %zu (%s ternary params, %s dense params, %s)\n", t["count"].get<size_t>(),
              fmt::format("{:L}", t["ternary_params"].get<int64_t>()).c_str(),
              fmt::format("{:L}", t["dense_params"].get<int64_t>()).c_str(),
              human_bytes(t["bytes"].get<double>()).c_str());
  for (const auto& [name, s] : t["by_packing"].items()) {
    std::printf("  %-20s %5zu tensors %14s params %12s\n", name.c_str(), s["tensors"].get<size_t>(),
                fmt::format("{}", s["params"].get<int64_t>()).c_str(), human_bytes(s["bytes"].get<double>()).c_str());
  }
  if (t.contains("list")) {
    for (const auto& e : t["list"]) {
      std::string shape;
      for (const auto& d : e["shape"]) shape += (shape.empty() ? "" : "x") + d.dump();
      std::printf("    %-36s %-18s %-14s %10s %s\n", e["name"].get<std::string>().c_str(),
                  e["packing"].get<std::string>().c_str(), shape.c_str(), human_bytes(e["bytes"].get<double>()).c_str(),
                  e.value("digest", "").c_str());
    }
  }
  const auto& tk = j["tokenizer"];
  std::printf("\ntokenizer %s", tk["kind"].get<std::string>().c_str());
  if (tk.contains("vocab")) {
    std::printf(", %d tokens", tk["vocab"].get<int>());
    for (const char* k : {"bos", "eos", "eot"}) {
      if (!tk[k].is_null())
        std::printf(", %s %d %s", k, tk[k]["id"].get<int>(), tk[k]["text"].get<std::string>().c_str());
    }
  }
  std::printf("\nchat template: %s", j["chat_template"]["source"].get<std::string>().c_str());
  if (j["chat_template"].contains("bytes")) std::printf(" (%zu bytes)", j["chat_template"]["bytes"].get<size_t>());
  std::printf("\n");
}

int run_info(const InfoOptions& o) {
  auto model = load_model(o.path);
  auto j = describe(*model, o.tensors, o.digest);
  if (o.json) {
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    print_text(j);
  }
  return 0;
}

const CommandRegistrar reg{Command{
    "info", "Show a model's config, tensors, tokenizer and chat template",
    [](CLI::App& app) {
      auto o = std::make_shared<InfoOptions>();
      app.add_option("file", o->path, "model file or Hugging Face folder")->required();
      app.add_flag("--json", o->json, "print JSON");
      app.add_flag("--tensors", o->tensors, "list every tensor");
      app.add_flag("--digest", o->digest,
                   "list every tensor with a digest of its codes and scales (or values), whatever the packing");
      return [o] { return run_info(*o); };
    },
    20}};

}  // namespace
}  // namespace onebit::cli
