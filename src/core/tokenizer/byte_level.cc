#include "core/tokenizer/byte_level.h"

#include <array>

namespace onebit::tok {
namespace {

struct ByteTables {
  std::array<char32_t, 256> to_cp{};
  std::array<int16_t, 0x144> to_byte{};  // every mapped code point is below U+0144
  ByteTables() {
    to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? char32_t(b) : next++;
      to_byte[to_cp[b]] = int16_t(b);
    }
  }
};

const ByteTables& tables() {
  static const ByteTables t;
  return t;
}

}  // namespace

char32_t byte_to_codepoint(uint8_t b) { return tables().to_cp[b]; }

int codepoint_to_byte(char32_t cp) {
  const auto& t = tables();
  return cp < t.to_byte.size() ? t.to_byte[cp] : -1;
}

void append_utf8(char32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

Utf8Scan utf8_scan(const uint8_t* p, size_t n) {
  const uint8_t b0 = p[0];
  if (b0 < 0x80) return {Utf8Scan::kValid, 1, b0};
  int need;           // continuation bytes after the lead
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  char32_t cp;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1, cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2, cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3, cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {Utf8Scan::kInvalid, 1};
  }
  for (int i = 1; i <= need; ++i) {
    if (size_t(i) >= n) return {Utf8Scan::kIncomplete, uint8_t(i)};
    const uint8_t b = p[i];
    const uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h) return {Utf8Scan::kInvalid, uint8_t(i)};
    cp = (cp << 6) | (b & 0x3F);
  }
  return {Utf8Scan::kValid, uint8_t(need + 1), cp};
}

void append_utf8_lossy(std::string_view bytes, std::string& out) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    // Copy runs of ASCII quickly; they are the common case.
    if (p[i] < 0x80) {
      size_t j = i;
      while (j < n && p[j] < 0x80) ++j;
      out.append(bytes.data() + i, j - i);
      i = j;
      continue;
    }
    const Utf8Scan s = utf8_scan(p + i, n - i);
    if (s.kind == Utf8Scan::kValid) {
      out.append(bytes.data() + i, s.len);
    } else {
      out += "\xEF\xBF\xBD";
    }
    i += s.len;
  }
}

bool byte_level_decode(std::string_view token, std::string& out) {
  const auto* p = reinterpret_cast<const uint8_t*>(token.data());
  const size_t n = token.size();
  bool all_mapped = true;
  size_t i = 0;
  while (i < n) {
    const Utf8Scan s = utf8_scan(p + i, n - i);
    if (s.kind != Utf8Scan::kValid) {
      out.append(token.data() + i, s.len);
      all_mapped = false;
    } else if (const int b = codepoint_to_byte(s.cp); b >= 0) {
      out += char(b);
    } else {
      out.append(token.data() + i, s.len);
      all_mapped = false;
    }
    i += s.len;
  }
  return all_mapped;
}

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) append_utf8(byte_to_codepoint(c), out);
  return out;
}

bool is_unicode_whitespace(char32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

}  // namespace onebit::tok
