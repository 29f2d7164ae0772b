// Legacy halo .h1b v1/v2 reader. There is no tensor table: every offset follows from the config.
//
// Layout assumed (docs/formats/h1b.md, "Legacy halo .h1b"): the published description says only
// "per layer fp32 norms", so we take the four norms of the BitNet layer in graph order —
// input_layernorm [hidden], attn_sub_norm [hidden], post_attention_layernorm [hidden],
// ffn_sub_norm [intermediate] — followed by q, k, v, o, gate, up, down; and, for an untied model,
// an fp32 output matrix after the last layer. The file must end exactly where this layout ends,
// so a file laid out differently is rejected with a message instead of being misread.
#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "core/base/error.h"
#include "core/base/mapped_file.h"
#include "core/base/ternary_packing.h"
#include "core/formats/h1b.h"

namespace onebit {

namespace {

class Reader {
 public:
  Reader(std::span<const uint8_t> b, const std::string& name) : b_(b), name_(name) {}

  std::span<const uint8_t> take(uint64_t n, const std::string& what) {
    if (n > b_.size() - pos_) {
      fail("{}: truncated legacy .h1b: {} needs {} bytes at offset {}, the file has {} bytes", name_,
           what, n, pos_, b_.size());
    }
    auto s = b_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  int32_t i32(const char* what) {
    int32_t v;
    std::memcpy(&v, take(4, what).data(), 4);
    return v;
  }
  float f32(const char* what) {
    float v;
    std::memcpy(&v, take(4, what).data(), 4);
    return v;
  }
  uint64_t pos() const { return pos_; }
  uint64_t size() const { return b_.size(); }

 private:
  std::span<const uint8_t> b_;
  const std::string& name_;
  uint64_t pos_ = 0;
};

}  // namespace

std::unique_ptr<Model> parse_h1b_legacy(std::span<const uint8_t> bytes, const std::string& name) {
  Reader r(bytes, name);
  auto magic = r.take(4, "magic");
  if (std::memcmp(magic.data(), kH1bLegacyMagic, 4) != 0) fail("{}: not a legacy .h1b file (bad magic)", name);
  const int32_t version = r.i32("version");
  if (version != 1 && version != 2)
    fail("{}: legacy .h1b version {} is not supported (1 or 2)", name, version);

  auto m = std::make_unique<Model>();
  m->path = name;
  m->format = "h1b-legacy";
  ModelConfig& c = m->config;
  static constexpr const char* kFields[9] = {"hidden",   "intermediate", "layers", "heads", "kv_heads",
                                              "vocab",    "max_seq",      "tie",    "flags"};
  int32_t f[9];
  for (int i = 0; i < 9; ++i) f[i] = r.i32(kFields[i]);
  for (int i = 0; i < 7; ++i)
    if (f[i] <= 0) fail("{}: legacy .h1b header: {} = {} must be positive", name, kFields[i], f[i]);
  c.hidden_size = f[0];
  c.intermediate_size = f[1];
  c.num_layers = f[2];
  c.num_heads = f[3];
  c.num_kv_heads = f[4];
  c.vocab_size = f[5];
  c.max_position_embeddings = f[6];
  c.tie_word_embeddings = f[7] != 0;
  if (c.hidden_size % c.num_heads != 0)
    fail("{}: legacy .h1b header: hidden {} is not a multiple of heads {}", name, c.hidden_size, c.num_heads);
  c.head_dim = c.hidden_size / c.num_heads;
  if (version >= 2) {
    c.rope_theta = r.f32("rope_theta");
    c.rms_norm_eps = r.f32("rms_norm_eps");
  }
  m->extra["legacy_version"] = version;
  m->extra["legacy_flags"] = f[8];
  try {
    c.validate();
  } catch (const Error& e) {
    fail("{}: {}", name, e.what());
  }

  auto dense = [&](const std::string& tname, std::vector<int64_t> shape) {
    Tensor t;
    t.name = tname;
    t.packing = Packing::kF32;
    t.shape = std::move(shape);
    const uint64_t off = r.pos();
    t.data = r.take(static_cast<uint64_t>(t.numel()) * 4, tname);
    t.origin = fmt::format("{}: offset {}", name, off);
    m->tensors.push_back(std::move(t));
  };
  auto ternary = [&](const std::string& tname, int64_t rows, int64_t cols) {
    Tensor t;
    t.name = tname;
    t.packing = Packing::kTernaryLegacyH1b;
    t.shape = {rows, cols};
    const uint64_t off = r.pos();
    t.data = r.take(packed_size(Packing::kTernaryLegacyH1b, rows, cols), tname);
    auto sb = r.take(static_cast<uint64_t>(rows) * 4, tname + " scales");
    t.scales.resize(static_cast<size_t>(rows));
    std::memcpy(t.scales.data(), sb.data(), sb.size());
    t.origin = fmt::format("{}: offset {}", name, off);
    m->tensors.push_back(std::move(t));
  };

  const int64_t h = c.hidden_size, ff = c.intermediate_size;
  const int64_t q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  dense("token_embd.weight", {c.vocab_size, h});
  dense("output_norm.weight", {h});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    auto n = [l](const char* s) { return fmt::format("blk.{}.{}", l, s); };
    dense(n("attn_norm.weight"), {h});
    dense(n("attn_sub_norm.weight"), {q});
    dense(n("ffn_norm.weight"), {h});
    dense(n("ffn_sub_norm.weight"), {ff});
    ternary(n("attn_q.weight"), q, h);
    ternary(n("attn_k.weight"), kv, h);
    ternary(n("attn_v.weight"), kv, h);
    ternary(n("attn_output.weight"), h, q);
    ternary(n("ffn_gate.weight"), ff, h);
    ternary(n("ffn_up.weight"), ff, h);
    ternary(n("ffn_down.weight"), h, ff);
  }
  if (!c.tie_word_embeddings) dense("output.weight", {c.vocab_size, h});
  if (r.pos() != r.size()) {
    fail("{}: legacy .h1b has {} bytes after the last tensor (expected the file to end at {}): the "
         "file's layout differs from the one this reader assumes (docs/formats/h1b.md)",
         name, r.size() - r.pos(), r.pos());
  }
  m->validate();
  return m;
}

std::unique_ptr<Model> load_h1b_legacy(const std::string& path) {
  auto f = MappedFile::open(path);
  auto m = parse_h1b_legacy(f->bytes(), path);
  m->keep(std::move(f));
  return m;
}

}  // namespace onebit
