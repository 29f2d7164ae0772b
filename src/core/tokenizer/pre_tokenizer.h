// The pre-tokenizer: cuts a run of plain text (no added tokens in it) into the "words" that BPE
// then encodes one at a time. It mirrors the Hugging Face pre-tokenizers that byte-level BPE
// models use: Split (regex or literal, all five behaviours, invert), ByteLevel (optional prefix
// space and the GPT-2 regex), Digits, and a Sequence of those.
//
// Regexes are PCRE2 with UTF + UCP, compiled with PCRE2_MATCH_INVALID_UTF so arbitrary bytes are
// safe: ill-formed bytes never match and end up in the gaps between matches.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace onebit::tok {

// A compiled PCRE2 pattern (JIT when available). Immutable after construction, so one instance can
// be used from several threads at once.
class Regex {
 public:
  // Throws Error naming `where` when the pattern does not compile.
  Regex(const std::string& pattern, std::string_view where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the [begin, end) byte ranges of all non-overlapping matches in `text` (empty matches
  // are skipped). Throws Error if the matcher gives up (match/heap limits).
  void find_all(std::string_view text, std::vector<std::pair<uint32_t, uint32_t>>& out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The regex LLaMA-3 (and tiktoken's cl100k) splits text with.
extern const char* const kLlama3Pattern;
// The regex GPT-2's ByteLevel pre-tokenizer splits with.
extern const char* const kGpt2Pattern;

class PreTokenizer {
 public:
  enum class Behavior : uint8_t { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

  // Steps run in order, each on every piece the previous step produced.
  void add_split(const std::string& pattern, Behavior behavior, bool invert, std::string_view where);
  void add_prefix_space();  // ByteLevel add_prefix_space: prepends ' ' to a piece not starting with one
  bool empty() const { return steps_.empty(); }

  // Cuts `text` into pieces. Pieces point into `text` or into `arena` (for prefixed pieces), so both
  // must outlive the result.
  void split(std::string_view text, std::vector<std::string_view>& pieces, std::deque<std::string>& arena) const;

  // True when the pre-tokenizer is exactly one Split with kLlama3Pattern (used to name the GGUF pre).
  bool is_llama3() const;
  bool is_gpt2() const;

 private:
  struct Step {
    enum Kind : uint8_t { kSplit, kPrefixSpace } kind;
    std::shared_ptr<Regex> regex;
    std::string pattern;
    Behavior behavior = Behavior::kIsolated;
    bool invert = false;
  };
  void apply_split(const Step& s, std::string_view piece, std::vector<std::string_view>& out,
                   std::vector<std::pair<uint32_t, uint32_t>>& scratch) const;
  std::vector<Step> steps_;
};

}  // namespace onebit::tok
