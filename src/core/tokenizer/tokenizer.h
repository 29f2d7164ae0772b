// Tokenizer: byte-level BPE (GPT-2 / LLaMA-3 family) text <-> token ids.
//
// Built from a Hugging Face tokenizer.json or from a GGUF-style vocabulary (tokenizer.ggml.*), and
// meant to give exactly the ids Hugging Face `tokenizers` gives for
// `encode(text, add_special_tokens=False)`. Encoding runs: added tokens are cut out first
// (leftmost-longest, honouring lstrip/rstrip/single_word), the rest goes through the pre-tokenizer
// (PCRE2 regex split) and each piece through BPE (merges by rank, leftmost first on ties; with
// `ignore_merges` a piece that is itself in the vocabulary is emitted whole).
//
// Input text is bytes: ill-formed UTF-8 never crashes, it is encoded byte by byte. Decoding gives
// valid UTF-8 (ill-formed byte sequences become U+FFFD, as Hugging Face does).
//
// A Tokenizer is immutable after construction; encode/decode may be called from several threads.
// Only byte-level BPE is supported; other models (SentencePiece "llama", WordPiece, ...) are
// rejected with an Error when loading.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/model.h"

namespace onebit {

class Tokenizer {
 public:
  // Parses a tokenizer.json document. Throws Error naming the field at fault.
  static Tokenizer from_hf_json(std::string_view json);
  // Builds from GGUF arrays: model "gpt2" (byte-level BPE); pre "llama-bpe"/"llama3"/"default"/""
  // (LLaMA-3 split, ignore_merges) or "gpt2"; token types 3 (control) = special added tokens,
  // 4 (user-defined) = added tokens that are not special. Throws Error on anything else.
  static Tokenizer from_gguf(const TokenizerData& data);
  // from_hf_json when data.hf_json is set, else from_gguf. Ids set in `data` (bos/eos/eot >= 0)
  // override what the tokenizer.json implies.
  static Tokenizer from_data(const TokenizerData& data);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // add_special_tokens: wrap with what the post-processor (or GGUF add_bos) prescribes, e.g. BOS.
  // parse_special: when false, special tokens written in the text ("<|eot_id|>") are encoded as
  // plain text; non-special added tokens are still recognised.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false,
                              bool parse_special = true) const;
  // Concatenates the pieces and replaces ill-formed UTF-8 by U+FFFD. Unknown ids throw Error.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;
  // The raw bytes token `id` stands for (may be part of a UTF-8 character). Throws Error if out of range.
  std::string token_piece(int32_t id) const;
  // The vocabulary entry as written in the file (byte-level alphabet, or an added token's content).
  std::string token_text(int32_t id) const;

  int32_t n_vocab() const;
  std::optional<int32_t> token_to_id(std::string_view token_text) const;
  int32_t bos_id() const;  // -1 when the tokenizer has none
  int32_t eos_id() const;
  int32_t eot_id() const;  // end of turn (<|eot_id|>), or eos when there is none
  bool is_special(int32_t id) const;  // control tokens: skipped by decode(skip_special=true)
  bool is_added(int32_t id) const;    // cut out of the text before pre-tokenizing

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Turns token ids into text incrementally for streaming output: push() returns only complete UTF-8
// characters, holding back the bytes of a character whose remaining bytes are in later tokens.
// Ill-formed sequences become U+FFFD as soon as they are known to be ill-formed.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special = false) : tok_(&tok), skip_special_(skip_special) {}
  std::string push(int32_t id);
  // Returns what is still held back (an incomplete character becomes U+FFFD) and resets.
  std::string flush();

 private:
  std::string drain(bool final);
  const Tokenizer* tok_;
  bool skip_special_;
  std::string pending_;
};

// Converts a tokenizer.json into GGUF vocabulary arrays: tokens in id order (added tokens included,
// holes filled with "[PAD<id>]" of type 5), token_types (1 normal, 3 control, 4 user-defined),
// merges as "a b", model "gpt2", pre "llama-bpe" (or "gpt2" for the GPT-2 split), bos/eos/eot where
// the file names them. Throws Error when the tokenizer cannot be expressed that way.
TokenizerData gguf_vocab_from_hf_json(std::string_view json);

}  // namespace onebit
