// GGUF writer: see gguf.h for what is written and why; gguf.cc for the layout.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/base/error.h"
#include "core/base/ternary_packing.h"
#include "core/formats/gguf.h"
#include "core/tokenizer/tokenizer.h"

namespace onebit {

namespace {

constexpr uint64_t kAlignment = 32;
enum : uint32_t { kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9 };

class Buf {
 public:
  std::vector<uint8_t> b;
  template <typename T>
  void put(T v) {
    const size_t n = b.size();
    b.resize(n + sizeof(T));
    std::memcpy(b.data() + n, &v, sizeof(T));
  }
  void str(std::string_view s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
  }
};

class KvWriter {
 public:
  Buf buf;
  uint64_t count = 0;
  void key(std::string_view k, uint32_t type) {
    buf.str(k);
    buf.put<uint32_t>(type);
    ++count;
  }
  void u32(std::string_view k, int64_t v, const char* what) {
    if (v < 0 || v > std::numeric_limits<uint32_t>::max()) fail("write_gguf: {} = {} does not fit in u32", what, v);
    key(k, kU32);
    buf.put<uint32_t>(static_cast<uint32_t>(v));
  }
  void f32(std::string_view k, double v) {
    key(k, kF32);
    buf.put<float>(static_cast<float>(v));
  }
  void boolean(std::string_view k, bool v) {
    key(k, kBool);
    buf.put<uint8_t>(v ? 1 : 0);
  }
  void string(std::string_view k, std::string_view v) {
    key(k, kString);
    buf.str(v);
  }
  void strings(std::string_view k, const std::vector<std::string>& v) {
    key(k, kArray);
    buf.put<uint32_t>(kString);
    buf.put<uint64_t>(v.size());
    for (const auto& s : v) buf.str(s);
  }
  void i32s(std::string_view k, const std::vector<int32_t>& v) {
    key(k, kArray);
    buf.put<uint32_t>(kI32);
    buf.put<uint64_t>(v.size());
    for (int32_t x : v) buf.put<int32_t>(x);
  }
  void f32s(std::string_view k, const std::vector<float>& v) {
    key(k, kArray);
    buf.put<uint32_t>(kF32);
    buf.put<uint64_t>(v.size());
    for (float x : v) buf.put<float>(x);
  }
};

uint32_t ggml_type(Packing p) {
  switch (p) {
    case Packing::kF32: return static_cast<uint32_t>(GgmlType::kF32);
    case Packing::kF16: return static_cast<uint32_t>(GgmlType::kF16);
    case Packing::kBF16: return static_cast<uint32_t>(GgmlType::kBF16);
    case Packing::kQ8_0: return static_cast<uint32_t>(GgmlType::kQ8_0);
    case Packing::kTQ1_0: return static_cast<uint32_t>(GgmlType::kTQ1_0);
    case Packing::kTQ2_0: return static_cast<uint32_t>(GgmlType::kTQ2_0);
    case Packing::kI2_S: return static_cast<uint32_t>(GgmlType::kI2_S);
    default: fail("write_gguf: packing {} has no GGUF type", packing_name(p));
  }
}

// What one tensor becomes in the file.
struct Planned {
  const Tensor* t;
  Packing out;
  size_t size;
  uint64_t offset;
};

Planned plan(const Tensor& t, Packing ternary) {
  Packing out = t.packing;
  if (is_ternary(t.packing)) {
    out = ternary;
  } else if (t.shape.size() <= 1 && (t.packing == Packing::kF16 || t.packing == Packing::kBF16)) {
    out = Packing::kF32;  // llama.cpp / bitnet.cpp expect F32 norms
  }
  if (t.shape.empty() || t.shape.size() > 4)
    fail("write_gguf: tensor {} has {} dimensions (GGUF holds 1..4)", t.name, t.shape.size());
  for (int64_t d : t.shape)
    if (d <= 0) fail("write_gguf: tensor {} has shape [{}]", t.name, t.shape_str());
  if (is_ternary(t.packing) && t.shape.size() > 2)
    fail("write_gguf: ternary tensor {} has {} dimensions (expected 1 or 2)", t.name, t.shape.size());
  size_t size = 0;
  try {
    size = packed_size(out, t.numel() / t.cols(), t.cols());
  } catch (const Error& e) {
    fail("write_gguf: tensor {} [{}] cannot be written as {}: {}", t.name, t.shape_str(), packing_name(out),
         e.what());
  }
  return {&t, out, size, 0};
}

std::vector<uint8_t> tensor_bytes(const Planned& p) {
  const Tensor& t = *p.t;
  try {
    if (is_ternary(t.packing)) return pack_ternary(unpack_ternary(t), p.out);
    if (p.out != t.packing) return pack_dense(dequantize(t), p.out);
  } catch (const Error& e) {
    fail("write_gguf: tensor {}: {}", t.name, e.what());
  }
  if (t.data.size() != p.size)
    fail("write_gguf: tensor {}: {} [{}] needs {} bytes, the model has {}", t.name, packing_name(t.packing),
         t.shape_str(), p.size, t.data.size());
  return {t.data.begin(), t.data.end()};
}

void write_all(const Model& m, std::ostream& os, Packing ternary,
               const std::function<void(size_t, size_t)>& progress) {
  if (ternary != Packing::kTQ2_0 && ternary != Packing::kI2_S)
    fail("write_gguf: ternary packing must be tq2_0 or i2_s, not {}", packing_name(ternary));
  const ModelConfig& c = m.config;
  const std::string& a = c.architecture;
  const std::string arch =
      (a == "bitnet-b1.58" || a == "bitnet-25" || a == "bitnet" || a == "bitnet-1.58") ? a : "bitnet-b1.58";
  auto key = [&](const char* k) { return arch + "." + k; };

  KvWriter kv;
  kv.string("general.architecture", arch);
  kv.u32("general.alignment", kAlignment, "alignment");
  kv.u32("general.quantization_version", 2, "quantization_version");
  kv.u32("general.file_type", ternary == Packing::kI2_S ? kGgufFileTypeI2_S : kGgufFileTypeTQ2_0, "file_type");
  if (m.extra.contains("gguf") && m.extra["gguf"].is_object() && m.extra["gguf"].contains("general.name") &&
      m.extra["gguf"]["general.name"].is_string())
    kv.string("general.name", m.extra["gguf"]["general.name"].get<std::string>());
  kv.u32(key("vocab_size"), c.vocab_size, "vocab_size");
  kv.u32(key("context_length"), c.max_position_embeddings, "max_position_embeddings");
  kv.u32(key("embedding_length"), c.hidden_size, "hidden_size");
  kv.u32(key("block_count"), c.num_layers, "num_layers");
  kv.u32(key("feed_forward_length"), c.intermediate_size, "intermediate_size");
  kv.u32(key("attention.head_count"), c.num_heads, "num_heads");
  kv.u32(key("attention.head_count_kv"), c.num_kv_heads, "num_kv_heads");
  kv.u32(key("rope.dimension_count"), c.head_dim, "head_dim");
  if (c.num_heads <= 0 || c.head_dim * c.num_heads != c.hidden_size) {
    kv.u32(key("attention.key_length"), c.head_dim, "head_dim");
    kv.u32(key("attention.value_length"), c.head_dim, "head_dim");
  }
  kv.f32(key("rope.freq_base"), c.rope_theta);
  kv.f32(key("attention.layer_norm_rms_epsilon"), c.rms_norm_eps);

  // A tokenizer.json is converted to GGUF arrays (what llama.cpp and bitnet.cpp read); one that has no
  // GGUF equivalent is kept verbatim as tokenizer.huggingface.json, which only 1bit reads back.
  TokenizerData converted;
  const TokenizerData* tok_src = &m.tokenizer;
  if (m.tokenizer.tokens.empty() && !m.tokenizer.hf_json.empty()) {
    try {
      converted = gguf_vocab_from_hf_json(m.tokenizer.hf_json);
      tok_src = &converted;
    } catch (const Error&) {
    }
  }
  const TokenizerData& tok = *tok_src;
  if (!tok.tokens.empty()) {
    kv.string("tokenizer.ggml.model", tok.model.empty() ? "gpt2" : tok.model);
    if (!tok.pre.empty()) kv.string("tokenizer.ggml.pre", tok.pre);
    kv.strings("tokenizer.ggml.tokens", tok.tokens);
    if (!tok.token_types.empty()) kv.i32s("tokenizer.ggml.token_type", tok.token_types);
    if (!tok.scores.empty()) kv.f32s("tokenizer.ggml.scores", tok.scores);
    if (!tok.merges.empty()) kv.strings("tokenizer.ggml.merges", tok.merges);
    auto id = [&](const char* k, int64_t v) {
      if (v >= 0) kv.u32(k, v, k);
    };
    id("tokenizer.ggml.bos_token_id", tok.bos_id);
    id("tokenizer.ggml.eos_token_id", tok.eos_id);
    id("tokenizer.ggml.eot_token_id", tok.eot_id);
    id("tokenizer.ggml.padding_token_id", tok.pad_id);
    id("tokenizer.ggml.unknown_token_id", tok.unk_id);
    kv.boolean("tokenizer.ggml.add_bos_token", tok.add_bos);
  } else if (!tok.hf_json.empty()) {
    // No GGUF vocabulary to write: keep the tokenizer.json itself (llama.cpp's key for it).
    kv.string("tokenizer.huggingface.json", tok.hf_json);
  }
  if (!m.chat_template.empty()) kv.string("tokenizer.chat_template", m.chat_template);

  std::vector<Planned> plans;
  plans.reserve(m.tensors.size());
  uint64_t offset = 0;
  for (const Tensor& t : m.tensors) {
    Planned p = plan(t, ternary);
    p.offset = offset;
    offset += (p.size + kAlignment - 1) / kAlignment * kAlignment;
    plans.push_back(p);
  }
  const size_t total = offset;

  Buf head;
  head.b = {'G', 'G', 'U', 'F'};
  head.put<uint32_t>(3);
  head.put<uint64_t>(plans.size());
  head.put<uint64_t>(kv.count);
  head.b.insert(head.b.end(), kv.buf.b.begin(), kv.buf.b.end());
  for (const Planned& p : plans) {
    head.str(p.t->name);
    head.put<uint32_t>(static_cast<uint32_t>(p.t->shape.size()));
    for (auto it = p.t->shape.rbegin(); it != p.t->shape.rend(); ++it) head.put<uint64_t>(static_cast<uint64_t>(*it));
    head.put<uint32_t>(ggml_type(p.out));
    head.put<uint64_t>(p.offset);
  }
  head.b.resize((head.b.size() + kAlignment - 1) / kAlignment * kAlignment, 0);
  os.write(reinterpret_cast<const char*>(head.b.data()), static_cast<std::streamsize>(head.b.size()));

  static const char zeros[kAlignment] = {};
  size_t done = 0;
  for (const Planned& p : plans) {
    std::vector<uint8_t> bytes = tensor_bytes(p);
    os.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    const size_t pad = (kAlignment - bytes.size() % kAlignment) % kAlignment;
    os.write(zeros, static_cast<std::streamsize>(pad));
    done += bytes.size() + pad;
    if (!os) fail("write_gguf: write error after tensor {}", p.t->name);
    if (progress) progress(done, total);
  }
}

}  // namespace

void write_gguf(const Model& m, const std::string& path, Packing ternary,
                const std::function<void(size_t done, size_t total)>& progress) {
  const std::string tmp = path + ".part";
  {
    std::ofstream os(tmp, std::ios::binary | std::ios::trunc);
    if (!os) fail("{}: cannot create: {}", tmp, std::strerror(errno));
    try {
      write_all(m, os, ternary, progress);
      os.flush();
      if (!os) fail("{}: write error: {}", tmp, std::strerror(errno));
    } catch (...) {
      os.close();
      std::remove(tmp.c_str());
      throw;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    fail("{}: cannot rename {} into place: {}", path, tmp, std::strerror(e));
  }
}

std::vector<uint8_t> write_gguf_to_memory(const Model& m, Packing ternary) {
  std::ostringstream os(std::ios::binary);
  write_all(m, os, ternary, {});
  const std::string s = os.str();
  return {s.begin(), s.end()};
}

}  // namespace onebit
