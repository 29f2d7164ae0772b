// `1bit bench`: prompt-processing and generation speed, with the memory roofline of decode.
//
//   1bit bench -m model.h1b [-p 512] [-n 128] [-r 5] [--threads N] [--lm-head bf16|int8]
//              [--kv f32|f16|q8|q4r] [--json]
//
//  - ppP: one batched prefill of P random token ids into an empty session; tokens/s = P / time.
//  - tgN: after an untimed prompt of --depth random ids (default 16), N single-token decode steps, each
//    feeding back the token drawn from the previous logits (Session::decode_sample: greedy by default,
//    or --temp / --top-k / --top-p; on the GPU only the id comes back); tokens/s = N / time.
//  Each is repeated r times (after one untimed warm-up pass); median, min and max are reported.
//  - Memory read bandwidth, measured in the same run: threads streaming a buffer of
//    max(1 GiB, 4 x LLC), best of a few passes (membw.h); with --device cuda the GPU's
//    device-to-device copy rate (read + write bytes).
//  - Bytes read per decoded token: the weights one decode step streams, i.e. the ternary tensors
//    in the CPU kernel layout (padded codes + per-row scales), the norm weights as fp32 (both as the
//    backend holds them) and the LM head matrix in its file packing (the tied embedding or
//    output.weight), or with --lm-head int8 the backend's int8 copy (1 byte per weight, rows padded
//    to 64 bytes, plus a float scale and an int32 code sum per row). The embedding row and the KV cache reads are not counted (small for a short
//    context).
//  - With --batch B, tg runs B sequences together (Engine::decode_batch): tokens/s counts all of them
//    and the weights are read once per step, so bytes/token is divided by B below.
//  - Roofline fraction = bytes/token x tg tokens/s / B / bandwidth: how close decode is to the speed
//    at which memory could deliver the weights.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/membw.h"
#include "core/base/error.h"
#include "core/formats/model_loader.h"
#include "engine/cpu_backend.h"
#include "engine/engine.h"

namespace onebit::cli {
namespace {


struct BenchOptions {
  std::string model;
  EngineFlags engine;  // -t, --lm-head, --device, --kv
  int64_t n_prompt = 512;
  int64_t n_gen = 128;
  int reps = 5;
  int64_t depth = 16;  // tokens in the KV cache before the tg steps
  int64_t batch = 1;   // sequences decoding together in tg
  float temp = 0.0f;   // tg's sampling settings (0 = greedy)
  int32_t top_k = 0;
  float top_p = 1.0f;
  bool host_sample = false;  // tg: logits to the host and the Sampler there (the path before device sampling)
  bool json = false;
  bool no_membw = false;
};

struct Stats {
  std::vector<double> runs;  // tokens/s
  double median = 0, min = 0, max = 0;
};

Stats summarize(std::vector<double> runs) {
  Stats s;
  s.runs = runs;
  std::sort(runs.begin(), runs.end());
  const size_t n = runs.size();
  s.min = runs.front();
  s.max = runs.back();
  s.median = n % 2 ? runs[n / 2] : 0.5 * (runs[n / 2 - 1] + runs[n / 2]);
  return s;
}

// Bytes of the LM head as the model stores it (the tied embedding when there is no output.weight).
size_t lm_head_bytes(const Model& m) {
  if (const Tensor* t = m.find("output.weight")) return t->data.size();
  return m.get("token_embd.weight").data.size();
}

nlohmann::ordered_json stats_json(int64_t n, const Stats& s) {
  nlohmann::ordered_json j;
  j["n"] = n;
  j["tokens_per_s"] = s.median;
  j["min"] = s.min;
  j["max"] = s.max;
  j["runs"] = s.runs;
  return j;
}

int run_bench(const BenchOptions& o) {
  const Device device = device_from_name(o.engine.device);
  if (o.n_prompt < 0 || o.n_gen < 0) fail("-p and -n must be >= 0, got {} and {}", o.n_prompt, o.n_gen);
  if (o.n_prompt == 0 && o.n_gen == 0) fail("nothing to measure: -p and -n are both 0");
  if (o.host_sample && o.batch > 1) fail("--host-sample is for single-sequence tg (-b 1), got -b {}", o.batch);
  if (o.reps < 1) fail("-r must be >= 1, got {}", o.reps);
  const std::string path = o.model.empty() ? default_model_path() : o.model;

  std::unique_ptr<Model> model = load_model(path);
  const int64_t max_pos = model->config.max_position_embeddings > 0 ? model->config.max_position_embeddings : 4096;
  if (o.depth < 1) fail("--depth must be >= 1, got {}", o.depth);
  if (o.batch < 1) fail("--batch must be >= 1, got {}", o.batch);
  const int64_t need = std::max(o.n_prompt, o.n_gen > 0 ? o.depth + o.n_gen : 0);
  if (need > max_pos)
    fail("the benchmark needs {} positions (-p {}, or --depth {} + -n {}) but the model's context is {}", need,
         o.n_prompt, o.depth, o.n_gen, max_pos);
  EngineOptions eo = engine_options(o.engine);
  eo.n_ctx = need;
  // On a GPU the whole prompt is one pass (the CPU keeps its 256-row chunks).
  if (device == Device::kCuda) eo.n_batch = std::max<int64_t>(o.n_prompt, 256);
  auto engine = Engine::load(*model, eo);
  auto session = engine->new_session();
  const int64_t vocab = engine->n_vocab();
  int threads = o.engine.threads;
  // The int8 head is a backend copy, counted in weight_bytes(); the stored one stays in the model.
  size_t bytes_per_token = eo.lm_head == LmHead::kAsStored ? lm_head_bytes(*model) : 0;
  if (auto* cpu = dynamic_cast<CpuBackend*>(&engine->backend())) {
    threads = cpu->n_threads();
    bytes_per_token += cpu->weight_bytes();
  } else {
    threads = 0;
    bytes_per_token += engine->backend().weight_bytes();
  }

  // KV cache bytes per position (K and V rows of every layer and KV head, with their scales): a
  // decode step at context L reads L of these, which bytes/token below leaves out.
  const ModelConfig& mc = engine->config();
  const size_t kv_bytes_per_pos =
      2 * static_cast<size_t>(mc.num_layers * mc.num_kv_heads) * kv_row_bytes(eo.kv_dtype, mc.head_dim);

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  auto random_ids = [&](int64_t n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = dist(rng);
    return v;
  };

  auto pp_once = [&]() {
    const std::vector<int32_t> ids = random_ids(o.n_prompt);
    session->reset();
    const auto t0 = std::chrono::steady_clock::now();
    session->decode(ids);
    return static_cast<double>(o.n_prompt) / seconds_since(t0);
  };
  // tg's sampling settings; sequence b gets seed b, so runs are repeatable.
  auto sampling = [&](size_t b) {
    SamplingParams sp;
    sp.temperature = o.temp;
    sp.top_k = o.top_k;
    sp.top_p = o.top_p;
    sp.seed = b;
    return sp;
  };
  // --batch B > 1: B sessions decode together through Engine::decode_batch (continuous batching);
  // tokens/s counts all sequences' tokens.
  std::vector<std::unique_ptr<Session>> extra;
  for (int64_t b = 1; b < o.batch; ++b) extra.push_back(engine->new_session());
  auto tg_batch_once = [&]() {
    std::vector<Session*> ss = {session.get()};
    for (auto& e : extra) ss.push_back(e.get());
    std::vector<std::vector<int32_t>> prompts;
    std::vector<BatchItem> items;
    for (Session* s : ss) {
      s->reset();
      prompts.push_back(random_ids(o.depth));
    }
    for (size_t b = 0; b < ss.size(); ++b) items.push_back({ss[b], prompts[b], {}});
    // The engine picks each next token where the logits are (on the GPU for CUDA): the argmax, or
    // with --temp each sequence's own sampler draws it.
    std::vector<Sampler> samplers;
    for (size_t b = 0; b < ss.size(); ++b) samplers.emplace_back(sampling(b), engine->n_vocab());
    const BatchOutput how = o.temp > 0.0f ? BatchOutput::kSample : BatchOutput::kArgmax;
    for (size_t b = 0; b < ss.size(); ++b) items[b].sampler = &samplers[b];
    engine->decode_batch(items, how);
    std::vector<int32_t> next(ss.size());
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < o.n_gen; ++i) {
      for (size_t b = 0; b < ss.size(); ++b) {
        next[b] = how == BatchOutput::kSample ? items[b].token : items[b].argmax;
        items[b].tokens = std::span(&next[b], 1);
      }
      engine->decode_batch(items, how);
    }
    return static_cast<double>(o.n_gen * o.batch) / seconds_since(t0);
  };
  auto tg_once = [&]() {
    if (o.batch > 1) return tg_batch_once();
    const std::vector<int32_t> ids = random_ids(o.depth);
    session->reset();
    Sampler sampler(sampling(0), engine->n_vocab());
    auto step = [&](std::span<const int32_t> t) {
      return o.host_sample ? sampler.sample(session->decode(t), {}) : session->decode_sample(t, sampler);
    };
    int32_t next = step(ids);
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < o.n_gen; ++i) {
      const int32_t fed = next;
      next = step(std::span(&fed, 1));
    }
    return static_cast<double>(o.n_gen) / seconds_since(t0);
  };

  std::vector<double> pp_runs, tg_runs;
  if (o.n_prompt > 0) {
    pp_once();  // warm-up: weights paged in, caches and thread pool settled
    for (int r = 0; r < o.reps; ++r) pp_runs.push_back(pp_once());
  }
  if (o.n_gen > 0) {
    tg_once();
    for (int r = 0; r < o.reps; ++r) tg_runs.push_back(tg_once());
  }
  MemBandwidth bw;
  if (!o.no_membw) bw = device == Device::kCuda ? measure_cuda_copy_bandwidth() : measure_read_bandwidth(threads);

  const std::optional<Stats> pp = pp_runs.empty() ? std::nullopt : std::optional(summarize(pp_runs));
  const std::optional<Stats> tg = tg_runs.empty() ? std::nullopt : std::optional(summarize(tg_runs));
  // With --batch B the weights are read once per step of B tokens.
  const double roofline = tg && bw.bytes_per_s > 0 ? static_cast<double>(bytes_per_token) * tg->median /
                                                         static_cast<double>(o.batch) / bw.bytes_per_s
                                                   : 0.0;

  if (o.json) {
    nlohmann::ordered_json j;
    j["model"] = path;
    j["device"] = o.engine.device;
    j["backend"] = std::string(engine->backend_name());
    j["threads"] = threads;
    j["lm_head"] = o.engine.lm_head;
    j["kv"] = o.engine.kv;
    j["kv_bytes_per_position"] = kv_bytes_per_pos;
    j["depth"] = o.depth;
    j["batch"] = o.batch;
    j["reps"] = o.reps;
    if (pp) j["pp"] = stats_json(o.n_prompt, *pp);
    if (tg) j["tg"] = stats_json(o.n_gen, *tg);
    j["bytes_per_token"] = bytes_per_token;
    if (!o.no_membw) {
      j["membw_bytes_per_s"] = bw.bytes_per_s;
      j["membw_buffer_bytes"] = bw.buffer_bytes;
      if (tg) j["roofline_fraction"] = roofline;
    }
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("model    %s (%s backend, %d threads, %s LM head)\n", path.c_str(),
              std::string(engine->backend_name()).c_str(), threads, o.engine.lm_head.c_str());
  std::printf("%-8s %12s %12s %12s   (tokens/s over %d runs)\n", "test", "median", "min", "max", o.reps);
  auto row = [](const char* kind, int64_t n, const Stats& s) {
    const std::string name = std::string(kind) + std::to_string(n);
    std::printf("%-8s %12.2f %12.2f %12.2f\n", name.c_str(), s.median, s.min, s.max);
  };
  if (pp) row("pp", o.n_prompt, *pp);
  if (tg) row(o.batch > 1 ? ("tg(x" + std::to_string(o.batch) + ")").c_str() : "tg", o.n_gen, *tg);
  std::printf("bytes/token  %.2f MiB (ternary weights in kernel layout + norms + %s LM head)\n",
              static_cast<double>(bytes_per_token) / (1 << 20), o.engine.lm_head.c_str());
  std::printf("kv cache     %s, %zu bytes/position (not in bytes/token; tg steps attend to %lld..%lld positions)\n",
              o.engine.kv.c_str(), kv_bytes_per_pos, static_cast<long long>(o.depth + 1),
              static_cast<long long>(o.depth + o.n_gen));
  if (!o.no_membw) {
    if (device == Device::kCuda)
      std::printf("memory bw    %.2f GB/s (GPU device-to-device copy, read + write, %zu MiB, best of %d)\n",
                  bw.bytes_per_s / 1e9, bw.buffer_bytes >> 20, bw.passes);
    else
      std::printf("memory bw    %.2f GB/s (read, %d threads, %zu MiB buffer, best of %d)\n", bw.bytes_per_s / 1e9,
                  bw.threads, bw.buffer_bytes >> 20, bw.passes);
    if (tg)
      std::printf("roofline     %.1f%% (bytes/token x tg tokens/s / batch / bandwidth = %.2f GB/s)\n", 100.0 * roofline,
                  static_cast<double>(bytes_per_token) * tg->median / static_cast<double>(o.batch) / 1e9);
  }
  return 0;
}

const CommandRegistrar kBench{{
    "bench",
    "Measure prompt processing (pp) and generation (tg) speed and the decode memory roofline",
    [](CLI::App& app) -> std::function<int()> {
      auto o = std::make_shared<BenchOptions>();
      app.footer(
          "ppN: one prefill of N random ids. tgN: N single-token decode steps after a 16-token prompt.\n"
          "Each repeated -r times after a warm-up; median, min, max in tokens/s. bytes/token = ternary\n"
          "weights in the CPU kernel layout + norms (fp32) + LM head (as stored, or the int8 copy with\n"
          "--lm-head int8); roofline = bytes/token x\n"
          "tg tokens/s / measured memory read bandwidth.");
      app.add_option("-m,--model", o->model, "Model file or folder (default: the model in models/ or $ONEBIT_MODEL)");
      app.add_option("-p,--n-prompt", o->n_prompt, "Prompt tokens for pp (0 = skip)")->capture_default_str();
      app.add_option("-n,--n-gen", o->n_gen, "Generated tokens for tg (0 = skip)")->capture_default_str();
      app.add_option("-r,--repetitions", o->reps, "Runs of each test")->capture_default_str();
      add_engine_flags(app, o->engine);
      app.add_option("-d,--depth", o->depth, "Prompt tokens in the KV cache before the tg steps (tg context)")
          ->capture_default_str();
      app.add_option("-b,--batch", o->batch,
                     "Sequences decoding together in tg (Engine::decode_batch); tokens/s counts them all")
          ->capture_default_str();
      app.add_option("--temp", o->temp, "tg: sampling temperature (0 = greedy)")->capture_default_str();
      app.add_option("--top-k", o->top_k, "tg: keep the k most likely tokens (0 = off)")->capture_default_str();
      app.add_option("--top-p", o->top_p, "tg: nucleus sampling mass (1 = off)")->capture_default_str();
      app.add_flag("--host-sample", o->host_sample,
                   "tg: copy every step's logits to the host and sample there (for comparison; -b 1)");
      app.add_flag("--no-membw", o->no_membw, "Skip the memory bandwidth measurement");
      app.add_flag("--json", o->json, "Print the results as one JSON object");
      return [o] { return run_bench(*o); };
    },
    60,
}};

}  // namespace
}  // namespace onebit::cli
