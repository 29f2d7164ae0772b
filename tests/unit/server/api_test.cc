// Request parsing and validation of `1bit serve` (src/server/api.h).
#include "server/api.h"

#include <gtest/gtest.h>

#include <string>

namespace onebit::server {
namespace {

// The ApiError a body raises, or a failed expectation if it parses.
ApiError error_of(GenerationRequest (*parse)(std::string_view), const std::string& body) {
  try {
    parse(body);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "expected an ApiError for " << body;
  return ApiError(0, "");
}

ApiError chat_error(const std::string& body) { return error_of(parse_chat_request, body); }

TEST(ApiChat, ParsesMessagesAndSampling) {
  const GenerationRequest r = parse_chat_request(R"({
    "model": "m", "messages": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]},
                               {"role": "assistant", "content": "Hello."},
                               {"role": "developer", "content": "x"}],
    "temperature": 0, "top_p": 0.5, "top_k": 7, "max_tokens": 9, "stop": ["a", "b"], "seed": 42,
    "presence_penalty": 0.5, "frequency_penalty": -1, "stream": true, "stream_options": {"include_usage": true},
    "n": 1, "logprobs": false, "response_format": {"type": "text"}, "tools": [], "user": "u", "unknown": 1})");
  EXPECT_EQ(r.kind, GenerationRequest::Kind::kChat);
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[1].role, "user");
  EXPECT_EQ(r.messages[1].content, "Hi!");
  EXPECT_EQ(r.messages[3].role, "system");
  EXPECT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_EQ(r.sampling.top_k, 7);
  EXPECT_EQ(r.sampling.max_tokens, 9);
  EXPECT_EQ(r.sampling.stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_EQ(r.sampling.presence_penalty, 0.5f);
  EXPECT_EQ(r.sampling.frequency_penalty, -1.0f);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
}

TEST(ApiChat, DefaultsFollowOpenAI) {
  const GenerationRequest r = parse_chat_request(R"({"messages": [{"role": "user", "content": "x"}], "stop": "END",
                                                    "temperature": null, "max_completion_tokens": 5})");
  EXPECT_EQ(r.sampling.temperature, 1.0f);
  EXPECT_EQ(r.sampling.top_p, 1.0f);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_EQ(r.sampling.max_tokens, 5);
  EXPECT_EQ(r.sampling.stop, (std::vector<std::string>{"END"}));
  EXPECT_FALSE(r.sampling.seed.has_value());
  EXPECT_FALSE(r.stream);
  EXPECT_EQ(parse_chat_request(R"({"messages": [{"role": "user", "content": "x"}]})").sampling.max_tokens, -1);
}

TEST(ApiChat, MalformedBodies) {
  EXPECT_EQ(chat_error("{not json").status(), 400);
  EXPECT_EQ(chat_error("{not json").type(), "invalid_request_error");
  EXPECT_EQ(chat_error("[1,2]").status(), 400);
  EXPECT_EQ(chat_error("").status(), 400);
}

TEST(ApiChat, ErrorsNameTheField) {
  struct Case {
    const char* body;
    const char* param;
  };
  const Case cases[] = {
      {R"({})", "messages"},
      {R"({"messages": "hi"})", "messages"},
      {R"({"messages": []})", "messages"},
      {R"({"messages": [3]})", "messages[0]"},
      {R"({"messages": [{"content": "x"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "robot", "content": "x"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content"},
      {R"({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"})", "temperature"},
      {R"({"messages": [{"role": "user", "content": "x"}], "temperature": 2.5})", "temperature"},
      {R"({"messages": [{"role": "user", "content": "x"}], "temperature": -0.1})", "temperature"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_p": 0})", "top_p"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_p": 1.5})", "top_p"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_k": -1})", "top_k"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_k": 1.5})", "top_k"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})", "max_tokens"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"})", "max_tokens"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -3})", "max_completion_tokens"},
      {R"({"messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]})", "stop"},
      {R"({"messages": [{"role": "user", "content": "x"}], "stop": [1]})", "stop"},
      {R"({"messages": [{"role": "user", "content": "x"}], "stop": ""})", "stop"},
      {R"({"messages": [{"role": "user", "content": "x"}], "seed": "x"})", "seed"},
      {R"({"messages": [{"role": "user", "content": "x"}], "presence_penalty": 3})", "presence_penalty"},
      {R"({"messages": [{"role": "user", "content": "x"}], "frequency_penalty": -2.5})", "frequency_penalty"},
      {R"({"messages": [{"role": "user", "content": "x"}], "stream": "yes"})", "stream"},
      {R"({"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}})", "stream_options"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"abc": 1}})", "logit_bias"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 101}})", "logit_bias"},
      {R"({"messages": [{"role": "user", "content": "x"}], "model": 7})", "model"},
      {R"({"messages": [{"role": "user", "content": "x"}], "n": 0})", "n"},
      {R"({"messages": [{"role": "user", "content": "x"}], "n": 9})", "n"},
      {R"({"messages": [{"role": "user", "content": "x"}], "n": "2"})", "n"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 1})", "logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3})", "top_logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": false, "top_logprobs": 3})", "top_logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})", "top_logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": -1})", "top_logprobs"},
  };
  for (const Case& c : cases) {
    const ApiError e = chat_error(c.body);
    EXPECT_EQ(e.status(), 400) << c.body;
    EXPECT_EQ(e.param(), c.param) << c.body;
    EXPECT_EQ(e.type(), "invalid_request_error") << c.body;
    EXPECT_NE(std::string(e.what()).find(c.param), std::string::npos) << "message should name the field: " << e.what();
  }
}

TEST(ApiChat, UnsupportedFieldsSaySo) {
  const char* cases[][2] = {
      {R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})", "tools"},
      {R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})", "response_format"},
      {R"({"messages": [{"role": "tool", "content": "x"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", "messages[0].content"},
  };
  for (const auto& c : cases) {
    const ApiError e = chat_error(c[0]);
    EXPECT_EQ(e.status(), 400) << c[0];
    EXPECT_EQ(e.param(), c[1]) << c[0];
    EXPECT_NE(std::string(e.what()).find("not supported"), std::string::npos) << e.what();
  }
}

TEST(ApiChat, ChoicesAndLogprobs) {
  const GenerationRequest d = parse_chat_request(R"({"messages": [{"role": "user", "content": "x"}]})");
  EXPECT_EQ(d.n, 1);
  EXPECT_FALSE(d.logprobs);
  EXPECT_EQ(d.sampling.n_logprobs, 0);
  const GenerationRequest r = parse_chat_request(
      R"({"messages": [{"role": "user", "content": "x"}], "n": 8, "logprobs": true, "top_logprobs": 20})");
  EXPECT_EQ(r.n, 8);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.sampling.n_logprobs, 20);
  const GenerationRequest only = parse_chat_request(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})");
  EXPECT_TRUE(only.logprobs);
  EXPECT_EQ(only.sampling.n_logprobs, 0);
}

TEST(ApiCompletion, LegacyLogprobs) {
  const GenerationRequest r = parse_completion_request(R"({"prompt": "x", "logprobs": 5, "n": 3})");
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.sampling.n_logprobs, 5);
  EXPECT_EQ(r.n, 3);
  const GenerationRequest z = parse_completion_request(R"({"prompt": "x", "logprobs": 0})");
  EXPECT_TRUE(z.logprobs);
  EXPECT_EQ(z.sampling.n_logprobs, 0);
  EXPECT_FALSE(parse_completion_request(R"({"prompt": "x", "logprobs": null})").logprobs);
  for (const char* body : {R"({"prompt": "x", "logprobs": 6})", R"({"prompt": "x", "logprobs": true})",
                           R"({"prompt": "x", "logprobs": -1})", R"({"prompt": "x", "logprobs": 1.5})"}) {
    const ApiError e = error_of(parse_completion_request, body);
    EXPECT_EQ(e.status(), 400) << body;
    EXPECT_EQ(e.param(), "logprobs") << body;
  }
  EXPECT_EQ(error_of(parse_completion_request, R"({"prompt": "x", "top_logprobs": 2})").param(), "top_logprobs");
}

TEST(ApiEmbeddings, InputForms) {
  EmbeddingRequest r = parse_embedding_request(R"({"input": "hello", "model": "m"})");
  ASSERT_EQ(r.inputs.size(), 1u);
  EXPECT_FALSE(r.inputs[0].is_tokens);
  EXPECT_EQ(r.inputs[0].text, "hello");
  EXPECT_EQ(r.model, "m");
  EXPECT_FALSE(r.base64);

  r = parse_embedding_request(R"({"input": ["a", "b", "c"], "encoding_format": "base64"})");
  ASSERT_EQ(r.inputs.size(), 3u);
  EXPECT_EQ(r.inputs[2].text, "c");
  EXPECT_TRUE(r.base64);

  r = parse_embedding_request(R"({"input": [5, 6, 7]})");
  ASSERT_EQ(r.inputs.size(), 1u);
  EXPECT_TRUE(r.inputs[0].is_tokens);
  EXPECT_EQ(r.inputs[0].tokens, (std::vector<int32_t>{5, 6, 7}));

  r = parse_embedding_request(R"({"input": [[1, 2], [3]], "dimensions": 512, "encoding_format": "float"})");
  ASSERT_EQ(r.inputs.size(), 2u);
  EXPECT_EQ(r.inputs[1].tokens, (std::vector<int32_t>{3}));
  EXPECT_EQ(r.dimensions, 512);

  r = parse_embedding_request(R"({"input": ["text", [9, 8]]})");  // mixed lists are fine, item by item
  ASSERT_EQ(r.inputs.size(), 2u);
  EXPECT_FALSE(r.inputs[0].is_tokens);
  EXPECT_TRUE(r.inputs[1].is_tokens);
}

TEST(ApiEmbeddings, ErrorsNameTheField) {
  const char* cases[][2] = {
      {R"({})", "input"},
      {R"({"input": null})", "input"},
      {R"({"input": 5})", "input"},
      {R"({"input": ""})", "input"},
      {R"({"input": []})", "input"},
      {R"({"input": [[]]})", "input"},
      {R"({"input": ["ok", ""]})", "input"},
      {R"({"input": [1, -2]})", "input"},
      {R"({"input": [1, "a"]})", "input"},
      {R"({"input": ["a", 1]})", "input"},
      {R"({"input": [1.5]})", "input"},
      {R"({"input": [{"text": "a"}]})", "input"},
      {R"({"input": "a", "encoding_format": "binary"})", "encoding_format"},
      {R"({"input": "a", "encoding_format": 1})", "encoding_format"},
      {R"({"input": "a", "dimensions": 0})", "dimensions"},
      {R"({"input": "a", "model": 1})", "model"},
  };
  for (const auto& c : cases) {
    try {
      parse_embedding_request(c[0]);
      ADD_FAILURE() << "expected an ApiError for " << c[0];
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status(), 400) << c[0];
      EXPECT_EQ(e.param(), c[1]) << c[0] << ": " << e.what();
    }
  }
  std::string many = R"({"input": [)";
  for (size_t i = 0; i <= EmbeddingRequest::kMaxInputs; ++i) many += i ? ",\"x\"" : "\"x\"";
  many += "]}";
  EXPECT_THROW(parse_embedding_request(many), ApiError);
  EXPECT_THROW(parse_embedding_request("{not json"), ApiError);
}

TEST(ApiBase64, Rfc4648Vectors) {
  EXPECT_EQ(base64_encode(""), "");
  EXPECT_EQ(base64_encode("f"), "Zg==");
  EXPECT_EQ(base64_encode("fo"), "Zm8=");
  EXPECT_EQ(base64_encode("foo"), "Zm9v");
  EXPECT_EQ(base64_encode("foob"), "Zm9vYg==");
  EXPECT_EQ(base64_encode("fooba"), "Zm9vYmE=");
  EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64_encode(std::string("\xff\xfe\x00", 3)), "//4A");
}

TEST(ApiCompletion, PromptAndDefaults) {
  const GenerationRequest r = parse_completion_request(R"({"prompt": "Once", "temperature": 0})");
  EXPECT_EQ(r.kind, GenerationRequest::Kind::kCompletion);
  EXPECT_EQ(r.prompt, "Once");
  EXPECT_EQ(r.sampling.max_tokens, 16);
  EXPECT_EQ(parse_completion_request(R"({"prompt": ["One"], "max_tokens": 3})").sampling.max_tokens, 3);
  EXPECT_EQ(error_of(parse_completion_request, R"({"max_tokens": 3})").param(), "prompt");
  EXPECT_EQ(error_of(parse_completion_request, R"({"prompt": 3})").param(), "prompt");
  EXPECT_EQ(error_of(parse_completion_request, R"({"prompt": "x", "echo": true})").param(), "echo");
}

TEST(ApiTokenize, Bodies) {
  EXPECT_EQ(parse_tokenize_request(R"({"content": "abc"})").content, "abc");
  EXPECT_TRUE(parse_tokenize_request(R"({"content": "abc", "add_special": true})").add_special);
  EXPECT_THROW(parse_tokenize_request(R"({"content": 1})"), ApiError);
  EXPECT_EQ(parse_detokenize_request(R"({"tokens": [1, 2, 3]})").tokens, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_THROW(parse_detokenize_request(R"({"tokens": [-1]})"), ApiError);
  EXPECT_THROW(parse_detokenize_request(R"({"tokens": "1"})"), ApiError);
}

TEST(ApiError, JsonShape) {
  const nlohmann::json j = error_json(ApiError(400, "bad top_p", "top_p"));
  EXPECT_EQ(j["error"]["message"], "bad top_p");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "top_p");
  EXPECT_TRUE(j["error"]["code"].is_null());
  EXPECT_TRUE(error_json(ApiError(404, "x"))["error"]["param"].is_null());
}

}  // namespace
}  // namespace onebit::server
