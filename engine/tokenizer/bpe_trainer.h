// A byte-level BPE trainer (GPT-2 alphabet and pre-tokenization), used to build the demo
// tokenizer that `sbmodel create` writes next to generated checkpoints.
#ifndef SBSERVE_ENGINE_TOKENIZER_BPE_TRAINER_H_
#define SBSERVE_ENGINE_TOKENIZER_BPE_TRAINER_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace sbserve::tokenizer_internal {

struct BpeTrainResult {
  // Byte-level token strings of the merges, in rank order; the merged token is first+second.
  std::vector<std::pair<std::string, std::string>> merges;
  // New vocabulary entries in the order they were created (merges producing an existing token
  // add none).
  std::vector<std::string> new_tokens;
};

// Learns up to max_new_tokens merges from `text`, most frequent pair first (ties broken by the
// byte order of the pair, so training is deterministic). Stops early when no pair occurs twice.
absl::StatusOr<BpeTrainResult> TrainByteLevelBpe(std::string_view text, int max_new_tokens);

// English prose and source code that the demo tokenizer is trained on.
std::string_view DemoTrainingText();

}  // namespace sbserve::tokenizer_internal

#endif  // SBSERVE_ENGINE_TOKENIZER_BPE_TRAINER_H_
