#include "engine/tokenizer/post_processors.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/json_util.h"

namespace sbserve::tokenizer_internal {
namespace {

// The sequence becomes before + ids + after.
class WrapProcessor : public PostProcessor {
 public:
  WrapProcessor(std::vector<int32_t> before, std::vector<int32_t> after)
      : before_(std::move(before)), after_(std::move(after)) {}
  void Process(std::vector<int32_t>* ids) const override {
    ids->insert(ids->begin(), before_.begin(), before_.end());
    ids->insert(ids->end(), after_.begin(), after_.end());
  }

 private:
  std::vector<int32_t> before_, after_;
};

class SequenceProcessor : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> parts)
      : parts_(std::move(parts)) {}
  void Process(std::vector<int32_t>* ids) const override {
    for (const auto& p : parts_) p->Process(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

absl::StatusOr<std::unique_ptr<PostProcessor>> MakeTemplate(const nlohmann::json& j) {
  auto single = j.find("single");
  if (single == j.end() || !single->is_array()) {
    return absl::UnimplementedError(
        "TemplateProcessing: only the structured \"single\" template form is supported");
  }
  const nlohmann::json specials = j.value("special_tokens", nlohmann::json::object());
  std::vector<int32_t> before, after;
  bool seen_sequence = false;
  for (const auto& piece : *single) {
    if (piece.contains("Sequence")) {
      if (seen_sequence) {
        return absl::InvalidArgumentError("TemplateProcessing: \"single\" has two sequences");
      }
      seen_sequence = true;
      continue;
    }
    if (!piece.contains("SpecialToken") || !piece["SpecialToken"].contains("id") ||
        !piece["SpecialToken"]["id"].is_string()) {
      return absl::InvalidArgumentError("TemplateProcessing: malformed template piece");
    }
    std::string name = piece["SpecialToken"]["id"].get<std::string>();
    auto it = specials.find(name);
    if (it == specials.end() || !it->contains("ids") || !(*it)["ids"].is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat("TemplateProcessing: special token \"", name, "\" has no ids"));
    }
    for (const auto& id : (*it)["ids"]) {
      if (!id.is_number_integer()) {
        return absl::InvalidArgumentError("TemplateProcessing: non-integer special token id");
      }
      (seen_sequence ? after : before).push_back(id.get<int32_t>());
    }
  }
  if (!seen_sequence) {
    return absl::InvalidArgumentError("TemplateProcessing: \"single\" has no $A sequence");
  }
  return std::make_unique<WrapProcessor>(std::move(before), std::move(after));
}

// Bert/Roberta store [token, id] pairs under "cls" and "sep".
absl::StatusOr<int32_t> PairId(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat("post_processor: malformed \"", key, "\""));
  }
  return (*it)[1].get<int32_t>();
}

}  // namespace

std::unique_ptr<PostProcessor> MakeWrapProcessor(std::vector<int32_t> before,
                                                 std::vector<int32_t> after) {
  return std::make_unique<WrapProcessor>(std::move(before), std::move(after));
}

absl::StatusOr<std::unique_ptr<PostProcessor>> MakePostProcessor(const nlohmann::json& j) {
  if (j.is_null()) return std::unique_ptr<PostProcessor>();
  absl::StatusOr<std::string> type = TypeOf(j, "post_processor");
  if (!type.ok()) return type.status();
  if (*type == "ByteLevel") return std::unique_ptr<PostProcessor>();
  if (*type == "TemplateProcessing") return MakeTemplate(j);
  if (*type == "BertProcessing" || *type == "RobertaProcessing") {
    auto cls = PairId(j, "cls");
    if (!cls.ok()) return cls.status();
    auto sep = PairId(j, "sep");
    if (!sep.ok()) return sep.status();
    return std::make_unique<WrapProcessor>(std::vector<int32_t>{*cls}, std::vector<int32_t>{*sep});
  }
  if (*type == "Sequence") {
    auto it = j.find("processors");
    if (it == j.end() || !it->is_array()) {
      return absl::InvalidArgumentError("Sequence post_processor without a \"processors\" array");
    }
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (const auto& sub : *it) {
      auto part = MakePostProcessor(sub);
      if (!part.ok()) return part.status();
      if (*part) parts.push_back(std::move(*part));
    }
    return std::make_unique<SequenceProcessor>(std::move(parts));
  }
  return absl::UnimplementedError(
      absl::StrCat("unsupported post_processor type \"", *type,
                   "\" (supported: TemplateProcessing, ByteLevel, BertProcessing, "
                   "RobertaProcessing, Sequence)"));
}

}  // namespace sbserve::tokenizer_internal
