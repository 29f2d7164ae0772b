#include "server/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <utility>

namespace onebit::server {
namespace {

constexpr size_t kRoutes = static_cast<size_t>(Route::kCount);
constexpr size_t kStatusSlots = Metrics::kStatuses.size() + 1;  // the last one is "other"

size_t status_index(int status) {
  const auto it = std::find(Metrics::kStatuses.begin(), Metrics::kStatuses.end(), status);
  return static_cast<size_t>(it - Metrics::kStatuses.begin());  // kStatuses.size() when not found
}

// Only the owning thread writes a shard's values, so an add is a relaxed load and store (no
// locked read-modify-write); readers on other threads see each value whole.
template <typename T>
void bump(std::atomic<T>& v, T by) {
  v.store(v.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
}

template <size_t N>
size_t bucket_of(const std::array<double, N>& bounds, double x) {
  return static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), x) - bounds.begin());  // le semantics
}

// Prometheus floats: Go's ParseFloat reads these; +Inf is spelled "+Inf".
std::string num(double x) {
  if (std::isinf(x)) return x > 0 ? "+Inf" : "-Inf";
  if (std::isnan(x)) return "NaN";
  return fmt::format("{}", x);
}

template <size_t N>
void histogram(std::string* out, std::string_view name, std::string_view help, const std::array<double, N>& bounds,
               const std::array<uint64_t, N + 1>& counts, double sum) {
  *out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cum = 0;
  for (size_t i = 0; i < N; ++i) {
    cum += counts[i];
    *out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, num(bounds[i]), cum);
  }
  cum += counts[N];
  *out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, cum, name, num(sum), name, cum);
}

void metric(std::string* out, std::string_view name, std::string_view type, std::string_view help, double value) {
  *out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, num(value));
}

// One gauge with a `state` label per value: {state, value} pairs in order.
void state_gauge(std::string* out, std::string_view name, std::string_view help,
                 std::initializer_list<std::pair<std::string_view, int64_t>> states) {
  *out += fmt::format("# HELP {} {}\n# TYPE {} gauge\n", name, help, name);
  for (const auto& [state, value] : states) *out += fmt::format("{}{{state=\"{}\"}} {}\n", name, state, value);
}

}  // namespace

struct Metrics::Shard {
  std::array<std::array<std::atomic<uint64_t>, kStatusSlots>, kRoutes> requests{};
  std::atomic<uint64_t> prompt_tokens{0}, reused_tokens{0}, generated_tokens{0}, embedding_tokens{0};
  std::atomic<uint64_t> batch_steps{0}, batch_sequences{0}, preemptions{0};
  std::array<std::atomic<uint64_t>, kTtftBuckets.size() + 1> ttft{};
  std::array<std::atomic<uint64_t>, kItlBuckets.size() + 1> itl{};
  std::atomic<double> ttft_sum{0.0}, itl_sum{0.0};
};

Route route_of(std::string_view path) {
  for (size_t i = 0; i < static_cast<size_t>(Route::kOther); ++i) {
    const auto r = static_cast<Route>(i);
    if (path == route_label(r)) return r;
  }
  if (path.starts_with("/v1/models/")) return Route::kModels;
  return Route::kOther;
}

std::string_view route_label(Route r) {
  switch (r) {
    case Route::kChatCompletions: return "/v1/chat/completions";
    case Route::kCompletions: return "/v1/completions";
    case Route::kEmbeddings: return "/v1/embeddings";
    case Route::kModels: return "/v1/models";
    case Route::kHealth: return "/health";
    case Route::kProps: return "/props";
    case Route::kMetrics: return "/metrics";
    case Route::kTokenize: return "/tokenize";
    case Route::kDetokenize: return "/detokenize";
    case Route::kOther:
    case Route::kCount: break;
  }
  return "other";
}

Metrics::Metrics()
    : id_([] {
        static std::atomic<uint64_t> next{1};
        return next.fetch_add(1);
      }()) {}

Metrics::~Metrics() = default;

Metrics::Shard& Metrics::shard() {
  // Each thread remembers its shard of every Metrics object it has recorded into. Ids are never
  // reused, so an entry of a destroyed Metrics is never matched again.
  thread_local std::vector<std::pair<uint64_t, Shard*>> mine;
  for (const auto& [id, s] : mine)
    if (id == id_) return *s;
  auto s = std::make_unique<Shard>();
  Shard* p = s.get();
  {
    std::lock_guard lk(mu_);
    shards_.push_back(std::move(s));
  }
  mine.emplace_back(id_, p);
  return *p;
}

void Metrics::count_request(Route route, int status) {
  const auto r = std::min(static_cast<size_t>(route), kRoutes - 1);
  bump(shard().requests[r][status_index(status)], uint64_t{1});
}

void Metrics::add_prompt_tokens(int64_t tokens, int64_t reused) {
  Shard& s = shard();
  bump(s.prompt_tokens, static_cast<uint64_t>(std::max<int64_t>(tokens, 0)));
  bump(s.reused_tokens, static_cast<uint64_t>(std::max<int64_t>(reused, 0)));
}

void Metrics::add_generated_tokens(int64_t tokens) {
  bump(shard().generated_tokens, static_cast<uint64_t>(std::max<int64_t>(tokens, 0)));
}

void Metrics::add_embedding_tokens(int64_t tokens) {
  bump(shard().embedding_tokens, static_cast<uint64_t>(std::max<int64_t>(tokens, 0)));
}

void Metrics::observe_batch(int64_t sequences) {
  Shard& s = shard();
  bump(s.batch_steps, uint64_t{1});
  bump(s.batch_sequences, static_cast<uint64_t>(std::max<int64_t>(sequences, 0)));
}

void Metrics::count_preemption() { bump(shard().preemptions, uint64_t{1}); }

void Metrics::observe_ttft(double seconds) {
  Shard& s = shard();
  bump(s.ttft[bucket_of(kTtftBuckets, seconds)], uint64_t{1});
  bump(s.ttft_sum, seconds);
}

void Metrics::observe_itl(double seconds) {
  Shard& s = shard();
  bump(s.itl[bucket_of(kItlBuckets, seconds)], uint64_t{1});
  bump(s.itl_sum, seconds);
}

uint64_t Metrics::Totals::requests_for(Route r, int status) const {
  return requests.at(static_cast<size_t>(r))[status_index(status)];
}

Metrics::Totals Metrics::totals() const {
  Totals t;
  t.requests.assign(kRoutes, {});
  constexpr auto rl = std::memory_order_relaxed;
  std::lock_guard lk(mu_);
  for (const auto& s : shards_) {
    for (size_t r = 0; r < kRoutes; ++r)
      for (size_t i = 0; i < kStatusSlots; ++i) t.requests[r][i] += s->requests[r][i].load(rl);
    t.prompt_tokens += s->prompt_tokens.load(rl);
    t.reused_tokens += s->reused_tokens.load(rl);
    t.generated_tokens += s->generated_tokens.load(rl);
    t.embedding_tokens += s->embedding_tokens.load(rl);
    t.batch_steps += s->batch_steps.load(rl);
    t.batch_sequences += s->batch_sequences.load(rl);
    t.preemptions += s->preemptions.load(rl);
    for (size_t i = 0; i < t.ttft.size(); ++i) t.ttft[i] += s->ttft[i].load(rl);
    for (size_t i = 0; i < t.itl.size(); ++i) t.itl[i] += s->itl[i].load(rl);
    t.ttft_sum += s->ttft_sum.load(rl);
    t.itl_sum += s->itl_sum.load(rl);
  }
  return t;
}

std::string Metrics::render(const GaugeValues& g) const {
  const Totals t = totals();
  std::string out;
  out += "# HELP onebit_requests_total HTTP requests answered, by route and status (499: the client went away).\n"
         "# TYPE onebit_requests_total counter\n";
  for (size_t r = 0; r < kRoutes; ++r)
    for (size_t i = 0; i < kStatusSlots; ++i) {
      if (t.requests[r][i] == 0) continue;
      const std::string status = i < kStatuses.size() ? std::to_string(kStatuses[i]) : "other";
      out += fmt::format("onebit_requests_total{{route=\"{}\",status=\"{}\"}} {}\n", route_label(static_cast<Route>(r)),
                         status, t.requests[r][i]);
    }
  metric(&out, "onebit_prompt_tokens_total", "counter", "Prompt tokens of generation requests (reused ones included).",
         static_cast<double>(t.prompt_tokens));
  metric(&out, "onebit_prompt_tokens_reused_total", "counter",
         "Prompt tokens whose KV cache was reused from the prefix cache (not recomputed).",
         static_cast<double>(t.reused_tokens));
  metric(&out, "onebit_generated_tokens_total", "counter", "Tokens generated (stop tokens not counted).",
         static_cast<double>(t.generated_tokens));
  metric(&out, "onebit_embedding_tokens_total", "counter", "Input tokens of /v1/embeddings requests.",
         static_cast<double>(t.embedding_tokens));
  metric(&out, "onebit_prefix_cache_hit_ratio", "gauge",
         "Prompt tokens found in the KV prefix cache / prompt tokens since start (0 before the first request).",
         t.prompt_tokens ? static_cast<double>(t.reused_tokens) / static_cast<double>(t.prompt_tokens) : 0.0);
  metric(&out, "onebit_batch_steps_total", "counter", "Engine steps that ran sequences through the model (one shared batch each).",
         static_cast<double>(t.batch_steps));
  metric(&out, "onebit_batch_sequences_total", "counter",
         "Sequences in those steps, summed (divided by onebit_batch_steps_total: the mean batch size).",
         static_cast<double>(t.batch_sequences));
  metric(&out, "onebit_preemptions_total", "counter",
         "Running sequences that gave their KV blocks back when the pool ran out (recomputed later).",
         static_cast<double>(t.preemptions));
  histogram(&out, "onebit_time_to_first_token_seconds", "Request queued to its first token sampled.", kTtftBuckets,
            t.ttft, t.ttft_sum);
  histogram(&out, "onebit_inter_token_latency_seconds", "Time between two sampled tokens of one sequence.",
            kItlBuckets, t.itl, t.itl_sum);
  metric(&out, "onebit_queue_depth", "gauge", "Sequences waiting to run (preempted ones included).",
         static_cast<double>(g.queue_depth));
  metric(&out, "onebit_running_sequences", "gauge", "Sequences being generated or embedded now.",
         static_cast<double>(g.running));
  state_gauge(&out, "onebit_kv_positions",
              "KV cache positions holding tokens: of running sequences, or kept for prefix reuse.",
              {{"running", g.kv_running}, {"cached", g.kv_cached}});
  metric(&out, "onebit_kv_positions_total", "gauge", "KV cache positions in all (blocks x block size).",
         static_cast<double>(g.kv_total));
  state_gauge(&out, "onebit_kv_blocks",
              "KV cache blocks: referenced by running sequences (used), kept by the prefix cache (cached), or free.",
              {{"used", g.kv_blocks_used},
               {"cached", g.kv_blocks_cached},
               {"free", std::max<int64_t>(0, g.kv_blocks_total - g.kv_blocks_used - g.kv_blocks_cached)}});
  metric(&out, "onebit_kv_blocks_total", "gauge", "KV cache blocks in all.", static_cast<double>(g.kv_blocks_total));
  metric(&out, "onebit_kv_block_size", "gauge", "Positions per KV cache block.", static_cast<double>(g.kv_block_size));
  metric(&out, "onebit_kv_usage_ratio", "gauge", "KV blocks used by running sequences / all KV blocks.",
         g.kv_blocks_total ? static_cast<double>(g.kv_blocks_used) / static_cast<double>(g.kv_blocks_total) : 0.0);
  return out;
}

}  // namespace onebit::server
