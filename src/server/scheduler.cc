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
  int slot = -1;              // -1 while preempted
  uint64_t arrival = 0;       // order of first admission: the latest is preempted first
  int64_t reuse = 0;          // prompt tokens found in the KV cache at the first admission
  bool prompt_counted = false;
  std::optional<Sampler> sampler;
  std::optional<StopMatcher> stop;
  StreamDecoder decoder;
  // Prompt + generated. The session holds its first n_past tokens; until `prefilled` they are
  // (re)computed in chunks (after a preemption the generated tokens are recomputed with the prompt).
  std::vector<int32_t> history;
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
  int32_t pending_token = 0;  // the sampled token `pending` points at
  // Sampled ahead of the step, in parallel with the other Jobs (presample()); step() takes it.
  bool presampled = false;
  int32_t presample = 0;
  TokenLogprobs presample_lp;
  std::string presample_error;
  // This step: the Job goes on after it / failed (final_event holds the error).
  bool more = false, failed = false;

  Running(std::shared_ptr<Job> j, const Tokenizer& tok, int64_t n_vocab)
      : job(std::move(j)), decoder(tok, /*skip_special=*/true) {
    if (job->kind == Job::Kind::kGenerate) {
      sampler.emplace(job->sampling, n_vocab);
      stop.emplace(job->sampling.stop, job->sampling.stop_token_ids);
      history = job->prompt;
    }
  }
  bool generating() const { return job->kind == Job::Kind::kGenerate; }
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

Scheduler::Scheduler(Engine& engine, const Tokenizer& tok, const SchedulerOptions& opts, Metrics* metrics)
    : engine_(engine), tok_(tok), metrics_(metrics), parallel_(opts.parallel),
      max_queue_(opts.max_queue ? opts.max_queue : 64 * static_cast<size_t>(std::max(opts.parallel, 1))) {
  if (opts.parallel < 1) fail("--parallel must be >= 1, got {}", opts.parallel);
  if (opts.kv_blocks < 0) fail("--kv-blocks must be >= 0 (0 = --parallel contexts), got {}", opts.kv_blocks);
  max_sequence_ = engine_.n_ctx();
  if (opts.shared_kv && engine_.paged_kv()) {
    const int64_t blocks = opts.kv_blocks ? opts.kv_blocks : opts.parallel * engine_.blocks_per_context();
    pool_ = engine_.new_kv_pool(blocks);
    max_sequence_ = std::min(max_sequence_, blocks * engine_.kv_block());
    if (max_sequence_ < 2)
      fail("--kv-blocks {} of {} positions cannot hold a prompt and one more token", blocks, engine_.kv_block());
  }
  // On a GPU the host cores are free while the model runs: sampling (a softmax over the whole
  // vocabulary per Job and token) is spread over them, which matters for many streams of a
  // 128k-vocabulary model. On the CPU those cores run the model, so Jobs sample one after another.
  if (opts.sample_threads < 0) fail("sample threads must be >= 0 (0 = automatic), got {}", opts.sample_threads);
  int sample_threads = opts.sample_threads;
  if (sample_threads == 0)
    sample_threads = engine_.options().device == Device::kCpu
                         ? 1
                         : std::min(opts.parallel, std::max(1, static_cast<int>(std::thread::hardware_concurrency())));
  if (sample_threads > 1) sample_pool_ = std::make_unique<cpu::ThreadPool>(sample_threads);
  slots_.resize(static_cast<size_t>(opts.parallel));
  for (Slot& s : slots_) s.session = engine_.new_session(pool_);
  publish_stats(0);
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

int64_t Scheduler::kv_blocks() const {
  return pool_ ? pool_->blocks().n_blocks() : parallel_ * engine_.blocks_per_context();
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  {
    std::lock_guard lk(mu_);
    s.queued = static_cast<int64_t>(queue_.size());
  }
  constexpr auto rl = std::memory_order_relaxed;
  s.queued += n_preempted_.load(rl);
  s.running = n_running_.load(rl);
  s.kv_running = kv_running_.load(rl);
  s.kv_cached = kv_cached_.load(rl);
  s.kv_block_size = kv_block_size();
  s.kv_blocks_total = kv_blocks();
  s.kv_total = s.kv_blocks_total * s.kv_block_size;
  s.kv_blocks_used = blocks_used_.load(rl);
  s.kv_blocks_cached = blocks_cached_.load(rl);
  s.preemptions = preemptions_.load(rl);
  return s;
}

void Scheduler::publish_stats(size_t n_running) {
  int64_t kv_run = 0, kv_idle = 0, busy = 0, idle_kept = 0;  // positions; blocks of private caches
  for (const Slot& s : slots_) {
    if (s.busy) {
      kv_run += s.session->n_past();
      busy += s.session->blocks_held();
    } else {
      kv_idle += s.session->n_past();
      idle_kept += s.session->blocks_held();
    }
  }
  constexpr auto rl = std::memory_order_relaxed;
  if (pool_) {
    const KvBlockManager& m = pool_->blocks();
    kv_idle = m.n_cached() * m.block_size();
    blocks_used_.store(m.n_used(), rl);
    blocks_cached_.store(m.n_cached(), rl);
  } else {
    blocks_used_.store(busy, rl);
    blocks_cached_.store(idle_kept, rl);
  }
  n_running_.store(static_cast<int64_t>(n_running), rl);
  n_preempted_.store(static_cast<int64_t>(preempted_.size()), rl);
  kv_running_.store(kv_run, rl);
  kv_cached_.store(kv_idle, rl);
}

int Scheduler::pick_slot(const Job& job) const {
  int lru = -1, best = -1;
  size_t best_prefix = 0;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    if (s.busy) continue;
    if (lru < 0 || s.last_used < slots_[static_cast<size_t>(lru)].last_used) lru = static_cast<int>(i);
    const size_t p = job.kind == Job::Kind::kGenerate ? common_prefix(s.session->tokens(), job.prompt) : 0;
    if (p > best_prefix) {
      best = static_cast<int>(i);
      best_prefix = p;
    }
  }
  // A prefix shorter than half the prompt (a shared BOS or system prompt) is not worth evicting
  // the least recently used session's cache for. (With a shared pool idle sessions hold nothing.)
  if (best >= 0 && 2 * best_prefix >= job.prompt.size()) return best;
  return lru;
}

void Scheduler::admit(RunningList& running) {
  for (;;) {
    while (!preempted_.empty() && preempted_.front()->job->cancelled) preempted_.pop_front();
    while (!queue_.empty() && queue_.front()->cancelled) queue_.pop_front();
    const bool resume = !preempted_.empty();  // preempted sequences go first
    if (!resume && queue_.empty()) return;
    const std::shared_ptr<Job> job = resume ? preempted_.front()->job : queue_.front();
    const bool gen = job->kind == Job::Kind::kGenerate;
    if (!resume) {
      // A Job that could not run even alone is refused (the HTTP layer checks this first).
      int64_t longest = gen ? static_cast<int64_t>(job->prompt.size()) + 1 : 0;
      if (!gen)
        for (const auto& in : job->inputs) longest = std::max(longest, static_cast<int64_t>(in.size()));
      if (longest > max_sequence_ || (gen && job->prompt.empty())) {
        queue_.pop_front();
        send_error(*job, pool_ && max_sequence_ < engine_.n_ctx()
                             ? fmt::format("the request needs {} KV cache positions but the whole KV pool holds {} "
                                           "({} blocks of {}; see --kv-blocks)",
                                           longest, max_sequence_, kv_blocks(), kv_block_size())
                             : fmt::format("the request needs {} positions but the context is {} tokens", longest,
                                           max_sequence_));
        continue;
      }
    }
    const int slot = pick_slot(*job);
    if (slot < 0) return;
    Session& session = *slots_[static_cast<size_t>(slot)].session;
    const std::span<const int32_t> seq = !gen ? std::span<const int32_t>() : resume ? std::span(preempted_.front()->history)
                                                                                   : std::span(job->prompt);
    // Keep at least the last token to decode, so that its logits exist.
    const int64_t reused = gen ? session.reuse_prefix(seq, static_cast<int64_t>(seq.size()) - 1) : 0;
    if (pool_ && !running.empty()) {
      // Wait until the pool can hold this sequence (its prompt and one more token) next to the
      // running ones; with nothing running it always can.
      const size_t input = resume ? preempted_.front()->next_input : 0;
      const int64_t want = std::min(max_sequence_, gen ? static_cast<int64_t>(seq.size()) + 1
                                                        : static_cast<int64_t>(job->inputs[input].size()));
      if (session.blocks_needed(want) > pool_->blocks().n_available()) {
        session.reset();  // the blocks it took stay in the prefix cache
        return;
      }
    }
    std::unique_ptr<Running> r;
    if (resume) {
      r = std::move(preempted_.front());
      preempted_.pop_front();
    } else {
      queue_.pop_front();
      try {
        r = std::make_unique<Running>(job, tok_, engine_.n_vocab());
      } catch (const std::exception& e) {  // the server validated the params; this is a backstop
        if (pool_) session.reset();
        send_error(*job, e.what());
        continue;
      }
      r->arrival = ++arrivals_;
      r->reuse = reused;
    }
    Slot& s = slots_[static_cast<size_t>(slot)];
    r->slot = slot;
    s.busy = true;
    s.last_used = ++round_;
    running.push_back(std::move(r));
  }
}

void Scheduler::loop() {
  RunningList running;
  for (;;) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !queue_.empty() || !running.empty() || !preempted_.empty(); });
      if (stopping_) {
        for (auto& r : running)
          if (!r->job->cancelled) send_error(*r->job, "the server is shutting down");
        for (auto& r : preempted_)
          if (!r->job->cancelled) send_error(*r->job, "the server is shutting down");
        for (auto& j : queue_)
          if (!j->cancelled) send_error(*j, "the server is shutting down");
        queue_.clear();
        return;
      }
      admit(running);
    }
    publish_stats(running.size());
    // One step: every running Job takes its turn, generations that are decoding first (each
    // samples its next token), then prompts still being prefilled, in chunks, with what is left
    // of the step's token budget; Jobs that finished are let go, the others get their KV blocks;
    // then all the tokens queued this way go through the model in one Engine::decode_batch
    // (shared passes over the weights), and embedding Jobs run one input each.
    int64_t budget = engine_.options().n_batch;
    auto turn = [&](Running& r) {
      r.pending = {};
      r.failed = false;
      try {
        r.more = r.generating() ? step(r, budget) : !r.job->cancelled;
      } catch (const std::exception& e) {
        r.failed = true;
        r.final_event = error_event(e.what(), static_cast<int64_t>(r.job->prompt.size()));
      }
    };
    presample(running);
    for (auto& r : running)
      if (!r->generating() || r->prefilled) turn(*r);
    budget = std::max<int64_t>(budget, kMinPrefillChunk);  // prompts always progress
    for (auto& r : running)
      if (r->generating() && !r->prefilled) turn(*r);
    retire(running);
    if (pool_) plan_blocks(running);
    run_batch(running);
    for (auto& r : running) {
      if (r->generating() || !r->more || r->failed) continue;
      try {
        r->more = step_embed(*r);
      } catch (const std::exception& e) {
        r->failed = true;
        r->final_event = error_event(e.what(), static_cast<int64_t>(r->job->prompt.size()));
      }
    }
    retire(running);
    publish_stats(running.size());
  }
}

void Scheduler::retire(RunningList& running) {
  for (size_t i = 0; i < running.size();) {
    Running& r = *running[i];
    if (r.more && !r.failed) {
      ++i;
      continue;
    }
    Slot& slot = slots_[static_cast<size_t>(r.slot)];
    // With a shared pool the blocks go back (full ones stay in the prefix cache); otherwise the
    // Session keeps its tokens for the next Job with the same prefix.
    if (pool_ || r.failed) slot.session->reset();
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
}

void Scheduler::preempt(Running& r) {
  Slot& slot = slots_[static_cast<size_t>(r.slot)];
  slot.session->reset();  // its full blocks stay cached: the recompute may find them again
  slot.busy = false;
  r.slot = -1;
  r.prefilled = false;
  r.pending = {};
  r.logits = {};
  r.more = false;
  preemptions_.fetch_add(1, std::memory_order_relaxed);
  if (metrics_) metrics_->count_preemption();
}

void Scheduler::plan_blocks(RunningList& running) {
  std::vector<Running*> order;
  for (auto& r : running) order.push_back(r.get());
  std::sort(order.begin(), order.end(), [](const Running* a, const Running* b) { return a->arrival < b->arrival; });
  for (Running* r : order) {
    if (r->slot < 0 || !r->more || r->failed) continue;
    Session& session = *slots_[static_cast<size_t>(r->slot)].session;
    int64_t need;
    if (r->generating()) {
      if (r->pending.empty()) continue;
      need = session.n_past() + static_cast<int64_t>(r->pending.size());
    } else {
      session.reset();  // hidden_states() runs the input from position 0
      need = static_cast<int64_t>(r->job->inputs[r->next_input].size());
    }
    while (!session.reserve(need)) {
      // The most recently admitted sequence still holding a Session gives its blocks back.
      Running* victim = nullptr;
      for (Running* o : order)
        if (o->slot >= 0 && (victim == nullptr || o->arrival > victim->arrival)) victim = o;
      preempt(*victim);
      if (victim == r) break;
    }
  }
  for (size_t i = 0; i < running.size();) {
    if (running[i]->slot >= 0) {
      ++i;
      continue;
    }
    std::unique_ptr<Running> r = std::move(running[i]);
    running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
    const auto at = std::upper_bound(preempted_.begin(), preempted_.end(), r->arrival,
                                     [](uint64_t a, const std::unique_ptr<Running>& p) { return a < p->arrival; });
    preempted_.insert(at, std::move(r));
  }
}

void Scheduler::run_batch(RunningList& running) {
  std::vector<BatchItem> items;
  std::vector<Running*> owner;
  for (auto& r : running)
    if (r->more && !r->failed && !r->pending.empty()) {
      items.push_back({slots_[static_cast<size_t>(r->slot)].session.get(), r->pending, {}});
      owner.push_back(r.get());
    }
  if (items.empty()) return;
  // On a backend that samples on the device, a step in which every item is a generation's next
  // token with a chain the device runs (no penalties, bias, typical-p, logprobs) draws the tokens
  // there (each Job's own Sampler and random numbers: the tokens the host would draw, up to
  // rounding at a boundary) and only the ids come back; step() takes them as presampled. Any other
  // step, and every step on the CPU, brings the logits back as before.
  bool device_sample = engine_.backend().samples_on_device();
  for (size_t j = 0; j < items.size() && device_sample; ++j) {
    const Running& r = *owner[j];
    device_sample = r.generating() && !r.job->logprobs && r.sampler->device_chain() &&
                    items[j].session->n_past() + static_cast<int64_t>(items[j].tokens.size()) ==
                        static_cast<int64_t>(r.history.size());
  }
  if (device_sample)
    for (size_t j = 0; j < items.size(); ++j) items[j].sampler = &*owner[j]->sampler;
  try {
    engine_.decode_batch(items, device_sample ? BatchOutput::kSample : BatchOutput::kLogits);
  } catch (const std::exception&) {
    // decode_batch checks everything before running anything: find the Job at fault by running
    // them one by one, so that the others are not disturbed.
    device_sample = false;  // nothing ran and nothing was drawn: the logits path below
    for (size_t j = 0; j < items.size(); ++j) {
      BatchItem& it = items[j];
      it.logits = {};
      try {
        it.logits = it.session->decode(it.tokens);
      } catch (const std::exception& e) {
        owner[j]->failed = true;
        owner[j]->final_event = error_event(e.what(), static_cast<int64_t>(owner[j]->job->prompt.size()));
      }
    }
  }
  if (metrics_) metrics_->observe_batch(static_cast<int64_t>(items.size()));
  for (size_t j = 0; j < items.size(); ++j) {
    Running& r = *owner[j];
    r.pending = {};
    if (r.failed) continue;
    r.logits = items[j].logits;
    if (device_sample) {
      r.presampled = true;
      r.presample = items[j].token;
      r.presample_lp = {};
      if (r.presample < 0) r.presample_error = "sampling: the logits hold a NaN or +inf, or every token is banned";
    }
    if (!r.prefilled && items[j].session->n_past() == static_cast<int64_t>(r.history.size())) {
      r.prefilled = true;
      if (metrics_ && !r.prompt_counted) metrics_->add_prompt_tokens(static_cast<int64_t>(r.job->prompt.size()), r.reuse);
      r.prompt_counted = true;
    }
  }
}

bool Scheduler::step(Running& r, int64_t& budget) {
  Job& job = *r.job;
  Session& session = *slots_[static_cast<size_t>(r.slot)].session;
  if (job.cancelled) return false;
  if (!r.prefilled) {
    // The next chunk of the prompt (or, after a preemption, of prompt + generated) that is not in
    // the KV cache yet, within the step's budget.
    const int64_t done = session.n_past();
    // (input_piece_rows: pieces of at least 2 rows, as Session::decode cuts a prompt.)
    const int64_t take = input_piece_rows(static_cast<int64_t>(r.history.size()) - done, budget);
    if (take <= 0) return true;  // no budget left in this step
    r.pending = std::span(r.history).subspan(static_cast<size_t>(done), static_cast<size_t>(take));
    budget -= take;
    return true;  // sampling starts on the step after the last chunk
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
  if (r.presampled && !r.presample_error.empty()) fail("{}", r.presample_error);
  const int32_t next = r.presampled ? r.presample : r.sampler->sample(r.logits, r.history, job.logprobs ? &lp : nullptr);
  if (r.presampled) lp = std::move(r.presample_lp);
  r.presampled = false;
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
  const bool ctx_full = session.n_past() >= max_sequence_;
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

void Scheduler::presample(RunningList& running) {
  if (!sample_pool_) return;
  std::vector<Running*> todo;
  for (auto& r : running)
    if (r->generating() && r->prefilled && !r->job->cancelled && !r->presampled) todo.push_back(r.get());
  if (todo.size() < 2) return;
  // Each Job's sampler (its RNG, penalties) and logits are its own: any split gives the same tokens.
  sample_pool_->parallel_for(static_cast<int64_t>(todo.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      Running& r = *todo[static_cast<size_t>(i)];
      r.presampled = true;
      r.presample_lp = {};
      try {  // parallel_for bodies must not throw: step() raises it on the engine thread
        r.presample = r.sampler->sample(r.logits, r.history, r.job->logprobs ? &r.presample_lp : nullptr);
      } catch (const std::exception& ex) {
        r.presample_error = ex.what();
      }
    }
  });
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
