// Fuzzes the tokenizer two ways, chosen by the first input byte:
//   even: the rest is a tokenizer.json; loading must either work or throw onebit::Error, and a
//         tokenizer that loads must encode/decode a fixed text without crashing.
//   odd:  the rest is text encoded by a small fixed tokenizer (merges, special and added tokens
//         with lstrip/rstrip/single_word); the pieces must give back the input bytes exactly, and
//         decode / the stream decoder must not crash.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/base/error.h"
#include "core/tokenizer/tokenizer.h"

namespace {

// Byte-level alphabet: "Ġ" is space, "Ċ" is newline. Vocab: the 256 byte characters are built by
// listing printable ASCII only plus the few mapped ones we merge; bytes without a token are dropped
// by BPE, so the fixed tokenizer below lists all 256 via the byte-level map at start-up.
std::string fixed_json() {
  std::string vocab = "{";
  int id = 0;
  auto add = [&](const std::string& t) {
    if (id) vocab += ",";
    std::string esc;
    for (char c : t) {
      if (c == '"' || c == '\\') esc += '\\';
      esc += c;
    }
    vocab += "\"" + esc + "\":" + std::to_string(id++);
  };
  // The 256 byte-level characters in byte order (GPT-2 map), written out as UTF-8.
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const char32_t cp = printable ? char32_t(b) : next++;
    std::string u;
    if (cp < 0x80) {
      u += char(cp);
    } else {
      u += char(0xC0 | (cp >> 6));
      u += char(0x80 | (cp & 0x3F));
    }
    add(u);
  }
  for (const char* t : {"he", "ll", "hell", "hello", "\xC4\xA0t", "\xC4\xA0th", "\xC4\xA0the", "\xC4\xA0\xC4\xA0",
                        "\xC4\x8A\xC4\x8A", "in", "ing", "whole"})
    add(t);
  vocab += "}";
  return R"({"added_tokens":[
      {"id":400,"content":"<|eot_id|>","special":true},
      {"id":401,"content":"<L>","special":true,"lstrip":true},
      {"id":402,"content":"<R>","special":false,"rstrip":true},
      {"id":403,"content":"<W>","special":false,"single_word":true}],
    "normalizer":null,
    "pre_tokenizer":{"type":"Sequence","pretokenizers":[
      {"type":"Split","pattern":{"Regex":"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},"behavior":"Isolated","invert":false},
      {"type":"ByteLevel","add_prefix_space":false,"use_regex":false}]},
    "model":{"type":"BPE","ignore_merges":true,"vocab":)" +
         vocab + R"(,"merges":["h e","l l","he ll","hell o","Ġ t","Ġt h","Ġth e","Ġ Ġ","Ċ Ċ","i n","in g"]}})";
}

const onebit::Tokenizer& fixed() {
  static const onebit::Tokenizer t = onebit::Tokenizer::from_hf_json(fixed_json());
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if ((data[0] & 1) == 0) {
    try {
      const onebit::Tokenizer t = onebit::Tokenizer::from_hf_json(rest);
      const auto ids = t.encode("Hello world <|eot_id|> 123 \xF0\x9F\x98\x80 \xFF");
      (void)t.decode(ids);
      (void)onebit::gguf_vocab_from_hf_json(rest);
    } catch (const onebit::Error&) {
    }
    return 0;
  }
  const onebit::Tokenizer& t = fixed();
  const bool parse_special = (data[0] & 2) != 0;
  const auto ids = t.encode(rest, false, parse_special);
  std::string back;
  for (int32_t id : ids) back += t.token_piece(id);
  // lstrip/rstrip tokens swallow whitespace, so exact equality holds only without them.
  if (rest.find("<L>") == std::string_view::npos && rest.find("<R>") == std::string_view::npos && back != rest)
    std::abort();
  (void)t.decode(ids, (data[0] & 4) != 0);
  onebit::StreamDecoder sd(t);
  std::string streamed;
  for (int32_t id : ids) streamed += sd.push(id);
  streamed += sd.flush();
  if (streamed != t.decode(ids)) std::abort();
  return 0;
}
