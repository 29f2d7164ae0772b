// `1bit ppl`: perplexity of a model over a text file.
//
//   1bit ppl -m model.h1b -f wiki.test.raw [--ctx 512] [--json]
//
// Windows (the exact definition; docs and --help repeat it):
//  - The whole file is tokenized once, without special tokens (add_special_tokens = false).
//  - The tokens are cut into consecutive, non-overlapping windows of N tokens, N = --ctx (default
//    min(512, model context)). The last window holds what is left and may be shorter; nothing is
//    dropped.
//  - Each window is a fresh sequence. When the model has a BOS token, the sequence BOS + window[:-1]
//    is fed (N positions) and all N window tokens are predicted. Without BOS, the
//    sequence is the N tokens and tokens 1..N-1 are predicted from their prefixes.
//  - Each window runs as one batched prefill (decode with all_logits) and every predicted token's
//    negative log-likelihood is -log_softmax(logits)[token], computed in double precision.
//  - nll = mean over all predicted tokens of all windows; ppl = exp(nll).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "core/base/error.h"
#include "core/formats/model_loader.h"
#include "core/tokenizer/tokenizer.h"
#include "engine/engine.h"

namespace onebit::cli {
namespace {

struct PplOptions {
  std::string model;
  std::string file;
  int64_t ctx = 0;
  EngineFlags engine;  // -t, --lm-head, --device, --kv
  bool json = false;
};

// -log softmax(logits)[target] in double precision. Throws on non-finite logits (a broken model
// must not print a plausible-looking perplexity).
double token_nll(std::span<const float> logits, int32_t target) {
  double mx = -std::numeric_limits<double>::infinity();
  for (float v : logits) {
    if (std::isnan(v) || v == std::numeric_limits<float>::infinity()) fail("the model produced a non-finite logit ({})", v);
    mx = std::max(mx, static_cast<double>(v));
  }
  if (!std::isfinite(mx)) fail("the model produced no finite logit");
  double sum = 0.0;
  for (float v : logits) sum += std::exp(static_cast<double>(v) - mx);
  return mx + std::log(sum) - static_cast<double>(logits[static_cast<size_t>(target)]);
}

int run_ppl(const PplOptions& o) {
  if (o.file.empty()) fail("give the text file with -f FILE");
  if (o.ctx < 0) fail("--ctx must be >= 0, got {}", o.ctx);
  const std::string path = o.model.empty() ? default_model_path() : o.model;
  const std::string text = read_input(o.file);

  std::unique_ptr<Model> model = load_model(path);
  if (model->tokenizer.empty()) fail("{}: the model carries no tokenizer", path);
  const Tokenizer tok = Tokenizer::from_data(model->tokenizer);
  int32_t bos = tok.bos_id();
  if (bos < 0 && model->config.bos_token_id >= 0) bos = static_cast<int32_t>(model->config.bos_token_id);
  const int64_t extra = bos >= 0 ? 1 : 0;

  const std::vector<int32_t> ids = tok.encode(text, /*add_special_tokens=*/false);
  const int64_t max_pos = model->config.max_position_embeddings > 0 ? model->config.max_position_embeddings : 4096;
  // The last token of a sequence is only a target, never fed: a window needs window + extra - 1
  // positions.
  const int64_t window = o.ctx > 0 ? o.ctx : std::min<int64_t>(512, max_pos + 1 - extra);
  if (window + extra - 1 > max_pos)
    fail("a window of {} tokens{} needs {} positions but the model's context is {} (lower --ctx)", window,
         extra ? " after BOS" : "", window + extra - 1, max_pos);
  const int64_t n_tok = static_cast<int64_t>(ids.size());
  if (n_tok - (extra ? 0 : 1) < 1)
    fail("{}: {} tokens are too few to score (need at least {})", o.file, n_tok, extra ? 1 : 2);

  EngineOptions eo = engine_options(o.engine);
  eo.n_ctx = window + extra - 1;
  auto engine = Engine::load(*model, eo);
  auto session = engine->new_session();
  const int64_t vocab = engine->n_vocab();

  double nll_sum = 0.0;
  int64_t scored = 0, windows = 0, evaluated = 0;
  std::vector<int32_t> seq;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t b = 0; b < n_tok; b += window) {
    const int64_t len = std::min(window, n_tok - b);
    if (len + extra < 2) break;  // a lone trailing token without BOS predicts nothing
    seq.clear();
    if (extra) seq.push_back(bos);
    seq.insert(seq.end(), ids.begin() + b, ids.begin() + b + len);
    session->reset();
    std::span<const float> logits = session->decode(std::span(seq).first(seq.size() - 1), /*all_logits=*/true);
    // Row i of the logits predicts seq[i + 1].
    for (size_t i = 0; i + 1 < seq.size(); ++i) {
      nll_sum += token_nll(logits.subspan(i * static_cast<size_t>(vocab), static_cast<size_t>(vocab)), seq[i + 1]);
      ++scored;
    }
    evaluated += static_cast<int64_t>(seq.size()) - 1;
    ++windows;
    if (!o.json && stderr_is_tty())
      std::fprintf(stderr, "\r1bit ppl: window %lld, running ppl %.4f", static_cast<long long>(windows),
                   std::exp(nll_sum / static_cast<double>(scored)));
  }
  const double secs = seconds_since(t0);
  if (!o.json && stderr_is_tty()) std::fprintf(stderr, "\n");
  const double nll = nll_sum / static_cast<double>(scored);
  const double ppl = std::exp(nll);
  const double tps = secs > 0 ? static_cast<double>(evaluated) / secs : 0.0;

  if (o.json) {
    nlohmann::ordered_json j;
    j["ppl"] = ppl;
    j["nll"] = nll;
    j["tokens"] = scored;
    j["windows"] = windows;
    j["ctx"] = window;
    j["bos"] = extra != 0;
    j["tokens_per_s"] = tps;
    j["kv"] = o.engine.kv;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf(ppl < 1e6 ? "ppl %.4f  (nll %.6f)\n" : "ppl %.6e  (nll %.6f)\n", ppl, nll);
    std::printf("tokens scored %lld in %lld windows of %lld tokens%s\n", static_cast<long long>(scored),
                static_cast<long long>(windows), static_cast<long long>(window), extra ? " (+BOS)" : "");
    std::printf("speed %.1f tokens/s (%lld tokens evaluated in %.2f s, %s backend, %s KV cache)\n", tps,
                static_cast<long long>(evaluated), secs, std::string(engine->backend_name()).c_str(),
                o.engine.kv.c_str());
  }
  return 0;
}

const CommandRegistrar kPpl{{
    "ppl",
    "Perplexity of a model over a text file",
    [](CLI::App& app) -> std::function<int()> {
      auto o = std::make_shared<PplOptions>();
      app.footer(
          "Windows: the file is tokenized once without special tokens and cut into consecutive,\n"
          "non-overlapping windows of N = --ctx tokens (the last one may be shorter). Each window is a\n"
          "fresh sequence: with a BOS token it is BOS + N tokens and all N tokens are predicted; without\n"
          "BOS, tokens 1..N-1 are predicted from their prefixes. ppl = exp(mean NLL over all predicted\n"
          "tokens), log-softmax in double precision.");
      app.add_option("-m,--model", o->model, "Model file or folder (default: the model in models/ or $ONEBIT_MODEL)");
      app.add_option("-f,--file", o->file, "Text file to score ('-' = stdin)")->required();
      app.add_option("--ctx", o->ctx,
                     "Tokens per window (0 = min(512, model context))")
          ->capture_default_str();
      add_engine_flags(app, o->engine);
      app.add_flag("--json", o->json, "Print {\"ppl\",\"nll\",\"tokens\",\"windows\",\"ctx\",...} as JSON");
      return [o] { return run_ppl(*o); };
    },
    40,
}};

}  // namespace
}  // namespace onebit::cli
