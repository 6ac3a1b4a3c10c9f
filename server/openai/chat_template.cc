#include "server/openai/chat_template.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/openai/jinja.h"

namespace sbserve {

struct ChatTemplate::Impl {
  jinja::Template tpl;
  std::string source;
  std::string bos_token;
  std::string eos_token;
};

namespace {

// bos_token / eos_token in tokenizer_config.json: a string, an AddedToken object
// ({"content": ...}), or absent / null (the template then sees "").
std::string SpecialToken(const nlohmann::ordered_json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  return "";
}

}  // namespace

ChatTemplate::ChatTemplate(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;
ChatTemplate::~ChatTemplate() = default;

absl::StatusOr<ChatTemplate> ChatTemplate::FromSource(std::string_view source, std::string bos_token,
                                                      std::string eos_token) {
  absl::StatusOr<jinja::Template> tpl = jinja::Template::Parse(source);
  if (!tpl.ok()) return tpl.status();
  auto impl = std::make_unique<Impl>(Impl{std::move(*tpl), std::string(source), std::move(bos_token),
                                          std::move(eos_token)});
  return ChatTemplate(std::move(impl));
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromTokenizerConfig(const std::string& tokenizer_config_path) {
  std::ifstream in(tokenizer_config_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", tokenizer_config_path));
  std::stringstream buf;
  buf << in.rdbuf();
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(buf.str(), nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(tokenizer_config_path, ": not a JSON object"));
  }
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) {
    return absl::NotFoundError(absl::StrCat(tokenizer_config_path, " has no chat_template"));
  }
  std::string source;
  if (it->is_string()) {
    source = it->get<std::string>();
  } else if (it->is_array()) {
    bool found = false;
    for (const auto& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string()) {
        source = entry["template"].get<std::string>();
        found = true;
        break;
      }
    }
    if (!found) {
      return absl::NotFoundError(
          absl::StrCat(tokenizer_config_path, ": chat_template is a list without a \"default\" entry"));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(tokenizer_config_path, ": chat_template must be a string or a list of {name, template}"));
  }
  absl::StatusOr<ChatTemplate> tpl =
      FromSource(source, SpecialToken(config, "bos_token"), SpecialToken(config, "eos_token"));
  if (!tpl.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(tokenizer_config_path, ": ", tpl.status().message()));
  }
  return tpl;
}

absl::StatusOr<std::string> ChatTemplate::Apply(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                                const nlohmann::ordered_json& extra) const {
  if (!messages.is_array()) return absl::InvalidArgumentError("messages must be a JSON array");
  if (!extra.is_null() && !extra.is_object()) return absl::InvalidArgumentError("template variables must be a JSON object");
  nlohmann::ordered_json context = nlohmann::ordered_json::object();
  context["messages"] = messages;
  context["add_generation_prompt"] = add_generation_prompt;
  context["bos_token"] = impl_->bos_token;
  context["eos_token"] = impl_->eos_token;
  if (extra.is_object()) {
    for (auto it = extra.begin(); it != extra.end(); ++it) {
      if (it.key() == "messages" || it.key() == "add_generation_prompt") {
        return absl::InvalidArgumentError(absl::StrCat("template variable '", it.key(), "' cannot be overridden"));
      }
      context[it.key()] = it.value();
    }
  }
  return impl_->tpl.Render(context);
}

absl::StatusOr<std::string> ChatTemplate::Apply(const nlohmann::json& messages, bool add_generation_prompt,
                                                const nlohmann::json& extra) const {
  return Apply(nlohmann::ordered_json(messages), add_generation_prompt, nlohmann::ordered_json(extra));
}

const std::string& ChatTemplate::source() const { return impl_->source; }

}  // namespace sbserve
