#include "core/tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/base/error.h"

namespace onebit::tok {

const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct Regex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
};

Regex::Regex(const std::string& pattern, std::string_view where) : impl_(std::make_unique<Impl>()) {
  int err = 0;
  PCRE2_SIZE err_off = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_off, nullptr);
  if (impl_->code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("{}: regex does not compile at offset {}: {}", where, size_t(err_off), reinterpret_cast<const char*>(msg));
  }
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  if (impl_ && impl_->code) pcre2_code_free(impl_->code);
}

void Regex::find_all(std::string_view text, std::vector<std::pair<uint32_t, uint32_t>>& out) const {
  // Match data is per call so that concurrent callers never share it.
  struct MatchData {
    pcre2_match_data* md;
    explicit MatchData(const pcre2_code* c) : md(pcre2_match_data_create_from_pattern(c, nullptr)) {}
    ~MatchData() { pcre2_match_data_free(md); }
  } m(impl_->code);
  if (m.md == nullptr) fail("tokenizer: out of memory creating regex match data");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t pos = 0;
  while (pos < n) {
    int rc = impl_->jit ? pcre2_jit_match(impl_->code, subject, n, pos, 0, m.md, nullptr)
                        : pcre2_match(impl_->code, subject, n, pos, 0, m.md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // the interpreter keeps its backtracking on the heap
      rc = pcre2_match(impl_->code, subject, n, pos, PCRE2_NO_JIT, m.md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      fail("tokenizer: pre-tokenizer regex failed at byte {}: {}", pos, reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(m.md);
    const size_t b = ov[0], e = ov[1];
    if (e > b) {
      out.emplace_back(uint32_t(b), uint32_t(e));
      pos = e;
    } else {
      // Empty match: step over one character (or one ill-formed byte) and search again.
      pos = b + 1;
      while (pos < n && (uint8_t(text[pos]) & 0xC0) == 0x80) ++pos;
    }
  }
}

void PreTokenizer::add_split(const std::string& pattern, Behavior behavior, bool invert, std::string_view where) {
  Step s{Step::kSplit, std::make_shared<Regex>(pattern, where), pattern, behavior, invert};
  steps_.push_back(std::move(s));
}

void PreTokenizer::add_prefix_space() { steps_.push_back(Step{Step::kPrefixSpace, nullptr, {}, {}, false}); }

bool PreTokenizer::is_llama3() const {
  return steps_.size() == 1 && steps_[0].kind == Step::kSplit && steps_[0].pattern == kLlama3Pattern &&
         steps_[0].behavior == Behavior::kIsolated && !steps_[0].invert;
}

bool PreTokenizer::is_gpt2() const {
  return steps_.size() == 1 && steps_[0].kind == Step::kSplit && steps_[0].pattern == kGpt2Pattern &&
         steps_[0].behavior == Behavior::kIsolated && !steps_[0].invert;
}

void PreTokenizer::apply_split(const Step& s, std::string_view piece, std::vector<std::string_view>& out,
                               std::vector<std::pair<uint32_t, uint32_t>>& matches) const {
  matches.clear();
  s.regex->find_all(piece, matches);
  // Walk matches and gaps in order as (range, is_match) segments; `invert` swaps the roles.
  const size_t first_out = out.size();
  bool pending_next = false;  // kMergedWithNext: a match waiting to be glued to the next segment
  size_t pending_begin = 0;
  bool last_was_match = false;
  auto emit = [&](size_t b, size_t e, bool is_match) {
    if (e <= b) return;
    switch (s.behavior) {
      case Behavior::kIsolated:
        out.push_back(piece.substr(b, e - b));
        break;
      case Behavior::kRemoved:
        if (!is_match) out.push_back(piece.substr(b, e - b));
        break;
      case Behavior::kMergedWithPrevious:  // a match joins the text before it (not another match)
        if (is_match && !last_was_match && out.size() > first_out) {
          std::string_view& prev = out.back();
          prev = std::string_view(prev.data(), prev.size() + (e - b));
        } else {
          out.push_back(piece.substr(b, e - b));
        }
        break;
      case Behavior::kMergedWithNext:  // a match joins the text after it (not another match)
        if (is_match) {
          if (pending_next) out.push_back(piece.substr(pending_begin, b - pending_begin));
          pending_begin = b;
          pending_next = true;
        } else if (pending_next) {
          out.push_back(piece.substr(pending_begin, e - pending_begin));
          pending_next = false;
        } else {
          out.push_back(piece.substr(b, e - b));
        }
        break;
      case Behavior::kContiguous:
        if (is_match && last_was_match && out.size() > first_out) {
          std::string_view& prev = out.back();
          prev = std::string_view(prev.data(), prev.size() + (e - b));
        } else {
          out.push_back(piece.substr(b, e - b));
        }
        break;
    }
    last_was_match = is_match;
  };
  size_t cur = 0;
  for (auto [b, e] : matches) {
    emit(cur, b, s.invert);
    emit(b, e, !s.invert);
    cur = e;
  }
  emit(cur, piece.size(), s.invert);
  if (pending_next) out.push_back(piece.substr(pending_begin));
}

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& pieces,
                         std::deque<std::string>& arena) const {
  pieces.clear();
  if (text.empty()) return;
  pieces.push_back(text);
  std::vector<std::string_view> next;
  std::vector<std::pair<uint32_t, uint32_t>> matches;
  for (const Step& s : steps_) {
    next.clear();
    next.reserve(pieces.size() * 2);
    for (std::string_view p : pieces) {
      if (s.kind == Step::kPrefixSpace) {
        if (!p.empty() && p.front() != ' ') {
          arena.push_back(" " + std::string(p));
          next.push_back(arena.back());
        } else {
          next.push_back(p);
        }
      } else {
        apply_split(s, p, next, matches);
      }
    }
    pieces.swap(next);
  }
}

}  // namespace onebit::tok
