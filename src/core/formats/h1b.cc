// Native .h1b reader, writer and verifier. The format is specified in docs/formats/h1b.md.
#include "core/formats/h1b.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include "core/base/error.h"
#include "core/base/mapped_file.h"
#include "core/base/ternary_packing.h"

namespace onebit {

static_assert(std::endian::native == std::endian::little, "the .h1b code assumes a little-endian host");

// ---- XXH64 -------------------------------------------------------------------------------------

namespace {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kP3 = 0x165667B19E3779F9ull;
constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ull;
constexpr uint64_t kP5 = 0x27D4EB2F165667C5ull;

inline uint64_t rd64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint32_t rd32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t xround(uint64_t acc, uint64_t in) {
  acc += in * kP2;
  acc = std::rotl(acc, 31);
  return acc * kP1;
}
inline uint64_t xmerge(uint64_t acc, uint64_t v) {
  acc ^= xround(0, v);
  return acc * kP1 + kP4;
}

}  // namespace

uint64_t xxh64(std::span<const uint8_t> bytes, uint64_t seed) {
  const uint8_t* p = bytes.data();
  const size_t len = bytes.size();
  const uint8_t* end = p + len;
  uint64_t h;
  if (len >= 32) {
    uint64_t v1 = seed + kP1 + kP2, v2 = seed + kP2, v3 = seed, v4 = seed - kP1;
    const uint8_t* limit = end - 32;
    do {
      v1 = xround(v1, rd64(p));
      v2 = xround(v2, rd64(p + 8));
      v3 = xround(v3, rd64(p + 16));
      v4 = xround(v4, rd64(p + 24));
      p += 32;
    } while (p <= limit);
    h = std::rotl(v1, 1) + std::rotl(v2, 7) + std::rotl(v3, 12) + std::rotl(v4, 18);
    h = xmerge(h, v1);
    h = xmerge(h, v2);
    h = xmerge(h, v3);
    h = xmerge(h, v4);
  } else {
    h = seed + kP5;
  }
  h += static_cast<uint64_t>(len);
  while (end - p >= 8) {
    h ^= xround(0, rd64(p));
    h = std::rotl(h, 27) * kP1 + kP4;
    p += 8;
  }
  if (end - p >= 4) {
    h ^= static_cast<uint64_t>(rd32(p)) * kP1;
    h = std::rotl(h, 23) * kP2 + kP3;
    p += 4;
  }
  while (p < end) {
    h ^= static_cast<uint64_t>(*p) * kP5;
    h = std::rotl(h, 11) * kP1;
    ++p;
  }
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

namespace {

// ---- small helpers -----------------------------------------------------------------------------

constexpr uint64_t kMaxNumel = uint64_t{1} << 40;
constexpr uint64_t kMaxTensors = uint64_t{1} << 20;

uint64_t align_up(uint64_t v) { return (v + kH1bAlign - 1) / kH1bAlign * kH1bAlign; }

// [off, off+size) inside [lo, hi), without overflow.
bool in_range(uint64_t off, uint64_t size, uint64_t lo, uint64_t hi) {
  return off >= lo && off <= hi && size <= hi - off;
}

std::string hex16(uint64_t v) { return fmt::format("{:016x}", v); }

bool valid_utf8(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    uint8_t c = static_cast<uint8_t>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      uint8_t d = static_cast<uint8_t>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

// Strings go into JSON as strings when they are UTF-8, else as {"hex": "..."}.
nlohmann::json enc_str(const std::string& s) {
  if (valid_utf8(s)) return s;
  std::string hex;
  hex.reserve(s.size() * 2);
  for (unsigned char c : s) hex += fmt::format("{:02x}", c);
  return nlohmann::json{{"hex", hex}};
}

std::string dec_str(const nlohmann::json& v, const std::string& file, const std::string& what) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.size() == 1 && v.contains("hex") && v["hex"].is_string()) {
    const std::string& h = v["hex"].get_ref<const std::string&>();
    if (h.size() % 2 == 0) {
      std::string out;
      out.reserve(h.size() / 2);
      auto nib = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
      };
      bool ok = true;
      for (size_t i = 0; i < h.size() && ok; i += 2) {
        int a = nib(h[i]), b = nib(h[i + 1]);
        ok = a >= 0 && b >= 0;
        out.push_back(static_cast<char>(a * 16 + b));
      }
      if (ok) return out;
    }
  }
  fail("{}: metadata {}: expected a string or {{\"hex\": ...}}", file, what);
}

uint64_t get_u64(const nlohmann::json& obj, const char* key, const std::string& file,
                 const std::string& what) {
  auto it = obj.find(key);
  if (it == obj.end()) fail("{}: {}: missing '{}'", file, what, key);
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  if (it->is_number_integer() && it->get<int64_t>() >= 0) return static_cast<uint64_t>(it->get<int64_t>());
  fail("{}: {}: '{}' must be a non-negative integer, found {}", file, what, key, it->dump());
}

int64_t get_i64(const nlohmann::json& obj, const char* key, const std::string& file, int64_t dflt) {
  auto it = obj.find(key);
  if (it == obj.end()) return dflt;
  if (!it->is_number_integer()) fail("{}: metadata tokenizer.{} must be an integer", file, key);
  return it->get<int64_t>();
}

// ---- header ------------------------------------------------------------------------------------

struct Header {
  uint32_t version = kH1bVersion, flags = 0;
  uint64_t file_size = 0, meta_off = 0, meta_size = 0, table_off = 0, table_size = 0, count = 0,
           data_off = 0, data_size = 0, meta_sum = 0, table_sum = 0, header_sum = 0;
};

void put_u32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
void put_u64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }

std::array<uint8_t, kH1bHeaderSize> encode_header(const Header& h) {
  std::array<uint8_t, kH1bHeaderSize> b{};
  std::memcpy(b.data(), kH1bMagic, 8);
  put_u32(&b[8], h.version);
  put_u32(&b[12], h.flags);
  put_u64(&b[16], h.file_size);
  put_u64(&b[24], h.meta_off);
  put_u64(&b[32], h.meta_size);
  put_u64(&b[40], h.table_off);
  put_u64(&b[48], h.table_size);
  put_u64(&b[56], h.count);
  put_u64(&b[64], h.data_off);
  put_u64(&b[72], h.data_size);
  put_u64(&b[80], h.meta_sum);
  put_u64(&b[88], h.table_sum);
  put_u64(&b[120], xxh64({b.data(), 120}));
  return b;
}

// Structure checks only; checksums are compared by the callers.
Header decode_header(std::span<const uint8_t> bytes, const std::string& name) {
  if (bytes.size() < kH1bHeaderSize) {
    fail("{}: truncated .h1b: {} bytes, the header alone needs {}", name, bytes.size(), kH1bHeaderSize);
  }
  const uint8_t* b = bytes.data();
  if (std::memcmp(b, kH1bMagic, 8) != 0) fail("{}: not a native .h1b file (bad magic)", name);
  Header h;
  h.version = rd32(b + 8);
  h.flags = rd32(b + 12);
  h.file_size = rd64(b + 16);
  h.meta_off = rd64(b + 24);
  h.meta_size = rd64(b + 32);
  h.table_off = rd64(b + 40);
  h.table_size = rd64(b + 48);
  h.count = rd64(b + 56);
  h.data_off = rd64(b + 64);
  h.data_size = rd64(b + 72);
  h.meta_sum = rd64(b + 80);
  h.table_sum = rd64(b + 88);
  h.header_sum = rd64(b + 120);
  if (h.version != kH1bVersion) {
    fail("{}: .h1b version {} is not supported (this build reads version {})", name, h.version, kH1bVersion);
  }
  if (h.flags != 0) fail("{}: .h1b header flags 0x{:x} name features this build does not know", name, h.flags);
  if (h.file_size != bytes.size()) {
    fail("{}: header says the file has {} bytes, it has {}: truncated or damaged", name, h.file_size,
         bytes.size());
  }
  if (h.data_off % kH1bAlign != 0 || h.data_off < kH1bHeaderSize || h.data_off > h.file_size ||
      h.data_size != h.file_size - h.data_off) {
    fail("{}: header: data region [{}, +{}) must start 64-aligned after the header and end at the "
         "end of the file ({} bytes)", name, h.data_off, h.data_size, h.file_size);
  }
  if (!in_range(h.meta_off, h.meta_size, kH1bHeaderSize, h.data_off))
    fail("{}: header: metadata [{}, +{}) lies outside [128, {})", name, h.meta_off, h.meta_size, h.data_off);
  if (!in_range(h.table_off, h.table_size, kH1bHeaderSize, h.data_off))
    fail("{}: header: tensor table [{}, +{}) lies outside [128, {})", name, h.table_off, h.table_size, h.data_off);
  if (h.meta_off < h.table_off + h.table_size && h.table_off < h.meta_off + h.meta_size)
    fail("{}: header: metadata and tensor table overlap", name);
  if (h.count > kMaxTensors || h.count > h.table_size)
    fail("{}: header: tensor_count {} is impossible for a {}-byte table", name, h.count, h.table_size);
  return h;
}

// ---- tensor table ------------------------------------------------------------------------------

struct Entry {
  std::string name;
  Packing packing = Packing::kF32;
  std::vector<int64_t> shape;
  uint64_t offset = 0, size = 0, scales_offset = 0, scales_count = 0, checksum = 0;
};

struct Layout {
  Header h;
  nlohmann::json meta;
  std::vector<Entry> entries;
};

nlohmann::json parse_json_region(std::span<const uint8_t> r, const std::string& name, const char* what) {
  try {
    return nlohmann::json::parse(r.begin(), r.end());
  } catch (const nlohmann::json::exception& e) {
    fail("{}: {} is not valid JSON: {}", name, what, e.what());
  }
}

Entry parse_entry(const nlohmann::json& e, size_t index, const Header& h, const std::string& name) {
  Entry t;
  std::string what = fmt::format("tensor table entry {}", index);
  if (!e.is_object()) fail("{}: {}: expected an object", name, what);
  auto nm = e.find("name");
  if (nm == e.end() || !nm->is_string() || nm->get_ref<const std::string&>().empty())
    fail("{}: {}: missing 'name'", name, what);
  t.name = nm->get<std::string>();
  what = fmt::format("tensor {}", t.name);
  auto pk = e.find("packing");
  if (pk == e.end() || !pk->is_string()) fail("{}: {}: missing 'packing'", name, what);
  try {
    t.packing = packing_from_name(pk->get<std::string>());
  } catch (const Error& err) {
    fail("{}: {}: {}", name, what, err.what());
  }
  auto sh = e.find("shape");
  if (sh == e.end() || !sh->is_array() || sh->empty() || sh->size() > 2)
    fail("{}: {}: 'shape' must be 1 or 2 positive integers", name, what);
  uint64_t numel = 1;
  for (const auto& d : *sh) {
    if (!d.is_number_integer() || d.get<int64_t>() <= 0 || static_cast<uint64_t>(d.get<int64_t>()) > kMaxNumel)
      fail("{}: {}: 'shape' {} must be 1 or 2 positive integers", name, what, sh->dump());
    uint64_t v = static_cast<uint64_t>(d.get<int64_t>());
    if (numel > kMaxNumel / v) fail("{}: {}: shape {} is absurdly large", name, what, sh->dump());
    numel *= v;
    t.shape.push_back(static_cast<int64_t>(v));
  }
  t.offset = get_u64(e, "offset", name, what);
  t.size = get_u64(e, "size", name, what);
  t.scales_offset = get_u64(e, "scales_offset", name, what);
  t.scales_count = get_u64(e, "scales_count", name, what);
  auto cs = e.find("checksum");
  if (cs == e.end() || !cs->is_string() || cs->get_ref<const std::string&>().size() != 16 ||
      cs->get_ref<const std::string&>().find_first_not_of("0123456789abcdef") != std::string::npos)
    fail("{}: {}: 'checksum' must be 16 lower-case hex digits", name, what);
  t.checksum = std::stoull(cs->get<std::string>(), nullptr, 16);

  const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1;
  const int64_t cols = t.shape.back();
  size_t want = 0;
  try {
    want = packed_size(t.packing, rows, cols);
  } catch (const Error& err) {
    fail("{}: {}: {}", name, what, err.what());
  }
  if (t.size != want) {
    fail("{}: {}: {} {} needs {} bytes, table says {}", name, what, packing_name(t.packing),
         fmt::format("{}x{}", rows, cols), want, t.size);
  }
  if (t.offset % kH1bAlign != 0 || !in_range(t.offset, t.size, 0, h.data_size)) {
    fail("{}: {}: bytes [{}, +{}) must start 64-aligned inside the {}-byte data region", name, what,
         t.offset, t.size, h.data_size);
  }
  if (t.scales_count != 0) {
    if (!is_ternary(t.packing)) fail("{}: {}: a {} tensor has no scales", name, what, packing_name(t.packing));
    if (t.scales_count != 1 && t.scales_count != static_cast<uint64_t>(rows))
      fail("{}: {}: scales_count {} must be 0, 1 or {} (rows)", name, what, t.scales_count, rows);
    if (t.scales_offset % kH1bAlign != 0 || !in_range(t.scales_offset, t.scales_count * 4, 0, h.data_size))
      fail("{}: {}: scales [{}, +{}) must start 64-aligned inside the {}-byte data region", name, what,
           t.scales_offset, t.scales_count * 4, h.data_size);
  }
  return t;
}

// Everything but the tensor checksums; with check_sums the header/metadata/table sums are compared.
Layout parse_layout(std::span<const uint8_t> bytes, const std::string& name, bool check_sums) {
  Layout l;
  l.h = decode_header(bytes, name);
  const Header& h = l.h;
  const auto meta = bytes.subspan(h.meta_off, h.meta_size);
  const auto table = bytes.subspan(h.table_off, h.table_size);
  if (check_sums) {
    if (xxh64(bytes.first(120)) != h.header_sum) fail("{}: header checksum mismatch: the header is damaged", name);
    if (xxh64(meta) != h.meta_sum) fail("{}: metadata checksum mismatch: the metadata block is damaged", name);
    if (xxh64(table) != h.table_sum) fail("{}: tensor table checksum mismatch: the table is damaged", name);
  }
  l.meta = parse_json_region(meta, name, "metadata");
  if (!l.meta.is_object()) fail("{}: metadata must be a JSON object", name);
  nlohmann::json tj = parse_json_region(table, name, "tensor table");
  if (!tj.is_array()) fail("{}: tensor table must be a JSON array", name);
  if (tj.size() != h.count)
    fail("{}: header says {} tensors, the tensor table has {}", name, h.count, tj.size());
  std::set<std::string> names;
  struct Span {
    uint64_t off, size;
    const std::string* owner;
  };
  std::vector<Span> spans;
  for (size_t i = 0; i < tj.size(); ++i) {
    l.entries.push_back(parse_entry(tj[i], i, h, name));
    const Entry& e = l.entries.back();
    if (!names.insert(e.name).second) fail("{}: tensor {} appears twice in the table", name, e.name);
  }
  for (const auto& e : l.entries) {
    if (e.size) spans.push_back({e.offset, e.size, &e.name});
    if (e.scales_count) spans.push_back({e.scales_offset, e.scales_count * 4, &e.name});
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.off < b.off; });
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i - 1].off + spans[i - 1].size > spans[i].off)
      fail("{}: tensors {} and {} overlap in the data region", name, *spans[i - 1].owner, *spans[i].owner);
  }
  return l;
}

std::span<const uint8_t> tensor_bytes(std::span<const uint8_t> bytes, const Header& h, const Entry& e) {
  return bytes.subspan(h.data_off + e.offset, e.size);
}
std::span<const uint8_t> scale_bytes(std::span<const uint8_t> bytes, const Header& h, const Entry& e) {
  return bytes.subspan(h.data_off + e.scales_offset, e.scales_count * 4);
}
uint64_t entry_checksum(std::span<const uint8_t> data, std::span<const uint8_t> scales) {
  uint64_t c = xxh64(data);
  if (!scales.empty()) c = xxh64(scales, c);
  return c;
}

// ---- metadata <-> Model ------------------------------------------------------------------------

nlohmann::json score_json(float f) {
  if (std::isfinite(f)) return f;
  return std::isnan(f) ? "nan" : (f > 0 ? "inf" : "-inf");
}

float score_value(const nlohmann::json& v, const std::string& file) {
  if (v.is_number()) return v.get<float>();
  if (v == "nan") return std::numeric_limits<float>::quiet_NaN();
  if (v == "inf") return std::numeric_limits<float>::infinity();
  if (v == "-inf") return -std::numeric_limits<float>::infinity();
  fail("{}: metadata tokenizer.scores: expected numbers, found {}", file, v.dump());
}

nlohmann::json tokenizer_json(const TokenizerData& t) {
  nlohmann::json j = nlohmann::json::object();
  if (!t.hf_json.empty()) j["hf_json"] = enc_str(t.hf_json);
  if (!t.model.empty()) j["model"] = enc_str(t.model);
  if (!t.pre.empty()) j["pre"] = enc_str(t.pre);
  if (!t.tokens.empty()) {
    auto& a = j["tokens"] = nlohmann::json::array();
    for (const auto& s : t.tokens) a.push_back(enc_str(s));
  }
  if (!t.token_types.empty()) j["token_types"] = t.token_types;
  if (!t.scores.empty()) {
    auto& a = j["scores"] = nlohmann::json::array();
    for (float f : t.scores) a.push_back(score_json(f));
  }
  if (!t.merges.empty()) {
    auto& a = j["merges"] = nlohmann::json::array();
    for (const auto& s : t.merges) a.push_back(enc_str(s));
  }
  j["bos_id"] = t.bos_id;
  j["eos_id"] = t.eos_id;
  j["eot_id"] = t.eot_id;
  j["pad_id"] = t.pad_id;
  j["unk_id"] = t.unk_id;
  j["add_bos"] = t.add_bos;
  return j;
}

TokenizerData tokenizer_from_json(const nlohmann::json& j, const std::string& file) {
  TokenizerData t;
  if (j.is_null()) return t;
  if (!j.is_object()) fail("{}: metadata 'tokenizer' must be an object", file);
  if (j.contains("hf_json")) t.hf_json = dec_str(j["hf_json"], file, "tokenizer.hf_json");
  if (j.contains("model")) t.model = dec_str(j["model"], file, "tokenizer.model");
  if (j.contains("pre")) t.pre = dec_str(j["pre"], file, "tokenizer.pre");
  auto arr = [&](const char* key) -> const nlohmann::json* {
    auto it = j.find(key);
    if (it == j.end()) return nullptr;
    if (!it->is_array()) fail("{}: metadata tokenizer.{} must be an array", file, key);
    return &*it;
  };
  if (auto* a = arr("tokens"))
    for (const auto& v : *a) t.tokens.push_back(dec_str(v, file, "tokenizer.tokens"));
  if (auto* a = arr("token_types")) {
    for (const auto& v : *a) {
      if (!v.is_number_integer()) fail("{}: metadata tokenizer.token_types must hold integers", file);
      t.token_types.push_back(static_cast<int32_t>(v.get<int64_t>()));
    }
  }
  if (auto* a = arr("scores"))
    for (const auto& v : *a) t.scores.push_back(score_value(v, file));
  if (auto* a = arr("merges"))
    for (const auto& v : *a) t.merges.push_back(dec_str(v, file, "tokenizer.merges"));
  t.bos_id = get_i64(j, "bos_id", file, -1);
  t.eos_id = get_i64(j, "eos_id", file, -1);
  t.eot_id = get_i64(j, "eot_id", file, -1);
  t.pad_id = get_i64(j, "pad_id", file, -1);
  t.unk_id = get_i64(j, "unk_id", file, -1);
  if (auto it = j.find("add_bos"); it != j.end()) {
    if (!it->is_boolean()) fail("{}: metadata tokenizer.add_bos must be true or false", file);
    t.add_bos = it->get<bool>();
  }
  return t;
}

std::unique_ptr<Model> build_model(std::span<const uint8_t> bytes, const Layout& l, const std::string& name) {
  auto m = std::make_unique<Model>();
  m->path = name;
  m->format = "h1b";
  auto cfg = l.meta.find("config");
  if (cfg == l.meta.end()) fail("{}: metadata has no 'config'", name);
  try {
    m->config = ModelConfig::from_json(*cfg);
  } catch (const Error& e) {
    fail("{}: metadata: {}", name, e.what());
  }
  if (auto it = l.meta.find("tokenizer"); it != l.meta.end()) m->tokenizer = tokenizer_from_json(*it, name);
  if (auto it = l.meta.find("chat_template"); it != l.meta.end() && !it->is_null())
    m->chat_template = dec_str(*it, name, "chat_template");
  if (auto it = l.meta.find("extra"); it != l.meta.end() && it->is_object()) m->extra = *it;
  if (auto it = l.meta.find("source_format"); it != l.meta.end() && it->is_string())
    m->extra["source_format"] = *it;

  for (const auto& e : l.entries) {
    Tensor t;
    t.name = e.name;
    t.packing = e.packing;
    t.shape = e.shape;
    t.data = tensor_bytes(bytes, l.h, e);
    t.origin = fmt::format("{}: {}", name, e.name);
    if (e.scales_count) {
      auto sb = scale_bytes(bytes, l.h, e);
      t.scales.resize(e.scales_count);
      std::memcpy(t.scales.data(), sb.data(), sb.size());
    } else if (is_ternary(e.packing)) {
      try {
        t.scales = embedded_scales(e.packing, t.data, t.rows(), t.cols());
      } catch (const Error& err) {
        fail("{}: tensor {}: {}", name, e.name, err.what());
      }
      if (t.scales.empty())
        fail("{}: tensor {}: packing {} keeps its scales outside the bytes, but the table lists none",
             name, e.name, packing_name(e.packing));
    }
    m->tensors.push_back(std::move(t));
  }
  m->validate();
  return m;
}

}  // namespace

// ---- public API --------------------------------------------------------------------------------

std::unique_ptr<Model> parse_h1b(std::span<const uint8_t> bytes, const std::string& name, bool check_checksums) {
  Layout l = parse_layout(bytes, name, check_checksums);
  return build_model(bytes, l, name);
}

std::unique_ptr<Model> load_h1b(const std::string& path) {
  auto f = MappedFile::open(path);
  auto m = parse_h1b(f->bytes(), path, true);
  m->keep(std::move(f));
  return m;
}

H1bVerifyResult verify_h1b_bytes(std::span<const uint8_t> bytes, const std::string& name) {
  H1bVerifyResult r;
  auto problem = [&](std::string s) {
    r.ok = false;
    r.problems.push_back(std::move(s));
  };
  Layout l;
  try {
    l = parse_layout(bytes, name, false);
  } catch (const Error& e) {
    problem(e.what());
    return r;
  }
  const Header& h = l.h;
  if (xxh64(bytes.first(120)) != h.header_sum) problem(fmt::format("{}: header checksum mismatch", name));
  if (xxh64(bytes.subspan(h.meta_off, h.meta_size)) != h.meta_sum)
    problem(fmt::format("{}: metadata checksum mismatch", name));
  if (xxh64(bytes.subspan(h.table_off, h.table_size)) != h.table_sum)
    problem(fmt::format("{}: tensor table checksum mismatch", name));
  for (const auto& e : l.entries) {
    uint64_t c = entry_checksum(tensor_bytes(bytes, h, e), e.scales_count ? scale_bytes(bytes, h, e)
                                                                          : std::span<const uint8_t>{});
    if (c != e.checksum) {
      problem(fmt::format("{}: tensor {}: checksum mismatch (table {}, data {}): the tensor is damaged",
                          name, e.name, hex16(e.checksum), hex16(c)));
    }
  }
  try {
    build_model(bytes, l, name);
  } catch (const Error& e) {
    problem(e.what());
  }
  return r;
}

H1bVerifyResult verify_h1b(const std::string& path) {
  auto f = MappedFile::open(path);
  return verify_h1b_bytes(f->bytes(), path);
}

void write_h1b(const Model& m, const std::string& path,
               const std::function<void(size_t done, size_t total)>& progress) {
  struct Plan {
    const Tensor* t;
    Packing packing;
    uint64_t offset, size, scales_offset;
    std::vector<float> scales;
    uint64_t checksum = 0;
  };
  std::vector<Plan> plan;
  std::set<std::string> names;
  uint64_t cur = 0, total = 0;
  for (const auto& t : m.tensors) {
    if (!names.insert(t.name).second) fail("{}: tensor {} appears twice in the model", path, t.name);
    if (t.shape.empty() || t.shape.size() > 2)
      fail("{}: tensor {}: shape {} is not 1 or 2 dims", path, t.name, t.shape_str());
    Plan p{&t, t.packing, 0, 0, 0, {}, 0};
    if (is_ternary(t.packing)) {
      p.packing = Packing::kTernary2;
      p.size = packed_size(Packing::kTernary2, t.rows(), t.cols());
      p.scales = t.scales.empty() ? embedded_scales(t.packing, t.data, t.rows(), t.cols()) : t.scales;
      if (p.scales.size() != 1 && static_cast<int64_t>(p.scales.size()) != t.rows())
        fail("{}: tensor {}: has {} scales, expected 1 or {}", path, t.name, p.scales.size(), t.rows());
    } else {
      p.size = packed_size(t.packing, t.rows(), t.cols());
      if (p.size != t.data.size())
        fail("{}: tensor {}: {} bytes, {} {} needs {}", path, t.name, t.data.size(),
             packing_name(t.packing), t.shape_str(), p.size);
    }
    p.offset = align_up(cur);
    cur = p.offset + p.size;
    if (!p.scales.empty()) {
      p.scales_offset = align_up(cur);
      cur = p.scales_offset + p.scales.size() * 4;
    }
    total += p.size + p.scales.size() * 4;
    plan.push_back(std::move(p));
  }

  auto table_json = [&]() {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& p : plan) {
      a.push_back({{"name", p.t->name},
                   {"packing", packing_name(p.packing)},
                   {"shape", p.t->shape},
                   {"offset", p.offset},
                   {"size", p.size},
                   {"scales_offset", p.scales_offset},
                   {"scales_count", p.scales.size()},
                   {"checksum", hex16(p.checksum)}});
    }
    return a.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  nlohmann::json meta = {{"config", m.config.to_json()},
                         {"tokenizer", tokenizer_json(m.tokenizer)},
                         {"chat_template", enc_str(m.chat_template)},
                         {"source_format", m.format.empty() ? "unknown" : m.format},
                         {"extra", m.extra.is_object() ? m.extra : nlohmann::json::object()},
                         {"writer", "1bit"}};
  const std::string meta_text = meta.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  // Checksums are fixed-width hex, so the table's size does not depend on their values: lay the
  // file out now, write the data first, then the table with the real checksums.
  const size_t table_size = table_json().size();

  Header h;
  h.meta_off = kH1bHeaderSize;
  h.meta_size = meta_text.size();
  h.table_off = h.meta_off + h.meta_size;
  h.table_size = table_size;
  h.count = plan.size();
  h.data_off = align_up(h.table_off + h.table_size);
  h.data_size = cur;
  h.file_size = h.data_off + h.data_size;

  const std::string tmp = path + ".tmp";
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  if (!out) fail("{}: cannot create: {}", tmp, std::strerror(errno));
  auto write = [&](const void* p, size_t n) {
    out.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
    if (!out) {
      out.close();
      std::remove(tmp.c_str());
      fail("{}: write failed: {}", tmp, std::strerror(errno));
    }
  };
  static const uint8_t kZeros[kH1bAlign] = {};
  out.seekp(static_cast<std::streamoff>(h.data_off));
  uint64_t pos = 0, done = 0;
  try {
    for (auto& p : plan) {
      write(kZeros, p.offset - pos);
      std::vector<uint8_t> repacked;
      std::span<const uint8_t> data = p.t->data;
      if (is_ternary(p.t->packing) && p.t->packing != Packing::kTernary2) {
        repacked = pack_ternary(unpack_ternary(*p.t), Packing::kTernary2);
        data = repacked;
      }
      if (data.size() != p.size)
        fail("{}: tensor {}: {} bytes, expected {}", path, p.t->name, data.size(), p.size);
      write(data.data(), data.size());
      pos = p.offset + p.size;
      std::span<const uint8_t> sb(reinterpret_cast<const uint8_t*>(p.scales.data()), p.scales.size() * 4);
      if (!sb.empty()) {
        write(kZeros, p.scales_offset - pos);
        write(sb.data(), sb.size());
        pos = p.scales_offset + sb.size();
      }
      p.checksum = entry_checksum(data, sb);
      done += p.size + sb.size();
      if (progress) progress(done, total);
    }
  } catch (...) {
    out.close();
    std::remove(tmp.c_str());
    throw;
  }
  const std::string table_text = table_json();
  if (table_text.size() != table_size) {
    out.close();
    std::remove(tmp.c_str());
    fail("{}: internal error: tensor table changed size", path);
  }
  h.meta_sum = xxh64({reinterpret_cast<const uint8_t*>(meta_text.data()), meta_text.size()});
  h.table_sum = xxh64({reinterpret_cast<const uint8_t*>(table_text.data()), table_text.size()});
  const auto hdr = encode_header(h);
  out.seekp(0);
  write(hdr.data(), hdr.size());
  write(meta_text.data(), meta_text.size());
  write(table_text.data(), table_text.size());
  write(kZeros, h.data_off - (h.table_off + h.table_size));
  out.close();
  if (!out) {
    std::remove(tmp.c_str());
    fail("{}: write failed: {}", tmp, std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    std::remove(tmp.c_str());
    fail("{}: cannot rename from {}: {}", path, tmp, std::strerror(e));
  }
}

}  // namespace onebit
