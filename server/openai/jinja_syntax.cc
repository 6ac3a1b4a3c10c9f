// Syntax of the Jinja subset (see jinja_syntax.h), stage by stage as @huggingface/jinja's lexer
// and parser, plus the load-time checks that refuse constructs outside the subset by name.
#include "server/openai/jinja_syntax.h"

#include <functional>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/openai/jinja_text.h"

namespace sbserve::jinja::internal {

NodePtr MakeNode(NodeKind kind, int line) {
  auto node = std::make_unique<Node>();
  node->kind = kind;
  node->line = line;
  return node;
}

namespace {

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

const std::unordered_set<std::string>& KnownFilters() {
  static const auto* k = new std::unordered_set<std::string>{
      "safe", "tojson", "list", "first", "last", "length", "count", "reverse", "sort", "join",
      "string", "unique", "upper", "lower", "title", "capitalize", "trim", "indent", "int",
      "float", "abs", "items", "bool", "default", "d", "selectattr", "rejectattr", "map",
      "replace", "dictsort", "keys", "values"};
  return *k;
}

const std::unordered_set<std::string>& KnownTestsImpl() {
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

}  // namespace

const std::unordered_set<std::string>& KnownTests() { return KnownTestsImpl(); }

std::unique_ptr<Program> ParseProgram(std::string_view source) { return Parser(Lex(Preprocess(source))).Run(); }

}  // namespace sbserve::jinja::internal
