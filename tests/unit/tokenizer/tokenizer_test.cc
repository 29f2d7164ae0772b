#include "core/tokenizer/tokenizer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "core/base/error.h"
#include "core/tokenizer/byte_level.h"
#include "core/tokenizer/pre_tokenizer.h"

namespace onebit {
namespace {

using json = nlohmann::json;
using Ids = std::vector<int32_t>;

// A small byte-level BPE tokenizer.json written from raw-byte tokens: ids 0..255 are the single
// bytes (in byte order), then `extra` tokens, then the results of `merges` that are not there yet.
struct SyntheticTokenizer {
  std::vector<std::string> extra;
  std::vector<std::pair<std::string, std::string>> merges;
  bool ignore_merges = false;
  json added = json::array();
  json pre_tokenizer = json{{"type", "Sequence"},
                            {"pretokenizers",
                             {{{"type", "Split"},
                               {"pattern", {{"Regex", tok::kLlama3Pattern}}},
                               {"behavior", "Isolated"},
                               {"invert", false}},
                              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  json post_processor = nullptr;

  std::string json_text() const {
    json vocab = json::object();
    int id = 0;
    auto add = [&](const std::string& raw) {
      const std::string t = tok::byte_level_encode(raw);
      if (!vocab.contains(t)) vocab[t] = id++;
    };
    for (int b = 0; b < 256; ++b) add(std::string(1, char(b)));
    for (const auto& e : extra) add(e);
    json m = json::array();
    for (const auto& [a, b] : merges) {
      add(a + b);
      m.push_back(tok::byte_level_encode(a) + " " + tok::byte_level_encode(b));
    }
    json added_with_ids = added;
    for (auto& a : added_with_ids)
      if (!a.contains("id")) a["id"] = id++;
    json j = {{"version", "1.0"},
              {"added_tokens", added_with_ids},
              {"normalizer", nullptr},
              {"pre_tokenizer", pre_tokenizer},
              {"post_processor", post_processor},
              {"decoder", {{"type", "ByteLevel"}}},
              {"model",
               {{"type", "BPE"}, {"ignore_merges", ignore_merges}, {"vocab", vocab}, {"merges", m}}}};
    return j.dump();
  }
  Tokenizer build() const { return Tokenizer::from_hf_json(json_text()); }
};

json added_token(const std::string& content, bool special, bool lstrip = false, bool rstrip = false,
                 bool single_word = false) {
  return {{"content", content}, {"special", special}, {"lstrip", lstrip},    {"rstrip", rstrip},
          {"single_word", single_word}, {"normalized", false}};
}

int32_t id_of(const Tokenizer& t, const std::string& raw) {
  auto id = t.token_to_id(tok::byte_level_encode(raw));
  EXPECT_TRUE(id.has_value()) << raw;
  return id.value_or(-1);
}

std::string pieces(const Tokenizer& t, const Ids& ids) {
  std::string s;
  for (int32_t id : ids) s += t.token_piece(id);
  return s;
}

TEST(ByteLevel, MapIsABijectionWithGpt2Choices) {
  std::vector<bool> seen(0x200, false);
  for (int b = 0; b < 256; ++b) {
    const char32_t cp = tok::byte_to_codepoint(uint8_t(b));
    ASSERT_LT(cp, 0x200u);
    EXPECT_FALSE(seen[cp]) << b;
    seen[cp] = true;
    EXPECT_EQ(tok::codepoint_to_byte(cp), b);
  }
  EXPECT_EQ(tok::byte_to_codepoint(' '), U'\u0120');  // 'Ġ'
  EXPECT_EQ(tok::byte_to_codepoint('\n'), U'\u010A');  // 'Ċ'
  EXPECT_EQ(tok::byte_to_codepoint('A'), U'A');
  EXPECT_EQ(tok::codepoint_to_byte(U'\u4E2D'), -1);
  std::string raw;
  EXPECT_TRUE(tok::byte_level_decode("\xC4\xA0hello", raw));
  EXPECT_EQ(raw, " hello");
}

TEST(Utf8, LossyReplacesMaximalSubparts) {
  std::string out;
  tok::append_utf8_lossy("a\xF0\x9F" "b", out);  // truncated 4-byte sequence: one U+FFFD
  EXPECT_EQ(out, "a\xEF\xBF\xBD" "b");
  out.clear();
  tok::append_utf8_lossy("\xE0\x80", out);  // E0 80 is ill-formed at the second byte: two
  EXPECT_EQ(out, "\xEF\xBF\xBD\xEF\xBF\xBD");
  out.clear();
  tok::append_utf8_lossy("\xED\xA0\x80", out);  // a surrogate: three
  EXPECT_EQ(out, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  out.clear();
  tok::append_utf8_lossy("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80", out);
  EXPECT_EQ(out, "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
  const uint8_t inc[] = {0xF0, 0x9F, 0x98};
  EXPECT_EQ(tok::utf8_scan(inc, 3).kind, tok::Utf8Scan::kIncomplete);
}

TEST(PreTokenizer, Llama3SplitMatchesReferencePieces) {
  tok::PreTokenizer pre;
  pre.add_split(tok::kLlama3Pattern, tok::PreTokenizer::Behavior::kIsolated, false, "test");
  std::vector<std::string_view> out;
  std::deque<std::string> arena;
  pre.split("Hello world's 1234567 DON'T  \n\n x", out, arena);
  std::vector<std::string> got(out.begin(), out.end());
  std::vector<std::string> want = {"Hello", " world", "'s", " ", "123", "456", "7", " DON", "'T", "  \n\n", " x"};
  EXPECT_EQ(got, want);
}

TEST(PreTokenizer, SplitBehaviours) {
  auto run = [](tok::PreTokenizer::Behavior b, bool invert = false) {
    tok::PreTokenizer pre;
    pre.add_split("-", b, invert, "test");
    std::vector<std::string_view> out;
    std::deque<std::string> arena;
    pre.split("the-final--countdown", out, arena);
    return std::vector<std::string>(out.begin(), out.end());
  };
  using B = tok::PreTokenizer::Behavior;
  using V = std::vector<std::string>;
  EXPECT_EQ(run(B::kRemoved), (V{"the", "final", "countdown"}));
  EXPECT_EQ(run(B::kIsolated), (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(run(B::kMergedWithPrevious), (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(run(B::kMergedWithNext), (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(run(B::kContiguous), (V{"the", "-", "final", "--", "countdown"}));
  EXPECT_EQ(run(B::kRemoved, true), (V{"-", "-", "-"}));
}

TEST(Bpe, LowestRankMergesFirst) {
  SyntheticTokenizer s;
  s.merges = {{"b", "c"}, {"a", "b"}};  // "bc" outranks "ab"
  const Tokenizer t = s.build();
  EXPECT_EQ(t.encode("abc"), (Ids{'a', id_of(t, "bc")}));
  EXPECT_EQ(t.encode("ab"), (Ids{id_of(t, "ab")}));
}

TEST(Bpe, TiesGoLeftmostAndMergesChain) {
  SyntheticTokenizer s;
  s.merges = {{"a", "a"}, {"aa", "aa"}};
  const Tokenizer t = s.build();
  EXPECT_EQ(t.encode("aaa"), (Ids{id_of(t, "aa"), 'a'}));
  EXPECT_EQ(t.encode("aaaaa"), (Ids{id_of(t, "aaaa"), 'a'}));
  // A long word goes through the same queue without quadratic blow-up.
  const Ids ids = t.encode(std::string(100000, 'a'));
  ASSERT_EQ(ids.size(), 25000u);
  for (int32_t id : ids) ASSERT_EQ(id, id_of(t, "aaaa"));
}

TEST(Bpe, MergesApplyAcrossPreTokenBoundariesOnlyWithin) {
  SyntheticTokenizer s;
  s.merges = {{" ", "w"}, {" w", "o"}, {"h", "i"}};
  const Tokenizer t = s.build();
  // " wo" is one pre-token (space joins the word), "hi" another.
  EXPECT_EQ(t.encode("hi wo"), (Ids{id_of(t, "hi"), id_of(t, " wo")}));
  EXPECT_EQ(t.decode(t.encode("hi wo")), "hi wo");
}

TEST(Bpe, IgnoreMergesEmitsWholeVocabularyWords) {
  SyntheticTokenizer s;
  s.extra = {"xyz"};  // in the vocabulary but no merge builds it
  s.merges = {{"x", "y"}};
  s.ignore_merges = false;
  const Tokenizer plain = s.build();
  EXPECT_EQ(plain.encode("xyz"), (Ids{id_of(plain, "xy"), 'z'}));
  s.ignore_merges = true;
  const Tokenizer ignoring = s.build();
  EXPECT_EQ(ignoring.encode("xyz"), (Ids{id_of(ignoring, "xyz")}));
  EXPECT_EQ(ignoring.encode("xyzx"), (Ids{id_of(ignoring, "xy"), 'z', 'x'}));
}

TEST(Bpe, ArbitraryBytesFallBackToByteTokens) {
  SyntheticTokenizer s;
  s.merges = {{"a", "b"}};
  const Tokenizer t = s.build();
  std::string all;
  for (int b = 0; b < 256; ++b) all += char(b);
  const Ids ids = t.encode(all);
  EXPECT_EQ(pieces(t, ids), all);
  // Ill-formed UTF-8 (lone continuation, truncated sequence, overlong) is encoded byte by byte.
  const std::string bad = "ab\xFF\xFE x\x80y \xC3 \xE2\x82 \xC0\xAF";
  const Ids bad_ids = t.encode(bad);
  EXPECT_EQ(pieces(t, bad_ids), bad);
  EXPECT_EQ(bad_ids[0], id_of(t, "ab"));
  EXPECT_EQ(t.decode(t.encode("\xFF")), "\xEF\xBF\xBD");
}

TEST(AddedTokens, SpecialTokensAreCutOutFirst) {
  SyntheticTokenizer s;
  s.merges = {{"h", "i"}};
  s.added = json::array({added_token("<|eot|>", true), added_token("<|eot|>x", true), added_token("<tool>", false)});
  const Tokenizer t = s.build();
  const int32_t eot = *t.token_to_id("<|eot|>"), eotx = *t.token_to_id("<|eot|>x"), tool = *t.token_to_id("<tool>");
  EXPECT_TRUE(t.is_special(eot));
  EXPECT_FALSE(t.is_special(tool));
  EXPECT_TRUE(t.is_added(tool));
  EXPECT_EQ(t.encode("hi<|eot|>hi"), (Ids{id_of(t, "hi"), eot, id_of(t, "hi")}));
  EXPECT_EQ(t.encode("<|eot|>xhi"), (Ids{eotx, id_of(t, "hi")}));  // longest match wins
  EXPECT_EQ(t.encode("<|eot|"), t.encode("<|eot|", false, false));    // incomplete: plain text
  // parse_special=false: special text is plain text, non-special added tokens still split out.
  const Ids plain = t.encode("<|eot|><tool>", false, false);
  ASSERT_FALSE(plain.empty());
  EXPECT_EQ(plain.back(), tool);
  EXPECT_EQ(pieces(t, Ids(plain.begin(), plain.end() - 1)), "<|eot|>");
  EXPECT_EQ(t.decode(t.encode("a<|eot|>b")), "a<|eot|>b");
  EXPECT_EQ(t.decode(t.encode("a<|eot|>b"), true), "ab");
}

TEST(AddedTokens, StripAndSingleWordFlags) {
  SyntheticTokenizer s;
  s.added = json::array({added_token("<L>", true, /*lstrip=*/true), added_token("<R>", true, false, /*rstrip=*/true),
                         added_token("<W>", false, false, false, /*single_word=*/true)});
  const Tokenizer t = s.build();
  const int32_t l = *t.token_to_id("<L>"), r = *t.token_to_id("<R>"), w = *t.token_to_id("<W>");
  EXPECT_EQ(t.encode("a  <L>b"), (Ids{'a', l, 'b'}));
  EXPECT_EQ(t.encode("a<R> \t b"), (Ids{'a', r, 'b'}));
  EXPECT_EQ(t.encode("a <W> b"), (Ids{'a', ' ', w, ' ', 'b'}));
  const Ids glued = t.encode("a<W>b");
  EXPECT_EQ(std::count(glued.begin(), glued.end(), w), 0);
  EXPECT_EQ(pieces(t, glued), "a<W>b");
}

TEST(PostProcessor, TemplateAddsBos) {
  SyntheticTokenizer s;
  s.added = json::array({added_token("<s>", true)});
  s.added[0]["id"] = 300;
  s.post_processor = {{"type", "TemplateProcessing"},
                      {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {300}}, {"tokens", {"<s>"}}}}}}};
  const Tokenizer t = s.build();
  EXPECT_EQ(t.bos_id(), 300);
  EXPECT_EQ(t.encode("a", true), (Ids{300, 'a'}));
  EXPECT_EQ(t.encode("a", false), (Ids{'a'}));
  EXPECT_EQ(t.n_vocab(), 301);
}

TEST(StreamDecoder, HoldsBackPartialCharacters) {
  SyntheticTokenizer s;
  const Tokenizer t = s.build();
  const std::string text = "h\xC3\xA9\xF0\x9F\x98\x80!";  // h é 😀 !
  const Ids ids = t.encode(text);
  ASSERT_EQ(ids.size(), 8u);  // byte tokens only: no merges
  StreamDecoder d(t);
  std::vector<std::string> outs;
  for (int32_t id : ids) outs.push_back(d.push(id));
  EXPECT_EQ(outs, (std::vector<std::string>{"h", "", "\xC3\xA9", "", "", "", "\xF0\x9F\x98\x80", "!"}));
  EXPECT_EQ(d.flush(), "");
  // An incomplete character at the end becomes U+FFFD on flush; an ill-formed byte right away.
  StreamDecoder d2(t);
  EXPECT_EQ(d2.push(0xE2), "");
  EXPECT_EQ(d2.push(0x82), "");
  EXPECT_EQ(d2.flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(d2.push(0xFF), "\xEF\xBF\xBD");
  EXPECT_EQ(d2.push(0xC3), "");
  EXPECT_EQ(d2.push('x'), "\xEF\xBF\xBDx");
}

TEST(Gguf, VocabRoundTripEncodesTheSame) {
  SyntheticTokenizer s;
  s.merges = {{" ", "t"}, {" t", "h"}, {" th", "e"}, {"e", "r"}};
  s.extra = {"whole"};
  s.ignore_merges = true;
  s.added = json::array({added_token("<|eot_id|>", true), added_token("<note>", false)});
  const std::string j = s.json_text();
  const TokenizerData d = gguf_vocab_from_hf_json(j);
  EXPECT_EQ(d.model, "gpt2");
  EXPECT_EQ(d.pre, "llama-bpe");
  ASSERT_EQ(d.tokens.size(), d.token_types.size());
  const Tokenizer a = Tokenizer::from_hf_json(j);
  const Tokenizer b = Tokenizer::from_gguf(d);
  EXPECT_EQ(d.token_types[*a.token_to_id("<|eot_id|>")], 3);
  EXPECT_EQ(d.token_types[*a.token_to_id("<note>")], 4);
  EXPECT_EQ(d.merges[0], "\xC4\xA0 t");
  EXPECT_EQ(b.eot_id(), *a.token_to_id("<|eot_id|>"));
  for (std::string text : {"the other whole<|eot_id|> there<note>", "  \n\n x\r\n", "\xFF\xFE"})
    EXPECT_EQ(a.encode(text), b.encode(text)) << text;
  TokenizerData via;
  via.hf_json = j;
  EXPECT_EQ(Tokenizer::from_data(via).encode("the whole"), a.encode("the whole"));
  EXPECT_EQ(Tokenizer::from_data(d).encode("the whole"), a.encode("the whole"));
}

TEST(Errors, BadInputThrowsErrorNamingTheField) {
  auto message = [](const std::string& j) -> std::string {
    try {
      Tokenizer::from_hf_json(j);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_NE(message("{not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(message("[]").find("top level"), std::string::npos);
  EXPECT_NE(message("{}").find("'model'"), std::string::npos);
  SyntheticTokenizer s;
  json j = json::parse(s.json_text());
  j["model"]["merges"] = {"a zz"};
  EXPECT_NE(message(j.dump()).find("\"zz\""), std::string::npos);
  j = json::parse(s.json_text());
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  EXPECT_NE(message(j.dump()).find("regex does not compile"), std::string::npos);
  j = json::parse(s.json_text());
  j["normalizer"] = {{"type", "NFKC"}};
  EXPECT_NE(message(j.dump()).find("NFKC"), std::string::npos);
  j = json::parse(s.json_text());
  j["model"]["vocab"]["huge"] = int64_t(1) << 40;
  EXPECT_NE(message(j.dump()).find("huge"), std::string::npos);
  j = json::parse(s.json_text());
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  EXPECT_NE(message(j.dump()).find("Whitespace"), std::string::npos);

  const Tokenizer t = s.build();
  EXPECT_THROW(t.decode(Ids{-1}), Error);
  EXPECT_THROW(t.token_piece(1 << 20), Error);
  TokenizerData spm;
  spm.model = "llama";
  spm.tokens = {"a"};
  EXPECT_THROW(Tokenizer::from_gguf(spm), Error);
}

TEST(Encode, HugeWhitespaceAndEmptyInputs) {
  SyntheticTokenizer s;
  s.merges = {{" ", " "}, {"  ", "  "}};
  const Tokenizer t = s.build();
  EXPECT_TRUE(t.encode("").empty());
  const std::string spaces(1 << 20, ' ');
  const Ids ids = t.encode(spaces + "x");
  EXPECT_EQ(pieces(t, ids), spaces + "x");
}

}  // namespace
}  // namespace onebit
