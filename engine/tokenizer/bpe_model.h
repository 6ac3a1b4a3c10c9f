// tokenizer.json "model" of type BPE: vocab, ranked merges ("a b" or ["a", "b"] form),
// continuing_subword_prefix / end_of_word_suffix, unk_token + fuse_unk, byte_fallback and
// ignore_merges. Dropout is refused (it makes encoding random).
#ifndef SBSERVE_ENGINE_TOKENIZER_BPE_MODEL_H_
#define SBSERVE_ENGINE_TOKENIZER_BPE_MODEL_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"

namespace sbserve::tokenizer_internal {

class BpeModel {
 public:
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& model);

  // Appends the ids of one pre-tokenized word. Merging uses a min-heap over adjacent pairs and a
  // linked list of symbols: O(n log n) in the word length, so a 1 MB "word" stays linear-ish.
  void TokenizeWord(std::string_view word, std::vector<int32_t>* out) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr when no vocabulary entry has this id.
  const std::string* IdToToken(int32_t id) const;
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }
  // Whether id is one of the "<0xXX>" byte tokens.
  bool IsByteToken(int32_t id) const {
    for (int32_t b : byte_ids_) {
      if (b == id) return true;
    }
    return false;
  }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  BpeModel() = default;
  void MergeWord(std::string_view word, std::vector<int32_t>* out) const;
  int32_t CharId(std::string_view ch) const;  // -1 when not in vocab (no prefix/suffix case)

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_token_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string prefix_;                 // continuing_subword_prefix
  std::string suffix_;                 // end_of_word_suffix
  std::array<int32_t, 256> byte_ids_;  // "<0xXX>" ids, -1 if missing
  std::vector<int32_t> bmp_char_id_;   // BMP code point -> single-character token id, or -1

  // Word -> ids cache. Sharded so concurrent encoders rarely contend; a shard is cleared when it
  // fills up (text streams revisit the same few thousand words, so this keeps the hit rate high).
  static constexpr int kCacheShards = 16;
  static constexpr size_t kCacheShardCapacity = 8192;
  static constexpr size_t kMaxCachedWordBytes = 64;
  struct CacheShard {
    mutable absl::Mutex mu;
    absl::flat_hash_map<std::string, std::vector<int32_t>> map;
  };
  mutable std::array<CacheShard, kCacheShards> cache_;
};

}  // namespace sbserve::tokenizer_internal

#endif  // SBSERVE_ENGINE_TOKENIZER_BPE_MODEL_H_
