// Added tokens (tokenizer.json "added_tokens"): matched in the text before normalization
// (normalized=false, the usual case for special tokens) or in the normalized text
// (normalized=true), leftmost-longest, with the single_word / lstrip / rstrip options.
#ifndef SBSERVE_ENGINE_TOKENIZER_ADDED_VOCABULARY_H_
#define SBSERVE_ENGINE_TOKENIZER_ADDED_VOCABULARY_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace sbserve::tokenizer_internal {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

// A section of text: either plain text (token < 0) or a match of tokens[token].
struct Section {
  std::string_view text;
  int32_t token = -1;
};

// A byte trie over token contents.
class TokenMatcher {
 public:
  void Add(std::string_view content, int32_t token_index);
  bool empty() const { return nodes_.size() <= 1; }
  // Splits `text` into plain sections and matches of `tokens` (indexed as added).
  void Split(std::string_view text, const std::vector<AddedToken>& tokens,
             std::vector<Section>* out) const;

 private:
  struct Node {
    int32_t token = -1;
    std::vector<std::pair<unsigned char, int32_t>> children;  // sorted by byte
  };
  int32_t Child(int32_t node, unsigned char c) const;
  std::vector<Node> nodes_{Node{}};
};

}  // namespace sbserve::tokenizer_internal

#endif  // SBSERVE_ENGINE_TOKENIZER_ADDED_VOCABULARY_H_
