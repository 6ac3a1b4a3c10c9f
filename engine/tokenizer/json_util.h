// Small helpers for reading tokenizer.json values with errors that name the offending field.
#ifndef SBSERVE_ENGINE_TOKENIZER_JSON_UTIL_H_
#define SBSERVE_ENGINE_TOKENIZER_JSON_UTIL_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/regex.h"
#include "engine/tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace sbserve::tokenizer_internal {

inline absl::StatusOr<std::string> TypeOf(const nlohmann::json& j, std::string_view what) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(AsAbsl(what), " has no \"type\" string"));
  }
  return j["type"].get<std::string>();
}

inline bool GetBool(const nlohmann::json& j, const char* key, bool def) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : def;
}

inline std::string GetString(const nlohmann::json& j, const char* key, std::string def) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : def;
}

// A `{"String": "..."}` or `{"Regex": "..."}` pattern.
inline absl::StatusOr<std::unique_ptr<Regex>> MakePattern(const nlohmann::json& j,
                                                          std::string_view what) {
  if (j.is_object() && j.contains("String") && j["String"].is_string()) {
    return Regex::Compile(j["String"].get<std::string>(), /*literal=*/true);
  }
  if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
    return Regex::Compile(j["Regex"].get<std::string>(), /*literal=*/false);
  }
  return absl::InvalidArgumentError(absl::StrCat(AsAbsl(what),
                                                 ": pattern must be {\"String\": ...} or "
                                                 "{\"Regex\": ...}"));
}

}  // namespace sbserve::tokenizer_internal

#endif  // SBSERVE_ENGINE_TOKENIZER_JSON_UTIL_H_
