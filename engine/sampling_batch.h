// What a backend that samples on its own device needs besides the Batch: one RowSampling per logit
// row, and the sparse logit adjustments (biased, penalised and banned tokens) of each row. What comes back
// is one token per row, and the requested logprobs. Only these cross to the host, not the logits.
#pragma once

#include <cstdint>
#include <vector>

namespace sbserve {

// One token of a row whose logit changes before the draw.
struct LogitAdjust {
  int32_t token = 0;
  int32_t output_count = 0;  // times drawn so far (frequency / presence penalties)
  uint8_t seen = 0;          // in the prompt or the output (repetition penalty)
  uint8_t banned = 0;        // may not be drawn yet (eos and stop ids before min_tokens)
  float bias = 0.f;          // the request's logit bias, added before the penalties
};

struct RowSampling {
  float temperature = 0.f;  // 0: greedy
  float inv_temperature = 0.f;  // 1 / temperature, rounded once on the host
  int32_t top_k = 0;
  float top_p = 1.f;
  float min_p = 0.f;
  float repetition_penalty = 1.f;
  float presence_penalty = 0.f;
  float frequency_penalty = 0.f;
  uint64_t seed = 0;
  int64_t position = 0;       // the position the drawn token fills (the draw's counter)
  int32_t num_logprobs = -1;  // -1: none; n >= 0: the drawn token's logprob and the top n
  int32_t forced_token = -1;  // >= 0: no draw, this token is the row's (a prompt token's logprob)
  int32_t adjust_begin = 0;   // [adjust_begin, adjust_end) of SamplingBatch::adjust
  int32_t adjust_end = 0;

  bool filtered() const { return temperature > 0.f && (top_k > 0 || top_p < 1.f || min_p > 0.f); }
};

struct SamplingBatch {
  std::vector<RowSampling> rows;  // one per Batch::logit_rows entry, same order
  std::vector<LogitAdjust> adjust;
  int max_logprobs() const {
    int n = -1;
    for (const RowSampling& r : rows) n = r.num_logprobs > n ? r.num_logprobs : n;
    return n;
  }
};

struct SampledRows {
  std::vector<int32_t> tokens;     // [R]
  std::vector<float> logprobs;     // [R] the drawn token's logprob (rows that asked for logprobs)
  int top_n = 0;                   // stride of the two below: max num_logprobs over rows (>= 0)
  std::vector<int32_t> top_ids;    // [R, top_n] most probable first, lower id first among equals
  std::vector<float> top_logprobs; // [R, top_n]
  // Sized for `rows` rows of `n` top entries: ids 0, logprobs 0, top ids -1.
  void Reset(int rows, int n) {
    top_n = n;
    tokens.assign(rows, 0);
    logprobs.assign(rows, 0.f);
    top_ids.assign(static_cast<size_t>(rows) * n, -1);
    top_logprobs.assign(static_cast<size_t>(rows) * n, 0.f);
  }
};

}  // namespace sbserve
