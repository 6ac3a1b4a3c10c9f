// Chaos on the OpenAI HTTP door of a real server on loopback (CPU backend, demo model): client
// threads send a seeded mix of random bodies (tests/server/openai/body_gen.h: every known field
// absent, valid, at an edge or of a wrong type), valid completions and chats, streaming or not,
// malformed JSON, and requests whose deadline header cannot be met. The request parsers are the
// oracle: a body they refuse must be answered 400 with the field they name as `param`; one they
// take ends 200 (with one finish per choice, and a stream ending in [DONE]), or 400 / 404 from the
// engine's own checks or the model name. Afterwards nothing is left running, no KV block is in use,
// the HTTP request counter holds exactly the statuses the clients saw, and the server still answers.
//
// SBSERVE_HTTP_CHAOS_OPS (default 600) and SBSERVE_HTTP_CHAOS_THREADS (default 16) size the run.
#include <httplib.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/openai/chat_template.h"
#include "server/openai/protocol.h"
#include "server/server.h"
#include "tests/server/live_server.h"
#include "tests/server/openai/body_gen.h"
#include "tests/server/openai/sse.h"

namespace sbserve {
namespace {

using nlohmann::json;
using testing::MetricValue;

int EnvInt(const char* name, int def) {
  const char* v = std::getenv(name);
  return v != nullptr && std::atoi(v) > 0 ? std::atoi(v) : def;
}

// Keeps a random body's generation short: at most 24 tokens and 4 choices per prompt.
void Shorten(json& b) {
  for (const char* k : {"max_tokens", "max_completion_tokens"}) {
    if (b.contains(k) && b[k].is_number() && b[k].get<double>() > 24) b[k] = 24;
  }
  if (b.contains("n") && b["n"].is_number() && b["n"].get<double>() > 4) b["n"] = 4;
  if (b.contains("best_of") && b["best_of"].is_number() && b["best_of"].get<double>() > 4) b["best_of"] = 4;
}

struct Tally {
  std::mutex mu;
  std::map<std::string, int> statuses;  // "endpoint code" -> count, as the clients saw them
  int parsed = 0, refused = 0, ok = 0, streamed = 0, deadlines = 0, malformed = 0;
};

TEST(HttpChaos, SeededMixEndsWithDocumentedStatusesAndLeavesNothingBehind) {
  ServerOptions o = testing::LoopbackServerOptions();
  o.http_port = 0;
  o.http_threads = 32;
  o.chat_template = SBSERVE_TEST_CHAT_TEMPLATE;
  o.engine.default_max_tokens = 8;
  Server server(o);
  ASSERT_TRUE(server.Start().ok());
  ASSERT_TRUE(server.LoadModel().ok());
  const int port = server.http_port();
  // The same template the server loaded, for the chat parser as oracle.
  absl::StatusOr<ChatTemplate> tmpl = ChatTemplate::FromSource(
      [] {
        std::ifstream f(SBSERVE_TEST_CHAT_TEMPLATE);
        return std::string(std::istreambuf_iterator<char>(f), {});
      }(),
      "<|endoftext|>", "<|endoftext|>");
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();

  const int ops = EnvInt("SBSERVE_HTTP_CHAOS_OPS", 600);
  const int threads = EnvInt("SBSERVE_HTTP_CHAOS_THREADS", 16);
  Tally tally;
  auto run_op = [&](int op) {
    std::mt19937_64 rng(1000 + op);
    testing::BodyGen gen(7000 + op);
    const int kind = static_cast<int>(rng() % 10);
    const bool chat = kind == 3 || (kind < 5 && rng() % 3 == 0);
    const std::string path = chat ? "/v1/chat/completions" : "/v1/completions";
    std::string raw;
    json body;
    httplib::Headers headers;
    enum { kRandom, kValid, kMalformed, kDeadline } what;
    if (kind < 5) {
      what = kRandom;
      body = gen.Body(chat);
      Shorten(body);
    } else if (kind < 8) {
      what = kValid;
      body = chat ? json{{"messages", {{{"role", "user"}, {"content", "Tell me a story."}}}}}
                  : json{{"prompt", "Once upon a time"}};
      body["max_tokens"] = 2 + static_cast<int>(rng() % 10);
      body["stream"] = rng() % 2 == 0;
      body["n"] = 1 + static_cast<int>(rng() % 2);
      body["seed"] = op;
    } else if (kind < 9) {
      what = kMalformed;
      static const char* kBad[] = {"{not json", "", "[]", "null", "{\"prompt\":", "\"text\"", "{\"prompt\": \"x\"}}"};
      raw = kBad[rng() % std::size(kBad)];
    } else {
      what = kDeadline;
      body = {{"prompt", "Once upon a time"}, {"max_tokens", 1500}, {"ignore_eos", true}, {"stream", rng() % 2 == 0}};
      headers.emplace("X-Request-Timeout-Ms", std::to_string(1 + rng() % 5));
    }
    if (what != kMalformed) raw = body.dump();

    // The parsers' verdict on the body.
    absl::StatusOr<openai::ParsedRequest> verdict = absl::UnknownError("not parsed");
    if (what != kMalformed) {
      verdict = chat ? openai::ParseChatRequest(body, &*tmpl, "") : openai::ParseCompletionRequest(body);
    }

    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120, 0);
    httplib::Result r = c.Post(path.c_str(), headers, raw, "application/json");
    ASSERT_TRUE(r) << "no reply to " << raw;
    const int status = r->status;
    {
      std::lock_guard<std::mutex> lock(tally.mu);
      tally.statuses[absl::StrCat(path, " ", status)]++;
    }
    SCOPED_TRACE(absl::StrCat(path, " ", raw, " -> ", status, " ", r->body.substr(0, 300)));
    const bool streaming = what != kMalformed && body.is_object() && body.contains("stream") &&
                           body["stream"].is_boolean() && body["stream"].get<bool>() && verdict.ok();
    if (what == kMalformed || !verdict.ok()) {
      ASSERT_EQ(status, 400);
      const json e = json::parse(r->body, nullptr, false);
      ASSERT_TRUE(e.is_object() && e.contains("error")) << r->body;
      if (what == kMalformed) {
        EXPECT_EQ(e["error"]["param"], "body");
      } else {
        const std::string msg(verdict.status().message());
        EXPECT_EQ(e["error"]["param"], msg.substr(0, msg.find(':'))) << msg;
      }
      std::lock_guard<std::mutex> lock(tally.mu);
      (what == kMalformed ? tally.malformed : tally.refused)++;
      return;
    }
    {
      std::lock_guard<std::mutex> lock(tally.mu);
      tally.parsed++;
    }
    const size_t choices = verdict->prompts.size() * static_cast<size_t>(verdict->n);
    if (what == kDeadline) {
      // 504, or a stream (its status went out with the headers) that ends with the error event.
      if (!streaming) {
        EXPECT_EQ(status, 504);
      } else {
        EXPECT_EQ(status, 200);
        std::vector<std::string> data;
        std::string sse_error;
        ASSERT_TRUE(testing::SplitSse(r->body, &data, &sse_error)) << sse_error;
        ASSERT_GE(data.size(), 2u);
        EXPECT_EQ(data.back(), "[DONE]");
        EXPECT_EQ(json::parse(data[data.size() - 2])["error"]["type"], "timeout_error");
      }
      std::lock_guard<std::mutex> lock(tally.mu);
      tally.deadlines++;
      return;
    }
    if (what == kValid) ASSERT_EQ(status, 200);
    ASSERT_TRUE(status == 200 || status == 400 || status == 404) << status;
    if (status != 200) return;
    if (!streaming) {
      const json reply = json::parse(r->body, nullptr, false);
      ASSERT_TRUE(reply.is_object()) << r->body;
      ASSERT_EQ(reply["choices"].size(), choices);
      for (const json& ch : reply["choices"]) {
        EXPECT_TRUE(ch["finish_reason"] == "length" || ch["finish_reason"] == "stop") << ch.dump();
      }
      std::lock_guard<std::mutex> lock(tally.mu);
      tally.ok++;
      return;
    }
    std::vector<std::string> data;
    std::string sse_error;
    ASSERT_TRUE(testing::SplitSse(r->body, &data, &sse_error)) << sse_error;
    ASSERT_FALSE(data.empty());
    EXPECT_EQ(data.back(), "[DONE]");
    size_t finishes = 0;
    for (size_t i = 0; i + 1 < data.size(); ++i) {
      const json ev = json::parse(data[i], nullptr, false);
      ASSERT_TRUE(ev.is_object()) << data[i];
      ASSERT_FALSE(ev.contains("error")) << data[i];
      for (const json& ch : ev["choices"]) finishes += ch["finish_reason"].is_null() ? 0 : 1;
    }
    EXPECT_EQ(finishes, choices);
    std::lock_guard<std::mutex> lock(tally.mu);
    tally.streamed++;
  };

  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int op = t; op < ops; op += threads) run_op(op);
    });
  }
  for (std::thread& t : pool) t.join();
  std::printf("%d ops: %d refused by the parsers, %d malformed, %d parsed (%d answered, %d streamed, %d past "
              "their deadline)\n",
              ops, tally.refused, tally.malformed, tally.parsed, tally.ok, tally.streamed, tally.deadlines);
  EXPECT_GT(tally.refused, ops / 10);
  EXPECT_GT(tally.ok + tally.streamed, ops / 5);
  EXPECT_GT(tally.deadlines, 0);

  // Nothing left behind; the counter holds what the clients saw, status by status.
  httplib::Client c("127.0.0.1", port);
  auto metrics = [&] {
    httplib::Result m = c.Get("/metrics");
    return m ? m->body : std::string();
  };
  bool idle = false;
  std::string page;
  for (int i = 0; i < 1000 && !idle; ++i) {
    page = metrics();
    idle = MetricValue(page, "sbserve_num_requests_running") == 0 && MetricValue(page, "sbserve_num_requests_waiting") == 0 &&
           MetricValue(page, "sbserve_kv_cache_used_blocks") == 0;
    if (!idle) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(idle) << page;
  for (const auto& [key, count] : tally.statuses) {
    const std::string endpoint = key.substr(0, key.find(' '));
    const std::string code = key.substr(key.find(' ') + 1);
    const std::string series =
        absl::StrCat("sbserve_http_requests_total{endpoint=\"", endpoint, "\",code=\"", code, "\"}");
    bool equal = false;
    for (int i = 0; i < 200 && !equal; ++i) {  // counted after the body went out
      equal = MetricValue(metrics(), series) == count;
      if (!equal) absl::SleepFor(absl::Milliseconds(10));
    }
    EXPECT_TRUE(equal) << series << " should be " << count << ": " << MetricValue(metrics(), series);
  }
  // Still serving.
  httplib::Result last = c.Post("/v1/completions", json{{"prompt", "Once"}, {"max_tokens", 3}}.dump(), "application/json");
  ASSERT_TRUE(last);
  EXPECT_EQ(last->status, 200) << last->body;
}

}  // namespace
}  // namespace sbserve
