#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"

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
  return absl::OkStatus();
}

SequenceSampler::SequenceSampler(const SamplingParams& params, std::span<const int32_t> prompt)
    : params_(params), rng_(params.has_seed ? params.seed : std::random_device{}()) {
  if (params_.repetition_penalty != 1.0f) {
    for (int32_t t : prompt) prompt_seen_[t] = 1;
  }
}

void SequenceSampler::ApplyPenalties(std::span<float> logits) const {
  const int64_t V = static_cast<int64_t>(logits.size());
  if (params_.repetition_penalty != 1.0f) {
    auto penalise = [&](int32_t t) {
      if (t < 0 || t >= V) return;
      float& l = logits[t];
      l = l > 0.f ? l / params_.repetition_penalty : l * params_.repetition_penalty;
    };
    for (const auto& [t, unused] : prompt_seen_) penalise(t);
    for (const auto& [t, unused] : output_counts_) {
      if (!prompt_seen_.count(t)) penalise(t);
    }
  }
  if (params_.frequency_penalty != 0.f || params_.presence_penalty != 0.f) {
    for (const auto& [t, n] : output_counts_) {
      if (t < 0 || t >= V) continue;
      logits[t] -= params_.frequency_penalty * static_cast<float>(n) + params_.presence_penalty;
    }
  }
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

int32_t SequenceSampler::Sample(std::span<float> logits) {
  ApplyPenalties(logits);
  const int32_t V = static_cast<int32_t>(logits.size());
  int32_t chosen = 0;
  if (params_.temperature == 0.f) {
    chosen = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  } else if (params_.top_k == 0 && params_.top_p >= 1.0f && params_.min_p <= 0.f) {
    // No filter: draw straight from the softmax, no sort.
    const float inv_t = 1.0f / params_.temperature;
    const float mx = *std::max_element(logits.begin(), logits.end()) * inv_t;
    double total = 0;
    for (int32_t i = 0; i < V; ++i) total += std::exp(static_cast<double>(logits[i]) * inv_t - mx);
    std::uniform_real_distribution<double> uniform(0.0, total);
    const double u = uniform(rng_);
    double cum = 0;
    chosen = V - 1;
    for (int32_t i = 0; i < V; ++i) {
      cum += std::exp(static_cast<double>(logits[i]) * inv_t - mx);
      if (u < cum) {
        chosen = i;
        break;
      }
    }
  } else {
    const float inv_t = 1.0f / params_.temperature;
    // Probabilities over the whole vocabulary.
    const float mx = *std::max_element(logits.begin(), logits.end()) * inv_t;
    probs_.resize(static_cast<size_t>(V));
    double total = 0;
    for (int32_t i = 0; i < V; ++i) total += probs_[i] = std::exp(static_cast<double>(logits[i]) * inv_t - mx);
    for (double& p : probs_) p /= total;
    scratch_idx_.resize(static_cast<size_t>(V));
    std::iota(scratch_idx_.begin(), scratch_idx_.end(), 0);
    auto by_prob = [&](int32_t a, int32_t b) { return probs_[a] > probs_[b] || (probs_[a] == probs_[b] && a < b); };
    const int32_t k_cap = params_.top_k > 0 ? std::min(params_.top_k, V) : V;
    int32_t keep = V;
    // Top-k: the k most probable in front (unordered), then top-p and min-p over them.
    if (k_cap < V) {
      std::nth_element(scratch_idx_.begin(), scratch_idx_.begin() + k_cap, scratch_idx_.end(), by_prob);
      keep = k_cap;
    }
    if (params_.top_p < 1.0f) {
      // The smallest most-probable set with mass >= top_p, by a mass-weighted quickselect: O(V)
      // expected instead of sorting the vocabulary (a flat 49k-token row is the worst case).
      // Over the top-k survivors renormalised, as HF and vLLM apply top-p after top-k.
      double kept_mass = 1.0;
      if (keep < V) {
        kept_mass = 0;
        for (int32_t i = 0; i < keep; ++i) kept_mass += probs_[scratch_idx_[i]];
      }
      const double target = params_.top_p * kept_mass;
      int32_t lo = 0, hi = keep;
      double acc = 0;  // mass of [0, lo), all more probable than [lo, keep)
      while (hi - lo > 64) {
        const int32_t mid = lo + (hi - lo) / 2;
        std::nth_element(scratch_idx_.begin() + lo, scratch_idx_.begin() + mid, scratch_idx_.begin() + hi, by_prob);
        double m = 0;
        for (int32_t i = lo; i < mid; ++i) m += probs_[scratch_idx_[i]];
        if (acc + m >= target) {
          hi = mid;
        } else {
          acc += m;
          lo = mid;
        }
      }
      std::sort(scratch_idx_.begin() + lo, scratch_idx_.begin() + hi, by_prob);
      int32_t n = lo;
      while (n < hi && acc < target) acc += probs_[scratch_idx_[n++]];
      keep = std::max(1, n);
    }
    if (params_.min_p > 0.f) {
      double p_max = 0;
      for (int32_t i = 0; i < keep; ++i) p_max = std::max(p_max, probs_[scratch_idx_[i]]);
      const double floor = params_.min_p * p_max;
      int32_t n = 0;
      for (int32_t i = 0; i < keep; ++i) {
        if (probs_[scratch_idx_[i]] >= floor) scratch_idx_[n++] = scratch_idx_[i];
      }
      keep = n;
    }
    double mass = 0;
    for (int32_t i = 0; i < keep; ++i) mass += probs_[scratch_idx_[i]];
    std::uniform_real_distribution<double> uniform(0.0, mass);
    const double u = uniform(rng_);
    double cum = 0;
    chosen = scratch_idx_[keep - 1];
    for (int32_t i = 0; i < keep; ++i) {
      cum += probs_[scratch_idx_[i]];
      if (u < cum) {
        chosen = scratch_idx_[i];
        break;
      }
    }
  }
  ++output_counts_[chosen];
  return chosen;
}

}  // namespace sbserve
