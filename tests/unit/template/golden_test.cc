// Renders every case of tests/data/chat_templates/goldens.json and compares with the text (or the
// error) that transformers' apply_chat_template produced for it. The file is made on a machine
// with transformers by tools/golden/make_chat_template_goldens.py; a missing file is a failure.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>

#include "core/base/error.h"
#include "core/template/chat_template.h"

namespace onebit {
namespace {

using nlohmann::ordered_json;

const std::string kDir = ONEBIT_SOURCE_DIR "/tests/data/chat_templates/";

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return {};
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Plain {role, content: string} messages can go through apply(); anything else needs render().
bool plain_messages(const ordered_json& msgs) {
  for (const auto& m : msgs) {
    if (!m.is_object() || m.size() != 2 || !m.contains("role") || !m.contains("content") || !m["role"].is_string() ||
        !m["content"].is_string())
      return false;
  }
  return true;
}

TEST(ChatTemplateGolden, MatchesTransformers) {
  const std::string path = kDir + "goldens.json";
  std::string text = read_file(path);
  ASSERT_FALSE(text.empty()) << path << " is missing: run `python3 tools/golden/make_chat_template_goldens.py` "
                             << "on a machine with transformers installed and commit the result";
  ordered_json goldens = ordered_json::parse(text);
  ASSERT_TRUE(goldens.contains("cases"));
  ASSERT_GE(goldens["cases"].size(), 20u);

  std::map<std::string, ChatTemplate> templates;
  size_t checked = 0;
  for (const auto& c : goldens["cases"]) {
    const std::string name = c["template"].get<std::string>();
    SCOPED_TRACE(name + " / " + c.value("name", std::string("?")));
    if (!templates.count(name)) {
      std::string src = read_file(kDir + name + ".jinja");
      ASSERT_FALSE(src.empty()) << "template source " << name << ".jinja is missing";
      templates.emplace(name, ChatTemplate::parse(src));
    }
    const ChatTemplate& t = templates.at(name);

    ordered_json ctx = ordered_json::object();
    ctx["messages"] = c["messages"];
    ctx["tools"] = nullptr;
    ctx["documents"] = nullptr;
    ctx["add_generation_prompt"] = c["add_generation_prompt"];
    ctx["bos_token"] = c["bos_token"];
    ctx["eos_token"] = c["eos_token"];
    if (c.contains("extra_context"))
      for (auto it = c["extra_context"].begin(); it != c["extra_context"].end(); ++it) ctx[it.key()] = it.value();
    const bool use_apply = !c.contains("extra_context") && plain_messages(c["messages"]);

    auto run = [&]() {
      if (!use_apply) return t.render(ctx);
      std::vector<ChatMessage> msgs;
      for (const auto& m : c["messages"]) msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
      std::string via_apply = t.apply(msgs, c["add_generation_prompt"].get<bool>(), c["bos_token"].get<std::string>(),
                                      c["eos_token"].get<std::string>());
      EXPECT_EQ(via_apply, t.render(ctx)) << "apply() and render() disagree";
      return via_apply;
    };

    if (c.contains("error")) {
      try {
        std::string out = run();
        ADD_FAILURE() << "expected error \"" << c["error"].get<std::string>() << "\", rendered:\n" << out;
      } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()), c["error"].get<std::string>());
      }
    } else {
      std::string out;
      try {
        out = run();
      } catch (const Error& e) {
        ADD_FAILURE() << "unexpected error: " << e.what();
        continue;
      }
      EXPECT_EQ(out, c["expected"].get<std::string>());
    }
    ++checked;
  }
  EXPECT_EQ(checked, goldens["cases"].size());
}

}  // namespace
}  // namespace onebit
