#include "engine/stop_tokens.h"

#include <algorithm>
#include <string>

#include "core/base/error.h"

namespace onebit {

int32_t template_end_of_turn(const ChatTemplate& t, const Tokenizer& tok) {
  static const std::string kMarker = "q7ZMARKERq7Z";
  const std::string bos = tok.bos_id() >= 0 ? tok.token_text(tok.bos_id()) : "";
  const std::string eos = tok.eos_id() >= 0 ? tok.token_text(tok.eos_id()) : "";
  try {
    const std::string text = t.apply({{"user", "hi"}, {"assistant", kMarker}}, false, bos, eos);
    const size_t at = text.rfind(kMarker);
    if (at == std::string::npos) return -1;
    const std::vector<int32_t> rest = tok.encode(std::string_view(text).substr(at + kMarker.size()));
    if (!rest.empty() && (tok.is_special(rest.front()) || tok.is_added(rest.front()))) return rest.front();
  } catch (const Error&) {
    // A template that rejects the probe conversation simply has no detectable end-of-turn token.
  }
  return -1;
}

std::vector<int32_t> stop_token_ids(const Model& m, const Tokenizer& tok, const ChatTemplate* chat_template) {
  std::vector<int32_t> ids;
  auto add = [&ids](int64_t id) {
    if (id >= 0 && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(static_cast<int32_t>(id));
  };
  for (int64_t id : m.config.eos_token_ids) add(id);
  add(tok.eos_id());
  add(tok.eot_id());
  if (chat_template != nullptr) add(template_end_of_turn(*chat_template, tok));
  return ids;
}

}  // namespace onebit
