// Which token ids end a generation: the model's EOS ids (config), the tokenizer's EOS and EOT,
// and, for chat, the special token the chat template writes after an assistant turn.
#pragma once

#include <cstdint>
#include <vector>

#include "core/base/model.h"
#include "core/template/chat_template.h"
#include "core/tokenizer/tokenizer.h"

namespace onebit {

// The special token a template writes right after an assistant message's content (<|eot_id|>,
// <|im_end|>): the model's own end-of-turn marker, or -1 when there is none or the template cannot
// render the probe conversation.
int32_t template_end_of_turn(const ChatTemplate& t, const Tokenizer& tok);

// The stop ids, without duplicates. `chat_template` may be null (plain completion).
std::vector<int32_t> stop_token_ids(const Model& m, const Tokenizer& tok, const ChatTemplate* chat_template);

}  // namespace onebit
