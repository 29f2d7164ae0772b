#include "core/formats/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>

#include "core/base/error.h"

namespace onebit {

namespace {

struct DtypeInfo {
  StDtype d;
  std::string_view name;
  size_t size;
};
constexpr std::array<DtypeInfo, 5> kDtypes{{
    {StDtype::kU8, "U8", 1},
    {StDtype::kI8, "I8", 1},
    {StDtype::kF16, "F16", 2},
    {StDtype::kBF16, "BF16", 2},
    {StDtype::kF32, "F32", 4},
}};

// Dims and element counts beyond this are not a model tensor (2^40 elements is > 1 TB of data).
constexpr uint64_t kMaxNumel = uint64_t{1} << 40;
constexpr size_t kMaxDims = 8;

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A non-negative JSON integer, else Error.
uint64_t json_u64(const nlohmann::json& j, const std::string& file, const std::string& tensor,
                  const char* what) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  if (j.is_number_integer()) {
    int64_t v = j.get<int64_t>();
    if (v >= 0) return static_cast<uint64_t>(v);
  }
  fail("{}: tensor '{}': {} must be non-negative integers, found {}", file, tensor, what, j.dump());
}

}  // namespace

std::string_view st_dtype_name(StDtype d) {
  for (const auto& e : kDtypes)
    if (e.d == d) return e.name;
  return "?";
}

size_t st_dtype_size(StDtype d) {
  for (const auto& e : kDtypes)
    if (e.d == d) return e.size;
  return 0;
}

int64_t StTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const StTensor* SafetensorsFile::find(std::string_view tensor_name) const {
  for (const auto& t : tensors)
    if (t.name == tensor_name) return &t;
  return nullptr;
}

SafetensorsFile parse_safetensors(std::span<const uint8_t> bytes, const std::string& name) {
  SafetensorsFile f;
  f.name = name;
  if (bytes.size() < 8) {
    fail("{}: not a safetensors file: {} bytes, need at least the 8-byte header length", name,
         bytes.size());
  }
  const uint64_t header_len = read_u64_le(bytes.data());
  if (header_len < 2 || header_len > kMaxSafetensorsHeader) {
    fail("{}: safetensors header length {} is out of range (2..{})", name, header_len,
         kMaxSafetensorsHeader);
  }
  if (header_len > bytes.size() - 8) {
    fail("{}: safetensors header length {} runs past the end of the file ({} bytes): truncated?",
         name, header_len, bytes.size());
  }
  const uint8_t* hdr = bytes.data() + 8;
  const uint8_t* data = hdr + header_len;
  const uint64_t data_size = bytes.size() - 8 - header_len;

  nlohmann::json j;
  try {
    j = nlohmann::json::parse(hdr, hdr + header_len);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: safetensors header is not valid JSON: {}", name, e.what());
  }
  if (!j.is_object()) fail("{}: safetensors header must be a JSON object, found {}", name, j.type_name());

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const nlohmann::json& v = it.value();
    if (key == "__metadata__") {
      if (v.is_null()) continue;
      if (!v.is_object()) fail("{}: __metadata__ must be an object of strings, found {}", name, v.type_name());
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail("{}: __metadata__ key '{}' must be a string, found {}", name, m.key(), m.value().type_name());
        f.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) fail("{}: tensor '{}': entry must be an object, found {}", name, key, v.type_name());
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || sh == v.end() || off == v.end())
      fail("{}: tensor '{}': entry needs dtype, shape and data_offsets", name, key);
    if (!dt->is_string()) fail("{}: tensor '{}': dtype must be a string", name, key);
    const std::string dts = dt->get<std::string>();
    StTensor t;
    t.name = key;
    bool known = false;
    for (const auto& e : kDtypes) {
      if (e.name == dts) {
        t.dtype = e.d;
        known = true;
      }
    }
    if (!known) {
      fail("{}: tensor '{}': dtype {} is not supported (expected U8, I8, F16, BF16 or F32)", name,
           key, dts);
    }
    if (!sh->is_array() || sh->size() > kMaxDims)
      fail("{}: tensor '{}': shape must be an array of at most {} dims", name, key, kMaxDims);
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      uint64_t dim = json_u64(d, name, key, "shape dims");
      if (dim > kMaxNumel || (dim != 0 && numel > kMaxNumel / dim))
        fail("{}: tensor '{}': shape {} is absurdly large", name, key, sh->dump());
      numel *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    if (!off->is_array() || off->size() != 2)
      fail("{}: tensor '{}': data_offsets must be [begin, end]", name, key);
    const uint64_t begin = json_u64((*off)[0], name, key, "data_offsets");
    const uint64_t end = json_u64((*off)[1], name, key, "data_offsets");
    if (begin > end || end > data_size) {
      fail("{}: tensor '{}': data_offsets [{}, {}] are outside the data section ({} bytes)", name,
           key, begin, end, data_size);
    }
    const uint64_t want = numel * st_dtype_size(t.dtype);  // <= 2^42, no overflow
    if (end - begin != want) {
      fail("{}: tensor '{}': {} {} needs {} bytes, data_offsets [{}, {}] hold {}", name, key, dts,
           sh->dump(), want, begin, end, end - begin);
    }
    t.offset = begin;
    t.data = {data + begin, static_cast<size_t>(end - begin)};
    f.tensors.push_back(std::move(t));
  }

  std::sort(f.tensors.begin(), f.tensors.end(), [](const StTensor& a, const StTensor& b) {
    return a.offset != b.offset ? a.offset < b.offset : a.data.size() < b.data.size();
  });
  for (size_t i = 1; i < f.tensors.size(); ++i) {
    const StTensor& a = f.tensors[i - 1];
    const StTensor& b = f.tensors[i];
    if (a.offset + a.data.size() > b.offset && !a.data.empty() && !b.data.empty()) {
      fail("{}: tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", name, a.name, a.offset,
           a.offset + a.data.size(), b.name, b.offset, b.offset + b.data.size());
    }
  }
  return f;
}

void write_safetensors(const std::string& path, const std::vector<StWriteTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json hdr = nlohmann::json::object();
  if (!metadata.empty()) hdr["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::set<std::string> names;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__" || !names.insert(t.name).second)
      fail("{}: tensor name '{}' is reserved or repeated", path, t.name);
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) fail("{}: tensor '{}': negative dimension {}", path, t.name, d);
      numel *= static_cast<uint64_t>(d);
    }
    const uint64_t want = numel * st_dtype_size(t.dtype);
    if (want != t.bytes.size()) {
      fail("{}: tensor '{}': {} elements of {} need {} bytes, given {}", path, t.name, numel,
           st_dtype_name(t.dtype), want, t.bytes.size());
    }
    hdr[t.name] = {{"dtype", st_dtype_name(t.dtype)},
                   {"shape", t.shape},
                   {"data_offsets", {offset, offset + want}}};
    offset += want;
  }
  std::string text = hdr.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("{}: cannot create: {}", tmp, std::strerror(errno));
    uint8_t len[8];
    uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& t : tensors)
      out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
    out.flush();
    if (!out) fail("{}: write failed: {}", tmp, std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    std::remove(tmp.c_str());
    fail("{}: cannot rename from {}: {}", path, tmp, std::strerror(e));
  }
}

}  // namespace onebit
