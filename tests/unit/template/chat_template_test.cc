// Interpreter features, one behaviour per test, with expected text worked out by hand from the
// Jinja2 / Python semantics (and transformers' environment: trim_blocks, lstrip_blocks).
#include "core/template/chat_template.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "core/base/error.h"

namespace onebit {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;
using ::testing::HasSubstr;

std::string R(std::string_view src, const json& ctx = json::object()) { return ChatTemplate::parse(src).render(ctx); }

std::string error_of(std::string_view src, const json& ctx = json::object()) {
  try {
    ChatTemplate::parse(src).render(ctx);
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f) << path;
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(ChatTemplate, TextAndExpressions) {
  EXPECT_EQ(R("Hello {{ name }}!", {{"name", "world"}}), "Hello world!");
  EXPECT_EQ(R("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }}"), "7 9 3 -4 2 1024");
  EXPECT_EQ(R("{{ 10 / 4 }} {{ 1 / 3 }} {{ 1e16 }} {{ 1e15 }} {{ 0.1 + 0.2 }} {{ 3.0 }}"),
            "2.5 0.3333333333333333 1e+16 1000000000000000.0 0.30000000000000004 3.0");
  EXPECT_EQ(R("{{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' * 3 }} {{ [1] + [2] }}"), "a1NoneTrue ababab [1, 2]");
}

TEST(ChatTemplate, PrintsValuesLikePython) {
  EXPECT_EQ(R("{{ none }}|{{ x }}|{{ [1, 'a', none, true, 1.5] }}|{{ {'k': 'v'} }}|{{ (1,) }}"),
            "None||[1, 'a', None, True, 1.5]|{'k': 'v'}|(1,)");
  EXPECT_EQ(R("{{ [\"it's\"] }}"), "[\"it's\"]");
}

TEST(ChatTemplate, StringLiteralEscapes) {
  EXPECT_EQ(R(R"({{ 'a\nb\t\'c\'\\' }}|{{ "\x41\u00e9" }}|{{ 'x' 'y' }})"), "a\nb\t'c'\\|A\xc3\xa9|xy");
}

TEST(ChatTemplate, ComparisonsAndLogic) {
  EXPECT_EQ(R("{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 1 == 1.0 }}{{ 'a' in 'cat' }}{{ 2 not in [1, 2] }}{{ 'k' in {'k': 1} }}"),
            "TrueFalseTrueTrueFalseTrue");
  EXPECT_EQ(R("{{ 0 or 'd' }} {{ 1 and 2 }} {{ not none }} {{ 'y' if false else 'n' }} [{{ 'y' if false }}]"),
            "d 2 True n []");
}

TEST(ChatTemplate, UndefinedSemantics) {
  EXPECT_EQ(R("[{{ x }}]{{ x is defined }}{{ x is undefined }}{{ x | length }}[{{ x | trim }}]{{ x | default('d') }}"),
            "[]FalseTrue0[]d");
  EXPECT_EQ(R("{% for a in x %}no{% endfor %}{% if x %}no{% endif %}{{ 'z' in x }}"), "False");
  EXPECT_EQ(R("{{ none.a }}|{{ [1][5] is defined }}|{{ d.missing is defined }}", {{"d", json::object()}}), "|False|False");
  EXPECT_THAT(error_of("{{ x.y }}"), HasSubstr("'x' is undefined"));
  EXPECT_THAT(error_of("{{ messages[0]['role'] }}", {{"messages", json::array()}}), HasSubstr("has no element 0"));
}

TEST(ChatTemplate, WhitespaceControlMarkers) {
  EXPECT_EQ(R("a  {{- 'x' -}}  b"), "axb");
  EXPECT_EQ(R("a\n  {%- if true -%}  \n  b  \n  {%- endif -%}\n c"), "abc");
  EXPECT_EQ(R("x {%+ if true %}y{% endif +%}\nz"), "x y\nz");
}

TEST(ChatTemplate, TrimBlocksAndLstripBlocksAreOn) {
  // lstrip_blocks removes the indentation before block tags, trim_blocks the newline after them;
  // neither applies to {{ }}.
  EXPECT_EQ(R("  {% if true %}\n    yes\n  {% endif %}\nend"), "    yes\nend");
  EXPECT_EQ(R("line1\n    {# comment #}\nline2"), "line1\nline2");
  EXPECT_EQ(R("{{ 'a' }}\n{{ 'b' }}"), "a\nb");
  // One trailing newline of the source is dropped (keep_trailing_newline=False); \r\n becomes \n.
  EXPECT_EQ(R("x\n"), "x");
  EXPECT_EQ(R("a\r\nb{% if true %}\r\nc{% endif %}\r\n"), "a\nbc");
}

TEST(ChatTemplate, RawBlock) { EXPECT_EQ(R("{% raw %}{{ not parsed }}{% endraw %}|{{ 'ok' }}"), "{{ not parsed }}|ok"); }

TEST(ChatTemplate, ForLoopVariables) {
  EXPECT_EQ(R("{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}"
              "{{ loop.first|int }}{{ loop.last|int }}{{ loop.length }};{% endfor %}"),
            "1032103;2121003;3210013;");
  EXPECT_EQ(R("{% for x in [1, 2, 3] %}{{ loop.cycle('a', 'b') }}{{ loop.previtem }}{% endfor %}"), "ab1a2");
}

TEST(ChatTemplate, ForLoopFilterElseBreakContinue) {
  EXPECT_EQ(R("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}/{{ loop.length }} {% endfor %}"), "2/2 4/2 ");
  EXPECT_EQ(R("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(R("{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}"
              "{{ x }}{% endfor %}"),
            "13");
  EXPECT_EQ(R("{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}", json::parse(R"({"d":{"z":1,"a":2}})")),
            "a=2,z=1,");  // nlohmann::json sorts keys
  auto t = ChatTemplate::parse("{% for k, v in d | items %}{{ k }}={{ v }},{% endfor %}");
  EXPECT_EQ(t.render(ordered_json::parse(R"({"d":{"z":1,"a":2}})")), "z=1,a=2,");  // ordered_json keeps them
}

TEST(ChatTemplate, ScopingOfSet) {
  // A set inside a loop body is local to that iteration; a set inside an if is not scoped.
  EXPECT_EQ(R("{% set x = 1 %}{% for i in [5, 6] %}{{ x }}{% set x = i %}{{ x }}{% endfor %}{{ x }}"), "15161");
  EXPECT_EQ(R("{% if true %}{% set z = 3 %}{% endif %}{{ z }}"), "3");
  EXPECT_EQ(R("{% set ns = namespace(n=0, s='') %}{% for x in [1, 2, 3] %}{% set ns.n = ns.n + x %}"
              "{% set ns.s = ns.s ~ x %}{% endfor %}{{ ns.n }} {{ ns.s }}"),
            "6 123");
  EXPECT_EQ(R("{% set a, b = [1, 2] %}{{ b }}{{ a }}{% set blk %}in {{ 1 + 1 }}{% endset %}[{{ blk }}]"), "21[in 2]");
  EXPECT_THAT(error_of("{% set x = 1 %}{% set x.y = 2 %}"), HasSubstr("not a namespace"));
}

TEST(ChatTemplate, Macros) {
  EXPECT_EQ(R("{% macro greet(name, p='!') %}Hi {{ name }}{{ p }}{% endmacro %}{{ greet('Bob') }} {{ greet('Al', p='?') }}"),
            "Hi Bob! Hi Al?");
  EXPECT_EQ(R("{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(3) }}"), "321");
  EXPECT_THAT(error_of("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"), HasSubstr("nested deeper"));
}

TEST(ChatTemplate, SubscriptsAttributesSlices) {
  json ctx = {{"messages", {{{"role", "user"}, {"content", "hi"}}, {{"role", "assistant"}, {"content", "yo"}}}}};
  EXPECT_EQ(R("{{ messages[0]['role'] }} {{ messages[1].content }} {{ messages[-1].role }} {{ messages[1:] | length }}", ctx),
            "user yo assistant 1");
  EXPECT_EQ(R("{{ [1, 2, 3, 4][::2] }} {{ [1, 2, 3][::-1] }} {{ 'h\xc3\xa9llo'[1:3] }} {{ 'abc'[-1] }}"),
            "[1, 3] [3, 2, 1] \xc3\xa9l c");
}

TEST(ChatTemplate, StringFilters) {
  EXPECT_EQ(R("[{{ '  Hi  ' | trim }}] {{ 'hello WORLD' | capitalize }} {{ 'hello-world foo_bar' | title }} "
              "{{ 'MiX' | upper }}{{ 'MiX' | lower }} {{ 'a.b.a' | replace('a', 'x') }} {{ 'h\xc3\xa9llo' | length }}"),
            "[Hi] Hello world Hello-World Foo_bar MIXmix x.b.x 5");
  EXPECT_EQ(R("{{ 42 | string }} {{ '42' | int + 1 }} {{ '4.7' | int }} {{ 'x' | int(7) }} {{ '2.5' | float }}"),
            "42 43 4 7 2.5");
  EXPECT_EQ(R("{{ 'ab\ncd' | indent(2) }}|{{ 'hi' | center(6) }}|{{ '<a>' | e }}"), "ab\n  cd|  hi  |&lt;a&gt;");
}

TEST(ChatTemplate, ListFilters) {
  EXPECT_EQ(R("{{ [3, 1, 2] | length }} {{ [3, 1, 2] | first }} {{ [3, 1, 2] | last }} {{ [1, 2, 3] | join('-') }} "
              "{{ [3, 1, 2] | sort }} {{ [1, 2] | reverse | list }} {{ 'ab' | list }} {{ [1, 1, 2] | unique | list }} "
              "{{ [1, 2, 3] | sum }} {{ [3, 1, 2] | min }}{{ [3, 1, 2] | max }}"),
            "3 3 2 1-2-3 [1, 2, 3] [2, 1] ['a', 'b'] [1, 2] 6 13");
  json ctx = {{"xs", {{{"n", "a"}, {"v", 1}}, {{"n", "b"}, {"v", 0}}}}};
  EXPECT_EQ(R("{{ xs | selectattr('v') | map(attribute='n') | join }} {{ xs | rejectattr('v') | map(attribute='n') | list }} "
              "{{ xs | selectattr('n', 'equalto', 'b') | map(attribute='v') | first }}",
              ctx),
            "a ['b'] 0");
  EXPECT_EQ(R("{{ [1, 2, 3, 4] | select('odd') | list }} {{ ['a', 'b'] | reject('equalto', 'b') | list }} "
              "{{ ['a', 'b'] | map('upper') | join }}"),
            "[1, 3] ['a'] AB");
  EXPECT_EQ(R("{{ {'b': 1, 'a': 2} | dictsort }}"), "[('a', 2), ('b', 1)]");
}

TEST(ChatTemplate, ToJsonMatchesTransformers) {
  // ensure_ascii=False, key order kept, json.dumps separators (', ', ': ') or (',', ': ') with indent.
  auto t = ChatTemplate::parse("{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ '<\"\xc3\xa9\">' | tojson }}");
  ordered_json ctx = ordered_json::parse(R"({"d": {"b": [1, {"c": "x"}], "a": null, "e": {}}})");
  EXPECT_EQ(t.render(ctx),
            "{\"b\": [1, {\"c\": \"x\"}], \"a\": null, \"e\": {}}|"
            "{\n  \"b\": [\n    1,\n    {\n      \"c\": \"x\"\n    }\n  ],\n  \"a\": null,\n  \"e\": {}\n}|"
            "\"<\\\"\xc3\xa9\\\">\"");
  EXPECT_EQ(R("{{ {'z': 1, 'a': 2.0} | tojson(sort_keys=true) }} {{ '\xc3\xa9' | tojson(ensure_ascii=true) }}"),
            "{\"a\": 2.0, \"z\": 1} \"\\u00e9\"");
  EXPECT_THAT(error_of("{{ x | tojson }}"), HasSubstr("not JSON serializable"));
}

TEST(ChatTemplate, StringAndDictMethods) {
  EXPECT_EQ(R("{{ '  a b  '.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a b c'.split(none, 1) }} {{ 'a b c'.rsplit(' ', 1) }}"),
            "['a', 'b'] ['a', 'b', '', 'c'] ['a', 'b c'] ['a b', 'c']");
  EXPECT_EQ(R("[{{ ' x '.strip() }}] {{ 'xxyxx'.lstrip('x') }} {{ 'xxyxx'.rstrip('x') }} {{ 'hello'.startswith('he') }} "
              "{{ 'hello'.endswith(('x', 'lo')) }} {{ 'a-b c_d'.title() }} {{ 'Hi'.upper() }}{{ 'Hi'.lower() }} "
              "{{ 'ab'.replace('a', 'x') }}"),
            "[x] yxx xxy True True A-B C_D HIhi xb");
  EXPECT_EQ(R("{{ d.get('a') }} {{ d.get('b') }} {{ d.get('b', 5) }} {{ d.keys() | list }} {{ d.items() | list }}",
              {{"d", {{"a", 1}}}}),
            "1 None 5 ['a'] [('a', 1)]");
}

TEST(ChatTemplate, Tests) {
  EXPECT_EQ(R("{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 'a' is string }}{{ 1 is number }}{{ 1 is integer }}"
              "{{ 1.0 is float }}{{ {} is mapping }}{{ 'x' is iterable }}{{ none is iterable }}{{ none is none }}"
              "{{ 'b' is in 'abc' }}{{ 2 is gt 1 }}{{ x is not defined }}"),
            "TrueTrueTrueTrueTrueTrueTrueTrueTrueFalseTrueTrueTrueTrue");
}

TEST(ChatTemplate, RaiseExceptionThrowsTheMessage) {
  try {
    R("{{ raise_exception('Roles must alternate') }}");
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "Roles must alternate");
  }
}

TEST(ChatTemplate, StrftimeNowFormatsTheCurrentDate) {
  std::string year = R("{{ strftime_now('%Y') }}");
  ASSERT_EQ(year.size(), 4u);
  EXPECT_GE(std::stoi(year), 2024);
  EXPECT_EQ(R("{{ strftime_now is defined }}"), "True");
}

TEST(ChatTemplate, SyntaxErrorsNameLineAndColumn) {
  EXPECT_THAT(error_of("ok\n{{ foo( }}"), HasSubstr("line 2, column"));
  EXPECT_THAT(error_of("{% if x %}never closed"), HasSubstr("expected 'elif' or 'else' or 'endif'"));
  EXPECT_THAT(error_of("{% for %}"), HasSubstr("line 1, column 8: expected a name"));
  EXPECT_THAT(error_of("{{ 'open }}"), HasSubstr("string is never closed"));
  EXPECT_THAT(error_of("{% include 'x' %}"), HasSubstr("unknown or unsupported tag 'include'"));
  EXPECT_THAT(error_of("{% break %}"), HasSubstr("outside of a for loop"));
  EXPECT_THAT(error_of("{# never closed"), HasSubstr("comment"));
  EXPECT_THAT(error_of("{{ 'a' | nosuchfilter }}"), HasSubstr("line 1, column 8: unknown filter 'nosuchfilter'"));
}

TEST(ChatTemplate, RuntimeErrorsNameLineAndColumn) {
  EXPECT_THAT(error_of("\n  {{ 'a' + 1 }}"), HasSubstr("line 2, column 6"));
  EXPECT_THAT(error_of("{{ 1 / 0 }}"), HasSubstr("division by zero"));
  EXPECT_THAT(error_of("{{ 1 < 'a' }}"), HasSubstr("not supported between instances of 'int' and 'str'"));
  EXPECT_THAT(error_of("{{ [].append(1) }}"), HasSubstr("cannot be modified"));
  EXPECT_THAT(error_of("{{ 9999999999 * 9999999999 }}"), HasSubstr("integer overflow"));
}

TEST(ChatTemplate, LimitsStopRunawayTemplates) {
  EXPECT_THAT(error_of("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"),
              HasSubstr("steps"));
  EXPECT_THAT(error_of("{{ 'x' * 100000000 }}"), HasSubstr("bytes"));
  EXPECT_THAT(error_of("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"),
              HasSubstr("bytes"));
  EXPECT_THAT(error_of("{{ range(1000000) | length }}"), HasSubstr("range()"));
  EXPECT_THAT(error_of("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}"), HasSubstr("nesting deeper"));
  std::string chain = "{{ 1";
  for (int i = 0; i < 5000; ++i) chain += " + 1";
  EXPECT_THAT(error_of(chain + " }}"), HasSubstr("nested deeper"));
  EXPECT_THAT(error_of("{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% set ns.l = [ns.l] %}{% endfor %}"),
              HasSubstr("nested deeper"));
  std::string blocks;
  for (int i = 0; i < 500; ++i) blocks += "{% if true %}";
  EXPECT_THAT(error_of(blocks), HasSubstr("nesting deeper"));
}

TEST(ChatTemplate, ContextMustBeAnObject) {
  EXPECT_THROW(ChatTemplate::parse("x").render(json::array()), Error);
}

TEST(ChatTemplate, BitNetTemplateRendersTheDocumentedFormat) {
  auto t = ChatTemplate::parse(read_file(ONEBIT_SOURCE_DIR "/tests/data/chat_templates/bitnet-b1.58-2b-4t.jinja"));
  std::vector<ChatMessage> msgs = {{"system", "  Be brief. "}, {"user", "Hi\n"}, {"assistant", "Hello"}};
  EXPECT_EQ(t.apply(msgs, true, "<|begin_of_text|>", "<|eot_id|>"),
            "<|begin_of_text|>System: Be brief.<|eot_id|>User: Hi<|eot_id|>Assistant: Hello<|eot_id|>Assistant: ");
  EXPECT_EQ(t.apply({{"user", "x"}}, false, "<s>", "</s>"), "<s>User: x<|eot_id|>");
}

TEST(ChatTemplate, DefaultTemplateIsTheBitNetOne) {
  EXPECT_EQ(default_chat_template(),
            read_file(ONEBIT_SOURCE_DIR "/tests/data/chat_templates/bitnet-b1.58-2b-4t.jinja"));
  auto t = ChatTemplate::parse(default_chat_template());
  EXPECT_EQ(t.apply({{"user", "hey"}}, true, "B", "E"), "BUser: hey<|eot_id|>Assistant: ");
}

TEST(ChatTemplate, Llama31NoToolsPath) {
  auto t = ChatTemplate::parse(read_file(ONEBIT_SOURCE_DIR "/tests/data/chat_templates/llama-3.1-instruct.jinja"));
  EXPECT_EQ(t.apply({{"system", " S "}, {"user", " q "}}, true, "<|begin_of_text|>", "<|eot_id|>"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nS<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, ZephyrKeepsNewlinesAfterOutputs) {
  // trim_blocks drops the newline after {% %} tags but not after {{ }}.
  auto t = ChatTemplate::parse(read_file(ONEBIT_SOURCE_DIR "/tests/data/chat_templates/zephyr.jinja"));
  EXPECT_EQ(t.apply({{"user", "hi"}}, true, "<s>", "</s>"), "<|user|>\nhi</s>\n<|assistant|>\n");
}

}  // namespace
}  // namespace onebit
