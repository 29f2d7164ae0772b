// Byte-level helpers shared by the tokenizer: the GPT-2 byte <-> printable-character map that
// byte-level BPE vocabularies are written in, and a UTF-8 scanner used for lossy decoding and for
// streaming (which needs to know when a character is still incomplete).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace onebit::tok {

// The printable code point that byte b is written as in a byte-level vocabulary (GPT-2's map:
// printable Latin-1 bytes stand for themselves, the other 68 bytes are moved to U+0100..U+0143).
char32_t byte_to_codepoint(uint8_t b);

// The byte a code point stands for, or -1 when cp is not one of the 256 byte-level characters.
int codepoint_to_byte(char32_t cp);

// Converts a vocabulary entry written in the byte-level alphabet to the raw bytes it stands for.
// Returns false when the entry is not valid UTF-8 or holds a character outside the alphabet; `out`
// then holds the entry's own bytes for those characters (as a Hugging Face decoder does).
bool byte_level_decode(std::string_view token, std::string& out);

// Writes raw bytes in the byte-level alphabet (the inverse of byte_level_decode).
std::string byte_level_encode(std::string_view bytes);

// What starts at a position of a byte string, per the Unicode well-formedness table (3-7).
struct Utf8Scan {
  enum Kind : uint8_t { kValid, kInvalid, kIncomplete } kind;
  uint8_t len;      // kValid: bytes of the character; kInvalid: bytes of the maximal ill-formed
                    // subpart (replaced by one U+FFFD); kIncomplete: bytes seen so far
  char32_t cp = 0;  // kValid only
};
Utf8Scan utf8_scan(const uint8_t* p, size_t n);

// Appends `bytes` to `out` with every ill-formed sequence replaced by U+FFFD (like Rust's
// String::from_utf8_lossy and the WHATWG decoder). An incomplete sequence at the end is replaced too.
void append_utf8_lossy(std::string_view bytes, std::string& out);

void append_utf8(char32_t cp, std::string& out);

// True for code points with the Unicode White_Space property.
bool is_unicode_whitespace(char32_t cp);

}  // namespace onebit::tok
