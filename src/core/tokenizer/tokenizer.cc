#include "core/tokenizer/tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <deque>
#include <queue>
#include <unordered_map>

#include "core/base/error.h"
#include "core/tokenizer/byte_level.h"
#include "core/tokenizer/pre_tokenizer.h"

namespace onebit {
namespace {

using tok::PreTokenizer;

// Ids beyond this are rejected: no real vocabulary comes close, and it bounds memory on bad input.
constexpr int64_t kMaxVocab = int64_t(1) << 24;

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StrMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

enum : uint8_t { kFlagSpecial = 1, kFlagAdded = 2, kFlagVocab = 4 };

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

struct Merge {
  int32_t rank;
  int32_t id;
};

inline uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

// Leftmost-longest matcher over the added tokens' contents (a byte trie).
class AddedTrie {
 public:
  void clear() {
    nodes_.assign(1, Node{});
    first_.fill(-1);
  }
  void insert(std::string_view s, int32_t index) {
    if (nodes_.empty()) clear();
    int32_t node = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      const uint8_t c = uint8_t(s[i]);
      int32_t next = i == 0 ? first_[c] : child(node, c);
      if (next < 0) {
        next = int32_t(nodes_.size());
        nodes_.push_back(Node{});
        if (i == 0) {
          first_[c] = next;
        } else {
          nodes_[node].kids.emplace_back(c, next);
        }
      }
      node = next;
    }
    nodes_[node].index = index;
  }
  bool empty() const { return nodes_.size() <= 1; }
  // Longest token starting at text[pos]: returns its index and sets `len`, or -1.
  int32_t longest_at(std::string_view text, size_t pos, size_t& len) const {
    int32_t node = first_[uint8_t(text[pos])];
    int32_t best = -1;
    size_t j = pos + 1;
    while (node >= 0) {
      if (nodes_[node].index >= 0) best = nodes_[node].index, len = j - pos;
      if (j >= text.size()) break;
      node = child(node, uint8_t(text[j++]));
    }
    return best;
  }
  bool may_start(uint8_t c) const { return first_[c] >= 0; }

 private:
  struct Node {
    int32_t index = -1;
    std::vector<std::pair<uint8_t, int32_t>> kids;
  };
  int32_t child(int32_t node, uint8_t c) const {
    for (auto [k, n] : nodes_[node].kids)
      if (k == c) return n;
    return -1;
  }
  std::vector<Node> nodes_{Node{}};
  std::array<int32_t, 256> first_ = [] {
    std::array<int32_t, 256> a{};
    a.fill(-1);
    return a;
  }();
};

}  // namespace

struct Tokenizer::Impl {
  std::vector<std::string> text;   // entry as written in the file
  std::vector<std::string> piece;  // raw bytes it decodes to
  std::vector<uint8_t> flags;
  StrMap<int32_t> text_to_id;      // every entry (vocab and added)
  StrMap<int32_t> vocab_to_id;     // BPE model vocabulary, by text
  StrMap<int32_t> bytes_to_id;     // BPE model vocabulary, by raw bytes (entries BPE can produce)
  std::array<int32_t, 256> byte_id{};
  int32_t unk_id = -1;
  std::unordered_map<uint64_t, Merge> merges;
  std::vector<std::pair<int32_t, int32_t>> merge_list;  // by rank, for export
  bool ignore_merges = false;
  PreTokenizer pre;
  std::vector<AddedToken> added;
  AddedTrie trie;
  std::vector<int32_t> prefix, suffix;  // add_special_tokens
  int32_t bos = -1, eos = -1, eot = -1;
  std::string source;  // "tokenizer.json" / "GGUF vocab", for messages

  // ---- building ----
  void ensure_id(int64_t id, std::string_view what) {
    if (id < 0 || id >= kMaxVocab) fail("{}: {} has id {}, expected 0..{}", source, what, id, kMaxVocab - 1);
    if (size_t(id) >= text.size()) {
      text.resize(size_t(id) + 1);
      piece.resize(size_t(id) + 1);
      flags.resize(size_t(id) + 1, 0);
    }
  }
  void add_vocab(std::string_view t, int64_t id) {
    ensure_id(id, fmt::format("vocab entry \"{}\"", t));
    text[id] = std::string(t);
    flags[id] |= kFlagVocab;
    vocab_to_id[std::string(t)] = int32_t(id);
    text_to_id[std::string(t)] = int32_t(id);
  }
  void add_added(AddedToken a) {
    ensure_id(a.id, fmt::format("added token \"{}\"", a.content));
    if (a.content.empty()) fail("{}: added token {} has empty content", source, a.id);
    text[a.id] = a.content;
    flags[a.id] |= kFlagAdded | (a.special ? kFlagSpecial : 0);
    text_to_id[a.content] = a.id;
    added.push_back(std::move(a));
  }
  int32_t vocab_id(std::string_view t, size_t rank) const {
    auto it = vocab_to_id.find(t);
    if (it == vocab_to_id.end()) fail("{}: merge #{} uses \"{}\", which is not in the vocabulary", source, rank, t);
    return it->second;
  }
  void add_merge(std::string_view a, std::string_view b, size_t rank) {
    const int32_t ia = vocab_id(a, rank), ib = vocab_id(b, rank);
    std::string ab;
    ab.reserve(a.size() + b.size());
    ab.append(a).append(b);
    const int32_t iab = vocab_id(ab, rank);
    // Like Hugging Face, a repeated pair keeps the later rank.
    merges[pair_key(ia, ib)] = Merge{int32_t(rank), iab};
    merge_list.emplace_back(ia, ib);
  }
  void finish() {
    for (size_t id = 0; id < text.size(); ++id) {
      piece[id].clear();
      if (flags[id] & kFlagAdded) {
        piece[id] = text[id];  // added tokens are literal text
      } else if (flags[id] & kFlagVocab) {
        if (tok::byte_level_decode(text[id], piece[id])) bytes_to_id.emplace(piece[id], int32_t(id));
      }
    }
    // A vocabulary entry that is also an added token stays reachable by BPE under its bytes.
    for (const AddedToken& a : added) {
      if (auto it = vocab_to_id.find(a.content); it != vocab_to_id.end()) {
        std::string raw;
        if (tok::byte_level_decode(a.content, raw)) bytes_to_id.emplace(raw, it->second);
      }
    }
    byte_id.fill(-1);
    for (int b = 0; b < 256; ++b) {
      if (auto it = bytes_to_id.find(std::string(1, char(b))); it != bytes_to_id.end()) byte_id[b] = it->second;
    }
    trie.clear();
    for (size_t i = 0; i < added.size(); ++i) trie.insert(added[i].content, int32_t(i));
    if (eot < 0) eot = eos;
  }
  int32_t find_text(std::string_view t) const {
    auto it = text_to_id.find(t);
    return it == text_to_id.end() ? -1 : it->second;
  }
  void guess_special_ids() {
    auto first_of = [&](std::initializer_list<std::string_view> names) {
      for (auto n : names)
        if (int32_t id = find_text(n); id >= 0) return id;
      return int32_t(-1);
    };
    if (bos < 0) bos = first_of({"<|begin_of_text|>", "<s>", "<|startoftext|>", "<bos>"});
    if (eos < 0) eos = first_of({"<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>"});
    if (eot < 0) eot = first_of({"<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>"});
  }

  // ---- encoding ----
  struct Scratch {
    struct Sym {
      int32_t id, prev, next;
    };
    struct Cand {
      int32_t rank, pos, id;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::vector<Sym> syms;
    std::vector<Cand> heap;
    std::vector<std::string_view> pieces;
    std::deque<std::string> arena;
    std::unordered_map<std::string_view, std::pair<uint32_t, uint32_t>> cache;
    std::vector<int32_t> cache_ids;
  };

  void bpe_word(std::string_view w, std::vector<int32_t>& out, Scratch& s) const {
    if (w.empty()) return;
    if (w.size() == 1) {
      if (int32_t id = byte_id[uint8_t(w[0])]; id >= 0) out.push_back(id);
      else if (unk_id >= 0) out.push_back(unk_id);
      return;
    }
    if (ignore_merges) {
      if (auto it = bytes_to_id.find(w); it != bytes_to_id.end()) {
        out.push_back(it->second);
        return;
      }
    }
    constexpr size_t kMaxCachedWord = 128;
    if (w.size() <= kMaxCachedWord) {
      if (auto it = s.cache.find(w); it != s.cache.end()) {
        out.insert(out.end(), s.cache_ids.begin() + it->second.first,
                   s.cache_ids.begin() + it->second.first + it->second.second);
        return;
      }
    }
    const size_t out_begin = out.size();
    auto& syms = s.syms;
    syms.clear();
    for (unsigned char c : w) {
      const int32_t id = byte_id[c] >= 0 ? byte_id[c] : unk_id;
      if (id < 0) continue;  // no token for this byte and no unk: dropped, as Hugging Face does
      const int32_t i = int32_t(syms.size());
      syms.push_back({id, i - 1, -1});
      if (i > 0) syms[i - 1].next = i;
    }
    auto& heap = s.heap;
    heap.clear();
    auto consider = [&](int32_t i) {
      if (i < 0 || syms[i].next < 0) return;
      auto it = merges.find(pair_key(syms[i].id, syms[syms[i].next].id));
      if (it == merges.end()) return;
      heap.push_back({it->second.rank, i, it->second.id});
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    };
    for (int32_t i = 0; i + 1 < int32_t(syms.size()); ++i) consider(i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<>());
      const Scratch::Cand c = heap.back();
      heap.pop_back();
      Scratch::Sym& left = syms[c.pos];
      if (left.id < 0 || left.next < 0) continue;  // merged away since it was queued
      auto it = merges.find(pair_key(left.id, syms[left.next].id));
      if (it == merges.end() || it->second.rank != c.rank || it->second.id != c.id) continue;  // stale
      const int32_t right = left.next;
      left.id = c.id;
      left.next = syms[right].next;
      if (left.next >= 0) syms[left.next].prev = c.pos;
      syms[right].id = -1;
      consider(left.prev);
      consider(c.pos);
    }
    for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
    if (w.size() <= kMaxCachedWord && s.cache.size() < 100000) {
      const uint32_t at = uint32_t(s.cache_ids.size()), n = uint32_t(out.size() - out_begin);
      s.cache_ids.insert(s.cache_ids.end(), out.begin() + out_begin, out.end());
      s.cache.emplace(w, std::make_pair(at, n));
    }
  }

  void encode_plain(std::string_view text, std::vector<int32_t>& out, Scratch& s) const {
    if (text.empty()) return;
    if (pre.empty()) {
      bpe_word(text, out, s);
      return;
    }
    pre.split(text, s.pieces, s.arena);
    for (std::string_view p : s.pieces) bpe_word(p, out, s);
  }

  static bool is_word_char(char32_t cp) {
    if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
    return !tok::is_unicode_whitespace(cp);
  }
  // The character that ends just before byte `pos` (or -1), and where it starts.
  static int64_t char_before(std::string_view t, size_t pos, size_t& start) {
    if (pos == 0) return -1;
    size_t b = pos - 1;
    while (b > 0 && pos - b < 4 && (uint8_t(t[b]) & 0xC0) == 0x80) --b;
    auto sc = tok::utf8_scan(reinterpret_cast<const uint8_t*>(t.data()) + b, pos - b);
    if (sc.kind != tok::Utf8Scan::kValid || b + sc.len != pos) return -1;
    start = b;
    return sc.cp;
  }
  static int64_t char_at(std::string_view t, size_t pos, size_t& len) {
    if (pos >= t.size()) return -1;
    auto sc = tok::utf8_scan(reinterpret_cast<const uint8_t*>(t.data()) + pos, t.size() - pos);
    if (sc.kind != tok::Utf8Scan::kValid) return -1;
    len = sc.len;
    return sc.cp;
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 8);
    if (add_special) out.insert(out.end(), prefix.begin(), prefix.end());
    Scratch s;
    size_t start = 0;  // beginning of the plain text not yet encoded
    size_t pos = 0;
    if (!trie.empty()) {
      while (pos < text.size()) {
        if (!trie.may_start(uint8_t(text[pos]))) {
          ++pos;
          continue;
        }
        size_t len = 0;
        const int32_t idx = trie.longest_at(text, pos, len);
        if (idx < 0) {
          ++pos;
          continue;
        }
        const AddedToken& a = added[idx];
        size_t b = pos, e = pos + len;
        bool skip = a.special && !parse_special;
        if (!skip && a.single_word) {
          size_t cs = 0, cl = 0;
          const int64_t before = char_before(text, b, cs), after = char_at(text, e, cl);
          skip = (before >= 0 && is_word_char(char32_t(before))) || (after >= 0 && is_word_char(char32_t(after)));
        }
        if (skip) {  // the matched text stays plain text (and is not searched again)
          pos = e;
          continue;
        }
        if (a.lstrip) {
          size_t cs = 0;
          for (int64_t cp; b > start && (cp = char_before(text, b, cs)) >= 0 && tok::is_unicode_whitespace(char32_t(cp));)
            b = std::max(cs, start);
        }
        if (a.rstrip) {
          size_t cl = 0;
          for (int64_t cp; (cp = char_at(text, e, cl)) >= 0 && tok::is_unicode_whitespace(char32_t(cp));) e += cl;
        }
        encode_plain(text.substr(start, b - start), out, s);
        out.push_back(a.id);
        start = pos = e;
      }
    }
    encode_plain(text.substr(start), out, s);
    if (add_special) out.insert(out.end(), suffix.begin(), suffix.end());
    return out;
  }
};

namespace {

using json = nlohmann::json;

const json* member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

bool get_bool(const json& obj, const char* key, bool dflt, std::string_view where) {
  const json* v = member(obj, key);
  if (v == nullptr) return dflt;
  if (!v->is_boolean()) fail("tokenizer.json: {}.{} must be true or false", where, key);
  return v->get<bool>();
}

std::string get_string(const json& obj, const char* key, std::string_view where) {
  const json* v = member(obj, key);
  if (v == nullptr || !v->is_string()) fail("tokenizer.json: {}.{} must be a string", where, key);
  return v->get<std::string>();
}

int64_t get_id(const json& v, std::string_view where) {
  if (!v.is_number_integer()) fail("tokenizer.json: {} must be an integer id", where);
  return v.get<int64_t>();
}

std::string escape_literal(std::string_view s) {
  std::string out;
  for (char c : s) {
    const bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (!alnum && uint8_t(c) < 0x80) out += '\\';
    out += c;
  }
  return out;
}

// Adds the steps of one pre-tokenizer object; returns true when a ByteLevel step was seen.
bool parse_pre_tokenizer(const json& p, PreTokenizer& pre, int depth) {
  if (depth > 8) fail("tokenizer.json: pre_tokenizer nests Sequences too deeply");
  if (!p.is_object()) fail("tokenizer.json: pre_tokenizer must be an object");
  const std::string type = get_string(p, "type", "pre_tokenizer");
  if (type == "Sequence") {
    const json* list = member(p, "pretokenizers");
    if (list == nullptr || !list->is_array()) fail("tokenizer.json: pre_tokenizer Sequence needs a 'pretokenizers' array");
    bool byte_level = false;
    for (const json& q : *list) byte_level |= parse_pre_tokenizer(q, pre, depth + 1);
    return byte_level;
  }
  if (type == "ByteLevel") {
    if (get_bool(p, "add_prefix_space", false, "pre_tokenizer ByteLevel")) pre.add_prefix_space();
    if (get_bool(p, "use_regex", true, "pre_tokenizer ByteLevel"))
      pre.add_split(tok::kGpt2Pattern, PreTokenizer::Behavior::kIsolated, false, "pre_tokenizer ByteLevel");
    return true;
  }
  if (type == "Split") {
    const json* pat = member(p, "pattern");
    if (pat == nullptr || !pat->is_object()) fail("tokenizer.json: pre_tokenizer Split needs a 'pattern' object");
    std::string regex;
    if (const json* r = member(*pat, "Regex")) {
      if (!r->is_string()) fail("tokenizer.json: pre_tokenizer Split pattern.Regex must be a string");
      regex = r->get<std::string>();
    } else if (const json* s = member(*pat, "String")) {
      if (!s->is_string()) fail("tokenizer.json: pre_tokenizer Split pattern.String must be a string");
      regex = escape_literal(s->get<std::string>());
    } else {
      fail("tokenizer.json: pre_tokenizer Split pattern needs 'Regex' or 'String'");
    }
    const std::string behavior = member(p, "behavior") ? get_string(p, "behavior", "pre_tokenizer Split") : "Isolated";
    PreTokenizer::Behavior b;
    if (behavior == "Isolated") b = PreTokenizer::Behavior::kIsolated;
    else if (behavior == "Removed") b = PreTokenizer::Behavior::kRemoved;
    else if (behavior == "MergedWithPrevious") b = PreTokenizer::Behavior::kMergedWithPrevious;
    else if (behavior == "MergedWithNext") b = PreTokenizer::Behavior::kMergedWithNext;
    else if (behavior == "Contiguous") b = PreTokenizer::Behavior::kContiguous;
    else fail("tokenizer.json: pre_tokenizer Split behavior '{}' is not one of Isolated, Removed, "
              "MergedWithPrevious, MergedWithNext, Contiguous", behavior);
    pre.add_split(regex, b, get_bool(p, "invert", false, "pre_tokenizer Split"), "tokenizer.json: pre_tokenizer Split");
    return false;
  }
  if (type == "Digits") {
    const bool each = get_bool(p, "individual_digits", false, "pre_tokenizer Digits");
    pre.add_split(each ? "\\p{N}" : "\\p{N}+", PreTokenizer::Behavior::kIsolated, false, "pre_tokenizer Digits");
    return false;
  }
  fail("tokenizer.json: pre_tokenizer type '{}' is not supported (supported: Sequence, ByteLevel, Split, Digits)", type);
}

void parse_post_processor(const json& p, Tokenizer::Impl& t, int depth) {
  if (depth > 8 || !p.is_object()) return;
  const json* type = member(p, "type");
  if (type == nullptr || !type->is_string()) return;
  if (*type == "Sequence") {
    if (const json* list = member(p, "processors"); list && list->is_array())
      for (const json& q : *list) parse_post_processor(q, t, depth + 1);
    return;
  }
  if (*type != "TemplateProcessing") return;  // ByteLevel and others add no tokens
  const json* single = member(p, "single");
  const json* specials = member(p, "special_tokens");
  if (single == nullptr || !single->is_array()) fail("tokenizer.json: post_processor TemplateProcessing needs 'single'");
  bool seen_a = false;
  for (const json& piece : *single) {
    if (const json* st = member(piece, "SpecialToken")) {
      const std::string name = get_string(*st, "id", "post_processor.single SpecialToken");
      const json* entry = specials ? member(*specials, name.c_str()) : nullptr;
      const json* ids = entry ? member(*entry, "ids") : nullptr;
      if (ids == nullptr || !ids->is_array())
        fail("tokenizer.json: post_processor special_tokens has no ids for '{}'", name);
      for (const json& id : *ids) {
        const int64_t v = get_id(id, "post_processor special_tokens id");
        if (v < 0 || v >= kMaxVocab) fail("tokenizer.json: post_processor id {} out of range", v);
        (seen_a ? t.suffix : t.prefix).push_back(int32_t(v));
      }
    } else if (member(piece, "Sequence")) {
      seen_a = true;
    }
  }
}

std::unique_ptr<Tokenizer::Impl> parse_hf_json(std::string_view text) {
  auto t = std::make_unique<Tokenizer::Impl>();
  t->source = "tokenizer.json";
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    fail("tokenizer.json: not valid JSON: {}", e.what());
  }
  try {
    if (!j.is_object()) fail("tokenizer.json: expected a JSON object at the top level");
    const json* model = member(j, "model");
    if (model == nullptr || !model->is_object()) fail("tokenizer.json: missing 'model' object");
    if (const json* type = member(*model, "type"); type && *type != "BPE")
      fail("tokenizer.json: model.type is {}, only BPE (byte-level) is supported", type->dump());
    if (member(*model, "continuing_subword_prefix") || member(*model, "end_of_word_suffix"))
      fail("tokenizer.json: model.continuing_subword_prefix / end_of_word_suffix are not supported");
    if (const json* norm = member(j, "normalizer"))
      fail("tokenizer.json: normalizer {} is not supported (byte-level BPE tokenizers use none)",
           member(*norm, "type") ? member(*norm, "type")->dump() : norm->dump().substr(0, 60));
    t->ignore_merges = get_bool(*model, "ignore_merges", false, "model");

    const json* vocab = member(*model, "vocab");
    if (vocab == nullptr || !vocab->is_object()) fail("tokenizer.json: model.vocab must be an object of token -> id");
    t->text_to_id.reserve(vocab->size() + 512);
    t->vocab_to_id.reserve(vocab->size());
    for (auto it = vocab->begin(); it != vocab->end(); ++it)
      t->add_vocab(it.key(), get_id(it.value(), fmt::format("model.vocab[\"{}\"]", it.key())));

    if (const json* unk = member(*model, "unk_token")) {
      if (!unk->is_string()) fail("tokenizer.json: model.unk_token must be a string or null");
      t->unk_id = t->find_text(unk->get<std::string>());
    }

    if (const json* added = member(j, "added_tokens")) {
      if (!added->is_array()) fail("tokenizer.json: added_tokens must be an array");
      for (const json& a : *added) {
        AddedToken at;
        if (!a.is_object() || !member(a, "id")) fail("tokenizer.json: each added_tokens entry needs an id");
        at.id = int32_t(std::clamp<int64_t>(get_id(a["id"], "added_tokens[].id"), -1, kMaxVocab));
        at.content = get_string(a, "content", "added_tokens[]");
        at.special = get_bool(a, "special", false, "added_tokens[]");
        at.lstrip = get_bool(a, "lstrip", false, "added_tokens[]");
        at.rstrip = get_bool(a, "rstrip", false, "added_tokens[]");
        at.single_word = get_bool(a, "single_word", false, "added_tokens[]");
        at.normalized = get_bool(a, "normalized", !at.special, "added_tokens[]");
        t->add_added(std::move(at));
      }
    }

    const json* merges = member(*model, "merges");
    if (merges != nullptr) {
      if (!merges->is_array()) fail("tokenizer.json: model.merges must be an array");
      t->merges.reserve(merges->size());
      t->merge_list.reserve(merges->size());
      size_t rank = 0;
      for (const json& m : *merges) {
        if (m.is_string()) {
          const std::string& s = m.get_ref<const std::string&>();
          const size_t sp = s.find(' ');
          if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
            fail("tokenizer.json: merge #{} \"{}\" must be two tokens separated by one space", rank, s);
          t->add_merge(std::string_view(s).substr(0, sp), std::string_view(s).substr(sp + 1), rank);
        } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
          t->add_merge(m[0].get_ref<const std::string&>(), m[1].get_ref<const std::string&>(), rank);
        } else {
          fail("tokenizer.json: merge #{} must be \"a b\" or [\"a\", \"b\"]", rank);
        }
        ++rank;
      }
    }

    bool byte_level = false;
    if (const json* pre = member(j, "pre_tokenizer")) byte_level = parse_pre_tokenizer(*pre, t->pre, 0);
    if (!byte_level)
      fail("tokenizer.json: only byte-level BPE is supported, and pre_tokenizer has no ByteLevel step");
    if (const json* post = member(j, "post_processor")) parse_post_processor(*post, *t, 0);
    for (int32_t id : t->prefix)
      if (size_t(id) >= t->text.size()) fail("tokenizer.json: post_processor id {} is not in the vocabulary", id);
    for (int32_t id : t->suffix)
      if (size_t(id) >= t->text.size()) fail("tokenizer.json: post_processor id {} is not in the vocabulary", id);
    if (!t->prefix.empty()) t->bos = t->prefix.front();
    t->guess_special_ids();
  } catch (const json::exception& e) {
    fail("tokenizer.json: {}", e.what());
  }
  if (t->text.empty()) fail("tokenizer.json: the vocabulary is empty");
  return t;
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_hf_json(std::string_view json) {
  auto t = parse_hf_json(json);
  t->finish();
  return Tokenizer(std::move(t));
}

Tokenizer Tokenizer::from_gguf(const TokenizerData& d) {
  auto t = std::make_unique<Impl>();
  t->source = "GGUF tokenizer";
  if (d.model != "gpt2")
    fail("GGUF tokenizer: tokenizer.ggml.model is '{}', only 'gpt2' (byte-level BPE) is supported", d.model);
  if (d.tokens.empty()) fail("GGUF tokenizer: tokenizer.ggml.tokens is empty");
  if (int64_t(d.tokens.size()) > kMaxVocab) fail("GGUF tokenizer: {} tokens is too many", d.tokens.size());
  if (!d.token_types.empty() && d.token_types.size() != d.tokens.size())
    fail("GGUF tokenizer: tokenizer.ggml.token_type has {} entries, tokens has {}", d.token_types.size(), d.tokens.size());
  if (d.pre == "llama-bpe" || d.pre == "llama3" || d.pre == "default" || d.pre.empty()) {
    t->pre.add_split(tok::kLlama3Pattern, PreTokenizer::Behavior::kIsolated, false, "GGUF pre llama-bpe");
    t->ignore_merges = true;
  } else if (d.pre == "gpt2") {
    t->pre.add_split(tok::kGpt2Pattern, PreTokenizer::Behavior::kIsolated, false, "GGUF pre gpt2");
  } else {
    fail("GGUF tokenizer: tokenizer.ggml.pre '{}' is not supported (supported: llama-bpe, llama3, default, gpt2)", d.pre);
  }
  t->text_to_id.reserve(d.tokens.size());
  t->vocab_to_id.reserve(d.tokens.size());
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    const int32_t type = d.token_types.empty() ? 1 : d.token_types[i];
    if (type == 3 || type == 4) {
      AddedToken a;
      a.id = int32_t(i);
      a.content = d.tokens[i];
      a.special = type == 3;
      if (a.content.empty()) continue;  // an unusable control entry; it can still be decoded (as nothing)
      t->add_added(std::move(a));
    } else {
      t->add_vocab(d.tokens[i], int64_t(i));
    }
  }
  t->merges.reserve(d.merges.size());
  for (size_t r = 0; r < d.merges.size(); ++r) {
    const std::string& s = d.merges[r];
    const size_t sp = s.find(' ');
    if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
      fail("GGUF tokenizer: merge #{} \"{}\" must be two tokens separated by one space", r, s);
    t->add_merge(std::string_view(s).substr(0, sp), std::string_view(s).substr(sp + 1), r);
  }
  const int64_t n = int64_t(d.tokens.size());
  auto check = [&](int64_t id, const char* what) {
    if (id >= n) fail("GGUF tokenizer: {} id {} is outside the vocabulary of {}", what, id, n);
    return id < 0 ? int32_t(-1) : int32_t(id);
  };
  t->bos = check(d.bos_id, "bos");
  t->eos = check(d.eos_id, "eos");
  t->eot = check(d.eot_id, "eot");
  t->unk_id = check(d.unk_id, "unk");
  t->guess_special_ids();
  if (d.add_bos && t->bos >= 0) t->prefix = {t->bos};
  t->finish();
  return Tokenizer(std::move(t));
}

Tokenizer Tokenizer::from_data(const TokenizerData& d) {
  if (d.hf_json.empty()) return from_gguf(d);
  auto t = parse_hf_json(d.hf_json);
  const int64_t n = int64_t(t->text.size());
  auto override_id = [&](int64_t id, int32_t& dst) {
    if (id >= 0 && id < n) dst = int32_t(id);
  };
  override_id(d.bos_id, t->bos);
  override_id(d.eos_id, t->eos);
  override_id(d.eot_id, t->eot);
  if (d.add_bos && t->bos >= 0 && t->prefix.empty()) t->prefix = {t->bos};
  t->finish();
  return Tokenizer(std::move(t));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens, bool parse_special) const {
  return impl_->encode(text, add_special_tokens, parse_special);
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string raw;
  for (int32_t id : ids) {
    if (id < 0 || size_t(id) >= impl_->piece.size()) fail("decode: token id {} is outside the vocabulary (0..{})", id, n_vocab() - 1);
    if (skip_special && (impl_->flags[id] & kFlagSpecial)) continue;
    raw += impl_->piece[id];
  }
  std::string out;
  out.reserve(raw.size());
  tok::append_utf8_lossy(raw, out);
  return out;
}

std::string Tokenizer::token_piece(int32_t id) const {
  if (id < 0 || size_t(id) >= impl_->piece.size()) fail("token id {} is outside the vocabulary (0..{})", id, n_vocab() - 1);
  return impl_->piece[id];
}

std::string Tokenizer::token_text(int32_t id) const {
  if (id < 0 || size_t(id) >= impl_->text.size()) fail("token id {} is outside the vocabulary (0..{})", id, n_vocab() - 1);
  return impl_->text[id];
}

int32_t Tokenizer::n_vocab() const { return int32_t(impl_->text.size()); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token_text) const {
  const int32_t id = impl_->find_text(token_text);
  return id >= 0 ? std::optional<int32_t>(id) : std::nullopt;
}

int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
int32_t Tokenizer::eot_id() const { return impl_->eot; }

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->flags.size() && (impl_->flags[id] & kFlagSpecial);
}
bool Tokenizer::is_added(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->flags.size() && (impl_->flags[id] & kFlagAdded);
}

std::string StreamDecoder::push(int32_t id) {
  if (skip_special_ && tok_->is_special(id)) return drain(false);
  pending_ += tok_->token_piece(id);
  return drain(false);
}

std::string StreamDecoder::flush() { return drain(true); }

std::string StreamDecoder::drain(bool final) {
  std::string out;
  const auto* p = reinterpret_cast<const uint8_t*>(pending_.data());
  const size_t n = pending_.size();
  size_t i = 0;
  while (i < n) {
    const tok::Utf8Scan s = tok::utf8_scan(p + i, n - i);
    if (s.kind == tok::Utf8Scan::kIncomplete && !final) break;  // wait for the rest of the character
    if (s.kind == tok::Utf8Scan::kValid) {
      out.append(pending_, i, s.len);
    } else {
      out += "\xEF\xBF\xBD";
    }
    i += s.len;
  }
  pending_.erase(0, i);
  return out;
}

TokenizerData gguf_vocab_from_hf_json(std::string_view json) {
  auto t = parse_hf_json(json);
  TokenizerData d;
  d.model = "gpt2";
  if (t->pre.is_llama3()) {
    d.pre = "llama-bpe";
  } else if (t->pre.is_gpt2()) {
    d.pre = "gpt2";
  } else {
    fail("tokenizer.json: its pre_tokenizer has no GGUF equivalent (only the LLaMA-3 and GPT-2 splits map to "
         "tokenizer.ggml.pre)");
  }
  const size_t n = t->text.size();
  d.tokens.resize(n);
  d.token_types.resize(n);
  for (size_t id = 0; id < n; ++id) {
    const uint8_t f = t->flags[id];
    if (f & kFlagAdded) {
      d.tokens[id] = t->text[id];
      d.token_types[id] = (f & kFlagSpecial) ? 3 : 4;
    } else if (f & kFlagVocab) {
      d.tokens[id] = t->text[id];
      d.token_types[id] = 1;
    } else {
      d.tokens[id] = fmt::format("[PAD{}]", id);
      d.token_types[id] = 5;
    }
  }
  d.merges.reserve(t->merge_list.size());
  for (auto [a, b] : t->merge_list) {
    if (t->text[a].find(' ') != std::string::npos || t->text[b].find(' ') != std::string::npos)
      fail("tokenizer.json: merge \"{}\" + \"{}\" contains a space and cannot be written as a GGUF merge",
           t->text[a], t->text[b]);
    d.merges.push_back(t->text[a] + " " + t->text[b]);
  }
  d.bos_id = t->bos;
  d.eos_id = t->eos;
  d.eot_id = t->eot >= 0 ? t->eot : t->eos;
  d.unk_id = t->unk_id;
  d.add_bos = !t->prefix.empty() && t->prefix.front() == t->bos;
  return d;
}

}  // namespace onebit
