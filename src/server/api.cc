#include "server/api.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <limits>

namespace onebit::server {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

[[noreturn]] void unsupported(const std::string& param, const std::string& what) {
  throw ApiError(400, fmt::format("{} is not supported by this server", what), param, "unsupported_parameter");
}

json parse_object(std::string_view body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw ApiError(400, "the request body is not valid JSON");
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object");
  return j;
}

// The field's value, or null when absent (null and absent mean the same).
const json* field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> get_number(const json& j, const char* name, double lo, double hi) {
  const json* v = field(j, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad(name, fmt::format("'{}' must be a number, got {}", name, v->type_name()));
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi)) bad(name, fmt::format("'{}' must be in [{}, {}], got {}", name, lo, hi, x));
  return x;
}

std::optional<int64_t> get_int(const json& j, const char* name, int64_t lo, int64_t hi) {
  const json* v = field(j, name);
  if (!v) return std::nullopt;
  int64_t x = 0;
  if (v->is_number_integer()) {
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi))
      bad(name, fmt::format("'{}' must be at most {}, got {}", name, hi, v->get<uint64_t>()));
    x = v->get<int64_t>();
  } else if (v->is_number_float() && std::isfinite(v->get<double>()) && std::floor(v->get<double>()) == v->get<double>() &&
             std::fabs(v->get<double>()) < 9e15) {
    x = static_cast<int64_t>(v->get<double>());  // 5.0 is an integer in JSON's eyes
  } else {
    bad(name, fmt::format("'{}' must be an integer, got {}", name, v->is_number() ? "a fraction" : v->type_name()));
  }
  if (x < lo || x > hi) bad(name, fmt::format("'{}' must be in [{}, {}], got {}", name, lo, hi, x));
  return x;
}

std::optional<bool> get_bool(const json& j, const char* name) {
  const json* v = field(j, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad(name, fmt::format("'{}' must be a boolean, got {}", name, v->type_name()));
  return v->get<bool>();
}

// Fields shared by chat and text completions.
void parse_common(const json& j, GenerationRequest* r, const char* max_tokens_name) {
  if (const json* v = field(j, "model")) {
    if (!v->is_string()) bad("model", fmt::format("'model' must be a string, got {}", v->type_name()));
    r->model = v->get<std::string>();
  }
  SamplingParams& sp = r->sampling;
  sp.penalty_last_n = -1;  // OpenAI's penalties count every token so far
  if (auto x = get_number(j, "temperature", 0.0, 2.0)) sp.temperature = static_cast<float>(*x);
  if (const json* v = field(j, "top_p"); v && v->is_number() && v->get<double>() <= 0.0)
    bad("top_p", fmt::format("'top_p' must be in (0, 1], got {}", v->get<double>()));
  if (auto x = get_number(j, "top_p", 0.0, 1.0)) sp.top_p = static_cast<float>(*x);
  if (auto x = get_int(j, "top_k", 0, std::numeric_limits<int32_t>::max())) sp.top_k = static_cast<int32_t>(*x);
  if (auto x = get_number(j, "min_p", 0.0, 1.0)) sp.min_p = static_cast<float>(*x);
  if (auto x = get_number(j, "presence_penalty", -2.0, 2.0)) sp.presence_penalty = static_cast<float>(*x);
  if (auto x = get_number(j, "frequency_penalty", -2.0, 2.0)) sp.frequency_penalty = static_cast<float>(*x);
  if (auto x = get_int(j, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()))
    sp.seed = static_cast<uint64_t>(*x);
  for (const char* name : {"max_tokens", max_tokens_name}) {
    if (!name) continue;
    if (auto x = get_int(j, name, 1, std::numeric_limits<int32_t>::max())) sp.max_tokens = static_cast<int32_t>(*x);
  }

  if (const json* v = field(j, "stop")) {
    if (v->is_string()) {
      sp.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      if (v->size() > 4) bad("stop", fmt::format("'stop' may hold at most 4 strings, got {}", v->size()));
      for (const json& s : *v) {
        if (!s.is_string()) bad("stop", fmt::format("'stop' must hold strings, got {}", s.type_name()));
        sp.stop.push_back(s.get<std::string>());
      }
    } else {
      bad("stop", fmt::format("'stop' must be a string or an array of strings, got {}", v->type_name()));
    }
    for (const std::string& s : sp.stop) {
      if (s.empty()) bad("stop", "'stop' strings must not be empty");
      if (s.size() > SamplingParams::kMaxStopStringBytes)
        bad("stop", fmt::format("'stop' strings must be at most {} bytes, got {}", SamplingParams::kMaxStopStringBytes, s.size()));
    }
  }

  if (const json* v = field(j, "logit_bias")) {
    if (!v->is_object()) bad("logit_bias", fmt::format("'logit_bias' must be an object, got {}", v->type_name()));
    for (const auto& [key, val] : v->items()) {
      int64_t id = -1;
      const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (ec != std::errc() || end != key.data() + key.size() || id < 0 || id > std::numeric_limits<int32_t>::max())
        bad("logit_bias", fmt::format("'logit_bias' keys must be token ids, got \"{}\"", key));
      if (!val.is_number() || !(val.get<double>() >= -100.0 && val.get<double>() <= 100.0))
        bad("logit_bias", fmt::format("'logit_bias' values must be numbers in [-100, 100] (token {})", key));
      sp.logit_bias[static_cast<int32_t>(id)] = val.get<float>();
    }
  }

  if (auto x = get_bool(j, "stream")) r->stream = *x;
  if (const json* v = field(j, "stream_options")) {
    if (!v->is_object()) bad("stream_options", fmt::format("'stream_options' must be an object, got {}", v->type_name()));
    if (!r->stream) bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (const json* u = field(*v, "include_usage")) {
      if (!u->is_boolean()) bad("stream_options.include_usage", "'stream_options.include_usage' must be a boolean");
      r->include_usage = u->get<bool>();
    }
  }

  if (auto n = get_int(j, "n", 1, GenerationRequest::kMaxChoices)) r->n = static_cast<int>(*n);
  if (r->kind == GenerationRequest::Kind::kChat) {
    if (auto x = get_bool(j, "logprobs")) r->logprobs = *x;
    if (auto x = get_int(j, "top_logprobs", 0, SamplingParams::kMaxLogprobs)) {
      if (!r->logprobs) bad("top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
      sp.n_logprobs = static_cast<int32_t>(*x);
    }
  } else {
    // The legacy API: an integer, the number of alternatives per token (0 = the chosen one only).
    if (const json* v = field(j, "logprobs"); v && v->is_boolean())
      bad("logprobs", "'logprobs' must be an integer in [0, 5] for /v1/completions, got boolean");
    if (auto x = get_int(j, "logprobs", 0, 5)) {
      r->logprobs = true;
      sp.n_logprobs = static_cast<int32_t>(*x);
    }
    if (field(j, "top_logprobs")) bad("top_logprobs", "'top_logprobs' is a chat field; use 'logprobs' (0..5) here");
  }
  for (const char* name : {"tools", "tool_choice", "functions", "function_call", "audio", "prediction"}) {
    const json* v = field(j, name);
    if (v && !(v->is_array() && v->empty())) unsupported(name, fmt::format("'{}'", name));
  }
  if (const json* v = field(j, "response_format")) {
    const json* t = v->is_object() ? field(*v, "type") : nullptr;
    if (!t || !t->is_string()) bad("response_format", "'response_format' must be an object with a string 'type'");
    if (t->get<std::string>() != "text")
      unsupported("response_format", fmt::format("'response_format' of type '{}'", t->get<std::string>()));
  }
}

std::string message_content(const json& m, size_t i) {
  const std::string param = fmt::format("messages[{}].content", i);
  const json* c = field(m, "content");
  if (!c) return "";
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) bad(param, fmt::format("'{}' must be a string or an array of parts, got {}", param, c->type_name()));
  std::string text;
  for (const json& part : *c) {
    const json* type = part.is_object() ? field(part, "type") : nullptr;
    if (!type || !type->is_string()) bad(param, fmt::format("each part of '{}' must be an object with a 'type'", param));
    if (type->get<std::string>() != "text")
      unsupported(param, fmt::format("content part of type '{}'", type->get<std::string>()));
    const json* t = field(part, "text");
    if (!t || !t->is_string()) bad(param, fmt::format("a text part of '{}' must have a string 'text'", param));
    text += t->get<std::string>();
  }
  return text;
}

}  // namespace

json error_json(const ApiError& e) {
  json err = {{"message", e.what()}, {"type", e.type()}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param().empty()) err["param"] = e.param();
  if (!e.code().empty()) err["code"] = e.code();
  return json{{"error", std::move(err)}};
}

GenerationRequest parse_chat_request(std::string_view body) {
  const json j = parse_object(body);
  GenerationRequest r;
  r.kind = GenerationRequest::Kind::kChat;
  const json* msgs = field(j, "messages");
  if (!msgs) bad("messages", "'messages' is required");
  if (!msgs->is_array()) bad("messages", fmt::format("'messages' must be an array, got {}", msgs->type_name()));
  if (msgs->empty()) bad("messages", "'messages' must not be empty");
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    if (!m.is_object()) bad(fmt::format("messages[{}]", i), fmt::format("'messages[{}]' must be an object", i));
    const json* role = field(m, "role");
    const std::string rp = fmt::format("messages[{}].role", i);
    if (!role) bad(rp, fmt::format("'{}' is required", rp));
    if (!role->is_string()) bad(rp, fmt::format("'{}' must be a string", rp));
    std::string rs = role->get<std::string>();
    if (rs == "developer") rs = "system";  // OpenAI's newer name for the system role
    if (rs == "tool" || rs == "function") unsupported(rp, fmt::format("role '{}'", rs));
    if (rs != "system" && rs != "user" && rs != "assistant")
      bad(rp, fmt::format("'{}' must be one of system, developer, user, assistant; got '{}'", rp, rs));
    if (field(m, "tool_calls")) unsupported(fmt::format("messages[{}].tool_calls", i), "'tool_calls'");
    r.messages.push_back({std::move(rs), message_content(m, i)});
  }
  parse_common(j, &r, "max_completion_tokens");
  return r;
}

GenerationRequest parse_completion_request(std::string_view body) {
  const json j = parse_object(body);
  GenerationRequest r;
  r.kind = GenerationRequest::Kind::kCompletion;
  const json* p = field(j, "prompt");
  if (!p) bad("prompt", "'prompt' is required");
  if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) p = &(*p)[0];
  if (!p->is_string()) bad("prompt", fmt::format("'prompt' must be a string, got {}", p->type_name()));
  r.prompt = p->get<std::string>();
  for (const char* name : {"suffix", "best_of"}) {
    const json* v = field(j, name);
    if (v && !(std::string_view(name) == "best_of" && v->is_number_integer() && v->get<int64_t>() == 1))
      unsupported(name, fmt::format("'{}'", name));
  }
  if (auto echo = get_bool(j, "echo"); echo && *echo) unsupported("echo", "'echo'");
  r.sampling.max_tokens = 16;  // OpenAI's default for /v1/completions
  parse_common(j, &r, nullptr);
  return r;
}

EmbeddingRequest parse_embedding_request(std::string_view body) {
  const json j = parse_object(body);
  EmbeddingRequest r;
  if (const json* v = field(j, "model")) {
    if (!v->is_string()) bad("model", fmt::format("'model' must be a string, got {}", v->type_name()));
    r.model = v->get<std::string>();
  }
  const json* in = field(j, "input");
  if (!in) bad("input", "'input' is required");
  auto token_list = [](const json& a, const std::string& where) {
    std::vector<int32_t> ids;
    for (const json& id : a) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > std::numeric_limits<int32_t>::max())
        bad("input", fmt::format("'{}' must hold non-negative integer token ids", where));
      ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
    if (ids.empty()) bad("input", fmt::format("'{}' must not be empty", where));
    return ids;
  };
  auto text = [](const json& s, const std::string& where) {
    EmbeddingRequest::Input x;
    x.text = s.get<std::string>();
    if (x.text.empty()) bad("input", fmt::format("'{}' must not be an empty string", where));
    return x;
  };
  if (in->is_string()) {
    r.inputs.push_back(text(*in, "input"));
  } else if (in->is_array()) {
    if (in->empty()) bad("input", "'input' must not be an empty array");
    if (in->size() > EmbeddingRequest::kMaxInputs)
      bad("input", fmt::format("'input' may hold at most {} inputs, got {}", EmbeddingRequest::kMaxInputs, in->size()));
    if ((*in)[0].is_number()) {  // one input given as token ids
      r.inputs.push_back({true, "", token_list(*in, "input")});
    } else {
      for (size_t i = 0; i < in->size(); ++i) {
        const json& x = (*in)[i];
        const std::string where = fmt::format("input[{}]", i);
        if (x.is_string()) r.inputs.push_back(text(x, where));
        else if (x.is_array()) r.inputs.push_back({true, "", token_list(x, where)});
        else bad("input", fmt::format("'{}' must be a string or an array of token ids, got {}", where, x.type_name()));
      }
    }
  } else {
    bad("input", fmt::format("'input' must be a string, an array of strings or an array of token ids, got {}",
                             in->type_name()));
  }
  if (const json* v = field(j, "encoding_format")) {
    if (!v->is_string() || (v->get<std::string>() != "float" && v->get<std::string>() != "base64"))
      bad("encoding_format", "'encoding_format' must be \"float\" or \"base64\"");
    r.base64 = v->get<std::string>() == "base64";
  }
  if (auto d = get_int(j, "dimensions", 1, std::numeric_limits<int32_t>::max())) r.dimensions = *d;
  return r;
}

std::string base64_encode(std::string_view bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  auto at = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(bytes[k])); };
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t v = at(i) << 16 | at(i + 1) << 8 | at(i + 2);
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(v >> s) & 63];
  }
  if (const size_t rest = bytes.size() - i; rest > 0) {
    const uint32_t v = at(i) << 16 | (rest == 2 ? at(i + 1) << 8 : 0);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += rest == 2 ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

TokenizeRequest parse_tokenize_request(std::string_view body) {
  const json j = parse_object(body);
  TokenizeRequest r;
  const json* c = field(j, "content");
  if (!c) bad("content", "'content' is required");
  if (!c->is_string()) bad("content", fmt::format("'content' must be a string, got {}", c->type_name()));
  r.content = c->get<std::string>();
  if (auto x = get_bool(j, "add_special")) r.add_special = *x;
  return r;
}

DetokenizeRequest parse_detokenize_request(std::string_view body) {
  const json j = parse_object(body);
  DetokenizeRequest r;
  const json* t = field(j, "tokens");
  if (!t) bad("tokens", "'tokens' is required");
  if (!t->is_array()) bad("tokens", fmt::format("'tokens' must be an array of token ids, got {}", t->type_name()));
  for (const json& id : *t) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > std::numeric_limits<int32_t>::max())
      bad("tokens", "'tokens' must hold non-negative integer token ids");
    r.tokens.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  return r;
}

}  // namespace onebit::server
