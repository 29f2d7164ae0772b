// Python str operations on UTF-8 text, as chat templates use them (strip, split, title, ...).
// Lengths, indices and slices count code points, as Python does. Case mapping covers ASCII only
// (documented in docs/chat-templates.md). Invalid UTF-8 bytes count as one code point each, so
// no input makes these functions fail.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace onebit::jinja {

// Decodes the code point at s[i]; *len receives its byte length (1 for an invalid byte).
uint32_t utf8_decode(std::string_view s, size_t i, size_t* len);
void utf8_append(std::string& out, uint32_t cp);

// Byte offsets of each code point start, plus s.size() at the end.
std::vector<size_t> codepoint_offsets(std::string_view s);
size_t codepoint_count(std::string_view s);

// Python str.isspace() for one code point.
bool is_py_space(uint32_t cp);

// str.strip/lstrip/rstrip: chars = nullopt strips whitespace, else any code point in chars.
std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right);

std::string ascii_upper(std::string_view s);
std::string ascii_lower(std::string_view s);
std::string py_capitalize(std::string_view s);  // first upper, rest lower
std::string py_title(std::string_view s);       // str.title()
std::string jinja_title(std::string_view s);    // the |title filter (splits on [-\s({[<]+)

// str.split(sep=None, maxsplit=-1) and str.rsplit.
std::vector<std::string> py_split(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit);
std::vector<std::string> py_rsplit(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit);

// str.replace(old, new, count=-1).
std::string py_replace(std::string_view s, std::string_view from, std::string_view to, int64_t count);

}  // namespace onebit::jinja
