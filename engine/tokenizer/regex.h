// PCRE2 (JIT) wrapper for the Oniguruma patterns found in tokenizer.json files.
#ifndef SBSERVE_ENGINE_TOKENIZER_REGEX_H_
#define SBSERVE_ENGINE_TOKENIZER_REGEX_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace sbserve::tokenizer_internal {

class Regex {
 public:
  // `literal`: the pattern is a plain string (tokenizer.json `{"String": ...}`).
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern, bool literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends [start, end) of every non-overlapping match in `text` (valid UTF-8), left to right.
  // After an empty match the search resumes one character later.
  // Fails (rather than splitting wrongly) if PCRE2 hits a resource limit.
  absl::Status FindAll(std::string_view text, std::vector<std::pair<size_t, size_t>>* out) const;

 private:
  Regex() = default;
  void* code_ = nullptr;  // pcre2_code_8*
  bool literal_ = false;
  std::string literal_text_;
};

// Rewrites Oniguruma-only spellings into PCRE2 ones with the same meaning; exposed for tests.
// `\s`/`\S` become explicit classes of Unicode White_Space (Oniguruma's set, which PCRE2's \s
// lacks U+0085 from).
std::string TranslateOnigPattern(std::string_view pattern);

}  // namespace sbserve::tokenizer_internal

#endif  // SBSERVE_ENGINE_TOKENIZER_REGEX_H_
