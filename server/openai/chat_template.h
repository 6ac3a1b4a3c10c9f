// Chat templates: the Jinja templates HuggingFace checkpoints ship in tokenizer_config.json
// ("chat_template"), rendered in process by our own Jinja subset (server/openai/jinja.h).
//
// A template is parsed once, at model load; a construct outside the subset fails there with a
// message naming it. Rendering a conversation is then a pure function of the messages.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace sbserve {

class ChatTemplate {
 public:
  // `source` is the template text; `bos_token` / `eos_token` are the strings the template sees.
  // INVALID_ARGUMENT naming the construct (and its line) when the template uses something the
  // subset does not support or does not parse.
  static absl::StatusOr<ChatTemplate> FromSource(std::string_view source, std::string bos_token,
                                                 std::string eos_token);

  // Reads `chat_template` from a tokenizer_config.json (a string, or a list of {name, template}
  // where "default" is used), with bos_token/eos_token from the same file (a string or an
  // {"content": ...} object). NOT_FOUND when the file has no chat_template.
  static absl::StatusOr<ChatTemplate> FromTokenizerConfig(const std::string& tokenizer_config_path);

  // Renders `messages` (a JSON array of {"role", "content", ...}; content may be a string or a
  // list of {"type":"text","text":...} parts, passed to the template as given). `extra` holds
  // further top-level variables (e.g. "tools", "date_string"); it may be null. An error raised by
  // the template (raise_exception) or a runtime type error is INVALID_ARGUMENT with its message.
  absl::StatusOr<std::string> Apply(const nlohmann::json& messages, bool add_generation_prompt,
                                    const nlohmann::json& extra = nullptr) const;
  // The same with key order kept: nlohmann::json sorts object keys, which shows wherever a
  // template prints a message or tool with `tojson` or walks it with `items()`. Parse request
  // bodies as ordered_json and call this to render as HuggingFace does.
  absl::StatusOr<std::string> Apply(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                    const nlohmann::ordered_json& extra = nullptr) const;

  const std::string& source() const;

  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;
  ~ChatTemplate();

 private:
  struct Impl;
  explicit ChatTemplate(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sbserve
