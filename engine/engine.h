// The serving engine: admission, one scheduler thread running iteration-level continuous
// batching over a Backend, and event delivery to per-request sinks. Internals stay behind a pimpl.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/backend.h"
#include "engine/capacity.h"
#include "engine/request.h"

namespace sbserve {

class Tokenizer;

// 0 means "auto" where noted: engine/capacity.h resolves it from the backend at Create.
struct EngineOptions {
  int max_batch_tokens = 0;           // tokens per step (decode tokens + prefill chunks); 0: 2048 on CUDA, 512 else
  int max_num_seqs = 128;             // sequences per step
  int max_queued_requests = 0;        // admission: waiting requests; 0: from max_num_seqs
  int64_t max_queued_tokens = 0;      // admission: prompt tokens of waiting requests; 0: from capacity
  int default_max_tokens = 256;
  int kv_block_size = 16;
  int kv_num_blocks = 0;              // exact block count; 0: from kv_cache_bytes
  int64_t kv_cache_bytes = 0;         // 0: from gpu_memory_utilization (CUDA) or available RAM (CPU)
  double gpu_memory_utilization = 0.90;  // share of device memory the process may use, in (0, 1]
  int max_logprobs = 20;
  int sampling_threads = 0;           // threads drawing tokens from logit rows (0: all cores, 1: inline)
  // Automatic prefix caching: full KV blocks are shared between requests with equal prefixes
  // (engine/kv_cache.h). A request opts out with GenerateRequest::cache_prefix = false.
  bool enable_prefix_caching = true;
  // Overlapped steps (engine/scheduler.h): the next step is packed and launched while the device
  // runs the current one, on backends that overlap steps (Backend::overlaps_steps). Streams are the
  // same either way.
  bool overlap_steps = true;
  absl::Duration retry_after = absl::Milliseconds(500);  // suggested with RESOURCE_EXHAUSTED
  // After this many consecutive failed steps the engine reports its backend unhealthy (sticky;
  // the server then turns not ready). A fatal backend error (IsFatalBackendError) does so at once.
  int max_consecutive_step_failures = 3;
};

struct EngineStats {
  int running = 0;
  int waiting = 0;
  int64_t queued_prompt_tokens = 0;
  int kv_blocks_used = 0;
  int kv_blocks_total = 0;
  int kv_block_size = 0;
  int kv_blocks_cached_free = 0;      // blocks no request holds whose content stays cached
  bool prefix_caching = false;        // EngineOptions::enable_prefix_caching
  uint64_t prefix_cache_queries = 0;  // tokens looked up in the prefix cache, all time
  uint64_t prefix_cache_hits = 0;     // of those, tokens found cached (not computed)
  uint64_t requests_finished = 0;
  uint64_t preemptions = 0;
  bool draining = false;
  uint64_t step_failures = 0;         // failed engine steps, all time
  int consecutive_step_failures = 0;
  bool backend_healthy = true;        // false once max_consecutive_step_failures or a fatal error
  bool backend_fatal = false;
};

// A failed engine step (its batch's requests have already ended with INTERNAL).
struct StepFailure {
  absl::Status status;
  int consecutive = 0;   // failed steps in a row, this one included
  bool unhealthy = false;  // the backend is now reported unhealthy (this step tipped it or it was)
  bool fatal = false;      // IsFatalBackendError(status)
};

// What the engine reports as it runs; called on the engine thread, must not block.
struct StepReport {
  int num_seqs = 0;
  int prefill_tokens = 0;
  int decode_tokens = 0;
  absl::Duration step_time;
  int running = 0;
  int waiting = 0;
  int64_t queued_prompt_tokens = 0;
  int kv_blocks_used = 0;
  int kv_blocks_total = 0;
  int kv_blocks_cached_free = 0;
  int preempted = 0;
  // Prompt tokens this step covered for the first time, computed or found in the prefix cache
  // (chunks of prompts; a prompt recomputed after a preemption is not counted again). The step's
  // backend call succeeded.
  int new_prompt_tokens = 0;
  // Prefix cache lookups of the sequences this step started (or restarted after a preemption):
  // the tokens looked up and, of those, the tokens found cached.
  int prefix_cache_queries = 0;
  int prefix_cache_hits = 0;
};

// The scheduler's queue and KV state, reported when requests end outside a step (a cancel, an
// abort, a deadline that expired while nothing ran), which no StepReport would show.
struct QueueState {
  int running = 0;
  int waiting = 0;
  int64_t queued_prompt_tokens = 0;
  int kv_blocks_used = 0;
  int kv_blocks_total = 0;
  int kv_blocks_cached_free = 0;
};

struct FinishReport {
  std::string request_id;
  FinishReason reason = FinishReason::kNone;
  absl::Status status;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  RequestTimings timings;
  absl::Duration prefill_time;  // first scheduled -> first token
  absl::Duration decode_time;   // first token -> last token
  absl::Duration e2e;
  bool scheduled = false;       // it ran at least one step
  bool running = false;         // it was running when it ended (a preempted request waiting again is not)
  bool aborted = false;         // ended by an Abort RPC (as cancelled, or deadline when it had passed)
};

class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void OnStep(const StepReport&) {}
  virtual void OnToken(absl::Duration /*since_previous_token*/) {}  // inter-token latency
  virtual void OnFinish(const FinishReport&) {}
  virtual void OnState(const QueueState&) {}
  virtual void OnStepFailure(const StepFailure&) {}
};

// Details attached to a RESOURCE_EXHAUSTED status from Submit: the payload under this URL is the
// suggested retry delay in milliseconds, in decimal.
inline constexpr char kRetryAfterPayloadUrl[] = "type.sbserve/retry-after-ms";

// The engine's TextCodec over a project tokenizer (engine/request_tokenizer.cc).
std::unique_ptr<TextCodec> NewTokenizerCodec(std::unique_ptr<Tokenizer> tokenizer);

class Engine {
 public:
  // `tokenizer` may be null: then only token-id input works and no text is produced.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options,
                                                        std::unique_ptr<Backend> backend,
                                                        std::unique_ptr<Tokenizer> tokenizer);
  static absl::StatusOr<std::unique_ptr<Engine>> CreateWithCodec(const EngineOptions& options,
                                                                 std::unique_ptr<Backend> backend,
                                                                 std::unique_ptr<TextCodec> codec);
  ~Engine();  // Shutdown()

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates and admits a request. Admission (queued requests and queued prompt tokens) is
  // decided before the prompt is tokenized. On OK, `sink` receives events until one is final.
  absl::Status Submit(GenerateRequest request, EventSink sink);

  // Cancels live requests; returns the ids that were live. Their KV blocks are freed at the start
  // of the next engine step and each gets a final event with reason kCancelled (or kDeadline:
  // see Scheduler::Cancel). The time of this call, not of that step, decides between the two.
  // A non-zero `owner` cancels only a request submitted with that GenerateRequest::owner.
  std::vector<std::string> Abort(const std::vector<std::string>& request_ids,
                                 CancelSource source = CancelSource::kAbortRpc, uint64_t owner = 0);

  EngineStats Stats() const;
  const ModelConfig& model_config() const;
  const Backend& backend() const;
  const TextCodec* codec() const;  // null without a tokenizer
  // The options as resolved at Create: every "auto" (0) replaced by its value.
  const EngineOptions& options() const;
  // How the KV cache, step size and admission limits were sized (engine/capacity.h).
  const CapacityPlan& capacity() const;
  std::vector<int32_t> eos_ids() const;

  void SetObserver(std::shared_ptr<EngineObserver> observer);  // before the first Submit

  // Stops admission (Submit returns UNAVAILABLE) and waits up to `timeout` for live requests to
  // finish; returns true when none is left.
  bool Drain(absl::Duration timeout);
  // Finishes every live request with UNAVAILABLE and stops the engine thread.
  void Shutdown();

 private:
  class Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sbserve
