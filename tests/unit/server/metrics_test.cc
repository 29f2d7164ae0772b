// Metrics of `1bit serve` (src/server/metrics.h): per-thread shards summed at scrape, histogram
// buckets, and the Prometheus text format.
#include "server/metrics.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <map>
#include <cctype>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace onebit::server {
namespace {

bool is_name(std::string_view n) {
  if (n.empty() || std::isdigit(static_cast<unsigned char>(n[0]))) return false;
  for (char c : n)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != ':') return false;
  return true;
}

// `{a="x",b="y"}`: names, quoted values, commas between.
bool is_label_set(std::string_view l) {
  if (l.size() < 2 || l.front() != '{' || l.back() != '}') return false;
  l = l.substr(1, l.size() - 2);
  while (!l.empty()) {
    const size_t eq = l.find("=\"");
    if (eq == std::string_view::npos || !is_name(l.substr(0, eq))) return false;
    const size_t close = l.find('"', eq + 2);
    if (close == std::string_view::npos) return false;
    l = l.substr(close + 1);
    if (!l.empty()) {
      if (l.front() != ',') return false;
      l = l.substr(1);
    }
  }
  return true;
}

// Parses the exposition into {"name{labels}": value}; fails the test on a malformed line or a
// sample whose family has no # TYPE line before it. (No std::regex: GCC 12 warns inside it under
// the sanitizer build's -O1.)
std::map<std::string, double> parse(const std::string& text) {
  std::map<std::string, double> out;
  std::set<std::string> typed;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("# HELP ")) continue;
    if (line.starts_with("# TYPE ")) {
      std::istringstream f(line.substr(7));
      std::string name, type, extra;
      f >> name >> type >> extra;
      EXPECT_TRUE(is_name(name) && (type == "counter" || type == "gauge" || type == "histogram") && extra.empty()) << line;
      typed.insert(name);
      continue;
    }
    const size_t sp = line.rfind(' ');
    const std::string key = line.substr(0, sp == std::string::npos ? 0 : sp);
    const std::string value = sp == std::string::npos ? "" : line.substr(sp + 1);
    const size_t brace = key.find('{');
    std::string family = key.substr(0, brace);
    if (!is_name(family) || (brace != std::string::npos && !is_label_set(std::string_view(key).substr(brace))) ||
        value.empty()) {
      ADD_FAILURE() << "malformed line: " << line;
      continue;
    }
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (family.ends_with(suffix) && !typed.count(family)) family.resize(family.size() - std::string(suffix).size());
    EXPECT_TRUE(typed.count(family)) << "no # TYPE for " << line;
    size_t used = 0;
    double v = 0;
    if (value == "+Inf") {
      v = INFINITY;
      used = value.size();
    } else {
      v = std::stod(value, &used);
    }
    EXPECT_EQ(used, value.size()) << line;
    out[key] = v;
  }
  EXPECT_TRUE(text.empty() || text.back() == '\n');
  return out;
}

TEST(Metrics, RoutesAreBounded) {
  EXPECT_EQ(route_of("/v1/chat/completions"), Route::kChatCompletions);
  EXPECT_EQ(route_of("/v1/embeddings"), Route::kEmbeddings);
  EXPECT_EQ(route_of("/v1/models"), Route::kModels);
  EXPECT_EQ(route_of("/v1/models/some-model"), Route::kModels);
  EXPECT_EQ(route_of("/metrics"), Route::kMetrics);
  EXPECT_EQ(route_of("/v1/chat/completions/"), Route::kOther);
  EXPECT_EQ(route_of("/../etc/passwd"), Route::kOther);
  EXPECT_EQ(route_label(Route::kOther), "other");
}

TEST(Metrics, ShardsOfExitedThreadsAreSummed) {
  Metrics m;
  constexpr int kThreads = 8, kPer = 2000;
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&m, t] {
      for (int i = 0; i < kPer; ++i) {
        m.count_request(Route::kCompletions, 200);
        m.add_generated_tokens(2);
      }
      m.add_prompt_tokens(10, t);
    });
  for (auto& t : ts) t.join();
  m.count_request(Route::kCompletions, 200);  // and this thread's own shard
  const Metrics::Totals t = m.totals();
  EXPECT_EQ(t.requests_for(Route::kCompletions, 200), uint64_t{kThreads * kPer + 1});
  EXPECT_EQ(t.requests_for(Route::kCompletions, 400), 0u);
  EXPECT_EQ(t.generated_tokens, uint64_t{2 * kThreads * kPer});
  EXPECT_EQ(t.prompt_tokens, uint64_t{10 * kThreads});
  EXPECT_EQ(t.reused_tokens, uint64_t{0 + 1 + 2 + 3 + 4 + 5 + 6 + 7});
}

TEST(Metrics, ScrapeWhileRecording) {
  Metrics m;
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    while (!stop) m.observe_itl(0.003);
  });
  uint64_t last = 0;
  for (int i = 0; i < 200; ++i) {
    const Metrics::Totals t = m.totals();
    uint64_t n = 0;
    for (uint64_t c : t.itl) n += c;
    EXPECT_GE(n, last);  // counters never go back
    last = n;
  }
  stop = true;
  writer.join();
}

TEST(Metrics, InstancesDoNotMix) {
  Metrics a, b;
  a.count_request(Route::kHealth, 200);
  a.count_request(Route::kHealth, 200);
  b.count_request(Route::kHealth, 503);
  EXPECT_EQ(a.totals().requests_for(Route::kHealth, 200), 2u);
  EXPECT_EQ(a.totals().requests_for(Route::kHealth, 503), 0u);
  EXPECT_EQ(b.totals().requests_for(Route::kHealth, 503), 1u);
  {
    Metrics c;  // a destroyed instance's cached shard must not be found by a later one
    c.count_request(Route::kProps, 200);
  }
  Metrics d;
  EXPECT_EQ(d.totals().requests_for(Route::kProps, 200), 0u);
}

TEST(Metrics, HistogramBucketsAreLessOrEqual) {
  Metrics m;
  m.observe_ttft(0.005);   // exactly a bound: counts in le="0.005"
  m.observe_ttft(0.0051);  // next bucket
  m.observe_ttft(1000);    // only +Inf
  m.observe_itl(0.0);
  const auto s = parse(m.render({}));
  EXPECT_EQ(s.at("onebit_time_to_first_token_seconds_bucket{le=\"0.005\"}"), 1);
  EXPECT_EQ(s.at("onebit_time_to_first_token_seconds_bucket{le=\"0.01\"}"), 2);
  EXPECT_EQ(s.at("onebit_time_to_first_token_seconds_bucket{le=\"60\"}"), 2);
  EXPECT_EQ(s.at("onebit_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), 3);
  EXPECT_EQ(s.at("onebit_time_to_first_token_seconds_count"), 3);
  EXPECT_NEAR(s.at("onebit_time_to_first_token_seconds_sum"), 1000.0101, 1e-9);
  EXPECT_EQ(s.at("onebit_inter_token_latency_seconds_bucket{le=\"0.001\"}"), 1);
  EXPECT_EQ(s.at("onebit_inter_token_latency_seconds_count"), 1);
}

TEST(Metrics, RenderIsPrometheusText) {
  Metrics m;
  m.count_request(Route::kChatCompletions, 200);
  m.count_request(Route::kChatCompletions, 200);
  m.count_request(Route::kChatCompletions, 429);
  m.count_request(Route::kOther, 404);
  m.count_request(Route::kEmbeddings, 299);  // not a status we list
  m.add_prompt_tokens(100, 75);
  m.add_generated_tokens(7);
  m.add_embedding_tokens(3);
  GaugeValues g;
  g.queue_depth = 3;
  g.running = 2;
  g.kv_running = 100;
  g.kv_cached = 156;
  g.kv_total = 1024;
  g.kv_block_size = 16;
  g.kv_blocks_total = 64;
  g.kv_blocks_used = 16;
  g.kv_blocks_cached = 10;
  m.count_preemption();
  m.count_preemption();
  const std::string text = m.render(g);
  const auto s = parse(text);
  EXPECT_EQ(s.at("onebit_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"), 2);
  EXPECT_EQ(s.at("onebit_requests_total{route=\"/v1/chat/completions\",status=\"429\"}"), 1);
  EXPECT_EQ(s.at("onebit_requests_total{route=\"other\",status=\"404\"}"), 1);
  EXPECT_EQ(s.at("onebit_requests_total{route=\"/v1/embeddings\",status=\"other\"}"), 1);
  EXPECT_FALSE(s.count("onebit_requests_total{route=\"/health\",status=\"200\"}"));  // zero series are left out
  EXPECT_EQ(s.at("onebit_prompt_tokens_total"), 100);
  EXPECT_EQ(s.at("onebit_prompt_tokens_reused_total"), 75);
  EXPECT_EQ(s.at("onebit_prefix_cache_hit_ratio"), 0.75);
  EXPECT_EQ(s.at("onebit_generated_tokens_total"), 7);
  EXPECT_EQ(s.at("onebit_embedding_tokens_total"), 3);
  EXPECT_EQ(s.at("onebit_queue_depth"), 3);
  EXPECT_EQ(s.at("onebit_running_sequences"), 2);
  EXPECT_EQ(s.at("onebit_kv_positions{state=\"running\"}"), 100);
  EXPECT_EQ(s.at("onebit_kv_positions{state=\"cached\"}"), 156);
  EXPECT_EQ(s.at("onebit_kv_positions_total"), 1024);
  EXPECT_EQ(s.at("onebit_kv_blocks{state=\"used\"}"), 16);
  EXPECT_EQ(s.at("onebit_kv_blocks{state=\"cached\"}"), 10);
  EXPECT_EQ(s.at("onebit_kv_blocks{state=\"free\"}"), 38);
  EXPECT_EQ(s.at("onebit_kv_blocks_total"), 64);
  EXPECT_EQ(s.at("onebit_kv_block_size"), 16);
  EXPECT_EQ(s.at("onebit_kv_usage_ratio"), 0.25);  // used / total blocks
  EXPECT_EQ(s.at("onebit_preemptions_total"), 2);
  EXPECT_EQ(m.totals().preemptions, 2u);
  // Empty metrics render too, with ratios of 0 rather than NaN.
  const auto e = parse(Metrics().render({}));
  EXPECT_EQ(e.at("onebit_prefix_cache_hit_ratio"), 0);
  EXPECT_EQ(e.at("onebit_kv_usage_ratio"), 0);
  EXPECT_EQ(e.at("onebit_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), 0);
}

}  // namespace
}  // namespace onebit::server
