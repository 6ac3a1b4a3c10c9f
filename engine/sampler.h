// Token sampling with HF/vLLM semantics and a counter-based RNG (engine/sampling_math.h).
//
// Order of operations on one row of logits: logit bias (OpenAI: added to the listed tokens),
// repetition penalty (HF: divide positive logits,
// multiply negative ones, for every token seen in prompt or output), frequency and presence
// penalties (OpenAI: subtract freq * count + presence * [count > 0], output tokens only),
// temperature (0 = greedy argmax), then the filters top-k, top-p (over the top-k renormalised),
// min-p (relative to the most probable token), then a draw from what is left.
//
// The draw at position p of a request uses only (seed, p): the same seed gives the same token at
// the same position from the same logits, whatever else is batched and after a preemption. This
// CPU sampler is the reference of the device sampler (engine/cuda/device_sampler.h), which
// implements the same steps with the same rounding.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "engine/sampling_batch.h"

namespace sbserve {

inline constexpr int kMaxLogitBias = 1024;  // entries of SamplingParams::logit_bias

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
  // (token, bias) pairs, token ids unique; a bias in [-100, 100] is added to the token's logit
  // (OpenAI's logit_bias). The engine checks the ids against the vocabulary.
  std::vector<std::pair<int32_t, float>> logit_bias;

  absl::Status Validate() const;  // names the bad field
};

// Reusable buffers of a draw (one per thread).
struct SamplingScratch {
  std::vector<float> z;
  std::vector<int32_t> idx;
  std::vector<double> w;
};

// Draws one token from a row of already penalised logits under `row` (its temperature, filters,
// seed and position; penalties and logprob fields are not read). Greedy rows take the first
// maximum. Filtered rows keep the tokens ranked by (z desc, id asc) up to top_k, then the shortest
// prefix whose weight reaches top_p of the top-k weight, then those with weight >= min_p of the
// top one; the draw is the Gumbel-max over what is kept.
int32_t DrawToken(const RowSampling& row, std::span<const float> logits, SamplingScratch& scratch);

// Applies a row's biases, penalties and bans (banned: -inf) to its logits in place.
void ApplyAdjustments(const RowSampling& row, std::span<const LogitAdjust> adjust, std::span<float> logits);

// One row drawn as the device sampler draws it: the raw row's logprobs (when row.num_logprobs >= 0:
// the drawn token's and the top n), then the adjustments, then DrawToken; a row with a forced token
// (a prompt token's logprob) takes that token without a draw. `logits` may be modified.
struct RowDraw {
  int32_t token = 0;
  float logprob = 0.f;                         // of the raw row; set when num_logprobs >= 0
  std::vector<std::pair<int32_t, float>> top;  // SequenceSampler::TopLogprobs of the raw row
};
RowDraw DrawRow(const RowSampling& row, std::span<const LogitAdjust> adjust, std::span<float> logits,
                SamplingScratch& scratch);

class ThreadPool;
// Every row of `sampling` drawn with DrawRow from host logits ([rows, vocab], modified in place),
// rows spread over `pool` (null: this thread) in tasks of `rows_per_task`. Each draw depends only on
// its row's seed and position, so the result does not depend on how rows are spread over threads.
void DrawRows(const SamplingBatch& sampling, std::span<float> logits, int64_t vocab, SampledRows* out,
              ThreadPool* pool = nullptr, int64_t rows_per_task = 1);

// Per-request sampling state: seed, next position and token counts for the penalties.
class SequenceSampler {
 public:
  SequenceSampler(const SamplingParams& params, std::span<const int32_t> prompt);

  // Applies penalties to `logits` in place (exposed for tests).
  void ApplyPenalties(std::span<float> logits) const;
  // Samples one token from a row of raw logits (modified in place) at position(), and records it.
  int32_t Sample(std::span<float> logits) { return Draw({}, -1, logits).token; }
  // The same with `banned` ids excluded and, for num_logprobs >= 0, the logprobs (DrawRow).
  RowDraw Draw(std::span<const int32_t> banned, int32_t num_logprobs, std::span<float> logits);
  // Records a token drawn elsewhere (the device sampler) from Describe()'s row.
  void Record(int32_t token);
  // Whether a draw depends on the tokens drawn before it (repetition, frequency or presence penalty).
  bool penalizes() const {
    return params_.repetition_penalty != 1.0f || params_.frequency_penalty != 0.f || params_.presence_penalty != 0.f;
  }
  // The position the next draw fills: prompt length plus tokens drawn so far.
  int64_t position() const { return position_; }
  uint64_t seed() const { return seed_; }
  // This sampler's next draw as a device sampler takes it: parameters, seed and position in `row`,
  // and its penalised tokens plus `banned` appended to `adjust` (row's adjust range set).
  void Describe(std::span<const int32_t> banned, int32_t num_logprobs, RowSampling* row,
                std::vector<LogitAdjust>* adjust) const;
  // Log-softmax of a row. The scheduler applies it to the raw row before Sample, so reported
  // logprobs are under the model's raw distribution: before penalties, temperature and filters.
  static void LogSoftmax(std::span<const float> logits, std::vector<float>& out);
  // The min(n, size) most probable entries of a logprob row as (id, logprob): larger first, the lower
  // id first among equals (the device sampler's ranking too).
  static std::vector<std::pair<int32_t, float>> TopLogprobs(std::span<const float> logprobs, int n);

  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  uint64_t seed_ = 0;
  int64_t position_ = 0;
  // The biased and penalised tokens as Describe hands them out, kept up to date by the constructor and Record
  // (a step copies them instead of rebuilding them from the prompt), and each token's index there.
  std::vector<LogitAdjust> penalised_;
  std::unordered_map<int32_t, int32_t> penalised_at_;
  LogitAdjust& Penalised(int32_t token);
  SamplingScratch scratch_;
};

}  // namespace sbserve
