// libFuzzer target: parse and render arbitrary chat-template text with a fixed conversation.
// Every failure must surface as onebit::Error; anything else (crash, other exception, sanitizer
// report, timeout) is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/base/error.h"
#include "core/template/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<onebit::ChatMessage> kMessages = {
      {"system", "  You are terse. "},
      {"user", "Hi \xc3\xa9 {{ not a tag }}"},
      {"assistant", "Hello!"},
      {"user", ""},
  };
  onebit::ChatTemplate::Limits limits;
  limits.max_steps = 4000;  // small, so that each input stays fast
  limits.max_output_bytes = 1 << 14;
  try {
    auto t = onebit::ChatTemplate::parse(std::string_view(reinterpret_cast<const char*>(data), size), limits);
    t.apply(kMessages, true, "<s>", "</s>");
    t.apply({}, false, "", "");
  } catch (const onebit::Error&) {
  }
  return 0;
}
