// Random OpenAI request bodies for property and chaos tests: every known field of the completions
// or chat API absent, valid, at an edge, or of a wrong type, and unknown fields beside them.
#pragma once

#include <cstdint>
#include <iterator>
#include <limits>
#include <random>
#include <string>

#include "nlohmann/json.hpp"

namespace sbserve::testing {

class BodyGen {
 public:
  using json = nlohmann::json;
  explicit BodyGen(uint64_t seed) : rng_(seed) {}

  int Int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  bool Coin(double p = 0.5) { return std::bernoulli_distribution(p)(rng_); }

  // A value of any JSON type, sometimes nested.
  json Any(int depth = 0) {
    switch (Int(0, depth > 1 ? 6 : 8)) {
      case 0: return nullptr;
      case 1: return Coin();
      case 2: return Int(-5, 5);
      case 3: return Edge();
      case 4: return std::uniform_real_distribution<double>(-3, 3)(rng_);
      case 5: return Word();
      case 6: return "";
      case 7: {
        json a = json::array();
        for (int i = Int(0, 3); i > 0; --i) a.push_back(Any(depth + 1));
        return a;
      }
      default: {
        json o = json::object();
        for (int i = Int(0, 3); i > 0; --i) o[Word()] = Any(depth + 1);
        return o;
      }
    }
  }
  json Edge() {
    static const json kEdges[] = {0, -1, 1, 2, 16, 17, 20, 21, 100, 101, 128, 129, 1024, 2047, 2048, 1 << 20,
                                  std::numeric_limits<int32_t>::max(), std::numeric_limits<int64_t>::min(),
                                  std::numeric_limits<uint64_t>::max(), 1e300, -1e300, 0.5, -0.0, 1e-40, 100.5,
                                  -100.0, 100.0};
    return kEdges[Int(0, static_cast<int>(std::size(kEdges)) - 1)];
  }
  std::string Word() {
    static const char* kWords[] = {"a", "Once", "x", "0", "12", "-3", "01", "1e3", " 5", "+7", "2048", "99999999999",
                                   "text", "user", "<|endoftext|>", "\xc3\xa9", "\n"};
    return kWords[Int(0, static_cast<int>(std::size(kWords)) - 1)];
  }
  json Ids() {
    json a = json::array();
    for (int i = Int(1, 6); i > 0; --i) a.push_back(Coin(0.9) ? json(Int(0, 2100)) : Edge());
    return a;
  }
  json Prompt() {
    switch (Int(0, 5)) {
      case 0: return "Once upon a time";
      case 1: return Ids();
      case 2: return json::array({"a", "b"});
      case 3: return json::array({Ids(), "x"});
      case 4: return json::array();
      default: return Any();
    }
  }
  json LogitBias() {
    if (Coin(0.2)) return Any();
    json o = json::object();
    for (int i = Int(0, 4); i > 0; --i) {
      const std::string key = Coin(0.7) ? std::to_string(Int(0, 2100)) : Word();
      o[key] = Coin(0.8) ? json(std::uniform_real_distribution<double>(-120, 120)(rng_)) : Any();
    }
    return o;
  }
  json Messages() {
    if (Coin(0.15)) return Any();
    json a = json::array();
    for (int i = Int(0, 3); i > 0; --i) {
      json m = {{"role", Coin(0.8) ? json(i % 2 ? "user" : "assistant") : Any()},
                {"content", Coin(0.8) ? json("hi") : Any()}};
      if (Coin(0.1)) m.erase("content");
      a.push_back(m);
    }
    return a;
  }

  // A body of the completions (chat = false) or chat API: each field present with probability p.
  json Body(bool chat) {
    json b = json::object();
    const double p = 0.35;
    auto maybe = [&](const char* name, auto valid) {
      if (!Coin(p)) return;
      b[name] = Coin(0.88) ? json(valid()) : Coin(0.5) ? Edge() : Any();
    };
    if (chat) {
      if (Coin(0.9)) b["messages"] = Messages();
    } else if (Coin(0.9)) {
      b["prompt"] = Prompt();
    }
    maybe("model", [] { return "sbserve-demo"; });
    maybe("max_tokens", [&] { return Int(1, 40); });
    maybe("temperature", [&] { return Int(0, 20) / 10.0; });
    maybe("top_p", [&] { return Int(1, 10) / 10.0; });
    maybe("top_k", [&] { return Int(-1, 50); });
    maybe("min_p", [&] { return Int(0, 10) / 10.0; });
    maybe("n", [&] { return Int(1, 4); });
    maybe("best_of", [&] { return Int(1, 4); });
    maybe("stream", [&] { return Coin(); });
    maybe("seed", [&] { return Int(-3, 1000); });
    maybe("presence_penalty", [&] { return Int(-20, 20) / 10.0; });
    maybe("frequency_penalty", [&] { return Int(-20, 20) / 10.0; });
    maybe("repetition_penalty", [&] { return Int(1, 30) / 10.0; });
    maybe("stop", [&] { return Coin() ? json("\n") : json::array({"a", "bc"}); });
    maybe("user", [] { return "u"; });
    maybe("ignore_eos", [&] { return Coin(); });
    maybe("min_tokens", [&] { return Int(0, 5); });
    maybe("stop_token_ids", [&] { return Ids(); });
    maybe("skip_special_tokens", [&] { return Coin(); });
    maybe("include_stop_str_in_output", [&] { return Coin(); });
    maybe("priority", [&] { return Int(-5, 5); });
    if (Coin(p)) b["logit_bias"] = LogitBias();
    if (Coin(p)) b["stream_options"] = Coin() ? json{{"include_usage", Coin()}} : Any();
    if (chat) {
      maybe("logprobs", [&] { return Coin(); });
      maybe("top_logprobs", [&] { return Int(0, 5); });
      maybe("max_completion_tokens", [&] { return Int(1, 40); });
      maybe("response_format", [] { return json{{"type", "text"}}; });
      maybe("tools", [] { return json::array(); });
      maybe("add_generation_prompt", [&] { return Coin(); });
      maybe("chat_template_kwargs", [] { return json::object(); });
    } else {
      maybe("logprobs", [&] { return Int(0, 5); });
      maybe("echo", [&] { return Coin(); });
      maybe("suffix", [] { return ""; });
    }
    if (Coin(0.2)) b[Word() + "_unknown"] = Any();  // unknown fields are ignored
    return b;
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace sbserve::testing
