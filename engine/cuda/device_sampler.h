// Sampling on the device: penalties, bans, temperature, top-k / top-p / min-p, the seeded draw and
// the logprobs of each logit row, so that only token ids and requested logprobs cross to the host.
// It implements engine/sampler.h's DrawToken step for step (engine/sampling_math.h), and gives
// the same ids from the same logits; tests/engine/device_sampler_test.cc checks that.
//
// Per step: a logprob kernel over the raw rows that ask for logprobs (log-sum-exp, top n), an
// adjust kernel over the sparse penalised and banned tokens (their raw values kept), for filtered
// rows a segmented radix sort of (z, id) pairs, and a draw kernel with one block per row.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "engine/cuda/device_buffer.h"
#include "engine/sampling_batch.h"

namespace sbserve::cuda {

class DeviceSampler {
 public:
  DeviceSampler() = default;
  DeviceSampler(const DeviceSampler&) = delete;
  DeviceSampler& operator=(const DeviceSampler&) = delete;
  ~DeviceSampler();

  // `logits`: [rows, vocab] fp32 on the device, one row per batch.rows entry (modified in place:
  // penalties and bans). Enqueues on `stream` and waits for it; fills `out`.
  absl::Status Sample(float* logits, int64_t vocab, const SamplingBatch& batch, SampledRows* out,
                      cudaStream_t stream);
  // The same in two halves: Enqueue puts the draws and the copy of their results to the host on
  // `stream` and returns; Collect waits for them and fills `out`. One Enqueue may be outstanding
  // per sampler (an overlapping backend alternates two samplers).
  absl::Status Enqueue(float* logits, int64_t vocab, const SamplingBatch& batch, cudaStream_t stream);
  absl::Status Collect(SampledRows* out);
  // The drawn ids of the latest Enqueue on the device ([rows] int32), valid until the next Enqueue:
  // a later step on the same stream may read them (fed tokens).
  const int32_t* device_tokens() const { return out_.get<int32_t>(); }
  int enqueued_rows() const { return pending_.rows; }

 private:
  struct Pending {
    bool outstanding = false;
    int rows = 0, top_n = 0;
    size_t host_out = 0, out_lp = 0, out_top_ids = 0, out_top_lps = 0;  // byte offsets in pinned_
  } pending_;
  cudaEvent_t done_ = nullptr;  // after the copy of the results to pinned_
  DeviceBuffer rows_, adjust_, adjust_rows_, saved_, lse_, out_;
  DeviceBuffer keys_in_, keys_out_, ids_in_, ids_out_, offsets_, filtered_, sort_temp_;
  void* pinned_ = nullptr;  // host staging of inputs, then of outputs
  size_t pinned_bytes_ = 0;
  absl::Status Stage(size_t bytes);
};

}  // namespace sbserve::cuda
