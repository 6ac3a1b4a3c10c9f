// The narrow interface between the engine (packer, scheduler, sampler) and a compute backend.
// The fp32 CPU backend is the reference; the CUDA backend is the product. Both hold the weights
// and the paged KV cache; block ids come from the engine's KvBlockAllocator.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/status/statusor.h"
#include "engine/batch.h"
#include "engine/model/config.h"
#include "engine/sampling_batch.h"

namespace sbserve {

class Checkpoint;

struct KvCacheShape {
  int num_blocks = 0;
  int block_size = 16;  // tokens per block
};

// Memory as a backend sees it: the device's (CUDA) or the host's (CPU) total and free bytes, and
// what this backend holds in weights and KV cache.
struct MemoryInfo {
  int64_t total_bytes = 0;
  int64_t free_bytes = 0;  // device-wide free (CUDA: cudaMemGetInfo; CPU: MemAvailable)
  int64_t weights_bytes = 0;
  int64_t kv_bytes = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string name() const = 0;  // "cpu" or "cuda"
  virtual const ModelConfig& config() const = 0;

  // Bytes one cached token costs over all layers (K and V) in this backend's cache dtype.
  virtual int64_t KvBytesPerToken() const = 0;

  // (Re)allocates the paged KV cache; every layer gets [num_blocks, block_size, Hkv, d] for K and V.
  virtual absl::Status InitKvCache(const KvCacheShape& shape) = 0;
  virtual KvCacheShape kv_cache_shape() const = 0;

  // Runs the whole model over one packed batch: appends the K/V of every batch token to its
  // sequence's blocks, then writes float32 logits of batch.logit_rows, row by row, into
  // `logits` ([logit_rows.size(), vocab]).
  virtual absl::Status Forward(const Batch& batch, std::span<float> logits) = 0;

  // A backend that samples on its own device runs the model and draws the token of every logit row
  // there (sampling.rows parallel to batch.logit_rows); only ids and logprobs come back. The CPU
  // backend does not: the scheduler then samples on the host from Forward's logits.
  virtual bool samples_on_device() const { return false; }
  // A row's logits do not depend on the other rows of its step, on chunked prefill boundaries or
  // on a recompute (CudaBackendOptions::deterministic; the CPU backend always).
  virtual bool batch_invariant() const { return false; }
  virtual absl::Status ForwardSample(const Batch& batch, const SamplingBatch& sampling, SampledRows* out) {
    (void)batch, (void)sampling, (void)out;
    return absl::UnimplementedError("this backend does not sample on its device");
  }

  // Overlapped steps. A backend that overlaps steps runs them on its device in the order they are
  // launched: LaunchStep enqueues a step (as ForwardSample, but without waiting for it) and returns,
  // CollectStep waits for the oldest launched step and returns its draws. At most two steps are
  // launched and not collected. `feed` names the batch tokens that are draws of the step launched
  // just before this one, which the host does not know yet: batch.tokens[f.token_index] is replaced
  // on the device by that step's draw of logit row f.from_row. The scheduler runs the same protocol
  // on any other backend, one step at a time (Scheduler, overlap_steps).
  struct TokenFeed {
    int32_t token_index = 0;
    int32_t from_row = 0;
  };
  virtual bool overlaps_steps() const { return false; }
  virtual absl::Status LaunchStep(const Batch& batch, const SamplingBatch& sampling, std::span<const TokenFeed> feed) {
    (void)batch, (void)sampling, (void)feed;
    return absl::UnimplementedError("this backend does not overlap steps");
  }
  virtual absl::Status CollectStep(SampledRows* out) {
    (void)out;
    return absl::UnimplementedError("this backend does not overlap steps");
  }

  // Measures ahead of serving whatever the backend tunes per step size, for steps of up to
  // max_rows rows (CUDA: the GEMM plans of gemm_tuner.h), so that no served step pauses for it.
  // The engine calls it once, before the first step. Nothing by default.
  virtual absl::Status PrepareSteps(int64_t /*max_rows*/) { return absl::OkStatus(); }

  // For KV sizing (engine/capacity.h). UNIMPLEMENTED by default (test fakes).
  virtual absl::StatusOr<MemoryInfo> Memory() const {
    return absl::UnimplementedError("backend reports no memory information");
  }

  // How the steps so far ran (CUDA: replayed decode graphs, piecewise graphs of steps with prefill
  // chunks, or kernel by kernel); all zero for backends without graphs.
  struct StepPaths {
    int64_t decode_graph = 0, piecewise_graph = 0, eager = 0;
  };
  virtual StepPaths step_paths() const { return {}; }
};

// Delegates every call to another backend; a wrapper (fault injection, instrumentation) derives
// from it and overrides only what it changes.
class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}
  std::string name() const override { return inner_->name(); }
  const ModelConfig& config() const override { return inner_->config(); }
  int64_t KvBytesPerToken() const override { return inner_->KvBytesPerToken(); }
  absl::Status InitKvCache(const KvCacheShape& shape) override { return inner_->InitKvCache(shape); }
  KvCacheShape kv_cache_shape() const override { return inner_->kv_cache_shape(); }
  absl::Status Forward(const Batch& batch, std::span<float> logits) override { return inner_->Forward(batch, logits); }
  bool samples_on_device() const override { return inner_->samples_on_device(); }
  bool batch_invariant() const override { return inner_->batch_invariant(); }
  absl::Status ForwardSample(const Batch& batch, const SamplingBatch& sampling, SampledRows* out) override {
    return inner_->ForwardSample(batch, sampling, out);
  }
  bool overlaps_steps() const override { return inner_->overlaps_steps(); }
  absl::Status LaunchStep(const Batch& batch, const SamplingBatch& sampling, std::span<const TokenFeed> feed) override {
    return inner_->LaunchStep(batch, sampling, feed);
  }
  absl::Status CollectStep(SampledRows* out) override { return inner_->CollectStep(out); }
  absl::Status PrepareSteps(int64_t max_rows) override { return inner_->PrepareSteps(max_rows); }
  absl::StatusOr<MemoryInfo> Memory() const override { return inner_->Memory(); }
  StepPaths step_paths() const override { return inner_->step_paths(); }

 private:
  std::unique_ptr<Backend> inner_;
};

// A backend error after which the device cannot be trusted any more (a sticky CUDA error: illegal
// address, ECC, launch failure): the status carries a payload under this URL. The engine stops
// taking work and the server drains and exits non-zero, so that the process is restarted.
inline constexpr char kFatalBackendErrorUrl[] = "type.sbserve/fatal-backend-error";
inline absl::Status MarkFatalBackendError(absl::Status s) {
  s.SetPayload(kFatalBackendErrorUrl, absl::Cord("fatal"));
  return s;
}
inline bool IsFatalBackendError(const absl::Status& s) {
  return !s.ok() && s.GetPayload(kFatalBackendErrorUrl).has_value();
}

struct CpuBackendOptions {
  int num_threads = 0;  // 0: hardware concurrency
};

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const Checkpoint& checkpoint,
                                                          const CpuBackendOptions& options = {});

// Defined only when built with SBSERVE_CUDA; returns UNAVAILABLE when no device is present.
struct CudaBackendOptions {
  int device = 0;
  // Keys per split-K chunk of the decode attention kernel: 0 lets the kernel's rule choose from the
  // batch, context and occupancy; otherwise forced (a positive multiple of 64; tests and tuning).
  int decode_keys_per_split = 0;
  // Batch-invariant mode: a row's logits do not depend on the other rows of its step, on where
  // chunked prefill cut its prompt, or on a preemption that recomputes it. GEMMs always run on
  // row blocks of kDeterministicGemmRows (padded; one cuBLAS shape, so one kernel and one reduction
  // order per output element), decodes go through the prefill attention kernel as chunks of one
  // (key tiles at fixed positions, rows independent), and the other kernels are row-local.
  // Slower; tests/bench/serving.md has the cost.
  bool deterministic = false;
};
inline constexpr int kDeterministicGemmRows = 128;
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const Checkpoint& checkpoint,
                                                           const CudaBackendOptions& options = {});

}  // namespace sbserve
