#include "server/scheduler.h"

#include <exception>
#include <optional>
#include <span>

#include "core/base/error.h"
#include "core/sampler/sampler.h"
#include "core/sampler/stop_matcher.h"

namespace onebit::server {

struct Scheduler::Running {
  std::shared_ptr<Job> job;
  std::unique_ptr<Session> session;
  Sampler sampler;
  StopMatcher stop;
  StreamDecoder decoder;
  std::vector<int32_t> history;
  std::span<const float> logits;
  int64_t generated = 0;
  bool prefilled = false;

  Running(std::shared_ptr<Job> j, std::unique_ptr<Session> s, int64_t n_vocab, const Tokenizer& tok)
      : job(std::move(j)), session(std::move(s)), sampler(job->sampling, n_vocab),
        stop(job->sampling.stop, job->sampling.stop_token_ids), decoder(tok, /*skip_special=*/true),
        history(job->prompt) {}
};

namespace {

void send(Job& job, TokenEvent ev) {
  // Capacity covers every event a Job sends; a failure means the receiver closed the channel.
  if (!job.channel->try_send(boost::system::error_code(), std::move(ev))) job.cancelled = true;
}

void send_error(Job& job, const std::string& message, int64_t prompt_tokens = 0) {
  TokenEvent ev;
  ev.done = true;
  ev.error = message;
  ev.prompt_tokens = prompt_tokens;
  send(job, std::move(ev));
}

}  // namespace

Scheduler::Scheduler(Engine& engine, const Tokenizer& tok, int parallel) : engine_(engine), tok_(tok) {
  if (parallel < 1) fail("--parallel must be >= 1, got {}", parallel);
  for (int i = 0; i < parallel; ++i) free_sessions_.push_back(engine_.new_session());
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  shutdown();
  if (thread_.joinable()) thread_.join();
}

void Scheduler::submit(std::shared_ptr<Job> job) {
  {
    std::lock_guard lk(mu_);
    if (!stopping_) {
      queue_.push_back(std::move(job));
      cv_.notify_one();
      return;
    }
  }
  send_error(*job, "the server is shutting down");
}

void Scheduler::shutdown() {
  std::lock_guard lk(mu_);
  stopping_ = true;
  cv_.notify_one();
}

void Scheduler::loop() {
  std::vector<std::unique_ptr<Running>> running;
  for (;;) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !queue_.empty() || !running.empty(); });
      if (stopping_) {
        for (auto& r : running)
          if (!r->job->cancelled) send_error(*r->job, "the server is shutting down");
        for (auto& j : queue_)
          if (!j->cancelled) send_error(*j, "the server is shutting down");
        queue_.clear();
        return;
      }
      while (!queue_.empty() && !free_sessions_.empty()) {
        std::shared_ptr<Job> job = std::move(queue_.front());
        queue_.pop_front();
        if (job->cancelled) continue;
        std::unique_ptr<Session> s = std::move(free_sessions_.back());
        free_sessions_.pop_back();
        s->reset();
        try {
          running.push_back(std::make_unique<Running>(job, std::move(s), engine_.n_vocab(), tok_));
        } catch (const std::exception& e) {  // the server validated the params; this is a backstop
          free_sessions_.push_back(engine_.new_session());
          send_error(*job, e.what());
        }
      }
    }
    // Round-robin: one turn for each running Job, then look at the queue again.
    for (size_t i = 0; i < running.size();) {
      bool more = false;
      try {
        more = step(*running[i]);
      } catch (const std::exception& e) {
        send_error(*running[i]->job, e.what(), static_cast<int64_t>(running[i]->job->prompt.size()));
      }
      if (more) {
        ++i;
        continue;
      }
      free_sessions_.push_back(std::move(running[i]->session));
      running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
}

bool Scheduler::step(Running& r) {
  Job& job = *r.job;
  if (job.cancelled) return false;
  if (!r.prefilled) {
    r.logits = r.session->decode(job.prompt);
    r.prefilled = true;
    return true;  // the prompt was this Job's turn; sample on the next one
  }
  auto finish = [&](const char* reason, std::string text) {
    TokenEvent ev;
    ev.text = std::move(text);
    ev.done = true;
    ev.finish_reason = reason;
    ev.prompt_tokens = static_cast<int64_t>(job.prompt.size());
    ev.completion_tokens = r.generated;
    send(job, std::move(ev));
    return false;
  };
  const int32_t next = r.sampler.sample(r.logits, r.history);
  if (r.stop.is_stop_token(next)) {
    StopMatcher::Result tail = r.stop.push(r.decoder.flush());
    return finish("stop", tail.stopped ? std::move(tail.text) : tail.text + r.stop.flush());
  }
  r.history.push_back(next);
  ++r.generated;
  StopMatcher::Result res = r.stop.push(r.decoder.push(next));
  if (res.stopped) return finish("stop", std::move(res.text));
  const int32_t max_tokens = job.sampling.max_tokens;
  const bool at_limit = max_tokens >= 0 && r.generated >= max_tokens;
  const bool ctx_full = r.session->n_past() >= r.session->n_ctx();
  if (at_limit || ctx_full) {
    StopMatcher::Result tail = r.stop.push(r.decoder.flush());
    std::string text = std::move(res.text) + tail.text;
    if (tail.stopped) return finish("stop", std::move(text));
    return finish("length", text + r.stop.flush());
  }
  if (!res.text.empty()) {
    TokenEvent ev;
    ev.text = std::move(res.text);
    send(job, std::move(ev));
  }
  r.logits = r.session->decode(std::span(&next, 1));
  return true;
}

}  // namespace onebit::server
