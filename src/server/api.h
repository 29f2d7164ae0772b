// The OpenAI-compatible request bodies `1bit serve` accepts, parsed and validated into plain
// structs, and the error object it answers with.
//
// Parsing is pure (no model, no sockets) so that every rule can be unit-tested. A body that is
// not what the API allows throws ApiError carrying the HTTP status and the OpenAI error fields:
// 400 invalid_request_error naming the field (`param`) for malformed JSON, wrong types and
// out-of-range values, and for fields this server does not support yet. JSON `null` is treated as
// an absent field, as OpenAI does. Unknown fields are ignored (clients send vendor extensions).
// Checks that need the model (model name, vocabulary size, context length) are made by the server.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "core/sampler/sampling_params.h"
#include "core/template/chat_template.h"

namespace onebit::server {

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = "", std::string code = "",
           std::string type = "invalid_request_error")
      : std::runtime_error(std::move(message)), status_(status), param_(std::move(param)),
        code_(std::move(code)), type_(std::move(type)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }  // "" = null
  const std::string& code() const { return code_; }    // "" = null
  const std::string& type() const { return type_; }

 private:
  int status_;
  std::string param_;
  std::string code_;
  std::string type_;
};

// {"error":{"message","type","param","code"}}; empty param/code become null.
nlohmann::json error_json(const ApiError& e);

// A chat completion (messages) or a text completion (prompt), ready for the scheduler once the
// server has rendered and tokenized it.
struct GenerationRequest {
  enum class Kind { kChat, kCompletion };
  Kind kind = Kind::kChat;
  std::string model;                  // as sent; "" when absent
  std::vector<ChatMessage> messages;  // kChat
  std::string prompt;                 // kCompletion
  SamplingParams sampling;            // max_tokens -1 = until the context is full
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage
  int n = 1;                          // completions of the prompt, 1..kMaxChoices
  // Chat: `logprobs` true, with `top_logprobs` (0..20) alternatives in sampling.n_logprobs.
  // Completions: `logprobs` an integer 0..5, the number of alternatives.
  bool logprobs = false;
  static constexpr int kMaxChoices = 8;
};

// POST /v1/chat/completions and POST /v1/completions bodies.
GenerationRequest parse_chat_request(std::string_view body);
GenerationRequest parse_completion_request(std::string_view body);

// POST /v1/embeddings: `input` is a string, an array of strings, an array of token ids, or an
// array of arrays of token ids (at most kMaxInputs inputs, none empty).
struct EmbeddingRequest {
  struct Input {
    bool is_tokens = false;
    std::string text;             // !is_tokens
    std::vector<int32_t> tokens;  // is_tokens
  };
  static constexpr size_t kMaxInputs = 2048;
  std::string model;  // "" when absent
  std::vector<Input> inputs;
  bool base64 = false;                // encoding_format "base64" (else "float")
  std::optional<int64_t> dimensions;  // the server accepts only the model's hidden size
};
EmbeddingRequest parse_embedding_request(std::string_view body);

// Standard base64 (RFC 4648, with padding) of raw bytes; /v1/embeddings' encoding_format "base64"
// sends each vector's little-endian float32 bytes this way.
std::string base64_encode(std::string_view bytes);

// POST /tokenize: {"content": string, "add_special": bool (default false)}.
struct TokenizeRequest {
  std::string content;
  bool add_special = false;
};
TokenizeRequest parse_tokenize_request(std::string_view body);

// POST /detokenize: {"tokens": [int, ...]}.
struct DetokenizeRequest {
  std::vector<int32_t> tokens;
};
DetokenizeRequest parse_detokenize_request(std::string_view body);

}  // namespace onebit::server
