// ChatTemplate: turns a conversation into the prompt text a model was trained on, by running the
// Jinja2 chat template that ships with the model (tokenizer_config.json `chat_template`, GGUF
// `tokenizer.chat_template`).
//
// The interpreter implements the Jinja2 subset that real chat templates use, with the semantics
// of transformers' chat-template environment (trim_blocks and lstrip_blocks on, tojson without
// HTML escaping and with key order kept, raise_exception, strftime_now, loop controls). The
// supported subset is listed in docs/chat-templates.md.
//
// A template is outside input: parse() and render() never crash, recurse without bound or run
// without bound; every failure (syntax error, runtime error, a limit, raise_exception in the
// template) is thrown as onebit::Error. Syntax and runtime errors name the line and column.
// raise_exception(msg) throws Error whose what() is exactly msg.
//
// Thread safety: a parsed ChatTemplate is immutable; render()/apply() may run concurrently.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace onebit {

struct ChatMessage {
  std::string role;
  std::string content;
};

class ChatTemplate {
 public:
  struct Limits {
    int max_depth = 64;                  // nesting of blocks and expressions in the source
    size_t max_output_bytes = 4u << 20;  // the rendered text, and any string or list built
    uint64_t max_steps = 1'000'000;      // evaluation steps per render
    int max_call_depth = 32;             // macro recursion
  };

  static ChatTemplate parse(std::string_view source) { return parse(source, Limits{}); }
  static ChatTemplate parse(std::string_view source, const Limits& limits);

  // Renders with `context` (a JSON object) as the template's variables. Object key order is kept
  // when an ordered_json is given (it shows in tojson output); nlohmann::json sorts keys.
  std::string render(const nlohmann::json& context) const;
  std::string render(const nlohmann::ordered_json& context) const;

  // What transformers' apply_chat_template(messages, tokenize=False, add_generation_prompt=...)
  // renders for a tokenizer whose only named special tokens are bos_token and eos_token: the
  // context is {messages, tools: None, documents: None, add_generation_prompt, bos_token, eos_token}.
  std::string apply(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                    const std::string& bos_token, const std::string& eos_token) const;

  const std::string& source() const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

// The template used for a model that ships none: BitNet b1.58 2B-4T's own template
// (`Role: content<|eot_id|>`, role capitalised, content trimmed, bos first, "Assistant: " prompt).
const std::string& default_chat_template();

}  // namespace onebit
