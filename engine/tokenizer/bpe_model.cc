#include "engine/tokenizer/bpe_model.h"

#include <algorithm>
#include <functional>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/tokenizer/utf8.h"

namespace sbserve::tokenizer_internal {
namespace {

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const nlohmann::json& model) {
  std::unique_ptr<BpeModel> m(new BpeModel);
  if (!model.is_object()) return absl::InvalidArgumentError("model is not an object");
  std::string type = model.value("type", std::string("BPE"));
  if (type != "BPE") {
    return absl::UnimplementedError(
        absl::StrCat("unsupported model type \"", type, "\" (supported: BPE)"));
  }
  if (auto it = model.find("dropout");
      it != model.end() && it->is_number() && it->get<double>() > 0.0) {
    return absl::UnimplementedError("BPE dropout is not supported (it makes encoding random)");
  }
  auto vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object()) {
    return absl::InvalidArgumentError("BPE model has no \"vocab\" object");
  }
  int64_t max_id = -1;
  m->vocab_.reserve(vocab_it->size());
  for (auto it = vocab_it->begin(); it != vocab_it->end(); ++it) {
    if (!it.value().is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocab entry \"", it.key(), "\" is not an id"));
    }
    int64_t id = it.value().get<int64_t>();
    if (id < 0 || id >= (1 << 30)) {
      return absl::InvalidArgumentError(absl::StrCat("vocab id ", id, " out of range"));
    }
    m->vocab_[it.key()] = static_cast<int32_t>(id);
    max_id = std::max(max_id, id);
  }
  m->id_to_token_.resize(max_id + 1);
  m->has_token_.assign(max_id + 1, false);
  for (const auto& [tok, id] : m->vocab_) {
    m->id_to_token_[id] = tok;
    m->has_token_[id] = true;
  }

  auto get_str = [&](const char* key) -> std::string {
    auto it = model.find(key);
    return it != model.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  m->prefix_ = get_str("continuing_subword_prefix");
  m->suffix_ = get_str("end_of_word_suffix");
  m->fuse_unk_ = model.value("fuse_unk", false) == true;
  m->byte_fallback_ = model.contains("byte_fallback") && model["byte_fallback"].is_boolean() &&
                      model["byte_fallback"].get<bool>();
  m->ignore_merges_ = model.contains("ignore_merges") && model["ignore_merges"].is_boolean() &&
                      model["ignore_merges"].get<bool>();
  if (std::string unk = get_str("unk_token"); !unk.empty()) {
    auto it = m->vocab_.find(unk);
    if (it == m->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unk_token \"", unk, "\" is not in vocab"));
    }
    m->unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = m->vocab_.find(absl::StrFormat("<0x%02X>", b));
    m->byte_ids_[b] = it == m->vocab_.end() ? -1 : it->second;
  }
  m->bmp_char_id_.assign(0x10000, -1);
  for (const auto& [tok, id] : m->vocab_) {
    if (tok.empty() || FindInvalidUtf8(tok) != std::string::npos) continue;
    size_t i = 0;
    uint32_t cp = DecodeUtf8(tok, i);
    if (i == tok.size() && cp < 0x10000) m->bmp_char_id_[cp] = id;
  }

  auto merges_it = model.find("merges");
  if (merges_it != model.end() && !merges_it->is_null()) {
    if (!merges_it->is_array()) return absl::InvalidArgumentError("BPE merges is not an array");
    m->merges_.reserve(merges_it->size());
    int32_t rank = 0;
    for (const auto& entry : *merges_it) {
      std::string a, b;
      if (entry.is_string()) {
        const std::string& s = entry.get_ref<const std::string&>();
        size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat("merge #", rank, " \"", s, "\" is not two space-separated tokens"));
        }
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
                 entry[1].is_string()) {
        a = entry[0].get<std::string>();
        b = entry[1].get<std::string>();
      } else {
        return absl::InvalidArgumentError(absl::StrCat("merge #", rank, " is malformed"));
      }
      auto ia = m->vocab_.find(a), ib = m->vocab_.find(b);
      if (ia == m->vocab_.end() || ib == m->vocab_.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "merge #", rank, " uses a token missing from vocab: \"", a, "\" \"", b, "\""));
      }
      std::string merged = a;
      if (!m->prefix_.empty() && b.compare(0, m->prefix_.size(), m->prefix_) == 0) {
        merged.append(b, m->prefix_.size());
      } else {
        merged.append(b);
      }
      auto im = m->vocab_.find(merged);
      if (im == m->vocab_.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("merge #", rank, " result \"", merged, "\" is not in vocab"));
      }
      m->merges_[PairKey(ia->second, ib->second)] = Merge{rank, im->second};
      ++rank;
    }
  }
  return m;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(AsAbsl(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || id > max_id() || !has_token_[id]) return nullptr;
  return &id_to_token_[id];
}

int32_t BpeModel::CharId(std::string_view ch) const {
  size_t i = 0;
  uint32_t cp = DecodeUtf8(ch, i);
  if (cp < 0x10000) return bmp_char_id_[cp];
  auto it = vocab_.find(AsAbsl(ch));
  return it == vocab_.end() ? -1 : it->second;
}

void BpeModel::TokenizeWord(std::string_view word, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(AsAbsl(word)); it != vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  if (word.size() > kMaxCachedWordBytes) {
    MergeWord(word, out);
    return;
  }
  CacheShard& shard = cache_[absl::HashOf(AsAbsl(word)) % kCacheShards];
  {
    absl::MutexLock lock(&shard.mu);
    if (auto it = shard.map.find(AsAbsl(word)); it != shard.map.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t first = out->size();
  MergeWord(word, out);
  absl::MutexLock lock(&shard.mu);
  if (shard.map.size() >= kCacheShardCapacity) shard.map.clear();
  shard.map.emplace(std::string(word), std::vector<int32_t>(out->begin() + first, out->end()));
}

void BpeModel::MergeWord(std::string_view word, std::vector<int32_t>* out) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
    bool unk;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap_storage;
  symbols.clear();

  auto push = [&](int32_t id, bool unk) {
    int32_t n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, -1, true, unk});
    if (n > 0) symbols[n - 1].next = n;
  };
  const bool plain = prefix_.empty() && suffix_.empty();
  std::string with_affixes;
  size_t i = 0;
  while (i < word.size()) {
    size_t start = i;
    i += Utf8CharLen(static_cast<unsigned char>(word[i]));
    std::string_view ch = word.substr(start, i - start);
    int32_t id = -1;
    std::string_view s = ch;
    if (plain) {
      id = CharId(ch);
    } else {
      with_affixes.clear();
      if (start > 0) with_affixes.append(prefix_);
      with_affixes.append(ch);
      if (i == word.size()) with_affixes.append(suffix_);
      s = with_affixes;
      auto it = vocab_.find(AsAbsl(s));
      if (it != vocab_.end()) id = it->second;
    }
    if (id >= 0) {
      push(id, false);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char c : s) all = all && byte_ids_[c] >= 0;
      if (all) {
        for (unsigned char c : s) push(byte_ids_[c], false);
        continue;
      }
    }
    if (unk_id_.has_value()) {
      if (fuse_unk_ && !symbols.empty() && symbols.back().unk) continue;
      push(*unk_id_, true);
    }
    // Without an unk token the reference drops the character; so do we.
  }

  // A min-heap on (rank, position) in a reused per-thread buffer.
  std::vector<Candidate>& heap = heap_storage;
  heap.clear();
  const auto cmp = std::greater<Candidate>();
  auto consider = [&](int32_t pos) {
    int32_t next = symbols[pos].next;
    if (next < 0) return;
    auto it = merges_.find(PairKey(symbols[pos].id, symbols[next].id));
    if (it != merges_.end()) {
      heap.push_back({it->second.rank, pos, it->second.new_id});
      std::push_heap(heap.begin(), heap.end(), cmp);
    }
  };
  for (int32_t p = 0; p + 1 < static_cast<int32_t>(symbols.size()); ++p) consider(p);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), cmp);
    Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    auto it = merges_.find(PairKey(left.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    left.id = top.new_id;
    left.unk = false;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (int32_t p = symbols.empty() ? -1 : 0; p >= 0; p = symbols[p].next) {
    out->push_back(symbols[p].id);
  }
}

}  // namespace sbserve::tokenizer_internal
