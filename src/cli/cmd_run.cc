// `1bit run`: generate text from a prompt, streaming it to stdout as tokens are produced.
//
//   1bit run -m model.h1b -p "The capital of France is" -n 32 --temp 0
//
// The prompt is tokenized with the model's tokenizer (BOS added when the tokenizer says so), run
// through the engine as one batched prefill, then tokens are sampled one at a time with the
// sampler chain and decoded incrementally (StreamDecoder keeps UTF-8 characters whole).
// Generation stops after -n tokens, on an end-of-sequence / end-of-turn id, or when the context
// is full. --verbose prints prompt and generation speed to stderr.
#include <algorithm>
#include <chrono>
#include <memory>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "cli/command.h"
#include "core/base/error.h"
#include "core/formats/model_loader.h"
#include "core/sampler/sampler.h"
#include "core/tokenizer/tokenizer.h"
#include "engine/engine.h"
#include "engine/stop_tokens.h"

namespace onebit::cli {
namespace {

struct RunOptions {
  std::string model;
  std::string prompt;
  std::string file;
  int n_predict = 128;
  std::optional<uint64_t> seed;
  float temp = 0.8f;
  float top_p = 0.95f;
  int top_k = 40;
  int64_t ctx = 0;
  EngineFlags engine;  // -t, --lm-head, --device, --kv
  bool verbose = false;
};

void emit(const std::string& s) {
  if (s.empty()) return;
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

int run(const RunOptions& o) {
  if (o.prompt.empty() == o.file.empty()) fail("give exactly one of -p PROMPT or -f FILE");
  if (o.n_predict < 0) fail("-n must be >= 0, got {}", o.n_predict);
  const std::string text = o.file.empty() ? o.prompt : read_input(o.file);
  const std::string path = o.model.empty() ? default_model_path() : o.model;

  auto t_load = std::chrono::steady_clock::now();
  std::unique_ptr<Model> model = load_model(path);
  if (model->tokenizer.empty()) fail("{}: the model carries no tokenizer", path);
  const Tokenizer tok = Tokenizer::from_data(model->tokenizer);

  std::vector<int32_t> ids = tok.encode(text, /*add_special_tokens=*/true);
  const int32_t bos = tok.bos_id();
  if (model->tokenizer.add_bos && bos >= 0 && (ids.empty() || ids.front() != bos)) ids.insert(ids.begin(), bos);
  if (ids.empty()) fail("the prompt is empty after tokenization");

  EngineOptions eo = engine_options(o.engine);
  eo.n_ctx = o.ctx;
  auto engine = Engine::load(*model, eo);
  if (static_cast<int64_t>(ids.size()) > engine->n_ctx())
    fail("prompt of {} tokens does not fit in the context of {} tokens (raise --ctx)", ids.size(), engine->n_ctx());
  auto session = engine->new_session();

  SamplingParams sp;
  sp.temperature = o.temp;
  sp.top_p = o.top_p;
  sp.top_k = o.top_k;
  sp.seed = o.seed;
  Sampler sampler(sp, engine->n_vocab());

  const std::vector<int32_t> stop_ids = stop_token_ids(*model, tok, nullptr);
  auto is_stop = [&](int32_t id) { return std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end(); };

  if (o.verbose)
    std::fprintf(stderr, "1bit run: %s loaded in %.2f s (%s backend, %d-token context, seed %llu)\n", path.c_str(),
                 seconds_since(t_load), std::string(engine->backend_name()).c_str(),
                 static_cast<int>(engine->n_ctx()), static_cast<unsigned long long>(sampler.seed()));

  // decode_sample: the next token is drawn where the logits are (on the GPU with --device cuda, so
  // only its id comes back), with the sampler's own random numbers: the same stream as on the CPU.
  auto t_prompt = std::chrono::steady_clock::now();
  int32_t next = -1;
  if (o.n_predict > 0)
    next = session->decode_sample(ids, sampler, ids);
  else
    session->decode(ids);
  const double prompt_s = seconds_since(t_prompt);

  StreamDecoder dec(tok, /*skip_special=*/true);
  std::vector<int32_t> history = ids;
  int generated = 0;
  const char* why = "token limit";
  auto t_gen = std::chrono::steady_clock::now();
  while (generated < o.n_predict) {
    if (is_stop(next)) {
      why = "end of sequence";
      break;
    }
    history.push_back(next);
    ++generated;
    emit(dec.push(next));
    if (generated == o.n_predict) break;
    if (session->n_past() >= session->n_ctx()) {
      why = "context full";
      break;
    }
    const int32_t fed = next;
    next = session->decode_sample(std::span(&fed, 1), sampler, history);
  }
  emit(dec.flush());
  emit("\n");
  const double gen_s = seconds_since(t_gen);
  if (o.verbose) {
    std::fprintf(stderr, "1bit run: prompt %zu tokens in %.3f s (%.1f tok/s); generated %d tokens in %.3f s (%.1f tok/s); stopped: %s\n",
                 ids.size(), prompt_s, static_cast<double>(ids.size()) / prompt_s, generated, gen_s,
                 gen_s > 0 ? generated / gen_s : 0.0, why);
  }
  return 0;
}

const CommandRegistrar kRun{{
    "run",
    "Generate text from a prompt (streams to stdout)",
    [](CLI::App& app) -> std::function<int()> {
      auto o = std::make_shared<RunOptions>();
      app.add_option("-m,--model", o->model, "Model file or folder (default: the model in models/ or $ONEBIT_MODEL)");
      app.add_option("-p,--prompt", o->prompt, "Prompt text");
      app.add_option("-f,--file", o->file, "Read the prompt from a file ('-' = stdin)");
      app.add_option("-n,--n-predict", o->n_predict, "Tokens to generate")->capture_default_str();
      app.add_option_function<uint64_t>("--seed", [o](const uint64_t& s) { o->seed = s; }, "Sampling seed (default: random)");
      app.add_option("--temp", o->temp, "Temperature (0 = greedy)")->capture_default_str();
      app.add_option("--top-p", o->top_p, "Nucleus sampling mass (1 = off)")->capture_default_str();
      app.add_option("--top-k", o->top_k, "Keep the k most likely tokens (0 = off)")->capture_default_str();
      app.add_option("--ctx", o->ctx, "Context length in tokens (0 = model maximum, at most 4096)")->capture_default_str();
      add_engine_flags(app, o->engine);
      app.add_flag("-v,--verbose", o->verbose, "Print timings to stderr");
      return [o] { return run(*o); };
    },
    20,
}};

}  // namespace
}  // namespace onebit::cli
