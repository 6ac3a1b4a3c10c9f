#include "engine/tokenizer/pre_tokenizers.h"

#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/json_util.h"
#include "engine/tokenizer/regex.h"
#include "engine/tokenizer/unicode_normalize.h"
#include "engine/tokenizer/utf8.h"

namespace sbserve::tokenizer_internal {
namespace {

using Span = std::pair<size_t, size_t>;

// GPT-2's pattern, used by ByteLevel with use_regex.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

absl::StatusOr<Behavior> ParseBehavior(const nlohmann::json& j) {
  std::string b = GetString(j, "behavior", "");
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  return absl::UnimplementedError(absl::StrCat("unsupported split behavior \"", b, "\""));
}

// Turns the matches inside a piece of length n into the pieces a behaviour keeps, following the
// reference's rules exactly (including how runs of adjacent matches merge).
void ApplyBehavior(const std::vector<Span>& matches, size_t n, Behavior behavior, bool invert,
                   std::vector<Span>* kept) {
  std::vector<std::pair<Span, bool>> segs;  // covers [0, n): (span, is_match)
  size_t prev = 0;
  for (const Span& m : matches) {
    if (m.first != prev) segs.push_back({{prev, m.first}, invert});
    segs.push_back({m, !invert});
    prev = m.second;
  }
  if (prev != n) segs.push_back({{prev, n}, invert});

  switch (behavior) {
    case Behavior::kIsolated:
      for (const auto& s : segs) kept->push_back(s.first);
      break;
    case Behavior::kRemoved:
      for (const auto& s : segs) {
        if (!s.second) kept->push_back(s.first);
      }
      break;
    case Behavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& [span, is_match] : segs) {
        if (is_match && !previous_match && !kept->empty()) {
          kept->back().second = span.second;
        } else {
          kept->push_back(span);
        }
        previous_match = is_match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool previous_match = false;
      std::vector<Span> rev;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        const auto& [span, is_match] = *it;
        if (is_match && !previous_match && !rev.empty()) {
          rev.back().first = span.first;
        } else {
          rev.push_back(span);
        }
        previous_match = is_match;
      }
      kept->insert(kept->end(), rev.rbegin(), rev.rend());
      break;
    }
    case Behavior::kContiguous: {
      bool previous_match = false;
      for (const auto& [span, is_match] : segs) {
        if (is_match == previous_match && !kept->empty()) {
          kept->back().second = span.second;
        } else {
          kept->push_back(span);
        }
        previous_match = is_match;
      }
      break;
    }
  }
}

// Replaces every piece by its sub-pieces `split(piece) -> spans`.
absl::Status SplitEach(
    std::vector<Piece>* pieces,
    const std::function<absl::Status(const std::string&, std::vector<Span>*)>& split) {
  std::vector<Piece> out;
  out.reserve(pieces->size() * 2);
  std::vector<Span> spans;
  for (Piece& p : *pieces) {
    spans.clear();
    if (absl::Status st = split(p.text, &spans); !st.ok()) return st;
    if (spans.size() == 1 && spans[0].first == 0 && spans[0].second == p.text.size()) {
      out.push_back(std::move(p));
      continue;
    }
    for (const Span& s : spans) {
      if (s.second <= s.first) continue;
      out.push_back({p.text.substr(s.first, s.second - s.first), p.at_start && s.first == 0});
    }
  }
  *pieces = std::move(out);
  return absl::OkStatus();
}

// Matches of a per-character predicate, as one match per character.
void CharMatches(const std::string& s, const std::function<bool(uint32_t)>& pred,
                 std::vector<Span>* out) {
  size_t i = 0;
  while (i < s.size()) {
    size_t b = i;
    uint32_t cp = DecodeUtf8(s, i);
    if (pred(cp)) out->push_back({b, i});
  }
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Regex> re, Behavior behavior, bool invert)
      : re_(std::move(re)), behavior_(behavior), invert_(invert) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    std::vector<Span> matches;
    return SplitEach(pieces, [&](const std::string& s, std::vector<Span>* kept) {
      matches.clear();
      if (absl::Status st = re_->FindAll(s, &matches); !st.ok()) return st;
      ApplyBehavior(matches, s.size(), behavior_, invert_, kept);
      return absl::OkStatus();
    });
  }

 private:
  std::unique_ptr<Regex> re_;
  Behavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> re)
      : add_prefix_space_(add_prefix_space), re_(std::move(re)) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    if (add_prefix_space_) {
      for (Piece& p : *pieces) {
        if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, " ");
      }
    }
    if (re_ != nullptr) {
      std::vector<Span> matches;
      absl::Status st = SplitEach(pieces, [&](const std::string& s, std::vector<Span>* kept) {
        matches.clear();
        if (absl::Status st = re_->FindAll(s, &matches); !st.ok()) return st;
        ApplyBehavior(matches, s.size(), Behavior::kIsolated, false, kept);
        return absl::OkStatus();
      });
      if (!st.ok()) return st;
    }
    const ByteLevelTable& table = GetByteLevelTable();
    std::string mapped;
    for (Piece& p : *pieces) {
      mapped.clear();
      for (unsigned char c : p.text) mapped.append(table.byte_to_utf8[c]);
      p.text.swap(mapped);
    }
    return absl::OkStatus();
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> re_;
};

class DigitsPreTokenizer : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    std::vector<Span> matches;
    return SplitEach(pieces, [&](const std::string& s, std::vector<Span>* kept) {
      matches.clear();
      CharMatches(s, IsNumeric, &matches);
      ApplyBehavior(matches, s.size(), individual_ ? Behavior::kIsolated : Behavior::kContiguous,
                    false, kept);
      return absl::OkStatus();
    });
  }

 private:
  bool individual_;
};

class WhitespaceSplitPreTokenizer : public PreTokenizer {
 public:
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    std::vector<Span> matches;
    return SplitEach(pieces, [&](const std::string& s, std::vector<Span>* kept) {
      matches.clear();
      CharMatches(s, IsUnicodeWhitespace, &matches);
      ApplyBehavior(matches, s.size(), Behavior::kRemoved, false, kept);
      return absl::OkStatus();
    });
  }
};

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  enum class Prepend { kAlways, kFirst, kNever };
  MetaspacePreTokenizer(std::string replacement, Prepend prepend, bool split)
      : replacement_(std::move(replacement)), prepend_(prepend), split_(split) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    for (Piece& p : *pieces) {
      std::string out;
      out.reserve(p.text.size() + replacement_.size());
      for (char c : p.text) {
        if (c == ' ') {
          out.append(replacement_);
        } else {
          out.push_back(c);
        }
      }
      bool starts = out.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts &&
          (prepend_ == Prepend::kAlways || (prepend_ == Prepend::kFirst && p.at_start))) {
        out.insert(0, replacement_);
      }
      p.text = std::move(out);
    }
    if (!split_) return absl::OkStatus();
    std::vector<Span> matches;
    return SplitEach(pieces, [&](const std::string& s, std::vector<Span>* kept) {
      matches.clear();
      for (size_t pos = 0; (pos = s.find(replacement_, pos)) != std::string::npos;
           pos += replacement_.size()) {
        matches.push_back({pos, pos + replacement_.size()});
      }
      ApplyBehavior(matches, s.size(), Behavior::kMergedWithNext, false, kept);
      return absl::OkStatus();
    });
  }

 private:
  std::string replacement_;
  Prepend prepend_;
  bool split_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    for (const auto& p : parts_) {
      if (absl::Status st = p->PreTokenize(pieces); !st.ok()) return st;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PreTokenizer>> MakePreTokenizer(const nlohmann::json& j) {
  if (j.is_null()) return std::unique_ptr<PreTokenizer>();
  absl::StatusOr<std::string> type = TypeOf(j, "pre_tokenizer");
  if (!type.ok()) return type.status();
  if (*type == "ByteLevel") {
    std::unique_ptr<Regex> re;
    if (GetBool(j, "use_regex", true)) {
      auto compiled = Regex::Compile(kGpt2Pattern, /*literal=*/false);
      if (!compiled.ok()) return compiled.status();
      re = std::move(*compiled);
    }
    return std::make_unique<ByteLevelPreTokenizer>(GetBool(j, "add_prefix_space", true),
                                                   std::move(re));
  }
  if (*type == "Split") {
    auto re = MakePattern(j.value("pattern", nlohmann::json()), "Split pre-tokenizer");
    if (!re.ok()) return re.status();
    auto behavior = ParseBehavior(j);
    if (!behavior.ok()) return behavior.status();
    return std::make_unique<SplitPreTokenizer>(std::move(*re), *behavior,
                                               GetBool(j, "invert", false));
  }
  if (*type == "Digits") {
    return std::make_unique<DigitsPreTokenizer>(GetBool(j, "individual_digits", false));
  }
  if (*type == "Whitespace") {
    auto re = Regex::Compile(R"(\w+|[^\w\s]+)", /*literal=*/false);
    if (!re.ok()) return re.status();
    return std::make_unique<SplitPreTokenizer>(std::move(*re), Behavior::kRemoved, true);
  }
  if (*type == "WhitespaceSplit") return std::make_unique<WhitespaceSplitPreTokenizer>();
  if (*type == "Metaspace") {
    std::string replacement = GetString(j, "replacement", "\xE2\x96\x81");
    if (replacement.empty()) return absl::InvalidArgumentError("Metaspace: empty replacement");
    MetaspacePreTokenizer::Prepend prepend = MetaspacePreTokenizer::Prepend::kAlways;
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
      std::string s = j["prepend_scheme"].get<std::string>();
      if (s == "always") {
        prepend = MetaspacePreTokenizer::Prepend::kAlways;
      } else if (s == "first") {
        prepend = MetaspacePreTokenizer::Prepend::kFirst;
      } else if (s == "never") {
        prepend = MetaspacePreTokenizer::Prepend::kNever;
      } else {
        return absl::UnimplementedError(absl::StrCat("Metaspace: unknown prepend_scheme ", s));
      }
    } else if (!GetBool(j, "add_prefix_space", true)) {
      prepend = MetaspacePreTokenizer::Prepend::kNever;
    }
    return std::make_unique<MetaspacePreTokenizer>(replacement, prepend, GetBool(j, "split", true));
  }
  if (*type == "Sequence") {
    auto it = j.find("pretokenizers");
    if (it == j.end() || !it->is_array()) {
      return absl::InvalidArgumentError("Sequence pre-tokenizer without a \"pretokenizers\" array");
    }
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (const auto& sub : *it) {
      auto part = MakePreTokenizer(sub);
      if (!part.ok()) return part.status();
      if (*part) parts.push_back(std::move(*part));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  return absl::UnimplementedError(
      absl::StrCat("unsupported pre_tokenizer type \"", *type,
                   "\" (supported: ByteLevel, Split, Digits, Metaspace, Whitespace, "
                   "WhitespaceSplit, Sequence)"));
}

}  // namespace sbserve::tokenizer_internal
