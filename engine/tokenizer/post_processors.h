// tokenizer.json "post_processor" for single sequences: TemplateProcessing, ByteLevel (no change
// to ids), BertProcessing, RobertaProcessing, Sequence, or null.
#ifndef SBSERVE_ENGINE_TOKENIZER_POST_PROCESSORS_H_
#define SBSERVE_ENGINE_TOKENIZER_POST_PROCESSORS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace sbserve::tokenizer_internal {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Adds the special tokens around one encoded sequence (only called with add_special_tokens).
  virtual void Process(std::vector<int32_t>* ids) const = 0;
};

absl::StatusOr<std::unique_ptr<PostProcessor>> MakePostProcessor(const nlohmann::json& j);

// before + sequence + after.
std::unique_ptr<PostProcessor> MakeWrapProcessor(std::vector<int32_t> before,
                                                 std::vector<int32_t> after);

}  // namespace sbserve::tokenizer_internal

#endif  // SBSERVE_ENGINE_TOKENIZER_POST_PROCESSORS_H_
