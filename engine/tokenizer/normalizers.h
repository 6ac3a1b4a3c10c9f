// tokenizer.json "normalizer": NFC, NFKC, NFD, NFKD, Lowercase, Prepend, Replace, Strip,
// Sequence, or null.
#ifndef SBSERVE_ENGINE_TOKENIZER_NORMALIZERS_H_
#define SBSERVE_ENGINE_TOKENIZER_NORMALIZERS_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace sbserve::tokenizer_internal {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // `s` is valid UTF-8 and stays valid UTF-8.
  virtual absl::Status Normalize(std::string* s) const = 0;
};

// Returns nullptr for a JSON null (no normalization); an error naming any unsupported type.
absl::StatusOr<std::unique_ptr<Normalizer>> MakeNormalizer(const nlohmann::json& j);

}  // namespace sbserve::tokenizer_internal

#endif  // SBSERVE_ENGINE_TOKENIZER_NORMALIZERS_H_
