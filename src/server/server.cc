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
#include <chrono>
#include <cstdio>
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
    model_id_ = std::filesystem::path(o.model_path).filename().string();
    if (const size_t dot = model_id_.rfind('.'); dot != std::string::npos && dot > 0) model_id_.resize(dot);
    created_ = static_cast<int64_t>(std::time(nullptr));
    bos_text_ = tok_.bos_id() >= 0 ? tok_.token_text(tok_.bos_id()) : "";
    eos_text_ = tok_.eos_id() >= 0 ? tok_.token_text(tok_.eos_id()) : "";
    stop_ids_ = stop_token_ids(*model_, tok_, &tmpl_);

    EngineOptions eo;
    eo.n_ctx = o.ctx;
    eo.n_threads = o.threads;
    engine_ = Engine::load(*model_, eo);
    sched_ = std::make_unique<Scheduler>(*engine_, tok_, o.parallel);
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
      sched_->shutdown();
      asio::co_spawn(ioc, drain_then_stop(ioc), asio::detached);
    });
    asio::co_spawn(ioc, accept_loop(acceptor), asio::detached);

    log("model {} ({} backend, context {} tokens, {} parallel)", model_id_, engine_->backend_name(), engine_->n_ctx(),
        opts_.parallel);
    std::fprintf(stderr, "listening on http://%s:%d\n", opts_.host.c_str(), static_cast<int>(acceptor.local_endpoint().port()));
    std::fflush(stderr);

    std::vector<std::thread> pool;
    for (int i = 1; i < opts_.http_threads; ++i) pool.emplace_back([&] { ioc.run(); });
    ioc.run();
    for (auto& t : pool) t.join();
    sched_.reset();  // joins the engine thread
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

  asio::awaitable<void> connection(tcp::socket sock) {
    beast::flat_buffer buf;
    try {
      while (!stopping_) {
        http::request_parser<http::string_body> parser;
        parser.body_limit(opts_.body_limit);
        auto [ec, n] = co_await http::async_read(sock, buf, parser, kNoThrow);
        if (ec == http::error::body_limit) {
          Response res = error_response(ApiError(413, fmt::format("the request body is larger than {} bytes", opts_.body_limit),
                                                 "", "request_too_large"), 11, false);
          co_await http::async_write(sock, res, kNoThrow);
          // Read and drop what the client is still sending, so that it sees the reply rather
          // than a reset connection.
          boost::system::error_code ignored;
          sock.shutdown(tcp::socket::shutdown_send, ignored);
          co_await (discard_input(sock) || sleep(std::chrono::seconds(2)));
          break;
        }
        if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset) break;
        if (ec) {
          Response res = error_response(ApiError(400, fmt::format("bad HTTP request: {}", ec.message())), 11, false);
          co_await http::async_write(sock, res, kNoThrow);
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

  Response json_response(int status, const json& body, unsigned version, bool keep_alive) const {
    Response res{static_cast<http::status>(status), version};
    res.set(http::field::server, "1bit");
    res.set(http::field::content_type, "application/json");
    res.keep_alive(keep_alive);
    res.body() = dump(body);
    res.prepare_payload();
    return res;
  }
  Response error_response(const ApiError& e, unsigned version, bool keep_alive) const {
    return json_response(e.status(), error_json(e), version, keep_alive);
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
      if (path != "/health" && !opts_.api_key.empty() &&
          req[http::field::authorization] != "Bearer " + opts_.api_key)
        throw ApiError(401, "missing or incorrect API key (send 'Authorization: Bearer KEY')", "", "invalid_api_key");
      if (path == "/health") {
        want(is_get);
        res = json_response(200, {{"status", "ok"}}, req.version(), keep);
      } else if (path == "/v1/models") {
        want(is_get);
        res = json_response(200, {{"object", "list"}, {"data", json::array({model_json()})}}, req.version(), keep);
      } else if (path.starts_with("/v1/models/")) {
        want(is_get);
        if (path.substr(11) != model_id_)
          throw ApiError(404, fmt::format("the model '{}' does not exist", path.substr(11)), "model", "model_not_found");
        res = json_response(200, model_json(), req.version(), keep);
      } else if (path == "/tokenize") {
        want(is_post);
        const TokenizeRequest r = parse_tokenize_request(req.body());
        res = json_response(200, {{"tokens", tok_.encode(r.content, r.add_special)}}, req.version(), keep);
      } else if (path == "/detokenize") {
        want(is_post);
        const DetokenizeRequest r = parse_detokenize_request(req.body());
        for (int32_t id : r.tokens)
          if (id >= tok_.n_vocab()) throw ApiError(400, fmt::format("token id {} is outside the vocabulary of {}", id, tok_.n_vocab()), "tokens");
        res = json_response(200, {{"content", tok_.decode(r.tokens)}}, req.version(), keep);
      } else if (path == "/v1/chat/completions" || path == "/v1/completions") {
        want(is_post);
        const bool chat = path == "/v1/chat/completions";
        GenerationRequest g = chat ? parse_chat_request(req.body()) : parse_completion_request(req.body());
        std::shared_ptr<Job> job = make_job(g);
        if (g.stream) {
          const bool ok = co_await stream(sock, req, g, job);
          if (!ok) status = 499;  // client went away; its Job was cancelled
          keep = ok && keep;
        } else {
          auto [ok, r] = co_await collect(sock, req, g, job, keep);
          if (!ok) keep = false;
          if (r) res = std::move(*r);
          else status = 499;  // client went away
        }
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
      Response res = error_response(*err, req.version(), keep);
      auto [ec, n] = co_await http::async_write(sock, res, kNoThrow);
      if (ec) keep = false;
    }
    log("{} {} {} {:.1f} ms", std::string(req.method_string()), path, status,
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    co_return keep;
  }

  json model_json() const {
    return {{"id", model_id_}, {"object", "model"}, {"created", created_}, {"owned_by", "1bit"},
            {"context_length", engine_->n_ctx()}};
  }

  // Renders, tokenizes and checks a generation request against the model; throws ApiError.
  std::shared_ptr<Job> make_job(GenerationRequest& g) {
    if (!g.model.empty() && g.model != model_id_)
      throw ApiError(404, fmt::format("the model '{}' does not exist; this server has '{}'", g.model, model_id_), "model",
                     "model_not_found");
    auto job = std::make_shared<Job>();
    if (g.kind == GenerationRequest::Kind::kChat) {
      std::string text;
      try {
        text = tmpl_.apply(g.messages, true, bos_text_, eos_text_);
      } catch (const Error& e) {
        throw ApiError(400, fmt::format("the chat template rejected the messages: {}", e.what()), "messages");
      }
      job->prompt = tok_.encode(text, /*add_special_tokens=*/false);
    } else {
      job->prompt = tok_.encode(g.prompt, /*add_special_tokens=*/true);
    }
    const int32_t bos = tok_.bos_id();
    if (model_->tokenizer.add_bos && bos >= 0 && (job->prompt.empty() || job->prompt.front() != bos))
      job->prompt.insert(job->prompt.begin(), bos);
    if (job->prompt.empty()) throw ApiError(400, "the prompt is empty after tokenization", g.kind == GenerationRequest::Kind::kChat ? "messages" : "prompt");
    const int64_t n = static_cast<int64_t>(job->prompt.size());
    if (n >= engine_->n_ctx())
      throw ApiError(400, fmt::format("the prompt has {} tokens but the context is {} tokens (it must leave room for at least one more)",
                                      n, engine_->n_ctx()),
                     g.kind == GenerationRequest::Kind::kChat ? "messages" : "prompt", "context_length_exceeded");
    g.sampling.stop_token_ids = stop_ids_;
    try {
      g.sampling.validate(engine_->n_vocab());
    } catch (const Error& e) {
      throw ApiError(400, e.what());
    }
    job->sampling = g.sampling;
    return job;
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

  std::shared_ptr<EventChannel> submit(const std::shared_ptr<Job>& job, const asio::any_io_executor& ex) {
    job->channel = std::make_shared<EventChannel>(ex, sched_->channel_capacity());
    sched_->submit(job);
    return job->channel;
  }

  // Non-streaming: waits for the whole completion. Returns {connection still usable, reply}; no
  // reply when the client disconnected (the Job is cancelled).
  asio::awaitable<std::pair<bool, std::optional<Response>>> collect(tcp::socket& sock, const Request& req,
                                                                     const GenerationRequest& g,
                                                                     std::shared_ptr<Job> job, bool keep) {
    auto ch = submit(job, co_await asio::this_coro::executor);
    std::string text;
    TokenEvent last;
    auto which = co_await (receive_all(*ch, &text, &last) || watch_disconnect(sock));
    if (which.index() == 1) {
      job->cancelled = true;
      ch->close();
      co_return std::pair<bool, std::optional<Response>>{false, std::nullopt};
    }
    if (!last.error.empty()) {
      const int status = stopping_ ? 503 : 500;
      co_return std::pair<bool, std::optional<Response>>{
          true, error_response(ApiError(status, last.error, "", "", "server_error"), req.version(), keep)};
    }
    const bool chat = g.kind == GenerationRequest::Kind::kChat;
    json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", last.finish_reason}};
    if (chat) choice["message"] = {{"role", "assistant"}, {"content", text}, {"refusal", nullptr}};
    else choice["text"] = text;
    json body = {{"id", random_id(chat ? "chatcmpl-" : "cmpl-")},
                 {"object", chat ? "chat.completion" : "text_completion"},
                 {"created", static_cast<int64_t>(std::time(nullptr))},
                 {"model", model_id_},
                 {"choices", json::array({std::move(choice)})},
                 {"usage", usage_json(last)}};
    co_return std::pair<bool, std::optional<Response>>{true, json_response(200, body, req.version(), keep)};
  }

  static json usage_json(const TokenEvent& e) {
    return {{"prompt_tokens", e.prompt_tokens}, {"completion_tokens", e.completion_tokens},
            {"total_tokens", e.prompt_tokens + e.completion_tokens}};
  }

  // Waits for a Job's events, appending their text, until the final one (left in *last).
  static asio::awaitable<void> receive_all(EventChannel& ch, std::string* text, TokenEvent* last) {
    for (;;) {
      auto got = co_await ch.async_receive(kNoThrow);
      if (std::get<0>(got)) co_return;
      TokenEvent& ev = std::get<1>(got);
      *text += ev.text;
      if (ev.done) {
        *last = std::move(ev);
        co_return;
      }
    }
  }

  struct StreamInfo {
    std::string id;
    int64_t created = 0;
    bool chat = true;
    bool include_usage = false;
  };

  json stream_chunk(const StreamInfo& s, json delta_or_text, const json& finish) const {
    json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish}};
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

  // Writes the SSE header and every event of the Job; false when a write failed or the channel
  // closed early.
  asio::awaitable<bool> stream_events(tcp::socket& sock, http::response_serializer<http::empty_body>& sr, EventChannel& ch,
                                      const StreamInfo& s) {
    auto h = co_await http::async_write_header(sock, sr, kNoThrow);
    if (std::get<0>(h)) co_return false;
    if (s.chat) {
      const json role = {{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}};
      if (!co_await send_chunk(sock, "data: " + dump(stream_chunk(s, role, nullptr)) + "\n\n")) co_return false;
    }
    for (;;) {
      auto got = co_await ch.async_receive(kNoThrow);
      if (std::get<0>(got)) co_return false;
      TokenEvent& ev = std::get<1>(got);
      std::string out;
      if (!ev.text.empty()) {
        json delta = s.chat ? json{{"content", ev.text}} : json(ev.text);
        out += "data: " + dump(stream_chunk(s, std::move(delta), nullptr)) + "\n\n";
      }
      if (ev.done) {
        if (!ev.error.empty()) {
          out += "data: " + dump(error_json(ApiError(stopping_ ? 503 : 500, ev.error, "", "", "server_error"))) + "\n\n";
        } else {
          out += "data: " + dump(stream_chunk(s, s.chat ? json::object() : json(""), ev.finish_reason)) + "\n\n";
          if (s.include_usage) {
            json u = {{"id", s.id}, {"object", s.chat ? "chat.completion.chunk" : "text_completion"}, {"created", s.created},
                      {"model", model_id_}, {"choices", json::array()}, {"usage", usage_json(ev)}};
            out += "data: " + dump(u) + "\n\n";
          }
        }
        out += "data: [DONE]\n\n";
      }
      if (!out.empty() && !co_await send_chunk(sock, out)) co_return false;
      if (ev.done) break;
    }
    auto last = co_await asio::async_write(sock, http::make_chunk_last(), kNoThrow);
    co_return !std::get<0>(last);
  }

  // Streaming: server-sent events in chunked transfer encoding. Returns false when the connection
  // cannot be reused (write failed, client gone).
  asio::awaitable<bool> stream(tcp::socket& sock, const Request& req, const GenerationRequest& g, std::shared_ptr<Job> job) {
    auto ch = submit(job, co_await asio::this_coro::executor);
    StreamInfo info;
    info.chat = g.kind == GenerationRequest::Kind::kChat;
    info.id = random_id(info.chat ? "chatcmpl-" : "cmpl-");
    info.created = static_cast<int64_t>(std::time(nullptr));
    info.include_usage = g.include_usage;

    http::response<http::empty_body> head{http::status::ok, req.version()};
    head.set(http::field::server, "1bit");
    head.set(http::field::content_type, "text/event-stream");
    head.set(http::field::cache_control, "no-cache");
    head.keep_alive(req.keep_alive());
    head.chunked(true);
    http::response_serializer<http::empty_body> sr{head};

    auto which = co_await (stream_events(sock, sr, *ch, info) || watch_disconnect(sock));
    if (which.index() == 1 || !std::get<0>(which)) {
      job->cancelled = true;
      ch->close();
      co_return false;
    }
    co_return true;
  }

  ServerOptions opts_;
  std::unique_ptr<Model> model_;
  Tokenizer tok_;
  ChatTemplate tmpl_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Scheduler> sched_;
  std::string model_id_;
  int64_t created_ = 0;
  std::string bos_text_, eos_text_;
  std::vector<int32_t> stop_ids_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> busy_{0};
};

}  // namespace

int run_server(const ServerOptions& opts) {
  Server server(opts);
  return server.run();
}

}  // namespace onebit::server
