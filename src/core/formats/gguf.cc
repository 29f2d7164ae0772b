// GGUF reader. File layout (little-endian):
//   "GGUF" u32 version, u64 n_tensors, u64 n_kv            (v1 had u32 counts: rejected)
//   n_kv x { string key, u32 value_type, value }           string = u64 length + bytes
//   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
//   padding to general.alignment (default 32), then the tensor data; offsets are relative to it.
// Value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string,
//   9 array {u32 elem_type, u64 n, elems}, 10 u64, 11 i64, 12 f64.
#include "core/formats/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <functional>
#include <map>
#include <set>
#include <string_view>

#include "core/base/error.h"
#include "core/base/ternary_packing.h"

namespace onebit {

namespace gguf {

enum ValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

// One metadata entry; positions index the file bytes (already bounds-checked by the parse).
struct Kv {
  std::string key;
  uint32_t type = 0;
  size_t pos = 0;  // start of the value
  uint32_t arr_type = 0;
  uint64_t arr_n = 0;
  size_t arr_pos = 0;  // first element, arrays only
};

struct KvTable {
  std::span<const uint8_t> bytes;
  std::string file;
  std::vector<Kv> kvs;
  std::map<std::string, size_t, std::less<>> index;

  const Kv* find(std::string_view key) const;
  int64_t get_int(const Kv& kv) const;
  double get_float(const Kv& kv) const;
  bool get_bool(const Kv& kv) const;
  std::string get_string(const Kv& kv) const;
  std::vector<std::string> get_strings(const Kv& kv) const;
  std::vector<int64_t> get_ints(const Kv& kv) const;
  std::vector<float> get_floats(const Kv& kv) const;
  nlohmann::json to_json(const Kv& kv) const;

 private:
  void expect_array(const Kv& kv, std::initializer_list<uint32_t> elem_types, const char* what) const;
};

std::string_view value_type_name(uint32_t t) {
  switch (t) {
    case kU8: return "u8";
    case kI8: return "i8";
    case kU16: return "u16";
    case kI16: return "i16";
    case kU32: return "u32";
    case kI32: return "i32";
    case kF32: return "f32";
    case kBool: return "bool";
    case kString: return "string";
    case kArray: return "array";
    case kU64: return "u64";
    case kI64: return "i64";
    case kF64: return "f64";
    default: return "unknown";
  }
}

size_t scalar_size(uint32_t t) {
  switch (t) {
    case kU8:
    case kI8:
    case kBool: return 1;
    case kU16:
    case kI16: return 2;
    case kU32:
    case kI32:
    case kF32: return 4;
    case kU64:
    case kI64:
    case kF64: return 8;
    default: return 0;
  }
}

}  // namespace gguf

namespace {

using namespace gguf;

constexpr uint32_t kMaxArrayDepth = 8;
constexpr size_t kMaxNameLen = 1024;
constexpr int64_t kMaxElements = int64_t{1} << 40;

class Cursor {
 public:
  Cursor(std::span<const uint8_t> b, const std::string& name) : b_(b), name_(name) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return b_.size() - pos_; }
  void seek(size_t p) { pos_ = p; }

  void need(uint64_t n, std::string_view what) const {
    if (n > remaining())
      fail("{}: truncated file: {} needs {} bytes at offset {}, only {} left", name_, what, n, pos_,
           remaining());
  }
  template <typename T>
  T get(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string_view str(std::string_view what) {
    const uint64_t len = get<uint64_t>(what);
    need(len, what);
    std::string_view s(reinterpret_cast<const char*>(b_.data() + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }
  void skip(uint64_t n, std::string_view what) {
    need(n, what);
    pos_ += static_cast<size_t>(n);
  }

 private:
  std::span<const uint8_t> b_;
  const std::string& name_;
  size_t pos_ = 0;
};

// Validates (and skips) one value of type `type` starting at the cursor.
void skip_value(Cursor& c, uint32_t type, uint32_t depth, const std::string& key, const std::string& file) {
  if (type == kString) {
    c.str(key);
    return;
  }
  if (type == kArray) {
    if (depth >= kMaxArrayDepth) fail("{}: key '{}': arrays nested deeper than {}", file, key, kMaxArrayDepth);
    const uint32_t et = c.get<uint32_t>(key);
    const uint64_t n = c.get<uint64_t>(key);
    if (const size_t es = scalar_size(et); es != 0) {
      if (n > c.remaining() / es)
        fail("{}: key '{}': array of {} {} runs past the end of the file", file, key, n, value_type_name(et));
      c.skip(n * es, key);
    } else if (et == kString || et == kArray) {
      const size_t min = et == kString ? 8 : 12;
      if (n > c.remaining() / min)
        fail("{}: key '{}': array of {} {} runs past the end of the file", file, key, n, value_type_name(et));
      for (uint64_t i = 0; i < n; ++i) skip_value(c, et, depth + 1, key, file);
    } else {
      fail("{}: key '{}': unknown array element type {}", file, key, et);
    }
    return;
  }
  const size_t s = scalar_size(type);
  if (s == 0) fail("{}: key '{}': unknown value type {}", file, key, type);
  c.skip(s, key);
}

// Replaces invalid UTF-8 (which nlohmann::json refuses to dump) with U+FFFD.
std::string sanitize_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool ok = len != 0 && i + len <= s.size();
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
    for (size_t k = 1; ok && k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) ok = false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (ok) {
      ok = !(len == 2 && cp < 0x80) && !(len == 3 && cp < 0x800) && !(len == 4 && (cp < 0x10000 || cp > 0x10ffff)) &&
           !(cp >= 0xd800 && cp <= 0xdfff);
    }
    if (ok) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += "\xef\xbf\xbd";
      ++i;
    }
  }
  return out;
}

struct TensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] = innermost (cols)
  uint32_t type = 0;
  uint64_t offset = 0;
  size_t size = 0;
  Packing packing = Packing::kF32;
};

bool packing_of(uint32_t type, Packing& p) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32: p = Packing::kF32; return true;
    case GgmlType::kF16: p = Packing::kF16; return true;
    case GgmlType::kQ8_0: p = Packing::kQ8_0; return true;
    case GgmlType::kBF16: p = Packing::kBF16; return true;
    case GgmlType::kTQ1_0: p = Packing::kTQ1_0; return true;
    case GgmlType::kTQ2_0: p = Packing::kTQ2_0; return true;
    case GgmlType::kI2_S: p = Packing::kI2_S; return true;
  }
  return false;
}

std::string_view ggml_type_name(uint32_t t) {
  static constexpr std::string_view names[] = {
      "F32",  "F16",  "Q4_0", "Q4_1", "Q4_2",  "Q4_3",  "Q5_0",   "Q5_1",  "Q8_0",  "Q8_1",    "Q2_K",
      "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K",  "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
      "IQ2_S", "IQ4_XS", "I8", "I16", "I32",   "I64",   "F64",    "IQ1_M", "BF16",  "Q4_0_4_4", "Q4_0_4_8",
      "Q4_0_8_8", "TQ1_0", "TQ2_0", "I2_S"};
  return t < std::size(names) ? names[t] : "unknown";
}

bool is_bitnet_arch(std::string_view a) {
  return a == "bitnet-b1.58" || a == "bitnet-25" || a == "bitnet" || a == "bitnet-1.58";
}

}  // namespace

// ---- KV access ---------------------------------------------------------------------------------

namespace gguf {

const Kv* KvTable::find(std::string_view key) const {
  auto it = index.find(key);
  return it == index.end() ? nullptr : &kvs[it->second];
}

namespace {

// Reads one scalar of an integer or float type at `pos` as double / int64 (exact for ints).
bool read_int(std::span<const uint8_t> b, size_t pos, uint32_t type, int64_t& out) {
  auto ld = [&](auto v) {
    std::memcpy(&v, b.data() + pos, sizeof(v));
    return v;
  };
  switch (type) {
    case kU8: out = ld(uint8_t{}); return true;
    case kI8: out = ld(int8_t{}); return true;
    case kU16: out = ld(uint16_t{}); return true;
    case kI16: out = ld(int16_t{}); return true;
    case kU32: out = ld(uint32_t{}); return true;
    case kI32: out = ld(int32_t{}); return true;
    case kI64: out = ld(int64_t{}); return true;
    case kU64: {
      const uint64_t v = ld(uint64_t{});
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
      out = static_cast<int64_t>(v);
      return true;
    }
    case kBool: out = ld(uint8_t{}) != 0; return true;
    default: return false;
  }
}

bool read_float(std::span<const uint8_t> b, size_t pos, uint32_t type, double& out) {
  if (type == kF32) {
    float v;
    std::memcpy(&v, b.data() + pos, 4);
    out = v;
    return true;
  }
  if (type == kF64) {
    std::memcpy(&out, b.data() + pos, 8);
    return true;
  }
  int64_t i;
  if (type != kBool && read_int(b, pos, type, i)) {
    out = static_cast<double>(i);
    return true;
  }
  return false;
}

}  // namespace

int64_t KvTable::get_int(const Kv& kv) const {
  int64_t v = 0;
  if (kv.type == kArray || !read_int(bytes, kv.pos, kv.type, v) || kv.type == kBool)
    fail("{}: key '{}' should be an integer, file has {}", file, kv.key, value_type_name(kv.type));
  return v;
}

double KvTable::get_float(const Kv& kv) const {
  double v = 0;
  if (kv.type == kArray || !read_float(bytes, kv.pos, kv.type, v))
    fail("{}: key '{}' should be a number, file has {}", file, kv.key, value_type_name(kv.type));
  // An f32 such as rms_norm_eps = 1e-5 was meant as the decimal it prints as, not as
  // 9.99999974737875e-06: widen through its shortest round-trip decimal form.
  if (kv.type == kF32 && std::isfinite(v)) v = std::strtod(fmt::format("{}", static_cast<float>(v)).c_str(), nullptr);
  return v;
}

bool KvTable::get_bool(const Kv& kv) const {
  if (kv.type != kBool) fail("{}: key '{}' should be a bool, file has {}", file, kv.key, value_type_name(kv.type));
  return bytes[kv.pos] != 0;
}

std::string KvTable::get_string(const Kv& kv) const {
  if (kv.type != kString)
    fail("{}: key '{}' should be a string, file has {}", file, kv.key, value_type_name(kv.type));
  uint64_t len;
  std::memcpy(&len, bytes.data() + kv.pos, 8);
  return std::string(reinterpret_cast<const char*>(bytes.data() + kv.pos + 8), static_cast<size_t>(len));
}

void KvTable::expect_array(const Kv& kv, std::initializer_list<uint32_t> elem_types, const char* what) const {
  if (kv.type != kArray) fail("{}: key '{}' should be an array of {}, file has {}", file, kv.key, what,
                              value_type_name(kv.type));
  for (uint32_t t : elem_types)
    if (t == kv.arr_type) return;
  fail("{}: key '{}' should be an array of {}, file has an array of {}", file, kv.key, what,
       value_type_name(kv.arr_type));
}

std::vector<std::string> KvTable::get_strings(const Kv& kv) const {
  expect_array(kv, {kString}, "strings");
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(kv.arr_n));
  size_t p = kv.arr_pos;
  for (uint64_t i = 0; i < kv.arr_n; ++i) {
    uint64_t len;
    std::memcpy(&len, bytes.data() + p, 8);  // bounds were validated by the parse
    out.emplace_back(reinterpret_cast<const char*>(bytes.data() + p + 8), static_cast<size_t>(len));
    p += 8 + static_cast<size_t>(len);
  }
  return out;
}

std::vector<int64_t> KvTable::get_ints(const Kv& kv) const {
  expect_array(kv, {kU8, kI8, kU16, kI16, kU32, kI32, kU64, kI64}, "integers");
  std::vector<int64_t> out(static_cast<size_t>(kv.arr_n));
  const size_t es = scalar_size(kv.arr_type);
  for (uint64_t i = 0; i < kv.arr_n; ++i)
    if (!read_int(bytes, kv.arr_pos + i * es, kv.arr_type, out[i]))
      fail("{}: key '{}': element {} does not fit in int64", file, kv.key, i);
  return out;
}

std::vector<float> KvTable::get_floats(const Kv& kv) const {
  expect_array(kv, {kF32, kF64}, "floats");
  std::vector<float> out(static_cast<size_t>(kv.arr_n));
  const size_t es = scalar_size(kv.arr_type);
  for (uint64_t i = 0; i < kv.arr_n; ++i) {
    double d = 0;
    read_float(bytes, kv.arr_pos + i * es, kv.arr_type, d);
    out[i] = static_cast<float>(d);
  }
  return out;
}

// A JSON rendering for `1bit info`: scalars as they are, arrays up to kMaxJsonArray elements in
// full, longer ones summarised.
nlohmann::json KvTable::to_json(const Kv& kv) const {
  constexpr uint64_t kMaxJsonArray = 64;
  std::function<nlohmann::json(uint32_t, size_t&, uint32_t)> value = [&](uint32_t type, size_t& p,
                                                                        uint32_t depth) -> nlohmann::json {
    if (type == kString) {
      uint64_t len;
      std::memcpy(&len, bytes.data() + p, 8);
      std::string_view s(reinterpret_cast<const char*>(bytes.data() + p + 8), static_cast<size_t>(len));
      p += 8 + static_cast<size_t>(len);
      return sanitize_utf8(s);
    }
    if (type == kArray) {
      uint32_t et;
      uint64_t n;
      std::memcpy(&et, bytes.data() + p, 4);
      std::memcpy(&n, bytes.data() + p + 4, 8);
      p += 12;
      if (n > kMaxJsonArray || depth > 2) {
        // Skip without materialising: fixed-size elements jump, the others are walked.
        if (const size_t es = scalar_size(et); es != 0) {
          p += static_cast<size_t>(n) * es;
        } else {
          for (uint64_t i = 0; i < n; ++i) value(et, p, depth + 1);
        }
        return fmt::format("[{} x {}]", n, value_type_name(et));
      }
      nlohmann::json a = nlohmann::json::array();
      for (uint64_t i = 0; i < n; ++i) a.push_back(value(et, p, depth + 1));
      return a;
    }
    const size_t s = scalar_size(type);
    nlohmann::json j;
    if (type == kBool) {
      j = bytes[p] != 0;
    } else if (type == kF32 || type == kF64) {
      double d = 0;
      read_float(bytes, p, type, d);
      j = std::isfinite(d) ? nlohmann::json(d) : nlohmann::json(fmt::format("{}", d));
    } else if (type == kU64) {
      uint64_t u;
      std::memcpy(&u, bytes.data() + p, 8);
      j = u;
    } else {
      int64_t i = 0;
      read_int(bytes, p, type, i);
      j = i;
    }
    p += s;
    return j;
  };
  size_t p = kv.pos;
  return value(kv.type, p, 0);
}

}  // namespace gguf

// ---- the parse ---------------------------------------------------------------------------------

bool is_gguf(std::span<const uint8_t> head) {
  return head.size() >= 4 && std::memcmp(head.data(), "GGUF", 4) == 0;
}

std::unique_ptr<Model> parse_gguf(std::span<const uint8_t> bytes, const std::string& name) {
  Cursor c(bytes, name);
  if (bytes.size() < 4 || !is_gguf(bytes))
    fail("{}: not a GGUF file (the file does not start with the magic 'GGUF')", name);
  c.skip(4, "magic");
  const uint32_t version = c.get<uint32_t>("version");
  if (version == 1) fail("{}: GGUF version 1 is not supported (re-convert the model with a current converter)", name);
  if (version != 2 && version != 3) {
    if ((version & 0xffff) == 0 && version != 0)
      fail("{}: big-endian GGUF files are not supported (version field {:#x})", name, version);
    fail("{}: unsupported GGUF version {} (expected 2 or 3)", name, version);
  }
  const uint64_t n_tensors = c.get<uint64_t>("tensor count");
  const uint64_t n_kv = c.get<uint64_t>("metadata count");
  // Each KV takes at least 13 bytes, each tensor info at least 32: bound the counts before looping.
  if (n_kv > c.remaining() / 13) fail("{}: metadata count {} cannot fit in the file", name, n_kv);

  gguf::KvTable kv;
  kv.bytes = bytes;
  kv.file = name;
  kv.kvs.reserve(static_cast<size_t>(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    gguf::Kv e;
    e.key = std::string(c.str(fmt::format("metadata key #{}", i)));
    if (e.key.empty()) fail("{}: metadata key #{} is empty", name, i);
    if (kv.index.count(e.key) != 0) fail("{}: metadata key '{}' appears twice", name, e.key);
    e.type = c.get<uint32_t>(e.key);
    e.pos = c.pos();
    if (e.type == gguf::kArray) {
      Cursor peek = c;
      e.arr_type = peek.get<uint32_t>(e.key);
      e.arr_n = peek.get<uint64_t>(e.key);
      e.arr_pos = peek.pos();
    }
    skip_value(c, e.type, 0, e.key, name);
    kv.index.emplace(e.key, kv.kvs.size());
    kv.kvs.push_back(std::move(e));
  }

  uint64_t alignment = 32;
  if (const gguf::Kv* a = kv.find("general.alignment")) {
    const int64_t v = kv.get_int(*a);
    if (v <= 0 || v > (1 << 20) || (v & (v - 1)) != 0)
      fail("{}: general.alignment = {} must be a power of two between 1 and 2^20", name, v);
    alignment = static_cast<uint64_t>(v);
  }

  if (n_tensors > c.remaining() / 32) fail("{}: tensor count {} cannot fit in the file", name, n_tensors);
  std::vector<TensorInfo> infos;
  infos.reserve(static_cast<size_t>(n_tensors));
  std::set<std::string, std::less<>> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.name = std::string(c.str(fmt::format("tensor info #{}", i)));
    if (t.name.empty() || t.name.size() > kMaxNameLen)
      fail("{}: tensor #{} has a name of {} bytes (expected 1..{})", name, i, t.name.size(), kMaxNameLen);
    if (!names.insert(t.name).second) fail("{}: tensor {} appears twice", name, t.name);
    const uint32_t n_dims = c.get<uint32_t>(t.name);
    if (n_dims < 1 || n_dims > 4) fail("{}: tensor {}: {} dimensions (expected 1..4)", name, t.name, n_dims);
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = c.get<uint64_t>(t.name);
      if (ne == 0 || ne > static_cast<uint64_t>(kMaxElements))
        fail("{}: tensor {}: dimension {} = {} is out of range (1..2^40)", name, t.name, d, ne);
      if (__builtin_mul_overflow(numel, static_cast<int64_t>(ne), &numel) || numel > kMaxElements)
        fail("{}: tensor {}: more than 2^40 elements", name, t.name);
      t.ne.push_back(static_cast<int64_t>(ne));
    }
    t.type = c.get<uint32_t>(t.name);
    t.offset = c.get<uint64_t>(t.name);
    if (!packing_of(t.type, t.packing))
      fail("{}: tensor {} has ggml type {} ({}), which 1bit does not read (supported: F32, F16, BF16, Q8_0, "
           "TQ1_0, TQ2_0, I2_S)",
           name, t.name, t.type, ggml_type_name(t.type));
    if (is_ternary(t.packing) && n_dims > 2)
      fail("{}: tensor {}: a {} tensor must have 1 or 2 dimensions, it has {}", name, t.name,
           ggml_type_name(t.type), n_dims);
    if (t.offset % alignment != 0)
      fail("{}: tensor {}: data offset {} is not a multiple of the alignment {}", name, t.name, t.offset,
           alignment);
    try {
      t.size = packed_size(t.packing, numel / t.ne[0], t.ne[0]);
    } catch (const Error& e) {
      fail("{}: tensor {}: {}", name, t.name, e.what());
    }
    infos.push_back(std::move(t));
  }

  // Tensor data starts at the next multiple of the alignment.
  const uint64_t header_end = c.pos();
  const uint64_t data_start = (header_end + alignment - 1) / alignment * alignment;
  const uint64_t file_size = bytes.size();
  if (!infos.empty() && data_start > file_size)
    fail("{}: the tensor data section (at offset {}) starts past the end of the file ({} bytes)", name,
         data_start, file_size);
  for (const TensorInfo& t : infos) {
    const uint64_t avail = data_start <= file_size ? file_size - data_start : 0;
    if (t.offset > avail || t.size > avail - t.offset)
      fail("{}: tensor {}: data [{}, +{}) runs past the end of the file (data section holds {} bytes)", name,
           t.name, t.offset, t.size, avail);
  }
  {
    std::vector<const TensorInfo*> order;
    for (const TensorInfo& t : infos) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < order.size(); ++i)
      if (order[i - 1]->offset + order[i - 1]->size > order[i]->offset)
        fail("{}: tensors {} and {} overlap (offsets {} + {} bytes and {})", name, order[i - 1]->name,
             order[i]->name, order[i - 1]->offset, order[i - 1]->size, order[i]->offset);
  }

  auto model = std::make_unique<Model>();
  Model& m = *model;
  m.path = name;
  m.format = "gguf";

  // ---- config
  ModelConfig& cfg = m.config;
  const gguf::Kv* arch_kv = kv.find("general.architecture");
  if (arch_kv == nullptr) fail("{}: missing key general.architecture", name);
  const std::string arch = kv.get_string(*arch_kv);
  if (!is_bitnet_arch(arch))
    fail("{}: general.architecture is '{}', not a BitNet b1.58 model (expected bitnet-b1.58, bitnet-25 or "
         "bitnet)",
         name, sanitize_utf8(arch));
  cfg.architecture = arch;
  auto key = [&](const char* k) { return arch + "." + k; };
  // Integer hyper-parameter; llama.cpp also allows a per-layer array, which must be uniform here.
  auto int_key = [&](const char* k, bool required, int64_t dflt) -> int64_t {
    const gguf::Kv* e = kv.find(key(k));
    if (e == nullptr) {
      if (required) fail("{}: missing key {}", name, key(k));
      return dflt;
    }
    if (e->type == gguf::kArray) {
      std::vector<int64_t> v = kv.get_ints(*e);
      if (v.empty()) fail("{}: key {} is an empty array", name, key(k));
      for (int64_t x : v)
        if (x != v[0]) fail("{}: key {}: per-layer values differ ({} and {}); not supported", name, key(k), v[0], x);
      if (v[0] < 0) fail("{}: key {} = {} must not be negative", name, key(k), v[0]);
      return v[0];
    }
    const int64_t v = kv.get_int(*e);
    if (v < 0) fail("{}: key {} = {} must not be negative", name, key(k), v);
    return v;
  };
  auto float_key = [&](const char* k, double dflt) {
    const gguf::Kv* e = kv.find(key(k));
    return e == nullptr ? dflt : kv.get_float(*e);
  };
  cfg.num_layers = int_key("block_count", true, 0);
  cfg.hidden_size = int_key("embedding_length", true, 0);
  cfg.intermediate_size = int_key("feed_forward_length", true, 0);
  cfg.num_heads = int_key("attention.head_count", true, 0);
  cfg.num_kv_heads = int_key("attention.head_count_kv", false, cfg.num_heads);
  cfg.max_position_embeddings = int_key("context_length", false, 4096);
  cfg.rope_theta = float_key("rope.freq_base", 10000.0);  // llama.cpp's default when absent
  cfg.rms_norm_eps = float_key("attention.layer_norm_rms_epsilon", 1e-5);
  cfg.head_dim = int_key("attention.key_length", false,
                         cfg.num_heads > 0 ? cfg.hidden_size / cfg.num_heads : 0);
  cfg.hidden_act = "relu2";

  // ---- tokenizer
  TokenizerData& tok = m.tokenizer;
  auto str_opt = [&](const char* k, std::string& out) {
    if (const gguf::Kv* e = kv.find(k)) out = kv.get_string(*e);
  };
  auto id_opt = [&](const char* k, int64_t& out) {
    if (const gguf::Kv* e = kv.find(k)) {
      out = kv.get_int(*e);
      if (out < 0 || out > (int64_t{1} << 31)) fail("{}: key {} = {} is not a valid token id", name, k, out);
    }
  };
  str_opt("tokenizer.ggml.model", tok.model);
  str_opt("tokenizer.ggml.pre", tok.pre);
  if (const gguf::Kv* e = kv.find("tokenizer.ggml.tokens")) tok.tokens = kv.get_strings(*e);
  if (const gguf::Kv* e = kv.find("tokenizer.ggml.token_type")) {
    for (int64_t v : kv.get_ints(*e)) {
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
        fail("{}: tokenizer.ggml.token_type holds {}, out of int32 range", name, v);
      tok.token_types.push_back(static_cast<int32_t>(v));
    }
  }
  if (const gguf::Kv* e = kv.find("tokenizer.ggml.scores")) tok.scores = kv.get_floats(*e);
  if (const gguf::Kv* e = kv.find("tokenizer.ggml.merges")) tok.merges = kv.get_strings(*e);
  id_opt("tokenizer.ggml.bos_token_id", tok.bos_id);
  id_opt("tokenizer.ggml.eos_token_id", tok.eos_id);
  id_opt("tokenizer.ggml.eot_token_id", tok.eot_id);
  id_opt("tokenizer.ggml.padding_token_id", tok.pad_id);
  id_opt("tokenizer.ggml.unknown_token_id", tok.unk_id);
  if (const gguf::Kv* e = kv.find("tokenizer.ggml.add_bos_token")) tok.add_bos = kv.get_bool(*e);
  str_opt("tokenizer.huggingface.json", tok.hf_json);
  if (!tok.tokens.empty()) {
    if (!tok.token_types.empty() && tok.token_types.size() != tok.tokens.size())
      fail("{}: tokenizer.ggml.token_type has {} entries for {} tokens", name, tok.token_types.size(),
           tok.tokens.size());
    if (!tok.scores.empty() && tok.scores.size() != tok.tokens.size())
      fail("{}: tokenizer.ggml.scores has {} entries for {} tokens", name, tok.scores.size(), tok.tokens.size());
  }
  str_opt("tokenizer.chat_template", m.chat_template);
  cfg.bos_token_id = tok.bos_id;
  for (int64_t id : {tok.eos_id, tok.eot_id})
    if (id >= 0 && std::find(cfg.eos_token_ids.begin(), cfg.eos_token_ids.end(), id) == cfg.eos_token_ids.end())
      cfg.eos_token_ids.push_back(id);

  // ---- tensors
  m.tensors.reserve(infos.size());
  for (const TensorInfo& ti : infos) {
    Tensor t;
    t.name = ti.name;
    t.packing = ti.packing;
    t.shape.assign(ti.ne.rbegin(), ti.ne.rend());  // ggml ne0 is the innermost dimension
    t.data = bytes.subspan(static_cast<size_t>(data_start + ti.offset), ti.size);
    t.origin = fmt::format("{}: tensor {} ({} at offset {})", name, ti.name, ggml_type_name(ti.type),
                           data_start + ti.offset);
    if (is_ternary(t.packing)) {
      try {
        t.scales = embedded_scales(t.packing, t.data, t.rows(), t.cols());
      } catch (const Error& e) {
        fail("{}: tensor {}: {}", name, t.name, e.what());
      }
      if (t.scales.size() > 1 &&
          std::all_of(t.scales.begin(), t.scales.end(), [&](float s) { return s == t.scales[0]; }))
        t.scales.resize(1);
    }
    m.tensors.push_back(std::move(t));
  }

  const gguf::Kv* vocab_kv = kv.find(key("vocab_size"));
  if (vocab_kv != nullptr) {
    cfg.vocab_size = kv.get_int(*vocab_kv);
    if (cfg.vocab_size < 0) fail("{}: key {} = {} must not be negative", name, key("vocab_size"), cfg.vocab_size);
  } else if (!tok.tokens.empty()) {
    cfg.vocab_size = static_cast<int64_t>(tok.tokens.size());
  } else if (const Tensor* e = m.find("token_embd.weight")) {
    cfg.vocab_size = e->rows();
  }
  cfg.tie_word_embeddings = m.find("output.weight") == nullptr;

  // ---- everything else, for `1bit info`
  nlohmann::json extra = nlohmann::json::object();
  for (const gguf::Kv& e : kv.kvs) {
    if (e.key == "tokenizer.chat_template" || e.key == "tokenizer.huggingface.json") continue;
    extra[sanitize_utf8(e.key)] = kv.to_json(e);
  }
  m.extra["gguf"] = std::move(extra);
  m.extra["gguf_version"] = version;
  m.extra["gguf_alignment"] = alignment;
  m.extra["gguf_tensor_count"] = n_tensors;
  return model;
}

std::unique_ptr<Model> load_gguf(const std::string& path) {
  std::shared_ptr<const MappedFile> f = MappedFile::open(path);
  std::unique_ptr<Model> m = parse_gguf(f->bytes(), path);
  m->keep(std::move(f));
  return m;
}

}  // namespace onebit
