// Unit tests of the Jinja subset (server/openai/jinja.h) and ChatTemplate: each language feature
// against the output @huggingface/jinja gives (tests/data/chat_template/language_cases.json), the
// load-time refusal of constructs outside the subset with their name and line, runtime errors,
// limits, and reading tokenizer_config.json.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/openai/chat_template.h"
#include "server/openai/jinja.h"

namespace sbserve {
namespace {

using Json = nlohmann::ordered_json;

Json ReadJson(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return Json::parse(buf.str());
}

absl::StatusOr<std::string> Render(const std::string& source, const Json& context = Json::object()) {
  auto tpl = jinja::Template::Parse(source);
  if (!tpl.ok()) return tpl.status();
  return tpl->Render(context);
}

TEST(Jinja, LanguageCasesMatchHuggingFace) {
  const Json data = ReadJson(SBSERVE_CHAT_TEMPLATE_DATA "/language_cases.json");
  ASSERT_GE(data["cases"].size(), 30u);
  for (const Json& c : data["cases"]) {
    const std::string source = c["template"].get<std::string>();
    SCOPED_TRACE(source);
    auto got = Render(source, c["context"]);
    if (c.contains("want_error")) {
      EXPECT_FALSE(got.ok()) << "HF raises \"" << c["want_error"].get<std::string>() << "\"; we render " << *got;
      if (!got.ok()) EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
      continue;
    }
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, c["want_text"].get<std::string>());
  }
}

// A construct outside the subset fails at Parse, naming the construct and its line.
TEST(Jinja, UnsupportedConstructsFailAtParseWithNameAndLine) {
  const struct {
    const char* source;
    const char* want;
  } cases[] = {
      {"line1\n{% include 'other.jinja' %}", "unsupported statement '{% include %}' (line 2)"},
      {"{% extends 'base' %}", "'{% extends %}' (line 1)"},
      {"a\nb\n{% block body %}x{% endblock %}", "'{% block %}' (line 3)"},
      {"{% import 'm' as m %}", "'{% import %}'"},
      {"{% raw %}{{ x }}{% endraw %}", "'{% raw %}'"},
      {"{% with a = 1 %}{{ a }}{% endwith %}", "'{% with %}'"},
      {"{% frobnicate %}", "unknown statement '{% frobnicate %}' (line 1)"},
      {"x\n\n{{ name | wordcount }}", "unsupported filter 'wordcount' (line 3)"},
      {"{{ s | urlencode }}", "unsupported filter 'urlencode'"},
      {"{% if x is sameas y %}{% endif %}", "unsupported test 'sameas' (line 1)"},
      {"{{ xs.append(1) }}", "unsupported method '.append()' (line 1)"},
      {"\n{{ 'a {}'.format(1) }}", "unsupported method '.format()' (line 2)"},
      {"{{ lipsum(2) }}", "unsupported function 'lipsum()' (line 1)"},
      {"{{ dict(a=1) }}", "unsupported function 'dict()'"},
      {"{% for x in xs recursive %}{% endfor %}", "'recursive'"},
      {"{{ f(*args) }}", "argument unpacking"},
      {"{% if x %}\nopen", "unclosed 'if' opened at line 1"},
      {"{% for x in xs %}", "unclosed 'for'"},
      {"{{ x ", "unexpected end of input"},
      {"{{ x + (y)", "expected '}}'"},
      {"{# never closed", "missing end of comment tag"},
      {"{{ 'x' ¤ }}", "unexpected character '¤'"},
      {"{{ 'bad \\q' }}", "unexpected escaped character 'q'"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.source);
    auto tpl = jinja::Template::Parse(c.source);
    ASSERT_FALSE(tpl.ok());
    EXPECT_EQ(tpl.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(tpl.status().message().find(c.want), std::string::npos) << tpl.status().message();
  }
}

// Calls reach macros defined anywhere in the template, and caller() inside call blocks.
TEST(Jinja, MacrosDefinedLaterAndCallerAreCallable) {
  auto got = Render("{% macro a() %}A{{ b() }}{% endmacro %}{% macro b() %}B{% endmacro %}{{ a() }}");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "AB");
  got = Render("{% macro list(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}"
               "{% call(x) list([1, 2]) %}<{{ x }}>{% endcall %}");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "<1><2>");
}

TEST(Jinja, RuntimeErrorsAreInvalidArgumentWithTheMessage) {
  auto got = Render("{% if messages | length > 1 %}{{ raise_exception('Only one message, got ' ~ messages | length) }}{% endif %}",
                    Json{{"messages", Json::array({1, 2, 3})}});
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(got.status().message(), "Only one message, got 3");
  got = Render("a\nb\n{{ x + none }}", Json{{"x", 1}});
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("(line 3)"), std::string::npos) << got.status().message();
  got = Render("{% for x in 5 %}{% endfor %}");
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("Expected iterable"), std::string::npos) << got.status().message();
  got = Render("{% break %}");
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("outside a loop"), std::string::npos);
}

// Undefined as Jinja's default Undefined: renders empty, falsy, and attribute access stays undefined.
TEST(Jinja, UndefinedRendersEmptyAndIsFalsy) {
  auto got = Render("[{{ nope }}][{{ nope.deeper.still }}][{{ 'f' if nope else 't' }}][{{ nope is defined }}]");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "[][][t][false]");
}

TEST(Jinja, ExtensionsBeyondHuggingFace) {
  // `d` for default, `is divisibleby(n)`, `count` for length: Jinja has them, HF's subset does not.
  auto got = Render("{{ x | d('D') }} {{ 9 is divisibleby(3) }} {{ 10 is divisibleby(3) }} {{ [1, 2] | count }}");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "D true false 2");
}

// Strings count UTF-16 units (JavaScript) and slice by code point, as HF does; indexing into a
// surrogate pair gives half of it, written as U+FFFD (as JavaScript encodes it to UTF-8).
TEST(Jinja, StringLengthAndSlicesFollowJavaScript) {
  auto got = Render("{{ s | length }} {{ s[:2] }} {{ s[1] }}", Json{{"s", "a\xF0\x9F\x98\x80z"}});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "4 a\xF0\x9F\x98\x80 \xEF\xBF\xBD");
}

TEST(Jinja, RunawayTemplatesFailInsteadOfHanging) {
  auto got = Render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("nested too deeply"), std::string::npos) << got.status().message();
  got = Render("{% for i in range(100000000) %}{% endfor %}");
  ASSERT_FALSE(got.ok());
  std::string deep = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_FALSE(jinja::Template::Parse(deep).ok());
}

// A request nesting content thousands of levels deep is refused, not a stack overflow.
TEST(ChatTemplate, DeeplyNestedMessagesAreRefused) {
  auto tpl = ChatTemplate::FromSource("{{ messages | tojson }}", "", "");
  ASSERT_TRUE(tpl.ok());
  const int depth = 5000;
  const std::string text = std::string(depth, '[') + std::string(depth, ']');
  auto deep = nlohmann::ordered_json::parse(text);
  auto got = tpl->Apply(deep, false);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(got.status().message().find("nest deeper"), std::string::npos) << got.status().message();
  auto shallow = tpl->Apply(nlohmann::ordered_json::parse("[[[1]]]"), false);
  ASSERT_TRUE(shallow.ok()) << shallow.status();
  EXPECT_EQ(*shallow, "[[[1]]]");
}

TEST(ChatTemplate, RendersMessagesWithSpecialTokens) {
  auto tpl = ChatTemplate::FromSource(
      "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
      "{% if add_generation_prompt %}<assistant>{% endif %}",
      "<s>", "</s>");
  ASSERT_TRUE(tpl.ok()) << tpl.status();
  const nlohmann::json messages = {{{"role", "user"}, {"content", "hi"}}};
  auto on = tpl->Apply(messages, true);
  ASSERT_TRUE(on.ok()) << on.status();
  EXPECT_EQ(*on, "<s><user>hi</s><assistant>");
  auto off = tpl->Apply(messages, false);
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(*off, "<s><user>hi</s>");
  EXPECT_FALSE(tpl->Apply(nlohmann::json::object(), true).ok());
  EXPECT_FALSE(tpl->Apply(messages, true, nlohmann::json{{"messages", 1}}).ok());
}

TEST(ChatTemplate, ExtraVariablesReachTheTemplate) {
  auto tpl = ChatTemplate::FromSource("{{ date_string }}|{{ tools | length }}", "", "");
  ASSERT_TRUE(tpl.ok());
  auto got = tpl->Apply(nlohmann::json::array(), false, {{"date_string", "1 Jan"}, {"tools", {1, 2}}});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "1 Jan|2");
}

// ordered_json keeps key order (as HF sees JSON.parse'd requests); nlohmann::json sorts keys.
TEST(ChatTemplate, OrderedJsonKeepsKeyOrderInTojson) {
  auto tpl = ChatTemplate::FromSource("{{ messages[0] | tojson }}", "", "");
  ASSERT_TRUE(tpl.ok());
  auto ordered = tpl->Apply(nlohmann::ordered_json::parse(R"([{"role":"user","content":"x"}])"), false);
  ASSERT_TRUE(ordered.ok());
  EXPECT_EQ(*ordered, R"({"role": "user", "content": "x"})");
  auto sorted = tpl->Apply(nlohmann::json::parse(R"([{"role":"user","content":"x"}])"), false);
  ASSERT_TRUE(sorted.ok());
  EXPECT_EQ(*sorted, R"({"content": "x", "role": "user"})");
}

class TokenizerConfigTest : public ::testing::Test {
 protected:
  std::string Write(const Json& config) {
    path_ = ::testing::TempDir() + "/tokenizer_config_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".json";
    std::ofstream(path_) << config.dump();
    return path_;
  }
  void TearDown() override { std::remove(path_.c_str()); }
  std::string path_;
};

TEST_F(TokenizerConfigTest, StringTemplateWithAddedTokenObjects) {
  const std::string path = Write({{"chat_template", "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"},
                                  {"bos_token", {{"__type", "AddedToken"}, {"content", "<B>"}}},
                                  {"eos_token", "<E>"}});
  auto tpl = ChatTemplate::FromTokenizerConfig(path);
  ASSERT_TRUE(tpl.ok()) << tpl.status();
  auto got = tpl->Apply(nlohmann::json::array({{{"role", "user"}, {"content", "m"}}}), false);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, "<B>m<E>");
}

TEST_F(TokenizerConfigTest, ListOfNamedTemplatesUsesDefault) {
  const std::string path = Write({{"chat_template", Json::array({{{"name", "tool_use"}, {"template", "TOOLS"}},
                                                                 {{"name", "default"}, {"template", "DEFAULT"}}})},
                                  {"bos_token", nullptr}});
  auto tpl = ChatTemplate::FromTokenizerConfig(path);
  ASSERT_TRUE(tpl.ok()) << tpl.status();
  EXPECT_EQ(tpl->source(), "DEFAULT");
}

TEST_F(TokenizerConfigTest, MissingTemplateIsNotFoundAndBadTemplateNamesTheFile) {
  auto none = ChatTemplate::FromTokenizerConfig(Write({{"bos_token", "<s>"}}));
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  auto bad = ChatTemplate::FromTokenizerConfig(Write({{"chat_template", "{% include 'x' %}"}}));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("include"), std::string::npos);
  EXPECT_NE(bad.status().message().find(path_), std::string::npos);
  EXPECT_EQ(ChatTemplate::FromTokenizerConfig("/nonexistent/tokenizer_config.json").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sbserve
