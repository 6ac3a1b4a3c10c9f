#include "engine/tokenizer/normalizers.h"

#include <utility>
#include <vector>

#include "engine/tokenizer/json_util.h"
#include "engine/tokenizer/regex.h"
#include "engine/tokenizer/unicode_normalize.h"
#include "engine/tokenizer/utf8.h"

namespace sbserve::tokenizer_internal {
namespace {

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) : form_(form) {}
  absl::Status Normalize(std::string* s) const override { return NormalizeUtf8(form_, s); }

 private:
  NormalForm form_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  absl::Status Normalize(std::string* s) const override { return LowercaseUtf8(s); }
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  absl::Status Normalize(std::string* s) const override {
    if (!s->empty()) s->insert(0, prefix_);  // the reference leaves empty strings empty
    return absl::OkStatus();
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<Regex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  absl::Status Normalize(std::string* s) const override {
    std::vector<std::pair<size_t, size_t>> matches;
    if (absl::Status st = pattern_->FindAll(*s, &matches); !st.ok()) return st;
    if (matches.empty()) return absl::OkStatus();
    std::string out;
    out.reserve(s->size() + matches.size() * content_.size());
    size_t prev = 0;
    for (auto [b, e] : matches) {
      out.append(*s, prev, b - prev);
      out.append(content_);
      prev = e;
    }
    out.append(*s, prev);
    *s = std::move(out);
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Regex> pattern_;
  std::string content_;
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  absl::Status Normalize(std::string* s) const override {
    size_t b = 0, e = s->size();
    if (left_) {
      while (b < e) {
        size_t i = b;
        if (!IsUnicodeWhitespace(DecodeUtf8(*s, i))) break;
        b = i;
      }
    }
    if (right_) {
      while (e > b) {
        size_t start = e - 1;
        while (start > b && ((*s)[start] & 0xC0) == 0x80) --start;
        size_t i = start;
        if (!IsUnicodeWhitespace(DecodeUtf8(*s, i))) break;
        e = start;
      }
    }
    *s = s->substr(b, e - b);
    return absl::OkStatus();
  }

 private:
  bool left_, right_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  absl::Status Normalize(std::string* s) const override {
    for (const auto& p : parts_) {
      if (absl::Status st = p->Normalize(s); !st.ok()) return st;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> MakeNormalizer(const nlohmann::json& j) {
  if (j.is_null()) return std::unique_ptr<Normalizer>();
  absl::StatusOr<std::string> type = TypeOf(j, "normalizer");
  if (!type.ok()) return type.status();
  if (*type == "NFC") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfc);
  if (*type == "NFKC") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfkc);
  if (*type == "NFD") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfd);
  if (*type == "NFKD") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfkd);
  if (*type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (*type == "Prepend") {
    return std::make_unique<PrependNormalizer>(GetString(j, "prepend", ""));
  }
  if (*type == "Strip") {
    return std::make_unique<StripNormalizer>(GetBool(j, "strip_left", true),
                                             GetBool(j, "strip_right", true));
  }
  if (*type == "Replace") {
    auto pattern = MakePattern(j.value("pattern", nlohmann::json()), "Replace normalizer");
    if (!pattern.ok()) return pattern.status();
    return std::make_unique<ReplaceNormalizer>(std::move(*pattern), GetString(j, "content", ""));
  }
  if (*type == "Sequence") {
    auto it = j.find("normalizers");
    if (it == j.end() || !it->is_array()) {
      return absl::InvalidArgumentError("Sequence normalizer without a \"normalizers\" array");
    }
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (const auto& sub : *it) {
      auto part = MakeNormalizer(sub);
      if (!part.ok()) return part.status();
      if (*part) parts.push_back(std::move(*part));
    }
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  return absl::UnimplementedError(absl::StrCat("unsupported normalizer type \"", *type,
                                               "\" (supported: NFC, NFKC, NFD, NFKD, Lowercase, "
                                               "Prepend, Replace, Strip, Sequence)"));
}

}  // namespace sbserve::tokenizer_internal
