#include "core/formats/gguf.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <tuple>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/base/error.h"
#include "core/base/half.h"
#include "core/base/ternary_packing.h"
#include "core/tokenizer/byte_level.h"
#include "core/tokenizer/pre_tokenizer.h"

namespace onebit {
namespace {

// ---- a small in-memory model --------------------------------------------------------------------

ModelConfig tiny_config(bool tied) {
  ModelConfig c;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.vocab_size = 40;
  c.max_position_embeddings = 128;
  c.rope_theta = 500000.0;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = tied;
  c.bos_token_id = 1;
  c.eos_token_ids = {2, 3};
  return c;
}

// Builds a complete BitNet model: ternary tensors in kTernary2 with random codes, token_embd F16,
// norms F32, output.weight (untied) Q8_0.
std::unique_ptr<Model> tiny_model(bool tied, bool per_row_scales, uint32_t seed) {
  auto m = std::make_unique<Model>();
  m->path = "memory";
  m->config = tiny_config(tied);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> code(-1, 1);
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  int k = 0;
  for (const ExpectedTensor& e : expected_tensors(m->config)) {
    Tensor t;
    t.name = e.name;
    t.shape = e.shape;
    if (e.ternary) {
      TernaryMatrix tm;
      tm.rows = e.shape[0];
      tm.cols = e.shape[1];
      tm.codes.resize(static_cast<size_t>(tm.rows * tm.cols));
      for (auto& x : tm.codes) x = static_cast<int8_t>(code(rng));
      if (per_row_scales) {
        for (int64_t r = 0; r < tm.rows; ++r) tm.scales.push_back(0.5f + 0.25f * static_cast<float>((r + k) % 5));
      } else {
        tm.scales = {0.75f + 0.125f * static_cast<float>(k % 4)};  // exact in fp16
      }
      t.packing = Packing::kTernary2;
      t.data = m->own(pack_ternary(tm, Packing::kTernary2));
      t.scales = tm.scales;
    } else {
      std::vector<float> v(static_cast<size_t>(t.numel()));
      for (auto& x : v) x = val(rng);
      t.packing = e.shape.size() == 1 ? Packing::kF32 : e.name == "output.weight" ? Packing::kQ8_0 : Packing::kF16;
      t.data = m->own(pack_dense(v, t.packing));
    }
    m->tensors.push_back(std::move(t));
    ++k;
  }
  TokenizerData& tok = m->tokenizer;
  tok.model = "gpt2";
  tok.pre = "llama-bpe";
  for (int i = 0; i < 40; ++i) {
    tok.tokens.push_back(i < 4 ? fmt::format("<|special_{}|>", i) : std::string(1, static_cast<char>('!' + i)));
    tok.token_types.push_back(i < 4 ? 3 : 1);
    tok.scores.push_back(-static_cast<float>(i));
  }
  tok.merges = {"a b", "c d", "ab cd"};
  tok.bos_id = 1;
  tok.eos_id = 2;
  tok.eot_id = 3;
  tok.pad_id = 0;
  tok.add_bos = true;
  m->chat_template = "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}"
                     "<|eot_id|>{% endfor %}";
  return m;
}

void expect_same_model(const Model& a, const Model& b, Packing ternary) {
  EXPECT_EQ(a.config.to_json(), b.config.to_json());
  EXPECT_EQ(a.tokenizer.model, b.tokenizer.model);
  EXPECT_EQ(a.tokenizer.pre, b.tokenizer.pre);
  EXPECT_EQ(a.tokenizer.tokens, b.tokenizer.tokens);
  EXPECT_EQ(a.tokenizer.token_types, b.tokenizer.token_types);
  EXPECT_EQ(a.tokenizer.scores, b.tokenizer.scores);
  EXPECT_EQ(a.tokenizer.merges, b.tokenizer.merges);
  EXPECT_EQ(a.tokenizer.bos_id, b.tokenizer.bos_id);
  EXPECT_EQ(a.tokenizer.eos_id, b.tokenizer.eos_id);
  EXPECT_EQ(a.tokenizer.eot_id, b.tokenizer.eot_id);
  EXPECT_EQ(a.tokenizer.pad_id, b.tokenizer.pad_id);
  EXPECT_EQ(a.tokenizer.unk_id, b.tokenizer.unk_id);
  EXPECT_EQ(a.tokenizer.add_bos, b.tokenizer.add_bos);
  EXPECT_EQ(a.chat_template, b.chat_template);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const Tensor& x = a.tensors[i];
    const Tensor& y = b.tensors[i];
    SCOPED_TRACE(x.name);
    EXPECT_EQ(x.name, y.name);
    EXPECT_EQ(x.shape, y.shape);
    if (is_ternary(x.packing)) {
      EXPECT_EQ(y.packing, ternary);
      TernaryMatrix mx = unpack_ternary(x), my = unpack_ternary(y);
      EXPECT_EQ(mx.codes, my.codes);
      EXPECT_EQ(mx.scales, my.scales);
      EXPECT_EQ(x.scales, y.scales);
    } else {
      EXPECT_EQ(x.packing, y.packing);
      EXPECT_TRUE(std::equal(x.data.begin(), x.data.end(), y.data.begin(), y.data.end()));
    }
  }
}

TEST(Gguf, RoundTripBothPackings) {
  for (Packing p : {Packing::kTQ2_0, Packing::kI2_S}) {
    for (bool tied : {true, false}) {
      SCOPED_TRACE(fmt::format("{} tied={}", packing_name(p), tied));
      auto m = tiny_model(tied, false, 42);
      std::vector<uint8_t> bytes = write_gguf_to_memory(*m, p);
      auto back = parse_gguf(bytes, "mem.gguf");
      EXPECT_EQ(back->format, "gguf");
      EXPECT_EQ(back->config.architecture, "bitnet-b1.58");
      expect_same_model(*m, *back, p);
      EXPECT_NO_THROW(back->validate());
      EXPECT_EQ(back->extra["gguf"]["general.file_type"], p == Packing::kI2_S ? 40 : 37);
      EXPECT_EQ(back->extra["gguf"]["general.alignment"], 32);
      EXPECT_EQ(back->extra["gguf"]["tokenizer.ggml.merges"], nlohmann::json::array({"a b", "c d", "ab cd"}));
      EXPECT_NO_THROW((void)back->extra.dump());
    }
  }
}

TEST(Gguf, PerRowScalesSurviveTQ2AndAreRefusedByI2S) {
  auto m = tiny_model(true, true, 7);
  const std::vector<uint8_t> bytes = write_gguf_to_memory(*m, Packing::kTQ2_0);  // outlives `back`
  auto back = parse_gguf(bytes, "mem.gguf");
  expect_same_model(*m, *back, Packing::kTQ2_0);
  try {
    write_gguf_to_memory(*m, Packing::kI2_S);
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.attn_q.weight"), std::string::npos) << e.what();
  }
  EXPECT_THROW(write_gguf_to_memory(*m, Packing::kTernary2), Error);
}

TEST(Gguf, FileRoundTripWithProgress) {
  auto m = tiny_model(false, false, 3);
  const std::string path = (std::filesystem::temp_directory_path() / "onebit_gguf_test.gguf").string();
  size_t last_done = 0, last_total = 0, calls = 0;
  write_gguf(*m, path, Packing::kI2_S, [&](size_t done, size_t total) {
    EXPECT_GE(done, last_done);
    last_done = done;
    last_total = total;
    ++calls;
  });
  EXPECT_EQ(calls, m->tensors.size());
  EXPECT_EQ(last_done, last_total);
  EXPECT_FALSE(std::filesystem::exists(path + ".part"));
  auto back = load_gguf(path);
  expect_same_model(*m, *back, Packing::kI2_S);
  EXPECT_EQ(back->path, path);
  back.reset();
  std::filesystem::remove(path);
  EXPECT_THROW(load_gguf(path), Error);
}

TEST(Gguf, HfJsonTokenizerIsConvertedToGgufArrays) {
  // A byte-level BPE tokenizer.json with the LLaMA-3 split: 256 byte tokens, one merge, one special.
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[tok::byte_level_encode(std::string(1, static_cast<char>(b)))] = b;
  vocab["ab"] = 256;
  nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 257}, {"content", "<|eot_id|>"}, {"special", true}, {"lstrip", false}, {"rstrip", false},
         {"single_word", false}, {"normalized", false}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", tok::kLlama3Pattern}}}, {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"a b"}}}}};
  auto m = tiny_model(true, false, 5);
  m->tokenizer = TokenizerData{};
  m->tokenizer.hf_json = j.dump();
  const std::vector<uint8_t> bytes = write_gguf_to_memory(*m, Packing::kTQ2_0);
  auto back = parse_gguf(bytes, "mem.gguf");
  EXPECT_TRUE(back->tokenizer.hf_json.empty());
  ASSERT_EQ(back->tokenizer.tokens.size(), 258u);
  EXPECT_EQ(back->tokenizer.tokens[256], "ab");
  EXPECT_EQ(back->tokenizer.tokens[257], "<|eot_id|>");
  EXPECT_EQ(back->tokenizer.token_types[257], 3);
  EXPECT_EQ(back->tokenizer.merges, std::vector<std::string>{"a b"});
  EXPECT_EQ(back->tokenizer.model, "gpt2");
  EXPECT_EQ(back->tokenizer.pre, "llama-bpe");
}

TEST(Gguf, UnconvertibleHfJsonTokenizerIsKept) {
  auto m = tiny_model(true, false, 5);
  m->tokenizer = TokenizerData{};
  m->tokenizer.hf_json = R"({"model":{"type":"BPE"}})";
  const std::vector<uint8_t> bytes = write_gguf_to_memory(*m, Packing::kTQ2_0);
  auto back = parse_gguf(bytes, "mem.gguf");
  EXPECT_EQ(back->tokenizer.hf_json, m->tokenizer.hf_json);
  EXPECT_TRUE(back->tokenizer.tokens.empty());
}

// ---- a hand-rolled GGUF builder, independent of the writer, for hostile inputs ----------------

struct Builder {
  std::vector<uint8_t> kv;
  uint64_t n_kv = 0;
  struct Ti {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type;
    uint64_t offset;
  };
  std::vector<Ti> tis;
  std::vector<uint8_t> data;
  uint32_t version = 3;
  uint64_t alignment = 32;

  template <typename T>
  static void put(std::vector<uint8_t>& b, T v) {
    const size_t n = b.size();
    b.resize(n + sizeof(T));
    std::memcpy(b.data() + n, &v, sizeof(T));
  }
  static void str(std::vector<uint8_t>& b, std::string_view s) {
    put<uint64_t>(b, s.size());
    b.insert(b.end(), s.begin(), s.end());
  }
  Builder& key(std::string_view k, uint32_t type) {
    str(kv, k);
    put<uint32_t>(kv, type);
    ++n_kv;
    return *this;
  }
  template <typename T>
  Builder& scalar(std::string_view k, uint32_t type, T v) {
    key(k, type);
    put<T>(kv, v);
    return *this;
  }
  Builder& string(std::string_view k, std::string_view v) {
    key(k, 8);
    str(kv, v);
    return *this;
  }
  // A minimal valid BitNet config.
  Builder& config() {
    string("general.architecture", "bitnet-25");
    scalar<uint32_t>("bitnet-25.block_count", 4, 1);
    scalar<uint32_t>("bitnet-25.embedding_length", 4, 256);
    scalar<uint32_t>("bitnet-25.feed_forward_length", 4, 512);
    scalar<uint32_t>("bitnet-25.attention.head_count", 4, 4);
    return *this;
  }
  Builder& tensor(std::string name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    tis.push_back({std::move(name), std::move(ne), type, offset});
    return *this;
  }
  std::vector<uint8_t> build() const {
    std::vector<uint8_t> b = {'G', 'G', 'U', 'F'};
    put<uint32_t>(b, version);
    put<uint64_t>(b, tis.size());
    put<uint64_t>(b, n_kv);
    b.insert(b.end(), kv.begin(), kv.end());
    for (const Ti& t : tis) {
      str(b, t.name);
      put<uint32_t>(b, static_cast<uint32_t>(t.ne.size()));
      for (uint64_t d : t.ne) put<uint64_t>(b, d);
      put<uint32_t>(b, t.type);
      put<uint64_t>(b, t.offset);
    }
    b.resize((b.size() + alignment - 1) / alignment * alignment, 0);
    b.insert(b.end(), data.begin(), data.end());
    return b;
  }
};

std::string error_of(const std::vector<uint8_t>& b) {
  try {
    parse_gguf(b, "bad.gguf");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Two F32 vectors of 64 values (256 bytes each) at offsets 0 and 256.
Builder two_tensors() {
  Builder b;
  b.config();
  b.tensor("a.weight", {64}, 0, 0).tensor("b.weight", {64}, 0, 256);
  b.data.assign(512, 0);
  return b;
}

TEST(GgufHostile, TruncatedAtEveryPrefix) {
  // A small but complete file: a TQ2_0 tensor, a norm, a vocabulary.
  auto m = std::make_unique<Model>();
  m->config = tiny_config(true);
  m->config.num_layers = 1;
  TernaryMatrix tm;
  tm.rows = 2;
  tm.cols = 256;
  tm.codes.assign(512, 1);
  tm.scales = {0.5f};
  Tensor t;
  t.name = "blk.0.attn_q.weight";
  t.shape = {2, 256};
  t.packing = Packing::kTernary2;
  t.data = m->own(pack_ternary(tm, Packing::kTernary2));
  t.scales = {0.5f};
  m->tensors.push_back(t);
  std::vector<float> norm(20, 1.0f);
  Tensor n;
  n.name = "output_norm.weight";
  n.shape = {20};
  n.packing = Packing::kF32;
  n.data = m->own(pack_dense(norm, Packing::kF32));
  m->tensors.push_back(n);
  m->tokenizer.tokens = {"a", "b", "c"};
  m->tokenizer.eos_id = 2;
  std::vector<uint8_t> full = write_gguf_to_memory(*m, Packing::kTQ2_0);
  ASSERT_NO_THROW(parse_gguf(full, "full.gguf"));
  // The norm (80 bytes) is the last tensor; the writer pads it to 96. Cutting into that padding
  // leaves a complete file.
  const size_t last_end = full.size() - 16;
  for (size_t len = 0; len < full.size(); ++len) {
    std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(len));
    if (len < last_end) {
      EXPECT_THROW(parse_gguf(cut, "cut.gguf"), Error) << "prefix " << len;
    } else {
      EXPECT_NO_THROW(parse_gguf(cut, "cut.gguf")) << "prefix " << len;  // only padding is missing
    }
  }
}

TEST(GgufHostile, HeaderErrors) {
  std::vector<uint8_t> ok = two_tensors().build();
  ASSERT_EQ(error_of(ok), "");
  std::vector<uint8_t> b = ok;
  b[0] = 'X';
  EXPECT_NE(error_of(b).find("magic"), std::string::npos);
  Builder v = two_tensors();
  v.version = 1;
  EXPECT_NE(error_of(v.build()).find("version 1"), std::string::npos);
  v.version = 4;
  EXPECT_NE(error_of(v.build()).find("version 4"), std::string::npos);
  v.version = 0x03000000;
  EXPECT_NE(error_of(v.build()).find("big-endian"), std::string::npos);
  v.version = 2;
  EXPECT_EQ(error_of(v.build()), "");
  // Counts far beyond the file size.
  b = ok;
  b[8 + 7] = 0x10;  // tensor count high byte
  EXPECT_NE(error_of(b).find("tensor count"), std::string::npos);
  b = ok;
  b[16 + 7] = 0x10;
  EXPECT_NE(error_of(b).find("metadata count"), std::string::npos);
}

TEST(GgufHostile, TensorInfoErrors) {
  Builder b = two_tensors();
  b.tis[1].offset = 1024;
  EXPECT_NE(error_of(b.build()).find("past the end"), std::string::npos) << error_of(b.build());
  b = two_tensors();
  b.tis[1].offset = ~uint64_t{0} - 31;  // aligned, and offset + size overflows
  EXPECT_NE(error_of(b.build()).find("b.weight"), std::string::npos);
  b = two_tensors();
  b.tis[1].offset = 100;
  EXPECT_NE(error_of(b.build()).find("alignment"), std::string::npos);
  b = two_tensors();
  b.tis[1].offset = 224;
  EXPECT_NE(error_of(b.build()).find("overlap"), std::string::npos);
  b = two_tensors();
  b.tis[1].name = "a.weight";
  EXPECT_NE(error_of(b.build()).find("twice"), std::string::npos);
  b = two_tensors();
  b.tis[1].ne = {uint64_t{1} << 62};
  EXPECT_NE(error_of(b.build()).find("out of range"), std::string::npos);
  b = two_tensors();
  b.tis[1].ne = {uint64_t{1} << 30, uint64_t{1} << 30};
  EXPECT_NE(error_of(b.build()).find("2^40"), std::string::npos);
  b = two_tensors();
  b.tis[1].ne = {1, 1, 1, 1, 1};
  EXPECT_NE(error_of(b.build()).find("dimensions"), std::string::npos);
  b = two_tensors();
  b.tis[1].ne = {0};
  EXPECT_NE(error_of(b.build()).find("out of range"), std::string::npos);
  b = two_tensors();
  b.tis[1].type = 2;  // Q4_0
  const std::string e = error_of(b.build());
  EXPECT_NE(e.find("b.weight"), std::string::npos);
  EXPECT_NE(e.find("Q4_0"), std::string::npos);
  b = two_tensors();
  b.tis[1].type = 35;  // TQ2_0 with 64 columns
  EXPECT_NE(error_of(b.build()).find("multiple of 256"), std::string::npos);
  b = two_tensors();
  b.scalar<uint32_t>("general.alignment", 4, 48);
  EXPECT_NE(error_of(b.build()).find("power of two"), std::string::npos);
}

TEST(GgufHostile, MetadataErrors) {
  Builder b = two_tensors();
  b.string("general.architecture", "llama");  // duplicate key
  EXPECT_NE(error_of(b.build()).find("twice"), std::string::npos);
  Builder l;
  l.string("general.architecture", "llama");
  EXPECT_NE(error_of(l.build()).find("not a BitNet"), std::string::npos);
  Builder missing;
  missing.string("general.architecture", "bitnet");
  EXPECT_NE(error_of(missing.build()).find("bitnet.block_count"), std::string::npos);
  Builder neg;
  neg.string("general.architecture", "bitnet");
  neg.scalar<int64_t>("bitnet.block_count", 11, -1);
  EXPECT_NE(error_of(neg.build()).find("negative"), std::string::npos);
  Builder big;
  big.string("general.architecture", "bitnet");
  big.scalar<uint64_t>("bitnet.block_count", 10, ~uint64_t{0});
  EXPECT_NE(error_of(big.build()).find("integer"), std::string::npos);
  b = two_tensors();
  b.scalar<uint32_t>("weird", 99, 0);
  EXPECT_NE(error_of(b.build()).find("unknown value type"), std::string::npos);
  b = two_tensors();
  b.key("arr", 9);
  Builder::put<uint32_t>(b.kv, 8);  // array of strings
  Builder::put<uint64_t>(b.kv, uint64_t{1} << 60);
  EXPECT_NE(error_of(b.build()).find("past the end"), std::string::npos);
  b = two_tensors();
  b.string("tokenizer.ggml.tokens", "not an array");
  EXPECT_NE(error_of(b.build()).find("tokenizer.ggml.tokens"), std::string::npos);
  // Nested arrays deeper than the limit.
  b = two_tensors();
  b.key("deep", 9);
  for (int i = 0; i < 20; ++i) {
    Builder::put<uint32_t>(b.kv, 9);
    Builder::put<uint64_t>(b.kv, 1);
  }
  EXPECT_NE(error_of(b.build()).find("nested"), std::string::npos);
}

TEST(Gguf, AllValueTypesAndNestedArrays) {
  Builder b = two_tensors();
  b.scalar<uint8_t>("t.u8", 0, 200).scalar<int8_t>("t.i8", 1, -5).scalar<uint16_t>("t.u16", 2, 60000);
  b.scalar<int16_t>("t.i16", 3, -30000).scalar<uint32_t>("t.u32", 4, 4000000000u).scalar<int32_t>("t.i32", 5, -7);
  b.scalar<float>("t.f32", 6, 0.5f).scalar<uint8_t>("t.bool", 7, 1).string("t.str", "hi\xff");
  b.scalar<uint64_t>("t.u64", 10, 1ull << 63).scalar<int64_t>("t.i64", 11, -(1ll << 40));
  b.scalar<double>("t.f64", 12, 0.25);
  b.key("t.nested", 9);
  Builder::put<uint32_t>(b.kv, 9);  // array of 2 arrays
  Builder::put<uint64_t>(b.kv, 2);
  Builder::put<uint32_t>(b.kv, 5);
  Builder::put<uint64_t>(b.kv, 2);
  Builder::put<int32_t>(b.kv, 1);
  Builder::put<int32_t>(b.kv, 2);
  Builder::put<uint32_t>(b.kv, 8);
  Builder::put<uint64_t>(b.kv, 1);
  Builder::str(b.kv, "x");
  b.key("t.long", 9);
  Builder::put<uint32_t>(b.kv, 0);
  Builder::put<uint64_t>(b.kv, 1000);
  b.kv.insert(b.kv.end(), 1000, 7);
  b.scalar<uint32_t>("bitnet-25.attention.head_count_kv", 4, 2);
  b.scalar<float>("bitnet-25.rope.freq_base", 6, 500000.0f);
  b.scalar<uint32_t>("bitnet-25.context_length", 4, 4096);
  const std::vector<uint8_t> bytes = b.build();
  auto m = parse_gguf(bytes, "types.gguf");
  const nlohmann::json& g = m->extra["gguf"];
  EXPECT_EQ(g["t.u8"], 200);
  EXPECT_EQ(g["t.i8"], -5);
  EXPECT_EQ(g["t.u16"], 60000);
  EXPECT_EQ(g["t.i16"], -30000);
  EXPECT_EQ(g["t.u32"], 4000000000u);
  EXPECT_EQ(g["t.i32"], -7);
  EXPECT_EQ(g["t.f32"], 0.5);
  EXPECT_EQ(g["t.bool"], true);
  EXPECT_EQ(g["t.str"], "hi\xef\xbf\xbd");
  EXPECT_EQ(g["t.u64"], 1ull << 63);
  EXPECT_EQ(g["t.i64"], -(1ll << 40));
  EXPECT_EQ(g["t.f64"], 0.25);
  EXPECT_EQ(g["t.nested"], nlohmann::json::parse(R"([[1,2],["x"]])"));
  EXPECT_EQ(g["t.long"], "[1000 x u8]");
  EXPECT_NO_THROW((void)m->extra.dump());
  EXPECT_EQ(m->config.architecture, "bitnet-25");
  EXPECT_EQ(m->config.num_kv_heads, 2);
  EXPECT_EQ(m->config.head_dim, 64);
  EXPECT_EQ(m->config.rope_theta, 500000.0);
  EXPECT_EQ(m->config.max_position_embeddings, 4096);
  EXPECT_TRUE(m->config.tie_word_embeddings);
  // GGUF dims are reversed: ne = {64} -> shape {64}; check a 2-D one too.
  Builder d;
  d.config();
  d.tensor("m.weight", {32, 3}, 0, 0);  // ne0 = 32 cols, ne1 = 3 rows
  d.data.assign(384, 0);
  const std::vector<uint8_t> dbytes = d.build();
  auto dm = parse_gguf(dbytes, "dims.gguf");
  EXPECT_EQ(dm->tensors[0].shape, (std::vector<int64_t>{3, 32}));
}

TEST(Gguf, TQ2BlocksWithDifferentScalesInARowAreRefused) {
  Builder b;
  b.config();
  b.tensor("blk.0.attn_q.weight", {512, 1}, 35, 0);
  b.data.assign(132, 0x55);
  b.data[0] = 0x56;    // a non-zero weight in each block
  b.data[66] = 0x56;
  b.data[64] = 0x00;   // d = 1.0 in block 0
  b.data[65] = 0x3c;
  b.data[130] = 0x00;  // d = 2.0 in block 1
  b.data[131] = 0x40;
  EXPECT_NE(error_of(b.build()).find("different scales"), std::string::npos) << error_of(b.build());
  b.data[131] = 0x3c;
  const std::vector<uint8_t> ok = b.build();
  auto m = parse_gguf(ok, "ok.gguf");
  EXPECT_EQ(m->tensors[0].scales, std::vector<float>{1.0f});
}

// Regenerates fuzz/corpus/gguf/ when ONEBIT_WRITE_FUZZ_SEEDS names a directory (else skipped):
//   ONEBIT_WRITE_FUZZ_SEEDS=fuzz/corpus/gguf build/.../test_formats --gtest_filter='*FuzzSeeds*'
TEST(Gguf, WriteFuzzSeeds) {
  const char* dir = std::getenv("ONEBIT_WRITE_FUZZ_SEEDS");
  if (dir == nullptr) GTEST_SKIP() << "set ONEBIT_WRITE_FUZZ_SEEDS to write the seed corpus";
  auto save = [&](const char* file, const std::vector<uint8_t>& b) {
    ASSERT_LT(b.size(), 20000u) << file;
    ASSERT_NO_THROW(parse_gguf(b, file));
    std::ofstream(std::filesystem::path(dir) / file, std::ios::binary)
        .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  };
  // 1: a complete (tiny) model, I2_S.
  auto m = std::make_unique<Model>();
  m->config = tiny_config(false);
  m->config.hidden_size = 32;
  m->config.intermediate_size = 64;
  m->config.num_layers = 1;
  m->config.num_heads = 2;
  m->config.num_kv_heads = 1;
  m->config.head_dim = 16;
  m->config.vocab_size = 8;
  for (const ExpectedTensor& e : expected_tensors(m->config)) {
    Tensor t;
    t.name = e.name;
    t.shape = e.shape;
    if (e.ternary) {
      TernaryMatrix tm;
      tm.rows = e.shape[0];
      tm.cols = e.shape[1];
      for (int64_t i = 0; i < tm.rows * tm.cols; ++i) tm.codes.push_back(static_cast<int8_t>(i % 3 - 1));
      tm.scales = {0.5f};
      t.packing = Packing::kTernary2;
      t.data = m->own(pack_ternary(tm, Packing::kTernary2));
      t.scales = tm.scales;
    } else {
      std::vector<float> v(static_cast<size_t>(t.numel()), 0.25f);
      t.packing = e.shape.size() == 1 ? Packing::kF32 : Packing::kF16;
      t.data = m->own(pack_dense(v, t.packing));
    }
    m->tensors.push_back(std::move(t));
  }
  m->tokenizer.model = "gpt2";
  m->tokenizer.tokens = {"<s>", "</s>", "a", "b", "ab", " ", "c", "d"};
  m->tokenizer.token_types = {3, 3, 1, 1, 1, 1, 1, 1};
  m->tokenizer.merges = {"a b"};
  m->tokenizer.bos_id = 0;
  m->tokenizer.eos_id = 1;
  m->chat_template = "{{ messages[0]['content'] }}";
  ASSERT_NO_THROW(m->validate());
  save("tiny_model_i2s.gguf", write_gguf_to_memory(*m, Packing::kI2_S));
  // 2: the same model family in TQ2_0 is too large for a seed; a few tensors of every dense type.
  auto n = std::make_unique<Model>();
  n->config = tiny_config(true);
  TernaryMatrix tm;
  tm.rows = 2;
  tm.cols = 256;
  for (int i = 0; i < 512; ++i) tm.codes.push_back(static_cast<int8_t>(i % 3 - 1));
  tm.scales = {1.0f, 2.0f};
  Tensor t;
  t.name = "blk.0.attn_q.weight";
  t.shape = {2, 256};
  t.packing = Packing::kTernary2;
  t.data = n->own(pack_ternary(tm, Packing::kTernary2));
  t.scales = tm.scales;
  n->tensors.push_back(t);
  std::vector<float> v(64, -0.5f);
  for (auto [name, p, shape] : {std::tuple{"q8.weight", Packing::kQ8_0, std::vector<int64_t>{2, 32}},
                                std::tuple{"bf16.weight", Packing::kBF16, std::vector<int64_t>{4, 4, 4}},
                                std::tuple{"output_norm.weight", Packing::kF32, std::vector<int64_t>{64}}}) {
    Tensor d;
    d.name = name;
    d.packing = p;
    d.shape = shape;
    d.data = n->own(pack_dense(v, p));
    n->tensors.push_back(d);
  }
  n->tokenizer.hf_json = R"({"model":{"type":"BPE","vocab":{"a":0}}})";
  save("mixed_tq2.gguf", write_gguf_to_memory(*n, Packing::kTQ2_0));
  // 3: hand-built: every value type, nested arrays, a TQ1_0 tensor.
  Builder b = two_tensors();
  b.scalar<uint8_t>("t.u8", 0, 1).scalar<int8_t>("t.i8", 1, -1).scalar<uint16_t>("t.u16", 2, 2);
  b.scalar<int16_t>("t.i16", 3, -2).scalar<int32_t>("t.i32", 5, -3).scalar<uint8_t>("t.bool", 7, 1);
  b.scalar<uint64_t>("t.u64", 10, 4).scalar<int64_t>("t.i64", 11, -4).scalar<double>("t.f64", 12, 0.5);
  b.key("t.nested", 9);
  Builder::put<uint32_t>(b.kv, 9);
  Builder::put<uint64_t>(b.kv, 1);
  Builder::put<uint32_t>(b.kv, 8);
  Builder::put<uint64_t>(b.kv, 2);
  Builder::str(b.kv, "x");
  Builder::str(b.kv, "yz");
  b.tensor("blk.0.ffn_up.weight", {256, 1}, 34, 512);
  TernaryMatrix one;
  one.rows = 1;
  one.cols = 256;
  for (int i = 0; i < 256; ++i) one.codes.push_back(static_cast<int8_t>(i % 3 - 1));
  one.scales = {0.75f};
  std::vector<uint8_t> tq1 = pack_ternary(one, Packing::kTQ1_0);
  b.data.insert(b.data.end(), tq1.begin(), tq1.end());
  save("types_tq1.gguf", b.build());
}

}  // namespace
}  // namespace onebit
