// The Jinja subset: preprocess -> lex -> parse to an AST -> evaluate. Each stage mirrors the
// corresponding stage of @huggingface/jinja so that outputs agree byte for byte; comments mark
// the places where that requires a JavaScript quirk rather than Python Jinja's behaviour.
#include "server/openai/jinja.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <functional>
#include <set>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sbserve::jinja {
namespace {

// Parse and render failures travel as exceptions inside this file only; Parse and Render turn
// them into absl::Status.
struct JinjaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void Fail(const std::string& message) { throw JinjaError(message); }

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

void AppendUtf8(std::string* out, char32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

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
  if (x < 0) return "-" + JsNumber(-x);
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
  if (k > 1) out += "." + digits.substr(1);
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

// ---------------------------------------------------------------------------------------------
// Preprocessing, as HF's tokenizer does before lexing, keeping each character's source line.

struct Source {
  std::string text;
  std::vector<int> line;  // [text.size()] 1-based source line of each byte
};

Source Preprocess(std::string_view tpl) {
  Source src;
  {
    int line = 1;
    for (char c : tpl) {
      src.text.push_back(c);
      src.line.push_back(line);
      if (c == '\n') ++line;
    }
  }
  auto erase_range = [&src](size_t from, size_t to) {
    src.text.erase(from, to - from);
    src.line.erase(src.line.begin() + from, src.line.begin() + to);
  };
  if (!src.text.empty() && src.text.back() == '\n') erase_range(src.text.size() - 1, src.text.size());

  // lstrip_blocks: /^[ \t]*({[#%-])/gm -> "$1" (JavaScript's ^ in multiline mode also follows
  // \r, U+2028 and U+2029).
  {
    Source out;
    const std::string& s = src.text;
    bool at_line_start = true;
    for (size_t i = 0; i < s.size();) {
      if (at_line_start) {
        size_t j = i;
        while (j < s.size() && (s[j] == ' ' || s[j] == '\t')) ++j;
        if (j + 1 < s.size() && s[j] == '{' && (s[j + 1] == '#' || s[j + 1] == '%' || s[j + 1] == '-')) {
          i = j;
        }
        at_line_start = false;
      }
      const char c = s[i];
      out.text.push_back(c);
      out.line.push_back(src.line[i]);
      ++i;
      if (c == '\n' || c == '\r') {
        at_line_start = true;
      } else if (static_cast<unsigned char>(c) == 0xA8 || static_cast<unsigned char>(c) == 0xA9) {
        if (i >= 3 && static_cast<unsigned char>(s[i - 3]) == 0xE2 &&
            static_cast<unsigned char>(s[i - 2]) == 0x80) {
          at_line_start = true;
        }
      }
    }
    src = std::move(out);
  }

  // trim_blocks: /([#%-]})\n/g -> "$1".
  {
    Source out;
    const std::string& s = src.text;
    for (size_t i = 0; i < s.size();) {
      if (i + 2 < s.size() && (s[i] == '#' || s[i] == '%' || s[i] == '-') && s[i + 1] == '}' &&
          s[i + 2] == '\n') {
        out.text.append(s, i, 2);
        out.line.push_back(src.line[i]);
        out.line.push_back(src.line[i + 1]);
        i += 3;
        continue;
      }
      out.text.push_back(s[i]);
      out.line.push_back(src.line[i]);
      ++i;
    }
    src = std::move(out);
  }

  // {% generation %} / {% endgeneration %} markers are dropped, with the whitespace around them
  // unless the marker carries '-' on that side:
  // /(\s*){%(-?)\s*(?:end)?generation\s*(-?)%}(\s*)/gs.
  {
    Source out;
    const std::string& s = src.text;
    size_t i = 0;
    while (i < s.size()) {
      // Find the next marker from i.
      size_t at = s.find("{%", i);
      size_t marker_end = std::string::npos;
      bool lstrip = false, rstrip = false;
      while (at != std::string::npos) {
        size_t j = at + 2;
        lstrip = j < s.size() && s[j] == '-';
        if (lstrip) ++j;
        while (j < s.size() && SpaceAt(s, j)) j += SpaceAt(s, j);
        if (s.compare(j, 3, "end") == 0 && s.compare(j + 3, 10, "generation") == 0) j += 3;
        if (s.compare(j, 10, "generation") == 0) {
          j += 10;
          while (j < s.size() && SpaceAt(s, j)) j += SpaceAt(s, j);
          rstrip = j < s.size() && s[j] == '-';
          if (rstrip) ++j;
          if (s.compare(j, 2, "%}") == 0) {
            marker_end = j + 2;
            break;
          }
        }
        at = s.find("{%", at + 1);
      }
      if (marker_end == std::string::npos) {
        out.text.append(s, i, std::string::npos);
        out.line.insert(out.line.end(), src.line.begin() + i, src.line.end());
        break;
      }
      // Whitespace run before the marker, not reaching back before i.
      size_t before = at;
      while (before > i) {
        size_t k = before - 1;
        while (k > i && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
        if (SpaceAt(s, k) == before - k) {
          before = k;
        } else {
          break;
        }
      }
      size_t after = marker_end;
      while (after < s.size() && SpaceAt(s, after)) after += SpaceAt(s, after);
      out.text.append(s, i, before - i);
      out.line.insert(out.line.end(), src.line.begin() + i, src.line.begin() + before);
      if (!lstrip) {
        out.text.append(s, before, at - before);
        out.line.insert(out.line.end(), src.line.begin() + before, src.line.begin() + at);
      }
      if (!rstrip) {
        out.text.append(s, marker_end, after - marker_end);
        out.line.insert(out.line.end(), src.line.begin() + marker_end, src.line.begin() + after);
      }
      i = after;
    }
    src = std::move(out);
  }
  return src;
}

// ---------------------------------------------------------------------------------------------
// Lexer.

enum class Tok {
  kText, kNumber, kString, kIdent, kEquals, kOpenParen, kCloseParen, kOpenStatement,
  kCloseStatement, kOpenExpression, kCloseExpression, kOpenSquare, kCloseSquare, kOpenCurly,
  kCloseCurly, kComma, kDot, kColon, kPipe, kAdditive, kMultiplicative, kPower, kComparison,
  kUnary, kComment,
};

struct Token {
  Tok type;
  std::string value;
  int line;
};

std::vector<Token> Lex(const Source& src) {
  const std::string& s = src.text;
  const size_t n = s.size();
  std::vector<Token> tokens;
  size_t pos = 0;
  int curly_depth = 0;
  auto line_at = [&src, n](size_t p) { return n == 0 ? 1 : src.line[p < n ? p : n - 1]; };
  auto error = [&](const std::string& what) { Fail(absl::StrCat(what, " (line ", line_at(pos), ")")); };
  auto at = [&s, n](size_t p) { return p < n ? s[p] : '\0'; };

  // HF's consumeWhile: applies `pred`, decoding backslash escapes.
  auto consume_while = [&](const std::function<bool(char)>& pred) {
    std::string str;
    while (pos < n && pred(s[pos])) {
      if (s[pos] == '\\') {
        ++pos;
        if (pos >= n) error("unexpected end of input");
        const char esc = s[pos++];
        if (esc == 'x' || esc == 'u') {
          const size_t len = esc == 'x' ? 2 : 4;
          if (pos + len > n) error("invalid hexadecimal escape sequence");
          unsigned v = 0;
          for (size_t k = 0; k < len; ++k) {
            const char h = s[pos + k];
            int d = IsDigit(h) ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
            if (d < 0) error("invalid hexadecimal escape sequence");
            v = v * 16 + d;
          }
          AppendUtf8(&str, v);
          pos += len;
          continue;
        }
        switch (esc) {
          case 'n': str += '\n'; break;
          case 't': str += '\t'; break;
          case 'r': str += '\r'; break;
          case 'b': str += '\b'; break;
          case 'f': str += '\f'; break;
          case 'v': str += '\v'; break;
          case '\'': str += '\''; break;
          case '"': str += '"'; break;
          case '\\': str += '\\'; break;
          default: error(absl::StrCat("unexpected escaped character '", std::string(1, esc), "'"));
        }
        continue;
      }
      str += s[pos++];
      if (pos >= n) error("unexpected end of input");
    }
    return str;
  };
  auto strip_trailing_whitespace = [&tokens]() {
    if (!tokens.empty() && tokens.back().type == Tok::kText) {
      tokens.back().value = TrimEnd(tokens.back().value);
      if (tokens.back().value.empty()) tokens.pop_back();
    }
  };
  auto skip_leading_whitespace = [&]() {
    while (pos < n && SpaceAt(s, pos)) pos += SpaceAt(s, pos);
  };
  auto push = [&](Tok type, std::string value, size_t p) {
    tokens.push_back(Token{type, std::move(value), line_at(p)});
  };

  static const std::pair<const char*, Tok> kTable[] = {
      {"{%", Tok::kOpenStatement}, {"%}", Tok::kCloseStatement}, {"{{", Tok::kOpenExpression},
      {"}}", Tok::kCloseExpression}, {"(", Tok::kOpenParen},     {")", Tok::kCloseParen},
      {"{", Tok::kOpenCurly},       {"}", Tok::kCloseCurly},      {"[", Tok::kOpenSquare},
      {"]", Tok::kCloseSquare},     {",", Tok::kComma},           {".", Tok::kDot},
      {":", Tok::kColon},           {"|", Tok::kPipe},            {"<=", Tok::kComparison},
      {">=", Tok::kComparison},     {"==", Tok::kComparison},     {"!=", Tok::kComparison},
      {"<", Tok::kComparison},      {">", Tok::kComparison},      {"+", Tok::kAdditive},
      {"-", Tok::kAdditive},        {"~", Tok::kAdditive},        {"**", Tok::kPower},
      {"*", Tok::kMultiplicative},  {"//", Tok::kMultiplicative}, {"/", Tok::kMultiplicative},
      {"%", Tok::kMultiplicative},  {"=", Tok::kEquals},
  };

  while (pos < n) {
    const bool text_mode = tokens.empty() || tokens.back().type == Tok::kCloseStatement ||
                           tokens.back().type == Tok::kCloseExpression ||
                           tokens.back().type == Tok::kComment;
    if (text_mode) {
      const size_t start = pos;
      while (pos < n && !(s[pos] == '{' && (at(pos + 1) == '%' || at(pos + 1) == '{' || at(pos + 1) == '#'))) {
        ++pos;
      }
      if (pos > start) {
        push(Tok::kText, s.substr(start, pos - start), start);
        continue;
      }
    }
    if (s[pos] == '{' && at(pos + 1) == '#') {
      const size_t start = pos;
      pos += 2;
      const bool strip_before = at(pos) == '-';
      if (strip_before) ++pos;
      std::string comment;
      while (at(pos) != '#' || at(pos + 1) != '}') {
        if (pos + 2 >= n) {
          pos = start;
          error("missing end of comment tag");
        }
        comment += s[pos++];
      }
      const bool strip_after = !comment.empty() && comment.back() == '-';
      if (strip_after) comment.pop_back();
      if (strip_before) strip_trailing_whitespace();
      push(Tok::kComment, comment, start);
      pos += 2;
      if (strip_after) skip_leading_whitespace();
      continue;
    }
    if (s.compare(pos, 3, "{%-") == 0) {
      strip_trailing_whitespace();
      push(Tok::kOpenStatement, "{%", pos);
      pos += 3;
      continue;
    }
    if (s.compare(pos, 3, "{{-") == 0) {
      strip_trailing_whitespace();
      push(Tok::kOpenExpression, "{{", pos);
      curly_depth = 0;
      pos += 3;
      continue;
    }
    consume_while([](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; });
    if (pos >= n) break;
    if (s.compare(pos, 3, "-%}") == 0) {
      push(Tok::kCloseStatement, "%}", pos);
      pos += 3;
      skip_leading_whitespace();
      continue;
    }
    if (s.compare(pos, 3, "-}}") == 0) {
      push(Tok::kCloseExpression, "}}", pos);
      pos += 3;
      skip_leading_whitespace();
      continue;
    }
    const char c = s[pos];
    if (c == '-' || c == '+') {
      if (tokens.empty() || tokens.back().type == Tok::kText) {
        error(absl::StrCat("unexpected character '", std::string(1, c), "'"));
      }
      const Tok last = tokens.back().type;
      if (last != Tok::kIdent && last != Tok::kNumber && last != Tok::kString &&
          last != Tok::kCloseParen && last != Tok::kCloseSquare) {
        const size_t start = pos;
        ++pos;
        std::string num = consume_while(IsDigit);
        if (!num.empty() && at(pos) == '.' && IsDigit(at(pos + 1))) {
          ++pos;
          num += "." + consume_while(IsDigit);
        }
        push(num.empty() ? Tok::kUnary : Tok::kNumber, std::string(1, c) + num, start);
        continue;
      }
    }
    bool matched = false;
    for (const auto& [seq, type] : kTable) {
      const size_t len = std::char_traits<char>::length(seq);
      if (type == Tok::kCloseExpression && curly_depth > 0) continue;
      if (s.compare(pos, len, seq) == 0) {
        push(type, seq, pos);
        if (type == Tok::kOpenExpression) curly_depth = 0;
        if (type == Tok::kOpenCurly) ++curly_depth;
        if (type == Tok::kCloseCurly) --curly_depth;
        pos += len;
        matched = true;
        break;
      }
    }
    if (matched) continue;
    if (c == '\'' || c == '"') {
      const size_t start = pos;
      ++pos;
      std::string str = consume_while([c](char x) { return x != c; });
      push(Tok::kString, std::move(str), start);
      ++pos;
      continue;
    }
    if (IsDigit(c)) {
      const size_t start = pos;
      std::string num = consume_while(IsDigit);
      if ((tokens.empty() || tokens.back().type != Tok::kDot) && at(pos) == '.' && IsDigit(at(pos + 1))) {
        ++pos;
        num += "." + consume_while(IsDigit);
      }
      push(Tok::kNumber, std::move(num), start);
      continue;
    }
    if (IsWordChar(c)) {
      const size_t start = pos;
      push(Tok::kIdent, consume_while(IsWordChar), start);
      continue;
    }
    char32_t cp;
    const size_t len = DecodeAt(s, pos, &cp);
    error(absl::StrCat("unexpected character '", s.substr(pos, len), "'"));
  }
  return tokens;
}


// ---------------------------------------------------------------------------------------------
// AST.

enum class NodeKind {
  kProgram, kText, kComment, kString, kInt, kFloat, kIdent, kArray, kTuple, kObject, kMember,
  kSlice, kCall, kKwArg, kUnary, kBinary, kFilter, kTest, kSelect, kTernary, kIf, kFor, kSet,
  kMacro, kCallBlock, kFilterBlock, kBreak, kContinue,
};

struct Node;
using NodePtr = std::unique_ptr<Node>;

// One node type for all kinds; which fields are used depends on `kind` (see Parser).
struct Node {
  NodeKind kind;
  int line = 0;
  std::string str;     // text, string value, identifier, operator, test or macro name, kwarg key
  double num = 0;      // kInt / kFloat
  bool flag = false;   // kMember: computed; kTest: negated; kCallBlock: has caller parameters
  NodePtr a, b, c;     // operands (see Parser)
  std::vector<NodePtr> kids;  // elements, arguments, parameters
  std::vector<NodePtr> body, alt;
  // kMacro / kCallBlock: whether the body reads the implicit `kwargs` / `varargs`.
  bool uses_kwargs = false, uses_varargs = false;
  // kTest: an optional argument (`is divisibleby(3)`).
  NodePtr test_arg;
};

NodePtr MakeNode(NodeKind kind, int line) {
  auto node = std::make_unique<Node>();
  node->kind = kind;
  node->line = line;
  return node;
}

}  // namespace

struct Program {
  std::vector<NodePtr> body;
};

namespace {

const std::unordered_set<std::string>& KnownFilters() {
  static const auto* k = new std::unordered_set<std::string>{
      "safe", "tojson", "list", "first", "last", "length", "count", "reverse", "sort", "join",
      "string", "unique", "upper", "lower", "title", "capitalize", "trim", "indent", "int",
      "float", "abs", "items", "bool", "default", "d", "selectattr", "rejectattr", "map",
      "replace", "dictsort", "keys", "values"};
  return *k;
}

const std::unordered_set<std::string>& KnownTests() {
  static const auto* k = new std::unordered_set<std::string>{
      "boolean", "callable", "odd", "even", "false", "true", "none", "string", "number",
      "integer", "iterable", "mapping", "sequence", "lower", "upper", "defined", "undefined",
      "equalto", "eq", "divisibleby"};
  return *k;
}

// Methods some value type has (strings and objects); `.x()` with any other name is refused.
const std::unordered_set<std::string>& KnownMethods() {
  static const auto* k = new std::unordered_set<std::string>{
      "upper", "lower", "strip", "title", "capitalize", "rstrip", "lstrip", "startswith",
      "endswith", "split", "replace", "get", "items", "keys", "values", "dictsort"};
  return *k;
}

const std::unordered_set<std::string>& BuiltinFunctions() {
  static const auto* k = new std::unordered_set<std::string>{
      "raise_exception", "range", "strftime_now", "namespace", "caller"};
  return *k;
}

// Statements of Jinja that the subset refuses by name.
const std::unordered_set<std::string>& RefusedStatements() {
  static const auto* k = new std::unordered_set<std::string>{
      "include", "extends", "block", "endblock", "import", "from", "with", "endwith", "raw",
      "endraw", "autoescape", "endautoescape", "do", "trans", "endtrans", "pluralize"};
  return *k;
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  std::unique_ptr<Program> Run() {
    auto program = std::make_unique<Program>();
    while (cur_ < tokens_.size()) program->body.push_back(ParseAny());
    CheckCalls(program->body);
    return program;
  }

 private:
  [[noreturn]] void Error(const std::string& what) const {
    Fail(absl::StrCat(what, " (line ", Line(), ")"));
  }
  int Line() const {
    if (tokens_.empty()) return 1;
    return tokens_[cur_ < tokens_.size() ? cur_ : tokens_.size() - 1].line;
  }
  bool Is(Tok t, size_t ahead = 0) const {
    return cur_ + ahead < tokens_.size() && tokens_[cur_ + ahead].type == t;
  }
  bool IsIdent(std::string_view name, size_t ahead = 0) const {
    return Is(Tok::kIdent, ahead) && tokens_[cur_ + ahead].value == name;
  }
  bool IsStatement(std::initializer_list<std::string_view> names) const {
    if (!Is(Tok::kOpenStatement) || !Is(Tok::kIdent, 1)) return false;
    for (auto name : names) {
      if (tokens_[cur_ + 1].value == name) return true;
    }
    return false;
  }
  const Token& Expect(Tok t, const char* what) {
    if (!Is(t)) {
      if (cur_ >= tokens_.size()) Error(absl::StrCat("unexpected end of template: ", what));
      Error(absl::StrCat(what, ", got '", tokens_[cur_].value, "'"));
    }
    return tokens_[cur_++];
  }
  void ExpectIdent(std::string_view name) {
    if (!IsIdent(name)) Error(absl::StrCat("expected '", std::string(name), "'"));
    ++cur_;
  }
  const Token& Next() {
    if (cur_ >= tokens_.size()) Error("unexpected end of template");
    return tokens_[cur_++];
  }
  // Parses statements until one of `names` opens; the end of input is an error naming them.
  std::vector<NodePtr> ParseUntil(std::initializer_list<std::string_view> names, const char* block, int open_line) {
    std::vector<NodePtr> out;
    while (!IsStatement(names)) {
      if (cur_ >= tokens_.size()) {
        Fail(absl::StrCat("unclosed '", block, "' opened at line ", open_line, ": expected '{% ",
                          std::string(*names.begin()), " %}'"));
      }
      out.push_back(ParseAny());
    }
    return out;
  }

  struct DepthGuard {
    explicit DepthGuard(Parser* p) : p(p) {
      if (++p->depth_ > 256) p->Error("template nested too deeply");
    }
    ~DepthGuard() { --p->depth_; }
    Parser* p;
  };

  NodePtr ParseAny() {
    DepthGuard guard(this);
    const Token& t = tokens_[cur_];
    switch (t.type) {
      case Tok::kComment: {
        auto node = MakeNode(NodeKind::kComment, t.line);
        ++cur_;
        return node;
      }
      case Tok::kText: {
        auto node = MakeNode(NodeKind::kText, t.line);
        node->str = t.value;
        ++cur_;
        return node;
      }
      case Tok::kOpenStatement:
        return ParseStatement();
      case Tok::kOpenExpression: {
        ++cur_;
        auto node = ParseExpression();
        Expect(Tok::kCloseExpression, "expected '}}'");
        return node;
      }
      default:
        Error(absl::StrCat("unexpected '", t.value, "'"));
    }
  }

  NodePtr ParseStatement() {
    Expect(Tok::kOpenStatement, "expected '{%'");
    if (!Is(Tok::kIdent)) Error("expected a statement name after '{%'");
    const std::string name = tokens_[cur_].value;
    const int line = tokens_[cur_].line;
    ++cur_;
    auto close = [this](std::string_view end) {
      Expect(Tok::kOpenStatement, "expected '{%'");
      ExpectIdent(end);
      Expect(Tok::kCloseStatement, "expected '%}'");
    };
    if (name == "set") return ParseSet(line);
    if (name == "if") {
      auto node = ParseIf(line);
      close("endif");
      return node;
    }
    if (name == "for") {
      auto node = ParseFor(line);
      close("endfor");
      return node;
    }
    if (name == "macro") {
      auto node = MakeNode(NodeKind::kMacro, line);
      if (!Is(Tok::kIdent)) Error("expected a macro name");
      node->str = tokens_[cur_++].value;
      node->kids = ParseArgs(true);
      Expect(Tok::kCloseStatement, "expected '%}'");
      node->body = ParseUntil({"endmacro"}, "macro", line);
      close("endmacro");
      MarkSpecialArgs(node.get());
      return node;
    }
    if (name == "call") {
      auto node = MakeNode(NodeKind::kCallBlock, line);
      if (Is(Tok::kOpenParen)) {
        node->flag = true;
        node->kids = ParseArgs(true);
      }
      if (!Is(Tok::kIdent)) Error("expected a macro name after 'call'");
      auto callee = MakeNode(NodeKind::kIdent, Line());
      callee->str = tokens_[cur_++].value;
      auto call = MakeNode(NodeKind::kCall, line);
      call->a = std::move(callee);
      call->kids = ParseArgs(false);
      node->a = std::move(call);
      Expect(Tok::kCloseStatement, "expected '%}'");
      node->body = ParseUntil({"endcall"}, "call", line);
      close("endcall");
      MarkSpecialArgs(node.get());
      return node;
    }
    if (name == "break" || name == "continue") {
      Expect(Tok::kCloseStatement, "expected '%}'");
      return MakeNode(name == "break" ? NodeKind::kBreak : NodeKind::kContinue, line);
    }
    if (name == "filter") {
      auto node = MakeNode(NodeKind::kFilterBlock, line);
      node->a = ParseFilterName();
      Expect(Tok::kCloseStatement, "expected '%}'");
      node->body = ParseUntil({"endfilter"}, "filter", line);
      close("endfilter");
      return node;
    }
    if (RefusedStatements().count(name)) {
      Fail(absl::StrCat("unsupported statement '{% ", name, " %}' (line ", line, ")"));
    }
    Fail(absl::StrCat("unknown statement '{% ", name, " %}' (line ", line, ")"));
  }

  NodePtr ParseSet(int line) {
    auto node = MakeNode(NodeKind::kSet, line);
    node->a = ParseExpressionSequence(false);
    if (Is(Tok::kEquals)) {
      ++cur_;
      node->b = ParseExpressionSequence(false);
    } else {
      Expect(Tok::kCloseStatement, "expected '=' or '%}' in set");
      node->body = ParseUntil({"endset"}, "set", line);
      Expect(Tok::kOpenStatement, "expected '{%'");
      ExpectIdent("endset");
    }
    Expect(Tok::kCloseStatement, "expected '%}'");
    const NodeKind k = node->a->kind;
    if (k != NodeKind::kIdent && k != NodeKind::kTuple && k != NodeKind::kMember) {
      Fail(absl::StrCat("cannot assign to this expression in set (line ", line, ")"));
    }
    return node;
  }

  NodePtr ParseIf(int line) {
    auto node = MakeNode(NodeKind::kIf, line);
    node->a = ParseExpression();
    Expect(Tok::kCloseStatement, "expected '%}'");
    node->body = ParseUntil({"elif", "else", "endif"}, "if", line);
    if (IsStatement({"elif"})) {
      const int elif_line = tokens_[cur_ + 1].line;
      cur_ += 2;
      node->alt.push_back(ParseIf(elif_line));
    } else if (IsStatement({"else"})) {
      cur_ += 2;
      Expect(Tok::kCloseStatement, "expected '%}'");
      node->alt = ParseUntil({"endif"}, "if", line);
    }
    return node;
  }

  NodePtr ParseFor(int line) {
    auto node = MakeNode(NodeKind::kFor, line);
    node->a = ParseExpressionSequence(true);
    if (node->a->kind != NodeKind::kIdent && node->a->kind != NodeKind::kTuple) {
      Error("expected a name or names for the loop variable");
    }
    if (!IsIdent("in")) Error("expected 'in' after the loop variable");
    ++cur_;
    node->b = ParseExpression();
    if (IsIdent("recursive")) Error("unsupported construct 'recursive' loop");
    Expect(Tok::kCloseStatement, "expected '%}'");
    node->body = ParseUntil({"endfor", "else"}, "for", line);
    if (IsStatement({"else"})) {
      cur_ += 2;
      Expect(Tok::kCloseStatement, "expected '%}'");
      node->alt = ParseUntil({"endfor"}, "for", line);
    }
    return node;
  }

  NodePtr ParseExpressionSequence(bool primary) {
    const int line = Line();
    auto first = primary ? ParsePrimary() : ParseExpression();
    if (!Is(Tok::kComma)) return first;
    auto tuple = MakeNode(NodeKind::kTuple, line);
    tuple->kids.push_back(std::move(first));
    while (Is(Tok::kComma)) {
      ++cur_;
      tuple->kids.push_back(primary ? ParsePrimary() : ParseExpression());
    }
    return tuple;
  }

  NodePtr ParseExpression() {
    DepthGuard guard(this);
    auto a = ParseOr();
    if (IsIdent("if")) {
      const int line = Line();
      ++cur_;
      auto test = ParseOr();
      if (IsIdent("else")) {
        ++cur_;
        auto node = MakeNode(NodeKind::kTernary, line);
        node->a = std::move(test);
        node->b = std::move(a);
        node->c = ParseExpression();
        return node;
      }
      auto node = MakeNode(NodeKind::kSelect, line);
      node->a = std::move(a);
      node->b = std::move(test);
      return node;
    }
    return a;
  }

  NodePtr Binary(std::string op, NodePtr l, NodePtr r, int line) {
    auto node = MakeNode(NodeKind::kBinary, line);
    node->str = std::move(op);
    node->a = std::move(l);
    node->b = std::move(r);
    return node;
  }

  NodePtr ParseOr() {
    auto left = ParseAnd();
    while (IsIdent("or")) {
      const int line = Line();
      ++cur_;
      left = Binary("or", std::move(left), ParseAnd(), line);
    }
    return left;
  }
  NodePtr ParseAnd() {
    auto left = ParseNot();
    while (IsIdent("and")) {
      const int line = Line();
      ++cur_;
      left = Binary("and", std::move(left), ParseNot(), line);
    }
    return left;
  }
  NodePtr ParseNot() {
    if (IsIdent("not")) {
      DepthGuard guard(this);
      auto node = MakeNode(NodeKind::kUnary, Line());
      ++cur_;
      node->str = "not";
      node->a = ParseNot();
      return node;
    }
    return ParseComparison();
  }
  NodePtr ParseComparison() {
    auto left = ParseAdditive();
    while (true) {
      const int line = Line();
      std::string op;
      if (IsIdent("not") && IsIdent("in", 1)) {
        op = "not in";
        cur_ += 2;
      } else if (IsIdent("in")) {
        op = "in";
        ++cur_;
      } else if (Is(Tok::kComparison)) {
        op = tokens_[cur_++].value;
      } else {
        break;
      }
      left = Binary(op, std::move(left), ParseAdditive(), line);
    }
    return left;
  }
  NodePtr ParseAdditive() {
    auto left = ParseMultiplicative();
    while (Is(Tok::kAdditive)) {
      const int line = Line();
      std::string op = tokens_[cur_++].value;
      left = Binary(op, std::move(left), ParseMultiplicative(), line);
    }
    return left;
  }
  NodePtr ParseMultiplicative() {
    auto left = ParsePower();
    while (Is(Tok::kMultiplicative)) {
      const int line = Line();
      std::string op = tokens_[cur_++].value;
      left = Binary(op, std::move(left), ParsePower(), line);
    }
    return left;
  }
  NodePtr ParsePower() {
    auto left = ParseTest();
    while (Is(Tok::kPower)) {
      const int line = Line();
      ++cur_;
      left = Binary("**", std::move(left), ParseTest(), line);
    }
    return left;
  }
  NodePtr ParseTest() {
    auto operand = ParseFilter();
    while (IsIdent("is")) {
      const int line = Line();
      ++cur_;
      auto node = MakeNode(NodeKind::kTest, line);
      if (IsIdent("not")) {
        node->flag = true;
        ++cur_;
      }
      if (!Is(Tok::kIdent)) {
        if (Is(Tok::kComparison)) Error(absl::StrCat("unsupported test 'is ", tokens_[cur_].value, "'"));
        Error("expected a test name after 'is'");
      }
      node->str = tokens_[cur_++].value;
      if (!KnownTests().count(node->str)) {
        Fail(absl::StrCat("unsupported test '", node->str, "' (line ", line, ")"));
      }
      if (Is(Tok::kOpenParen)) {
        ++cur_;
        node->test_arg = ParseExpression();
        Expect(Tok::kCloseParen, "expected ')' after the test argument");
      }
      node->a = std::move(operand);
      operand = std::move(node);
    }
    return operand;
  }
  NodePtr ParseFilterName() {
    const int line = Line();
    if (!Is(Tok::kIdent)) Error("expected a filter name");
    auto name = MakeNode(NodeKind::kIdent, line);
    name->str = tokens_[cur_++].value;
    if (!KnownFilters().count(name->str)) {
      Fail(absl::StrCat("unsupported filter '", name->str, "' (line ", line, ")"));
    }
    if (!Is(Tok::kOpenParen)) return name;
    auto call = MakeNode(NodeKind::kCall, line);
    call->a = std::move(name);
    call->kids = ParseArgs(false);
    // HF parses `| f(x).attr` and `| f(x)(y)` and fails only when such a filter runs; so do we.
    auto expr = ParseMember(std::move(call));
    if (Is(Tok::kOpenParen)) return ParseCall(std::move(expr));
    return expr;
  }
  NodePtr ParseFilter() {
    auto operand = ParseUnarySign();
    while (Is(Tok::kPipe)) {
      const int line = Line();
      ++cur_;
      auto node = MakeNode(NodeKind::kFilter, line);
      node->a = std::move(operand);
      node->b = ParseFilterName();
      operand = std::move(node);
    }
    return operand;
  }
  NodePtr ParseUnarySign() {
    if ((Is(Tok::kUnary) || Is(Tok::kAdditive)) && (tokens_[cur_].value == "-" || tokens_[cur_].value == "+")) {
      DepthGuard guard(this);
      auto node = MakeNode(NodeKind::kUnary, Line());
      node->str = tokens_[cur_++].value;
      node->a = ParseUnarySign();
      return node;
    }
    return ParseCallMember();
  }
  NodePtr ParseCallMember() {
    auto member = ParseMember(ParsePrimary());
    if (Is(Tok::kOpenParen)) return ParseCall(std::move(member));
    return member;
  }
  NodePtr ParseCall(NodePtr callee) {
    auto node = MakeNode(NodeKind::kCall, Line());
    node->a = std::move(callee);
    node->kids = ParseArgs(false);
    auto expr = ParseMember(std::move(node));
    if (Is(Tok::kOpenParen)) return ParseCall(std::move(expr));
    return expr;
  }

  std::vector<NodePtr> ParseArgs(bool parameters) {
    Expect(Tok::kOpenParen, "expected '('");
    std::vector<NodePtr> args;
    std::set<std::string> names;
    bool saw_keyword = false;
    while (!Is(Tok::kCloseParen)) {
      if (cur_ >= tokens_.size()) Error("expected ')'");
      if (Is(Tok::kPower) || (Is(Tok::kMultiplicative) && tokens_[cur_].value == "*")) {
        Error("unsupported construct: argument unpacking ('*' / '**')");
      }
      const int line = Line();
      auto arg = ParseExpression();
      if (Is(Tok::kEquals)) {
        ++cur_;
        if (arg->kind != NodeKind::kIdent) {
          Error(parameters ? "expected a name for the parameter" : "expected a name for the keyword argument");
        }
        auto kw = MakeNode(NodeKind::kKwArg, line);
        kw->str = arg->str;
        kw->a = ParseExpression();
        arg = std::move(kw);
      }
      if (parameters) {
        if (arg->kind != NodeKind::kIdent && arg->kind != NodeKind::kKwArg) {
          Error("expected a name for the parameter");
        }
        if (!names.insert(arg->str).second) Error(absl::StrCat("duplicate parameter '", arg->str, "'"));
      }
      if (arg->kind == NodeKind::kKwArg) {
        saw_keyword = true;
      } else if (saw_keyword) {
        Error(parameters ? "a parameter without default follows one with a default"
                         : "positional argument follows keyword argument");
      }
      args.push_back(std::move(arg));
      if (Is(Tok::kComma)) ++cur_;
    }
    ++cur_;
    return args;
  }

  NodePtr ParseMember(NodePtr object) {
    while (Is(Tok::kDot) || Is(Tok::kOpenSquare)) {
      const int line = Line();
      const bool computed = Is(Tok::kOpenSquare);
      ++cur_;
      auto node = MakeNode(NodeKind::kMember, line);
      node->flag = computed;
      node->a = std::move(object);
      if (computed) {
        node->b = ParseSubscript();
        Expect(Tok::kCloseSquare, "expected ']'");
      } else {
        node->b = ParsePrimary();
        if (node->b->kind != NodeKind::kIdent && node->b->kind != NodeKind::kInt) {
          Error("expected a name or an integer after '.'");
        }
      }
      object = std::move(node);
    }
    return object;
  }

  NodePtr ParseSubscript() {
    const int line = Line();
    std::vector<NodePtr> parts;
    bool is_slice = false;
    while (!Is(Tok::kCloseSquare)) {
      if (cur_ >= tokens_.size()) Error("expected ']'");
      if (Is(Tok::kColon)) {
        parts.push_back(nullptr);
        ++cur_;
        is_slice = true;
      } else {
        parts.push_back(ParseExpression());
        if (Is(Tok::kColon)) {
          ++cur_;
          is_slice = true;
        }
      }
    }
    if (parts.empty()) Error("expected an index or a slice inside '[]'");
    if (!is_slice) return std::move(parts[0]);
    if (parts.size() > 3) Error("a slice takes at most 3 parts");
    auto node = MakeNode(NodeKind::kSlice, line);
    node->a = parts.size() > 0 ? std::move(parts[0]) : nullptr;
    node->b = parts.size() > 1 ? std::move(parts[1]) : nullptr;
    node->c = parts.size() > 2 ? std::move(parts[2]) : nullptr;
    return node;
  }

  NodePtr ParsePrimary() {
    DepthGuard guard(this);
    const Token& t = Next();
    switch (t.type) {
      case Tok::kNumber: {
        const bool is_float = t.value.find('.') != std::string::npos;
        auto node = MakeNode(is_float ? NodeKind::kFloat : NodeKind::kInt, t.line);
        node->num = std::strtod(t.value.c_str(), nullptr);
        return node;
      }
      case Tok::kString: {
        auto node = MakeNode(NodeKind::kString, t.line);
        node->str = t.value;
        while (Is(Tok::kString)) node->str += tokens_[cur_++].value;
        return node;
      }
      case Tok::kIdent: {
        auto node = MakeNode(NodeKind::kIdent, t.line);
        node->str = t.value;
        return node;
      }
      case Tok::kOpenParen: {
        auto node = ParseExpressionSequence(false);
        Expect(Tok::kCloseParen, "expected ')'");
        return node;
      }
      case Tok::kOpenSquare: {
        auto node = MakeNode(NodeKind::kArray, t.line);
        while (!Is(Tok::kCloseSquare)) {
          if (cur_ >= tokens_.size()) Error("expected ']'");
          node->kids.push_back(ParseExpression());
          if (Is(Tok::kComma)) ++cur_;
        }
        ++cur_;
        return node;
      }
      case Tok::kOpenCurly: {
        auto node = MakeNode(NodeKind::kObject, t.line);
        while (!Is(Tok::kCloseCurly)) {
          if (cur_ >= tokens_.size()) Error("expected '}'");
          node->kids.push_back(ParseExpression());
          Expect(Tok::kColon, "expected ':' between key and value");
          node->kids.push_back(ParseExpression());
          if (Is(Tok::kComma)) ++cur_;
        }
        ++cur_;
        return node;
      }
      default:
        Fail(absl::StrCat("unexpected '", t.value, "' (line ", t.line, ")"));
    }
  }

  // HF binds `kwargs` / `varargs` only when the body reads them without declaring them.
  static void MarkSpecialArgs(Node* node) {
    std::set<std::string> declared;
    for (const auto& p : node->kids) declared.insert(p->str);
    std::function<void(const Node*)> visit = [&](const Node* n) {
      if (n == nullptr) return;
      if (n->kind == NodeKind::kIdent && !declared.count(n->str)) {
        if (n->str == "kwargs") node->uses_kwargs = true;
        if (n->str == "varargs") node->uses_varargs = true;
      }
      if (n->kind == NodeKind::kMember && !n->flag) {
        visit(n->a.get());
        return;
      }
      for (const Node* child : {n->a.get(), n->b.get(), n->c.get(), n->test_arg.get()}) visit(child);
      for (const auto& k : n->kids) visit(k.get());
      for (const auto& k : n->body) visit(k.get());
      for (const auto& k : n->alt) visit(k.get());
    };
    for (const auto& k : node->kids) {
      if (k->kind == NodeKind::kKwArg) visit(k->a.get());
    }
    for (const auto& k : node->body) visit(k.get());
  }

  // Every call must reach a function: a builtin, a macro of this template (or a name a set, for or
  // macro parameter may bind to one), or a method some value type has.
  void CheckCalls(const std::vector<NodePtr>& program) {
    std::unordered_set<std::string> bindable;
    std::function<void(const Node*)> collect = [&](const Node* n) {
      if (n == nullptr) return;
      if (n->kind == NodeKind::kMacro) bindable.insert(n->str);
      if (n->kind == NodeKind::kMacro || n->kind == NodeKind::kCallBlock) {
        for (const auto& p : n->kids) bindable.insert(p->str);
      }
      if ((n->kind == NodeKind::kSet || n->kind == NodeKind::kFor) && n->a) {
        if (n->a->kind == NodeKind::kIdent) bindable.insert(n->a->str);
        for (const auto& k : n->a->kids) bindable.insert(k->str);
      }
      for (const Node* child : {n->a.get(), n->b.get(), n->c.get(), n->test_arg.get()}) collect(child);
      for (const auto& k : n->kids) collect(k.get());
      for (const auto& k : n->body) collect(k.get());
      for (const auto& k : n->alt) collect(k.get());
    };
    for (const auto& n : program) collect(n.get());
    std::function<void(const Node*, bool)> check = [&](const Node* n, bool filter_position) {
      if (n == nullptr) return;
      if (n->kind == NodeKind::kCall && !filter_position) {
        const Node* callee = n->a.get();
        if (callee->kind == NodeKind::kIdent) {
          if (!BuiltinFunctions().count(callee->str) && !bindable.count(callee->str)) {
            Fail(absl::StrCat("unsupported function '", callee->str, "()' (line ", n->line, ")"));
          }
        } else if (callee->kind == NodeKind::kMember && !callee->flag &&
                   callee->b->kind == NodeKind::kIdent) {
          if (!KnownMethods().count(callee->b->str)) {
            Fail(absl::StrCat("unsupported method '.", callee->b->str, "()' (line ", n->line, ")"));
          }
        }
      }
      const bool b_is_filter = n->kind == NodeKind::kFilter;
      // The filter name heads the chain of a filter in `| f(x).attr(y)`.
      const bool a_heads_filter = n->kind == NodeKind::kFilterBlock ||
                                  (filter_position && (n->kind == NodeKind::kCall || n->kind == NodeKind::kMember));
      check(n->a.get(), a_heads_filter);
      check(n->b.get(), b_is_filter);
      check(n->c.get(), false);
      check(n->test_arg.get(), false);
      for (const auto& k : n->kids) check(k.get(), false);
      for (const auto& k : n->body) check(k.get(), false);
      for (const auto& k : n->alt) check(k.get(), false);
    };
    for (const auto& n : program) check(n.get(), false);
  }

  std::vector<Token> tokens_;
  size_t cur_ = 0;
  int depth_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Runtime values, mirroring HF's runtime classes.

struct Value;
struct Env;
using EnvPtr = std::shared_ptr<Env>;
using Array = std::vector<Value>;
struct Object;
struct Function;

struct Value {
  enum Kind : uint8_t { kUndefined, kNull, kBool, kInt, kFloat, kString, kArray, kObject, kNamespace, kFunction };
  Kind kind = kUndefined;
  bool b = false;
  bool tuple = false;    // kArray built from a tuple literal (HF's TupleValue)
  double n = 0;          // kInt and kFloat (JavaScript numbers are doubles)
  std::string s;
  std::shared_ptr<Array> arr;
  std::shared_ptr<Object> obj;  // kObject and kNamespace
  std::shared_ptr<Function> fn;

  static Value Undefined() { return Value(); }
  static Value Null() { Value v; v.kind = kNull; return v; }
  static Value Bool(bool x) { Value v; v.kind = kBool; v.b = x; return v; }
  static Value Int(double x) { Value v; v.kind = kInt; v.n = x; return v; }
  static Value Float(double x) { Value v; v.kind = kFloat; v.n = x; return v; }
  static Value Str(std::string x) { Value v; v.kind = kString; v.s = std::move(x); return v; }
  static Value Arr(Array x) {
    Value v;
    v.kind = kArray;
    v.arr = std::make_shared<Array>(std::move(x));
    return v;
  }
  static Value Obj(std::shared_ptr<Object> o, Kind kind = kObject) {
    Value v;
    v.kind = kind;
    v.obj = std::move(o);
    return v;
  }
  bool is_number() const { return kind == kInt || kind == kFloat; }
  bool is_mapping() const { return kind == kObject || kind == kNamespace; }
};

struct Object {
  std::vector<std::pair<std::string, Value>> items;  // insertion order, as a JavaScript Map
  bool kwargs = false;  // HF's KeywordArgumentsValue: keyword arguments passed to a function
  const Value* Find(std::string_view key) const {
    for (const auto& [k, v] : items) {
      if (k == key) return &v;
    }
    return nullptr;
  }
  void Set(const std::string& key, Value v) {
    for (auto& [k, old] : items) {
      if (k == key) {
        old = std::move(v);
        return;
      }
    }
    items.emplace_back(key, std::move(v));
  }
};

struct Function {
  std::function<Value(std::vector<Value>&, const EnvPtr&)> call;
};

Value MakeFunction(std::function<Value(std::vector<Value>&, const EnvPtr&)> f) {
  Value v;
  v.kind = Value::kFunction;
  v.fn = std::make_shared<Function>(Function{std::move(f)});
  return v;
}

const char* TypeName(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined: return "UndefinedValue";
    case Value::kNull: return "NullValue";
    case Value::kBool: return "BooleanValue";
    case Value::kInt: return "IntegerValue";
    case Value::kFloat: return "FloatValue";
    case Value::kString: return "StringValue";
    case Value::kArray: return v.tuple ? "TupleValue" : "ArrayValue";
    case Value::kObject: return v.obj->kwargs ? "KeywordArgumentsValue" : "ObjectValue";
    case Value::kNamespace: return "NamespaceValue";
    case Value::kFunction: return "FunctionValue";
  }
  return "?";
}

// Request JSON nests as deep as a client likes; conversion, printing and destruction recurse.
constexpr int kMaxJsonDepth = 256;

Value FromJson(const nlohmann::ordered_json& j, int depth = 0) {
  if (depth > kMaxJsonDepth) Fail(absl::StrCat("template variables nest deeper than ", kMaxJsonDepth, " levels"));
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::Null();
    case nlohmann::ordered_json::value_t::boolean: return Value::Bool(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value::Int(static_cast<double>(j.get<int64_t>()));
    case nlohmann::ordered_json::value_t::number_unsigned: return Value::Int(static_cast<double>(j.get<uint64_t>()));
    case nlohmann::ordered_json::value_t::number_float: {
      // JSON.parse cannot tell 1.0 from 1; HF types a value by Number.isInteger.
      const double x = j.get<double>();
      return std::isfinite(x) && std::trunc(x) == x ? Value::Int(x) : Value::Float(x);
    }
    case nlohmann::ordered_json::value_t::string: return Value::Str(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      Array out;
      for (const auto& e : j) out.push_back(FromJson(e, depth + 1));
      return Value::Arr(std::move(out));
    }
    case nlohmann::ordered_json::value_t::object: {
      // HF walks objects with Object.entries: array-index keys ("0", "17") first in numeric order,
      // then the others in insertion order.
      auto is_index = [](const std::string& k) {
        if (k.empty() || k.size() > 10 || (k.size() > 1 && k[0] == '0')) return false;
        for (char c : k) {
          if (!IsDigit(c)) return false;
        }
        return std::stoull(k) < 4294967295ull;
      };
      std::vector<std::pair<unsigned long long, const std::string*>> index_keys;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (is_index(it.key())) index_keys.emplace_back(std::stoull(it.key()), &it.key());
      }
      std::sort(index_keys.begin(), index_keys.end());
      auto o = std::make_shared<Object>();
      for (const auto& [n, key] : index_keys) o->Set(*key, FromJson(j.at(*key), depth + 1));
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (!is_index(it.key())) o->Set(it.key(), FromJson(it.value(), depth + 1));
      }
      return Value::Obj(std::move(o));
    }
    default: return Value::Undefined();  // binary / discarded: not produced by JSON text
  }
}

bool Truthy(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined: case Value::kNull: return false;
    case Value::kBool: return v.b;
    case Value::kInt: case Value::kFloat: return v.n != 0 && !std::isnan(v.n);
    case Value::kString: return !v.s.empty();
    case Value::kArray: return !v.arr->empty();
    case Value::kObject: return !v.obj->items.empty();
    case Value::kNamespace: case Value::kFunction: return true;
  }
  return false;
}

struct JsonOptions {
  int indent = 0;
  bool ensure_ascii = false;
  bool sort_keys = false;
  std::optional<std::pair<std::string, std::string>> separators;
};

// String.prototype.localeCompare (ICU root collation, as HF's sort_keys uses) for ASCII keys:
// punctuation before digits before letters, letters case-blind, then lowercase before uppercase
// at the first case difference. Other characters sort after, by code point.
bool LocaleLess(const std::string& a, const std::string& b) {
  auto primary = [](unsigned char c) -> std::pair<int, int> {
    if (c >= 0x80) return {3, c};
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return {2, AsciiLower(static_cast<char>(c))};
    if (IsDigit(static_cast<char>(c))) return {1, c};
    return {0, c};
  };
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const auto pa = primary(a[i]), pb = primary(b[i]);
    if (pa != pb) return pa < pb;
  }
  if (a.size() != b.size()) return a.size() < b.size();
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return a[i] > b[i];  // same letter, different case: lowercase ('a' > 'A') first
  }
  return false;
}

std::string ToJson(const Value& v, const JsonOptions& o, int depth, bool undefined_to_null) {
  if (depth > 4 * kMaxJsonDepth) Fail("value nests too deeply to print");
  std::string item_sep = ", ", key_sep = ": ";
  if (o.separators) {
    item_sep = o.separators->first;
    key_sep = o.separators->second;
  } else if (o.indent > 0) {
    item_sep = ",";
  }
  switch (v.kind) {
    case Value::kNull: return "null";
    case Value::kUndefined: return undefined_to_null ? "null" : "undefined";
    case Value::kInt: case Value::kFloat:
      return std::isfinite(v.n) ? JsNumber(v.n) : "null";
    case Value::kBool: return v.b ? "true" : "false";
    case Value::kString: {
      std::string q = JsonQuote(v.s);
      return o.ensure_ascii ? AsciiSafe(q) : q;
    }
    case Value::kArray:
    case Value::kObject:
    case Value::kNamespace: {
      if (v.kind == Value::kArray && v.tuple) Fail("Cannot convert to JSON: TupleValue");
      const std::string indent(o.indent > 0 ? o.indent : 0, ' ');
      std::string base = "\n";
      for (int i = 0; i < depth; ++i) base += indent;
      const std::string child = base + indent;
      std::vector<std::string> core;
      if (v.kind == Value::kArray) {
        for (const auto& e : *v.arr) core.push_back(ToJson(e, o, depth + 1, undefined_to_null));
        std::string out = "[";
        if (o.indent > 0 && !core.empty()) {
          out += child;
          for (size_t i = 0; i < core.size(); ++i) out += (i ? item_sep + child : "") + core[i];
          return out + base + "]";
        }
        for (size_t i = 0; i < core.size(); ++i) out += (i ? item_sep : "") + core[i];
        return out + "]";
      }
      std::vector<const std::pair<std::string, Value>*> entries;
      for (const auto& e : v.obj->items) entries.push_back(&e);
      if (o.sort_keys) {
        std::stable_sort(entries.begin(), entries.end(), [](auto* x, auto* y) { return LocaleLess(x->first, y->first); });
      }
      for (const auto* e : entries) {
        std::string key = JsonQuote(e->first);
        if (o.ensure_ascii) key = AsciiSafe(key);
        std::string item = key + key_sep + ToJson(e->second, o, depth + 1, undefined_to_null);
        core.push_back(o.indent > 0 ? child + item : item);
      }
      std::string out = "{";
      for (size_t i = 0; i < core.size(); ++i) out += (i ? item_sep : "") + core[i];
      if (o.indent > 0 && !core.empty()) out += base;
      return out + "}";
    }
    case Value::kFunction: Fail("Cannot convert to JSON: FunctionValue");
  }
  return "";
}

// String(value) as HF's toString does (used for output, ~ and +).
std::string ToStr(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined: return "undefined";
    case Value::kNull: return "null";
    case Value::kBool: return v.b ? "true" : "false";
    case Value::kInt: return JsNumber(v.n);
    case Value::kFloat: return JsFloat(v.n);
    case Value::kString: return v.s;
    case Value::kArray: case Value::kObject: case Value::kNamespace:
      return ToJson(v, JsonOptions{}, 0, false);
    case Value::kFunction: return "[function]";
  }
  return "";
}

// String(value.value): what JavaScript makes of the wrapped value where HF concatenates (`~`, `+`)
// or joins. Arrays join their elements' toString() with ","; objects are "[object Map]"; numbers
// print without FloatValue's ".0".
std::string JsValueString(const Value& v) {
  switch (v.kind) {
    case Value::kInt: case Value::kFloat: return JsNumber(v.n);
    case Value::kArray: {
      std::string out;
      for (size_t i = 0; i < v.arr->size(); ++i) out += (i ? "," : "") + ToStr((*v.arr)[i]);
      return out;
    }
    case Value::kObject: case Value::kNamespace: return "[object Map]";
    default: return ToStr(v);
  }
}

// JavaScript `===` on the wrapped values: primitives by value, containers by identity.
bool StrictEq(const Value& a, const Value& b) {
  const bool an = a.is_number(), bn = b.is_number();
  if (an || bn) return an && bn && a.n == b.n;
  if (a.kind != b.kind) {
    return false;
  }
  switch (a.kind) {
    case Value::kUndefined: case Value::kNull: return true;
    case Value::kBool: return a.b == b.b;
    case Value::kString: return a.s == b.s;
    case Value::kArray: return a.arr == b.arr;
    case Value::kObject: case Value::kNamespace: return a.obj == b.obj;
    case Value::kFunction: return a.fn == b.fn;
    default: return false;
  }
}

// Number(string) for loose equality.
double JsToNumber(const std::string& s) {
  const std::string t = Trim(s);
  if (t.empty()) return 0;
  char* end = nullptr;
  const double d = std::strtod(t.c_str(), &end);
  if (end != t.c_str() + t.size()) return NAN;
  return d;
}

// JavaScript `==` on the wrapped values (null == undefined, numbers against strings and booleans).
bool LooseEq(const Value& a, const Value& b) {
  auto nullish = [](const Value& v) { return v.kind == Value::kNull || v.kind == Value::kUndefined; };
  if (nullish(a) || nullish(b)) return nullish(a) && nullish(b);
  auto primitive_number = [](const Value& v, double* out) {
    if (v.is_number()) *out = v.n;
    else if (v.kind == Value::kBool) *out = v.b ? 1 : 0;
    else if (v.kind == Value::kString) *out = JsToNumber(v.s);
    else return false;
    return true;
  };
  if (a.kind == Value::kString && b.kind == Value::kString) return a.s == b.s;
  double x, y;
  if (primitive_number(a, &x) && primitive_number(b, &y)) return x == y;
  return StrictEq(a, b);
}

int CompareValues(const Value& a, const Value& b, bool case_sensitive) {
  if (a.kind == Value::kNull && b.kind == Value::kNull) return 0;
  if (a.kind == Value::kNull || b.kind == Value::kNull) {
    Fail(absl::StrCat("Cannot compare ", TypeName(a), " with ", TypeName(b)));
  }
  if (a.kind == Value::kUndefined && b.kind == Value::kUndefined) return 0;
  if (a.kind == Value::kUndefined || b.kind == Value::kUndefined) {
    Fail(absl::StrCat("Cannot compare ", TypeName(a), " with ", TypeName(b)));
  }
  auto numeric = [](const Value& v) { return v.is_number() || v.kind == Value::kBool; };
  if (numeric(a) && numeric(b)) {
    const double x = a.kind == Value::kBool ? a.b : a.n;
    const double y = b.kind == Value::kBool ? b.b : b.n;
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.kind != b.kind) Fail(absl::StrCat("Cannot compare different types: ", TypeName(a), " and ", TypeName(b)));
  if (a.kind != Value::kString) Fail(absl::StrCat("Cannot compare type: ", TypeName(a)));
  std::u16string x = ToUtf16(case_sensitive ? a.s : MapCase(a.s, false));
  std::u16string y = ToUtf16(case_sensitive ? b.s : MapCase(b.s, false));
  return x < y ? -1 : x > y ? 1 : 0;
}

// HF's slice helper (Python semantics, step may be negative).
template <typename T>
std::vector<T> SliceVector(const std::vector<T>& v, std::optional<double> start_in,
                           std::optional<double> stop_in, double step) {
  const double len = static_cast<double>(v.size());
  std::vector<T> out;
  double start, stop;
  if (step >= 0) {
    start = start_in.value_or(0);
    start = start < 0 ? std::max(len + start, 0.0) : std::min(start, len);
    stop = stop_in.value_or(len);
    stop = stop < 0 ? std::max(len + stop, 0.0) : std::min(stop, len);
    if (step == 0) return out;  // JavaScript loops forever adding 0; refuse to.
    for (double i = start; i < stop; i += step) out.push_back(v[static_cast<size_t>(i)]);
  } else {
    start = start_in.value_or(len - 1);
    start = start < 0 ? std::max(len + start, -1.0) : std::min(start, len - 1);
    stop = stop_in.value_or(-1);
    stop = stop < -1 ? std::max(len + stop, -1.0) : std::min(stop, len - 1);
    for (double i = start; -i < -stop; i += step) out.push_back(v[static_cast<size_t>(i)]);
  }
  return out;
}

Value GetAttributePath(const Value& item, const std::string& path) {
  Value v = item;
  size_t from = 0;
  while (true) {
    const size_t dot = path.find('.', from);
    const std::string part = path.substr(from, dot == std::string::npos ? std::string::npos : dot - from);
    if (v.is_mapping()) {
      const Value* f = v.obj->Find(part);
      v = f ? *f : Value::Undefined();
    } else if (v.kind == Value::kArray) {
      const auto idx = JsParseInt(part);
      if (idx && *idx >= 0 && *idx < static_cast<double>(v.arr->size())) {
        v = (*v.arr)[static_cast<size_t>(*idx)];
      } else {
        return Value::Undefined();
      }
    } else {
      return Value::Undefined();
    }
    if (dot == std::string::npos) return v;
    from = dot + 1;
  }
}

// Positional arguments and the trailing keyword-arguments object, if any.
struct Args {
  std::vector<Value> positional;
  std::shared_ptr<Object> kwargs;  // never null
  const Value* At(size_t i) const { return i < positional.size() ? &positional[i] : nullptr; }
  const Value* Kw(std::string_view k) const { return kwargs->Find(k); }
  // positional i, else keyword k, else nullptr
  const Value* Get(size_t i, std::string_view k) const {
    const Value* v = At(i);
    return v ? v : Kw(k);
  }
};

Args SplitArgs(const std::vector<Value>& raw) {
  Args a;
  a.positional = raw;
  if (!a.positional.empty() && a.positional.back().kind == Value::kObject && a.positional.back().obj->kwargs) {
    a.kwargs = a.positional.back().obj;
    a.positional.pop_back();
  } else {
    a.kwargs = std::make_shared<Object>();
  }
  return a;
}

std::string Replace(const std::string& str, const std::string& old_value, const std::string& new_value,
                    std::optional<double> count) {
  if (count && *count == 0) return str;
  double remaining = (!count || *count < 0) ? INFINITY : *count;
  std::string out;
  if (old_value.empty()) {
    // The empty pattern matches before every code point and at the end.
    for (char32_t cp : CodePoints(str)) {
      if (remaining > 0) {
        out += new_value;
        --remaining;
      }
      AppendUtf8(&out, cp);
    }
    if (remaining > 0) out += new_value;
    return out;
  }
  size_t pos = 0;
  while (true) {
    const size_t hit = str.find(old_value, pos);
    if (hit == std::string::npos || remaining <= 0) break;
    out.append(str, pos, hit - pos);
    out += new_value;
    --remaining;
    pos = hit + old_value.size();
  }
  out.append(str, pos, std::string::npos);
  return out;
}

std::string TitleCase(const std::string& s) {
  // /\b\w/g -> upper: an ASCII word character not preceded by one.
  std::string out = s;
  for (size_t i = 0; i < out.size(); ++i) {
    if (IsWordChar(out[i]) && (i == 0 || !IsWordChar(out[i - 1]))) out[i] = AsciiUpper(out[i]);
  }
  return out;
}

Value StringMethod(const std::string& self, const std::string& name) {
  if (name == "length") return Value::Int(static_cast<double>(Utf16Length(self)));
  auto fn = [](auto f) { return MakeFunction(f); };
  if (name == "upper") return fn([self](std::vector<Value>&, const EnvPtr&) { return Value::Str(MapCase(self, true)); });
  if (name == "lower") return fn([self](std::vector<Value>&, const EnvPtr&) { return Value::Str(MapCase(self, false)); });
  if (name == "strip") return fn([self](std::vector<Value>&, const EnvPtr&) { return Value::Str(Trim(self)); });
  if (name == "rstrip") return fn([self](std::vector<Value>&, const EnvPtr&) { return Value::Str(TrimEnd(self)); });
  if (name == "lstrip") return fn([self](std::vector<Value>&, const EnvPtr&) { return Value::Str(TrimStart(self)); });
  if (name == "title") return fn([self](std::vector<Value>&, const EnvPtr&) { return Value::Str(TitleCase(self)); });
  if (name == "capitalize") {
    return fn([self](std::vector<Value>&, const EnvPtr&) {
      std::u16string u = ToUtf16(self);
      if (!u.empty() && u[0] < 0xD800) u[0] = static_cast<char16_t>(UpperCp(u[0]));
      return Value::Str(FromUtf16(u));
    });
  }
  if (name == "startswith" || name == "endswith") {
    const bool starts = name == "startswith";
    return fn([self, starts, name](std::vector<Value>& args, const EnvPtr&) {
      if (args.empty()) Fail(name + "() requires at least one argument");
      auto test = [&](const std::string& p) {
        return p.size() <= self.size() &&
               (starts ? self.compare(0, p.size(), p) == 0 : self.compare(self.size() - p.size(), p.size(), p) == 0);
      };
      const Value& pattern = args[0];
      if (pattern.kind == Value::kString) return Value::Bool(test(pattern.s));
      if (pattern.kind == Value::kArray) {
        for (const auto& item : *pattern.arr) {
          if (item.kind != Value::kString) Fail(name + "() tuple elements must be strings");
          if (test(item.s)) return Value::Bool(true);
        }
        return Value::Bool(false);
      }
      Fail(name + "() argument must be a string or tuple of strings");
    });
  }
  if (name == "split") {
    return fn([self](std::vector<Value>& args, const EnvPtr&) {
      const Value sep = args.size() > 0 ? args[0] : Value::Null();
      if (sep.kind != Value::kString && sep.kind != Value::kNull) Fail("sep argument must be a string or null");
      const Value maxsplit = args.size() > 1 ? args[1] : Value::Int(-1);
      if (maxsplit.kind != Value::kInt) Fail("maxsplit argument must be a number");
      Array result;
      if (sep.kind == Value::kNull) {
        const std::string text = TrimStart(self);
        size_t i = 0;
        while (i < text.size()) {
          while (i < text.size() && SpaceAt(text, i)) i += SpaceAt(text, i);
          if (i >= text.size()) break;
          if (maxsplit.n != -1 && static_cast<double>(result.size()) >= maxsplit.n) {
            result.push_back(Value::Str(text.substr(i)));
            break;
          }
          size_t j = i;
          while (j < text.size() && !SpaceAt(text, j)) {
            char32_t cp;
            j += DecodeAt(text, j, &cp);
          }
          result.push_back(Value::Str(text.substr(i, j - i)));
          i = j;
        }
      } else {
        if (sep.s.empty()) Fail("empty separator");
        std::vector<std::string> parts;
        size_t pos = 0;
        while (true) {
          const size_t hit = self.find(sep.s, pos);
          if (hit == std::string::npos) break;
          parts.push_back(self.substr(pos, hit - pos));
          pos = hit + sep.s.size();
        }
        parts.push_back(self.substr(pos));
        if (maxsplit.n != -1 && static_cast<double>(parts.size()) > maxsplit.n) {
          const size_t keep = maxsplit.n < 0 ? 0 : static_cast<size_t>(maxsplit.n);
          std::string rest;
          for (size_t k = keep; k < parts.size(); ++k) rest += (k > keep ? sep.s : "") + parts[k];
          parts.resize(keep);
          parts.push_back(rest);
        }
        for (auto& p : parts) result.push_back(Value::Str(std::move(p)));
      }
      return Value::Arr(std::move(result));
    });
  }
  if (name == "replace") {
    return fn([self](std::vector<Value>& raw, const EnvPtr&) {
      if (raw.size() < 2) Fail("replace() requires at least two arguments");
      const Value& old_value = raw[0];
      const Value& new_value = raw[1];
      if (old_value.kind != Value::kString || new_value.kind != Value::kString) {
        Fail("replace() arguments must be strings");
      }
      Value count = Value::Null();
      if (raw.size() > 2) {
        if (raw[2].kind == Value::kObject && raw[2].obj->kwargs) {
          const Value* c = raw[2].obj->Find("count");
          count = c ? *c : Value::Null();
        } else {
          count = raw[2];
        }
      }
      if (count.kind != Value::kInt && count.kind != Value::kNull) Fail("replace() count argument must be a number or null");
      return Value::Str(Replace(self, old_value.s, new_value.s,
                                count.kind == Value::kInt ? std::optional<double>(count.n) : std::nullopt));
    });
  }
  return Value::Undefined();
}

Value ObjectItems(const Object& o) {
  Array out;
  for (const auto& [k, v] : o.items) out.push_back(Value::Arr({Value::Str(k), v}));
  return Value::Arr(std::move(out));
}

Value ObjectMethod(const std::shared_ptr<Object>& self, const std::string& name) {
  if (name == "get") {
    return MakeFunction([self](std::vector<Value>& args, const EnvPtr&) {
      const Value key = args.size() > 0 ? args[0] : Value::Undefined();
      if (key.kind != Value::kString) Fail(absl::StrCat("Object key must be a string: got ", TypeName(key)));
      if (const Value* v = self->Find(key.s)) return *v;
      return args.size() > 1 ? args[1] : Value::Null();
    });
  }
  if (name == "items") return MakeFunction([self](std::vector<Value>&, const EnvPtr&) { return ObjectItems(*self); });
  if (name == "keys") {
    return MakeFunction([self](std::vector<Value>&, const EnvPtr&) {
      Array out;
      for (const auto& kv : self->items) out.push_back(Value::Str(kv.first));
      return Value::Arr(std::move(out));
    });
  }
  if (name == "values") {
    return MakeFunction([self](std::vector<Value>&, const EnvPtr&) {
      Array out;
      for (const auto& kv : self->items) out.push_back(kv.second);
      return Value::Arr(std::move(out));
    });
  }
  if (name == "dictsort") {
    return MakeFunction([self](std::vector<Value>& raw, const EnvPtr&) {
      Args a = SplitArgs(raw);
      const Value* cs = a.Get(0, "case_sensitive");
      const Value case_sensitive = cs ? *cs : Value::Bool(false);
      if (case_sensitive.kind != Value::kBool) Fail("case_sensitive must be a boolean");
      const Value* by_p = a.Get(1, "by");
      const Value by = by_p ? *by_p : Value::Str("key");
      if (by.kind != Value::kString) Fail("by must be a string");
      if (by.s != "key" && by.s != "value") Fail("by must be either 'key' or 'value'");
      const Value* rv = a.Get(2, "reverse");
      const Value reverse = rv ? *rv : Value::Bool(false);
      if (reverse.kind != Value::kBool) Fail("reverse must be a boolean");
      Array items = *ObjectItems(*self).arr;
      const size_t idx = by.s == "key" ? 0 : 1;
      std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
        const int r = CompareValues((*x.arr)[idx], (*y.arr)[idx], case_sensitive.b);
        return reverse.b ? r > 0 : r < 0;
      });
      return Value::Arr(std::move(items));
    });
  }
  return Value::Undefined();
}

// ---------------------------------------------------------------------------------------------
// Environments and the interpreter.

struct Env {
  EnvPtr parent;
  std::unordered_map<std::string, Value> vars;
  const Value* Lookup(const std::string& name) const {
    for (const Env* e = this; e != nullptr; e = e->parent.get()) {
      auto it = e->vars.find(name);
      if (it != e->vars.end()) return &it->second;
    }
    return nullptr;
  }
};

EnvPtr NewEnv(EnvPtr parent) {
  auto e = std::make_shared<Env>();
  e->parent = std::move(parent);
  return e;
}

struct BreakSignal {};
struct ContinueSignal {};

// Render budget: templates are trusted more than requests but still must not hang the server.
constexpr int64_t kMaxSteps = 20'000'000;
constexpr size_t kMaxOutputBytes = 64u << 20;
constexpr int kMaxCallDepth = 200;

class Interpreter {
 public:
  std::string Block(const std::vector<NodePtr>& statements, const EnvPtr& env) {
    std::string out;
    for (const auto& st : statements) {
      Value v = Eval(st.get(), env);
      if (v.kind != Value::kNull && v.kind != Value::kUndefined) {
        out += ToStr(v);
        if (out.size() > kMaxOutputBytes) Fail("rendered output exceeds 64 MiB");
      }
    }
    return out;
  }

  Value Eval(const Node* node, const EnvPtr& env) {
    if (node == nullptr) return Value::Undefined();
    if (++steps_ > kMaxSteps) Fail("template evaluation exceeds its step budget");
    switch (node->kind) {
      case NodeKind::kProgram: return Value::Str(Block(node->body, env));
      case NodeKind::kText: case NodeKind::kString: return Value::Str(node->str);
      case NodeKind::kComment: return Value::Null();
      case NodeKind::kInt: return Value::Int(node->num);
      case NodeKind::kFloat: return Value::Float(node->num);
      case NodeKind::kIdent: {
        const Value* v = env->Lookup(node->str);
        return v ? *v : Value::Undefined();
      }
      case NodeKind::kArray: case NodeKind::kTuple: {
        Array out;
        for (const auto& k : node->kids) out.push_back(Eval(k.get(), env));
        Value v = Value::Arr(std::move(out));
        v.tuple = node->kind == NodeKind::kTuple;
        return v;
      }
      case NodeKind::kObject: {
        auto o = std::make_shared<Object>();
        for (size_t i = 0; i + 1 < node->kids.size(); i += 2) {
          Value key = Eval(node->kids[i].get(), env);
          if (key.kind != Value::kString) Fail(absl::StrCat("Object keys must be strings: got ", TypeName(key)));
          o->Set(key.s, Eval(node->kids[i + 1].get(), env));
        }
        return Value::Obj(std::move(o));
      }
      case NodeKind::kMember: return Member(node, env);
      case NodeKind::kCall: return Call(node, env);
      case NodeKind::kUnary: return Unary(node, env);
      case NodeKind::kBinary: return BinaryOp(node, env);
      case NodeKind::kFilter: return ApplyFilter(Eval(node->a.get(), env), node->b.get(), env);
      case NodeKind::kFilterBlock: return ApplyFilter(Value::Str(Block(node->body, env)), node->a.get(), env);
      case NodeKind::kTest: return Value::Bool(Test(node, env));
      case NodeKind::kSelect:
        if (!Truthy(Eval(node->b.get(), env))) return Value::Undefined();
        return Eval(node->a.get(), env);
      case NodeKind::kTernary:
        return Truthy(Eval(node->a.get(), env)) ? Eval(node->b.get(), env) : Eval(node->c.get(), env);
      case NodeKind::kIf:
        return Value::Str(Block(Truthy(Eval(node->a.get(), env)) ? node->body : node->alt, env));
      case NodeKind::kFor: return For(node, env);
      case NodeKind::kSet: return Set(node, env);
      case NodeKind::kMacro: return Macro(node, env);
      case NodeKind::kCallBlock: return CallBlock(node, env);
      case NodeKind::kBreak: throw BreakSignal{};
      case NodeKind::kContinue: throw ContinueSignal{};
      case NodeKind::kSlice: case NodeKind::kKwArg:
        Fail(absl::StrCat("unexpected expression (line ", node->line, ")"));
    }
    return Value::Undefined();
  }

 private:
  [[noreturn]] static void FailAt(const Node* node, const std::string& what) {
    Fail(absl::StrCat(what, " (line ", node->line, ")"));
  }

  Value Member(const Node* node, const EnvPtr& env) {
    Value object = Eval(node->a.get(), env);
    Value property;
    if (node->flag) {
      if (node->b->kind == NodeKind::kSlice) return Slice(object, node->b.get(), env);
      property = Eval(node->b.get(), env);
    } else if (node->b->kind == NodeKind::kInt) {
      property = Value::Int(node->b->num);
    } else {
      property = Value::Str(node->b->str);
    }
    if (object.is_mapping()) {
      if (property.kind != Value::kString) {
        FailAt(node, absl::StrCat("Cannot access property with non-string: got ", TypeName(property)));
      }
      if (const Value* v = object.obj->Find(property.s)) return *v;
      return object.kind == Value::kObject ? ObjectMethod(object.obj, property.s) : Value::Undefined();
    }
    if (object.kind == Value::kArray || object.kind == Value::kString) {
      if (property.kind == Value::kInt) {
        // Array.prototype.at / String.prototype.at (UTF-16 units for strings).
        if (object.kind == Value::kArray) {
          const double len = static_cast<double>(object.arr->size());
          const double i = property.n < 0 ? len + property.n : property.n;
          if (i < 0 || i >= len) return Value::Undefined();
          return (*object.arr)[static_cast<size_t>(i)];
        }
        const std::u16string u = ToUtf16(object.s);
        const double len = static_cast<double>(u.size());
        const double i = property.n < 0 ? len + property.n : property.n;
        if (i < 0 || i >= len) return Value::Undefined();
        return Value::Str(FromUtf16(u.substr(static_cast<size_t>(i), 1)));
      }
      if (property.kind == Value::kString) {
        if (object.kind == Value::kString) return StringMethod(object.s, property.s);
        if (property.s == "length") return Value::Int(static_cast<double>(object.arr->size()));
        return Value::Undefined();
      }
      FailAt(node, absl::StrCat("Cannot access property with non-string/non-number: got ", TypeName(property)));
    }
    if (property.kind != Value::kString) {
      FailAt(node, absl::StrCat("Cannot access property with non-string: got ", TypeName(property)));
    }
    return Value::Undefined();
  }

  Value Slice(const Value& object, const Node* slice, const EnvPtr& env) {
    if (object.kind != Value::kArray && object.kind != Value::kString) FailAt(slice, "Slice object must be an array or string");
    auto bound = [&](const Node* n, const char* what) -> std::optional<double> {
      Value v = Eval(n, env);
      if (v.kind == Value::kUndefined) return std::nullopt;
      if (v.kind != Value::kInt) FailAt(slice, absl::StrCat("Slice ", what, " must be numeric or undefined"));
      return v.n;
    };
    const auto start = bound(slice->a.get(), "start");
    const auto stop = bound(slice->b.get(), "stop");
    const auto step = bound(slice->c.get(), "step");
    if (object.kind == Value::kArray) return Value::Arr(SliceVector(*object.arr, start, stop, step.value_or(1)));
    std::string out;
    for (char32_t cp : SliceVector(CodePoints(object.s), start, stop, step.value_or(1))) AppendUtf8(&out, cp);
    return Value::Str(std::move(out));
  }

  std::vector<Value> EvalArgs(const std::vector<NodePtr>& args, const EnvPtr& env, std::shared_ptr<Object>* kwargs) {
    std::vector<Value> positional;
    *kwargs = std::make_shared<Object>();
    (*kwargs)->kwargs = true;
    for (const auto& a : args) {
      if (a->kind != NodeKind::kKwArg) positional.push_back(Eval(a.get(), env));
    }
    for (const auto& a : args) {
      if (a->kind != NodeKind::kKwArg) continue;
      if ((*kwargs)->Find(a->str)) FailAt(a.get(), absl::StrCat("Got multiple values for keyword argument '", a->str, "'"));
      (*kwargs)->Set(a->str, Eval(a->a.get(), env));
    }
    return positional;
  }

  Value Call(const Node* node, const EnvPtr& env) {
    std::shared_ptr<Object> kwargs;
    std::vector<Value> args = EvalArgs(node->kids, env, &kwargs);
    if (!kwargs->items.empty()) args.push_back(Value::Obj(kwargs));
    Value fn = Eval(node->a.get(), env);
    if (fn.kind != Value::kFunction) {
      FailAt(node, absl::StrCat("Cannot call something that is not a function: got ", TypeName(fn)));
    }
    return fn.fn->call(args, env);
  }

  Value Unary(const Node* node, const EnvPtr& env) {
    Value arg = Eval(node->a.get(), env);
    if (node->str == "not") return Value::Bool(!Truthy(arg));
    const double sign = node->str == "-" ? -1 : 1;
    if (arg.is_number() || arg.kind == Value::kBool) {
      const double x = arg.kind == Value::kBool ? (arg.b ? 1 : 0) : arg.n;
      return arg.kind == Value::kFloat ? Value::Float(sign * x) : Value::Int(sign * x);
    }
    FailAt(node, absl::StrCat("Unknown operator \"", node->str, "\" for ", TypeName(arg)));
  }

  Value BinaryOp(const Node* node, const EnvPtr& env) {
    const std::string& op = node->str;
    Value left = Eval(node->a.get(), env);
    if (op == "and") return Truthy(left) ? Eval(node->b.get(), env) : left;
    if (op == "or") return Truthy(left) ? left : Eval(node->b.get(), env);
    Value right = Eval(node->b.get(), env);
    if (op == "==") return Value::Bool(LooseEq(left, right));
    if (op == "!=") return Value::Bool(!LooseEq(left, right));
    if (left.kind == Value::kUndefined || right.kind == Value::kUndefined) {
      if (right.kind == Value::kUndefined && (op == "in" || op == "not in")) return Value::Bool(op == "not in");
      FailAt(node, absl::StrCat("Cannot perform operation ", op, " on undefined values"));
    }
    if (left.kind == Value::kNull || right.kind == Value::kNull) FailAt(node, "Cannot perform operation on null values");
    if (op == "~") return Value::Str(JsValueString(left) + JsValueString(right));
    const bool ln = left.is_number() || left.kind == Value::kBool, rn = right.is_number() || right.kind == Value::kBool;
    if (op == "**" && ln && rn) {
      const double a = left.kind == Value::kBool ? left.b : left.n;
      const double b = right.kind == Value::kBool ? right.b : right.n;
      if (a == 0 && b < 0) FailAt(node, "0.0 cannot be raised to a negative power");
      const double r = std::pow(a, b);
      if (!std::isfinite(r)) FailAt(node, "Exponentiation result is not a finite real number");
      const bool is_float = left.kind == Value::kFloat || right.kind == Value::kFloat || b < 0;
      return is_float ? Value::Float(r) : Value::Int(r);
    }
    if (left.is_number() && right.is_number()) {
      const double a = left.n, b = right.n;
      const bool is_float = left.kind == Value::kFloat || right.kind == Value::kFloat;
      auto num = [is_float](double r) { return is_float ? Value::Float(r) : Value::Int(r); };
      if (op == "+") return num(a + b);
      if (op == "-") return num(a - b);
      if (op == "*") return num(a * b);
      if (op == "/") return Value::Float(a / b);
      if (op == "//") return num(std::floor(a / b));
      if (op == "%") return num(std::fmod(a, b));
      if (op == "<") return Value::Bool(a < b);
      if (op == ">") return Value::Bool(a > b);
      if (op == ">=") return Value::Bool(a >= b);
      if (op == "<=") return Value::Bool(a <= b);
    } else if (left.kind == Value::kArray && right.kind == Value::kArray) {
      if (op == "+") {
        Array out = *left.arr;
        out.insert(out.end(), right.arr->begin(), right.arr->end());
        return Value::Arr(std::move(out));
      }
    } else if (right.kind == Value::kArray) {
      if (op == "in" || op == "not in") {
        bool member = false;
        for (const auto& x : *right.arr) {
          if (StrictEq(x, left)) {
            member = true;
            break;
          }
        }
        return Value::Bool(op == "in" ? member : !member);
      }
    }
    if (left.kind == Value::kString || right.kind == Value::kString) {
      if (op == "+") return Value::Str(JsValueString(left) + JsValueString(right));
    }
    if (left.kind == Value::kString && right.kind == Value::kString) {
      if (op == "in") return Value::Bool(right.s.find(left.s) != std::string::npos);
      if (op == "not in") return Value::Bool(right.s.find(left.s) == std::string::npos);
    }
    if (left.kind == Value::kString && right.kind == Value::kObject) {
      if (op == "in") return Value::Bool(right.obj->Find(left.s) != nullptr);
      if (op == "not in") return Value::Bool(right.obj->Find(left.s) == nullptr);
    }
    FailAt(node, absl::StrCat("Unknown operator \"", op, "\" between ", TypeName(left), " and ", TypeName(right)));
  }

  bool Test(const Node* node, const EnvPtr& env) {
    const Value v = Eval(node->a.get(), env);
    const std::string& t = node->str;
    bool r = false;
    if (t == "boolean") r = v.kind == Value::kBool;
    else if (t == "callable") r = v.kind == Value::kFunction;
    else if (t == "odd" || t == "even") {
      if (v.kind != Value::kInt) FailAt(node, absl::StrCat("cannot ", t, " on ", TypeName(v)));
      r = (std::fmod(v.n, 2) != 0) == (t == "odd");
    } else if (t == "false") r = v.kind == Value::kBool && !v.b;
    else if (t == "true") r = v.kind == Value::kBool && v.b;
    else if (t == "none") r = v.kind == Value::kNull;
    else if (t == "string") r = v.kind == Value::kString;
    else if (t == "number") r = v.is_number();
    else if (t == "integer") r = v.kind == Value::kInt;
    else if (t == "iterable") r = (v.kind == Value::kArray && !v.tuple) || v.kind == Value::kString;
    else if (t == "mapping") r = v.kind == Value::kObject;
    else if (t == "sequence") r = v.kind == Value::kArray || v.kind == Value::kObject || v.kind == Value::kString;
    else if (t == "lower") r = v.kind == Value::kString && v.s == MapCase(v.s, false);
    else if (t == "upper") r = v.kind == Value::kString && v.s == MapCase(v.s, true);
    else if (t == "defined") r = v.kind != Value::kUndefined;
    else if (t == "undefined") r = v.kind == Value::kUndefined;
    else if (t == "equalto" || t == "eq") {
      r = StrictEq(v, node->test_arg ? Eval(node->test_arg.get(), env) : Value::Undefined());
    } else if (t == "divisibleby") {
      const Value d = node->test_arg ? Eval(node->test_arg.get(), env) : Value::Undefined();
      if (!v.is_number() || !d.is_number() || d.n == 0) FailAt(node, "divisibleby needs two numbers, the divisor not 0");
      r = std::fmod(v.n, d.n) == 0;
    } else {
      FailAt(node, absl::StrCat("Unknown test: ", t));
    }
    return node->flag ? !r : r;
  }

  // The tests selectattr/rejectattr may name (two-argument form).
  bool NamedTest(const std::string& t, const Value& v, const Value& arg, const Node* at) {
    Node fake;
    fake.kind = NodeKind::kTest;
    fake.line = at->line;
    fake.str = t;
    if (!KnownTests().count(t)) FailAt(at, absl::StrCat("Unknown test: ", t));
    auto env = NewEnv(nullptr);
    env->vars["v"] = v;
    env->vars["arg"] = arg;
    fake.a = MakeNode(NodeKind::kIdent, at->line);
    fake.a->str = "v";
    fake.test_arg = MakeNode(NodeKind::kIdent, at->line);
    fake.test_arg->str = "arg";
    return Test(&fake, env);
  }

  Value ApplyFilter(const Value& operand, const Node* filter, const EnvPtr& env);
  Value For(const Node* node, const EnvPtr& env);
  Value Set(const Node* node, const EnvPtr& env);
  Value Macro(const Node* node, const EnvPtr& env);
  Value CallBlock(const Node* node, const EnvPtr& env);
  void BindArguments(const Node* node, const std::vector<NodePtr>& params, bool uses_kwargs, bool uses_varargs,
                     const std::string& display, std::vector<Value> raw, const EnvPtr& scope);

  int64_t steps_ = 0;
  int call_depth_ = 0;
};

Value Interpreter::ApplyFilter(const Value& operand, const Node* filter, const EnvPtr& env) {
  if (filter->kind != NodeKind::kIdent && (filter->kind != NodeKind::kCall || filter->a->kind != NodeKind::kIdent)) {
    FailAt(filter, "Unknown filter: an expression that is not a filter name or call");
  }
  const bool has_args = filter->kind == NodeKind::kCall;
  const std::string& name = has_args ? filter->a->str : filter->str;
  auto fail_unknown = [&](const char* type) -> Value {
    FailAt(filter, absl::StrCat("Unknown ", type, " filter: ", name));
  };
  auto join_values = [](const Array& items, const std::string& sep) {
    // Array.prototype.join over the wrapped values: null and undefined join as "".
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += sep;
      const Value& x = items[i];
      if (x.kind == Value::kNull || x.kind == Value::kUndefined) continue;
      out += JsValueString(x);
    }
    return out;
  };
  const bool is_default = name == "default" || name == "d";

  if (!has_args) {
    if (name == "safe") return operand;
    if (name == "tojson") return Value::Str(ToJson(operand, JsonOptions{}, 0, true));
    if (is_default) return operand.kind == Value::kUndefined ? Value::Str("") : operand;
    if (operand.kind == Value::kArray) {
      const Array& a = *operand.arr;
      if (name == "list") return operand;
      if (name == "first") return a.empty() ? Value::Undefined() : a.front();
      if (name == "last") return a.empty() ? Value::Undefined() : a.back();
      if (name == "length" || name == "count") return Value::Int(static_cast<double>(a.size()));
      if (name == "reverse") return Value::Arr(Array(a.rbegin(), a.rend()));
      if (name == "sort") {
        Array out = a;
        std::stable_sort(out.begin(), out.end(), [](const Value& x, const Value& y) { return CompareValues(x, y, false) < 0; });
        return Value::Arr(std::move(out));
      }
      if (name == "join") return Value::Str(join_values(a, ""));
      if (name == "string") return Value::Str(ToJson(operand, JsonOptions{}, 0, false));
      if (name == "unique") {
        Array out;
        for (const auto& x : a) {
          bool seen = false;
          for (const auto& y : out) seen = seen || StrictEq(x, y);
          if (!seen) out.push_back(x);
        }
        return Value::Arr(std::move(out));
      }
      return fail_unknown("ArrayValue");
    }
    if (operand.kind == Value::kString) {
      const std::string& s = operand.s;
      if (name == "length" || name == "count") return Value::Int(static_cast<double>(Utf16Length(s)));
      if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
        std::vector<Value> none;
        return StringMethod(s, name).fn->call(none, env);
      }
      if (name == "trim") return Value::Str(Trim(s));
      if (name == "indent") {
        std::string out;
        size_t from = 0, i = 0;
        while (true) {
          const size_t nl = s.find('\n', from);
          const std::string line = s.substr(from, nl == std::string::npos ? std::string::npos : nl - from);
          if (i > 0) out += "\n";
          out += (i == 0 || line.empty()) ? line : "    " + line;
          if (nl == std::string::npos) break;
          from = nl + 1;
          ++i;
        }
        return Value::Str(out);
      }
      if (name == "join" || name == "string") return operand;
      if (name == "int") {
        const auto v = JsParseInt(s);
        return Value::Int(v ? *v : 0);
      }
      if (name == "float") {
        const auto v = JsParseFloat(s);
        return Value::Float(v ? *v : 0);
      }
      return fail_unknown("StringValue");
    }
    if (operand.is_number()) {
      if (name == "abs") return operand.kind == Value::kInt ? Value::Int(std::fabs(operand.n)) : Value::Float(std::fabs(operand.n));
      if (name == "int") return Value::Int(std::floor(operand.n));
      if (name == "float") return Value::Float(operand.n);
      if (name == "string") return Value::Str(ToStr(operand));
      return fail_unknown("NumericValue");
    }
    if (operand.kind == Value::kObject) {
      if (name == "items") return ObjectItems(*operand.obj);
      if (name == "length" || name == "count") return Value::Int(static_cast<double>(operand.obj->items.size()));
      Value builtin = ObjectMethod(operand.obj, name);
      if (builtin.kind == Value::kFunction) {
        std::vector<Value> none;
        return builtin.fn->call(none, env);
      }
      return fail_unknown("ObjectValue");
    }
    if (operand.kind == Value::kBool) {
      if (name == "bool") return operand;
      if (name == "int") return Value::Int(operand.b ? 1 : 0);
      if (name == "float") return Value::Float(operand.b ? 1 : 0);
      if (name == "string") return Value::Str(operand.b ? "true" : "false");
      return fail_unknown("BooleanValue");
    }
    FailAt(filter, absl::StrCat("Cannot apply filter \"", name, "\" to type: ", TypeName(operand)));
  }

  std::shared_ptr<Object> kw;
  if (name == "tojson") {
    EvalArgs(filter->kids, env, &kw);
    JsonOptions o;
    if (const Value* v = kw->Find("indent")) {
      if (v->kind != Value::kInt && v->kind != Value::kNull) FailAt(filter, "If set, indent must be a number");
      o.indent = v->kind == Value::kInt && v->n > 0 ? static_cast<int>(std::min(v->n, 64.0)) : 0;
    }
    if (const Value* v = kw->Find("ensure_ascii")) {
      if (v->kind != Value::kBool) FailAt(filter, "If set, ensure_ascii must be a boolean");
      o.ensure_ascii = v->b;
    }
    if (const Value* v = kw->Find("sort_keys")) {
      if (v->kind != Value::kBool) FailAt(filter, "If set, sort_keys must be a boolean");
      o.sort_keys = v->b;
    }
    if (const Value* v = kw->Find("separators"); v && v->kind != Value::kNull) {
      if (v->kind != Value::kArray || v->arr->size() != 2 || (*v->arr)[0].kind != Value::kString ||
          (*v->arr)[1].kind != Value::kString) {
        FailAt(filter, "separators must be a tuple of two strings");
      }
      o.separators = std::make_pair((*v->arr)[0].s, (*v->arr)[1].s);
    }
    return Value::Str(ToJson(operand, o, 0, true));
  }
  if (name == "join") {
    Array items;
    if (operand.kind == Value::kString) {
      for (char32_t cp : CodePoints(operand.s)) {
        std::string one;
        AppendUtf8(&one, cp);
        items.push_back(Value::Str(std::move(one)));
      }
    } else if (operand.kind == Value::kArray) {
      items = *operand.arr;
    } else {
      FailAt(filter, absl::StrCat("Cannot apply filter \"join\" to type: ", TypeName(operand)));
    }
    std::vector<Value> pos = EvalArgs(filter->kids, env, &kw);
    const Value* sep = !pos.empty() ? &pos[0] : kw->Find("separator");
    const Value separator = sep ? *sep : Value::Str("");
    if (separator.kind != Value::kString) FailAt(filter, "separator must be a string");
    return Value::Str(join_values(items, separator.s));
  }
  if (name == "int" || name == "float") {
    std::vector<Value> pos = EvalArgs(filter->kids, env, &kw);
    const Value* d = !pos.empty() ? &pos[0] : kw->Find("default");
    const bool is_int = name == "int";
    const Value default_value = d ? *d : (is_int ? Value::Int(0) : Value::Float(0));
    if (operand.kind == Value::kString) {
      const auto v = is_int ? JsParseInt(operand.s) : JsParseFloat(operand.s);
      if (!v) return default_value;
      return is_int ? Value::Int(*v) : Value::Float(*v);
    }
    if (operand.is_number()) return operand;
    if (operand.kind == Value::kBool) return is_int ? Value::Int(operand.b ? 1 : 0) : Value::Float(operand.b ? 1 : 0);
    FailAt(filter, absl::StrCat("Cannot apply filter \"", name, "\" to type: ", TypeName(operand)));
  }
  if (is_default) {
    std::vector<Value> pos = EvalArgs(filter->kids, env, &kw);
    const Value default_value = !pos.empty() ? pos[0] : Value::Str("");
    const Value* bp = pos.size() > 1 ? &pos[1] : kw->Find("boolean");
    const Value boolean = bp ? *bp : Value::Bool(false);
    if (boolean.kind != Value::kBool) FailAt(filter, "`default` filter flag must be a boolean");
    if (operand.kind == Value::kUndefined || (boolean.b && !Truthy(operand))) return default_value;
    return operand;
  }
  if (operand.kind == Value::kArray) {
    const Array& a = *operand.arr;
    if (name == "sort") {
      std::vector<Value> pos = EvalArgs(filter->kids, env, &kw);
      auto get = [&](size_t i, const char* k) -> const Value* { return i < pos.size() ? &pos[i] : kw->Find(k); };
      const Value reverse = get(0, "reverse") ? *get(0, "reverse") : Value::Bool(false);
      if (reverse.kind != Value::kBool) FailAt(filter, "reverse must be a boolean");
      const Value cs = get(1, "case_sensitive") ? *get(1, "case_sensitive") : Value::Bool(false);
      if (cs.kind != Value::kBool) FailAt(filter, "case_sensitive must be a boolean");
      const Value attribute = get(2, "attribute") ? *get(2, "attribute") : Value::Null();
      if (attribute.kind != Value::kString && attribute.kind != Value::kInt && attribute.kind != Value::kNull) {
        FailAt(filter, "attribute must be a string, integer, or null");
      }
      auto key = [&](const Value& item) {
        if (attribute.kind == Value::kNull) return item;
        return GetAttributePath(item, attribute.kind == Value::kInt ? JsNumber(attribute.n) : attribute.s);
      };
      Array out = a;
      std::stable_sort(out.begin(), out.end(), [&](const Value& x, const Value& y) {
        const int r = CompareValues(key(x), key(y), cs.b);
        return reverse.b ? r > 0 : r < 0;
      });
      return Value::Arr(std::move(out));
    }
    if (name == "selectattr" || name == "rejectattr") {
      const bool select = name == "selectattr";
      for (const auto& item : a) {
        if (!item.is_mapping()) FailAt(filter, absl::StrCat("`", name, "` can only be applied to array of objects"));
      }
      for (const auto& arg : filter->kids) {
        if (arg->kind != NodeKind::kString) FailAt(filter, absl::StrCat("arguments of `", name, "` must be strings"));
      }
      if (filter->kids.empty()) FailAt(filter, absl::StrCat("`", name, "` needs an attribute name"));
      const std::string& attr = filter->kids[0]->str;
      const std::string* test = filter->kids.size() > 1 ? &filter->kids[1]->str : nullptr;
      const Value test_arg = filter->kids.size() > 2 ? Value::Str(filter->kids[2]->str) : Value::Undefined();
      if (test && !KnownTests().count(*test)) FailAt(filter, absl::StrCat("Unknown test: ", *test));
      Array out;
      for (const auto& item : a) {
        const Value* v = item.obj->Find(attr);
        bool r = false;
        if (v) r = test ? NamedTest(*test, *v, test_arg, filter) : Truthy(*v);
        if (r == select) out.push_back(item);
      }
      return Value::Arr(std::move(out));
    }
    if (name == "map") {
      EvalArgs(filter->kids, env, &kw);
      const Value* attr = kw->Find("attribute");
      if (!attr) FailAt(filter, "`map` expressions without `attribute` set are not currently supported.");
      if (attr->kind != Value::kString) FailAt(filter, "attribute must be a string");
      const Value* d = kw->Find("default");
      Array out;
      for (const auto& item : a) {
        if (!item.is_mapping()) FailAt(filter, "items in map must be an object");
        Value v = GetAttributePath(item, attr->s);
        out.push_back(v.kind == Value::kUndefined && d ? *d : v);
      }
      return Value::Arr(std::move(out));
    }
    return fail_unknown("ArrayValue");
  }
  if (operand.kind == Value::kString) {
    if (name == "indent") {
      std::vector<Value> pos = EvalArgs(filter->kids, env, &kw);
      auto get = [&](size_t i, const char* k) -> const Value* { return i < pos.size() ? &pos[i] : kw->Find(k); };
      const Value width = get(0, "width") ? *get(0, "width") : Value::Int(4);
      if (width.kind != Value::kInt) FailAt(filter, "width must be a number");
      const bool first = get(1, "first") && Truthy(*get(1, "first"));
      const bool blank = get(2, "blank") && Truthy(*get(2, "blank"));
      const std::string pad(width.n > 0 ? static_cast<size_t>(std::min(width.n, 1024.0)) : 0, ' ');
      const std::string& s = operand.s;
      std::string out;
      size_t from = 0, i = 0;
      while (true) {
        const size_t nl = s.find('\n', from);
        const std::string line = s.substr(from, nl == std::string::npos ? std::string::npos : nl - from);
        if (i > 0) out += "\n";
        out += ((!first && i == 0) || (!blank && line.empty())) ? line : pad + line;
        if (nl == std::string::npos) break;
        from = nl + 1;
        ++i;
      }
      return Value::Str(out);
    }
    if (name == "replace") {
      std::vector<Value> pos = EvalArgs(filter->kids, env, &kw);
      pos.push_back(Value::Obj(kw));
      return StringMethod(operand.s, "replace").fn->call(pos, env);
    }
    return fail_unknown("StringValue");
  }
  if (operand.kind == Value::kObject) {
    Value builtin = ObjectMethod(operand.obj, name);
    if (builtin.kind == Value::kFunction) {
      std::vector<Value> pos = EvalArgs(filter->kids, env, &kw);
      if (!kw->items.empty()) pos.push_back(Value::Obj(kw));
      return builtin.fn->call(pos, env);
    }
    return fail_unknown("ObjectValue");
  }
  FailAt(filter, absl::StrCat("Cannot apply filter \"", name, "\" to type: ", TypeName(operand)));
}

Value Interpreter::For(const Node* node, const EnvPtr& env) {
  EnvPtr scope = NewEnv(env);
  const Node* test = nullptr;
  Value iterable;
  if (node->b->kind == NodeKind::kSelect) {
    iterable = Eval(node->b->a.get(), scope);
    test = node->b->b.get();
  } else {
    iterable = Eval(node->b.get(), scope);
  }
  if (iterable.kind == Value::kObject) {
    Array keys;
    for (const auto& kv : iterable.obj->items) keys.push_back(Value::Str(kv.first));
    iterable = Value::Arr(std::move(keys));
  } else if (iterable.kind != Value::kArray) {
    FailAt(node, absl::StrCat("Expected iterable or object type in for loop: got ", TypeName(iterable)));
  }
  const Node* loopvar = node->a.get();
  auto bind = [&](const EnvPtr& target, const Value& current) {
    if (loopvar->kind == NodeKind::kIdent) {
      target->vars[loopvar->str] = current;
      return;
    }
    if (current.kind != Value::kArray || current.tuple) {
      FailAt(node, absl::StrCat("Cannot unpack non-iterable type: ", TypeName(current)));
    }
    if (loopvar->kids.size() != current.arr->size()) {
      FailAt(node, absl::StrCat("Too ", loopvar->kids.size() > current.arr->size() ? "few" : "many", " items to unpack"));
    }
    for (size_t j = 0; j < loopvar->kids.size(); ++j) {
      if (loopvar->kids[j]->kind != NodeKind::kIdent) FailAt(node, "Cannot unpack non-identifier type");
      target->vars[loopvar->kids[j]->str] = (*current.arr)[j];
    }
  };
  Array items;
  for (const Value& current : *iterable.arr) {
    if (test) {
      EnvPtr loop_scope = NewEnv(scope);
      bind(loop_scope, current);
      if (!Truthy(Eval(test, loop_scope))) continue;
    }
    items.push_back(current);
  }
  std::string result;
  bool no_iteration = true;
  const double len = static_cast<double>(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    auto loop = std::make_shared<Object>();
    const double d = static_cast<double>(i);
    loop->items = {
        {"index", Value::Int(d + 1)},         {"index0", Value::Int(d)},
        {"revindex", Value::Int(len - d)},    {"revindex0", Value::Int(len - d - 1)},
        {"first", Value::Bool(i == 0)},       {"last", Value::Bool(i + 1 == items.size())},
        {"length", Value::Int(len)},
        {"previtem", i > 0 ? items[i - 1] : Value::Undefined()},
        {"nextitem", i + 1 < items.size() ? items[i + 1] : Value::Undefined()},
    };
    scope->vars["loop"] = Value::Obj(std::move(loop));
    bind(scope, items[i]);
    try {
      result += Block(node->body, scope);
    } catch (const ContinueSignal&) {
      continue;
    } catch (const BreakSignal&) {
      break;
    }
    // As in HF, an iteration left by break or continue does not count as one for `else`.
    no_iteration = false;
  }
  if (no_iteration) result += Block(node->alt, scope);
  return Value::Str(std::move(result));
}

Value Interpreter::Set(const Node* node, const EnvPtr& env) {
  Value rhs = node->b ? Eval(node->b.get(), env) : Value::Str(Block(node->body, env));
  const Node* target = node->a.get();
  if (target->kind == NodeKind::kIdent) {
    env->vars[target->str] = std::move(rhs);
  } else if (target->kind == NodeKind::kTuple) {
    if (rhs.kind != Value::kArray) FailAt(node, absl::StrCat("Cannot unpack non-iterable type in set: ", TypeName(rhs)));
    if (rhs.arr->size() != target->kids.size()) {
      FailAt(node, absl::StrCat("Too ", target->kids.size() > rhs.arr->size() ? "few" : "many", " items to unpack in set"));
    }
    for (size_t i = 0; i < target->kids.size(); ++i) {
      if (target->kids[i]->kind != NodeKind::kIdent) FailAt(node, "Cannot unpack to non-identifier in set");
      env->vars[target->kids[i]->str] = (*rhs.arr)[i];
    }
  } else {
    Value object = Eval(target->a.get(), env);
    if (object.kind != Value::kNamespace) FailAt(node, "cannot assign attribute on non-namespace object");
    if (target->flag || target->b->kind != NodeKind::kIdent) FailAt(node, "Cannot assign to member with non-identifier property");
    object.obj->Set(target->b->str, std::move(rhs));
  }
  return Value::Null();
}

void Interpreter::BindArguments(const Node* node, const std::vector<NodePtr>& params, bool uses_kwargs,
                                bool uses_varargs, const std::string& display, std::vector<Value> raw,
                                const EnvPtr& scope) {
  std::shared_ptr<Object> kwargs = std::make_shared<Object>();
  if (!raw.empty() && raw.back().kind == Value::kObject && raw.back().obj->kwargs) {
    kwargs->items = raw.back().obj->items;
    raw.pop_back();
  }
  std::vector<std::pair<std::string, const Node*>> pending;
  for (size_t i = 0; i < params.size(); ++i) {
    const Node* p = params[i].get();
    const std::string& name = p->str;
    std::optional<Value> value;
    if (i < raw.size()) value = raw[i];
    if (!value) {
      for (auto it = kwargs->items.begin(); it != kwargs->items.end(); ++it) {
        if (it->first == name) {
          value = it->second;
          kwargs->items.erase(it);
          break;
        }
      }
    }
    if (!value && p->kind == NodeKind::kKwArg) pending.emplace_back(name, p->a.get());
    scope->vars[name] = value ? *value : Value::Undefined();
  }
  if (uses_kwargs) {
    scope->vars["kwargs"] = Value::Obj(kwargs);
  } else if (!kwargs->items.empty()) {
    FailAt(node, absl::StrCat("macro ", display, " takes no keyword argument '", kwargs->items.front().first, "'"));
  }
  if (uses_varargs) {
    Array rest;
    for (size_t i = params.size(); i < raw.size(); ++i) rest.push_back(raw[i]);
    scope->vars["varargs"] = Value::Arr(std::move(rest));
  } else if (raw.size() > params.size()) {
    FailAt(node, absl::StrCat("macro ", display, " takes not more than ", params.size(), " argument(s)"));
  }
  for (const auto& [name, def] : pending) scope->vars[name] = Eval(def, scope);
}

Value Interpreter::Macro(const Node* node, const EnvPtr& env) {
  env->vars[node->str] = MakeFunction([this, node](std::vector<Value>& args, const EnvPtr& scope) {
    if (++call_depth_ > kMaxCallDepth) FailAt(node, "macro calls nested too deeply");
    EnvPtr macro_scope = NewEnv(scope);
    BindArguments(node, node->kids, node->uses_kwargs, node->uses_varargs, "'" + node->str + "'", args, macro_scope);
    Value out = Value::Str(Block(node->body, macro_scope));
    --call_depth_;
    return out;
  });
  return Value::Null();
}

Value Interpreter::CallBlock(const Node* node, const EnvPtr& env) {
  Value caller = MakeFunction([this, node, env](std::vector<Value>& args, const EnvPtr&) {
    if (++call_depth_ > kMaxCallDepth) FailAt(node, "macro calls nested too deeply");
    EnvPtr block_env = NewEnv(env);
    BindArguments(node, node->kids, node->uses_kwargs, node->uses_varargs, "None", args, block_env);
    Value out = Value::Str(Block(node->body, block_env));
    --call_depth_;
    return out;
  });
  std::shared_ptr<Object> kw;
  std::vector<Value> args = EvalArgs(node->a->kids, env, &kw);
  args.push_back(Value::Obj(kw));
  Value fn = Eval(node->a->a.get(), env);
  if (fn.kind != Value::kFunction) {
    FailAt(node, absl::StrCat("Cannot call something that is not a function: got ", TypeName(fn)));
  }
  EnvPtr call_env = NewEnv(env);
  call_env->vars["caller"] = std::move(caller);
  return fn.fn->call(args, call_env);
}

std::string StrftimeNow(const std::string& format) {
  static const char* kShort[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  static const char* kLong[] = {"January", "February", "March",     "April",   "May",      "June",
                                "July",    "August",   "September", "October", "November", "December"};
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  auto pad2 = [](int v) { return v < 10 ? "0" + std::to_string(v) : std::to_string(v); };
  std::string out;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] == '%' && i + 1 < format.size()) {
      const char c = format[i + 1];
      std::string r;
      switch (c) {
        case 'Y': r = std::to_string(tm.tm_year + 1900); break;
        case 'm': r = pad2(tm.tm_mon + 1); break;
        case 'd': r = pad2(tm.tm_mday); break;
        case 'b': r = kShort[tm.tm_mon]; break;
        case 'B': r = kLong[tm.tm_mon]; break;
        case 'H': r = pad2(tm.tm_hour); break;
        case 'M': r = pad2(tm.tm_min); break;
        case '%': r = "%"; break;
        default: break;
      }
      if (!r.empty()) {
        out += r;
        ++i;
        continue;
      }
    }
    out.push_back(format[i]);
  }
  return out;
}

void DeclareGlobals(Env* env) {
  auto& v = env->vars;
  v["false"] = v["False"] = Value::Bool(false);
  v["true"] = v["True"] = Value::Bool(true);
  v["none"] = v["None"] = Value::Null();
  v["raise_exception"] = MakeFunction([](std::vector<Value>& args, const EnvPtr&) -> Value {
    if (args.empty() || args[0].kind == Value::kUndefined) Fail("");
    Fail(JsValueString(args[0]));
  });
  v["range"] = MakeFunction([](std::vector<Value>& args, const EnvPtr&) {
    Args a = SplitArgs(args);
    auto num = [&](size_t i) -> std::optional<double> {
      if (i >= a.positional.size()) return std::nullopt;
      const Value& x = a.positional[i];
      if (!x.is_number()) Fail(absl::StrCat("range() arguments must be numbers, got ", TypeName(x)));
      return x.n;
    };
    if (a.positional.empty()) Fail("range() expects at least one argument");
    double start = *num(0), step = num(2).value_or(1);
    std::optional<double> stop = num(1);
    if (!stop) {
      stop = start;
      start = 0;
    }
    if (step == 0) Fail("range() step must not be zero");
    const double count = std::ceil((*stop - start) / step);
    if (count > 10'000'000) Fail("range() too long");
    Array out;
    if (step > 0) {
      for (double i = start; i < *stop; i += step) out.push_back(Value::Int(i));
    } else {
      for (double i = start; i > *stop; i += step) out.push_back(Value::Int(i));
    }
    return Value::Arr(std::move(out));
  });
  v["strftime_now"] = MakeFunction([](std::vector<Value>& args, const EnvPtr&) {
    return Value::Str(StrftimeNow(args.empty() ? "" : ToStr(args[0])));
  });
  v["namespace"] = MakeFunction([](std::vector<Value>& args, const EnvPtr&) {
    Args a = SplitArgs(args);
    if (a.positional.size() > 1) Fail(absl::StrCat("namespace expected at most 1 argument, got ", a.positional.size()));
    auto entries = std::make_shared<Object>();
    if (a.positional.size() == 1) {
      const Value& src = a.positional[0];
      if (src.kind == Value::kObject) {
        for (const auto& [k, x] : src.obj->items) entries->Set(k, x);
      } else if (src.kind == Value::kArray) {
        for (const auto& pair : *src.arr) {
          if (pair.kind != Value::kArray || pair.arr->size() != 2 || (*pair.arr)[0].kind != Value::kString) {
            Fail("namespace expected an object or an iterable of [key, value] pairs");
          }
          entries->Set((*pair.arr)[0].s, (*pair.arr)[1]);
        }
      } else {
        Fail(absl::StrCat("'", TypeName(src), "' object is not iterable"));
      }
    }
    for (const auto& [k, x] : a.kwargs->items) entries->Set(k, x);
    return Value::Obj(std::move(entries), Value::kNamespace);
  });
}

}  // namespace

absl::StatusOr<Template> Template::Parse(std::string_view source) {
  try {
    Parser parser(Lex(Preprocess(source)));
    std::unique_ptr<Program> program = parser.Run();
    return Template(std::shared_ptr<const Program>(std::move(program)));
  } catch (const JinjaError& e) {
    return absl::InvalidArgumentError(absl::StrCat("chat template: ", e.what()));
  }
}

absl::StatusOr<std::string> Template::Render(const nlohmann::ordered_json& context) const {
  if (!context.is_object() && !context.is_null()) {
    return absl::InvalidArgumentError("chat template: the render context must be a JSON object");
  }
  try {
    EnvPtr global = NewEnv(nullptr);
    DeclareGlobals(global.get());
    if (context.is_object()) {
      for (auto it = context.begin(); it != context.end(); ++it) {
        if (global->vars.count(it.key())) Fail(absl::StrCat("Variable already declared: ", it.key()));
        global->vars[it.key()] = FromJson(it.value());
      }
    }
    Interpreter interpreter;
    return interpreter.Block(program_->body, global);
  } catch (const JinjaError& e) {
    return absl::InvalidArgumentError(e.what());
  } catch (const BreakSignal&) {
    return absl::InvalidArgumentError("chat template: 'break' outside a loop");
  } catch (const ContinueSignal&) {
    return absl::InvalidArgumentError("chat template: 'continue' outside a loop");
  }
}

Template::Template(std::shared_ptr<const Program> program) : program_(std::move(program)) {}
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;
Template::~Template() = default;

}  // namespace sbserve::jinja
