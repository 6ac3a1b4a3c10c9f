// tokenizer.json "pre_tokenizer": ByteLevel (with or without its regex), Split (regex or string,
// all five behaviours, invert), Digits, Metaspace, Whitespace, WhitespaceSplit, Sequence.
#ifndef SBSERVE_ENGINE_TOKENIZER_PRE_TOKENIZERS_H_
#define SBSERVE_ENGINE_TOKENIZER_PRE_TOKENIZERS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace sbserve::tokenizer_internal {

// One split of the input. `at_start`: it begins at offset 0 of the original text (what
// Metaspace's prepend_scheme "first" keys on).
struct Piece {
  std::string text;
  bool at_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Refines every piece into sub-pieces, in order; empty pieces are dropped.
  virtual absl::Status PreTokenize(std::vector<Piece>* pieces) const = 0;
};

// Returns nullptr for a JSON null; an error naming any unsupported type or option.
absl::StatusOr<std::unique_ptr<PreTokenizer>> MakePreTokenizer(const nlohmann::json& j);

}  // namespace sbserve::tokenizer_internal

#endif  // SBSERVE_ENGINE_TOKENIZER_PRE_TOKENIZERS_H_
