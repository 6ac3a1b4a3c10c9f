// Syntax of the Jinja subset: HF's preprocessing (trim_blocks, lstrip_blocks, generation
// markers), the lexer and the parser to an AST. Internal to server/openai/jinja*.cc.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

namespace sbserve::jinja {

namespace internal {

enum class NodeKind {
  kProgram, kText, kComment, kString, kInt, kFloat, kIdent, kArray, kTuple, kObject, kMember,
  kSlice, kCall, kKwArg, kUnary, kBinary, kFilter, kTest, kSelect, kTernary, kIf, kFor, kSet,
  kMacro, kCallBlock, kFilterBlock, kBreak, kContinue,
};

struct Node;
using NodePtr = std::unique_ptr<Node>;

// One node type for all kinds; which fields are used depends on `kind` (see Parser in
// jinja_syntax.cc).
struct Node {
  NodeKind kind;
  int line = 0;
  std::string str;     // text, string value, identifier, operator, test or macro name, kwarg key
  double num = 0;      // kInt / kFloat
  bool flag = false;   // kMember: computed; kTest: negated; kCallBlock: has caller parameters
  std::unique_ptr<Node> a, b, c;  // operands (see Parser)
  std::vector<NodePtr> kids;      // elements, arguments, parameters
  std::vector<NodePtr> body, alt;
  // kMacro / kCallBlock: whether the body reads the implicit `kwargs` / `varargs`.
  bool uses_kwargs = false, uses_varargs = false;
  // kTest: an optional argument (`is divisibleby(3)`).
  NodePtr test_arg;
};

NodePtr MakeNode(NodeKind kind, int line);

// The names of the tests the subset has (also for selectattr / rejectattr).
const std::unordered_set<std::string>& KnownTests();

}  // namespace internal

struct Program {
  std::vector<internal::NodePtr> body;
};

namespace internal {
// Preprocesses, lexes and parses; throws JinjaError naming the construct and line.
std::unique_ptr<Program> ParseProgram(std::string_view source);
}  // namespace internal

}  // namespace sbserve::jinja
