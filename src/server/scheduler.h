// Scheduler: the one engine thread of `1bit serve`. It owns the Engine's Sessions and runs
// generation requests; HTTP threads only enqueue Jobs and drain their channels.
//
// Up to `parallel` Jobs run at once, each in its own Session (its own KV cache). The loop serves
// them round-robin, one step each: a Job's first step prefills its whole prompt, every later step
// samples one token and decodes it. So concurrent streams progress together, one token per turn
// each. Jobs beyond `parallel` wait in FIFO order for a free Session.
//
// Each Job carries a channel (an Asio concurrent_channel bound to its connection's executor) that
// receives TokenEvents: text deltas, then exactly one final event (done = true) with the finish
// reason and token counts, or an error. The channel's capacity covers every event a Job can send
// (one per generated token plus the final one), so the engine thread never blocks on a slow client.
// Setting Job::cancelled (the client went away) makes the engine drop the Job at its next turn
// and reuse its Session; no final event is sent then.
#pragma once

#include <boost/asio/experimental/concurrent_channel.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/sampler/sampling_params.h"
#include "core/tokenizer/tokenizer.h"
#include "engine/engine.h"

namespace onebit::server {

struct TokenEvent {
  std::string text;           // content to append (may be empty)
  bool done = false;          // the last event of the Job
  std::string finish_reason;  // when done without error: "stop" or "length"
  std::string error;          // when done: non-empty if the Job failed
  int64_t prompt_tokens = 0;  // when done
  int64_t completion_tokens = 0;
};

using EventChannel = boost::asio::experimental::concurrent_channel<void(boost::system::error_code, TokenEvent)>;

struct Job {
  std::vector<int32_t> prompt;  // non-empty, shorter than the context
  SamplingParams sampling;      // validated; stop strings and stop_token_ids set
  std::shared_ptr<EventChannel> channel;
  std::atomic<bool> cancelled{false};
};

class Scheduler {
 public:
  // The engine and tokenizer must outlive the Scheduler. Starts the engine thread.
  Scheduler(Engine& engine, const Tokenizer& tok, int parallel);
  ~Scheduler();  // shutdown() and join
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a Job. After shutdown() the Job gets its final event at once, with an error.
  void submit(std::shared_ptr<Job> job);
  // Ends every queued and running Job with the error "the server is shutting down" and stops
  // the engine thread. Idempotent.
  void shutdown();

  // Channel capacity that guarantees try_send never fails for a Job of this engine.
  size_t channel_capacity() const { return static_cast<size_t>(engine_.n_ctx()) + 4; }

 private:
  struct Running;
  void loop();
  // One turn of a running Job; false when it has finished (or was cancelled).
  bool step(Running& r);

  Engine& engine_;
  const Tokenizer& tok_;
  std::vector<std::unique_ptr<Session>> free_sessions_;  // engine thread only (after start)
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;  // guarded by mu_
  bool stopping_ = false;                   // guarded by mu_
  std::thread thread_;
};

}  // namespace onebit::server
