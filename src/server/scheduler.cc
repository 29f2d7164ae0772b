#include "server/scheduler.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <optional>

#include "core/base/error.h"
#include "core/sampler/stop_matcher.h"

namespace onebit::server {

using Clock = std::chrono::steady_clock;

struct Scheduler::Running {
  std::shared_ptr<Job> job;
  int slot;
  int64_t reuse = 0;  // prompt tokens to keep from the slot's cached prefix (generation)
  std::optional<Sampler> sampler;
  std::optional<StopMatcher> stop;
  StreamDecoder decoder;
  std::vector<int32_t> history;  // prompt + generated; the session holds its first n_past tokens
  std::span<const float> logits;
  int64_t generated = 0;
  bool prefilled = false;
  bool sampled_any = false;
  Clock::time_point last_token;
  std::vector<TokenLogprobs> pending_logprobs;  // of tokens whose text has not been sent yet
  std::optional<TokenEvent> final_event;        // sent once the session is released
  size_t next_input = 0;                        // embedding: the next input to run
  int64_t input_tokens = 0;                     // embedding: tokens run so far
  // Continuous batching: what this Job gives the step's Engine::decode_batch (empty: nothing).
  std::span<const int32_t> pending;
  int32_t pending_token = 0;   // the sampled token `pending` points at
  bool truncated = false;      // the session was cut to the reused prefix
  int64_t prefill_done = 0;    // prompt tokens past the reused prefix already in the KV cache

  Running(std::shared_ptr<Job> j, int s, const Tokenizer& tok, int64_t n_vocab)
      : job(std::move(j)), slot(s), decoder(tok, /*skip_special=*/true) {
    if (job->kind == Job::Kind::kGenerate) {
      sampler.emplace(job->sampling, n_vocab);
      stop.emplace(job->sampling.stop, job->sampling.stop_token_ids);
      history = job->prompt;
    }
  }
};

namespace {

void send(Job& job, TokenEvent ev) {
  // Capacity covers every event a Job sends; a failure means the receiver closed the channel.
  ev.index = job.index;
  if (!job.channel->try_send(boost::system::error_code(), std::move(ev))) job.cancelled = true;
}

TokenEvent error_event(const std::string& message, int64_t prompt_tokens = 0) {
  TokenEvent ev;
  ev.done = true;
  ev.error = message;
  ev.prompt_tokens = prompt_tokens;
  return ev;
}

void send_error(Job& job, const std::string& message, int64_t prompt_tokens = 0) {
  send(job, error_event(message, prompt_tokens));
}

// Mean over the rows of [n][dim], then scaled to unit L2 norm (left as is if it is all zeros).
std::vector<float> mean_pool_normalized(const std::vector<float>& rows, size_t dim) {
  const size_t n = dim ? rows.size() / dim : 0;
  std::vector<double> acc(dim, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t d = 0; d < dim; ++d) acc[d] += rows[i * dim + d];
  double norm2 = 0.0;
  for (double& a : acc) {
    a /= static_cast<double>(n);
    norm2 += a * a;
  }
  const double scale = norm2 > 0.0 ? 1.0 / std::sqrt(norm2) : 1.0;
  std::vector<float> out(dim);
  for (size_t d = 0; d < dim; ++d) out[d] = static_cast<float>(acc[d] * scale);
  return out;
}

}  // namespace

size_t common_prefix(std::span<const int32_t> a, std::span<const int32_t> b) {
  const size_t n = std::min(a.size(), b.size());
  return static_cast<size_t>(std::mismatch(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(n), b.begin()).first -
                             a.begin());
}

Scheduler::Scheduler(Engine& engine, const Tokenizer& tok, int parallel, size_t max_queue, Metrics* metrics)
    : engine_(engine), tok_(tok), metrics_(metrics), parallel_(parallel),
      max_queue_(max_queue ? max_queue : 64 * static_cast<size_t>(std::max(parallel, 1))) {
  if (parallel < 1) fail("--parallel must be >= 1, got {}", parallel);
  slots_.resize(static_cast<size_t>(parallel));
  for (Slot& s : slots_) s.session = engine_.new_session();
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  shutdown();
  if (thread_.joinable()) thread_.join();
}

bool Scheduler::submit(std::span<const std::shared_ptr<Job>> jobs) {
  const auto now = Clock::now();
  for (const auto& j : jobs) j->submitted = now;
  {
    std::lock_guard lk(mu_);
    if (!stopping_) {
      if (!queue_.empty() && queue_.size() + jobs.size() > max_queue_) return false;
      queue_.insert(queue_.end(), jobs.begin(), jobs.end());
      cv_.notify_one();
      return true;
    }
  }
  for (const auto& j : jobs) send_error(*j, "the server is shutting down");
  return true;
}

void Scheduler::shutdown() {
  std::lock_guard lk(mu_);
  stopping_ = true;
  cv_.notify_one();
}

size_t Scheduler::channel_capacity(std::span<const std::shared_ptr<Job>> jobs) const {
  size_t n = 0;
  for (const auto& j : jobs)
    n += j->kind == Job::Kind::kEmbed ? j->inputs.size() + 4 : static_cast<size_t>(engine_.n_ctx()) + 4;
  return n;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  {
    std::lock_guard lk(mu_);
    s.queued = static_cast<int64_t>(queue_.size());
  }
  s.running = n_running_.load(std::memory_order_relaxed);
  s.kv_running = kv_running_.load(std::memory_order_relaxed);
  s.kv_cached = kv_cached_.load(std::memory_order_relaxed);
  s.kv_total = static_cast<int64_t>(parallel_) * engine_.n_ctx();
  return s;
}

void Scheduler::publish_stats(size_t n_running) {
  int64_t kv_run = 0, kv_idle = 0;
  for (const Slot& s : slots_) {
    if (s.busy) kv_run += s.session->n_past();
    else kv_idle += static_cast<int64_t>(s.cached.size());
  }
  n_running_.store(static_cast<int64_t>(n_running), std::memory_order_relaxed);
  kv_running_.store(kv_run, std::memory_order_relaxed);
  kv_cached_.store(kv_idle, std::memory_order_relaxed);
}

int Scheduler::pick_slot(const Job& job) const {
  int lru = -1, best = -1;
  size_t best_prefix = 0;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    if (s.busy) continue;
    if (lru < 0 || s.last_used < slots_[static_cast<size_t>(lru)].last_used) lru = static_cast<int>(i);
    const size_t p = job.kind == Job::Kind::kGenerate ? common_prefix(s.cached, job.prompt) : 0;
    if (p > best_prefix) {
      best = static_cast<int>(i);
      best_prefix = p;
    }
  }
  // A prefix shorter than half the prompt (a shared BOS or system prompt) is not worth evicting
  // the least recently used session's cache for.
  if (best >= 0 && 2 * best_prefix >= job.prompt.size()) return best;
  return lru;
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
      while (!queue_.empty()) {
        if (queue_.front()->cancelled) {
          queue_.pop_front();
          continue;
        }
        const int slot = pick_slot(*queue_.front());
        if (slot < 0) break;
        std::shared_ptr<Job> job = std::move(queue_.front());
        queue_.pop_front();
        Slot& s = slots_[static_cast<size_t>(slot)];
        try {
          auto r = std::make_unique<Running>(job, slot, tok_, engine_.n_vocab());
          if (job->kind == Job::Kind::kGenerate) {
            // Keep at least the prompt's last token to decode, so that its logits exist.
            r->reuse = static_cast<int64_t>(
                std::min(common_prefix(s.cached, job->prompt), job->prompt.size() - 1));
          }
          s.busy = true;
          s.last_used = ++round_;
          running.push_back(std::move(r));
        } catch (const std::exception& e) {  // the server validated the params; this is a backstop
          send_error(*job, e.what());
        }
      }
    }
    publish_stats(running.size());
    // One step: every running Job takes its turn, generations that are decoding first (each
    // samples its next token), then prompts still being prefilled, in chunks, with what is left
    // of the step's token budget; then all the tokens queued this way go through the model in
    // one Engine::decode_batch (shared passes over the weights).
    const size_t n = running.size();
    std::vector<char> more(n, 0), failed(n, 0);
    int64_t budget = engine_.options().n_batch;
    auto turn = [&](size_t i) {
      Running& r = *running[i];
      try {
        more[i] = r.job->kind == Job::Kind::kEmbed ? step_embed(r) : step(r, budget);
      } catch (const std::exception& e) {
        failed[i] = 1;
        r.final_event = error_event(e.what(), static_cast<int64_t>(r.job->prompt.size()));
      }
    };
    for (size_t i = 0; i < n; ++i)
      if (running[i]->job->kind == Job::Kind::kEmbed || running[i]->prefilled) turn(i);
    budget = std::max<int64_t>(budget, kMinPrefillChunk);  // prompts always progress
    for (size_t i = 0; i < n; ++i)
      if (running[i]->job->kind == Job::Kind::kGenerate && !running[i]->prefilled) turn(i);
    run_batch(running, more, failed);
    for (size_t i = 0, k = 0; k < n; ++k) {
      Running& r = *running[i];
      Slot& slot = slots_[static_cast<size_t>(r.slot)];
      if (more[k] && !failed[k]) {
        ++i;
        continue;
      }
      // The session keeps what it holds for the next Job with the same prefix.
      const int64_t n_past = slot.session->n_past();
      if (!failed[k] && r.job->kind == Job::Kind::kGenerate && n_past <= static_cast<int64_t>(r.history.size())) {
        slot.cached.assign(r.history.begin(), r.history.begin() + n_past);
      } else if (!failed[k] && r.job->kind == Job::Kind::kEmbed && r.next_input > 0 &&
                 n_past == static_cast<int64_t>(r.job->inputs[r.next_input - 1].size())) {
        slot.cached = r.job->inputs[r.next_input - 1];
      } else {
        slot.session->reset();
        slot.cached.clear();
      }
      slot.busy = false;
      // The final event goes out after the session is released and the stats say so: a client
      // that reads /metrics right after its reply sees its sequence gone.
      std::optional<TokenEvent> final_event = std::move(r.final_event);
      std::shared_ptr<Job> job = std::move(r.job);
      running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
      if (final_event) {
        publish_stats(running.size());
        send(*job, std::move(*final_event));
      }
    }
    publish_stats(running.size());
  }
}

void Scheduler::run_batch(std::vector<std::unique_ptr<Running>>& running, std::vector<char>& more,
                          std::vector<char>& failed) {
  std::vector<BatchItem> items;
  std::vector<size_t> owner;
  for (size_t i = 0; i < running.size(); ++i)
    if (more[i] && !failed[i] && !running[i]->pending.empty()) {
      items.push_back({slots_[static_cast<size_t>(running[i]->slot)].session.get(), running[i]->pending, {}});
      owner.push_back(i);
    }
  if (items.empty()) return;
  try {
    engine_.decode_batch(items);
  } catch (const std::exception&) {
    // decode_batch checks everything before running anything: find the Job at fault by running
    // them one by one, so that the others are not disturbed.
    for (BatchItem& it : items) {
      it.logits = {};
      try {
        it.logits = it.session->decode(it.tokens);
      } catch (const std::exception& e) {
        const size_t i = owner[static_cast<size_t>(&it - items.data())];
        failed[i] = 1;
        running[i]->final_event = error_event(e.what(), static_cast<int64_t>(running[i]->job->prompt.size()));
      }
    }
  }
  if (metrics_) metrics_->observe_batch(static_cast<int64_t>(items.size()));
  for (size_t j = 0; j < items.size(); ++j) {
    Running& r = *running[owner[j]];
    r.pending = {};
    if (failed[owner[j]]) continue;
    r.logits = items[j].logits;
    const Job& job = *r.job;
    if (!r.prefilled && r.reuse + r.prefill_done == static_cast<int64_t>(job.prompt.size())) {
      r.prefilled = true;
      if (metrics_) metrics_->add_prompt_tokens(static_cast<int64_t>(job.prompt.size()), r.reuse);
    }
  }
}

bool Scheduler::step(Running& r, int64_t& budget) {
  Job& job = *r.job;
  Session& session = *slots_[static_cast<size_t>(r.slot)].session;
  if (job.cancelled) return false;
  if (!r.prefilled) {
    // The next chunk of the prompt (past the reused prefix), within the step's budget.
    if (!r.truncated) {
      session.truncate(r.reuse);
      r.truncated = true;
    }
    const int64_t rest = static_cast<int64_t>(job.prompt.size()) - r.reuse - r.prefill_done;
    const int64_t take = std::min(rest, budget);
    if (take <= 0) return true;  // no budget left in this step
    r.pending = std::span(job.prompt).subspan(static_cast<size_t>(r.reuse + r.prefill_done), static_cast<size_t>(take));
    r.prefill_done += take;
    budget -= take;
    return true;  // sampling starts on the step after the prompt's last chunk
  }
  auto finish = [&](const char* reason, std::string text) {
    TokenEvent ev;
    ev.text = std::move(text);
    ev.logprobs = std::move(r.pending_logprobs);
    ev.done = true;
    ev.finish_reason = reason;
    ev.prompt_tokens = static_cast<int64_t>(job.prompt.size());
    ev.cached_tokens = r.reuse;
    ev.completion_tokens = r.generated;
    r.final_event = std::move(ev);
    return false;
  };
  TokenLogprobs lp;
  const int32_t next = r.sampler->sample(r.logits, r.history, job.logprobs ? &lp : nullptr);
  const auto now = Clock::now();
  if (metrics_) {
    if (!r.sampled_any) metrics_->observe_ttft(std::chrono::duration<double>(now - job.submitted).count());
    else metrics_->observe_itl(std::chrono::duration<double>(now - r.last_token).count());
  }
  r.sampled_any = true;
  r.last_token = now;
  if (r.stop->is_stop_token(next)) {
    StopMatcher::Result tail = r.stop->push(r.decoder.flush());
    return finish("stop", tail.stopped ? std::move(tail.text) : tail.text + r.stop->flush());
  }
  r.history.push_back(next);
  ++r.generated;
  if (metrics_) metrics_->add_generated_tokens(1);
  if (job.logprobs) r.pending_logprobs.push_back(std::move(lp));
  StopMatcher::Result res = r.stop->push(r.decoder.push(next));
  if (res.stopped) return finish("stop", std::move(res.text));
  const int32_t max_tokens = job.sampling.max_tokens;
  const bool at_limit = max_tokens >= 0 && r.generated >= max_tokens;
  const bool ctx_full = session.n_past() >= session.n_ctx();
  if (at_limit || ctx_full) {
    StopMatcher::Result tail = r.stop->push(r.decoder.flush());
    std::string text = std::move(res.text) + tail.text;
    if (tail.stopped) return finish("stop", std::move(text));
    return finish("length", text + r.stop->flush());
  }
  if (!res.text.empty()) {
    TokenEvent ev;
    ev.text = std::move(res.text);
    ev.logprobs = std::move(r.pending_logprobs);
    r.pending_logprobs.clear();
    send(job, std::move(ev));
  }
  r.pending_token = next;
  r.pending = std::span(&r.pending_token, 1);
  --budget;
  return true;
}

bool Scheduler::step_embed(Running& r) {
  Job& job = *r.job;
  if (job.cancelled) return false;
  Session& session = *slots_[static_cast<size_t>(r.slot)].session;
  const std::vector<int32_t>& input = job.inputs[r.next_input];
  const std::vector<float> rows = session.hidden_states(input);
  TokenEvent ev;
  ev.embedding = mean_pool_normalized(rows, rows.size() / input.size());
  r.input_tokens += static_cast<int64_t>(input.size());
  if (metrics_) metrics_->add_embedding_tokens(static_cast<int64_t>(input.size()));
  const int index = static_cast<int>(r.next_input++);
  const bool last = r.next_input == job.inputs.size();
  // The event's index is the input's (send() would put the Job's there).
  ev.index = index;
  if (!job.channel->try_send(boost::system::error_code(), std::move(ev))) {
    job.cancelled = true;
    return false;
  }
  if (!last) return true;
  TokenEvent done;
  done.done = true;
  done.prompt_tokens = r.input_tokens;
  r.final_event = std::move(done);
  return false;
}

}  // namespace onebit::server
