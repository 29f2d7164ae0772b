// Scheduler: the one engine thread of `1bit serve`. It owns the Engine's Sessions and runs
// generation and embedding Jobs; HTTP threads only enqueue Jobs and drain their channels.
//
// Up to `parallel` Jobs run at once, each in its own Session. Continuous batching: each step of
// the loop gives every running generation one turn (those decoding sample their next token, then
// prompts being prefilled take chunks of what is left of a token budget of n_batch), and runs all
// of these tokens through the model in one Engine::decode_batch, so the weights are read once per
// step for every sequence; an embedding Job runs one input per step. Jobs beyond `parallel` wait
// in FIFO order; at most `max_queue` wait, further submissions are refused (HTTP 429).
//
// KV memory (paged KV, the CPU backend): the Sessions draw fixed-size blocks from one shared
// KvPool of `kv_blocks` blocks (default: parallel x blocks per context, the memory of `parallel`
// full contexts). Prefix cache: a finished (or cancelled, or preempted) sequence gives its blocks
// back; its full blocks stay cached under the hash of their tokens and their prefix (kv_pool.h)
// until evicted (least recently released first) for a new block. A new Job takes the longest run
// of cached blocks that match its prompt, from whichever request computed them, and prefills only
// the rest (at least the prompt's last token, so that its logits exist). A Job is admitted while
// the pool can hold its prompt (with the others running); when a step needs a block and none is
// left, the most recently admitted running sequence is preempted: its blocks are given back and it
// waits at the front of the queue with its prompt and the tokens generated so far, to be recomputed
// (mostly from the prefix cache) when there is room; its Sampler, stop matcher and text decoder
// carry on, so the client's stream continues as if nothing happened. A sequence never grows beyond
// max_sequence() positions (the context, or the whole pool if that is smaller; "length" then); a
// Job whose prompt + 1 does not fit there is refused with an error.
//
// Without paged KV (the CUDA backend), or with SchedulerOptions::shared_kv false, each Session
// keeps its own contiguous cache of n_ctx positions and the tokens of its last sequence: a new
// generation Job is given the idle Session whose cached tokens share the longest prefix with its
// prompt, if that prefix is at least half the prompt (as llama.cpp's slot similarity); otherwise
// the least recently used idle Session. Nothing is shared or preempted then.
//
// The reused count is reported in the final event (usage.prompt_tokens_details.cached_tokens)
// and in the metrics.
//
// Each Job carries a channel (an Asio concurrent_channel bound to its connection's executor) that
// receives TokenEvents: text deltas, then exactly one final event (done = true) with the finish
// reason and token counts, or an error. The channel's capacity (channel_capacity) covers every
// event the Jobs sharing it can send, so the engine thread never blocks on a slow client.
// Setting Job::cancelled (the client went away) makes the engine drop the Job at its next turn
// and free its Session and KV blocks; no final event is sent then.
#pragma once

#include <boost/asio/experimental/concurrent_channel.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "core/sampler/sampler.h"
#include "core/sampler/sampling_params.h"
#include "core/tokenizer/tokenizer.h"
#include "engine/engine.h"
#include "kernels/cpu/thread_pool.h"
#include "server/metrics.h"

namespace onebit::server {

struct TokenEvent {
  int index = 0;                        // the Job's index: choice (n > 1), or embedding input
  std::string text;                     // content to append (may be empty)
  std::vector<TokenLogprobs> logprobs;  // Job::logprobs: one per token generated since the last event
  std::vector<float> embedding;         // embedding Jobs: one input's pooled, L2-normalised vector
  bool done = false;                    // the last event of the Job
  std::string finish_reason;            // when done without error: "stop" or "length"
  std::string error;                    // when done: non-empty if the Job failed
  int64_t prompt_tokens = 0;            // when done (embedding Jobs: all inputs' tokens)
  int64_t cached_tokens = 0;            // when done: prompt tokens whose KV cache was reused
  int64_t completion_tokens = 0;        // when done
};

using EventChannel = boost::asio::experimental::concurrent_channel<void(boost::system::error_code, TokenEvent)>;

struct Job {
  enum class Kind { kGenerate, kEmbed };
  Kind kind = Kind::kGenerate;
  int index = 0;                // copied into every TokenEvent (several Jobs may share a channel)
  std::vector<int32_t> prompt;  // kGenerate: non-empty, shorter than the context
  SamplingParams sampling;      // kGenerate: validated; stop strings and stop_token_ids set
  bool logprobs = false;        // kGenerate: report each token's logprob (+ sampling.n_logprobs alternatives)
  std::vector<std::vector<int32_t>> inputs;  // kEmbed: non-empty token lists, each within the context
  std::shared_ptr<EventChannel> channel;
  std::atomic<bool> cancelled{false};
  std::chrono::steady_clock::time_point submitted;  // set by Scheduler::submit
};

// What /metrics reports about the Scheduler (see GaugeValues).
struct SchedulerStats {
  int64_t queued = 0;  // waiting Jobs, preempted sequences included
  int64_t running = 0;
  int64_t kv_running = 0;
  int64_t kv_cached = 0;
  int64_t kv_total = 0;
  int64_t kv_block_size = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_cached = 0;
  int64_t preemptions = 0;  // since start
};

struct SchedulerOptions {
  int parallel = 4;       // Jobs running at once (a Session each)
  size_t max_queue = 0;   // Jobs that may wait; 0 = 64 x parallel
  int64_t kv_blocks = 0;  // blocks of the shared KV pool; 0 = parallel x blocks per context
  // Share one KV pool (prefix cache, preemption) when the backend has paged KV; false gives each
  // Session its own contiguous-context cache, as a backend without paged KV always does.
  bool shared_kv = true;
  // Host threads that sample the running Jobs' next tokens in parallel before each step. 0 =
  // automatic: the machine's cores on a GPU engine (the host is idle while the model runs), 1
  // (one Job after another) on the CPU engine, whose threads run the model.
  int sample_threads = 0;
};

// The length of the common prefix of a and b.
size_t common_prefix(std::span<const int32_t> a, std::span<const int32_t> b);

class Scheduler {
 public:
  // The engine and tokenizer (and metrics, if given) must outlive the Scheduler. Makes the
  // Sessions (and the KV pool) and starts the engine thread; Error on bad options.
  Scheduler(Engine& engine, const Tokenizer& tok, const SchedulerOptions& opts, Metrics* metrics = nullptr);
  Scheduler(Engine& engine, const Tokenizer& tok, int parallel, size_t max_queue = 0, Metrics* metrics = nullptr)
      : Scheduler(engine, tok, SchedulerOptions{.parallel = parallel, .max_queue = max_queue}, metrics) {}
  ~Scheduler();  // shutdown() and join
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues the Jobs, all or none. false (nothing queued) when the queue already holds Jobs and
  // these would take it over max_queue; an empty queue takes any number. After shutdown() every
  // Job gets its final event at once, with an error (and true is returned).
  bool submit(std::span<const std::shared_ptr<Job>> jobs);
  bool submit(std::shared_ptr<Job> job) { return submit(std::span(&job, 1)); }
  // Ends every queued and running Job with the error "the server is shutting down" and stops
  // the engine thread. Idempotent.
  void shutdown();

  // Channel capacity that guarantees try_send never fails for these Jobs sharing one channel.
  size_t channel_capacity(std::span<const std::shared_ptr<Job>> jobs) const;

  SchedulerStats stats() const;
  int parallel() const { return parallel_; }
  size_t max_queue() const { return max_queue_; }
  bool shared_kv() const { return pool_ != nullptr; }  // one paged pool with the prefix cache
  int64_t kv_blocks() const;  // blocks in all (of the shared pool, or of every Session's own cache)
  int64_t kv_block_size() const { return engine_.kv_block(); }
  // Positions one sequence can hold: the context, or the whole pool if that is smaller. A prompt
  // needs prompt + 1 of them.
  int64_t max_sequence() const { return max_sequence_; }

 private:
  struct Slot {
    std::unique_ptr<Session> session;  // idle: empty with a shared pool, else its last sequence's tokens
    uint64_t last_used = 0;            // loop round of its last Job, for LRU
    bool busy = false;
  };
  struct Running;
  using RunningList = std::vector<std::unique_ptr<Running>>;
  void loop();
  // Moves preempted sequences, then queued Jobs, into `running` while a Session is idle and the
  // pool can hold them (mu_ held). Refuses Jobs that can never fit.
  void admit(RunningList& running);
  // Samples the next token of every decoding Job on sample_pool_ (GPU engines), for step() to take.
  void presample(RunningList& running);
  // The idle slot for this Job (see "Prefix reuse" above); -1 if none is idle.
  int pick_slot(const Job& job) const;
  // One turn of a running generation Job: samples its next token (or takes the next chunk of its
  // prompt, at most `budget` tokens) and leaves it in Running::pending for run_batch; false when
  // it has finished (or was cancelled).
  bool step(Running& r, int64_t& budget);
  // Shared pool: gives every Job with work in this step the KV blocks it needs, oldest Job first,
  // preempting the most recently admitted ones when the pool runs out.
  void plan_blocks(RunningList& running);
  void preempt(Running& r);
  // Runs every Job's pending tokens in one Engine::decode_batch; a Job whose input the engine
  // refuses is marked failed (with its error as final event), the others go on.
  void run_batch(RunningList& running);
  static constexpr int64_t kMinPrefillChunk = 16;  // prompt tokens a step takes even when decodes fill its budget
  bool step_embed(Running& r);
  // Ends the Jobs that finished or failed in this step: frees their Sessions, sends final events.
  void retire(RunningList& running);
  void publish_stats(size_t n_running);

  Engine& engine_;
  const Tokenizer& tok_;
  Metrics* metrics_;
  const int parallel_;
  const size_t max_queue_;
  std::shared_ptr<KvPool> pool_;  // the shared pool; null without
  int64_t max_sequence_ = 0;
  std::vector<Slot> slots_;  // engine thread only (after start)
  uint64_t round_ = 0;
  uint64_t arrivals_ = 0;                          // admission order of Jobs (first admission)
  std::deque<std::unique_ptr<Running>> preempted_;  // engine thread only; oldest arrival first
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;  // guarded by mu_
  bool stopping_ = false;                   // guarded by mu_
  std::atomic<int64_t> n_running_{0}, n_preempted_{0}, kv_running_{0}, kv_cached_{0}, blocks_used_{0},
      blocks_cached_{0}, preemptions_{0};
  std::unique_ptr<cpu::ThreadPool> sample_pool_;  // GPU engines: host threads for presample()
  std::thread thread_;
};

}  // namespace onebit::server
