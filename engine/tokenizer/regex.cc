#include "engine/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/utf8.h"

namespace sbserve::tokenizer_internal {
namespace {

constexpr absl::string_view kWhiteSpaceItems =
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";

// Per-thread match data: pcre2_match_data is not shareable between concurrent matches, and
// allocating it per call costs more than a short match.
struct MatchData {
  pcre2_match_data* data = pcre2_match_data_create(16, nullptr);
  ~MatchData() { pcre2_match_data_free(data); }
};

pcre2_match_data* ThreadMatchData() {
  thread_local MatchData md;
  return md.data;
}

}  // namespace

std::string TranslateOnigPattern(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 64);
  int class_depth = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[i + 1];
      if (n == 's' && class_depth == 0) {
        absl::StrAppend(&out, "[", kWhiteSpaceItems, "]");
      } else if (n == 's') {
        out.append(kWhiteSpaceItems.data(), kWhiteSpaceItems.size());
      } else if (n == 'S' && class_depth == 0) {
        absl::StrAppend(&out, "[^", kWhiteSpaceItems, "]");
      } else {
        out.push_back(c);
        out.push_back(n);
      }
      ++i;
      continue;
    }
    if (c == '[') {
      ++class_depth;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal member.
      if (i + 1 < p.size() && p[i + 1] == '^') {
        out.push_back('^');
        ++i;
      }
      if (i + 1 < p.size() && p[i + 1] == ']') {
        out.push_back(']');
        ++i;
      }
      continue;
    }
    if (c == ']' && class_depth > 0) --class_depth;
    out.push_back(c);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern, bool literal) {
  std::unique_ptr<Regex> re(new Regex);
  re->literal_ = literal;
  if (literal) {
    if (pattern.empty()) return absl::InvalidArgumentError("empty split/replace string pattern");
    re->literal_text_ = std::string(pattern);
    return re;
  }
  std::string translated = TranslateOnigPattern(pattern);
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP, &err, &err_off, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    return absl::InvalidArgumentError(
        absl::StrCat("regex `", AsAbsl(pattern),
                     "` does not compile: ", reinterpret_cast<char*>(msg), " at offset ", err_off));
  }
  // JIT is a 5-10x speed-up; without it (unsupported CPU) the interpreter still gives the same
  // matches.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  re->code_ = code;
  return re;
}

Regex::~Regex() {
  if (code_ != nullptr) pcre2_code_free(static_cast<pcre2_code*>(code_));
}

absl::Status Regex::FindAll(std::string_view text,
                            std::vector<std::pair<size_t, size_t>>* out) const {
  if (literal_) {
    size_t pos = 0;
    while ((pos = text.find(literal_text_, pos)) != std::string_view::npos) {
      out->emplace_back(pos, pos + literal_text_.size());
      pos += literal_text_.size();
    }
    return absl::OkStatus();
  }
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = ThreadMatchData();
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start <= text.size()) {
    int rc = pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof(msg));
      return absl::ResourceExhaustedError(
          absl::StrCat("regex match failed: ", reinterpret_cast<char*>(msg)));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t s = ov[0], e = ov[1];
    out->emplace_back(s, e);
    if (e == s) {
      if (e >= text.size()) break;
      start = e + Utf8CharLen(static_cast<unsigned char>(text[e]));
    } else {
      start = e;
    }
  }
  return absl::OkStatus();
}

}  // namespace sbserve::tokenizer_internal
