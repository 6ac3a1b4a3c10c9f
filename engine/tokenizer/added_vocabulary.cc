#include "engine/tokenizer/added_vocabulary.h"

#include <unicode/uchar.h>

#include <algorithm>

#include "engine/tokenizer/utf8.h"

namespace sbserve::tokenizer_internal {
namespace {

// The character ending just before `end`, or 0 at the start.
uint32_t CharBefore(std::string_view s, size_t end) {
  if (end == 0) return 0;
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  return DecodeUtf8(s, b);
}

bool IsWordChar(uint32_t cp) { return cp == '_' || u_isalnum(static_cast<UChar32>(cp)); }

}  // namespace

int32_t TokenMatcher::Child(int32_t node, unsigned char c) const {
  const auto& ch = nodes_[node].children;
  auto it = std::lower_bound(ch.begin(), ch.end(), std::make_pair(c, int32_t{-1}));
  return it != ch.end() && it->first == c ? it->second : -1;
}

void TokenMatcher::Add(std::string_view content, int32_t token_index) {
  if (content.empty()) return;
  int32_t node = 0;
  for (unsigned char c : content) {
    int32_t next = Child(node, c);
    if (next < 0) {
      next = static_cast<int32_t>(nodes_.size());
      nodes_.push_back(Node{});
      auto& ch = nodes_[node].children;
      ch.insert(std::lower_bound(ch.begin(), ch.end(), std::make_pair(c, int32_t{-1})), {c, next});
    }
    node = next;
  }
  if (nodes_[node].token < 0) nodes_[node].token = token_index;
}

void TokenMatcher::Split(std::string_view text, const std::vector<AddedToken>& tokens,
                         std::vector<Section>* out) const {
  if (empty()) {
    if (!text.empty()) out->push_back({text, -1});
    return;
  }
  size_t plain_start = 0;
  size_t i = 0;
  while (i < text.size()) {
    // Longest match starting at i.
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t k = i; k < text.size(); ++k) {
      node = Child(node, static_cast<unsigned char>(text[k]));
      if (node < 0) break;
      int32_t t = nodes_[node].token;
      if (t >= 0) {
        const AddedToken& tok = tokens[t];
        bool ok = true;
        if (tok.single_word) {
          size_t e = k + 1;
          uint32_t before = CharBefore(text, i);
          size_t j = e;
          uint32_t after = e < text.size() ? DecodeUtf8(text, j) : 0;
          ok = !(i > 0 && IsWordChar(before)) && !(e < text.size() && IsWordChar(after));
        }
        if (ok) {
          best = t;
          best_end = k + 1;
        }
      }
    }
    if (best < 0) {
      i += Utf8CharLen(static_cast<unsigned char>(text[i]));
      continue;
    }
    size_t start = i, end = best_end;
    if (tokens[best].lstrip) {
      while (start > plain_start) {
        uint32_t cp = CharBefore(text, start);
        if (!IsUnicodeWhitespace(cp)) break;
        size_t b = start - 1;
        while (b > plain_start && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
        start = b;
      }
    }
    if (tokens[best].rstrip) {
      while (end < text.size()) {
        size_t j = end;
        if (!IsUnicodeWhitespace(DecodeUtf8(text, j))) break;
        end = j;
      }
    }
    if (start > plain_start) out->push_back({text.substr(plain_start, start - plain_start), -1});
    out->push_back({text.substr(start, end - start), best});
    plain_start = i = end;
  }
  if (plain_start < text.size()) out->push_back({text.substr(plain_start), -1});
}

}  // namespace sbserve::tokenizer_internal
