// A Jinja subset for chat templates, matching HuggingFace's JavaScript implementation
// (@huggingface/jinja, the one transformers.js uses) output for output.
//
// Lexing follows HF's apply_chat_template settings: trim_blocks and lstrip_blocks on, one trailing
// newline of the template dropped, `{%- generation %}` markers removed. Values follow HF's runtime:
// integers and floats are distinct, strings count UTF-16 code units for length and indexing,
// `{{ true }}` renders "true", arrays and objects render as JSON, undefined renders empty and is
// falsy, `==` is JavaScript's loose equality.
//
// Parse rejects, with the construct's name and line, statements outside the subset (include,
// extends, block, import, raw, with, ...), unknown filters and tests, method calls no value type
// has, and calls to functions that are neither builtins nor macros of the template. Everything
// else that goes wrong (raise_exception, a filter applied to the wrong type, too deep recursion)
// is a Render error. Both are INVALID_ARGUMENT.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace sbserve::jinja {

struct Program;

class Template {
 public:
  static absl::StatusOr<Template> Parse(std::string_view source);

  // `context` is an object of top-level variables (messages, add_generation_prompt, ...). Keys
  // keep their order, which shows in `tojson` and `items()`.
  absl::StatusOr<std::string> Render(const nlohmann::ordered_json& context) const;

  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;
  ~Template();

 private:
  explicit Template(std::shared_ptr<const Program> program);
  std::shared_ptr<const Program> program_;
};

}  // namespace sbserve::jinja
