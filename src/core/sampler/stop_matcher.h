// StopMatcher: finds stop strings in streamed text and decides what is safe to show so far.
//
// The caller feeds it the text of each token as it is decoded. A stop string may span several
// tokens ("Hel" + "lo wor" + "ld" contains "lo w"), so text that could still become the start of
// a stop string is held back until the next pieces settle it. Once a stop string appears, the
// text before it is released, the stop string and everything after it are dropped, and the
// matcher reports stopped. Text is also held back while it ends inside a UTF-8 sequence, so every
// released chunk ends on a character boundary (streamed JSON wants whole characters).
//
// Matching is on bytes, exact and case-sensitive; with several stop strings the one that starts
// earliest wins (the longest, if two start at the same byte). Stop token ids are not text: the
// caller checks each sampled id with is_stop_token() and then calls flush().
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace onebit {

class StopMatcher {
 public:
  struct Result {
    std::string text;      // safe to emit now (may be empty)
    bool stopped = false;  // a stop string was found; later push() calls return nothing
    int stop_index = -1;   // which stop string, when stopped
  };

  // Stop strings must be non-empty (SamplingParams::validate checks that; this throws Error too).
  explicit StopMatcher(std::vector<std::string> stops, std::vector<int32_t> stop_token_ids = {});

  Result push(std::string_view piece);
  // End of generation (max_tokens, a stop token, end of sequence): returns the held-back text,
  // which is no longer a stop string's start. Empty after a stop string was found.
  std::string flush();

  bool is_stop_token(int32_t id) const;
  bool stopped() const { return stopped_; }
  // Bytes currently held back.
  size_t held() const { return pending_.size(); }

 private:
  std::vector<std::string> stops_;
  std::vector<int32_t> stop_ids_;  // sorted
  std::string pending_;            // received, not yet emitted
  bool stopped_ = false;
};

}  // namespace onebit
