#include "core/formats/h1b.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "core/base/error.h"
#include "core/base/half.h"
#include "core/base/mapped_file.h"
#include "core/base/ternary_packing.h"

namespace onebit {
namespace {

namespace fs = std::filesystem;

std::string temp_path(const std::string& leaf) {
  fs::path dir = fs::path(testing::TempDir()) / "onebit_h1b_test";
  fs::create_directories(dir);
  return (dir / leaf).string();
}

std::vector<uint8_t> read_all(const std::string& path) {
  auto f = MappedFile::open(path);
  return {f->data(), f->data() + f->size()};
}

void write_all(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

ModelConfig tiny_config(bool tied = true) {
  ModelConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 90;  // not a multiple of 4: exercises partial bytes
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 300;
  c.max_position_embeddings = 128;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = tied;
  c.bos_token_id = 1;
  c.eos_token_ids = {2, 3};
  return c;
}

// A random model: ternary tensors in `ternary` packing (per-row scales on attn_q, one scale
// elsewhere), norms F32, embedding BF16, untied head F16.
std::unique_ptr<Model> tiny_model(uint64_t seed, Packing ternary = Packing::kTernary2, bool tied = true) {
  std::mt19937_64 rng(seed);
  auto m = std::make_unique<Model>();
  m->path = "memory";
  m->format = "test";
  m->config = tiny_config(tied);
  for (const auto& e : expected_tensors(m->config)) {
    Tensor t;
    t.name = e.name;
    t.shape = e.shape;
    const int64_t rows = e.shape.size() == 2 ? e.shape[0] : 1, cols = e.shape.back();
    if (e.ternary) {
      TernaryMatrix tm;
      tm.rows = rows;
      tm.cols = cols;
      for (int64_t i = 0; i < rows * cols; ++i) tm.codes.push_back(static_cast<int8_t>(rng() % 3) - 1);
      if (e.name.find("attn_q") != std::string::npos) {
        for (int64_t r = 0; r < rows; ++r) tm.scales.push_back(0.5f + static_cast<float>(rng() % 1000) / 1000.0f);
      } else {
        tm.scales = {1.0f + static_cast<float>(rng() % 1000) / 777.0f};
      }
      t.packing = ternary;
      t.data = m->own(pack_ternary(tm, ternary));
      t.scales = tm.scales;
    } else {
      std::vector<float> v(static_cast<size_t>(rows * cols));
      for (auto& x : v) x = static_cast<float>(static_cast<int64_t>(rng() % 20001) - 10000) / 4096.0f;
      t.packing = e.name == "token_embd.weight" ? Packing::kBF16
                  : e.name == "output.weight"   ? Packing::kF16
                                                : Packing::kF32;
      t.data = m->own(pack_dense(v, t.packing));
    }
    m->tensors.push_back(std::move(t));
  }
  m->tokenizer.hf_json = R"({"version":"1.0","model":{"type":"BPE","vocab":{"a":0}}})";
  m->tokenizer.model = "gpt2";
  m->tokenizer.pre = "llama-bpe";
  m->tokenizer.tokens = {"a", "b\xff", "\xc3\xa9t\xc3\xa9", "<|eot|>"};  // one invalid UTF-8 token
  m->tokenizer.token_types = {1, 1, 1, 3};
  m->tokenizer.scores = {0.0f, -1.5f, -std::numeric_limits<float>::infinity(), 3.25f};
  m->tokenizer.merges = {"a b", "\xe2\x82 x"};
  m->tokenizer.bos_id = 1;
  m->tokenizer.eos_id = 2;
  m->tokenizer.eot_id = 3;
  m->tokenizer.add_bos = true;
  m->chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}";
  m->extra["note"] = "from a test";
  m->validate();
  return m;
}

void expect_same_model(const Model& a, const Model& b) {
  EXPECT_EQ(a.config.to_json(), b.config.to_json());
  EXPECT_EQ(a.chat_template, b.chat_template);
  EXPECT_EQ(a.tokenizer.hf_json, b.tokenizer.hf_json);
  EXPECT_EQ(a.tokenizer.model, b.tokenizer.model);
  EXPECT_EQ(a.tokenizer.pre, b.tokenizer.pre);
  EXPECT_EQ(a.tokenizer.tokens, b.tokenizer.tokens);
  EXPECT_EQ(a.tokenizer.token_types, b.tokenizer.token_types);
  EXPECT_EQ(a.tokenizer.scores, b.tokenizer.scores);
  EXPECT_EQ(a.tokenizer.merges, b.tokenizer.merges);
  EXPECT_EQ(a.tokenizer.bos_id, b.tokenizer.bos_id);
  EXPECT_EQ(a.tokenizer.eos_id, b.tokenizer.eos_id);
  EXPECT_EQ(a.tokenizer.eot_id, b.tokenizer.eot_id);
  EXPECT_EQ(a.tokenizer.add_bos, b.tokenizer.add_bos);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& ta : a.tensors) {
    const Tensor* tb = b.find(ta.name);
    ASSERT_NE(tb, nullptr) << ta.name;
    EXPECT_EQ(ta.shape, tb->shape) << ta.name;
    if (is_ternary(ta.packing)) {
      ASSERT_TRUE(is_ternary(tb->packing)) << ta.name;
      TernaryMatrix ma = unpack_ternary(ta), mb = unpack_ternary(*tb);
      EXPECT_EQ(ma.codes, mb.codes) << ta.name;
      EXPECT_EQ(ta.scales, tb->scales) << ta.name;
    } else {
      EXPECT_EQ(ta.packing, tb->packing) << ta.name;
      EXPECT_TRUE(std::equal(ta.data.begin(), ta.data.end(), tb->data.begin(), tb->data.end())) << ta.name;
    }
  }
}

// Reads header fields (docs/formats/h1b.md) from a file image.
uint64_t u64_at(const std::vector<uint8_t>& b, size_t off) {
  uint64_t v;
  std::memcpy(&v, b.data() + off, 8);
  return v;
}
void set_u64(std::vector<uint8_t>& b, size_t off, uint64_t v) { std::memcpy(b.data() + off, &v, 8); }

void reseal_header(std::vector<uint8_t>& b) { set_u64(b, 120, xxh64({b.data(), 120})); }

// Rewrites the tensor table through `mutate` and fixes the sizes and checksums, so that only the
// structure checks can reject the result.
std::vector<uint8_t> with_table(std::vector<uint8_t> b, const std::function<void(nlohmann::json&)>& mutate) {
  const uint64_t toff = u64_at(b, 40), tsize = u64_at(b, 48), doff = u64_at(b, 64);
  nlohmann::json t = nlohmann::json::parse(b.begin() + static_cast<ptrdiff_t>(toff),
                                           b.begin() + static_cast<ptrdiff_t>(toff + tsize));
  mutate(t);
  std::string text = t.dump();
  if (toff + text.size() > doff) {  // grow the gap before the data region, keeping it 64-aligned
    const uint64_t grow = (toff + text.size() - doff + 63) / 64 * 64;
    b.insert(b.begin() + static_cast<ptrdiff_t>(doff), grow, 0);
    set_u64(b, 64, doff + grow);
    set_u64(b, 16, b.size());
  }
  const uint64_t new_doff = u64_at(b, 64);
  std::fill(b.begin() + static_cast<ptrdiff_t>(toff), b.begin() + static_cast<ptrdiff_t>(new_doff), 0);
  std::memcpy(b.data() + toff, text.data(), text.size());
  set_u64(b, 48, text.size());
  set_u64(b, 56, t.size());
  set_u64(b, 88, xxh64({b.data() + toff, text.size()}));
  reseal_header(b);
  return b;
}

TEST(Xxh64, KnownVectors) {
  auto h = [](std::string_view s, uint64_t seed = 0) {
    return xxh64({reinterpret_cast<const uint8_t*>(s.data()), s.size()}, seed);
  };
  EXPECT_EQ(h(""), 0xEF46DB3751D8E999ull);
  EXPECT_EQ(h("abc"), 0x44BC2CF5AD770999ull);
  EXPECT_EQ(h("Nobody inspects the spammish repetition"), 0xFBCEA83C8A378BF1ull);
  EXPECT_EQ(h("xxhash", 20141025), 0xB559B98D844E0635ull);
}

TEST(H1b, RoundTripKeepsEverything) {
  auto m = tiny_model(1);
  const std::string path = temp_path("rt.h1b");
  std::vector<std::pair<size_t, size_t>> calls;
  write_h1b(*m, path, [&](size_t done, size_t total) { calls.emplace_back(done, total); });
  ASSERT_EQ(calls.size(), m->tensors.size());
  for (size_t i = 1; i < calls.size(); ++i) EXPECT_GT(calls[i].first, calls[i - 1].first);
  EXPECT_EQ(calls.back().first, calls.back().second);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  auto r = load_h1b(path);
  EXPECT_EQ(r->format, "h1b");
  EXPECT_EQ(r->path, path);
  EXPECT_EQ(r->extra.value("note", ""), "from a test");
  EXPECT_EQ(r->extra.value("source_format", ""), "test");
  expect_same_model(*m, *r);
  // Ternary tensors come back in the native packing, byte-identical, and all data is 64-aligned
  // from the start of the file (the map is page-aligned).
  auto bytes = read_all(path);
  for (const auto& t : r->tensors) {
    if (is_ternary(t.packing)) {
      EXPECT_EQ(t.packing, Packing::kTernary2);
      const Tensor& src = m->get(t.name);
      EXPECT_TRUE(std::equal(t.data.begin(), t.data.end(), src.data.begin(), src.data.end())) << t.name;
    }
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data.data()) % 64, 0u) << t.name;
  }
  EXPECT_TRUE(verify_h1b(path).ok);
}

TEST(H1b, RepacksOtherPackingsToTernary2) {
  for (Packing p : {Packing::kTernaryHF, Packing::kTernaryI8, Packing::kTernaryLegacyH1b}) {
    auto m = tiny_model(2, p, /*tied=*/false);
    const std::string path = temp_path("repack.h1b");
    write_h1b(*m, path);
    auto r = load_h1b(path);
    expect_same_model(*m, *r);
    for (const auto& t : r->tensors)
      if (is_ternary(t.packing)) {
        EXPECT_EQ(t.packing, Packing::kTernary2) << packing_name(p);
      }
  }
}

TEST(H1b, VerifyNamesTheDamagedTensor) {
  auto m = tiny_model(3);
  const std::string path = temp_path("flip.h1b");
  write_h1b(*m, path);
  auto clean = read_all(path);
  const uint64_t doff = u64_at(clean, 64);
  auto r = parse_h1b(clean, "clean");
  const Tensor& victim = r->get("blk.1.ffn_up.weight");
  const size_t at = static_cast<size_t>(victim.data.data() - clean.data()) + 7;
  ASSERT_GT(at, doff);

  auto bad = clean;
  bad[at] ^= 0x40;
  const std::string bad_path = temp_path("flip_bad.h1b");
  write_all(bad_path, bad);
  H1bVerifyResult v = verify_h1b(bad_path);
  EXPECT_FALSE(v.ok);
  ASSERT_EQ(v.problems.size(), 1u);
  EXPECT_NE(v.problems[0].find("blk.1.ffn_up.weight"), std::string::npos) << v.problems[0];
  EXPECT_NO_THROW(load_h1b(bad_path)) << "loading does not hash tensor data";

  // A damaged per-row scale is caught too.
  const Tensor& q = r->get("blk.0.attn_q.weight");
  ASSERT_EQ(q.scales.size(), 64u);
  auto bad2 = clean;
  bool flipped = false;
  // The scales follow the codes at the next 64-aligned offset.
  size_t sc = static_cast<size_t>(q.data.data() - clean.data()) + q.data.size();
  sc = (sc + 63) / 64 * 64;
  float f;
  std::memcpy(&f, bad2.data() + sc, 4);
  if (f == q.scales[0]) {
    bad2[sc + 1] ^= 1;
    flipped = true;
  }
  ASSERT_TRUE(flipped);
  v = verify_h1b_bytes(bad2, "bad2");
  ASSERT_FALSE(v.ok);
  EXPECT_NE(v.problems[0].find("blk.0.attn_q.weight"), std::string::npos) << v.problems[0];

  // Damaged metadata: load refuses, verify reports.
  auto bad3 = clean;
  bad3[u64_at(clean, 24) + 3] ^= 0x01;
  std::string e = error_of([&] { parse_h1b(bad3, "bad3"); });
  EXPECT_NE(e.find("metadata checksum"), std::string::npos) << e;
  v = verify_h1b_bytes(bad3, "bad3");
  EXPECT_FALSE(v.ok);
  // Damaged header field.
  auto bad4 = clean;
  bad4[100] ^= 0x01;  // reserved byte, covered by the header checksum
  e = error_of([&] { parse_h1b(bad4, "bad4"); });
  EXPECT_NE(e.find("header checksum"), std::string::npos) << e;
}

TEST(H1b, EveryTruncationThrows) {
  auto m = tiny_model(4);
  const std::string path = temp_path("trunc.h1b");
  write_h1b(*m, path);
  auto all = read_all(path);
  std::vector<size_t> cuts;
  for (size_t n = 0; n < 300 && n < all.size(); ++n) cuts.push_back(n);
  for (size_t n = 300; n < all.size(); n += 97) cuts.push_back(n);
  cuts.push_back(all.size() - 1);
  for (size_t n : cuts) {
    std::vector<uint8_t> cut(all.begin(), all.begin() + static_cast<ptrdiff_t>(n));
    EXPECT_THROW(parse_h1b(cut, "cut"), Error) << n;
    EXPECT_THROW(parse_h1b(cut, "cut", false), Error) << n;
    EXPECT_FALSE(verify_h1b_bytes(cut, "cut").ok) << n;
  }
  EXPECT_NE(error_of([&] { parse_h1b({all.data(), all.size() - 1}, "x"); }).find("truncated"), std::string::npos);
}

TEST(H1b, HostileHeadersAndTablesThrow) {
  auto m = tiny_model(5);
  const std::string path = temp_path("hostile.h1b");
  write_h1b(*m, path);
  const auto clean = read_all(path);
  ASSERT_NO_THROW(parse_h1b(clean, "clean"));
  auto expect_error = [&](const std::vector<uint8_t>& b, const std::string& needle) {
    std::string e = error_of([&] { parse_h1b(b, "x.h1b"); });
    EXPECT_NE(e.find(needle), std::string::npos) << "expected '" << needle << "', got: " << e;
    EXPECT_FALSE(verify_h1b_bytes(b, "x.h1b").ok);
  };
  // Header fields.
  auto b = clean;
  b[8] = 2;
  reseal_header(b);
  expect_error(b, "version 2");
  b = clean;
  b[12] = 1;
  reseal_header(b);
  expect_error(b, "flags");
  b = clean;
  b[0] = 'X';
  expect_error(b, "bad magic");
  b = clean;
  set_u64(b, 64, u64_at(b, 64) + 8);  // misaligned data region
  reseal_header(b);
  expect_error(b, "data region");
  b = clean;
  set_u64(b, 32, ~uint64_t{0} - 16);  // metadata size overflowing
  reseal_header(b);
  expect_error(b, "metadata");
  b = clean;
  set_u64(b, 56, u64_at(b, 56) + 1);
  reseal_header(b);
  expect_error(b, "tensor table has");

  auto entry = [](nlohmann::json& t, const std::string& name) -> nlohmann::json& {
    for (auto& e : t)
      if (e["name"] == name) return e;
    throw std::runtime_error("no entry " + name);
  };
  // Misaligned tensor offset.
  expect_error(with_table(clean, [&](nlohmann::json& t) { entry(t, "blk.0.attn_k.weight")["offset"] = 65; }),
               "64-aligned");
  // Overlapping tensors.
  expect_error(with_table(clean, [&](nlohmann::json& t) {
                 entry(t, "blk.0.attn_k.weight")["offset"] = entry(t, "blk.0.attn_q.weight")["offset"];
               }),
               "overlap");
  // Tensor outside the data region.
  expect_error(with_table(clean, [&](nlohmann::json& t) {
                 entry(t, "blk.0.attn_k.weight")["offset"] = uint64_t{1} << 62;
               }),
               "inside the");
  // Absurd shape, and a shape/size mismatch.
  expect_error(with_table(clean, [&](nlohmann::json& t) {
                 entry(t, "blk.0.attn_k.weight")["shape"] = {int64_t{1} << 40, int64_t{1} << 40};
               }),
               "absurdly large");
  expect_error(with_table(clean, [&](nlohmann::json& t) { entry(t, "blk.0.attn_k.weight")["shape"] = {32, 60}; }),
               "needs");
  expect_error(with_table(clean, [&](nlohmann::json& t) { entry(t, "blk.0.attn_k.weight")["shape"] = {0, 64}; }),
               "positive");
  // Unknown packing, bad scale count, duplicate name, missing field, missing tensor.
  expect_error(with_table(clean, [&](nlohmann::json& t) { entry(t, "blk.0.attn_k.weight")["packing"] = "q4_k"; }),
               "q4_k");
  expect_error(with_table(clean, [&](nlohmann::json& t) { entry(t, "blk.0.attn_k.weight")["scales_count"] = 7; }),
               "scales_count");
  expect_error(with_table(clean, [&](nlohmann::json& t) { entry(t, "blk.0.attn_k.weight")["name"] = "blk.0.attn_q.weight"; }),
               "twice");
  expect_error(with_table(clean, [&](nlohmann::json& t) { entry(t, "blk.0.attn_k.weight").erase("size"); }),
               "missing 'size'");
  expect_error(with_table(clean, [&](nlohmann::json& t) {
                 t.erase(t.begin());
               }),
               "token_embd.weight is missing");
  expect_error(with_table(clean, [&](nlohmann::json& t) { entry(t, "output_norm.weight")["scales_count"] = 1; }),
               "has no scales");
  expect_error(with_table(clean, [&](nlohmann::json& t) { t = nlohmann::json::object(); }), "array");
}

// ---- legacy halo .h1b ---------------------------------------------------------------------------

struct LegacyFile {
  std::vector<uint8_t> bytes;
  std::map<std::string, std::vector<float>> dense;
  std::map<std::string, std::vector<int8_t>> codes;
  std::map<std::string, std::vector<float>> scales;
};

// Writes a legacy file byte by byte, following the layout in docs/formats/h1b.md.
LegacyFile make_legacy(int version, bool tied, uint64_t seed) {
  std::mt19937_64 rng(seed);
  LegacyFile f;
  auto& b = f.bytes;
  auto i32 = [&](int32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(static_cast<uint32_t>(v) >> (8 * i)));
  };
  auto f32 = [&](float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    i32(static_cast<int32_t>(u));
  };
  const int hidden = 64, inter = 90, layers = 2, heads = 4, kv = 2, vocab = 300, max_seq = 256;
  b = {'H', '1', 'B', 0};
  i32(version);
  for (int v : {hidden, inter, layers, heads, kv, vocab, max_seq, tied ? 1 : 0, 5}) i32(v);
  if (version == 2) {
    f32(250000.0f);
    f32(1e-6f);
  }
  auto dense = [&](const std::string& name, int64_t n) {
    auto& v = f.dense[name];
    for (int64_t i = 0; i < n; ++i) {
      v.push_back(static_cast<float>(static_cast<int64_t>(rng() % 2001) - 1000) / 100.0f);
      f32(v.back());
    }
  };
  auto ternary = [&](const std::string& name, int64_t rows, int64_t cols) {
    auto& c = f.codes[name];
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t col = 0; col < cols; col += 4) {
        uint8_t byte = 0;
        for (int k = 0; k < 4 && col + k < cols; ++k) {
          int8_t code = static_cast<int8_t>(rng() % 3) - 1;
          c.push_back(code);
          byte |= static_cast<uint8_t>((code + 1) << (2 * k));
        }
        b.push_back(byte);
      }
    }
    auto& s = f.scales[name];
    for (int64_t r = 0; r < rows; ++r) {
      s.push_back(0.25f + static_cast<float>(rng() % 100) / 64.0f);
      f32(s.back());
    }
  };
  dense("token_embd.weight", int64_t{vocab} * hidden);
  dense("output_norm.weight", hidden);
  for (int l = 0; l < layers; ++l) {
    auto n = [l](const char* s) { return "blk." + std::to_string(l) + "." + s; };
    dense(n("attn_norm.weight"), hidden);
    dense(n("attn_sub_norm.weight"), hidden);
    dense(n("ffn_norm.weight"), hidden);
    dense(n("ffn_sub_norm.weight"), inter);
    ternary(n("attn_q.weight"), hidden, hidden);
    ternary(n("attn_k.weight"), 32, hidden);
    ternary(n("attn_v.weight"), 32, hidden);
    ternary(n("attn_output.weight"), hidden, hidden);
    ternary(n("ffn_gate.weight"), inter, hidden);
    ternary(n("ffn_up.weight"), inter, hidden);
    ternary(n("ffn_down.weight"), hidden, inter);
  }
  if (!tied) dense("output.weight", int64_t{vocab} * hidden);
  return f;
}

TEST(H1bLegacy, ReadsV1AndV2) {
  for (int version : {1, 2}) {
    for (bool tied : {true, false}) {
      LegacyFile f = make_legacy(version, tied, 10 + version);
      const std::string path = temp_path("legacy.h1b");
      write_all(path, f.bytes);
      auto m = load_h1b_legacy(path);
      EXPECT_EQ(m->format, "h1b-legacy");
      EXPECT_EQ(m->config.hidden_size, 64);
      EXPECT_EQ(m->config.intermediate_size, 90);
      EXPECT_EQ(m->config.num_layers, 2);
      EXPECT_EQ(m->config.num_heads, 4);
      EXPECT_EQ(m->config.num_kv_heads, 2);
      EXPECT_EQ(m->config.head_dim, 16);
      EXPECT_EQ(m->config.vocab_size, 300);
      EXPECT_EQ(m->config.max_position_embeddings, 256);
      EXPECT_EQ(m->config.tie_word_embeddings, tied);
      EXPECT_EQ(m->extra["legacy_flags"], 5);
      if (version == 2) {
        EXPECT_DOUBLE_EQ(m->config.rope_theta, 250000.0);
        EXPECT_DOUBLE_EQ(m->config.rms_norm_eps, static_cast<double>(1e-6f));
      } else {
        EXPECT_DOUBLE_EQ(m->config.rope_theta, 500000.0);
        EXPECT_DOUBLE_EQ(m->config.rms_norm_eps, 1e-5);
      }
      EXPECT_EQ(m->find("output.weight") != nullptr, !tied);
      for (const auto& [name, v] : f.dense) {
        const Tensor& t = m->get(name);
        EXPECT_EQ(t.packing, Packing::kF32);
        EXPECT_EQ(dequantize(t), v) << name;
      }
      for (const auto& [name, c] : f.codes) {
        const Tensor& t = m->get(name);
        EXPECT_EQ(t.packing, Packing::kTernaryLegacyH1b);
        EXPECT_EQ(unpack_ternary(t).codes, c) << name;
        EXPECT_EQ(t.scales, f.scales[name]) << name;
      }
      // And it converts to the native format losslessly.
      write_h1b(*m, temp_path("legacy_conv.h1b"));
      auto n = load_h1b(temp_path("legacy_conv.h1b"));
      expect_same_model(*m, *n);
      EXPECT_EQ(n->extra.value("source_format", ""), "h1b-legacy");
    }
  }
}

TEST(H1bLegacy, RejectsBadFiles) {
  LegacyFile f = make_legacy(2, true, 3);
  auto e = [](std::vector<uint8_t> b) { return error_of([&] { parse_h1b_legacy(b, "old.h1b"); }); };
  for (size_t n = 0; n < f.bytes.size(); n += (n < 200 ? 1 : 331)) {
    std::vector<uint8_t> cut(f.bytes.begin(), f.bytes.begin() + static_cast<ptrdiff_t>(n));
    EXPECT_NE(e(cut), "") << n;
  }
  auto b = f.bytes;
  b.push_back(0);
  EXPECT_NE(e(b).find("after the last tensor"), std::string::npos) << e(b);
  b = f.bytes;
  b[4] = 3;
  EXPECT_NE(e(b).find("version 3"), std::string::npos);
  b = f.bytes;
  b[8 + 3 * 4] = 3;  // heads = 3 does not divide hidden 64
  EXPECT_NE(e(b).find("heads"), std::string::npos) << e(b);
  b = f.bytes;
  b[8] = 0;  // hidden = 0
  EXPECT_NE(e(b).find("hidden"), std::string::npos) << e(b);
  b = f.bytes;
  b[8 + 5 * 4 + 3] = 0x7f;  // vocab = huge
  EXPECT_NE(e(b), "");
  b = f.bytes;
  // A code byte with the invalid 2-bit value 3 is caught when unpacking.
  auto m = parse_h1b_legacy(f.bytes, "ok");
  const Tensor& q = m->get("blk.0.attn_q.weight");
  b[static_cast<size_t>(q.data.data() - f.bytes.data())] = 0xff;
  auto m2 = parse_h1b_legacy(b, "code3");
  EXPECT_THROW(unpack_ternary(m2->get("blk.0.attn_q.weight")), Error);
}

}  // namespace
}  // namespace onebit
