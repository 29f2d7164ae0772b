// The Scheduler of `1bit serve` (src/server/scheduler.h) on the default model: the shared paged KV
// pool (block prefix cache across requests, preemption and recompute, requests that can never
// fit, cancellation freeing blocks), per-session caches (prefix reuse, slot choice), the queue
// limit, logprobs, embeddings, and the metrics it records.
#include "server/scheduler.h"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "core/formats/model_loader.h"

namespace onebit::server {
namespace {

using namespace std::chrono_literals;

struct Result {
  std::string text;
  std::vector<TokenEvent> events;
  TokenEvent last;
};

class SchedulerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = load_model((std::filesystem::path(ONEBIT_SOURCE_DIR) / "models/1bit-brown-26m.h1b").string()).release();
    tok_ = new Tokenizer(Tokenizer::from_data(model_->tokenizer));
    EngineOptions o;
    o.n_ctx = 256;
    o.n_threads = 1;
    engine_ = Engine::load(*model_, o).release();
  }
  static void TearDownTestSuite() {
    delete engine_;
    delete tok_;
    delete model_;
  }

  std::shared_ptr<Job> job(std::vector<int32_t> prompt, int max_tokens, float temperature = 0.0f) {
    auto j = std::make_shared<Job>();
    j->prompt = std::move(prompt);
    j->sampling.temperature = temperature;
    j->sampling.max_tokens = max_tokens;
    j->sampling.seed = 7;
    return j;
  }

  std::vector<int32_t> encode(const std::string& text) {
    std::vector<int32_t> ids = tok_->encode(text);
    ids.insert(ids.begin(), tok_->bos_id());
    return ids;
  }

  // Gives the Jobs one channel and submits them; false if the Scheduler refused them.
  bool submit(Scheduler& s, const std::vector<std::shared_ptr<Job>>& jobs) {
    auto ch = std::make_shared<EventChannel>(ioc_.get_executor(), s.channel_capacity(jobs));
    for (const auto& j : jobs) j->channel = ch;
    return s.submit(jobs);
  }

  // Waits (polling the channel, at most 30 s) for `finals` final events.
  Result wait(const std::shared_ptr<Job>& j, int finals = 1) {
    Result r;
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    int done = 0;
    while (done < finals && std::chrono::steady_clock::now() < deadline) {
      const bool got = j->channel->try_receive([&](boost::system::error_code, TokenEvent ev) {
        r.text += ev.text;
        if (ev.done) {
          ++done;
          r.last = ev;
        }
        r.events.push_back(std::move(ev));
      });
      if (!got) std::this_thread::sleep_for(1ms);
    }
    EXPECT_EQ(done, finals) << "timed out";
    return r;
  }

  Result run(Scheduler& s, std::shared_ptr<Job> j) {
    EXPECT_TRUE(submit(s, {j}));
    return wait(j);
  }

  // Polls until pred() holds (at most 10 s).
  template <typename Pred>
  static bool eventually(Pred pred) {
    for (int i = 0; i < 10000; ++i) {
      if (pred()) return true;
      std::this_thread::sleep_for(1ms);
    }
    return pred();
  }

  static Model* model_;
  static Tokenizer* tok_;
  static Engine* engine_;
  boost::asio::io_context ioc_;  // never run: the channels are only polled
};

Model* SchedulerTest::model_ = nullptr;
Tokenizer* SchedulerTest::tok_ = nullptr;
Engine* SchedulerTest::engine_ = nullptr;

TEST(SchedulerPrefix, CommonPrefix) {
  const std::vector<int32_t> a = {1, 2, 3, 4}, b = {1, 2, 9}, e;
  EXPECT_EQ(common_prefix(a, b), 2u);
  EXPECT_EQ(common_prefix(a, a), 4u);
  EXPECT_EQ(common_prefix(a, e), 0u);
  EXPECT_EQ(common_prefix(std::vector<int32_t>{1, 2}, a), 2u);
}

// Per-session caches (what a backend without paged KV gets): a Session keeps its last sequence.
SchedulerOptions private_caches(int parallel) {
  SchedulerOptions o;
  o.parallel = parallel;
  o.shared_kv = false;
  return o;
}

TEST_F(SchedulerTest, SecondIdenticalRequestReusesThePrefixAndGivesTheSameText) {
  Metrics metrics;
  Scheduler s(*engine_, *tok_, private_caches(1), &metrics);
  ASSERT_FALSE(s.shared_kv());
  const std::vector<int32_t> prompt = encode("The old city by the river was quiet in the morning");
  const Result a = run(s, job(prompt, 12));
  EXPECT_EQ(a.last.cached_tokens, 0);
  EXPECT_EQ(a.last.completion_tokens, 12);
  const Result b = run(s, job(prompt, 12));
  EXPECT_EQ(b.last.cached_tokens, static_cast<int64_t>(prompt.size()) - 1);  // the last token is run again
  EXPECT_EQ(b.text, a.text);
  EXPECT_EQ(b.last.finish_reason, a.last.finish_reason);

  // A longer prompt that continues the first reuses at least the whole first prompt.
  std::vector<int32_t> longer = prompt;
  for (int32_t id : tok_->encode(" and the bells rang")) longer.push_back(id);
  const Result c = run(s, job(longer, 4));
  EXPECT_GE(c.last.cached_tokens, static_cast<int64_t>(prompt.size()));
  EXPECT_LT(c.last.cached_tokens, static_cast<int64_t>(longer.size()));

  const Metrics::Totals t = metrics.totals();
  EXPECT_EQ(t.prompt_tokens, 2 * prompt.size() + longer.size());
  EXPECT_EQ(t.reused_tokens, static_cast<uint64_t>(b.last.cached_tokens + c.last.cached_tokens));
  EXPECT_EQ(t.generated_tokens, static_cast<uint64_t>(a.last.completion_tokens + b.last.completion_tokens +
                                                      c.last.completion_tokens));
  uint64_t ttft = 0;
  for (uint64_t n : t.ttft) ttft += n;
  EXPECT_EQ(ttft, 3u);
}

TEST_F(SchedulerTest, JobGoesToTheSessionWithTheLongestPrefix) {
  Scheduler s(*engine_, *tok_, private_caches(2));
  const std::vector<int32_t> p1 = encode("Once upon a time in the north there lived a miller");
  const std::vector<int32_t> p2 = encode("Prices of wheat and corn rose sharply during the war");
  const Result a1 = run(s, job(p1, 3));
  // Shares only BOS with p1's session: goes to the other (least recently used, empty) one.
  const Result a2 = run(s, job(p2, 3));
  EXPECT_EQ(a2.last.cached_tokens, 0);
  const Result b1 = run(s, job(p1, 3));
  EXPECT_EQ(b1.last.cached_tokens, static_cast<int64_t>(p1.size()) - 1);
  EXPECT_EQ(b1.text, a1.text);
  const Result b2 = run(s, job(p2, 3));
  EXPECT_EQ(b2.last.cached_tokens, static_cast<int64_t>(p2.size()) - 1);
  EXPECT_EQ(b2.text, a2.text);
  const SchedulerStats st = s.stats();
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.kv_running, 0);
  EXPECT_GE(st.kv_cached, static_cast<int64_t>(p1.size() + p2.size()));
  EXPECT_EQ(st.kv_total, 2 * engine_->n_ctx());
}

TEST_F(SchedulerTest, FullQueueRefusesAndCancelledJobsFreeTheirSession) {
  Scheduler s(*engine_, *tok_, 1, 1);
  const std::vector<int32_t> prompt = encode("The river");
  auto long_job = [&] {
    auto j = job(prompt, 200, 1.0f);
    for (int32_t id : {0, 1, 2}) j->sampling.logit_bias[id] = -100;  // no end of text: only cancel ends it
    return j;
  };
  auto j1 = long_job(), j2 = long_job(), j3 = long_job();
  ASSERT_TRUE(submit(s, {j1}));
  ASSERT_TRUE(eventually([&] { return s.stats().running == 1 && s.stats().queued == 0; }));
  ASSERT_TRUE(eventually([&] { return s.stats().kv_blocks_used > 0; }));
  EXPECT_TRUE(submit(s, {j2}));  // waits: the queue held nothing
  EXPECT_EQ(s.stats().queued, 1);
  EXPECT_FALSE(submit(s, {j3}));  // the queue is full: refused, nothing queued
  EXPECT_EQ(s.stats().queued, 1);
  j1->cancelled = true;  // the client went away: j2 gets the session at the next turn
  EXPECT_TRUE(eventually([&] { return s.stats().queued == 0 && s.stats().running == 1; }));
  j2->cancelled = true;
  EXPECT_TRUE(eventually([&] { return s.stats().running == 0; }));
  EXPECT_EQ(s.stats().kv_running, 0);
  EXPECT_EQ(s.stats().kv_blocks_used, 0);  // the cancelled sequences' blocks went back to the pool
  // No final event for a cancelled Job, and far fewer than 200 tokens were sent.
  size_t events = 0;
  bool final_seen = false;
  while (j1->channel->try_receive([&](boost::system::error_code, TokenEvent ev) { final_seen |= ev.done; })) ++events;
  EXPECT_FALSE(final_seen);
  EXPECT_LT(events, 200u);
  // The session works for the next Job.
  const Result r = run(s, job(prompt, 2));
  EXPECT_EQ(r.last.completion_tokens, 2);
}

// ---- the shared paged KV pool ----

const char* const kStory =
    "The old city by the river was quiet in the morning. Fishermen pulled their boats onto the sand, the baker "
    "opened his shutters, and children ran along the wall toward the market where the first carts were arriving";

// No end of text: only max_tokens (or a cancel) ends these.
void no_eos(Job& j) {
  for (int32_t id : {0, 1, 2}) j.sampling.logit_bias[id] = -100;
}

TEST_F(SchedulerTest, SharedPoolReusesBlocksAcrossRequestsAndSlots) {
  Metrics metrics;
  Scheduler s(*engine_, *tok_, 2, 0, &metrics);
  ASSERT_TRUE(s.shared_kv());
  const int64_t bs = s.kv_block_size();
  EXPECT_EQ(bs, 16);
  EXPECT_EQ(s.kv_blocks(), 2 * engine_->n_ctx() / bs);
  EXPECT_EQ(s.max_sequence(), engine_->n_ctx());
  const std::vector<int32_t> p = encode(kStory);
  const int64_t n = static_cast<int64_t>(p.size());
  ASSERT_GE(n, 2 * bs);
  std::vector<int32_t> longer = p;
  for (int32_t id : tok_->encode(" from the hills")) longer.push_back(id);
  // What `longer` gives with nothing reused.
  Scheduler fresh(*engine_, *tok_, private_caches(1));
  const Result want = run(fresh, job(longer, 8));
  ASSERT_EQ(want.last.cached_tokens, 0);

  // A keeps a Session busy; B, on the other Session, takes A's full prompt blocks while A runs.
  auto a = job(p, 200, 1.0f);
  no_eos(*a);
  ASSERT_TRUE(submit(s, {a}));
  ASSERT_TRUE(eventually([&] { return metrics.totals().prompt_tokens == static_cast<uint64_t>(n); }));
  EXPECT_GE(s.stats().kv_blocks_used, n / bs);
  const Result b = run(s, job(longer, 8));
  EXPECT_EQ(b.last.cached_tokens, n / bs * bs);
  EXPECT_EQ(b.text, want.text);
  EXPECT_EQ(b.last.completion_tokens, want.last.completion_tokens);
  a->cancelled = true;
  ASSERT_TRUE(eventually([&] { return s.stats().running == 0 && s.stats().kv_blocks_used == 0; }));
  EXPECT_GT(s.stats().kv_blocks_cached, 0);  // kept for the next request
  // Later, B's own blocks serve an identical request: all but the last token's block (at most).
  const Result c = run(s, job(longer, 8));
  EXPECT_EQ(c.last.cached_tokens, (static_cast<int64_t>(longer.size()) - 1) / bs * bs);
  EXPECT_EQ(c.text, want.text);
  const Metrics::Totals t = metrics.totals();
  EXPECT_EQ(t.prompt_tokens, static_cast<uint64_t>(n + 2 * static_cast<int64_t>(longer.size())));
  EXPECT_EQ(t.reused_tokens, static_cast<uint64_t>(b.last.cached_tokens + c.last.cached_tokens));
  EXPECT_EQ(t.preemptions, 0u);
}

TEST_F(SchedulerTest, PreemptedSequencesAreRecomputedAndTheirOutputDoesNotChange) {
  // Four sequences of up to ~100 positions each in a pool of 8 blocks (128 positions): they must
  // take turns. Greedy and seeded sampling with penalties must give exactly what each gives alone.
  const std::vector<std::string> texts = {kStory, "Prices of wheat and corn rose sharply during the war",
                                          "Once upon a time in the north there lived a miller who had three sons",
                                          "In the spring of that year"};
  auto make = [&](size_t i) {
    auto j = job(encode(texts[i]), 48, i % 2 ? 0.9f : 0.0f);
    no_eos(*j);
    j->sampling.seed = 11 + i;
    j->sampling.frequency_penalty = i == 1 ? 0.5f : 0.0f;
    j->sampling.presence_penalty = i == 3 ? 0.4f : 0.0f;
    j->logprobs = i == 2;
    return j;
  };
  std::vector<Result> want;
  {
    Scheduler alone(*engine_, *tok_, private_caches(1));
    for (size_t i = 0; i < texts.size(); ++i) want.push_back(run(alone, make(i)));
  }
  Metrics metrics;
  SchedulerOptions o;
  o.parallel = 4;
  o.kv_blocks = 8;
  Scheduler s(*engine_, *tok_, o, &metrics);
  EXPECT_EQ(s.max_sequence(), 128);
  std::vector<std::shared_ptr<Job>> jobs;
  for (size_t i = 0; i < texts.size(); ++i) {
    jobs.push_back(make(i));
    ASSERT_TRUE(submit(s, {jobs.back()}));
  }
  for (size_t i = 0; i < texts.size(); ++i) {
    const Result got = wait(jobs[i]);
    EXPECT_EQ(got.last.error, "") << i;
    EXPECT_EQ(got.text, want[i].text) << i;
    EXPECT_EQ(got.last.finish_reason, want[i].last.finish_reason) << i;
    EXPECT_EQ(got.last.completion_tokens, 48) << i;
    EXPECT_EQ(got.last.prompt_tokens, want[i].last.prompt_tokens) << i;
    if (i == 2) {  // one logprobs entry per token, preemptions or not
      size_t n = 0;
      for (const TokenEvent& ev : got.events) n += ev.logprobs.size();
      EXPECT_EQ(n, 48u);
    }
  }
  EXPECT_GT(metrics.totals().preemptions, 0u);
  EXPECT_EQ(s.stats().preemptions, static_cast<int64_t>(metrics.totals().preemptions));
  EXPECT_TRUE(eventually([&] { return s.stats().running == 0 && s.stats().queued == 0; }));
  EXPECT_EQ(s.stats().kv_blocks_used, 0);
  EXPECT_EQ(metrics.totals().prompt_tokens, [&] {
    uint64_t n = 0;
    for (const Result& r : want) n += static_cast<uint64_t>(r.last.prompt_tokens);
    return n;
  }());  // counted once per request, not per recompute
}

TEST_F(SchedulerTest, ParallelSamplingGivesTheSameTokens) {
  // Several streams with seeded temperature sampling, penalties and logprobs: sampled on 3 host
  // threads (as on a GPU engine) they must give exactly what one-at-a-time sampling gives.
  auto make = [&](int i) {
    auto j = job(encode(std::string(kStory).substr(0, 20 + 9 * static_cast<size_t>(i))), 24, i == 0 ? 0.0f : 0.8f);
    no_eos(*j);
    j->sampling.seed = 100 + i;
    j->sampling.frequency_penalty = i == 2 ? 0.7f : 0.0f;
    j->logprobs = i == 3;
    j->sampling.n_logprobs = i == 3 ? 3 : 0;
    return j;
  };
  auto run_all = [&](int sample_threads) {
    SchedulerOptions o;
    o.parallel = 5;
    o.sample_threads = sample_threads;
    Scheduler s(*engine_, *tok_, o);
    std::vector<std::shared_ptr<Job>> jobs;
    for (int i = 0; i < 5; ++i) {
      jobs.push_back(make(i));
      EXPECT_TRUE(submit(s, {jobs.back()}));
    }
    std::vector<Result> out;
    for (auto& j : jobs) out.push_back(wait(j));
    return out;
  };
  const std::vector<Result> one = run_all(1), three = run_all(3);
  for (size_t i = 0; i < one.size(); ++i) {
    EXPECT_EQ(three[i].last.error, "") << i;
    EXPECT_EQ(three[i].text, one[i].text) << i;
    EXPECT_EQ(three[i].last.completion_tokens, 24) << i;
    std::vector<float> lp1, lp3;
    for (const TokenEvent& ev : one[i].events)
      for (const TokenLogprobs& t : ev.logprobs) lp1.push_back(t.chosen.logprob);
    for (const TokenEvent& ev : three[i].events)
      for (const TokenLogprobs& t : ev.logprobs) lp3.push_back(t.chosen.logprob);
    EXPECT_EQ(lp3, lp1) << i;
    if (i == 3) {
      EXPECT_EQ(lp1.size(), 24u);
    }
  }
}

TEST_F(SchedulerTest, RequestsThatCanNeverFitThePoolAreRefused) {
  SchedulerOptions o;
  o.parallel = 2;
  o.kv_blocks = 2;  // 32 positions
  Scheduler s(*engine_, *tok_, o);
  ASSERT_EQ(s.max_sequence(), 32);
  std::vector<int32_t> big = encode(kStory);
  big.resize(40);
  const Result r = run(s, job(big, 4));
  EXPECT_NE(r.last.error.find("KV pool holds 32"), std::string::npos) << r.last.error;
  auto e = std::make_shared<Job>();
  e->kind = Job::Kind::kEmbed;
  e->inputs = {big};
  EXPECT_NE(run(s, e).last.error.find("KV pool"), std::string::npos);
  // One that fits runs until the pool is full for it ("length"), and the next still runs.
  std::vector<int32_t> p = encode(kStory);
  p.resize(20);
  auto j = job(p, 100);
  no_eos(*j);
  const Result ok = run(s, j);
  EXPECT_EQ(ok.last.error, "");
  EXPECT_EQ(ok.last.finish_reason, "length");
  EXPECT_EQ(ok.last.completion_tokens, 32 - 20 + 1);  // the last sampled token needs no position
  EXPECT_EQ(run(s, job(p, 2)).last.completion_tokens, 2);
  EXPECT_EQ(s.stats().kv_blocks_used, 0);
}

TEST_F(SchedulerTest, SeveralJobsShareAChannelByIndex) {
  Scheduler s(*engine_, *tok_, 2);
  const std::vector<int32_t> prompt = encode("In the spring of that year");
  std::vector<std::shared_ptr<Job>> jobs;
  for (int i = 0; i < 3; ++i) {
    jobs.push_back(job(prompt, 6, 1.0f));
    jobs.back()->index = i;
    jobs.back()->sampling.seed = 100 + static_cast<uint64_t>(i % 2);  // jobs 0 and 2 share a seed
  }
  ASSERT_TRUE(submit(s, jobs));
  const Result r = wait(jobs[0], 3);
  std::vector<std::string> text(3);
  std::vector<int> finals(3, 0);
  for (const TokenEvent& ev : r.events) {
    ASSERT_GE(ev.index, 0);
    ASSERT_LT(ev.index, 3);
    text[static_cast<size_t>(ev.index)] += ev.text;
    finals[static_cast<size_t>(ev.index)] += ev.done;
  }
  EXPECT_EQ(finals, (std::vector<int>{1, 1, 1}));
  EXPECT_EQ(text[0], text[2]);  // same seed, same prompt
}

TEST_F(SchedulerTest, LogprobsOnePerGeneratedToken) {
  Scheduler s(*engine_, *tok_, 1);
  auto j = job(encode("The church stood on the hill above the"), 10);
  j->logprobs = true;
  j->sampling.n_logprobs = 3;
  const Result r = run(s, j);
  std::vector<TokenLogprobs> all;
  for (const TokenEvent& ev : r.events) all.insert(all.end(), ev.logprobs.begin(), ev.logprobs.end());
  ASSERT_EQ(static_cast<int64_t>(all.size()), r.last.completion_tokens);
  std::vector<int32_t> ids;
  for (const TokenLogprobs& t : all) {
    ASSERT_EQ(t.top.size(), 3u);
    EXPECT_EQ(t.chosen.id, t.top[0].id);  // greedy picks the most likely
    EXPECT_EQ(t.chosen.logprob, t.top[0].logprob);
    EXPECT_LE(t.chosen.logprob, 0.0f);
    EXPECT_GE(t.top[0].logprob, t.top[1].logprob);
    EXPECT_GE(t.top[1].logprob, t.top[2].logprob);
    ids.push_back(t.chosen.id);
  }
  EXPECT_EQ(tok_->decode(ids, true), r.text);  // the logprobs' tokens are the text's
}

TEST_F(SchedulerTest, EmbeddingsAreMeanPooledAndNormalised) {
  Metrics metrics;
  Scheduler s(*engine_, *tok_, 1, 0, &metrics);
  const std::vector<int32_t> a = encode("The old mill"), b = encode("Stocks fell");
  auto j = std::make_shared<Job>();
  j->kind = Job::Kind::kEmbed;
  j->inputs = {a, b, a};
  const Result r = run(s, j);
  ASSERT_EQ(r.events.size(), 4u);
  EXPECT_EQ(r.last.prompt_tokens, static_cast<int64_t>(2 * a.size() + b.size()));
  EXPECT_EQ(metrics.totals().embedding_tokens, 2 * a.size() + b.size());
  std::vector<std::vector<float>> v(3);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(r.events[i].index, static_cast<int>(i));
    v[i] = r.events[i].embedding;
    ASSERT_EQ(static_cast<int64_t>(v[i].size()), engine_->config().hidden_size);
    double n2 = 0;
    for (float x : v[i]) n2 += double(x) * x;
    EXPECT_NEAR(n2, 1.0, 1e-5);
  }
  EXPECT_EQ(v[0], v[2]);
  EXPECT_NE(v[0], v[1]);
  // The same pooling computed here from the engine's hidden states.
  auto session = engine_->new_session();
  const std::vector<float> rows = session->hidden_states(b);
  const size_t dim = v[1].size();
  std::vector<double> mean(dim, 0.0);
  for (size_t t = 0; t < b.size(); ++t)
    for (size_t d = 0; d < dim; ++d) mean[d] += rows[t * dim + d] / double(b.size());
  double n2 = 0;
  for (double x : mean) n2 += x * x;
  for (size_t d = 0; d < dim; ++d) EXPECT_NEAR(v[1][d], mean[d] / std::sqrt(n2), 1e-5) << d;
  // An embedding Job leaves its session usable for generation.
  EXPECT_EQ(run(s, job(a, 2)).last.completion_tokens, 2);
}

TEST_F(SchedulerTest, EngineErrorsEndTheJobWithAnError) {
  Scheduler s(*engine_, *tok_, 1);
  auto j = std::make_shared<Job>();
  j->kind = Job::Kind::kEmbed;
  j->inputs = {{5, 6, 1 << 20}};  // outside the vocabulary: the engine throws
  const Result r = run(s, j);
  EXPECT_FALSE(r.last.error.empty());
  EXPECT_NE(r.last.error.find("vocabulary"), std::string::npos) << r.last.error;
  EXPECT_EQ(run(s, job(encode("After the error"), 2)).last.completion_tokens, 2);
}

TEST_F(SchedulerTest, ShutdownEndsQueuedJobs) {
  auto s = std::make_unique<Scheduler>(*engine_, *tok_, 1);
  s->shutdown();
  auto j = job(encode("Too late"), 2);
  EXPECT_TRUE(submit(*s, {j}));
  EXPECT_EQ(wait(j).last.error, "the server is shutting down");
}

}  // namespace
}  // namespace onebit::server
