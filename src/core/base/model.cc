#include "core/base/model.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <limits>
#include <utility>

#include "core/base/error.h"

namespace onebit {

namespace {

struct PackingName {
  Packing p;
  std::string_view name;
  bool ternary;
};
constexpr std::array<PackingName, 11> kPackings{{
    {Packing::kF32, "f32", false},
    {Packing::kF16, "f16", false},
    {Packing::kBF16, "bf16", false},
    {Packing::kQ8_0, "q8_0", false},
    {Packing::kTernaryI8, "ternary-i8", true},
    {Packing::kTernary2, "ternary-2bit", true},
    {Packing::kTernaryHF, "ternary-hf", true},
    {Packing::kI2_S, "i2_s", true},
    {Packing::kTQ2_0, "tq2_0", true},
    {Packing::kTQ1_0, "tq1_0", true},
    {Packing::kTernaryLegacyH1b, "ternary-h1b-legacy", true},
}};

}  // namespace

bool is_ternary(Packing p) {
  for (const auto& e : kPackings)
    if (e.p == p) return e.ternary;
  return false;
}

std::string_view packing_name(Packing p) {
  for (const auto& e : kPackings)
    if (e.p == p) return e.name;
  return "unknown";
}

Packing packing_from_name(std::string_view name) {
  for (const auto& e : kPackings)
    if (e.name == name) return e.p;
  fail("unknown packing '{}'", name);
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string Tensor::shape_str() const { return fmt::format("{}", fmt::join(shape, "x")); }

// ---- ModelConfig -------------------------------------------------------------------------------

nlohmann::json ModelConfig::to_json() const {
  return nlohmann::json{
      {"architecture", architecture},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_layers", num_layers},
      {"num_heads", num_heads},
      {"num_kv_heads", num_kv_heads},
      {"head_dim", head_dim},
      {"vocab_size", vocab_size},
      {"max_position_embeddings", max_position_embeddings},
      {"rope_theta", rope_theta},
      {"rms_norm_eps", rms_norm_eps},
      {"tie_word_embeddings", tie_word_embeddings},
      {"hidden_act", hidden_act},
      {"bos_token_id", bos_token_id},
      {"eos_token_ids", eos_token_ids},
  };
}

namespace {

template <typename T>
T get_key(const nlohmann::json& j, const char* key) {
  if (!j.is_object()) fail("model config: expected a JSON object");
  auto it = j.find(key);
  if (it == j.end()) fail("model config: missing key '{}'", key);
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    fail("model config: key '{}' has the wrong type ({})", key, it->type_name());
  }
}

}  // namespace

ModelConfig ModelConfig::from_json(const nlohmann::json& j) {
  ModelConfig c;
  c.architecture = get_key<std::string>(j, "architecture");
  c.hidden_size = get_key<int64_t>(j, "hidden_size");
  c.intermediate_size = get_key<int64_t>(j, "intermediate_size");
  c.num_layers = get_key<int64_t>(j, "num_layers");
  c.num_heads = get_key<int64_t>(j, "num_heads");
  c.num_kv_heads = get_key<int64_t>(j, "num_kv_heads");
  c.head_dim = get_key<int64_t>(j, "head_dim");
  c.vocab_size = get_key<int64_t>(j, "vocab_size");
  c.max_position_embeddings = get_key<int64_t>(j, "max_position_embeddings");
  c.rope_theta = get_key<double>(j, "rope_theta");
  c.rms_norm_eps = get_key<double>(j, "rms_norm_eps");
  c.tie_word_embeddings = get_key<bool>(j, "tie_word_embeddings");
  c.hidden_act = get_key<std::string>(j, "hidden_act");
  c.bos_token_id = get_key<int64_t>(j, "bos_token_id");
  c.eos_token_ids = get_key<std::vector<int64_t>>(j, "eos_token_ids");
  return c;
}

void ModelConfig::validate() const {
  auto positive = [](const char* what, int64_t v, int64_t max) {
    if (v <= 0 || v > max) fail("model config: {} = {} is out of range (1..{})", what, v, max);
  };
  constexpr int64_t kMaxDim = int64_t{1} << 20;
  positive("hidden_size", hidden_size, kMaxDim);
  positive("intermediate_size", intermediate_size, kMaxDim);
  positive("num_layers", num_layers, 4096);
  positive("num_heads", num_heads, 4096);
  positive("num_kv_heads", num_kv_heads, 4096);
  positive("head_dim", head_dim, 4096);
  positive("vocab_size", vocab_size, int64_t{1} << 24);
  positive("max_position_embeddings", max_position_embeddings, int64_t{1} << 24);
  if (num_heads % num_kv_heads != 0)
    fail("model config: num_heads {} is not a multiple of num_kv_heads {}", num_heads, num_kv_heads);
  if (num_heads * head_dim != hidden_size)
    fail("model config: num_heads {} x head_dim {} must equal hidden_size {}", num_heads, head_dim,
         hidden_size);
  if (head_dim % 2 != 0) fail("model config: head_dim {} must be even for RoPE", head_dim);
  if (!(rope_theta > 0) || !(rms_norm_eps > 0) || rms_norm_eps > 1)
    fail("model config: rope_theta {} and rms_norm_eps {} must be positive", rope_theta, rms_norm_eps);
  if (hidden_act != "relu2") fail("model config: hidden_act '{}' is not supported (relu2)", hidden_act);
  if (vocab_size * hidden_size > (int64_t{1} << 34))
    fail("model config: embedding {}x{} is absurdly large", vocab_size, hidden_size);
}

// ---- Model -------------------------------------------------------------------------------------

const Tensor* Model::find(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

const Tensor& Model::get(std::string_view name) const {
  const Tensor* t = find(name);
  if (t == nullptr) fail("{}: tensor {} is missing", path, name);
  return *t;
}

std::span<const uint8_t> Model::own(std::vector<uint8_t> bytes) {
  auto buf = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  owned_.push_back(buf);
  return {buf->data(), buf->size()};
}

size_t Model::total_bytes() const {
  size_t n = 0;
  for (const auto& t : tensors) n += t.data.size();
  return n;
}

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c) {
  const int64_t h = c.hidden_size, f = c.intermediate_size;
  const int64_t q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  std::vector<ExpectedTensor> out;
  out.push_back({"token_embd.weight", {c.vocab_size, h}, false});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    auto n = [l](const char* s) { return fmt::format("blk.{}.{}", l, s); };
    out.push_back({n("attn_norm.weight"), {h}, false});
    out.push_back({n("attn_q.weight"), {q, h}, true});
    out.push_back({n("attn_k.weight"), {kv, h}, true});
    out.push_back({n("attn_v.weight"), {kv, h}, true});
    out.push_back({n("attn_sub_norm.weight"), {q}, false});
    out.push_back({n("attn_output.weight"), {h, q}, true});
    out.push_back({n("ffn_norm.weight"), {h}, false});
    out.push_back({n("ffn_gate.weight"), {f, h}, true});
    out.push_back({n("ffn_up.weight"), {f, h}, true});
    out.push_back({n("ffn_sub_norm.weight"), {f}, false});
    out.push_back({n("ffn_down.weight"), {h, f}, true});
  }
  out.push_back({"output_norm.weight", {h}, false});
  if (!c.tie_word_embeddings) out.push_back({"output.weight", {c.vocab_size, h}, false});
  return out;
}

void Model::validate() const {
  config.validate();
  for (const auto& e : expected_tensors(config)) {
    const Tensor* t = find(e.name);
    if (t == nullptr) fail("{}: tensor {} is missing", path, e.name);
    if (t->shape != e.shape) {
      fail("{}: tensor {}: expected {} {}, file has {}", path, e.name, fmt::join(e.shape, "x"),
           e.ternary ? "ternary" : "dense", t->shape_str());
    }
    if (is_ternary(t->packing) != e.ternary) {
      fail("{}: tensor {}: expected a {} tensor, file has packing {}", path, e.name,
           e.ternary ? "ternary" : "dense (f32/f16/bf16/q8_0)", packing_name(t->packing));
    }
    if (e.ternary && t->scales.size() != 1 && static_cast<int64_t>(t->scales.size()) != t->rows()) {
      fail("{}: tensor {}: expected 1 or {} scales, found {}", path, e.name, t->rows(),
           t->scales.size());
    }
  }
}

}  // namespace onebit
