#include "core/template/chat_template.h"

#include "core/base/error.h"
#include "core/template/template_parser.h"
#include "core/template/template_renderer.h"
#include "core/template/template_value.h"

namespace onebit {

struct ChatTemplate::Impl {
  std::string source;
  jinja::Body body;
  Limits limits;

  std::string render(const jinja::Value& context) const {
    jinja::RenderLimits rl;
    rl.max_output_bytes = limits.max_output_bytes;
    rl.max_steps = limits.max_steps;
    rl.max_call_depth = limits.max_call_depth;
    return jinja::render_template(body, context, rl);
  }
};

ChatTemplate ChatTemplate::parse(std::string_view source, const Limits& limits) {
  auto impl = std::make_shared<Impl>();
  impl->source = std::string(source);
  impl->limits = limits;
  jinja::ParseLimits pl;
  pl.max_depth = limits.max_depth;
  impl->body = jinja::parse_template(source, pl);
  ChatTemplate t;
  t.impl_ = std::move(impl);
  return t;
}

std::string ChatTemplate::render(const nlohmann::json& context) const {
  if (!context.is_object()) fail("chat template context must be a JSON object, got {}", context.type_name());
  return impl_->render(jinja::from_json(context));
}

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
  if (!context.is_object()) fail("chat template context must be a JSON object, got {}", context.type_name());
  return impl_->render(jinja::from_json(context));
}

std::string ChatTemplate::apply(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                const std::string& bos_token, const std::string& eos_token) const {
  using jinja::Value;
  std::vector<Value> msgs;
  msgs.reserve(messages.size());
  for (const auto& m : messages) msgs.push_back(jinja::make_dict({{"role", Value(m.role)}, {"content", Value(m.content)}}));
  Value ctx = jinja::make_dict({
      {"messages", jinja::make_list(std::move(msgs))},
      {"tools", Value(jinja::None{})},
      {"documents", Value(jinja::None{})},
      {"add_generation_prompt", Value(add_generation_prompt)},
      {"bos_token", Value(bos_token)},
      {"eos_token", Value(eos_token)},
  });
  return impl_->render(ctx);
}

const std::string& ChatTemplate::source() const { return impl_->source; }

const std::string& default_chat_template() {
  // microsoft/bitnet-b1.58-2B-4T tokenizer_config.json `chat_template`; a copy lives in
  // tests/data/chat_templates/bitnet-b1.58-2b-4t.jinja and a test keeps the two identical.
  static const std::string kTemplate =
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = message['role'] | "
      "capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = "
      "bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' "
      "}}{% endif %}";
  return kTemplate;
}

}  // namespace onebit
