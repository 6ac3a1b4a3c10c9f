// JavaScript string and number semantics for the Jinja subset (see jinja_text.h).
#include "server/openai/jinja_text.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "engine/tokenizer/utf8.h"

namespace sbserve::jinja::internal {

void Fail(const std::string& message) { throw JinjaError(message); }

// ---------------------------------------------------------------------------------------------
// UTF-8 / UTF-16 helpers. JavaScript strings are UTF-16, so lengths, indexing and case changes
// are defined on UTF-16 code units; we store UTF-8 and convert where the difference shows.

// Decodes one code point at s[i]; returns its byte length (1 for invalid bytes, taken as-is).
size_t DecodeAt(std::string_view s, size_t i, char32_t* cp) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
  if (len == 1 || i + len > s.size()) {
    *cp = c;
    return 1;
  }
  char32_t v = c & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
  for (size_t k = 1; k < len; ++k) v = (v << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  *cp = v;
  return len;
}

void AppendUtf8(std::string* out, char32_t cp) { tokenizer_internal::AppendUtf8(static_cast<uint32_t>(cp), out); }

std::vector<char32_t> CodePoints(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    char32_t cp;
    i += DecodeAt(s, i, &cp);
    out.push_back(cp);
  }
  return out;
}

std::u16string ToUtf16(std::string_view s) {
  std::u16string out;
  for (char32_t cp : CodePoints(s)) {
    if (cp >= 0x10000) {
      cp -= 0x10000;
      out.push_back(static_cast<char16_t>(0xD800 + (cp >> 10)));
      out.push_back(static_cast<char16_t>(0xDC00 + (cp & 0x3FF)));
    } else {
      out.push_back(static_cast<char16_t>(cp));
    }
  }
  return out;
}

std::string FromUtf16(std::u16string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    char32_t c = s[i];
    if (c >= 0xD800 && c < 0xDC00 && i + 1 < s.size() && s[i + 1] >= 0xDC00 && s[i + 1] < 0xE000) {
      c = 0x10000 + ((c - 0xD800) << 10) + (s[i + 1] - 0xDC00);
      ++i;
    } else if (c >= 0xD800 && c < 0xE000) {
      c = 0xFFFD;  // a lone surrogate, as JavaScript's UTF-8 encoders write it
    }
    AppendUtf8(&out, c);
  }
  return out;
}

size_t Utf16Length(std::string_view s) {
  size_t n = 0;
  for (char32_t cp : CodePoints(s)) n += cp >= 0x10000 ? 2 : 1;
  return n;
}

// JavaScript's WhiteSpace + LineTerminator (what /\s/ and String.prototype.trim use).
bool IsJsSpace(char32_t c) {
  switch (c) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0xA0: case 0x1680:
    case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000: case 0xFEFF:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

// Length in bytes of the JS whitespace character at s[i], or 0.
size_t SpaceAt(std::string_view s, size_t i) {
  char32_t cp;
  const size_t len = DecodeAt(s, i, &cp);
  return IsJsSpace(cp) ? len : 0;
}

std::string TrimStart(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const size_t n = SpaceAt(s, i);
    if (n == 0) break;
    i += n;
  }
  return std::string(s.substr(i));
}

std::string TrimEnd(std::string_view s) {
  // Walk forward remembering where the trailing run of whitespace starts.
  size_t end = 0;
  for (size_t i = 0; i < s.size();) {
    const size_t n = SpaceAt(s, i);
    if (n == 0) {
      char32_t cp;
      i += DecodeAt(s, i, &cp);
      end = i;
    } else {
      i += n;
    }
  }
  return std::string(s.substr(0, end));
}

std::string Trim(std::string_view s) { return TrimEnd(TrimStart(s)); }

char AsciiUpper(char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 32) : c; }
char AsciiLower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }

// Case mapping: ASCII plus the Latin-1, Greek and Cyrillic letters whose case pairs are a fixed
// offset. Other scripts are returned unchanged (a documented limit of the subset).
char32_t UpperCp(char32_t c) {
  if (c < 0x80) return static_cast<char32_t>(AsciiUpper(static_cast<char>(c)));
  if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) return c - 0x20;
  if (c >= 0x3B1 && c <= 0x3C9 && c != 0x3C2) return c - 0x20;
  if (c >= 0x430 && c <= 0x44F) return c - 0x20;
  if (c >= 0x450 && c <= 0x45F) return c - 0x50;
  return c;
}
char32_t LowerCp(char32_t c) {
  if (c < 0x80) return static_cast<char32_t>(AsciiLower(static_cast<char>(c)));
  if ((c >= 0xC0 && c <= 0xDE && c != 0xD7)) return c + 0x20;
  if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 0x20;
  if (c >= 0x410 && c <= 0x42F) return c + 0x20;
  if (c >= 0x400 && c <= 0x40F) return c + 0x50;
  return c;
}
std::string MapCase(std::string_view s, bool upper) {
  std::string out;
  for (char32_t cp : CodePoints(s)) AppendUtf8(&out, upper ? UpperCp(cp) : LowerCp(cp));
  return out;
}

bool IsWordChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// ---------------------------------------------------------------------------------------------
// Numbers, formatted as JavaScript's Number.prototype.toString does.

std::string JsNumber(double x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x > 0 ? "Infinity" : "-Infinity";
  if (x == 0) return "0";
  if (x < 0) {
    std::string out = "-";
    out += JsNumber(-x);
    return out;
  }
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), x, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const size_t e_pos = sci.find('e');
  std::string digits;
  for (size_t i = 0; i < e_pos; ++i) {
    if (sci[i] != '.') digits.push_back(sci[i]);
  }
  const int k = static_cast<int>(digits.size());
  const int n = std::stoi(sci.substr(e_pos + 1)) + 1;
  if (k <= n && n <= 21) return digits + std::string(n - k, '0');
  if (0 < n && n <= 21) return digits.substr(0, n) + "." + digits.substr(n);
  if (-6 < n && n <= 0) return "0." + std::string(-n, '0') + digits;
  std::string out = digits.substr(0, 1);
  if (k > 1) {
    out += '.';
    out.append(digits, 1, std::string::npos);
  }
  const int e = n - 1;
  return out + "e" + (e >= 0 ? "+" : "-") + std::to_string(std::abs(e));
}

// FloatValue.toString: integral floats keep one decimal ("3.0").
std::string JsFloat(double x) {
  if (x == 0 && std::signbit(x)) return "-0.0";
  if (std::isfinite(x) && std::fmod(x, 1.0) == 0) {
    if (std::fabs(x) >= 1e21) return JsNumber(x);
    char buf[400];
    std::snprintf(buf, sizeof(buf), "%.1f", x);
    return buf;
  }
  return JsNumber(x);
}

// JSON.stringify of a string.
std::string JsonQuote(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(ch);
        }
    }
  }
  out += "\"";
  return out;
}

// tojson(ensure_ascii=true): every UTF-16 unit in 0x7f..0xffff becomes \uXXXX.
std::string AsciiSafe(std::string_view s) {
  std::string out;
  for (char16_t u : ToUtf16(s)) {
    if (u >= 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(u));
      out += buf;
    } else {
      out.push_back(static_cast<char>(u));
    }
  }
  return out;
}

// parseInt(s, 10) / parseFloat(s); nullopt where JavaScript gives NaN.
std::optional<double> JsParseInt(std::string_view s) {
  std::string t = TrimStart(s);
  size_t i = 0;
  bool neg = false;
  if (i < t.size() && (t[i] == '+' || t[i] == '-')) neg = t[i++] == '-';
  const size_t start = i;
  double v = 0;
  while (i < t.size() && IsDigit(t[i])) v = v * 10 + (t[i++] - '0');
  if (i == start) return std::nullopt;
  return neg ? -v : v;
}

std::optional<double> JsParseFloat(std::string_view s) {
  std::string t = TrimStart(s);
  size_t i = 0;
  if (i < t.size() && (t[i] == '+' || t[i] == '-')) ++i;
  if (t.compare(i, 8, "Infinity") == 0) return t[0] == '-' ? -INFINITY : INFINITY;
  size_t digits = 0;
  while (i < t.size() && IsDigit(t[i])) ++i, ++digits;
  if (i < t.size() && t[i] == '.') {
    ++i;
    while (i < t.size() && IsDigit(t[i])) ++i, ++digits;
  }
  if (digits == 0) return std::nullopt;
  if (i < t.size() && (t[i] == 'e' || t[i] == 'E')) {
    size_t j = i + 1;
    if (j < t.size() && (t[j] == '+' || t[j] == '-')) ++j;
    if (j < t.size() && IsDigit(t[j])) {
      while (j < t.size() && IsDigit(t[j])) ++j;
      i = j;
    }
  }
  return std::strtod(t.substr(0, i).c_str(), nullptr);
}

}  // namespace sbserve::jinja::internal
