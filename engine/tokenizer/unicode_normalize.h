// Unicode normalization forms and lowercasing, backed by ICU (Debian libicu-dev): ICU ships the
// Unicode Character Database and its tested normalization algorithms, which is more robust than
// tables we would derive ourselves.
#ifndef SBSERVE_ENGINE_TOKENIZER_UNICODE_NORMALIZE_H_
#define SBSERVE_ENGINE_TOKENIZER_UNICODE_NORMALIZE_H_

#include <string>

#include "absl/status/status.h"

namespace sbserve::tokenizer_internal {

enum class NormalForm { kNfc, kNfkc, kNfd, kNfkd };

// Normalizes valid UTF-8 in place.
absl::Status NormalizeUtf8(NormalForm form, std::string* s);

// Full lowercase mapping applied one character at a time (no context rules such as the Greek
// final sigma), matching Rust's char::to_lowercase used by the reference Lowercase normalizer.
absl::Status LowercaseUtf8(std::string* s);

// Whether a code point has General_Category N* (Rust's char::is_numeric).
bool IsNumeric(uint32_t cp);

}  // namespace sbserve::tokenizer_internal

#endif  // SBSERVE_ENGINE_TOKENIZER_UNICODE_NORMALIZE_H_
