#include "engine/tokenizer/bpe_trainer.h"

#include <map>
#include <memory>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "engine/tokenizer/pre_tokenizers.h"
#include "engine/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace sbserve::tokenizer_internal {

absl::StatusOr<BpeTrainResult> TrainByteLevelBpe(std::string_view text, int max_new_tokens) {
  auto pre =
      MakePreTokenizer({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}});
  if (!pre.ok()) return pre.status();
  std::vector<Piece> pieces{{std::string(text), true}};
  if (absl::Status st = (*pre)->PreTokenize(&pieces); !st.ok()) return st;

  // Unique words (as sequences of symbol strings) with their counts.
  std::map<std::string, int64_t> counts;
  for (const Piece& p : pieces) ++counts[p.text];
  struct Word {
    std::vector<std::string> symbols;
    int64_t count;
  };
  std::vector<Word> words;
  words.reserve(counts.size());
  for (const auto& [w, c] : counts) {
    Word word{{}, c};
    size_t i = 0;
    while (i < w.size()) {
      size_t b = i;
      i += Utf8CharLen(static_cast<unsigned char>(w[i]));
      word.symbols.push_back(w.substr(b, i - b));
    }
    words.push_back(std::move(word));
  }

  BpeTrainResult result;
  absl::flat_hash_set<std::string> vocab;
  for (int b = 0; b < 256; ++b) vocab.insert(GetByteLevelTable().byte_to_utf8[b]);
  while (static_cast<int>(result.new_tokens.size()) < max_new_tokens) {
    // Recounting every round is O(corpus) per merge; the embedded corpus is a few KB, so this
    // stays in the milliseconds and keeps the trainer obviously correct.
    std::map<std::pair<std::string, std::string>, int64_t> pairs;
    for (const Word& w : words) {
      for (size_t k = 0; k + 1 < w.symbols.size(); ++k) {
        pairs[{w.symbols[k], w.symbols[k + 1]}] += w.count;
      }
    }
    const std::pair<std::string, std::string>* best = nullptr;
    int64_t best_count = 1;
    for (const auto& [pair, c] : pairs) {
      if (c > best_count) {
        best = &pair;
        best_count = c;
      }
    }
    if (best == nullptr) break;
    const std::pair<std::string, std::string> merge = *best;
    const std::string merged = merge.first + merge.second;
    for (Word& w : words) {
      std::vector<std::string> out;
      out.reserve(w.symbols.size());
      for (size_t k = 0; k < w.symbols.size(); ++k) {
        if (k + 1 < w.symbols.size() && w.symbols[k] == merge.first &&
            w.symbols[k + 1] == merge.second) {
          out.push_back(merged);
          ++k;
        } else {
          out.push_back(std::move(w.symbols[k]));
        }
      }
      w.symbols = std::move(out);
    }
    result.merges.push_back(merge);
    if (vocab.insert(merged).second) result.new_tokens.push_back(merged);
  }
  return result;
}

}  // namespace sbserve::tokenizer_internal
