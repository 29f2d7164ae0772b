// `1bit chat`: an interactive conversation on stdin/stdout.
//
//   1bit chat -m model.h1b [--system "You are terse."] [--temp 0.7]
//
// Each line read from stdin is one user message. The whole conversation is rendered with the
// model's chat template (or default_chat_template() when the model ships none) every turn, but the
// KV cache is kept between turns: the new prompt's longest common token prefix with what the
// session already holds is kept (Session::truncate) and only the rest is prefilled. Answers are
// streamed to stdout (StreamDecoder keeps UTF-8 characters whole), one answer per turn followed by
// a newline; prompts, notes and errors go to stderr.
//
// Commands: /reset clears the history and the cache, /exit (or end of input) quits. Ctrl-C stops
// the answer being generated; at the prompt, a first Ctrl-C prints a hint and a second one exits.
// An answer ends on an end-of-sequence / end-of-turn id (the tokenizer's, the config's, and the
// special token the chat template puts after an assistant message), after -n tokens, or when the
// context is full.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/command.h"
#include "core/base/error.h"
#include "core/formats/model_loader.h"
#include "core/sampler/sampler.h"
#include "core/template/chat_template.h"
#include "core/tokenizer/tokenizer.h"
#include "engine/engine.h"
#include "engine/stop_tokens.h"

namespace onebit::cli {
namespace {

volatile std::sig_atomic_t g_interrupts = 0;

extern "C" void on_sigint(int) { g_interrupts = g_interrupts + 1; }

// Installs the SIGINT handler without SA_RESTART (so a blocked read() returns EINTR) and puts the
// previous one back on destruction.
class SigintGuard {
 public:
  SigintGuard() {
    struct sigaction sa = {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(SIGINT, &sa, &old_);
  }
  ~SigintGuard() { sigaction(SIGINT, &old_, nullptr); }
  SigintGuard(const SigintGuard&) = delete;
  SigintGuard& operator=(const SigintGuard&) = delete;

 private:
  struct sigaction old_ = {};
};

struct ChatOptions {
  std::string model;
  std::string system;
  int n_predict = -1;
  std::optional<uint64_t> seed;
  float temp = 0.8f;
  float top_p = 0.95f;
  int top_k = 40;
  float repeat_penalty = 1.0f;
  int64_t ctx = 0;
  EngineFlags engine;  // -t, --lm-head, --device, --kv
  bool verbose = false;
  bool no_cache = false;
};

// Lines from fd 0 with read(2), so that Ctrl-C (EINTR) can be told apart from end of input.
class LineReader {
 public:
  enum class Status { kLine, kEof, kInterrupted };
  Status next(std::string* line) {
    for (;;) {
      if (size_t nl = buf_.find('\n'); nl != std::string::npos) {
        *line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        if (!line->empty() && line->back() == '\r') line->pop_back();
        return Status::kLine;
      }
      if (eof_) {
        if (buf_.empty()) return Status::kEof;
        *line = std::move(buf_);
        buf_.clear();
        return Status::kLine;
      }
      char tmp[4096];
      const ssize_t n = ::read(STDIN_FILENO, tmp, sizeof tmp);
      if (n > 0) {
        buf_.append(tmp, static_cast<size_t>(n));
      } else if (n == 0) {
        eof_ = true;
      } else if (errno == EINTR) {
        buf_.clear();  // drop the half-typed line, as a shell does
        return Status::kInterrupted;
      } else {
        eof_ = true;
      }
    }
  }

 private:
  std::string buf_;
  bool eof_ = false;
};

void emit(const std::string& s) {
  if (s.empty()) return;
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

int run_chat(const ChatOptions& o) {
  if (o.n_predict < -1) fail("-n must be >= -1, got {}", o.n_predict);
  const std::string path = o.model.empty() ? default_model_path() : o.model;
  std::unique_ptr<Model> model = load_model(path);
  if (model->tokenizer.empty()) fail("{}: the model carries no tokenizer", path);
  const Tokenizer tok = Tokenizer::from_data(model->tokenizer);
  const ChatTemplate tmpl =
      ChatTemplate::parse(model->chat_template.empty() ? default_chat_template() : model->chat_template);
  const int32_t bos = tok.bos_id();
  const std::string bos_text = bos >= 0 ? tok.token_text(bos) : "";
  const std::string eos_text = tok.eos_id() >= 0 ? tok.token_text(tok.eos_id()) : "";

  EngineOptions eo = engine_options(o.engine);
  eo.n_ctx = o.ctx;
  auto engine = Engine::load(*model, eo);
  auto session = engine->new_session();

  SamplingParams sp;
  sp.temperature = o.temp;
  sp.top_p = o.top_p;
  sp.top_k = o.top_k;
  sp.repetition_penalty = o.repeat_penalty;
  sp.seed = o.seed;
  Sampler sampler(sp, engine->n_vocab());

  const std::vector<int32_t> stop_ids = stop_token_ids(*model, tok, &tmpl);
  auto is_stop = [&](int32_t id) { return std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end(); };

  const bool interactive = ::isatty(STDIN_FILENO) == 1;
  if (interactive)
    std::fprintf(stderr, "1bit chat: %s (%lld-token context). /reset clears the conversation, /exit quits; "
                 "Ctrl-C stops an answer.\n", path.c_str(), static_cast<long long>(engine->n_ctx()));

  std::vector<ChatMessage> messages;
  auto reset_history = [&] {
    messages.clear();
    if (!o.system.empty()) messages.push_back({"system", o.system});
  };
  reset_history();
  std::vector<int32_t> cached;  // the tokens whose keys/values the session holds (n_past of them)

  SigintGuard sigint;
  LineReader reader;
  std::string line;
  for (;;) {
    if (interactive) std::fprintf(stderr, "> ");
    const LineReader::Status st = reader.next(&line);
    if (st == LineReader::Status::kEof) break;
    if (st == LineReader::Status::kInterrupted) {
      if (g_interrupts >= 2) {
        std::fprintf(stderr, "\n");
        break;
      }
      std::fprintf(stderr, "\n(Ctrl-C again or /exit to quit)\n");
      continue;
    }
    g_interrupts = 0;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      reset_history();
      session->reset();
      cached.clear();
      if (interactive || o.verbose) std::fprintf(stderr, "[conversation cleared]\n");
      continue;
    }
    if (line.empty()) continue;

    messages.push_back({"user", line});
    std::vector<int32_t> ids = tok.encode(tmpl.apply(messages, true, bos_text, eos_text), /*add_special_tokens=*/false);
    if (model->tokenizer.add_bos && bos >= 0 && (ids.empty() || ids.front() != bos)) ids.insert(ids.begin(), bos);
    if (ids.empty()) fail("the chat template rendered an empty prompt");
    if (static_cast<int64_t>(ids.size()) >= engine->n_ctx()) {
      std::fprintf(stderr, "1bit chat: error: the conversation has %zu tokens but the context is %lld; "
                   "/reset to start over (or raise --ctx)\n", ids.size(), static_cast<long long>(engine->n_ctx()));
      messages.pop_back();
      continue;
    }

    // Keep the common prefix (at least one token must be fed to get logits).
    size_t keep = o.no_cache ? 0 : std::min(common_prefix(cached, ids), ids.size() - 1);
    session->truncate(static_cast<int64_t>(keep));
    cached.resize(keep);
    const auto t_prompt = std::chrono::steady_clock::now();
    // decode_sample draws each token where the logits are (on the GPU with --device cuda).
    int32_t next = session->decode_sample(std::span(ids).subspan(keep), sampler, ids);
    cached = ids;
    const double prompt_s = seconds_since(t_prompt);

    StreamDecoder dec(tok, /*skip_special=*/true);
    std::string answer;
    int generated = 0;
    const char* why = "token limit";
    // g_interrupts was cleared when the line was read: a Ctrl-C during the prefill stops too.
    const auto t_gen = std::chrono::steady_clock::now();
    for (;;) {
      if (g_interrupts > 0) {
        why = "interrupted";
        break;
      }
      if (is_stop(next)) {
        why = "end of turn";
        break;
      }
      ++generated;
      std::string piece = dec.push(next);
      answer += piece;
      emit(piece);
      if (o.n_predict >= 0 && generated >= o.n_predict) break;
      if (session->n_past() >= session->n_ctx()) {
        why = "context full";
        break;
      }
      const int32_t fed = next;
      cached.push_back(fed);
      next = session->decode_sample(std::span(&fed, 1), sampler, cached);
    }
    const std::string tail = dec.flush();
    answer += tail;
    emit(tail);
    emit("\n");
    if (g_interrupts > 0) {
      std::fprintf(stderr, "[answer stopped]\n");
      g_interrupts = 0;
    }
    messages.push_back({"assistant", answer});
    if (o.verbose) {
      const double gen_s = seconds_since(t_gen);
      std::fprintf(stderr,
                   "1bit chat: prompt %zu tokens, reused %zu, prefilled %zu in %.3f s; generated %d tokens in "
                   "%.3f s (%.1f tok/s); stopped: %s\n",
                   ids.size(), keep, ids.size() - keep, prompt_s, generated, gen_s,
                   gen_s > 0 ? generated / gen_s : 0.0, why);
    }
  }
  return 0;
}

const CommandRegistrar kChat{{
    "chat",
    "Interactive chat on stdin/stdout with the model's chat template",
    [](CLI::App& app) -> std::function<int()> {
      auto o = std::make_shared<ChatOptions>();
      app.footer(
          "One line of input = one user message. /reset clears the conversation, /exit or end of input\n"
          "quits. Ctrl-C stops the current answer; at the prompt, press it twice to quit. The KV cache is\n"
          "kept between turns: only the part of the re-rendered conversation that differs is prefilled.");
      app.add_option("-m,--model", o->model, "Model file or folder (default: the model in models/ or $ONEBIT_MODEL)");
      app.add_option("--system", o->system, "System message");
      app.add_option("-n,--n-predict", o->n_predict, "Max tokens per answer (-1 = until end of turn or full context)")
          ->capture_default_str();
      app.add_option_function<uint64_t>("--seed", [o](const uint64_t& s) { o->seed = s; }, "Sampling seed (default: random)");
      app.add_option("--temp", o->temp, "Temperature (0 = greedy)")->capture_default_str();
      app.add_option("--top-p", o->top_p, "Nucleus sampling mass (1 = off)")->capture_default_str();
      app.add_option("--top-k", o->top_k, "Keep the k most likely tokens (0 = off)")->capture_default_str();
      app.add_option("--repeat-penalty", o->repeat_penalty, "Repetition penalty (1 = off)")->capture_default_str();
      app.add_option("--ctx", o->ctx, "Context length in tokens (0 = model maximum, at most 4096)")->capture_default_str();
      add_engine_flags(app, o->engine);
      app.add_flag("-v,--verbose", o->verbose, "Print per-turn prompt reuse and speed to stderr");
      app.add_flag("--no-cache", o->no_cache, "Re-prefill the whole conversation every turn (for testing)");
      return [o] { return run_chat(*o); };
    },
    25,
}};

}  // namespace
}  // namespace onebit::cli
