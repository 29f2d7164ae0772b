// `1bit serve`: an OpenAI-compatible HTTP server for one model (docs/server.md).
//
// Threads (docs/DESIGN.md, "Threads and data flow"): an Asio io_context on a small pool of HTTP
// threads accepts connections, parses and validates requests, renders the chat template,
// tokenizes, and hands Jobs to the Scheduler's single engine thread; each connection drains its
// Job's channel into SSE chunks or one JSON reply. The HTTP threads never run the model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace onebit::server {

struct ServerOptions {
  std::string model_path;
  std::string host = "127.0.0.1";
  int port = 8180;           // 0 = any free port (the "listening on" line tells which)
  std::string api_key;       // non-empty: every route but /health needs "Authorization: Bearer KEY"
  int64_t ctx = 0;           // context per request; 0 = model maximum, at most 4096
  int parallel = 4;          // requests generating at once (one Session each)
  int64_t kv_block = 16;     // positions per KV block (paged KV); 0 = the whole context
  int64_t kv_blocks = 0;     // blocks of the shared KV pool; 0 = parallel x blocks per context
  int threads = 0;           // engine CPU threads, 0 = all
  std::string device = "cpu";  // "cpu" or "cuda" (EngineOptions::device)
  std::string lm_head = "bf16";  // "bf16" or "int8" (EngineOptions::lm_head)
  std::string kv = "f32";        // "f32", "f16", "q8" or "q4r" (EngineOptions::kv_dtype)
  int http_threads = 2;
  size_t body_limit = 1u << 20;
  size_t max_queue = 0;      // requests waiting for a session before 429; 0 = 64 x parallel
  double timeout_s = 30;     // a request's header and body must arrive within this; idle keep-alive too
  std::vector<std::string> cors_origins;  // origins allowed by CORS ("*" = any); empty = no CORS headers
};

// Reads the model file, binds the address, then builds the engine while /health answers 503
// (every other route too), serves until SIGINT or SIGTERM, then stops accepting, ends in-flight
// requests and returns 0. Throws Error when the model cannot be read or loaded or the address
// cannot be bound.
int run_server(const ServerOptions& opts);

}  // namespace onebit::server
