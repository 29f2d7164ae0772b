#include "core/formats/model_loader.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "core/base/error.h"
#include "core/base/ternary_packing.h"
#include "core/formats/gguf.h"
#include "core/formats/h1b.h"
#include "core/formats/safetensors.h"

namespace onebit {
namespace {

namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& leaf) {
  fs::path dir = fs::path(testing::TempDir()) / "onebit_loader_test" / leaf;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_bytes(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// A random tiny model (one scale per ternary tensor, so that every writer can hold it).
std::unique_ptr<Model> tiny_model() {
  std::mt19937_64 rng(42);
  auto m = std::make_unique<Model>();
  m->format = "test";
  ModelConfig& c = m->config;
  c.hidden_size = 128;
  c.intermediate_size = 256;
  c.num_layers = 1;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 32;
  c.vocab_size = 260;
  c.max_position_embeddings = 64;
  c.bos_token_id = 0;
  c.eos_token_ids = {1};
  for (const auto& e : expected_tensors(c)) {
    Tensor t;
    t.name = e.name;
    t.shape = e.shape;
    const int64_t rows = e.shape.size() == 2 ? e.shape[0] : 1, cols = e.shape.back();
    if (e.ternary) {
      TernaryMatrix tm{rows, cols, {}, {0.75f}};
      for (int64_t i = 0; i < rows * cols; ++i) tm.codes.push_back(static_cast<int8_t>(rng() % 3) - 1);
      t.packing = Packing::kTernary2;
      t.data = m->own(pack_ternary(tm, Packing::kTernary2));
      t.scales = tm.scales;
    } else {
      std::vector<float> v(static_cast<size_t>(rows * cols));
      for (auto& x : v) x = static_cast<float>(rng() % 1000) / 500.0f;
      t.packing = Packing::kF32;
      t.data = m->own(pack_dense(v, Packing::kF32));
    }
    m->tensors.push_back(std::move(t));
  }
  m->tokenizer.hf_json = R"({"model":{"type":"BPE","vocab":{}}})";
  return m;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelLoader, DetectsByMagic) {
  auto b = [](std::string s) { return std::vector<uint8_t>(s.begin(), s.end()); };
  EXPECT_EQ(detect_format_bytes(b(std::string("1BITH1B\n", 8) + std::string(8, '\0'))), "h1b");
  EXPECT_EQ(detect_format_bytes(b(std::string("H1B\0\2\0\0\0", 8))), "h1b-legacy");
  EXPECT_EQ(detect_format_bytes(b(std::string("GGUF\3\0\0\0", 8))), "gguf");
  EXPECT_EQ(detect_format_bytes(b(std::string("\x10\0\0\0\0\0\0\0{\"a\"", 12))), "hf");
  EXPECT_EQ(detect_format_bytes(b("hello world!!")), "");
  EXPECT_EQ(detect_format_bytes({}), "");
}

TEST(ModelLoader, LoadsEveryFormat) {
  auto m = tiny_model();
  const fs::path dir = fresh_dir("all");

  const std::string h1b = (dir / "m.h1b").string();
  write_h1b(*m, h1b);
  EXPECT_EQ(detect_format(h1b), "h1b");
  auto a = load_model(h1b);
  EXPECT_EQ(a->format, "h1b");
  EXPECT_EQ(unpack_ternary(a->get("blk.0.attn_q.weight")).codes,
            unpack_ternary(m->get("blk.0.attn_q.weight")).codes);

  const std::string gguf = (dir / "m.gguf").string();
  write_gguf(*m, gguf, Packing::kI2_S);
  EXPECT_EQ(detect_format(gguf), "gguf");
  auto g = load_model(gguf);
  EXPECT_EQ(g->format, "gguf");
  EXPECT_EQ(unpack_ternary(g->get("blk.0.ffn_down.weight")).codes,
            unpack_ternary(m->get("blk.0.ffn_down.weight")).codes);

  // An HF folder, reached through the folder and through its safetensors file.
  const fs::path hf = fresh_dir("hf");
  {
    std::ofstream(hf / "config.json") << nlohmann::json{{"hidden_size", 128},
                                                        {"intermediate_size", 256},
                                                        {"num_hidden_layers", 1},
                                                        {"num_attention_heads", 4},
                                                        {"num_key_value_heads", 2},
                                                        {"vocab_size", 260},
                                                        {"max_position_embeddings", 64}}
                                             .dump();
    std::vector<std::vector<uint8_t>> keep;
    std::vector<StWriteTensor> ts;
    auto hf_name = [](const std::string& canon) {
      if (canon == "token_embd.weight") return std::string("model.embed_tokens.weight");
      if (canon == "output_norm.weight") return std::string("model.norm.weight");
      const std::pair<const char*, const char*> map[] = {
          {"attn_norm", "input_layernorm"},         {"attn_q", "self_attn.q_proj"},
          {"attn_k", "self_attn.k_proj"},           {"attn_v", "self_attn.v_proj"},
          {"attn_output", "self_attn.o_proj"},      {"attn_sub_norm", "self_attn.attn_sub_norm"},
          {"ffn_norm", "post_attention_layernorm"}, {"ffn_gate", "mlp.gate_proj"},
          {"ffn_up", "mlp.up_proj"},                {"ffn_down", "mlp.down_proj"},
          {"ffn_sub_norm", "mlp.ffn_sub_norm"}};
      std::string mid = canon.substr(6, canon.size() - 6 - 7);  // "blk.0." ... ".weight"
      for (auto [c, h] : map)
        if (mid == c) return "model.layers.0." + std::string(h) + ".weight";
      return std::string();
    };
    keep.reserve(64);
    for (const auto& t : m->tensors) {
      if (is_ternary(t.packing)) {
        TernaryMatrix tm = unpack_ternary(t);
        std::vector<float> f(tm.codes.begin(), tm.codes.end());
        keep.push_back(pack_dense(f, Packing::kF32));
      } else {
        keep.emplace_back(t.data.begin(), t.data.end());
      }
      ts.push_back({hf_name(t.name), StDtype::kF32, t.shape, keep.back()});
    }
    write_safetensors((hf / "model.safetensors").string(), ts);
  }
  EXPECT_EQ(detect_format(hf.string()), "hf");
  EXPECT_EQ(detect_format((hf / "model.safetensors").string()), "hf");
  for (const std::string& p : {hf.string(), (hf / "model.safetensors").string()}) {
    auto h = load_model(p);
    EXPECT_EQ(h->format, "hf");
    // Weights of exactly -1/0/+1 quantize back to themselves.
    EXPECT_EQ(unpack_ternary(h->get("blk.0.attn_v.weight")).codes,
              unpack_ternary(m->get("blk.0.attn_v.weight")).codes);
  }
}

TEST(ModelLoader, LegacyFileThroughDispatcher) {
  // Convert the tiny model's ternary tensors into a legacy file through the layout in the spec.
  auto m = tiny_model();
  std::vector<uint8_t> b = {'H', '1', 'B', 0};
  auto i32 = [&](int32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(static_cast<uint32_t>(v) >> (8 * i)));
  };
  auto raw = [&](std::span<const uint8_t> s) { b.insert(b.end(), s.begin(), s.end()); };
  i32(1);
  for (int v : {128, 256, 1, 4, 2, 260, 64, 1, 0}) i32(v);
  raw(m->get("token_embd.weight").data);
  raw(m->get("output_norm.weight").data);
  for (const char* n : {"attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm"})
    raw(m->get(std::string("blk.0.") + n + ".weight").data);
  for (const char* n : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}) {
    const Tensor& t = m->get(std::string("blk.0.") + n + ".weight");
    raw(t.data);  // kTernary2 and the legacy codes are byte-identical
    std::vector<float> s(static_cast<size_t>(t.rows()), t.scales[0]);
    raw({reinterpret_cast<const uint8_t*>(s.data()), s.size() * 4});
  }
  const fs::path p = fresh_dir("legacy") / "old.h1b";
  write_bytes(p, b);
  EXPECT_EQ(detect_format(p.string()), "h1b-legacy");
  auto l = load_model(p.string());
  EXPECT_EQ(l->format, "h1b-legacy");
  EXPECT_EQ(unpack_ternary(l->get("blk.0.ffn_up.weight")).codes, unpack_ternary(m->get("blk.0.ffn_up.weight")).codes);
}

TEST(ModelLoader, UnknownFormatNamesPathAndBytes) {
  const fs::path p = fresh_dir("unknown") / "model.bin";
  write_bytes(p, {0xde, 0xad, 0xbe, 0xef, 0x01});
  std::string e = error_of([&] { load_model(p.string()); });
  EXPECT_NE(e.find("model.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("de ad be ef 01"), std::string::npos) << e;
  write_bytes(p, {});
  e = error_of([&] { detect_format(p.string()); });
  EXPECT_NE(e.find("empty file"), std::string::npos) << e;
  e = error_of([&] { load_model("/nonexistent/model.h1b"); });
  EXPECT_NE(e.find("/nonexistent/model.h1b"), std::string::npos) << e;
  // A damaged file of a known format reports that format's error.
  std::vector<uint8_t> h(kH1bMagic, kH1bMagic + 8);
  h.resize(40, 0);
  write_bytes(p, h);
  e = error_of([&] { load_model(p.string()); });
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
}

}  // namespace
}  // namespace onebit
