// Token sampling with HF/vLLM semantics and a per-request RNG.
//
// Order of operations on one row of logits: repetition penalty (HF: divide positive logits,
// multiply negative ones, for every token seen in prompt or output), frequency and presence
// penalties (OpenAI: subtract freq * count + presence * [count > 0], output tokens only),
// temperature (0 = greedy argmax), then the filters top-k, top-p (over the top-k renormalised),
// min-p (relative to the most probable token), then a draw from what is left.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"

namespace sbserve {

struct SamplingParams {
  float temperature = 1.0f;       // 0: greedy
  int32_t top_k = 0;              // 0: off
  float top_p = 1.0f;             // 1: off
  float min_p = 0.0f;             // 0: off
  float repetition_penalty = 1.0f;  // 1: off
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  bool has_seed = false;

  absl::Status Validate() const;  // names the bad field
};

// Per-request sampling state: RNG and token counts for the penalties.
class SequenceSampler {
 public:
  SequenceSampler(const SamplingParams& params, std::span<const int32_t> prompt);

  // Applies penalties to `logits` in place (exposed for tests).
  void ApplyPenalties(std::span<float> logits) const;
  // Samples one token from a row of raw logits (modified in place) and records it as output.
  int32_t Sample(std::span<float> logits);
  // Log-softmax of a row. The scheduler applies it to the raw row before Sample, so reported
  // logprobs are under the model's raw distribution: before penalties, temperature and filters.
  static void LogSoftmax(std::span<const float> logits, std::vector<float>& out);

  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::unordered_map<int32_t, int32_t> prompt_seen_;   // token -> 1 (repetition penalty)
  std::unordered_map<int32_t, int32_t> output_counts_; // token -> count
  std::vector<int32_t> scratch_idx_;
  std::vector<double> probs_;
};

}  // namespace sbserve
