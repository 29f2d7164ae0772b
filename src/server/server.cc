#include "server/server.h"

#include <sys/socket.h>

#include <cerrno>

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "core/base/error.h"
#include "core/formats/model_loader.h"
#include "core/template/chat_template.h"
#include "core/tokenizer/tokenizer.h"
#include "engine/engine.h"
#include "engine/stop_tokens.h"
#include "server/api.h"
#include "server/metrics.h"
#include "server/scheduler.h"

namespace onebit::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using nlohmann::json;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;
using asio::use_awaitable;
using namespace asio::experimental::awaitable_operators;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
constexpr const char* kVersion = "0.1.0";  // as `1bit --version`

template <typename... Args>
void log(fmt::format_string<Args...> f, Args&&... args) {
  const auto now = std::chrono::system_clock::now();
  std::string line = fmt::format("[{:%Y-%m-%d %H:%M:%S}] ", fmt::localtime(std::chrono::system_clock::to_time_t(now)));
  line += fmt::format(f, std::forward<Args>(args)...);
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string random_id(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}{:016x}{:08x}", prefix, rng(), static_cast<uint32_t>(rng()));
}

std::vector<int> bytes_of(const std::string& s) {
  std::vector<int> b;
  b.reserve(s.size());
  for (unsigned char c : s) b.push_back(c);
  return b;
}

// What one choice of a generation request has received so far.
struct Choice {
  std::string text;
  std::vector<TokenLogprobs> logprobs;
  std::string finish_reason;
  int64_t prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;
  int64_t text_offset = 0;  // completions' logprobs: bytes of token text reported so far
  bool done = false;
};

class Server {
 public:
  explicit Server(const ServerOptions& o)
      : opts_(o),
        model_(load_model(o.model_path)),
        tok_(load_tokenizer(*model_, o.model_path)),
        tmpl_(ChatTemplate::parse(model_->chat_template.empty() ? default_chat_template() : model_->chat_template)) {
    if (o.parallel < 1) fail("--parallel must be >= 1, got {}", o.parallel);
    if (o.http_threads < 1) fail("--http-threads must be >= 1, got {}", o.http_threads);
    if (o.port < 0 || o.port > 65535) fail("--port must be in [0, 65535], got {}", o.port);
    if (!(o.timeout_s > 0 && o.timeout_s <= 86400)) fail("--timeout must be in (0, 86400] seconds, got {}", o.timeout_s);
    // The engine checks these too, but only once it loads, after the socket is bound; a typo
    // should fail at once.
    const int64_t max_pos = model_->config.max_position_embeddings > 0 ? model_->config.max_position_embeddings : 4096;
    if (o.ctx < 0 || o.ctx > max_pos)
      fail("--ctx must be in [0, {}] (0 = the model's maximum), got {}", max_pos, o.ctx);
    if (o.threads < 0) fail("-t must be >= 0, got {}", o.threads);
    if (o.kv_block < 0) fail("--kv-block must be >= 0 (0 = the whole context), got {}", o.kv_block);
    if (o.kv_blocks < 0) fail("--kv-blocks must be >= 0 (0 = --parallel contexts), got {}", o.kv_blocks);
    for (const std::string& origin : o.cors_origins)
      if (origin.empty()) fail("--cors-origin must not be empty");
    model_id_ = std::filesystem::path(o.model_path).filename().string();
    if (const size_t dot = model_id_.rfind('.'); dot != std::string::npos && dot > 0) model_id_.resize(dot);
    created_ = static_cast<int64_t>(std::time(nullptr));
    bos_text_ = tok_.bos_id() >= 0 ? tok_.token_text(tok_.bos_id()) : "";
    eos_text_ = tok_.eos_id() >= 0 ? tok_.token_text(tok_.eos_id()) : "";
    stop_ids_ = stop_token_ids(*model_, tok_, &tmpl_);
    timeout_ = std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(o.timeout_s));
  }

  int run() {
    asio::io_context ioc(opts_.http_threads);
    tcp::acceptor acceptor(ioc);
    boost::system::error_code ec;
    const auto addr = asio::ip::make_address(opts_.host, ec);
    if (ec) fail("--host: '{}' is not an IP address", opts_.host);
    const tcp::endpoint ep(addr, static_cast<unsigned short>(opts_.port));
    acceptor.open(ep.protocol());
    acceptor.set_option(asio::socket_base::reuse_address(true));
    acceptor.bind(ep, ec);
    if (ec) fail("cannot bind {}:{}: {}", opts_.host, opts_.port, ec.message());
    acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) fail("cannot listen on {}:{}: {}", opts_.host, opts_.port, ec.message());

    asio::signal_set signals(ioc, SIGINT, SIGTERM);
    signals.async_wait([&](const boost::system::error_code& e, int sig) {
      if (e) return;
      log("signal {}: stopping (no new connections; in-flight requests are ended)", sig);
      stopping_ = true;
      acceptor.close();
      if (loaded_.load(std::memory_order_acquire)) sched_->shutdown();
      asio::co_spawn(ioc, drain_then_stop(ioc), asio::detached);
    });
    asio::co_spawn(ioc, accept_loop(acceptor), asio::detached);

    std::fprintf(stderr, "listening on http://%s:%d\n", opts_.host.c_str(), static_cast<int>(acceptor.local_endpoint().port()));
    std::fflush(stderr);

    // The engine is built (weights repacked, KV caches allocated) while the socket already
    // answers: /health says 503 until it is ready.
    std::string load_error;
    std::thread loader([&] {
      try {
        EngineOptions eo;
        eo.n_ctx = opts_.ctx;
        eo.n_threads = opts_.threads;
        eo.device = device_from_name(opts_.device);
        eo.lm_head = lm_head_from_name(opts_.lm_head);
        eo.kv_dtype = kv_dtype_from_name(opts_.kv);
        eo.kv_block = opts_.kv_block;
        auto engine = Engine::load(*model_, eo);
        SchedulerOptions so;
        so.parallel = opts_.parallel;
        so.max_queue = opts_.max_queue;
        so.kv_blocks = opts_.kv_blocks;
        auto sched = std::make_unique<Scheduler>(*engine, tok_, so, &metrics_);
        engine_ = std::move(engine);
        sched_ = std::move(sched);
        loaded_.store(true, std::memory_order_release);
        log("model {} ({} backend, context {} tokens, {} parallel, queue up to {}, KV {}: {})", model_id_,
            engine_->backend_name(), engine_->n_ctx(), opts_.parallel, sched_->max_queue(), opts_.kv,
            sched_->shared_kv()
                ? fmt::format("{} blocks of {} positions, shared, prefix cache", sched_->kv_blocks(),
                              sched_->kv_block_size())
                : std::string("one contiguous cache per session"));
        if (stopping_) sched_->shutdown();  // a signal came while loading
      } catch (const std::exception& e) {
        load_error = e.what();
        ioc.stop();
      }
    });

    std::vector<std::thread> pool;
    for (int i = 1; i < opts_.http_threads; ++i) pool.emplace_back([&] { ioc.run(); });
    ioc.run();
    for (auto& t : pool) t.join();
    loader.join();
    sched_.reset();  // joins the engine thread
    if (!load_error.empty()) fail("{}", load_error);
    log("stopped");
    return 0;
  }

 private:
  static Tokenizer load_tokenizer(const Model& m, const std::string& path) {
    if (m.tokenizer.empty()) fail("{}: the model carries no tokenizer", path);
    return Tokenizer::from_data(m.tokenizer);
  }

  // After a signal: give in-flight responses up to 5 s to be written, then stop the io_context
  // (which closes idle keep-alive connections).
  asio::awaitable<void> drain_then_stop(asio::io_context& ioc) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (busy_ > 0 && std::chrono::steady_clock::now() < deadline) {
      timer.expires_after(std::chrono::milliseconds(20));
      co_await timer.async_wait(kNoThrow);
    }
    ioc.stop();
  }

  asio::awaitable<void> accept_loop(tcp::acceptor& acceptor) {
    for (;;) {
      auto [ec, sock] = co_await acceptor.async_accept(asio::make_strand(acceptor.get_executor()), kNoThrow);
      if (ec) {
        if (stopping_ || ec == asio::error::operation_aborted) co_return;
        log("accept: {}", ec.message());
        continue;
      }
      auto ex = sock.get_executor();
      asio::co_spawn(ex, connection(std::move(sock)), asio::detached);
    }
  }

  // Writes an error reply outside of handle() (the request was not read whole) and counts it.
  asio::awaitable<void> reply_unread(tcp::socket& sock, const ApiError& e, Route route) {
    Response res = error_response(e, nullptr, false);
    co_await http::async_write(sock, res, kNoThrow);
    metrics_.count_request(route, e.status());
    log("- - {} ({})", e.status(), e.what());
  }

  asio::awaitable<void> connection(tcp::socket sock) {
    beast::flat_buffer buf;
    try {
      while (!stopping_) {
        http::request_parser<http::string_body> parser;
        parser.body_limit(opts_.body_limit);
        // The whole request (header and body) must arrive within --timeout; an idle keep-alive
        // connection is closed after the same time.
        auto read = co_await (http::async_read(sock, buf, parser, kNoThrow) || sleep(timeout_));
        if (read.index() == 1) {
          if (parser.got_some() || buf.size() > 0)
            co_await reply_unread(sock, ApiError(408, fmt::format("the request did not arrive within {} s", opts_.timeout_s),
                                                 "", "request_timeout"),
                                  parser.is_header_done() ? route_of(parser.get().target()) : Route::kOther);
          break;
        }
        const boost::system::error_code ec = std::get<0>(std::get<0>(read));
        if (ec == http::error::body_limit) {
          co_await reply_unread(sock, ApiError(413, fmt::format("the request body is larger than {} bytes", opts_.body_limit),
                                               "", "request_too_large"),
                                parser.is_header_done() ? route_of(parser.get().target()) : Route::kOther);
          // Read and drop what the client is still sending, so that it sees the reply rather
          // than a reset connection.
          boost::system::error_code ignored;
          sock.shutdown(tcp::socket::shutdown_send, ignored);
          co_await (discard_input(sock) || sleep(std::chrono::seconds(2)));
          break;
        }
        if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset) break;
        if (ec) {
          co_await reply_unread(sock, ApiError(400, fmt::format("bad HTTP request: {}", ec.message())), Route::kOther);
          break;
        }
        ++busy_;
        const bool keep = co_await handle(sock, parser.get());
        --busy_;
        if (!keep) break;
      }
    } catch (const std::exception& e) {
      log("connection: {}", e.what());
    }
    boost::system::error_code ignored;
    sock.shutdown(tcp::socket::shutdown_send, ignored);
    sock.close(ignored);
  }

  static asio::awaitable<void> discard_input(tcp::socket& sock) {
    std::vector<char> scratch(64 * 1024);
    for (size_t total = 0; total < (64u << 20);) {
      auto r = co_await sock.async_read_some(asio::buffer(scratch), kNoThrow);
      if (std::get<0>(r)) co_return;
      total += std::get<1>(r);
    }
  }

  static asio::awaitable<void> sleep(std::chrono::steady_clock::duration d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(kNoThrow);
  }

  // The origin to echo in Access-Control-Allow-Origin, or "" when the request's Origin is not
  // allowed (then no CORS header is sent and the browser refuses the reply).
  std::string cors_origin(const Request* req) const {
    if (!req || opts_.cors_origins.empty()) return "";
    const auto it = req->find(http::field::origin);
    if (it == req->end()) return "";
    const std::string origin(it->value());
    for (const std::string& a : opts_.cors_origins) {
      if (a == "*") return "*";
      if (a == origin) return origin;
    }
    return "";
  }

  template <typename Body>
  void decorate(http::response<Body>& res, const Request* req, bool keep_alive) const {
    res.set(http::field::server, "1bit");
    res.keep_alive(keep_alive);
    if (const std::string origin = cors_origin(req); !origin.empty()) {
      res.set(http::field::access_control_allow_origin, origin);
      if (origin != "*") res.set(http::field::vary, "Origin");
    }
  }

  Response text_response(int status, std::string body, const char* content_type, const Request* req,
                         bool keep_alive) const {
    Response res{static_cast<http::status>(status), req ? req->version() : 11};
    decorate(res, req, keep_alive);
    res.set(http::field::content_type, content_type);
    res.body() = std::move(body);
    res.prepare_payload();
    return res;
  }
  Response json_response(int status, const json& body, const Request* req, bool keep_alive) const {
    return text_response(status, dump(body), "application/json", req, keep_alive);
  }
  Response error_response(const ApiError& e, const Request* req, bool keep_alive) const {
    Response res = json_response(e.status(), error_json(e), req, keep_alive);
    if (e.status() == 429 || e.status() == 503) res.set(http::field::retry_after, "1");
    return res;
  }

  // CORS preflight: 204; the Access-Control-Allow-* headers only for an allowed origin.
  Response preflight(const Request& req, bool keep) const {
    Response res{http::status::no_content, req.version()};
    decorate(res, &req, keep);
    res.set(http::field::allow, "GET, POST, OPTIONS");
    if (!cors_origin(&req).empty()) {
      res.set(http::field::access_control_allow_methods, "GET, POST, OPTIONS");
      const auto h = req.find(http::field::access_control_request_headers);
      res.set(http::field::access_control_allow_headers,
              h != req.end() ? std::string(h->value()) : std::string("Authorization, Content-Type"));
      res.set(http::field::access_control_max_age, "600");
    }
    res.prepare_payload();
    return res;
  }

  // Handles one request; false when the connection must close.
  asio::awaitable<bool> handle(tcp::socket& sock, Request& req) {
    const auto t0 = std::chrono::steady_clock::now();
    std::string path(req.target());
    if (const size_t q = path.find('?'); q != std::string::npos) path.resize(q);
    int status = 200;
    bool keep = req.keep_alive() && !stopping_;
    std::optional<ApiError> err;
    try {
      std::optional<Response> res;
      const bool is_get = req.method() == http::verb::get, is_post = req.method() == http::verb::post;
      auto want = [&](bool ok) {
        if (!ok) throw ApiError(405, fmt::format("{} is not allowed on {}", std::string(req.method_string()), path), "", "method_not_allowed");
      };
      const bool loaded = loaded_.load(std::memory_order_acquire);
      if (req.method() == http::verb::options) {
        res = preflight(req, keep);  // browsers send no credentials with a preflight
      } else if (path == "/health") {
        want(is_get);
        if (!loaded) throw ApiError(503, "the model is loading", "", "model_loading", "unavailable_error");
        res = json_response(200, {{"status", "ok"}}, &req, keep);
      } else if (!opts_.api_key.empty() && req[http::field::authorization] != "Bearer " + opts_.api_key) {
        throw ApiError(401, "missing or incorrect API key (send 'Authorization: Bearer KEY')", "", "invalid_api_key");
      } else if (!loaded) {
        throw ApiError(503, "the model is loading", "", "model_loading", "unavailable_error");
      } else if (path == "/metrics") {
        want(is_get);
        res = text_response(200, metrics_.render(gauges()), "text/plain; version=0.0.4; charset=utf-8", &req, keep);
      } else if (path == "/props") {
        want(is_get);
        res = json_response(200, props_json(), &req, keep);
      } else if (path == "/v1/models") {
        want(is_get);
        res = json_response(200, {{"object", "list"}, {"data", json::array({model_json()})}}, &req, keep);
      } else if (path.starts_with("/v1/models/")) {
        want(is_get);
        if (path.substr(11) != model_id_)
          throw ApiError(404, fmt::format("the model '{}' does not exist", path.substr(11)), "model", "model_not_found");
        res = json_response(200, model_json(), &req, keep);
      } else if (path == "/tokenize") {
        want(is_post);
        const TokenizeRequest r = parse_tokenize_request(req.body());
        res = json_response(200, {{"tokens", tok_.encode(r.content, r.add_special)}}, &req, keep);
      } else if (path == "/detokenize") {
        want(is_post);
        const DetokenizeRequest r = parse_detokenize_request(req.body());
        for (int32_t id : r.tokens)
          if (id >= tok_.n_vocab()) throw ApiError(400, fmt::format("token id {} is outside the vocabulary of {}", id, tok_.n_vocab()), "tokens");
        res = json_response(200, {{"content", tok_.decode(r.tokens)}}, &req, keep);
      } else if (path == "/v1/chat/completions" || path == "/v1/completions") {
        want(is_post);
        const bool chat = path == "/v1/chat/completions";
        GenerationRequest g = chat ? parse_chat_request(req.body()) : parse_completion_request(req.body());
        std::vector<std::shared_ptr<Job>> jobs = make_jobs(g);
        auto ch = submit(jobs, co_await asio::this_coro::executor);
        if (g.stream) {
          const bool ok = co_await stream(sock, req, g, jobs, ch);
          if (!ok) status = 499;  // client went away; its Jobs were cancelled
          keep = ok && keep;
        } else {
          auto [ok, r] = co_await collect(sock, req, g, jobs, ch, keep);
          if (!ok) keep = false;
          if (r) res = std::move(*r);
          else status = 499;  // client went away
        }
      } else if (path == "/v1/embeddings") {
        want(is_post);
        const EmbeddingRequest e = parse_embedding_request(req.body());
        std::vector<std::shared_ptr<Job>> jobs{make_embedding_job(e)};
        auto ch = submit(jobs, co_await asio::this_coro::executor);
        auto [ok, r] = co_await embed(sock, req, e, jobs[0], ch, keep);
        if (!ok) keep = false;
        if (r) res = std::move(*r);
        else status = 499;
      } else {
        throw ApiError(404, fmt::format("no route for {} {}", std::string(req.method_string()), path), "", "not_found");
      }
      if (res) {
        status = res->result_int();
        auto [ec, n] = co_await http::async_write(sock, *res, kNoThrow);
        if (ec) keep = false;
      }
    } catch (const ApiError& e) {
      err = e;
    }
    if (err) {  // (no co_await inside a handler)
      status = err->status();
      Response res = error_response(*err, &req, keep);
      auto [ec, n] = co_await http::async_write(sock, res, kNoThrow);
      if (ec) keep = false;
    }
    metrics_.count_request(route_of(path), status);
    log("{} {} {} {:.1f} ms", std::string(req.method_string()), path, status,
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    co_return keep;
  }

  GaugeValues gauges() const {
    const SchedulerStats s = sched_->stats();
    return {s.queued,        s.running,         s.kv_running,     s.kv_cached,       s.kv_total,
            s.kv_block_size, s.kv_blocks_total, s.kv_blocks_used, s.kv_blocks_cached};
  }

  json model_json() const {
    return {{"id", model_id_}, {"object", "model"}, {"created", created_}, {"owned_by", "1bit"},
            {"context_length", engine_->n_ctx()}};
  }

  json props_json() const {
    auto token = [&](int32_t id) { return id >= 0 ? json(tok_.token_text(id)) : json(nullptr); };
    auto id_or_null = [](int32_t id) { return id >= 0 ? json(id) : json(nullptr); };
    const ModelConfig& c = engine_->config();
    return {{"model", model_id_},
            {"model_path", opts_.model_path},
            {"n_ctx", engine_->n_ctx()},
            {"n_vocab", engine_->n_vocab()},
            {"hidden_size", c.hidden_size},
            {"parallel", opts_.parallel},
            {"kv_block_size", sched_->kv_block_size()},
            {"kv_blocks", sched_->kv_blocks()},
            {"kv_shared", sched_->shared_kv()},
            {"max_sequence", sched_->max_sequence()},
            {"max_queue", sched_->max_queue()},
            {"backend", std::string(engine_->backend_name())},
            {"chat_template", tmpl_.source()},
            {"bos_token", token(tok_.bos_id())},
            {"bos_token_id", id_or_null(tok_.bos_id())},
            {"eos_token", token(tok_.eos_id())},
            {"eos_token_id", id_or_null(tok_.eos_id())},
            {"stop_token_ids", stop_ids_},
            {"add_bos", model_->tokenizer.add_bos},
            {"build", {{"version", kVersion},
                       {"compiler", fmt::format("{} {}",
#if defined(__clang__)
                                                "clang",
#else
                                                "gcc",
#endif
                                                __VERSION__)},
                       {"cplusplus", static_cast<int64_t>(__cplusplus)},
#ifdef NDEBUG
                       {"assertions", false}
#else
                       {"assertions", true}
#endif
                      }}};
  }

  void check_model(const std::string& model) const {
    if (!model.empty() && model != model_id_)
      throw ApiError(404, fmt::format("the model '{}' does not exist; this server has '{}'", model, model_id_), "model",
                     "model_not_found");
  }

  // BOS in front when the tokenizer asks for it and the text did not produce it.
  void add_bos(std::vector<int32_t>* ids) const {
    const int32_t bos = tok_.bos_id();
    if (model_->tokenizer.add_bos && bos >= 0 && (ids->empty() || ids->front() != bos)) ids->insert(ids->begin(), bos);
  }

  // Renders, tokenizes and checks a generation request against the model, and makes its n Jobs
  // (seeds seed, seed+1, ... when a seed is given); throws ApiError.
  std::vector<std::shared_ptr<Job>> make_jobs(GenerationRequest& g) {
    check_model(g.model);
    const bool chat = g.kind == GenerationRequest::Kind::kChat;
    std::vector<int32_t> prompt;
    if (chat) {
      std::string text;
      try {
        text = tmpl_.apply(g.messages, true, bos_text_, eos_text_);
      } catch (const Error& e) {
        throw ApiError(400, fmt::format("the chat template rejected the messages: {}", e.what()), "messages");
      }
      prompt = tok_.encode(text, /*add_special_tokens=*/false);
    } else {
      prompt = tok_.encode(g.prompt, /*add_special_tokens=*/true);
    }
    add_bos(&prompt);
    if (prompt.empty()) throw ApiError(400, "the prompt is empty after tokenization", chat ? "messages" : "prompt");
    const int64_t n = static_cast<int64_t>(prompt.size());
    if (n >= engine_->n_ctx())
      throw ApiError(400, fmt::format("the prompt has {} tokens but the context is {} tokens (it must leave room for at least one more)",
                                      n, engine_->n_ctx()),
                     chat ? "messages" : "prompt", "context_length_exceeded");
    if (n >= sched_->max_sequence())
      throw ApiError(400, fmt::format("the prompt has {} tokens but the KV cache pool holds only {} positions ({} blocks of "
                                      "{}; it must leave room for at least one more; see --kv-blocks)",
                                      n, sched_->max_sequence(), sched_->kv_blocks(), sched_->kv_block_size()),
                     chat ? "messages" : "prompt", "context_length_exceeded");
    g.sampling.stop_token_ids = stop_ids_;
    try {
      g.sampling.validate(engine_->n_vocab());
    } catch (const Error& e) {
      throw ApiError(400, e.what());
    }
    std::vector<std::shared_ptr<Job>> jobs;
    for (int i = 0; i < g.n; ++i) {
      auto job = std::make_shared<Job>();
      job->index = i;
      job->prompt = prompt;
      job->sampling = g.sampling;
      if (g.sampling.seed) job->sampling.seed = *g.sampling.seed + static_cast<uint64_t>(i);
      job->logprobs = g.logprobs;
      jobs.push_back(std::move(job));
    }
    return jobs;
  }

  std::shared_ptr<Job> make_embedding_job(const EmbeddingRequest& e) {
    check_model(e.model);
    const int64_t dim = engine_->config().hidden_size;
    if (e.dimensions && *e.dimensions != dim)
      throw ApiError(400, fmt::format("'dimensions' must be the model's hidden size {} (this server does not shorten embeddings), got {}",
                                      dim, *e.dimensions),
                     "dimensions", "unsupported_parameter");
    auto job = std::make_shared<Job>();
    job->kind = Job::Kind::kEmbed;
    for (size_t i = 0; i < e.inputs.size(); ++i) {
      const EmbeddingRequest::Input& in = e.inputs[i];
      std::vector<int32_t> ids;
      if (in.is_tokens) {
        ids = in.tokens;
        for (int32_t id : ids)
          if (id >= engine_->n_vocab())
            throw ApiError(400, fmt::format("input {}: token id {} is outside the vocabulary of {}", i, id, engine_->n_vocab()),
                           "input");
      } else {
        ids = tok_.encode(in.text, /*add_special_tokens=*/true);
        add_bos(&ids);
      }
      if (static_cast<int64_t>(ids.size()) > engine_->n_ctx())
        throw ApiError(400, fmt::format("input {} has {} tokens but the context is {} tokens", i, ids.size(), engine_->n_ctx()),
                       "input", "context_length_exceeded");
      if (static_cast<int64_t>(ids.size()) > sched_->max_sequence())
        throw ApiError(400, fmt::format("input {} has {} tokens but the KV cache pool holds only {} positions ({} blocks "
                                        "of {}; see --kv-blocks)",
                                        i, ids.size(), sched_->max_sequence(), sched_->kv_blocks(), sched_->kv_block_size()),
                       "input", "context_length_exceeded");
      job->inputs.push_back(std::move(ids));
    }
    return job;
  }

  // Gives the Jobs one channel on this connection's executor and queues them; 429 when the queue
  // is full.
  std::shared_ptr<EventChannel> submit(const std::vector<std::shared_ptr<Job>>& jobs, const asio::any_io_executor& ex) {
    auto ch = std::make_shared<EventChannel>(ex, sched_->channel_capacity(jobs));
    for (const auto& j : jobs) j->channel = ch;
    if (!sched_->submit(jobs))
      throw ApiError(429, fmt::format("the server is busy: {} requests are already waiting; retry later", sched_->max_queue()),
                     "", "rate_limit_exceeded", "rate_limit_error");
    return ch;
  }

  static void cancel(const std::vector<std::shared_ptr<Job>>& jobs, EventChannel& ch) {
    for (const auto& j : jobs) j->cancelled = true;
    ch.close();
  }

  // Resolves when the client closes its end (or sends more bytes, which a client waiting for
  // this reply would not do: then it just waits until cancelled).
  asio::awaitable<void> watch_disconnect(tcp::socket& sock) {
    for (;;) {
      auto [ec] = co_await sock.async_wait(tcp::socket::wait_read, kNoThrow);
      if (ec) co_return;  // cancelled (the reply is done) or the socket failed
      char c;
      const ssize_t n = ::recv(sock.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n == 0) co_return;  // orderly close by the client
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;  // spurious wake-up
        co_return;  // reset
      }
      // A pipelined request, not a disconnect: wait until cancelled.
      asio::steady_timer forever(co_await asio::this_coro::executor, asio::steady_timer::time_point::max());
      co_await forever.async_wait(kNoThrow);
      co_return;
    }
  }

  // OpenAI's chat logprobs entries for these tokens.
  json chat_logprobs(const std::vector<TokenLogprobs>& lps) const {
    json content = json::array();
    for (const TokenLogprobs& t : lps) {
      const std::string piece = tok_.token_piece(t.chosen.id);
      json top = json::array();
      for (const TokenLogprob& alt : t.top) {
        const std::string p = tok_.token_piece(alt.id);
        top.push_back({{"token", p}, {"logprob", alt.logprob}, {"bytes", bytes_of(p)}});
      }
      content.push_back({{"token", piece}, {"logprob", t.chosen.logprob}, {"bytes", bytes_of(piece)}, {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}, {"refusal", nullptr}};
  }

  // The legacy completions logprobs object; text_offset continues from *offset (bytes).
  json completion_logprobs(const std::vector<TokenLogprobs>& lps, int64_t* offset) const {
    json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(), text_offset = json::array();
    for (const TokenLogprobs& t : lps) {
      const std::string piece = tok_.token_piece(t.chosen.id);
      tokens.push_back(piece);
      token_logprobs.push_back(t.chosen.logprob);
      json top = json::object();
      for (const TokenLogprob& alt : t.top) top[tok_.token_piece(alt.id)] = alt.logprob;
      top_logprobs.push_back(std::move(top));
      text_offset.push_back(*offset);
      *offset += static_cast<int64_t>(piece.size());
    }
    return {{"tokens", std::move(tokens)}, {"token_logprobs", std::move(token_logprobs)},
            {"top_logprobs", std::move(top_logprobs)}, {"text_offset", std::move(text_offset)}};
  }

  // Usage over the choices: the prompt counted once, completion tokens summed; cached_tokens is
  // the most any choice reused.
  static json usage_json(const std::vector<Choice>& choices) {
    int64_t prompt = 0, cached = 0, completion = 0;
    for (const Choice& c : choices) {
      prompt = std::max(prompt, c.prompt_tokens);
      cached = std::max(cached, c.cached_tokens);
      completion += c.completion_tokens;
    }
    return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion},
            {"prompt_tokens_details", {{"cached_tokens", cached}}}};
  }

  // Applies one event to its choice; returns true when it was the choice's final event.
  static bool apply(std::vector<Choice>& choices, TokenEvent& ev) {
    if (ev.index < 0 || static_cast<size_t>(ev.index) >= choices.size()) return false;
    Choice& c = choices[static_cast<size_t>(ev.index)];
    c.text += ev.text;
    if (!ev.done) return false;
    c.done = true;
    c.finish_reason = ev.finish_reason;
    c.prompt_tokens = ev.prompt_tokens;
    c.cached_tokens = ev.cached_tokens;
    c.completion_tokens = ev.completion_tokens;
    return true;
  }

  // Waits for every Job's events until each has sent its final one; stops at the first error
  // (left in *error).
  static asio::awaitable<void> receive_all(EventChannel& ch, std::vector<Choice>* choices, std::string* error) {
    size_t done = 0;
    while (done < choices->size()) {
      auto got = co_await ch.async_receive(kNoThrow);
      if (std::get<0>(got)) {
        *error = "the request was cancelled";
        co_return;
      }
      TokenEvent& ev = std::get<1>(got);
      if (ev.done && !ev.error.empty()) {
        *error = ev.error;
        co_return;
      }
      if (ev.index >= 0 && static_cast<size_t>(ev.index) < choices->size()) {
        auto& lp = (*choices)[static_cast<size_t>(ev.index)].logprobs;
        lp.insert(lp.end(), std::make_move_iterator(ev.logprobs.begin()), std::make_move_iterator(ev.logprobs.end()));
      }
      if (apply(*choices, ev)) ++done;
    }
  }

  // Non-streaming: waits for every choice. Returns {connection still usable, reply}; no reply
  // when the client disconnected (the Jobs are cancelled).
  asio::awaitable<std::pair<bool, std::optional<Response>>> collect(tcp::socket& sock, const Request& req,
                                                                     const GenerationRequest& g,
                                                                     const std::vector<std::shared_ptr<Job>>& jobs,
                                                                     std::shared_ptr<EventChannel> ch, bool keep) {
    std::vector<Choice> choices(jobs.size());
    std::string error;
    auto which = co_await (receive_all(*ch, &choices, &error) || watch_disconnect(sock));
    if (which.index() == 1) {
      cancel(jobs, *ch);
      co_return std::pair<bool, std::optional<Response>>{false, std::nullopt};
    }
    if (!error.empty()) {
      cancel(jobs, *ch);
      const int status = stopping_ ? 503 : 500;
      co_return std::pair<bool, std::optional<Response>>{
          true, error_response(ApiError(status, error, "", "", "server_error"), &req, keep)};
    }
    const bool chat = g.kind == GenerationRequest::Kind::kChat;
    json out = json::array();
    for (size_t i = 0; i < choices.size(); ++i) {
      Choice& c = choices[i];
      json choice = {{"index", i}, {"logprobs", nullptr}, {"finish_reason", c.finish_reason}};
      if (g.logprobs) choice["logprobs"] = chat ? chat_logprobs(c.logprobs) : completion_logprobs(c.logprobs, &c.text_offset);
      if (chat) choice["message"] = {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}};
      else choice["text"] = c.text;
      out.push_back(std::move(choice));
    }
    json body = {{"id", random_id(chat ? "chatcmpl-" : "cmpl-")},
                 {"object", chat ? "chat.completion" : "text_completion"},
                 {"created", static_cast<int64_t>(std::time(nullptr))},
                 {"model", model_id_},
                 {"choices", std::move(out)},
                 {"usage", usage_json(choices)}};
    co_return std::pair<bool, std::optional<Response>>{true, json_response(200, body, &req, keep)};
  }

  struct StreamInfo {
    std::string id;
    int64_t created = 0;
    bool chat = true;
    bool include_usage = false;
    bool logprobs = false;
  };

  json stream_chunk(const StreamInfo& s, int index, json delta_or_text, const json& finish, json logprobs = nullptr) const {
    json choice = {{"index", index}, {"logprobs", std::move(logprobs)}, {"finish_reason", finish}};
    if (s.chat) choice["delta"] = std::move(delta_or_text);
    else choice["text"] = std::move(delta_or_text);
    json c = {{"id", s.id}, {"object", s.chat ? "chat.completion.chunk" : "text_completion"}, {"created", s.created},
              {"model", model_id_}, {"choices", json::array({std::move(choice)})}};
    if (s.include_usage) c["usage"] = nullptr;
    return c;
  }

  static asio::awaitable<bool> send_chunk(tcp::socket& sock, const std::string& data) {
    auto w = co_await asio::async_write(sock, http::make_chunk(asio::buffer(data)), kNoThrow);
    co_return !std::get<0>(w);
  }

  // Writes the SSE header and every event of the Jobs; false when a write failed or the channel
  // closed early.
  asio::awaitable<bool> stream_events(tcp::socket& sock, http::response_serializer<http::empty_body>& sr, EventChannel& ch,
                                      const StreamInfo& s, const std::vector<std::shared_ptr<Job>>& jobs) {
    auto h = co_await http::async_write_header(sock, sr, kNoThrow);
    if (std::get<0>(h)) co_return false;
    std::vector<Choice> choices(jobs.size());
    if (s.chat) {
      std::string out;
      const json role = {{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}};
      for (size_t i = 0; i < choices.size(); ++i)
        out += "data: " + dump(stream_chunk(s, static_cast<int>(i), role, nullptr)) + "\n\n";
      if (!co_await send_chunk(sock, out)) co_return false;
    }
    size_t done = 0;
    while (done < choices.size()) {
      auto got = co_await ch.async_receive(kNoThrow);
      if (std::get<0>(got)) co_return false;
      TokenEvent& ev = std::get<1>(got);
      if (ev.index < 0 || static_cast<size_t>(ev.index) >= choices.size()) continue;
      Choice& c = choices[static_cast<size_t>(ev.index)];
      std::string out;
      if (!ev.text.empty() || (s.logprobs && !ev.logprobs.empty())) {
        json lp = nullptr;
        if (s.logprobs) lp = s.chat ? chat_logprobs(ev.logprobs) : completion_logprobs(ev.logprobs, &c.text_offset);
        json delta = s.chat ? json{{"content", ev.text}} : json(ev.text);
        out += "data: " + dump(stream_chunk(s, ev.index, std::move(delta), nullptr, std::move(lp))) + "\n\n";
      }
      bool last = false;
      if (ev.done) {
        if (!ev.error.empty()) {
          out += "data: " + dump(error_json(ApiError(stopping_ ? 503 : 500, ev.error, "", "", "server_error"))) + "\n\n";
          for (const auto& j : jobs) j->cancelled = true;
          last = true;
        } else {
          apply(choices, ev);
          ++done;
          out += "data: " + dump(stream_chunk(s, ev.index, s.chat ? json::object() : json(""), ev.finish_reason)) + "\n\n";
          if (done == choices.size()) {
            last = true;
            if (s.include_usage) {
              json u = {{"id", s.id}, {"object", s.chat ? "chat.completion.chunk" : "text_completion"}, {"created", s.created},
                        {"model", model_id_}, {"choices", json::array()}, {"usage", usage_json(choices)}};
              out += "data: " + dump(u) + "\n\n";
            }
          }
        }
        if (last) out += "data: [DONE]\n\n";
      }
      if (!out.empty() && !co_await send_chunk(sock, out)) co_return false;
      if (last) break;
    }
    auto end = co_await asio::async_write(sock, http::make_chunk_last(), kNoThrow);
    co_return !std::get<0>(end);
  }

  // Streaming: server-sent events in chunked transfer encoding. Returns false when the connection
  // cannot be reused (write failed, client gone).
  asio::awaitable<bool> stream(tcp::socket& sock, const Request& req, const GenerationRequest& g,
                               const std::vector<std::shared_ptr<Job>>& jobs, std::shared_ptr<EventChannel> ch) {
    StreamInfo info;
    info.chat = g.kind == GenerationRequest::Kind::kChat;
    info.id = random_id(info.chat ? "chatcmpl-" : "cmpl-");
    info.created = static_cast<int64_t>(std::time(nullptr));
    info.include_usage = g.include_usage;
    info.logprobs = g.logprobs;

    http::response<http::empty_body> head{http::status::ok, req.version()};
    decorate(head, &req, req.keep_alive());
    head.set(http::field::content_type, "text/event-stream");
    head.set(http::field::cache_control, "no-cache");
    head.chunked(true);
    http::response_serializer<http::empty_body> sr{head};

    auto which = co_await (stream_events(sock, sr, *ch, info, jobs) || watch_disconnect(sock));
    if (which.index() == 1 || !std::get<0>(which)) {
      cancel(jobs, *ch);
      co_return false;
    }
    co_return true;
  }

  static asio::awaitable<void> receive_embeddings(EventChannel& ch, std::vector<std::vector<float>>* out,
                                                  int64_t* tokens, std::string* error) {
    for (;;) {
      auto got = co_await ch.async_receive(kNoThrow);
      if (std::get<0>(got)) {
        *error = "the request was cancelled";
        co_return;
      }
      TokenEvent& ev = std::get<1>(got);
      if (ev.done) {
        *error = ev.error;
        *tokens = ev.prompt_tokens;
        co_return;
      }
      if (ev.index >= 0 && static_cast<size_t>(ev.index) < out->size()) (*out)[static_cast<size_t>(ev.index)] = std::move(ev.embedding);
    }
  }

  asio::awaitable<std::pair<bool, std::optional<Response>>> embed(tcp::socket& sock, const Request& req,
                                                                   const EmbeddingRequest& e, std::shared_ptr<Job> job,
                                                                   std::shared_ptr<EventChannel> ch, bool keep) {
    std::vector<std::vector<float>> vecs(job->inputs.size());
    int64_t tokens = 0;
    std::string error;
    auto which = co_await (receive_embeddings(*ch, &vecs, &tokens, &error) || watch_disconnect(sock));
    if (which.index() == 1) {
      cancel({job}, *ch);
      co_return std::pair<bool, std::optional<Response>>{false, std::nullopt};
    }
    if (!error.empty()) {
      cancel({job}, *ch);
      co_return std::pair<bool, std::optional<Response>>{
          true, error_response(ApiError(stopping_ ? 503 : 500, error, "", "", "server_error"), &req, keep)};
    }
    json data = json::array();
    for (size_t i = 0; i < vecs.size(); ++i) {
      json v;
      if (e.base64) {
        static_assert(std::endian::native == std::endian::little, "base64 embeddings are little-endian float32");
        v = base64_encode(std::string_view(reinterpret_cast<const char*>(vecs[i].data()), vecs[i].size() * sizeof(float)));
      } else {
        v = vecs[i];
      }
      data.push_back({{"object", "embedding"}, {"index", i}, {"embedding", std::move(v)}});
    }
    json body = {{"object", "list"}, {"data", std::move(data)}, {"model", model_id_},
                 {"usage", {{"prompt_tokens", tokens}, {"total_tokens", tokens}}}};
    co_return std::pair<bool, std::optional<Response>>{true, json_response(200, body, &req, keep)};
  }

  ServerOptions opts_;
  std::unique_ptr<Model> model_;
  Tokenizer tok_;
  ChatTemplate tmpl_;
  Metrics metrics_;
  std::unique_ptr<Engine> engine_;     // set once by the loader thread, before loaded_
  std::unique_ptr<Scheduler> sched_;   // likewise
  std::atomic<bool> loaded_{false};
  std::string model_id_;
  int64_t created_ = 0;
  std::string bos_text_, eos_text_;
  std::vector<int32_t> stop_ids_;
  std::chrono::steady_clock::duration timeout_{};
  std::atomic<bool> stopping_{false};
  std::atomic<int> busy_{0};
};

}  // namespace

int run_server(const ServerOptions& opts) {
  Server server(opts);
  return server.run();
}

}  // namespace onebit::server
