// `1bit serve`: an OpenAI-compatible HTTP server (docs/server.md).
//
//   1bit serve [-m MODEL] [--host 127.0.0.1] [--port 8180] [--api-key KEY] [--ctx N] [--parallel N]
//              [--kv-block N] [--kv-blocks N] [--max-queue N] [--timeout S] [--cors-origin ORIGIN]...
//              [-t THREADS] [--device cpu|cuda] [--lm-head bf16|int8] [--kv f32|f16|q8|q4r]
//              [--http-threads N]
//
// Logs go to stderr; "listening on http://HOST:PORT" is printed there once the socket is bound
// (with --port 0, PORT is the one the system picked). SIGINT/SIGTERM stop it gracefully.
#include <memory>

#include "cli/command.h"
#include "server/server.h"

namespace onebit::cli {
namespace {

const CommandRegistrar kServe{{
    "serve",
    "Serve the model over an OpenAI-compatible HTTP API",
    [](CLI::App& app) -> std::function<int()> {
      auto o = std::make_shared<server::ServerOptions>();
      app.add_option("-m,--model", o->model_path, "Model file or folder (default: the model in models/ or $ONEBIT_MODEL)");
      app.add_option("--host", o->host, "Address to bind")->capture_default_str();
      app.add_option("--port", o->port, "TCP port (0 = any free port)")->capture_default_str();
      app.add_option("--api-key", o->api_key, "Require 'Authorization: Bearer KEY' on every route but /health");
      app.add_option("--ctx", o->ctx, "Context length per request (0 = model maximum, at most 4096)")->capture_default_str();
      app.add_option("--parallel", o->parallel, "Requests generating at once")->capture_default_str();
      app.add_option("--kv-block", o->kv_block, "Positions per KV cache block (0 = the whole context; CPU only)")
          ->capture_default_str();
      app.add_option("--kv-blocks", o->kv_blocks,
                     "KV cache blocks shared by all requests (0 = --parallel x --ctx positions; CPU only)")
          ->capture_default_str();
      app.add_option("-t,--threads", o->threads, "Engine CPU threads (0 = all)")->capture_default_str();
      app.add_option("--device", o->device, "cpu, or cuda (GPU 0)")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
      app.add_option("--lm-head", o->lm_head, "LM head: bf16 (as stored in the file) or int8 (per-row int8 copy, half the bytes)")
          ->check(CLI::IsMember({"bf16", "int8"}))
          ->capture_default_str();
      add_kv_flag(app, o->kv);
      app.add_option("--http-threads", o->http_threads, "HTTP threads")->capture_default_str();
      app.add_option("--max-queue", o->max_queue,
                     "Requests that may wait for a free slot; more get 429 (0 = 64 x --parallel)")->capture_default_str();
      app.add_option("--timeout", o->timeout_s,
                     "Seconds a request's header and body may take to arrive (also the keep-alive idle limit)")
          ->capture_default_str();
      app.add_option("--cors-origin", o->cors_origins,
                     "Allow cross-origin requests from ORIGIN (repeatable; '*' = any); none by default");
      return [o] {
        if (o->model_path.empty()) o->model_path = default_model_path();
        return server::run_server(*o);
      };
    },
    30,
}};

}  // namespace
}  // namespace onebit::cli
