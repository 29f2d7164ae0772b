#include "core/template/template_text.h"

#include <algorithm>

namespace onebit::jinja {

uint32_t utf8_decode(std::string_view s, size_t i, size_t* len) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  size_t n = 0;
  uint32_t cp = 0;
  if (c < 0x80) {
    *len = 1;
    return c;
  } else if ((c & 0xe0) == 0xc0) {
    n = 2;
    cp = c & 0x1f;
  } else if ((c & 0xf0) == 0xe0) {
    n = 3;
    cp = c & 0x0f;
  } else if ((c & 0xf8) == 0xf0) {
    n = 4;
    cp = c & 0x07;
  } else {
    *len = 1;
    return c;
  }
  if (i + n > s.size()) {
    *len = 1;
    return c;
  }
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xc0) != 0x80) {
      *len = 1;
      return c;
    }
    cp = (cp << 6) | (b(i + k) & 0x3f);
  }
  *len = n;
  return cp;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

std::vector<size_t> codepoint_offsets(std::string_view s) {
  std::vector<size_t> off;
  size_t i = 0;
  while (i < s.size()) {
    off.push_back(i);
    size_t len = 1;
    utf8_decode(s, i, &len);
    i += len;
  }
  off.push_back(s.size());
  return off;
}

size_t codepoint_count(std::string_view s) { return codepoint_offsets(s).size() - 1; }

bool is_py_space(uint32_t cp) {
  if (cp >= 0x09 && cp <= 0x0d) return true;
  if (cp >= 0x1c && cp <= 0x20) return true;
  switch (cp) {
    case 0x85: case 0xa0: case 0x1680: case 0x2028: case 0x2029: case 0x202f: case 0x205f: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200a;
  }
}

std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right) {
  std::vector<uint32_t> set;
  if (chars) {
    size_t i = 0;
    while (i < chars->size()) {
      size_t len;
      set.push_back(utf8_decode(*chars, i, &len));
      i += len;
    }
  }
  auto strip_me = [&](uint32_t cp) {
    return chars ? std::find(set.begin(), set.end(), cp) != set.end() : is_py_space(cp);
  };
  auto off = codepoint_offsets(s);
  size_t n = off.size() - 1;
  size_t b = 0, e = n;
  auto cp_at = [&](size_t k) {
    size_t len;
    return utf8_decode(s, off[k], &len);
  };
  if (left)
    while (b < e && strip_me(cp_at(b))) ++b;
  if (right)
    while (e > b && strip_me(cp_at(e - 1))) --e;
  return std::string(s.substr(off[b], off[e] - off[b]));
}

std::string ascii_upper(std::string_view s) {
  std::string r(s);
  for (char& c : r)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
  return r;
}

std::string ascii_lower(std::string_view s) {
  std::string r(s);
  for (char& c : r)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return r;
}

std::string py_capitalize(std::string_view s) {
  if (s.empty()) return {};
  size_t len;
  utf8_decode(s, 0, &len);
  return ascii_upper(s.substr(0, len)) + ascii_lower(s.substr(len));
}

namespace {
bool ascii_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
}  // namespace

std::string py_title(std::string_view s) {
  std::string r(s);
  bool prev_cased = false;
  for (char& c : r) {
    if (ascii_alpha(c)) {
      if (prev_cased) {
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
      } else if (c >= 'a' && c <= 'z') {
        c = static_cast<char>(c - 32);
      }
      prev_cased = true;
    } else {
      prev_cased = false;
    }
  }
  return r;
}

std::string jinja_title(std::string_view s) {
  // Pieces alternate between words and separator runs; each piece gets first-upper, rest-lower.
  auto is_sep = [&](size_t i, size_t* len) {
    uint32_t cp = utf8_decode(s, i, len);
    return cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || is_py_space(cp);
  };
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    size_t len;
    bool sep = is_sep(i, &len);
    size_t j = i + len;
    while (j < s.size()) {
      size_t l2;
      if (is_sep(j, &l2) != sep) break;
      j += l2;
    }
    out += py_capitalize(s.substr(i, j - i));
    i = j;
  }
  return out;
}

std::vector<std::string> py_split(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit) {
  std::vector<std::string> out;
  if (!sep) {
    size_t i = 0;
    auto space_at = [&](size_t k, size_t* len) { return is_py_space(utf8_decode(s, k, len)); };
    while (true) {
      size_t len;
      while (i < s.size() && space_at(i, &len)) i += len;
      if (i >= s.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) {
        // Rest of the string, with trailing whitespace removed.
        out.push_back(py_strip(s.substr(i), std::nullopt, false, true));
        break;
      }
      size_t j = i;
      while (j < s.size() && !space_at(j, &len)) j += len;
      out.emplace_back(s.substr(i, j - i));
      i = j;
    }
    return out;
  }
  size_t i = 0;
  while (true) {
    size_t p = (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) ? std::string_view::npos
                                                                                : s.find(*sep, i);
    if (p == std::string_view::npos) {
      out.emplace_back(s.substr(i));
      break;
    }
    out.emplace_back(s.substr(i, p - i));
    i = p + sep->size();
  }
  return out;
}

std::vector<std::string> py_rsplit(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit) {
  if (maxsplit < 0) return py_split(s, sep, maxsplit);
  std::vector<std::string> out;
  if (!sep) {
    size_t e = s.size();
    auto space_before = [&](size_t k) {  // is the byte run ending at k whitespace? (ASCII + common)
      size_t b = k - 1;
      while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xc0) == 0x80) --b;
      size_t len;
      return std::pair<bool, size_t>(is_py_space(utf8_decode(s, b, &len)), b);
    };
    while (true) {
      while (e > 0 && space_before(e).first) e = space_before(e).second;
      if (e == 0) break;
      if (static_cast<int64_t>(out.size()) >= maxsplit) {
        out.push_back(py_strip(s.substr(0, e), std::nullopt, true, false));
        break;
      }
      size_t b = e;
      while (b > 0 && !space_before(b).first) b = space_before(b).second;
      out.emplace_back(s.substr(b, e - b));
      e = b;
    }
    std::reverse(out.begin(), out.end());
    return out;
  }
  size_t e = s.size();
  while (true) {
    size_t p = std::string_view::npos;
    if (static_cast<int64_t>(out.size()) < maxsplit && e >= sep->size()) p = s.rfind(*sep, e - sep->size());
    if (p == std::string_view::npos) {
      out.emplace_back(s.substr(0, e));
      break;
    }
    out.emplace_back(s.substr(p + sep->size(), e - p - sep->size()));
    e = p;
  }
  std::reverse(out.begin(), out.end());
  return out;
}

std::string py_replace(std::string_view s, std::string_view from, std::string_view to, int64_t count) {
  std::string out;
  if (from.empty()) {
    // Python inserts `to` before every code point and at the end.
    auto off = codepoint_offsets(s);
    int64_t done = 0;
    for (size_t k = 0; k + 1 < off.size(); ++k) {
      if (count < 0 || done < count) {
        out += to;
        ++done;
      }
      out += s.substr(off[k], off[k + 1] - off[k]);
    }
    if (count < 0 || done < count) out += to;
    return out;
  }
  size_t i = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t p = s.find(from, i);
    if (p == std::string_view::npos) break;
    out += s.substr(i, p - i);
    out += to;
    i = p + from.size();
    ++done;
  }
  out += s.substr(i);
  return out;
}

}  // namespace onebit::jinja
