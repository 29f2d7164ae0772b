// `1bit tokenize`: text -> token ids (one JSON array on one line), or ids -> text with --decode.
// The tokenizer comes from a tokenizer.json, a folder holding one, or any model file the loader reads.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <string>

#include "cli/command.h"
#include "core/base/error.h"
#include "core/base/mapped_file.h"
#include "core/tokenizer/tokenizer.h"

#if __has_include("core/formats/model_loader.h")
#include "core/formats/model_loader.h"
#define ONEBIT_HAVE_MODEL_LOADER 1
#endif

namespace onebit::cli {
namespace {


#ifdef ONEBIT_HAVE_MODEL_LOADER
template <typename T>
const Model& as_model(const T& m) {
  if constexpr (requires { *m; }) {
    return *m;
  } else {
    return m;
  }
}
#endif

TokenizerData load_tokenizer_data(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  TokenizerData d;
  if (fs::is_regular_file(path, ec) && fs::path(path).extension() == ".json") {
    d.hf_json = read_text_file(path);
    return d;
  }
  if (fs::is_directory(path, ec) && fs::is_regular_file(fs::path(path) / "tokenizer.json", ec)) {
    d.hf_json = read_text_file((fs::path(path) / "tokenizer.json").string());
    return d;
  }
#ifdef ONEBIT_HAVE_MODEL_LOADER
  auto model = load_model(path);
  return as_model(model).tokenizer;
#else
  fail("{}: expected a tokenizer.json file or a folder containing one", path);
#endif
}

void print_ids(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  s += "]\n";
  std::fwrite(s.data(), 1, s.size(), stdout);
}

struct Options {
  std::string model, file;
  bool decode = false, add_special = false, no_parse_special = false, skip_special = false, jsonl = false,
       via_gguf = false;
};

int run(const Options& o) {
  const std::string path = o.model.empty() ? default_model_path() : o.model;
  TokenizerData data = load_tokenizer_data(path);
  if (o.via_gguf) {
    if (data.hf_json.empty()) fail("--via-gguf needs a tokenizer.json, {} holds a GGUF vocabulary already", path);
    data = gguf_vocab_from_hf_json(data.hf_json);
  }
  const Tokenizer tok = Tokenizer::from_data(data);
  const std::string input = read_input(o.file);
  using json = nlohmann::json;

  auto parse_ids = [](const json& j, const std::string& where) {
    if (!j.is_array()) fail("{}: expected a JSON array of token ids", where);
    std::vector<int32_t> ids;
    for (const json& v : j) {
      if (!v.is_number_integer()) fail("{}: expected integer token ids, got {}", where, v.dump());
      const int64_t x = v.get<int64_t>();
      if (x < 0 || x > INT32_MAX) fail("{}: token id {} is out of range", where, x);
      ids.push_back(int32_t(x));
    }
    return ids;
  };
  const std::string where = o.file.empty() ? "stdin" : o.file;

  if (o.jsonl) {  // one JSON value per line in, one result per line out (used by the e2e tests)
    size_t line_no = 0, pos = 0;
    while (pos < input.size()) {
      size_t end = input.find('\n', pos);
      if (end == std::string::npos) end = input.size();
      const std::string line = input.substr(pos, end - pos);
      pos = end + 1;
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json j = json::parse(line, nullptr, false);
      const std::string here = fmt::format("{} line {}", where, line_no);
      if (j.is_discarded()) fail("{}: not valid JSON", here);
      if (o.decode) {
        std::string text = tok.decode(parse_ids(j, here), o.skip_special);
        std::string s = json(text).dump() + "\n";
        std::fwrite(s.data(), 1, s.size(), stdout);
      } else {
        if (!j.is_string()) fail("{}: expected a JSON string", here);
        print_ids(tok.encode(j.get<std::string>(), o.add_special, !o.no_parse_special));
      }
    }
    return 0;
  }
  if (o.decode) {
    json j = json::parse(input, nullptr, false);
    if (j.is_discarded()) fail("{}: not valid JSON", where);
    const std::string text = tok.decode(parse_ids(j, where), o.skip_special);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  }
  print_ids(tok.encode(input, o.add_special, !o.no_parse_special));
  return 0;
}

const CommandRegistrar reg{Command{
    "tokenize", "Text to token ids (JSON array), or ids to text with --decode",
    [](CLI::App& app) -> std::function<int()> {
      auto o = std::make_shared<Options>();
      app.add_option("-m,--model", o->model, "tokenizer.json, a folder with one, or a model file");
      app.add_option("-f,--file", o->file, "input file (default: stdin), read as raw bytes");
      app.add_flag("--decode", o->decode, "input is a JSON array of ids; print the text");
      app.add_flag("--add-special", o->add_special, "add the tokens the tokenizer wraps text with (e.g. BOS)");
      app.add_flag("--no-parse-special", o->no_parse_special, "encode special-token text like <|eot_id|> as plain text");
      app.add_flag("--skip-special", o->skip_special, "with --decode: leave special tokens out");
      app.add_flag("--jsonl", o->jsonl, "batch: each input line is a JSON string (or id array with --decode)");
      app.add_flag("--via-gguf", o->via_gguf, "convert the tokenizer.json to GGUF vocab arrays first (testing)");
      return [o] { return run(*o); };
    },
    40}};

}  // namespace
}  // namespace onebit::cli
