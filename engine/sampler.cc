#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <unordered_set>

#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"
#include "engine/cpu/thread_pool.h"
#include "engine/sampling_math.h"

namespace sbserve {

absl::Status SamplingParams::Validate() const {
  auto bad = [](const char* field, absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
  };
  if (!std::isfinite(temperature) || temperature < 0.f || temperature > 100.f)
    return bad("temperature", "must be in [0, 100]");
  if (top_k < 0) return bad("top_k", "must be >= 0 (0 disables)");
  if (!std::isfinite(top_p) || top_p <= 0.f || top_p > 1.f) return bad("top_p", "must be in (0, 1]");
  if (!std::isfinite(min_p) || min_p < 0.f || min_p > 1.f) return bad("min_p", "must be in [0, 1]");
  if (!std::isfinite(repetition_penalty) || repetition_penalty <= 0.f || repetition_penalty > 10.f)
    return bad("repetition_penalty", "must be in (0, 10]");
  if (!std::isfinite(presence_penalty) || std::fabs(presence_penalty) > 2.f)
    return bad("presence_penalty", "must be in [-2, 2]");
  if (!std::isfinite(frequency_penalty) || std::fabs(frequency_penalty) > 2.f)
    return bad("frequency_penalty", "must be in [-2, 2]");
  if (logit_bias.size() > static_cast<size_t>(kMaxLogitBias)) {
    return bad("logit_bias", absl::StrCat("at most ", kMaxLogitBias, " tokens"));
  }
  std::unordered_set<int32_t> ids;
  for (const auto& [id, bias] : logit_bias) {
    // Outside the vocabulary whatever the vocabulary: OUT_OF_RANGE, as an id past its end is.
    if (id < 0) return absl::OutOfRangeError(absl::StrCat("logit_bias: token ", id, " is outside the vocabulary"));
    if (!std::isfinite(bias) || std::fabs(bias) > 100.f) {
      return bad("logit_bias", absl::StrCat("the bias of token ", id, " must be in [-100, 100]"));
    }
    if (!ids.insert(id).second) return bad("logit_bias", absl::StrCat("token ", id, " is listed twice"));
  }
  return absl::OkStatus();
}

SequenceSampler::SequenceSampler(const SamplingParams& params, std::span<const int32_t> prompt)
    : params_(params), position_(static_cast<int64_t>(prompt.size())) {
  if (params_.has_seed) {
    seed_ = params_.seed;
  } else {
    std::random_device rd;
    seed_ = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  for (const auto& [t, bias] : params_.logit_bias) {
    if (bias != 0.f) Penalised(t).bias = bias;
  }
  if (params_.repetition_penalty != 1.0f) {
    for (int32_t t : prompt) Penalised(t).seen = 1;
  }
}

void ApplyAdjustments(const RowSampling& row, std::span<const LogitAdjust> adjust, std::span<float> logits) {
  const int64_t V = static_cast<int64_t>(logits.size());
  for (const LogitAdjust& a : adjust) {
    if (a.token < 0 || a.token >= V) continue;
    float& l = logits[a.token];
    l = a.banned ? -std::numeric_limits<float>::infinity()
                 : sampling::Penalize(l, a.bias, a.seen != 0, a.output_count, row.repetition_penalty,
                                      row.frequency_penalty, row.presence_penalty);
  }
}

void SequenceSampler::ApplyPenalties(std::span<float> logits) const {
  RowSampling row;
  std::vector<LogitAdjust> adjust;
  Describe({}, -1, &row, &adjust);
  ApplyAdjustments(row, adjust, logits);
}

void SequenceSampler::LogSoftmax(std::span<const float> logits, std::vector<float>& out) {
  out.resize(logits.size());
  float mx = -std::numeric_limits<float>::infinity();
  for (float l : logits) mx = std::max(mx, l);
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - mx);
  const float lse = mx + static_cast<float>(std::log(sum));
  for (size_t i = 0; i < logits.size(); ++i) out[i] = logits[i] - lse;
}

std::vector<std::pair<int32_t, float>> SequenceSampler::TopLogprobs(std::span<const float> logprobs, int n) {
  const int k = std::max(0, std::min<int>(n, static_cast<int>(logprobs.size())));
  std::vector<int32_t> idx(logprobs.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    return logprobs[a] != logprobs[b] ? logprobs[a] > logprobs[b] : a < b;
  });
  std::vector<std::pair<int32_t, float>> top;
  top.reserve(static_cast<size_t>(k));
  for (int i = 0; i < k; ++i) top.emplace_back(idx[i], logprobs[idx[i]]);
  return top;
}

int32_t DrawToken(const RowSampling& row, std::span<const float> logits, SamplingScratch& scratch) {
  const int32_t V = static_cast<int32_t>(logits.size());
  if (V == 0) return 0;
  if (row.temperature == 0.f) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  std::vector<float>& z = scratch.z;
  z.resize(static_cast<size_t>(V));
  for (int32_t i = 0; i < V; ++i) z[i] = sampling::Tempered(logits[i], row.inv_temperature);
  double best_key = -std::numeric_limits<double>::infinity();
  int32_t best = -1;
  auto consider = [&](int32_t i) {
    const double key = static_cast<double>(z[i]) + sampling::Gumbel(row.seed, row.position, i);
    if (best < 0 || key > best_key || (key == best_key && i < best)) {
      best_key = key;
      best = i;
    }
  };
  if (!row.filtered()) {
    for (int32_t i = 0; i < V; ++i) consider(i);
    return best;
  }
  std::vector<int32_t>& idx = scratch.idx;
  idx.resize(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  auto ranks_before = [&](int32_t a, int32_t b) { return sampling::RanksBefore(z[a], a, z[b], b); };
  int32_t keep = V;
  // Top-k: the k best-ranked in front (unordered), then top-p and min-p over them.
  if (row.top_k > 0 && row.top_k < V) {
    std::nth_element(idx.begin(), idx.begin() + row.top_k, idx.end(), ranks_before);
    keep = row.top_k;
  }
  const float z_max = *std::max_element(z.begin(), z.end());
  std::vector<double>& w = scratch.w;  // by token id, set for the top-k survivors only
  w.resize(static_cast<size_t>(V));
  for (int32_t j = 0; j < keep; ++j) w[idx[j]] = sampling::Weight(z[idx[j]], z_max);
  if (row.top_p < 1.0f) {
    // The shortest best-ranked prefix with weight >= top_p of the top-k weight, by a
    // weight-guided quickselect: O(V) expected instead of sorting the vocabulary (a flat 49k-token
    // row is the worst case).
    double kept_mass = 0;
    for (int32_t j = 0; j < keep; ++j) kept_mass += w[idx[j]];
    const double target = static_cast<double>(row.top_p) * kept_mass;
    int32_t lo = 0, hi = keep;
    double acc = 0;  // weight of [0, lo), all ranked before [lo, keep)
    while (hi - lo > 64) {
      const int32_t mid = lo + (hi - lo) / 2;
      std::nth_element(idx.begin() + lo, idx.begin() + mid, idx.begin() + hi, ranks_before);
      double m = 0;
      for (int32_t j = lo; j < mid; ++j) m += w[idx[j]];
      if (acc + m >= target) {
        hi = mid;
      } else {
        acc += m;
        lo = mid;
      }
    }
    std::sort(idx.begin() + lo, idx.begin() + hi, ranks_before);
    int32_t n = lo;
    while (n < hi && acc < target) acc += w[idx[n++]];
    keep = std::max(1, n);
  }
  if (row.min_p > 0.f) {
    // The top token's weight is exp(0) = 1, so the floor is min_p itself.
    const double floor = static_cast<double>(row.min_p);
    int32_t n = 0;
    for (int32_t j = 0; j < keep; ++j) {
      if (w[idx[j]] >= floor) idx[n++] = idx[j];
    }
    keep = n;
  }
  for (int32_t j = 0; j < keep; ++j) consider(idx[j]);
  return best;
}

RowDraw DrawRow(const RowSampling& row, std::span<const LogitAdjust> adjust, std::span<float> logits,
                SamplingScratch& scratch) {
  RowDraw d;
  std::vector<float> logprobs;
  if (row.num_logprobs >= 0) {
    SequenceSampler::LogSoftmax(logits, logprobs);
    d.top = SequenceSampler::TopLogprobs(logprobs, row.num_logprobs);
  }
  if (row.forced_token >= 0 && row.forced_token < static_cast<int32_t>(logits.size())) {
    d.token = row.forced_token;  // a prompt token's row: no draw
  } else {
    ApplyAdjustments(row, adjust, logits);
    d.token = DrawToken(row, logits, scratch);
  }
  if (row.num_logprobs >= 0) d.logprob = logprobs[d.token];
  return d;
}

void DrawRows(const SamplingBatch& sampling, std::span<float> logits, int64_t vocab, SampledRows* out,
              ThreadPool* pool, int64_t rows_per_task) {
  const size_t R = sampling.rows.size();
  out->Reset(static_cast<int>(R), std::max(0, sampling.max_logprobs()));
  ParallelFor(pool, static_cast<int64_t>(R), rows_per_task, [&](int64_t begin, int64_t end) {
    SamplingScratch scratch;
    for (int64_t r = begin; r < end; ++r) {
      const RowSampling& row = sampling.rows[r];
      const RowDraw d = DrawRow(row,
                                std::span<const LogitAdjust>(sampling.adjust.data() + row.adjust_begin,
                                                             static_cast<size_t>(row.adjust_end - row.adjust_begin)),
                                logits.subspan(static_cast<size_t>(r) * vocab, static_cast<size_t>(vocab)), scratch);
      out->tokens[r] = d.token;
      out->logprobs[r] = d.logprob;
      for (size_t j = 0; j < d.top.size(); ++j) {
        out->top_ids[r * out->top_n + j] = d.top[j].first;
        out->top_logprobs[r * out->top_n + j] = d.top[j].second;
      }
    }
  });
}

RowDraw SequenceSampler::Draw(std::span<const int32_t> banned, int32_t num_logprobs, std::span<float> logits) {
  RowSampling row;
  std::vector<LogitAdjust> adjust;
  Describe(banned, num_logprobs, &row, &adjust);
  RowDraw d = DrawRow(row, adjust, logits, scratch_);
  Record(d.token);
  return d;
}

LogitAdjust& SequenceSampler::Penalised(int32_t token) {
  auto [it, fresh] = penalised_at_.emplace(token, static_cast<int32_t>(penalised_.size()));
  if (fresh) penalised_.push_back(LogitAdjust{token, 0, 0, 0, 0.f});
  return penalised_[it->second];
}

void SequenceSampler::Record(int32_t token) {
  if (penalizes()) {
    const bool repetition = params_.repetition_penalty != 1.0f;
    const bool counted = params_.frequency_penalty != 0.f || params_.presence_penalty != 0.f;
    LogitAdjust& e = Penalised(token);
    if (repetition) e.seen = 1;
    if (counted) ++e.output_count;
  }
  ++position_;
}

void SequenceSampler::Describe(std::span<const int32_t> banned, int32_t num_logprobs, RowSampling* row,
                               std::vector<LogitAdjust>* adjust) const {
  row->temperature = params_.temperature;
  row->inv_temperature = params_.temperature > 0.f ? 1.0f / params_.temperature : 0.f;
  row->top_k = params_.top_k;
  row->top_p = params_.top_p;
  row->min_p = params_.min_p;
  row->repetition_penalty = params_.repetition_penalty;
  row->presence_penalty = params_.presence_penalty;
  row->frequency_penalty = params_.frequency_penalty;
  row->seed = seed_;
  row->position = position_;
  row->num_logprobs = num_logprobs;
  row->adjust_begin = static_cast<int32_t>(adjust->size());
  // One entry per token: the biased and penalised ones, then the banned ones not among them.
  adjust->insert(adjust->end(), penalised_.begin(), penalised_.end());
  for (int32_t t : banned) {
    if (auto it = penalised_at_.find(t); it != penalised_at_.end()) {
      (*adjust)[row->adjust_begin + it->second].banned = 1;
      continue;
    }
    bool listed = false;  // a token banned twice (an eos id that is also a stop id)
    for (size_t e = row->adjust_begin + penalised_.size(); e < adjust->size() && !listed; ++e) {
      listed = (*adjust)[e].token == t;
    }
    if (!listed) adjust->push_back(LogitAdjust{t, 0, 0, 1, 0.f});
  }
  row->adjust_end = static_cast<int32_t>(adjust->size());
}

}  // namespace sbserve
