#include "core/sampler/stop_matcher.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "core/base/error.h"

namespace onebit {
namespace {

// Feeds pieces, returns everything emitted (including flush unless stopped).
struct StreamResult {
  std::string emitted;
  bool stopped = false;
  int stop_index = -1;
};
StreamResult feed(StopMatcher& m, const std::vector<std::string>& pieces) {
  StreamResult run;
  for (const auto& p : pieces) {
    auto r = m.push(p);
    run.emitted += r.text;
    if (r.stopped) {
      run.stopped = true;
      run.stop_index = r.stop_index;
      break;
    }
  }
  run.emitted += m.flush();
  return run;
}

TEST(StopMatcher, StopSpanningThreePieces) {
  StopMatcher m({"lo w"});
  auto r = m.push("Hel");
  EXPECT_EQ(r.text, "He");  // "l" could start "lo w"
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(m.held(), 1u);
  r = m.push("lo wor");
  EXPECT_EQ(r.text, "l");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.stop_index, 0);
  r = m.push("ld");
  EXPECT_EQ(r.text, "");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, StopBuiltOneByteAtATime) {
  StopMatcher m({"</s>"});
  auto run = feed(m, {"ok", "<", "/", "s", ">", "more"});
  EXPECT_EQ(run.emitted, "ok");
  EXPECT_TRUE(run.stopped);
}

TEST(StopMatcher, PartialPrefixIsHeldThenReleased) {
  StopMatcher m({"###"});
  auto r = m.push("ab#");
  EXPECT_EQ(r.text, "ab");
  EXPECT_EQ(m.held(), 1u);
  r = m.push("#");
  EXPECT_EQ(r.text, "");
  EXPECT_EQ(m.held(), 2u);
  r = m.push("c");  // "##c" cannot become "###"
  EXPECT_EQ(r.text, "##c");
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(m.held(), 0u);
}

TEST(StopMatcher, FlushReturnsHeldText) {
  StopMatcher m({"###"});
  EXPECT_EQ(m.push("x##").text, "x");
  EXPECT_EQ(m.flush(), "##");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, OverlappingSelfPrefix) {
  // "aaab" contains "aab" starting at 1: one "a" is emitted, never the stop string.
  StopMatcher m({"aab"});
  auto run = feed(m, {"a", "a", "a", "b", "zzz"});
  EXPECT_EQ(run.emitted, "a");
  EXPECT_TRUE(run.stopped);
}

TEST(StopMatcher, MultipleStopStrings) {
  {
    StopMatcher m({"END", "STOP"});
    EXPECT_EQ(m.push("xxSTO").text, "xx");
    auto r = m.push("P now");
    EXPECT_TRUE(r.stopped);
    EXPECT_EQ(r.stop_index, 1);
    EXPECT_EQ(r.text, "");
  }
  {
    // Both in one piece: the earliest start wins.
    StopMatcher m({"world", "lo"});
    auto r = m.push("hello world");
    EXPECT_EQ(r.text, "hel");
    EXPECT_EQ(r.stop_index, 1);
  }
  {
    // Same start: the longest wins.
    StopMatcher m({"ab", "abc"});
    auto r = m.push("xabc");
    EXPECT_EQ(r.text, "x");
    EXPECT_EQ(r.stop_index, 1);
  }
  {
    // Hold back the longest candidate prefix over all stop strings.
    StopMatcher m({"xyz", "yzw"});
    EXPECT_EQ(m.push("axy").text, "a");  // "xy" could start "xyz"
    EXPECT_EQ(m.push("z").stop_index, 0);
  }
}

TEST(StopMatcher, StopAtStart) {
  StopMatcher m({"STOP"});
  auto r = m.push("STOP and more");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "");
}

TEST(StopMatcher, NoStopsPassesThrough) {
  StopMatcher m({});
  EXPECT_EQ(m.push("hello ").text, "hello ");
  EXPECT_EQ(m.push("world").text, "world");
  EXPECT_EQ(m.held(), 0u);
}

TEST(StopMatcher, Utf8PiecesAreReleasedWholeCharacters) {
  StopMatcher m({});
  // "é" is C3 A9; a byte-fallback token may split it.
  EXPECT_EQ(m.push("caf\xC3").text, "caf");
  EXPECT_EQ(m.held(), 1u);
  EXPECT_EQ(m.push("\xA9!").text, "\xC3\xA9!");
  // 4-byte emoji U+1F600 F0 9F 98 80 in three pieces.
  EXPECT_EQ(m.push("\xF0\x9F").text, "");
  EXPECT_EQ(m.push("\x98").text, "");
  EXPECT_EQ(m.push("\x80 ok").text, "\xF0\x9F\x98\x80 ok");
  // A dangling lead byte at the end is still returned by flush.
  EXPECT_EQ(m.push("\xE4").text, "");
  EXPECT_EQ(m.flush(), "\xE4");
}

TEST(StopMatcher, Utf8StopString) {
  {
    StopMatcher m({"世界"});
    auto run = feed(m, {"你好世", "界。"});
    EXPECT_EQ(run.emitted, "你好");
    EXPECT_TRUE(run.stopped);
  }
  {
    // 世 = E4 B8 96, split across pieces.
    StopMatcher m({"世界"});
    EXPECT_EQ(m.push("你好\xE4\xB8").text, "你好");
    auto r = m.push("\x96界");
    EXPECT_TRUE(r.stopped);
    EXPECT_EQ(r.text, "");
  }
  {
    // Shares a lead byte with the stop string but differs: released once it differs.
    StopMatcher m({"世界"});
    EXPECT_EQ(m.push("你好\xE4").text, "你好");
    EXPECT_EQ(m.push("\xB8\x8A").text, "上");  // 上 = E4 B8 8A
  }
}

TEST(StopMatcher, StopTokenIds) {
  StopMatcher m({}, {128009, 2, 7});
  EXPECT_TRUE(m.is_stop_token(2));
  EXPECT_TRUE(m.is_stop_token(128009));
  EXPECT_FALSE(m.is_stop_token(3));
  EXPECT_FALSE(m.is_stop_token(-1));
}

TEST(StopMatcher, EmptyStopStringThrows) {
  EXPECT_THROW(StopMatcher({"ok", ""}), Error);
}

// Reference: stop at the first piece boundary where the text so far contains a stop string,
// cut at the earliest such occurrence.
StreamResult reference(const std::vector<std::string>& stops, const std::vector<std::string>& pieces) {
  StreamResult run;
  std::string text;
  for (const auto& p : pieces) {
    text += p;
    size_t best = std::string::npos;
    for (const auto& s : stops) best = std::min(best, text.find(s));
    if (best != std::string::npos) {
      run.emitted = text.substr(0, best);
      run.stopped = true;
      return run;
    }
  }
  run.emitted = text;
  return run;
}

TEST(StopMatcher, MatchesReferenceOnRandomStreams) {
  std::mt19937_64 rng(7);
  auto rand_string = [&](size_t min_len, size_t max_len) {
    std::string s(min_len + rng() % (max_len - min_len + 1), ' ');
    for (char& c : s) c = "abc"[rng() % 3];
    return s;
  };
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<std::string> stops;
    for (size_t i = 0, n = rng() % 3 + 1; i < n; ++i) stops.push_back(rand_string(1, 4));
    std::vector<std::string> pieces;
    for (size_t i = 0, n = rng() % 12 + 1; i < n; ++i) pieces.push_back(rand_string(0, 4));
    StopMatcher m(stops);
    StreamResult got = feed(m, pieces);
    StreamResult want = reference(stops, pieces);
    ASSERT_EQ(got.emitted, want.emitted) << "iteration " << iter;
    ASSERT_EQ(got.stopped, want.stopped) << "iteration " << iter;
  }
}

}  // namespace
}  // namespace onebit
