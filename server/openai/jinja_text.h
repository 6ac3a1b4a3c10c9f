// Text helpers of the Jinja subset: the JavaScript string semantics @huggingface/jinja has
// (UTF-16 lengths, JavaScript whitespace, Number formatting, JSON.stringify quoting,
// parseInt/parseFloat), over UTF-8 strings. Internal to server/openai/jinja*.cc.
#pragma once

#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sbserve::jinja::internal {

// Parse and render failures travel as exceptions inside the jinja*.cc files only;
// Template::Parse and Template::Render turn them into absl::Status.
struct JinjaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
[[noreturn]] void Fail(const std::string& message);

// UTF-8 / UTF-16. JavaScript strings are UTF-16, so lengths, indexing and case changes are
// defined on UTF-16 code units; we store UTF-8 and convert where the difference shows.
size_t DecodeAt(std::string_view s, size_t i, char32_t* cp);
void AppendUtf8(std::string* out, char32_t cp);
std::vector<char32_t> CodePoints(std::string_view s);
std::u16string ToUtf16(std::string_view s);
std::string FromUtf16(std::u16string_view s);
size_t Utf16Length(std::string_view s);

// JavaScript's WhiteSpace + LineTerminator (what /\s/ and String.prototype.trim use).
bool IsJsSpace(char32_t c);
size_t SpaceAt(std::string_view s, size_t i);
std::string TrimStart(std::string_view s);
std::string TrimEnd(std::string_view s);
std::string Trim(std::string_view s);

// Case mapping: ASCII plus the Latin-1, Greek and Cyrillic letters whose case pairs are a fixed
// offset; other scripts are returned unchanged.
char AsciiUpper(char c);
char AsciiLower(char c);
char32_t UpperCp(char32_t c);
char32_t LowerCp(char32_t c);
std::string MapCase(std::string_view s, bool upper);
bool IsWordChar(char c);  // JavaScript's \w: [A-Za-z0-9_]
bool IsDigit(char c);

// Number.prototype.toString; FloatValue.toString (integral floats keep ".0").
std::string JsNumber(double x);
std::string JsFloat(double x);
// JSON.stringify of a string; tojson(ensure_ascii=true)'s escaping of a stringified value.
std::string JsonQuote(std::string_view s);
std::string AsciiSafe(std::string_view s);
// parseInt(s, 10) / parseFloat(s); nullopt where JavaScript gives NaN.
std::optional<double> JsParseInt(std::string_view s);
std::optional<double> JsParseFloat(std::string_view s);

}  // namespace sbserve::jinja::internal
