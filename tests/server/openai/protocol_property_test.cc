// The OpenAI request parsers (server/openai/protocol.h) on many random bodies: every known field
// absent, valid, at an edge, or of a wrong type, and unknown fields beside them. Whatever comes in,
// a parse either succeeds or fails with INVALID_ARGUMENT / OUT_OF_RANGE whose message starts with
// the name of a field of the body ("temperature: ...") -- never an exception, never a message a
// client could not act on. A parse that succeeds gives choice requests that the gRPC door's
// validation (RequestFromProto) either takes or refuses the same way, and a valid logit_bias
// arrives whole.
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/convert.h"
#include "server/openai/chat_template.h"
#include "server/openai/protocol.h"
#include "tests/server/openai/body_gen.h"

namespace sbserve::openai {
namespace {

using nlohmann::json;
using sbserve::testing::BodyGen;

// The field a message names: its text up to the first ':', '.' or '['.
std::string NamedField(const std::string& message) {
  return message.substr(0, message.find_first_of(":.["));
}

// Whether `s` is an error a client can act on: a refusal code, and a message naming a field of the
// body (or the body itself, or the prompt / messages a body must have).
::testing::AssertionResult NamesAField(const absl::Status& s, const json& body) {
  if (s.code() != absl::StatusCode::kInvalidArgument && s.code() != absl::StatusCode::kOutOfRange) {
    return ::testing::AssertionFailure() << "code " << s << " for " << body.dump();
  }
  const std::string field = NamedField(std::string(s.message()));
  static const std::set<std::string> kAlways = {"body", "prompt", "messages"};
  // Names a field takes on the way (chat's logprobs count is top_logprobs; max_completion_tokens is
  // max_tokens in the proto).
  const bool renamed = (field == "top_logprobs" && body.contains("logprobs")) ||
                       (field == "max_tokens" && body.contains("max_completion_tokens"));
  if (kAlways.count(field) || body.contains(field) || renamed) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << s.message() << "' names no field of " << body.dump();
}

ChatTemplate TestTemplate() {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::FromSource(
      "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
      "{% if add_generation_prompt %}assistant:{% endif %}",
      "<s>", "</s>");
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

void Check(bool chat, int iterations, uint64_t seed) {
  BodyGen gen(seed);
  const ChatTemplate tmpl = TestTemplate();
  int parsed_ok = 0, refused = 0, choices_checked = 0, bias_checked = 0;
  for (int it = 0; it < iterations; ++it) {
    const json body = gen.Body(chat);
    SCOPED_TRACE(body.dump());

    absl::StatusOr<ParsedRequest> r = absl::UnknownError("not run");
    ASSERT_NO_THROW(r = chat ? ParseChatRequest(body, &tmpl, "") : ParseCompletionRequest(body));
    if (!r.ok()) {
      ++refused;
      ASSERT_TRUE(NamesAField(r.status(), body));
      continue;
    }
    ++parsed_ok;
    ASSERT_FALSE(r->prompts.empty());
    ASSERT_GE(r->n, 1);
    for (size_t p = 0; p < r->prompts.size(); ++p) {
      for (int j = 0; j < std::min(r->n, 2); ++j) {
        absl::StatusOr<GenerateRequest> g = absl::UnknownError("not run");
        ASSERT_NO_THROW(g = RequestFromProto(ChoiceRequest(*r, p, j)));
        ++choices_checked;
        if (!g.ok()) {
          ASSERT_TRUE(NamesAField(ToOpenAiNames(g.status(), chat ? Api::kChat : Api::kCompletions), body));
          continue;
        }
        // A logit_bias that parsed arrives whole, in token order (keys are decimal ids; "01" is 1).
        if (body.contains("logit_bias") && body.at("logit_bias").is_object()) {
          std::map<int32_t, float> want;
          for (const auto& [key, value] : body.at("logit_bias").items()) {
            want[static_cast<int32_t>(std::stoll(key))] = static_cast<float>(value.get<double>());
          }
          const std::vector<std::pair<int32_t, float>> want_list(want.begin(), want.end());
          ASSERT_EQ(g->sampling.logit_bias, want_list);
          ++bias_checked;
        }
      }
    }
  }
  std::printf("%s: %d bodies, %d parsed (%d choice requests checked, %d with a logit_bias), %d refused\n",
              chat ? "chat" : "completions", iterations, parsed_ok, choices_checked, bias_checked, refused);
  // The generator reaches both outcomes often enough for the checks above to mean something.
  EXPECT_GT(parsed_ok, iterations / 20);
  EXPECT_GT(refused, iterations / 4);
  EXPECT_GT(bias_checked, 10);
}

TEST(OpenAiProtocolProperty, CompletionBodiesParseOrFailNamingAField) { Check(false, 20000, 1); }

TEST(OpenAiProtocolProperty, ChatBodiesParseOrFailNamingAField) { Check(true, 20000, 2); }

}  // namespace
}  // namespace sbserve::openai
