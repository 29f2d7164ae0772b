#include "core/formats/hf_model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "core/base/error.h"
#include "core/base/half.h"
#include "core/base/ternary_packing.h"

namespace onebit {
namespace {

namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& leaf) {
  fs::path dir = fs::path(testing::TempDir()) / "onebit_hf_test" / leaf;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

nlohmann::json tiny_config_json() {
  return {{"architectures", {"BitNetForCausalLM"}},
          {"model_type", "bitnet"},
          {"hidden_size", 64},
          {"intermediate_size", 90},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"vocab_size", 300},
          {"max_position_embeddings", 128},
          {"rope_theta", 500000.0},
          {"rms_norm_eps", 1e-5},
          {"tie_word_embeddings", true},
          {"hidden_act", "relu2"},
          {"bos_token_id", 1},
          {"eos_token_id", {2, 3}}};
}

// HF packing written independently of the library (docs/BITNET.md): with R = ceil(out/4), bits
// 2i..2i+1 of packed[r][c] hold W[i*R + r][c] + 1.
std::vector<uint8_t> hf_pack(const std::vector<int8_t>& codes, int64_t out, int64_t in) {
  const int64_t R = (out + 3) / 4;
  std::vector<uint8_t> p(static_cast<size_t>(R * in), 0);
  for (int64_t row = 0; row < out; ++row) {
    const int64_t i = row / R, r = row % R;
    for (int64_t c = 0; c < in; ++c)
      p[r * in + c] |= static_cast<uint8_t>((codes[row * in + c] + 1) << (2 * i));
  }
  return p;
}

struct Proj {
  const char* hf;
  const char* canon;
  int64_t out, in;
};
std::vector<Proj> projections() {
  return {{"self_attn.q_proj", "attn_q", 64, 64},  {"self_attn.k_proj", "attn_k", 32, 64},
          {"self_attn.v_proj", "attn_v", 32, 64},  {"self_attn.o_proj", "attn_output", 64, 64},
          {"mlp.gate_proj", "ffn_gate", 90, 64},   {"mlp.up_proj", "ffn_up", 90, 64},
          {"mlp.down_proj", "ffn_down", 64, 90}};
}

enum class Form { kPacked, kBf16 };

// A folder with random weights; remembers what it wrote.
struct Folder {
  fs::path dir;
  std::map<std::string, std::vector<int8_t>> codes;    // canonical name -> codes (packed form)
  std::map<std::string, float> weight_scale;           // canonical name -> file's weight_scale
  std::map<std::string, std::vector<float>> floats;    // canonical name -> bf16 weights as float
  std::map<std::string, std::vector<uint8_t>> dense;   // canonical name -> dense bytes
  std::vector<std::vector<uint8_t>> keep;              // storage for the writer's spans
};

Folder make_folder(const std::string& leaf, Form form, const nlohmann::json& config,
                   bool with_lm_head = false, int shards = 1) {
  Folder f;
  f.dir = fresh_dir(leaf);
  write_text(f.dir / "config.json", config.dump(2));
  std::mt19937_64 rng(99);
  std::vector<StWriteTensor> ts;
  f.keep.reserve(200);
  auto bf16_vec = [&](int64_t n, std::vector<float>* as_float) {
    std::vector<uint8_t> b;
    for (int64_t i = 0; i < n; ++i) {
      float v = static_cast<float>(static_cast<int64_t>(rng() % 4001) - 2000) / 1000.0f;
      uint16_t h = f32_to_bf16(v);
      if (as_float) as_float->push_back(bf16_to_f32(h));
      b.push_back(static_cast<uint8_t>(h));
      b.push_back(static_cast<uint8_t>(h >> 8));
    }
    return b;
  };
  auto add_dense = [&](const std::string& hf, const std::string& canon, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    f.keep.push_back(bf16_vec(n, nullptr));
    f.dense[canon] = f.keep.back();
    ts.push_back({hf, StDtype::kBF16, shape, f.keep.back()});
  };
  add_dense("model.embed_tokens.weight", "token_embd.weight", {300, 64});
  add_dense("model.norm.weight", "output_norm.weight", {64});
  if (with_lm_head) add_dense("lm_head.weight", "output.weight", {300, 64});
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string c = "blk." + std::to_string(l) + ".";
    add_dense(p + "input_layernorm.weight", c + "attn_norm.weight", {64});
    add_dense(p + "post_attention_layernorm.weight", c + "ffn_norm.weight", {64});
    add_dense(p + "self_attn.attn_sub_norm.weight", c + "attn_sub_norm.weight", {64});
    add_dense(p + "mlp.ffn_sub_norm.weight", c + "ffn_sub_norm.weight", {90});
    for (const auto& pr : projections()) {
      const std::string canon = c + pr.canon + ".weight";
      const std::string hf = p + pr.hf + ".weight";
      if (form == Form::kPacked) {
        auto& codes = f.codes[canon];
        for (int64_t i = 0; i < pr.out * pr.in; ++i) codes.push_back(static_cast<int8_t>(rng() % 3) - 1);
        f.keep.push_back(hf_pack(codes, pr.out, pr.in));
        ts.push_back({hf, StDtype::kU8, {(pr.out + 3) / 4, pr.in}, f.keep.back()});
        float ws = 0.5f + static_cast<float>(rng() % 64) / 32.0f;  // exact in bf16
        f.weight_scale[canon] = ws;
        uint16_t h = f32_to_bf16(ws);
        f.keep.push_back({static_cast<uint8_t>(h), static_cast<uint8_t>(h >> 8)});
        ts.push_back({hf + "_scale", StDtype::kBF16, {1}, f.keep.back()});
      } else {
        f.keep.push_back(bf16_vec(pr.out * pr.in, &f.floats[canon]));
        ts.push_back({hf, StDtype::kBF16, {pr.out, pr.in}, f.keep.back()});
      }
    }
  }
  if (shards == 1) {
    write_safetensors((f.dir / "model.safetensors").string(), ts, {{"format", "pt"}});
  } else {
    nlohmann::json wm = nlohmann::json::object();
    for (int s = 0; s < shards; ++s) {
      std::vector<StWriteTensor> part;
      const std::string file = "model-0000" + std::to_string(s + 1) + "-of-0000" + std::to_string(shards) + ".safetensors";
      for (size_t i = static_cast<size_t>(s); i < ts.size(); i += static_cast<size_t>(shards)) {
        // Keep a projection and its scale in different shards sometimes: split by index.
        part.push_back(ts[i]);
        wm[ts[i].name] = file;
      }
      write_safetensors((f.dir / file).string(), part);
    }
    write_text(f.dir / "model.safetensors.index.json", nlohmann::json{{"metadata", {}}, {"weight_map", wm}}.dump());
  }
  return f;
}

TEST(HfModel, CanonicalNames) {
  EXPECT_EQ(hf_canonical_name("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(hf_canonical_name("model.norm.weight"), "output_norm.weight");
  EXPECT_EQ(hf_canonical_name("lm_head.weight"), "output.weight");
  EXPECT_EQ(hf_canonical_name("model.layers.12.self_attn.o_proj.weight"), "blk.12.attn_output.weight");
  EXPECT_EQ(hf_canonical_name("model.layers.0.mlp.ffn_sub_norm.weight"), "blk.0.ffn_sub_norm.weight");
  EXPECT_EQ(hf_canonical_name("model.layers.3.post_attention_layernorm.weight"), "blk.3.ffn_norm.weight");
  EXPECT_EQ(hf_canonical_name("model.layers.3.self_attn.q_proj.weight_scale"), "");
  EXPECT_EQ(hf_canonical_name("model.layers.x.mlp.up_proj.weight"), "");
  EXPECT_EQ(hf_canonical_name("model.layers.-1.mlp.up_proj.weight"), "");
  EXPECT_EQ(hf_canonical_name("model.layers.01.mlp.up_proj.weight"), "");
  EXPECT_EQ(hf_canonical_name("model.layers.+1.mlp.up_proj.weight"), "");
  EXPECT_EQ(hf_canonical_name("model.layers.0.mlp.up_proj.weight"), "blk.0.ffn_up.weight");
  EXPECT_EQ(hf_canonical_name("model.rotary_emb.inv_freq"), "");
}

TEST(HfModel, ConfigDefaultsAndErrors) {
  nlohmann::json j = tiny_config_json();
  j.erase("num_key_value_heads");
  j["eos_token_id"] = 7;
  HfConfig h = parse_hf_config(j, "config.json");
  EXPECT_EQ(h.config.num_kv_heads, 4);
  EXPECT_EQ(h.config.head_dim, 16);
  EXPECT_EQ(h.config.eos_token_ids, std::vector<int64_t>{7});
  EXPECT_EQ(h.linear_class, "bitlinear");
  EXPECT_TRUE(h.tie_given);
  j["head_dim"] = 8;
  j["quantization_config"] = {{"linear_class", "autobitlinear"}, {"quant_method", "bitnet"}};
  h = parse_hf_config(j, "config.json");
  EXPECT_EQ(h.config.head_dim, 8);
  EXPECT_EQ(h.linear_class, "autobitlinear");

  for (const char* key : {"hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings"}) {
    nlohmann::json k = tiny_config_json();
    k.erase(key);
    std::string e = error_of([&] { parse_hf_config(k, "cfg.json"); });
    EXPECT_NE(e.find(std::string("'") + key + "'"), std::string::npos) << e;
    EXPECT_NE(e.find("cfg.json"), std::string::npos) << e;
  }
  nlohmann::json k = tiny_config_json();
  k["hidden_size"] = "64";
  EXPECT_NE(error_of([&] { parse_hf_config(k, "c"); }).find("'hidden_size' must be an integer"), std::string::npos);
  k = tiny_config_json();
  k["quantization_config"] = {{"linear_class", "fancy"}};
  EXPECT_NE(error_of([&] { parse_hf_config(k, "c"); }).find("fancy"), std::string::npos);
  k = tiny_config_json();
  k["tie_word_embeddings"] = 1;
  EXPECT_NE(error_of([&] { parse_hf_config(k, "c"); }).find("tie_word_embeddings"), std::string::npos);
  EXPECT_THROW(parse_hf_config(nlohmann::json::array(), "c"), Error);
}

void check_packed(const Folder& f, const Model& m, bool multiply) {
  EXPECT_EQ(m.format, "hf");
  for (const auto& [name, codes] : f.codes) {
    const Tensor& t = m.get(name);
    EXPECT_EQ(t.packing, Packing::kTernaryHF) << name;
    EXPECT_EQ(unpack_ternary(t).codes, codes) << name;
    ASSERT_EQ(t.scales.size(), 1u);
    const float ws = f.weight_scale.at(name);
    EXPECT_FLOAT_EQ(t.scales[0], multiply ? ws : 1.0f / ws) << name;
  }
  for (const auto& [name, bytes] : f.dense) {
    const Tensor* t = m.find(name);
    if (name == "output.weight" && m.config.tie_word_embeddings) {
      EXPECT_EQ(t, nullptr);
      continue;
    }
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->packing, Packing::kBF16);
    EXPECT_TRUE(std::equal(t->data.begin(), t->data.end(), bytes.begin(), bytes.end())) << name;
  }
}

TEST(HfModel, PackedAutobitlinearMultipliesScale) {
  nlohmann::json c = tiny_config_json();
  c["quantization_config"] = {{"linear_class", "autobitlinear"}, {"quant_method", "bitnet"}};
  Folder f = make_folder("autobit", Form::kPacked, c);
  auto m = load_hf(f.dir.string());
  check_packed(f, *m, true);
  EXPECT_EQ(m->config.num_kv_heads, 2);
  EXPECT_EQ(m->config.eos_token_ids, (std::vector<int64_t>{2, 3}));
  // Packed weights are not copied: the tensor views lie in the mapped file, not an owned buffer.
  EXPECT_EQ(m->total_bytes() > 0, true);
}

TEST(HfModel, PackedBitlinearDividesScale) {
  nlohmann::json c = tiny_config_json();
  c["quantization_config"] = {{"linear_class", "bitlinear"}};
  Folder f = make_folder("bitlinear", Form::kPacked, c);
  check_packed(f, *load_hf(f.dir.string()), false);
  // No quantization_config at all: "bitlinear", the transformers default.
  Folder g = make_folder("noquant", Form::kPacked, tiny_config_json());
  check_packed(g, *load_hf(g.dir.string()), false);
}

TEST(HfModel, ShardedFolder) {
  nlohmann::json c = tiny_config_json();
  c["quantization_config"] = {{"linear_class", "autobitlinear"}};
  Folder f = make_folder("sharded", Form::kPacked, c, false, 3);
  auto m = load_hf(f.dir.string());
  check_packed(f, *m, true);
  EXPECT_EQ(m->extra["hf"]["weight_files"].size(), 3u);
}

TEST(HfModel, Bf16WeightsAreQuantizedWithAbsmean) {
  Folder f = make_folder("bf16", Form::kBf16, tiny_config_json());
  auto m = load_hf(f.dir.string());
  ASSERT_EQ(f.floats.size(), 14u);
  for (const auto& [name, w] : f.floats) {
    const Tensor& t = m->get(name);
    EXPECT_EQ(t.packing, Packing::kTernary2) << name;
    // Independent absmean: scale = mean|W|, code = clamp(round(W/scale)).
    double sum = 0;
    for (float v : w) sum += std::fabs(v);
    const float scale = std::max(static_cast<float>(sum / static_cast<double>(w.size())), 1e-5f);
    ASSERT_EQ(t.scales.size(), 1u);
    EXPECT_NEAR(t.scales[0], scale, 1e-5f * scale) << name;
    TernaryMatrix q = unpack_ternary(t);
    size_t differ = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      int want = static_cast<int>(std::clamp(std::nearbyint(w[i] / scale), -1.0f, 1.0f));
      if (q.codes[i] != want) ++differ;
    }
    EXPECT_EQ(differ, 0u) << name;
    // And exactly the library's quantizer.
    TernaryMatrix lib = quantize_absmean(w, t.rows(), t.cols());
    EXPECT_EQ(q.codes, lib.codes) << name;
    EXPECT_EQ(t.scales, lib.scales) << name;
  }
}

TEST(HfModel, UntiedHeadAndTieInference) {
  nlohmann::json c = tiny_config_json();
  c["tie_word_embeddings"] = false;
  Folder f = make_folder("untied", Form::kPacked, c, /*with_lm_head=*/true);
  auto m = load_hf(f.dir.string());
  EXPECT_FALSE(m->config.tie_word_embeddings);
  check_packed(f, *m, false);
  // Without the key, an lm_head.weight means untied.
  c.erase("tie_word_embeddings");
  Folder g = make_folder("untied_inferred", Form::kPacked, c, true);
  EXPECT_FALSE(load_hf(g.dir.string())->config.tie_word_embeddings);
  Folder h = make_folder("tied_inferred", Form::kPacked, c, false);
  EXPECT_TRUE(load_hf(h.dir.string())->config.tie_word_embeddings);
  // Untied per config but no head: Model::validate names the missing tensor.
  nlohmann::json u = tiny_config_json();
  u["tie_word_embeddings"] = false;
  Folder k = make_folder("untied_missing", Form::kPacked, u, false);
  EXPECT_NE(error_of([&] { load_hf(k.dir.string()); }).find("output.weight"), std::string::npos);
}

TEST(HfModel, TokenizerTemplateAndSpecialTokens) {
  nlohmann::json c = tiny_config_json();
  c.erase("bos_token_id");
  c.erase("eos_token_id");
  Folder f = make_folder("tok", Form::kPacked, c);
  const std::string tok = R"({"version":"1.0","added_tokens":[{"id":5,"content":"<s>"},{"id":6,"content":"</s>"}],)"
                          R"("model":{"type":"BPE","vocab":{"a":0,"<eot>":9}}})";
  write_text(f.dir / "tokenizer.json", tok);
  write_text(f.dir / "tokenizer_config.json",
             nlohmann::json{{"bos_token", "<s>"},
                            {"eos_token", {{"content", "<eot>"}}},
                            {"chat_template", {{{"name", "tool_use"}, {"template", "T"}},
                                               {{"name", "default"}, {"template", "D"}}}}}
                 .dump());
  auto m = load_hf(f.dir.string());
  EXPECT_EQ(m->tokenizer.hf_json, tok);
  EXPECT_EQ(m->chat_template, "D");
  EXPECT_EQ(m->config.bos_token_id, 5);
  EXPECT_EQ(m->config.eos_token_ids, std::vector<int64_t>{9});

  // generation_config.json wins over token texts; a plain string template.
  write_text(f.dir / "generation_config.json", R"({"bos_token_id": 11, "eos_token_id": [12, 13]})");
  write_text(f.dir / "tokenizer_config.json", R"({"chat_template": "{{ bos_token }}"})");
  m = load_hf(f.dir.string());
  EXPECT_EQ(m->config.bos_token_id, 11);
  EXPECT_EQ(m->config.eos_token_ids, (std::vector<int64_t>{12, 13}));
  EXPECT_EQ(m->chat_template, "{{ bos_token }}");
  EXPECT_EQ(m->tokenizer.bos_id, 11);
  EXPECT_EQ(m->tokenizer.eos_id, 12);

  write_text(f.dir / "tokenizer_config.json", R"({"chat_template": 5})");
  EXPECT_NE(error_of([&] { load_hf(f.dir.string()); }).find("chat_template"), std::string::npos);
}

TEST(HfModel, HostileFoldersThrowUsefulErrors) {
  // Not a folder / no config / no weights.
  EXPECT_NE(error_of([] { load_hf("/nonexistent/dir"); }).find("not a directory"), std::string::npos);
  fs::path empty = fresh_dir("empty");
  EXPECT_NE(error_of([&] { load_hf(empty.string()); }).find("config.json"), std::string::npos);
  write_text(empty / "config.json", tiny_config_json().dump());
  EXPECT_NE(error_of([&] { load_hf(empty.string()); }).find("model.safetensors"), std::string::npos);
  write_text(empty / "config.json", "{not json");
  EXPECT_NE(error_of([&] { load_hf(empty.string()); }).find("not valid JSON"), std::string::npos);

  // Missing config key names it.
  nlohmann::json c = tiny_config_json();
  c.erase("intermediate_size");
  Folder f = make_folder("nokey", Form::kPacked, tiny_config_json());
  write_text(f.dir / "config.json", c.dump());
  EXPECT_NE(error_of([&] { load_hf(f.dir.string()); }).find("'intermediate_size'"), std::string::npos);

  // Config disagrees with the weights: packed shape named with the tensor.
  c = tiny_config_json();
  c["intermediate_size"] = 128;
  write_text(f.dir / "config.json", c.dump());
  std::string e = error_of([&] { load_hf(f.dir.string()); });
  EXPECT_NE(e.find("model.layers.0.mlp.down_proj.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("expected packed uint8 16x128"), std::string::npos) << e;

  // Fewer layers in config than in the file.
  c = tiny_config_json();
  c["num_hidden_layers"] = 1;
  write_text(f.dir / "config.json", c.dump());
  e = error_of([&] { load_hf(f.dir.string()); });
  EXPECT_NE(e.find("model.layers.1"), std::string::npos) << e;

  // Shard index that escapes the folder.
  Folder s = make_folder("escape", Form::kPacked, tiny_config_json(), false, 2);
  write_text(s.dir / "model.safetensors.index.json",
             R"({"weight_map":{"model.norm.weight":"../model-00001-of-00002.safetensors"}})");
  e = error_of([&] { load_hf(s.dir.string()); });
  EXPECT_NE(e.find("not a plain file name"), std::string::npos) << e;
  write_text(s.dir / "model.safetensors.index.json",
             R"({"weight_map":{"model.nothere.weight":"model-00001-of-00002.safetensors"}})");
  e = error_of([&] { load_hf(s.dir.string()); });
  EXPECT_NE(e.find("model.nothere.weight"), std::string::npos) << e;
}

// The tensor mapping on hand-built safetensors images: dtype and scale errors.
TEST(HfModel, TensorMappingErrors) {
  auto run = [](std::vector<StWriteTensor> ts, const std::string& linear = "bitlinear") {
    const std::string path = (fresh_dir("map") / "m.safetensors").string();
    write_safetensors(path, ts);
    std::ifstream in(path, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    SafetensorsFile st = parse_safetensors(bytes, path);
    Model m;
    m.config = parse_hf_config(tiny_config_json(), "c").config;
    return error_of([&] { add_hf_tensors(m, {st}, linear, true); });
  };
  std::vector<uint8_t> packed(16 * 64), scale = {0, 0, 0x80, 0x3f} /* 1.0f */, zero(4, 0), norm_i8(64);
  std::vector<uint8_t> two_scales(8);
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  std::string e = run({{q, StDtype::kU8, {16, 64}, packed}});
  EXPECT_NE(e.find("weight_scale is missing"), std::string::npos) << e;
  e = run({{q, StDtype::kU8, {16, 64}, packed}, {q + "_scale", StDtype::kF32, {}, zero}});
  EXPECT_NE(e.find("positive finite"), std::string::npos) << e;
  e = run({{q, StDtype::kU8, {16, 64}, packed}, {q + "_scale", StDtype::kF32, {2}, two_scales}});
  EXPECT_NE(e.find("must hold 1 value"), std::string::npos) << e;
  e = run({{q, StDtype::kI8, {16, 64}, packed}, {q + "_scale", StDtype::kF32, {}, scale}});
  EXPECT_NE(e.find("found I8"), std::string::npos) << e;
  e = run({{"model.norm.weight", StDtype::kI8, {64}, norm_i8}});
  EXPECT_NE(e.find("model.norm.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("expected F32, F16 or BF16"), std::string::npos) << e;
  e = run({{"model.layers.0.self_attn.k_proj.weight_scale", StDtype::kF32, {}, scale}});
  EXPECT_NE(e.find("no matching"), std::string::npos) << e;
  EXPECT_EQ(run({{q, StDtype::kU8, {16, 64}, packed}, {q + "_scale", StDtype::kF32, {}, scale}}), "");
}

}  // namespace
}  // namespace onebit
