// The OpenAI-compatible HTTP API on a real server on loopback (CPU backend, demo model), driven
// by httplib's client: every endpoint, the SSE framing, the error statuses and their OpenAI error
// objects, API keys, and a client that goes away mid-request.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/openai/protocol.h"
#include "server/server.h"
#include "tests/server/live_server.h"
#include "tests/server/openai/sse.h"

namespace sbserve {
namespace {

using nlohmann::json;
using testing::MetricValue;

ServerOptions HttpOptions() {
  ServerOptions o = testing::LoopbackServerOptions();
  o.http_port = 0;
  o.http_threads = 16;
  return o;
}

class HttpServer {
 public:
  explicit HttpServer(ServerOptions o = HttpOptions(), bool load = true) : server_(std::move(o)) {
    absl::Status s = server_.Start();
    EXPECT_TRUE(s.ok()) << s;
    if (load) {
      s = server_.LoadModel();
      EXPECT_TRUE(s.ok()) << s;
    }
  }
  Server& server() { return server_; }

  httplib::Client Client() {
    httplib::Client c("127.0.0.1", server_.http_port());
    c.set_read_timeout(60, 0);
    return c;
  }
  httplib::Result Post(const std::string& path, const json& body, const httplib::Headers& headers = {}) {
    return Client().Post(path.c_str(), headers, body.dump(), "application/json");
  }
  // POST, the JSON reply and its status.
  json PostJson(const std::string& path, const json& body, int* status, const httplib::Headers& headers = {}) {
    httplib::Result r = Post(path, body, headers);
    EXPECT_TRUE(r) << "no reply from " << path;
    if (!r) return json();
    *status = r->status;
    json out = json::parse(r->body, nullptr, false);
    EXPECT_FALSE(out.is_discarded()) << r->body;
    return out;
  }
  json GetJson(const std::string& path, int* status) {
    httplib::Result r = Client().Get(path);
    EXPECT_TRUE(r) << "no reply from " << path;
    if (!r) return json();
    *status = r->status;
    return json::parse(r->body, nullptr, false);
  }
  std::string Metrics() {
    httplib::Result r = Client().Get("/metrics");
    return r ? r->body : "";
  }
  // Waits until `series` reads `want` on /metrics (the gauges follow the engine's step reports).
  bool WaitMetric(const std::string& series, double want) {
    for (int i = 0; i < 2000; ++i) {
      if (MetricValue(Metrics(), series) == want) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }

 private:
  Server server_;
};

// The SSE body split into its events' data; every event must be "data: ...\n\n".
std::vector<std::string> SseData(const std::string& body) {
  std::vector<std::string> out;
  std::string error;
  EXPECT_TRUE(testing::SplitSse(body, &out, &error)) << error;
  return out;
}

json ErrorOf(const json& reply) {
  EXPECT_TRUE(reply.contains("error")) << reply.dump();
  const json& e = reply["error"];
  for (const char* k : {"message", "type", "param", "code"}) EXPECT_TRUE(e.contains(k)) << k << " in " << e.dump();
  return e;
}

TEST(HttpApi, CompletionShapeUsageAndLength) {
  HttpServer s;
  int status = 0;
  json r = s.PostJson("/v1/completions",
                      {{"model", "sbserve-demo"}, {"prompt", "Once upon a time"}, {"max_tokens", 7}, {"ignore_eos", true}},
                      &status);
  ASSERT_EQ(status, 200) << r.dump();
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["model"], "sbserve-demo");
  EXPECT_EQ(r["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  ASSERT_EQ(r["choices"].size(), 1u);
  EXPECT_EQ(r["choices"][0]["index"], 0);
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(r["choices"][0]["text"].get<std::string>().empty());
  EXPECT_TRUE(r["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(r["usage"]["completion_tokens"], 7);
  // The prompt's token count as /tokenize counts it.
  json tok = s.PostJson("/tokenize", {{"prompt", "Once upon a time"}}, &status);
  ASSERT_EQ(status, 200);
  EXPECT_EQ(r["usage"]["prompt_tokens"], tok["count"]);
  EXPECT_EQ(r["usage"]["total_tokens"], tok["count"].get<int>() + 7);
  // The engine's request metrics count the HTTP request; the front-door counter names it. The
  // latter is counted by httplib's logger after the body was written, so it may trail the reply.
  EXPECT_TRUE(s.WaitMetric("sbserve_http_requests_total{endpoint=\"/v1/completions\",code=\"200\"}", 1));
  EXPECT_EQ(MetricValue(s.Metrics(), "sbserve_request_success_total{finished_reason=\"length\"}"), 1);
}

TEST(HttpApi, SeedReproducesAndNChoicesAreIndexed) {
  HttpServer s;
  const json req = {{"prompt", "The"}, {"max_tokens", 12}, {"temperature", 1.0}, {"seed", 42}, {"n", 3}, {"ignore_eos", true}};
  int status = 0;
  json a = s.PostJson("/v1/completions", req, &status);
  ASSERT_EQ(status, 200) << a.dump();
  json b = s.PostJson("/v1/completions", req, &status);
  ASSERT_EQ(status, 200);
  ASSERT_EQ(a["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(a["choices"][i]["index"], i);
    EXPECT_EQ(a["choices"][i]["text"], b["choices"][i]["text"]) << "same seed, same text";
  }
  // Choice j samples with seed + j: the choices differ from each other (12 tokens at T=1).
  EXPECT_NE(a["choices"][0]["text"], a["choices"][1]["text"]);
  EXPECT_EQ(a["usage"]["completion_tokens"], 36);
  // Choice 1 is what a single request with seed 43 gives.
  json one = s.PostJson("/v1/completions", {{"prompt", "The"}, {"max_tokens", 12}, {"temperature", 1.0}, {"seed", 43}, {"ignore_eos", true}},
                        &status);
  EXPECT_EQ(one["choices"][0]["text"], a["choices"][1]["text"]);
  // The prompt counts once in usage, however many choices it has.
  EXPECT_EQ(a["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"]);
  EXPECT_EQ(a["usage"]["total_tokens"], one["usage"]["prompt_tokens"].get<int>() + 36);
}

TEST(HttpApi, StopStringEndsWithStopAndIsNotReturned) {
  HttpServer s;
  int status = 0;
  json free = s.PostJson("/v1/completions", {{"prompt", "Once upon a time"}, {"max_tokens", 24}, {"temperature", 0}, {"ignore_eos", true}},
                         &status);
  ASSERT_EQ(status, 200);
  const std::string text = free["choices"][0]["text"];
  ASSERT_GE(text.size(), 6u);
  // A stop string taken from the greedy continuation itself.
  const std::string stop = text.substr(3, 3);
  json r = s.PostJson("/v1/completions",
                      {{"prompt", "Once upon a time"}, {"max_tokens", 24}, {"temperature", 0}, {"stop", json::array({stop, "zzzzqq"})}},
                      &status);
  ASSERT_EQ(status, 200) << r.dump();
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(r["choices"][0]["text"], text.substr(0, text.find(stop)));
  // A single string works too.
  r = s.PostJson("/v1/completions", {{"prompt", "Once upon a time"}, {"max_tokens", 24}, {"temperature", 0}, {"stop", stop}}, &status);
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
}

TEST(HttpApi, StreamingFramingMatchesTheNonStreamingText) {
  HttpServer s;
  json req = {{"prompt", "Once upon a time"}, {"max_tokens", 10}, {"seed", 7}, {"ignore_eos", true}};
  int status = 0;
  json whole = s.PostJson("/v1/completions", req, &status);
  ASSERT_EQ(status, 200);
  req["stream"] = true;
  req["stream_options"] = {{"include_usage", true}};
  httplib::Result r = s.Post("/v1/completions", req);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type").rfind("text/event-stream", 0), 0u);
  std::vector<std::string> data = SseData(r->body);
  ASSERT_GE(data.size(), 3u);
  EXPECT_EQ(data.back(), "[DONE]");
  std::string text;
  std::string finish;
  std::string id;
  for (size_t i = 0; i + 2 < data.size(); ++i) {
    json c = json::parse(data[i]);
    EXPECT_EQ(c["object"], "text_completion");
    if (id.empty()) id = c["id"];
    EXPECT_EQ(c["id"], id) << "one id for every chunk";
    ASSERT_TRUE(c.contains("usage"));
    EXPECT_TRUE(c["usage"].is_null()) << "usage only on the last chunk";
    ASSERT_EQ(c["choices"].size(), 1u);
    text += c["choices"][0]["text"].get<std::string>();
    if (!c["choices"][0]["finish_reason"].is_null()) {
      EXPECT_TRUE(finish.empty()) << "one finish per choice";
      finish = c["choices"][0]["finish_reason"];
    }
  }
  EXPECT_EQ(text, whole["choices"][0]["text"]);
  EXPECT_EQ(finish, "length");
  json usage = json::parse(data[data.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"], whole["usage"]);
  // Without include_usage there is no usage field and no usage chunk.
  req.erase("stream_options");
  r = s.Post("/v1/completions", req);
  ASSERT_TRUE(r);
  data = SseData(r->body);
  for (size_t i = 0; i + 1 < data.size(); ++i) {
    json c = json::parse(data[i]);
    EXPECT_FALSE(c.contains("usage"));
    EXPECT_EQ(c["choices"].size(), 1u);
  }
}

TEST(HttpApi, CompletionLogprobsShape) {
  HttpServer s;
  int status = 0;
  // Seeded, so the tokens are the same every run; ignore_eos lets the end-of-text token be sampled
  // and listed while the text leaves it out.
  json r = s.PostJson("/v1/completions",
                      {{"prompt", "Once upon a time"}, {"max_tokens", 5}, {"logprobs", 3}, {"ignore_eos", true}, {"seed", 7}},
                      &status);
  ASSERT_EQ(status, 200) << r.dump();
  const json& lp = r["choices"][0]["logprobs"];
  for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) {
    ASSERT_TRUE(lp[k].is_array()) << k;
    EXPECT_EQ(lp[k].size(), 5u) << k;
  }
  const std::string text = r["choices"][0]["text"];
  size_t at = 0;
  for (size_t i = 0; i < 5; ++i) {
    const std::string tok = lp["tokens"][i];
    EXPECT_EQ(lp["text_offset"][i], at) << i;
    // Each token's text is where its offset says, unless it is a special token the text skips.
    if (text.compare(at, tok.size(), tok) == 0) {
      at += tok.size();
    } else {
      EXPECT_EQ(tok, "<|endoftext|>") << i << " " << r.dump();
    }
    EXPECT_LE(lp["token_logprobs"][i].get<double>(), 0.0);
    // The top 3 plus the sampled token when it is not among them.
    const json& top = lp["top_logprobs"][i];
    EXPECT_GE(top.size(), 3u);
    EXPECT_LE(top.size(), 4u);
    ASSERT_TRUE(top.contains(tok));
    EXPECT_EQ(top[tok], lp["token_logprobs"][i]);
  }
  EXPECT_EQ(at, text.size());
}

// A codec whose id 0 is the special token "<s>"; ids 1 and 2 are "a" and "bc"; ids 3 and 4 are the
// SentencePiece-style " sky" and " is", which lose their space at the start of a text.
class SpecialZeroCodec : public TextCodec {
 public:
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view, bool) const override { return std::vector<int32_t>{}; }
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    std::string out;
    for (int32_t id : ids) out += Piece(id, skip_special);
    if (!ids.empty() && ids[0] >= 3) out.erase(0, 1);  // a text's first token loses its space
    return out;
  }
  std::string TokenBytes(int32_t id, bool skip_special) const override { return Piece(id, skip_special); }
  std::unique_ptr<TextStream> NewStream(bool, std::span<const int32_t>) const override { return nullptr; }
  std::vector<int32_t> eos_ids() const override { return {0}; }

 private:
  static std::string Piece(int32_t id, bool skip_special) {
    switch (id) {
      case 0: return skip_special ? "" : "<s>";
      case 1: return "a";
      case 2: return "bc";
      case 3: return " sky";
      default: return " is";
    }
  }
};

std::vector<StepLogprobs> Steps(const std::vector<int32_t>& ids) {
  std::vector<StepLogprobs> lps(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    lps[i].token_id = ids[i];
    lps[i].logprob = -0.5f * static_cast<float>(i);
  }
  return lps;
}

TEST(OpenAiProtocol, CompletionLogprobsOffsetsSkipTheSpecialTokensTheTextSkips) {
  SpecialZeroCodec codec;
  const std::vector<StepLogprobs> lps = Steps({1, 0, 2, 1});
  // Text "abca" (special token skipped), after 3 bytes of echo.
  json lp = openai::CompletionLogprobs(lps, codec, 0, "abca", 3, 3, true);
  EXPECT_EQ(lp["tokens"], json({"a", "<s>", "bc", "a"}));
  EXPECT_EQ(lp["text_offset"], json({3, 4, 4, 6}));
  EXPECT_EQ(lp["top_logprobs"][1], json({{"<s>", -0.5}}));
  // Text "a<s>bca" (skip_special_tokens false): offsets advance by every token.
  lp = openai::CompletionLogprobs(lps, codec, 0, "a<s>bca", 3, 3, false);
  EXPECT_EQ(lp["text_offset"], json({3, 4, 7, 9}));
  // Streamed: the text not known yet (held back), offsets go on by the pieces.
  size_t end = 0;
  lp = openai::CompletionLogprobs(lps, codec, 0, "a", 3, 3, false, &end);
  EXPECT_EQ(lp["text_offset"], json({3, 4, 7, 9}));
  EXPECT_EQ(end, 10u);
}

// Offsets are read off the text: a BOS the tokenizer added to an echoed prompt holds no place in
// the text the client sent (even with skip_special_tokens false), and an output that begins a text
// of its own (a detokenizer that could not continue its prompt) starts without its first space.
TEST(OpenAiProtocol, OffsetsFollowTheTextTheTokensMake) {
  SpecialZeroCodec codec;
  json lp = openai::EchoLogprobs({0, 3, 4}, Steps({3, 4}), codec, 0, "sky is", /*skip_special=*/false);
  EXPECT_EQ(lp["tokens"], json({"<s>", " sky", " is"}));
  EXPECT_EQ(lp["text_offset"], json({0, 0, 3}));
  EXPECT_EQ(lp["token_logprobs"][0], nullptr);
  // The sent text holds the special token's string: it counts.
  lp = openai::EchoLogprobs({0, 1}, Steps({1}), codec, 0, "<s>a", /*skip_special=*/true);
  EXPECT_EQ(lp["text_offset"], json({0, 3}));
  // An output "sky is" whose first token lost its space; then the same after an echo of "x".
  lp = openai::CompletionLogprobs(Steps({3, 4}), codec, 0, "sky is", 0, 0, true);
  EXPECT_EQ(lp["text_offset"], json({0, 3}));
  lp = openai::CompletionLogprobs(Steps({3, 4}), codec, 0, " sky is", 1, 1, true);
  EXPECT_EQ(lp["text_offset"], json({1, 5}));
}

TEST(HttpApi, ChatWithoutTemplateIsA400NamingMessages) {
  HttpServer s;  // the demo model's tokenizer_config.json has no chat_template
  int status = 0;
  json r = s.PostJson("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}}}, &status);
  EXPECT_EQ(status, 400);
  json e = ErrorOf(r);
  EXPECT_EQ(e["param"], "messages");
  EXPECT_NE(e["message"].get<std::string>().find("--chat-template"), std::string::npos) << e.dump();
  EXPECT_EQ(e["type"], "invalid_request_error");
}

ServerOptions ChatOptions() {
  ServerOptions o = HttpOptions();
  o.chat_template = SBSERVE_TEST_CHAT_TEMPLATE;
  return o;
}

TEST(HttpApi, ChatRendersTheTemplateAndStreamsRoleFirst) {
  HttpServer s(ChatOptions());
  const json messages = {{{"role", "user"}, {"content", "Hello there  "}}};
  int status = 0;
  // The prompt the template renders, through /tokenize and /detokenize.
  json tok = s.PostJson("/tokenize", {{"messages", messages}}, &status);
  ASSERT_EQ(status, 200) << tok.dump();
  json detok = s.PostJson("/detokenize", {{"tokens", tok["tokens"]}}, &status);
  ASSERT_EQ(status, 200);
  EXPECT_EQ(detok["prompt"],
            "<|endoftext|><|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello "
            "there<|im_end|>\n<|im_start|>assistant\n");

  json r = s.PostJson("/v1/chat/completions", {{"messages", messages}, {"max_completion_tokens", 6}, {"ignore_eos", true}},
                      &status);
  ASSERT_EQ(status, 200) << r.dump();
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(r["choices"][0]["message"]["role"], "assistant");
  EXPECT_TRUE(r["choices"][0]["message"]["content"].is_string());
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r["usage"]["completion_tokens"], 6);
  EXPECT_EQ(r["usage"]["prompt_tokens"], tok["count"]);

  httplib::Result st = s.Post("/v1/chat/completions", {{"messages", messages}, {"max_tokens", 6}, {"stream", true}, {"ignore_eos", true}});
  ASSERT_TRUE(st);
  std::vector<std::string> data = SseData(st->body);
  ASSERT_GE(data.size(), 3u);
  EXPECT_EQ(data.back(), "[DONE]");
  json first = json::parse(data[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string content;
  for (size_t i = 1; i + 1 < data.size(); ++i) {
    json c = json::parse(data[i]);
    EXPECT_FALSE(c["choices"][0]["delta"].contains("role")) << "role only in the first chunk";
    if (c["choices"][0]["delta"].contains("content")) content += c["choices"][0]["delta"]["content"].get<std::string>();
  }
  EXPECT_EQ(json::parse(data[data.size() - 2])["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(content.empty());

  // The template's raise_exception is the client's 400.
  r = s.PostJson("/v1/chat/completions",
                 {{"messages", {{{"role", "user"}, {"content", "a"}}, {{"role", "user"}, {"content", "b"}}}}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_NE(ErrorOf(r)["message"].get<std::string>().find("alternate"), std::string::npos) << r.dump();
}

// Content as a list of text parts renders as their texts joined by newlines, and a null content
// as the empty string, as vLLM gives them to templates; other parts are refused.
TEST(HttpApi, ChatContentPartsAndNullContentRenderAsStrings) {
  HttpServer s(ChatOptions());
  int status = 0;
  auto tokens = [&](const json& messages) {
    json r = s.PostJson("/tokenize", {{"messages", messages}}, &status);
    EXPECT_EQ(status, 200) << r.dump();
    return r["tokens"];
  };
  const json parts = {{{"role", "user"},
                       {"content", {{{"type", "text"}, {"text", "Hi"}}, {{"type", "text"}, {"text", "there"}}}}}};
  const json joined = {{{"role", "user"}, {"content", "Hi\nthere"}}};
  EXPECT_EQ(tokens(parts), tokens(joined));
  const json null_turn = {{{"role", "user"}, {"content", "a"}},
                          {{"role", "assistant"}, {"content", nullptr}},
                          {{"role", "user"}, {"content", "b"}}};
  const json empty_turn = {{{"role", "user"}, {"content", "a"}},
                           {{"role", "assistant"}, {"content", ""}},
                           {{"role", "user"}, {"content", "b"}}};
  EXPECT_EQ(tokens(null_turn), tokens(empty_turn));
  // Through the completions endpoint too.
  json r = s.PostJson("/v1/chat/completions", {{"messages", parts}, {"max_tokens", 2}}, &status);
  EXPECT_EQ(status, 200) << r.dump();
  const json image = {{"type", "image_url"}, {"image_url", {{"url", "x"}}}};
  const json image_msg = {{"role", "user"}, {"content", json::array({image})}};
  r = s.PostJson("/v1/chat/completions", {{"messages", json::array({image_msg})}, {"max_tokens", 2}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(ErrorOf(r)["param"], "messages[0].content") << r.dump();
  const json bad_part = {{"type", "text"}, {"text", 5}};
  const json bad_msg = {{"role", "user"}, {"content", json::array({bad_part})}};
  r = s.PostJson("/v1/chat/completions", {{"messages", json::array({bad_msg})}, {"max_tokens", 2}}, &status);
  EXPECT_EQ(status, 400);
}

TEST(HttpApi, ChatLogprobsShape) {
  HttpServer s(ChatOptions());
  int status = 0;
  json r = s.PostJson("/v1/chat/completions",
                      {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 4}, {"logprobs", true},
                       {"top_logprobs", 2}, {"ignore_eos", true}},
                      &status);
  ASSERT_EQ(status, 200) << r.dump();
  const json& content = r["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 4u);
  for (const json& t : content) {
    ASSERT_TRUE(t["token"].is_string());
    EXPECT_LE(t["logprob"].get<double>(), 0.0);
    const std::string tok = t["token"];
    ASSERT_EQ(t["bytes"].size(), tok.size());
    for (size_t i = 0; i < tok.size(); ++i) EXPECT_EQ(t["bytes"][i], static_cast<unsigned char>(tok[i]));
    ASSERT_EQ(t["top_logprobs"].size(), 2u);
    EXPECT_GE(t["top_logprobs"][0]["logprob"].get<double>(), t["top_logprobs"][1]["logprob"].get<double>());
  }
  // top_logprobs without logprobs is refused, naming the field.
  r = s.PostJson("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"top_logprobs", 2}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(ErrorOf(r)["param"], "top_logprobs");
}

// A character the tokenizer splits over several tokens: each token is listed with U+FFFD for its
// part of the character, chat's bytes carry its own bytes, and the completions offsets advance by
// those bytes, so they stay positions in the text.
TEST(HttpApi, LogprobsOfTokensHoldingPartOfACharacter) {
  HttpServer s(ChatOptions());
  int status = 0;
  // The demo tokenizer is trained on English: "日" (E6 97 A5) stays three byte tokens.
  json tok = s.PostJson("/tokenize", {{"prompt", "\xE6\x97\xA5"}, {"add_special_tokens", false}}, &status);
  ASSERT_EQ(status, 200) << tok.dump();
  ASSERT_EQ(tok["tokens"].size(), 3u) << tok.dump();
  EXPECT_EQ(tok["token_strs"], json({"\xEF\xBF\xBD", "\xEF\xBF\xBD", "\xEF\xBF\xBD"}));
  const int lead = tok["tokens"][0];

  // Chat, every token forced to the lead byte E6.
  json r = s.PostJson("/v1/chat/completions",
                      {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 3}, {"logprobs", true},
                       {"top_logprobs", 1}, {"ignore_eos", true}, {"logit_bias", {{std::to_string(lead), 100}}}},
                      &status);
  ASSERT_EQ(status, 200) << r.dump();
  const json& content = r["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 3u);
  for (const json& t : content) {
    EXPECT_EQ(t["token"], "\xEF\xBF\xBD");
    EXPECT_EQ(t["bytes"], json({0xE6})) << t.dump();
    // The alternatives are the model's own (before the bias); each one's token is its bytes' text.
    for (const json& alt : t["top_logprobs"]) {
      std::string bytes;
      for (int b : alt["bytes"]) bytes.push_back(static_cast<char>(b));
      EXPECT_EQ(json(bytes).dump(-1, ' ', false, json::error_handler_t::replace), alt["token"].dump()) << alt.dump();
    }
  }
  // Three lone lead bytes: one U+FFFD each.
  EXPECT_EQ(r["choices"][0]["message"]["content"], "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");

  // Completions, the prompt echoed with logprobs: offsets are byte positions in the echoed text,
  // also where the prompt's text holds a special token's string (the echo is the text sent).
  for (const std::string prompt : {std::string("Caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC is here"),
                                   std::string("<|endoftext|>Caf\xC3\xA9 \xE6\x97\xA5 and<|endoftext|> more")}) {
    SCOPED_TRACE(prompt);
    r = s.PostJson("/v1/completions",
                   {{"prompt", prompt}, {"max_tokens", 1}, {"logprobs", 0}, {"echo", true}, {"ignore_eos", true}},
                   &status);
    ASSERT_EQ(status, 200) << r.dump();
    const std::string text = r["choices"][0]["text"];
    ASSERT_TRUE(text.starts_with(prompt));
    const json& lp = r["choices"][0]["logprobs"];
    const size_t n = lp["tokens"].size();
    ASSERT_GT(n, 8u);
    int partial = 0;
    for (size_t i = 0; i < n; ++i) {
      const std::string t = lp["tokens"][i];
      const size_t at = lp["text_offset"][i];
      if (t == "\xEF\xBF\xBD") {
        ++partial;
        continue;
      }
      EXPECT_EQ(text.substr(at, t.size()), t) << "token " << i << ": " << lp.dump();
    }
    EXPECT_GE(partial, 3) << lp.dump();
    // The generated token starts where the echoed prompt ends.
    EXPECT_EQ(lp["text_offset"][n - 1], prompt.size()) << lp.dump();
  }
}

// Errors speak the client's names: max_completion_tokens when that is what came, no gRPC field
// paths anywhere in a message; an empty stop string is ignored, as OpenAI does.
TEST(HttpApi, ErrorsNameTheFieldsAsSent) {
  HttpServer s(ChatOptions());
  int status = 0;
  const json hi = {{{"role", "user"}, {"content", "hi"}}};
  json r = s.PostJson("/v1/chat/completions", {{"messages", hi}, {"max_completion_tokens", 0}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(ErrorOf(r)["param"], "max_completion_tokens") << r.dump();
  r = s.PostJson("/v1/chat/completions", {{"messages", hi}, {"max_completion_tokens", 100000}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(ErrorOf(r)["param"], "max_completion_tokens") << r.dump();
  r = s.PostJson("/v1/completions", {{"prompt", "a"}, {"max_tokens", 1}, {"min_tokens", 5}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(ErrorOf(r)["param"], "min_tokens") << r.dump();
  EXPECT_EQ(ErrorOf(r)["message"].get<std::string>().find("stopping."), std::string::npos) << r.dump();
  r = s.PostJson("/v1/completions", {{"prompt", "a"}, {"max_tokens", 1}, {"stop", ""}}, &status);
  EXPECT_EQ(status, 200) << r.dump();
  r = s.PostJson("/v1/completions", {{"prompt", "a"}, {"max_tokens", 1}, {"stop", {"", "zz"}}}, &status);
  EXPECT_EQ(status, 200) << r.dump();
  r = s.PostJson("/detokenize", {{"tokens", {1.5}}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_NE(ErrorOf(r)["message"].get<std::string>().find("is not a token id"), std::string::npos) << r.dump();
}

TEST(HttpApi, BadFieldsAre400sNamingTheField) {
  HttpServer s;
  struct Case {
    json body;
    std::string param;
  };
  const std::vector<Case> cases = {
      {{{"prompt", "x"}, {"temperature", -1}}, "temperature"},   // RequestFromProto's rule
      {{{"prompt", "x"}, {"temperature", "hot"}}, "temperature"},
      {{{"prompt", "x"}, {"top_p", 0}}, "top_p"},
      {{{"prompt", "x"}, {"max_tokens", 0}}, "max_tokens"},
      {{{"prompt", "x"}, {"max_tokens", -3}}, "max_tokens"},
      {{{"prompt", "x"}, {"max_tokens", 100000}}, "max_tokens"},  // beyond the context: the engine's rule
      {{{"prompt", "x"}, {"stop", 5}}, "stop"},
      {{{"prompt", "x"}, {"response_format", {{"type", "json_object"}}}}, "response_format"},
      {{{"prompt", "x"}, {"n", 0}}, "n"},
      {{{"prompt", "x"}, {"logprobs", 500}}, "logprobs"},  // above --max-logprobs
      {{{"prompt", "x"}, {"stop_token_ids", {999999}}}, "stop_token_ids"},
      {{{"prompt", json::array({1, 999999})}}, "prompt"},
      {{{"prompt", ""}}, "prompt"},
      {{{"max_tokens", 3}}, "prompt"},
      {{{"prompt", "x"}, {"logit_bias", {{"1", 101}}}}, "logit_bias"},    // RequestFromProto's rule
      {{{"prompt", "x"}, {"logit_bias", {{"1", "up"}}}}, "logit_bias"},
      {{{"prompt", "x"}, {"logit_bias", {{"one", 1}}}}, "logit_bias"},
      {{{"prompt", "x"}, {"logit_bias", {{"-1", 1}}}}, "logit_bias"},
      {{{"prompt", "x"}, {"logit_bias", json::array({1, 2})}}, "logit_bias"},
      {{{"prompt", "x"}, {"logit_bias", {{"1", 1}, {"01", 2}}}}, "logit_bias"},  // one token twice
      {{{"prompt", "x"}, {"logit_bias", {{"999999", -1}}}}, "logit_bias"},  // outside the vocabulary: the engine's rule
  };
  int status = 0;
  for (const Case& c : cases) {
    json r = s.PostJson("/v1/completions", c.body, &status);
    EXPECT_EQ(status, 400) << c.body.dump() << " -> " << r.dump();
    json e = ErrorOf(r);
    EXPECT_EQ(e["param"], c.param) << c.body.dump() << " -> " << r.dump();
    EXPECT_EQ(e["type"], "invalid_request_error");
    EXPECT_EQ(e["message"].get<std::string>().rfind(c.param + ":", 0), 0u) << e.dump();
  }
  // Unknown fields are ignored; vLLM's top_k -1 means off.
  json r = s.PostJson("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}, {"frobnicate", true}, {"top_k", -1}}, &status);
  EXPECT_EQ(status, 200) << r.dump();
  // Nothing was admitted for the refused ones, and each was counted.
  const std::string page = s.Metrics();
  EXPECT_EQ(MetricValue(page, "sbserve_request_success_total{finished_reason=\"length\"}") +
                MetricValue(page, "sbserve_request_success_total{finished_reason=\"stop\"}") +
                MetricValue(page, "sbserve_request_success_total{finished_reason=\"eos\"}"),
            1);
  EXPECT_EQ(MetricValue(page, "sbserve_request_rejected_total{reason=\"invalid_argument\"}") +
                MetricValue(page, "sbserve_request_rejected_total{reason=\"out_of_range\"}"),
            static_cast<double>(cases.size()));
}

// OpenAI's logit_bias through the HTTP door: +100 makes every sampled token the biased one, -100
// keeps the greedy choice out, an empty object changes nothing.
TEST(HttpApi, LogitBiasSteersTheTokens) {
  HttpServer s;
  int status = 0;
  json d = s.PostJson("/detokenize", {{"tokens", {300}}}, &status);
  ASSERT_EQ(status, 200) << d.dump();
  const std::string piece = d["prompt"];
  ASSERT_FALSE(piece.empty());
  json r = s.PostJson("/v1/completions",
                      {{"prompt", "Once upon a time"}, {"max_tokens", 6}, {"temperature", 1.0}, {"ignore_eos", true},
                       {"logit_bias", {{"300", 100}}}},
                      &status);
  ASSERT_EQ(status, 200) << r.dump();
  std::string want;
  for (int i = 0; i < 6; ++i) want += piece;
  EXPECT_EQ(r["choices"][0]["text"], want);
  // Greedy, then greedy with its first token biased down by 100.
  const json greedy = {{"prompt", "Once upon a time"}, {"max_tokens", 4}, {"temperature", 0}, {"logprobs", 1},
                       {"ignore_eos", true}, {"logit_bias", json::object()}};
  r = s.PostJson("/v1/completions", greedy, &status);
  ASSERT_EQ(status, 200) << r.dump();
  const std::string first = r["choices"][0]["logprobs"]["tokens"][0];
  json t = s.PostJson("/tokenize", {{"prompt", first}, {"add_special_tokens", false}}, &status);
  ASSERT_EQ(status, 200) << t.dump();
  ASSERT_EQ(t["tokens"].size(), 1u) << t.dump();
  json banned = greedy;
  banned["logit_bias"] = {{std::to_string(t["tokens"][0].get<int>()), -100}};
  json b = s.PostJson("/v1/completions", banned, &status);
  ASSERT_EQ(status, 200) << b.dump();
  EXPECT_NE(b["choices"][0]["logprobs"]["tokens"][0], first);
  // Logprobs stay the raw distribution's: the banned token is still the most probable alternative.
  EXPECT_TRUE(b["choices"][0]["logprobs"]["top_logprobs"][0].contains(first)) << b.dump();
}

TEST(HttpApi, MalformedBodyUnknownModelRouteAndOversizeBody) {
  ServerOptions o = HttpOptions();
  o.max_message_bytes = 1 << 20;
  HttpServer s(o);
  httplib::Result r = s.Client().Post("/v1/completions", "{not json", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(ErrorOf(json::parse(r->body))["param"], "body");

  int status = 0;
  json m = s.PostJson("/v1/completions", {{"model", "gpt-4"}, {"prompt", "x"}}, &status);
  EXPECT_EQ(status, 404);
  EXPECT_EQ(ErrorOf(m)["code"], "model_not_found");

  r = s.Client().Get("/v1/nothing-here");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(ErrorOf(json::parse(r->body))["type"], "not_found_error");

  r = s.Client().Post("/v1/completions", json{{"prompt", std::string(2 << 20, 'a')}}.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(ErrorOf(json::parse(r->body))["code"], "payload_too_large");

  r = s.Client().Get("/v1/models");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  json models = json::parse(r->body);
  EXPECT_EQ(models["object"], "list");
  ASSERT_EQ(models["data"].size(), 1u);
  EXPECT_EQ(models["data"][0]["id"], "sbserve-demo");
  EXPECT_EQ(models["data"][0]["object"], "model");
  EXPECT_EQ(models["data"][0]["max_model_len"], 2048);
  EXPECT_EQ(s.Client().Get("/v1/models/sbserve-demo")->status, 200);
  EXPECT_EQ(s.Client().Get("/v1/models/other")->status, 404);
  EXPECT_EQ(s.Client().Get("/health")->status, 200);

  // A known path asked with the wrong method: 405 naming the one it takes.
  r = s.Client().Get("/v1/completions");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->get_header_value("Allow"), "POST");
  EXPECT_EQ(ErrorOf(json::parse(r->body))["code"], "method_not_allowed");
  r = s.Client().Delete("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->get_header_value("Allow"), "GET");
  r = s.Client().Post("/v1/models/sbserve-demo", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
}

// A chunked body (no Content-Length) is held to the same limit: 413 once it passes it, and a
// chunked body under it is served as any other.
TEST(HttpApi, ChunkedBodiesHaveTheSameSizeLimit) {
  ServerOptions o = HttpOptions();
  o.max_message_bytes = 1 << 20;
  HttpServer s(o);
  // Over the limit but within twice it, which the server reads to the end before it answers (past
  // that it stops reading, and a client still writing may see the connection drop first).
  const std::string big = json{{"prompt", "x"}, {"max_tokens", 1}, {"junk", std::string(3 << 19, 'a')}}.dump();
  auto chunked = [](const std::string& body) {
    return [body](size_t offset, httplib::DataSink& sink) {
      if (offset < body.size()) {
        const size_t n = std::min<size_t>(64 << 10, body.size() - offset);
        sink.write(body.data() + offset, n);
      } else {
        sink.done();
      }
      return true;
    };
  };
  httplib::Result r = s.Client().Post("/v1/completions", chunked(big), "application/json");
  ASSERT_TRUE(r) << "no reply: " << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 413) << r->body;
  EXPECT_EQ(ErrorOf(json::parse(r->body))["code"], "payload_too_large");
  const std::string small = json{{"prompt", "Once upon"}, {"max_tokens", 2}}.dump();
  r = s.Client().Post("/v1/completions", chunked(small), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["usage"]["completion_tokens"], 2);
  // The server goes on serving.
  int status = 0;
  s.PostJson("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1}}, &status);
  EXPECT_EQ(status, 200);
}

// The choices of one request are admitted together: n x prompts beyond what the server queues is
// refused before any choice runs, naming n, and nothing is counted as cancelled.
TEST(HttpApi, ChoicesBeyondTheQueueAreRefusedBeforeAnyIsSubmitted) {
  ServerOptions o = HttpOptions();
  o.engine.max_queued_requests = 4;
  HttpServer s(o);
  int status = 0;
  json r = s.PostJson("/v1/completions", {{"prompt", {"a", "b"}}, {"n", 3}, {"max_tokens", 1}}, &status);
  EXPECT_EQ(status, 400) << r.dump();
  EXPECT_EQ(ErrorOf(r)["param"], "n") << r.dump();
  EXPECT_NE(ErrorOf(r)["message"].get<std::string>().find("6 choices"), std::string::npos) << r.dump();
  httplib::Result m = s.Client().Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(MetricValue(m->body, "sbserve_request_success_total{finished_reason=\"cancelled\"}"), 0) << "nothing ran";
  r = s.PostJson("/v1/completions", {{"prompt", {"a", "b"}}, {"n", 2}, {"max_tokens", 1}}, &status);
  EXPECT_EQ(status, 200) << r.dump();
  EXPECT_EQ(r["choices"].size(), 4u);
}

TEST(HttpApi, ServedModelNameIsTheOneAccepted) {
  ServerOptions o = HttpOptions();
  o.served_model_name = "my-model";
  HttpServer s(o);
  int status = 0;
  s.PostJson("/v1/completions", {{"model", "my-model"}, {"prompt", "x"}, {"max_tokens", 1}}, &status);
  EXPECT_EQ(status, 200);
  s.PostJson("/v1/completions", {{"model", "sbserve-demo"}, {"prompt", "x"}, {"max_tokens", 1}}, &status);
  EXPECT_EQ(status, 404);
}

TEST(HttpApi, LoadingAndDrainingAre503) {
  ServerOptions o = HttpOptions();
  HttpServer s(o, /*load=*/false);
  int status = 0;
  json r = s.PostJson("/v1/completions", {{"prompt", "x"}}, &status);
  EXPECT_EQ(status, 503);
  EXPECT_EQ(ErrorOf(r)["type"], "service_unavailable");
  EXPECT_EQ(s.Client().Get("/ready")->status, 503);
  // The model list answers while loading, without what only a loaded model knows.
  r = s.GetJson("/v1/models", &status);
  EXPECT_EQ(status, 200);
  EXPECT_FALSE(r["data"][0].contains("root"));
  EXPECT_FALSE(r["data"][0].contains("max_model_len"));
  ASSERT_TRUE(s.server().LoadModel().ok());
  r = s.GetJson("/v1/models", &status);
  EXPECT_TRUE(r["data"][0]["root"].is_string() && !r["data"][0]["root"].get<std::string>().empty()) << r;
  s.PostJson("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1}}, &status);
  EXPECT_EQ(status, 200);
  s.server().BeginDrain();
  r = s.PostJson("/v1/completions", {{"prompt", "x"}}, &status);
  EXPECT_EQ(status, 503);
  EXPECT_NE(ErrorOf(r)["message"].get<std::string>().find("draining"), std::string::npos);
  const std::string page = s.Metrics();
  EXPECT_EQ(MetricValue(page, "sbserve_request_rejected_total{reason=\"loading\"}"), 1);
  EXPECT_EQ(MetricValue(page, "sbserve_request_rejected_total{reason=\"draining\"}"), 1);
}

// A drain that begins while the model loads wins: the load does not turn the server ready.
TEST(HttpApi, ADrainBeforeTheLoadEndsKeepsTheServerNotReady) {
  HttpServer s(HttpOptions(), /*load=*/false);
  s.server().BeginDrain();
  ASSERT_TRUE(s.server().LoadModel().ok());
  EXPECT_FALSE(s.server().ready());
  EXPECT_EQ(s.Client().Get("/ready")->status, 503);
}

// Streams a request in the background until `stop` is set; returns after the first chunk.
struct HeldStream {
  std::thread thread;
  std::atomic<bool> stop{false};
  std::atomic<int> chunks{0};
};

void Hold(HttpServer& s, HeldStream* h, const json& body, const httplib::Headers& headers = {}) {
  h->thread = std::thread([&s, h, body, headers] {
    httplib::Client c = s.Client();
    httplib::Request req;
    req.headers = headers;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [h](const char*, size_t, uint64_t, uint64_t) {
      h->chunks.fetch_add(1);
      return !h->stop.load();  // false: the client stops reading and closes the connection
    };
    httplib::Response res;
    httplib::Error err;
    c.send(req, res, err);
  });
  for (int i = 0; i < 6000 && h->chunks.load() == 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_GT(h->chunks.load(), 0) << "the held stream never started";
}

TEST(HttpApi, StreamingClientThatDisconnectsCancelsAndFreesKv) {
  HttpServer s;
  HeldStream h;
  Hold(s, &h, {{"prompt", "Once upon a time"}, {"max_tokens", 1900}, {"ignore_eos", true}, {"stream", true}});
  ASSERT_TRUE(s.WaitMetric("sbserve_num_requests_running", 1));
  EXPECT_GT(MetricValue(s.Metrics(), "sbserve_kv_cache_used_blocks"), 0);
  h.stop.store(true);
  h.thread.join();
  // Cancelled, not run to its 1900 tokens; its KV blocks are free again.
  EXPECT_TRUE(s.WaitMetric("sbserve_request_success_total{finished_reason=\"cancelled\"}", 1));
  EXPECT_TRUE(s.WaitMetric("sbserve_kv_cache_used_blocks", 0));
  EXPECT_TRUE(s.WaitMetric("sbserve_num_requests_running", 0));
  EXPECT_EQ(MetricValue(s.Metrics(), "sbserve_request_success_total{finished_reason=\"length\"}"), 0);
}

// A TCP connection to 127.0.0.1:port; -1 on failure.
int ConnectLoopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

TEST(HttpApi, NonStreamingClientThatDisconnectsCancels) {
  HttpServer s;
  const int fd = ConnectLoopback(s.server().http_port());
  ASSERT_GE(fd, 0);
  const std::string body = json{{"prompt", "Once upon a time"}, {"max_tokens", 1900}, {"ignore_eos", true}}.dump();
  const std::string req = absl::StrCat("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
                                       "Content-Length: ", body.size(), "\r\n\r\n", body);
  ASSERT_EQ(write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  ASSERT_TRUE(s.WaitMetric("sbserve_num_requests_running", 1));
  close(fd);
  EXPECT_TRUE(s.WaitMetric("sbserve_request_success_total{finished_reason=\"cancelled\"}", 1));
  EXPECT_TRUE(s.WaitMetric("sbserve_kv_cache_used_blocks", 0));
}

TEST(HttpApi, AdmissionRefusalIs429WithRetryAfterAndLeavesNothing) {
  ServerOptions o = HttpOptions();
  o.engine.max_num_seqs = 1;
  o.engine.max_queued_requests = 2;
  o.engine.retry_after = absl::Milliseconds(1500);
  HttpServer s(o);
  HeldStream running;
  Hold(s, &running, {{"prompt", "hold"}, {"max_tokens", 1900}, {"ignore_eos", true}, {"stream", true}});
  ASSERT_TRUE(s.WaitMetric("sbserve_num_requests_running", 1));
  // One request waits behind it (it runs its one token once the held stream is gone).
  std::thread queued([&s] { s.Post("/v1/completions", {{"prompt", "wait"}, {"max_tokens", 1}}); });
  ASSERT_TRUE(s.WaitMetric("sbserve_num_requests_waiting", 1));
  // n = 2 with one request waiting and a queue of 2: the request is refused whole, before either
  // choice is submitted.
  httplib::Result r = s.Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 4}, {"n", 2}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429);
  EXPECT_EQ(r->get_header_value("Retry-After"), "2");  // seconds, rounded up
  EXPECT_EQ(r->get_header_value("retry-after-ms"), "1500");
  EXPECT_EQ(ErrorOf(json::parse(r->body))["type"], "rate_limit_error");
  const std::string page = s.Metrics();
  EXPECT_EQ(MetricValue(page, "sbserve_request_success_total{finished_reason=\"cancelled\"}"), 0) << "nothing withdrawn";
  EXPECT_EQ(MetricValue(page, "sbserve_request_rejected_total{reason=\"queue_full\"}"), 1);
  EXPECT_EQ(MetricValue(page, "sbserve_num_requests_running"), 1) << "the held stream is still running";
  running.stop.store(true);
  running.thread.join();
  queued.join();
  EXPECT_TRUE(s.WaitMetric("sbserve_num_requests_running", 0));
  EXPECT_TRUE(s.WaitMetric("sbserve_num_requests_waiting", 0));
}

// One HTTP/1.1 response read off a raw socket (headers, then Content-Length bytes); "" on EOF or
// after 10 s.
std::string ReadResponse(int fd) {
  std::string in;
  char buf[65536];
  for (int i = 0; i < 1000; ++i) {
    const size_t head = in.find("\r\n\r\n");
    if (head != std::string::npos) {
      size_t length = 0;
      const size_t at = in.find("Content-Length: ");
      if (at != std::string::npos && at < head) length = std::stoul(in.substr(at + 16));
      if (in.size() >= head + 4 + length) return in.substr(0, head + 4 + length);
    }
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 10) <= 0) continue;
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) return "";
    in.append(buf, static_cast<size_t>(n));
  }
  return "";
}

// After a refused body (no key, or over the limit, chunked or not) the connection answers its next
// request (HTTP/1.1 keep-alive, requests sent one after the other).
TEST(HttpApi, ARefusedBodyLeavesTheConnectionUsable) {
  const std::string path = ::testing::TempDir() + "/http_api_keys_keepalive.txt";
  std::ofstream(path) << "sk-k keeper\n";
  ServerOptions o = HttpOptions();
  o.api_keys_file = path;
  o.max_message_bytes = 1 << 20;
  HttpServer s(o);
  const std::string small = json{{"prompt", "x"}, {"max_tokens", 1}}.dump();
  const std::string big = json{{"prompt", "x"}, {"max_tokens", 1}, {"junk", std::string((1 << 20) + 10, 'a')}}.dump();
  auto with_length = [](const std::string& body, const std::string& auth) {
    return absl::StrCat("POST /v1/completions HTTP/1.1\r\nHost: x\r\n", auth,
                        "Content-Type: application/json\r\nContent-Length: ", body.size(), "\r\n\r\n", body);
  };
  auto chunked = [](const std::string& body, const std::string& auth) {
    std::string out = absl::StrCat("POST /v1/completions HTTP/1.1\r\nHost: x\r\n", auth,
                                   "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (size_t i = 0; i < body.size(); i += 65536) {
      const std::string part = body.substr(i, 65536);
      absl::StrAppend(&out, absl::Hex(part.size()), "\r\n", part, "\r\n");
    }
    return out + "0\r\n\r\n";
  };
  const std::string key = "Authorization: Bearer sk-k\r\n";
  struct Case {
    std::string request;
    int status;
  };
  const std::vector<Case> cases = {{with_length(small, ""), 401},   {chunked(small, ""), 401},
                                   {with_length(big, key), 413},    {chunked(big, key), 413},
                                   {chunked(small, key), 200}};
  for (size_t c = 0; c < cases.size(); ++c) {
    SCOPED_TRACE(c);
    const int fd = ConnectLoopback(s.server().http_port());
    ASSERT_GE(fd, 0);
    const std::string& req = cases[c].request;
    ASSERT_EQ(write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
    const std::string first = ReadResponse(fd);
    EXPECT_TRUE(absl::StartsWith(first, absl::StrCat("HTTP/1.1 ", cases[c].status))) << first.substr(0, 200);
    const std::string next = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    ASSERT_EQ(write(fd, next.data(), next.size()), static_cast<ssize_t>(next.size()));
    const std::string second = ReadResponse(fd);
    EXPECT_TRUE(absl::StartsWith(second, "HTTP/1.1 200")) << "the next request on the connection: " << second;
    close(fd);
  }
}

TEST(HttpApi, ApiKeysGuardTheApiButNotTheProbes) {
  const std::string path = ::testing::TempDir() + "/http_api_keys.txt";
  std::ofstream(path) << "sk-test-1 tester\n";
  ServerOptions o = HttpOptions();
  o.api_keys_file = path;
  HttpServer s(o);
  const json body = {{"prompt", "x"}, {"max_tokens", 1}};
  httplib::Result r = s.Post("/v1/completions", body);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(r->get_header_value("WWW-Authenticate"), "Bearer");
  EXPECT_EQ(ErrorOf(json::parse(r->body))["type"], "authentication_error");
  r = s.Post("/v1/completions", body, {{"Authorization", "Bearer sk-wrong"}});
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(r->body.find("sk-wrong"), std::string::npos) << "the presented key is never echoed";
  r = s.Post("/v1/completions", body, {{"Authorization", "Bearer sk-test-1"}});
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(s.Client().Get("/v1/models")->status, 401);
  EXPECT_EQ(s.Client().Get("/health")->status, 200);
  EXPECT_EQ(s.Client().Get("/metrics")->status, 401);
}

TEST(HttpApi, ApiKeyConcurrencyLimitCountsHttpRequests) {
  const std::string path = ::testing::TempDir() + "/http_api_keys_limited.txt";
  std::ofstream(path) << "sk-one one 1\n";
  ServerOptions o = HttpOptions();
  o.api_keys_file = path;
  o.metrics_open = true;
  HttpServer s(o);
  const httplib::Headers auth = {{"Authorization", "Bearer sk-one"}};
  HeldStream h;
  Hold(s, &h, {{"prompt", "hold"}, {"max_tokens", 1900}, {"ignore_eos", true}, {"stream", true}}, auth);
  httplib::Result r = s.Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}}, auth);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429) << r->body;
  EXPECT_NE(r->body.find("'one'"), std::string::npos) << "names the key: " << r->body;
  EXPECT_FALSE(r->has_header("Retry-After")) << "a key's own limit has no engine retry delay";
  // Not an admission refusal: the request metrics do not count it (as on gRPC).
  EXPECT_EQ(MetricValue(s.Metrics(), "sbserve_request_rejected_total{reason=\"queue_full\"}"), 0);
  h.stop.store(true);
  h.thread.join();
  // The held request's slot comes back once it is cancelled.
  int status = 0;
  for (int i = 0; i < 200; ++i) {
    s.PostJson("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}}, &status, auth);
    if (status == 200) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(status, 200);
  // An n = 3 request holds the key once and gives it back once: afterwards the limit still holds.
  s.PostJson("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}, {"n", 3}}, &status, auth);
  EXPECT_EQ(status, 200);
  HeldStream again;
  Hold(s, &again, {{"prompt", "hold"}, {"max_tokens", 1900}, {"ignore_eos", true}, {"stream", true}}, auth);
  r = s.Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}}, auth);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429) << "the limit of 1 still holds after an n = 3 request";
  again.stop.store(true);
  again.thread.join();
}

TEST(HttpApi, DeadlineHeaderEndsTheRequestWith504) {
  HttpServer s;
  int status = 0;
  json r = s.PostJson("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1900}, {"ignore_eos", true}}, &status,
                      {{"X-Request-Timeout-Ms", "200"}});
  EXPECT_EQ(status, 504) << r.dump();
  EXPECT_EQ(ErrorOf(r)["type"], "timeout_error");
  r = s.PostJson("/v1/completions", {{"prompt", "x"}}, &status, {{"X-Request-Timeout-Ms", "soon"}});
  EXPECT_EQ(status, 400);
}

TEST(HttpApi, StreamingNChoicesEachFinishOnce) {
  HttpServer s;
  httplib::Result r = s.Post("/v1/completions", {{"prompt", "Once"}, {"max_tokens", 5}, {"n", 2}, {"stream", true}, {"ignore_eos", true}});
  ASSERT_TRUE(r);
  std::vector<std::string> data = SseData(r->body);
  ASSERT_FALSE(data.empty());
  EXPECT_EQ(data.back(), "[DONE]");
  int finishes[2] = {0, 0};
  for (size_t i = 0; i + 1 < data.size(); ++i) {
    json c = json::parse(data[i]);
    const int idx = c["choices"][0]["index"];
    ASSERT_TRUE(idx == 0 || idx == 1);
    if (!c["choices"][0]["finish_reason"].is_null()) finishes[idx]++;
  }
  EXPECT_EQ(finishes[0], 1);
  EXPECT_EQ(finishes[1], 1);
}

TEST(HttpApi, TokenIdPromptsAndDetokenize) {
  HttpServer s;
  int status = 0;
  json tok = s.PostJson("/tokenize", {{"prompt", "Once upon a time"}}, &status);
  ASSERT_EQ(status, 200);
  EXPECT_EQ(tok["count"], tok["tokens"].size());
  json detok = s.PostJson("/detokenize", {{"tokens", tok["tokens"]}}, &status);
  EXPECT_EQ(detok["prompt"], "Once upon a time");
  // A token-id prompt generates what the text prompt does (greedy).
  json a = s.PostJson("/v1/completions", {{"prompt", tok["tokens"]}, {"max_tokens", 6}, {"temperature", 0}}, &status);
  ASSERT_EQ(status, 200) << a.dump();
  json b = s.PostJson("/v1/completions", {{"prompt", "Once upon a time"}, {"max_tokens", 6}, {"temperature", 0}}, &status);
  EXPECT_EQ(a["choices"][0]["text"], b["choices"][0]["text"]);
  EXPECT_EQ(a["usage"]["prompt_tokens"], tok["count"]);
  // A list of prompts: choice index = prompt * n + j; echo puts the prompt first.
  json multi = s.PostJson("/v1/completions", {{"prompt", {"Once", "upon"}}, {"max_tokens", 2}, {"echo", true}}, &status);
  ASSERT_EQ(status, 200) << multi.dump();
  ASSERT_EQ(multi["choices"].size(), 2u);
  EXPECT_EQ(multi["choices"][1]["text"].get<std::string>().rfind("upon", 0), 0u);
  detok = s.PostJson("/detokenize", {{"tokens", {1, -4}}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(ErrorOf(detok)["param"], "tokens");
}

// echo with logprobs, as evaluation harnesses score text: the logprobs cover every prompt token
// (the first with nulls) and then the generated ones; each prompt token's logprob equals what a
// request for the tokens before it reports when its first token is forced to that one. Streaming
// gives the same entries; a token-id prompt is echoed as its text.
TEST(HttpApi, EchoWithLogprobsScoresThePromptTokens) {
  HttpServer s;
  int status = 0;
  const std::string prompt = "Once upon a time there was";
  json tok = s.PostJson("/tokenize", {{"prompt", prompt}}, &status);
  ASSERT_EQ(status, 200);
  const std::vector<int> ids = tok["tokens"];
  ASSERT_GE(ids.size(), 3u);
  const json req = {{"prompt", prompt}, {"max_tokens", 1}, {"echo", true}, {"logprobs", 2}, {"temperature", 0},
                    {"ignore_eos", true}};
  json r = s.PostJson("/v1/completions", req, &status);
  ASSERT_EQ(status, 200) << r.dump();
  const std::string text = r["choices"][0]["text"];
  ASSERT_EQ(text.rfind(prompt, 0), 0u) << text;
  const json& lp = r["choices"][0]["logprobs"];
  const size_t n = ids.size() + 1;
  for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) ASSERT_EQ(lp[k].size(), n) << k;
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  size_t at = 0;
  for (size_t i = 0; i < n; ++i) {
    const std::string t = lp["tokens"][i];
    EXPECT_EQ(lp["text_offset"][i], at) << i;
    if (text.compare(at, t.size(), t) == 0) at += t.size();
    if (i == 0) continue;
    EXPECT_LE(lp["token_logprobs"][i].get<double>(), 0.0);
    const json& top = lp["top_logprobs"][i];
    EXPECT_GE(top.size(), 2u);
    EXPECT_LE(top.size(), 3u);
    ASSERT_TRUE(top.contains(t)) << i << " " << top.dump();
    EXPECT_EQ(top[t], lp["token_logprobs"][i]);
  }
  EXPECT_EQ(at, text.size());
  // The last prompt token through the other path.
  std::vector<int> before(ids.begin(), ids.end() - 1);
  json forced = s.PostJson("/v1/completions",
                           {{"prompt", before}, {"max_tokens", 1}, {"logprobs", 0}, {"temperature", 0},
                            {"logit_bias", {{std::to_string(ids.back()), 100}}}},
                           &status);
  ASSERT_EQ(status, 200) << forced.dump();
  EXPECT_NEAR(forced["choices"][0]["logprobs"]["token_logprobs"][0].get<double>(),
              lp["token_logprobs"][ids.size() - 1].get<double>(), 1e-4);
  // Streaming: the echo chunk carries the prompt's entries, then the generated token's follow.
  json sreq = req;
  sreq["stream"] = true;
  httplib::Result sr = s.Post("/v1/completions", sreq);
  ASSERT_TRUE(sr);
  json streamed = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
                   {"text_offset", json::array()}};
  std::string stext;
  for (const std::string& d : SseData(sr->body)) {
    if (d == "[DONE]") continue;
    const json c = json::parse(d)["choices"][0];
    stext += c["text"].get<std::string>();
    if (c["logprobs"].is_null()) continue;
    for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) {
      for (const json& v : c["logprobs"][k]) streamed[k].push_back(v);
    }
  }
  EXPECT_EQ(stext, text);
  EXPECT_EQ(streamed, lp);
  // A token-id prompt is echoed as its text.
  json by_ids = s.PostJson("/v1/completions", {{"prompt", ids}, {"max_tokens", 1}, {"echo", true}, {"temperature", 0}},
                           &status);
  ASSERT_EQ(status, 200) << by_ids.dump();
  EXPECT_EQ(by_ids["choices"][0]["text"].get<std::string>().rfind(prompt, 0), 0u) << by_ids.dump();
}

// A streamed choice lists its tokens' logprobs with the same offsets as the whole response, also
// when text comes later than its token: stop strings that never match but begin with a space or
// an "e" hold back every text ending in one.
TEST(HttpApi, StreamedLogprobOffsetsEqualTheWholeResponsesWhenTextIsHeldBack) {
  HttpServer s;
  const json req = {{"prompt", "The weather over the sea"}, {"max_tokens", 40}, {"logprobs", 1},
                    {"temperature", 0}, {"ignore_eos", true}, {"stop", {" \u00a7\u00a7", "e\u00a7\u00a7"}}};
  int status = 0;
  const json whole = s.PostJson("/v1/completions", req, &status);
  ASSERT_EQ(status, 200) << whole.dump();
  const json lp = whole["choices"][0]["logprobs"];
  const std::string text = whole["choices"][0]["text"];
  ASSERT_EQ(lp["tokens"].size(), 40u);
  json sreq = req;
  sreq["stream"] = true;
  httplib::Result sr = s.Post("/v1/completions", sreq);
  ASSERT_TRUE(sr);
  json offsets = json::array();
  std::string stext;
  int held = 0;  // chunks whose logprobs list more tokens than their text holds
  for (const std::string& d : SseData(sr->body)) {
    if (d == "[DONE]") continue;
    const json c = json::parse(d)["choices"][0];
    stext += c["text"].get<std::string>();
    if (c["logprobs"].is_null()) continue;
    std::string listed;
    for (const json& t : c["logprobs"]["tokens"]) listed += t.get<std::string>();
    if (listed != c["text"].get<std::string>()) ++held;
    for (const json& v : c["logprobs"]["text_offset"]) offsets.push_back(v);
  }
  EXPECT_EQ(stext, text);
  EXPECT_GT(held, 0) << "no text was held back: the test does not exercise the case";
  EXPECT_EQ(offsets, lp["text_offset"]);
}

TEST(HttpApi, StreamPastItsDeadlineEndsWithAnErrorEventThenDone) {
  HttpServer s;
  httplib::Result r = s.Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1900}, {"ignore_eos", true}, {"stream", true}},
                             {{"X-Request-Timeout-Ms", "300"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << "the status went out with the headers";
  std::vector<std::string> data = SseData(r->body);
  ASSERT_GE(data.size(), 2u);
  EXPECT_EQ(data.back(), "[DONE]");
  json last = json::parse(data[data.size() - 2]);
  EXPECT_EQ(ErrorOf(last)["type"], "timeout_error") << last.dump();
  for (size_t i = 0; i + 2 < data.size(); ++i) {
    EXPECT_TRUE(json::parse(data[i])["choices"][0]["finish_reason"].is_null()) << "no finish before the error";
  }
  EXPECT_TRUE(s.WaitMetric("sbserve_request_success_total{finished_reason=\"deadline\"}", 1));
}

// Many clients at once, streaming and not, a third of them going away early: every request is
// accounted for (finished or cancelled) and nothing is left running or holding KV.
TEST(HttpApi, ConcurrentClientsSomeLeavingLeaveNothingBehind) {
  ServerOptions o = HttpOptions();
  o.http_threads = 32;
  HttpServer s(o);
  constexpr int kClients = 18;
  std::atomic<int> completed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      const bool stream = i % 2 == 0;
      const bool leave = i % 3 == 0;
      httplib::Client c = s.Client();
      httplib::Request req;
      req.method = "POST";
      req.path = "/v1/completions";
      req.body = json{{"prompt", absl::StrCat("client ", i)},
                      {"max_tokens", leave ? 1900 : 16},
                      {"ignore_eos", true},
                      {"stream", stream},
                      {"n", i % 4 == 1 ? 2 : 1}}
                     .dump();
      req.set_header("Content-Type", "application/json");
      if (leave) {
        // Leave after the first bytes (streaming) or after a short wait (not streaming).
        c.set_read_timeout(0, 300000);
        req.content_receiver = [](const char*, size_t, uint64_t, uint64_t) { return false; };
      }
      httplib::Response res;
      httplib::Error err;
      const bool ok = c.send(req, res, err);
      if (!leave && ok && res.status == 200) completed.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(completed.load(), kClients - kClients / 3);
  EXPECT_TRUE(s.WaitMetric("sbserve_num_requests_running", 0));
  EXPECT_TRUE(s.WaitMetric("sbserve_num_requests_waiting", 0));
  EXPECT_TRUE(s.WaitMetric("sbserve_kv_cache_used_blocks", 0));
  // Engine requests: one per choice; the leavers' were cancelled, none ran to 1900 tokens.
  int choices = 0, leaver_choices = 0;
  for (int i = 0; i < kClients; ++i) {
    const int n = i % 4 == 1 ? 2 : 1;
    choices += n;
    if (i % 3 == 0) leaver_choices += n;
  }
  const std::string page = s.Metrics();
  EXPECT_EQ(MetricValue(page, "sbserve_request_success_total{finished_reason=\"cancelled\"}"), leaver_choices);
  EXPECT_EQ(MetricValue(page, "sbserve_request_success_total{finished_reason=\"length\"}"), choices - leaver_choices);
}

// Certificates made by the openssl command in a scratch directory: a CA, a server leaf for
// localhost / 127.0.0.1 and a client leaf.
class Certs {
 public:
  Certs() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "sbserve-http-tls-XXXXXX").string();
    EXPECT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    Run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 "
        "-subj /CN=ca");
    for (const char* leaf : {"srv", "cli"}) {
      const bool server = std::string(leaf) == "srv";
      Run(absl::StrCat("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ", leaf, ".key -out ",
                       leaf, ".csr -subj /CN=", server ? "localhost" : "client"));
      Run(absl::StrCat("printf '", server ? "subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth"
                                          : "extendedKeyUsage=clientAuth",
                       "\\n' > ", leaf, ".ext"));
      Run(absl::StrCat("openssl x509 -req -in ", leaf, ".csr -CA ca.pem -CAkey ca.key -CAcreateserial -out ", leaf,
                       ".pem -days 2 -extfile ", leaf, ".ext"));
    }
  }
  ~Certs() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

 private:
  void Run(const std::string& cmd) {
    ASSERT_EQ(std::system(absl::StrCat("cd ", dir_, " && ", cmd, " >/dev/null 2>&1").c_str()), 0) << cmd;
  }
  std::string dir_;
};

TEST(HttpApi, MutualTlsLikeTheGrpcPortAndAbortOverTls) {
  Certs certs;
  ServerOptions o = HttpOptions();
  o.tls_cert = certs.Path("srv.pem");
  o.tls_key = certs.Path("srv.key");
  o.tls_client_ca = certs.Path("ca.pem");
  HttpServer s(o);
  auto client = [&](bool with_cert) {
    auto c = with_cert ? std::make_unique<httplib::SSLClient>("localhost", s.server().http_port(), certs.Path("cli.pem"),
                                                              certs.Path("cli.key"))
                       : std::make_unique<httplib::SSLClient>("localhost", s.server().http_port());
    c->set_ca_cert_path(certs.Path("ca.pem").c_str());
    c->enable_server_certificate_verification(true);
    c->set_connection_timeout(5, 0);
    c->set_read_timeout(30, 0);
    return c;
  };
  // ignore_eos: the success counter below wants finished_reason "length" however the draws go.
  const std::string body = json{{"prompt", "Once"}, {"max_tokens", 3}, {"ignore_eos", true}}.dump();
  httplib::Result r = client(true)->Post("/v1/completions", body, "application/json");
  ASSERT_TRUE(r) << "HTTPS with a client certificate";
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_FALSE(client(false)->Post("/v1/completions", body, "application/json")) << "no client certificate: no reply";
  httplib::Client plain("127.0.0.1", s.server().http_port());
  plain.set_read_timeout(5, 0);
  EXPECT_FALSE(plain.Post("/v1/completions", body, "application/json")) << "plaintext: no reply";

  // A streaming client that goes away over TLS is cancelled too.
  std::atomic<int> chunks{0};
  std::atomic<bool> stop{false};
  std::thread t([&] {
    auto c = client(true);
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = json{{"prompt", "Once"}, {"max_tokens", 1900}, {"ignore_eos", true}, {"stream", true}}.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
      chunks.fetch_add(1);
      return !stop.load();
    };
    httplib::Response res;
    httplib::Error err;
    c->send(req, res, err);
  });
  for (int i = 0; i < 6000 && chunks.load() == 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  stop.store(true);
  t.join();
  ASSERT_GT(chunks.load(), 0);
  // /metrics over the same mTLS port.
  auto metrics = [&] {
    httplib::Result m = client(true)->Get("/metrics");
    return m ? m->body : std::string();
  };
  bool cancelled = false;
  for (int i = 0; i < 2000 && !cancelled; ++i) {
    cancelled = MetricValue(metrics(), "sbserve_request_success_total{finished_reason=\"cancelled\"}") == 1;
    if (!cancelled) absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_TRUE(cancelled);
  EXPECT_EQ(MetricValue(metrics(), "sbserve_request_success_total{finished_reason=\"length\"}"), 1);
}

}  // namespace
}  // namespace sbserve
