// Metrics: the counters and histograms `1bit serve` exports on GET /metrics (Prometheus text
// exposition format 0.0.4).
//
// Recording is per thread: each thread that records gets its own Shard (created on its first
// record and owned by the Metrics object, so a thread's counts survive the thread), and every
// value in a shard is a relaxed atomic that only that thread writes. Nothing is shared on the hot
// path: an HTTP thread counting a request or the engine thread counting a token touches only its
// own cache lines. render() sums the shards when /metrics is scraped; the sums are monotonic
// but not a consistent cut across shards (a request counted in one shard may not yet have its
// tokens counted in another), which Prometheus counters tolerate.
//
// Gauges (queue depth, running sequences, KV positions) are state, not sums of events: the
// caller reads them from the Scheduler at scrape time and passes them to render().
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace onebit::server {

// The routes requests are counted by; anything else is kOther (so that a client sending random
// paths cannot grow the number of series).
enum class Route {
  kChatCompletions,
  kCompletions,
  kEmbeddings,
  kModels,
  kHealth,
  kProps,
  kMetrics,
  kTokenize,
  kDetokenize,
  kOther,
  kCount
};
Route route_of(std::string_view path);
std::string_view route_label(Route r);

// Latency histogram bucket upper bounds, in seconds (+Inf is implied).
inline constexpr std::array<double, 13> kTtftBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                        1.0,   2.5,  5.0,   10.0, 30.0, 60.0};
inline constexpr std::array<double, 12> kItlBuckets = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.05,
                                                       0.1,   0.25,   0.5,   1.0,  2.5,  10.0};

// State read from the Scheduler when /metrics is scraped.
struct GaugeValues {
  int64_t queue_depth = 0;        // jobs waiting for a session (preempted ones included)
  int64_t running = 0;            // sequences generating (or embedding) now
  int64_t kv_running = 0;         // KV positions held by running sequences
  int64_t kv_cached = 0;          // KV positions kept for prefix reuse (cached blocks, or idle sessions)
  int64_t kv_total = 0;           // all KV positions (blocks x block size)
  int64_t kv_block_size = 0;      // positions per KV block (the context, without paged KV)
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_used = 0;     // referenced by running sequences
  int64_t kv_blocks_cached = 0;   // unreferenced, kept by the prefix cache (evicted when needed)
};

class Metrics {
 public:
  // The HTTP status codes requests are counted by; any other is counted as "other".
  static constexpr std::array<int, 14> kStatuses = {200, 204, 400, 401, 403, 404, 405,
                                                    408, 413, 429, 499, 500, 503, 504};

  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  void count_request(Route route, int status);
  // A generation's prompt: `tokens` in all, of which `reused` came from a session's cached prefix.
  void add_prompt_tokens(int64_t tokens, int64_t reused);
  void add_generated_tokens(int64_t tokens);
  void add_embedding_tokens(int64_t tokens);
  void observe_batch(int64_t sequences);  // one engine step that ran `sequences` sequences together
  void count_preemption();  // a running sequence gave its KV blocks back, to be recomputed later
  void observe_ttft(double seconds);  // request queued -> first token sampled
  void observe_itl(double seconds);   // one sampled token -> the next, same sequence

  // Sums of every shard (for tests and for render()).
  struct Totals {
    std::vector<std::array<uint64_t, kStatuses.size() + 1>> requests;  // [route][status index]
    uint64_t prompt_tokens = 0, reused_tokens = 0, generated_tokens = 0, embedding_tokens = 0;
    uint64_t batch_steps = 0, batch_sequences = 0, preemptions = 0;
    std::array<uint64_t, kTtftBuckets.size() + 1> ttft{};  // per bucket, not cumulative; last = +Inf
    std::array<uint64_t, kItlBuckets.size() + 1> itl{};
    double ttft_sum = 0, itl_sum = 0;
    uint64_t requests_for(Route r, int status) const;
  };
  Totals totals() const;

  // The Prometheus text exposition (Content-Type "text/plain; version=0.0.4").
  std::string render(const GaugeValues& g) const;

 private:
  struct Shard;
  Shard& shard();

  const uint64_t id_;  // tells this object's shards from another's in the thread_local cache
  mutable std::mutex mu_;  // guards the list, not the values
  std::vector<std::unique_ptr<Shard>> shards_;
};

}  // namespace onebit::server
