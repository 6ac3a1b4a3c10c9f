#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/tokenizer/tokenizer.h"

namespace sbserve {
namespace {

struct CliArgs {
  std::string tokenizer;
  std::optional<std::string> text;
  std::optional<std::string> ids;
  bool special = true;  // tokenize: add special tokens; detokenize: skip them
};

bool ParseArgs(const std::vector<std::string>& args, const char* usage, CliArgs* out) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string* dst) {
      if (i + 1 >= args.size()) return false;
      *dst = args[++i];
      return true;
    };
    std::string v;
    if (a == "--tokenizer" && value(&v)) {
      out->tokenizer = v;
    } else if (a == "--text" && value(&v)) {
      out->text = v;
    } else if (a == "--ids" && value(&v)) {
      out->ids = v;
    } else if (a == "--no-special" || a == "--keep-special") {
      out->special = false;
    } else {
      std::cerr << "unknown or incomplete argument: " << a << "\nusage: " << usage << "\n";
      return false;
    }
  }
  if (out->tokenizer.empty()) {
    std::cerr << "missing --tokenizer\nusage: " << usage << "\n";
    return false;
  }
  return true;
}

}  // namespace

int TokenizeCommand(const std::vector<std::string>& args) {
  constexpr const char* kUsage = "tokenize --tokenizer DIR_OR_FILE --text TEXT [--no-special]";
  CliArgs cli;
  if (!ParseArgs(args, kUsage, &cli)) return 2;
  if (!cli.text) {
    std::cerr << "missing --text\nusage: " << kUsage << "\n";
    return 2;
  }
  auto tok = Tokenizer::Load(cli.tokenizer);
  if (!tok.ok()) {
    std::cerr << tok.status() << "\n";
    return 1;
  }
  auto ids = (*tok)->Encode(*cli.text, cli.special);
  if (!ids.ok()) {
    std::cerr << ids.status() << "\n";
    return 1;
  }
  std::cout << absl::StrJoin(*ids, ",") << "\n";
  return 0;
}

int DetokenizeCommand(const std::vector<std::string>& args) {
  constexpr const char* kUsage = "detokenize --tokenizer DIR_OR_FILE --ids 1,2,3 [--keep-special]";
  CliArgs cli;
  if (!ParseArgs(args, kUsage, &cli)) return 2;
  if (!cli.ids) {
    std::cerr << "missing --ids\nusage: " << kUsage << "\n";
    return 2;
  }
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(*cli.ids, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id)) {
      std::cerr << "not a token id: \"" << part << "\"\n";
      return 2;
    }
    ids.push_back(id);
  }
  auto tok = Tokenizer::Load(cli.tokenizer);
  if (!tok.ok()) {
    std::cerr << tok.status() << "\n";
    return 1;
  }
  auto text = (*tok)->Decode(ids, cli.special);
  if (!text.ok()) {
    std::cerr << text.status() << "\n";
    return 1;
  }
  std::cout << *text << "\n";
  return 0;
}

}  // namespace sbserve
