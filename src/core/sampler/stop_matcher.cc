#include "core/sampler/stop_matcher.h"

#include <algorithm>

#include "core/base/error.h"

namespace onebit {
namespace {

// Length of the longest suffix of `text` that is a proper prefix of `stop` (shorter than it).
size_t partial_match(std::string_view text, std::string_view stop) {
  const size_t max = std::min(text.size(), stop.size() - 1);
  for (size_t len = max; len > 0; --len)
    if (text.substr(text.size() - len) == stop.substr(0, len)) return len;
  return 0;
}

// Number of bytes at the end of `text` that start a UTF-8 sequence the text does not complete.
size_t incomplete_utf8_tail(std::string_view text) {
  // Look back at most 3 bytes for a lead byte; continuation bytes are 10xxxxxx.
  const size_t n = text.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(text[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation: keep looking for the lead
    size_t need = 1;
    if ((c & 0xE0) == 0xC0) need = 2;
    else if ((c & 0xF0) == 0xE0) need = 3;
    else if ((c & 0xF8) == 0xF0) need = 4;
    return need > back ? back : 0;  // ASCII or an invalid lead byte: nothing to wait for
  }
  return 0;  // no lead byte within reach: invalid UTF-8, waiting would not fix it
}

}  // namespace

StopMatcher::StopMatcher(std::vector<std::string> stops, std::vector<int32_t> stop_token_ids)
    : stops_(std::move(stops)), stop_ids_(std::move(stop_token_ids)) {
  for (size_t i = 0; i < stops_.size(); ++i)
    if (stops_[i].empty()) fail("stop[{}] must not be empty", i);
  std::sort(stop_ids_.begin(), stop_ids_.end());
}

bool StopMatcher::is_stop_token(int32_t id) const {
  return std::binary_search(stop_ids_.begin(), stop_ids_.end(), id);
}

StopMatcher::Result StopMatcher::push(std::string_view piece) {
  Result r;
  if (stopped_) {
    r.stopped = true;
    return r;
  }
  pending_.append(piece);

  // pending_ holds no complete stop string from before (we would have stopped), so a match now
  // involves the new piece; searching all of pending_ is simplest and it is short.
  size_t best_pos = std::string::npos;
  for (size_t i = 0; i < stops_.size(); ++i) {
    const size_t pos = pending_.find(stops_[i]);
    if (pos == std::string::npos) continue;
    if (pos < best_pos || (pos == best_pos && stops_[i].size() > stops_[r.stop_index].size())) {
      best_pos = pos;
      r.stop_index = static_cast<int>(i);
    }
  }
  if (best_pos != std::string::npos) {
    r.text = pending_.substr(0, best_pos);
    r.stopped = true;
    stopped_ = true;
    pending_.clear();
    return r;
  }

  // Any future match must start inside the longest suffix that is a stop string's prefix.
  size_t hold = 0;
  for (const std::string& stop : stops_) hold = std::max(hold, partial_match(pending_, stop));
  hold = std::max(hold, incomplete_utf8_tail(pending_));
  const size_t emit = pending_.size() - hold;
  r.text = pending_.substr(0, emit);
  pending_.erase(0, emit);
  return r;
}

std::string StopMatcher::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace onebit
