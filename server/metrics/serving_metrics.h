// The serving metrics of sbserve (DESIGN.md section 4), registered once per process. Every metric
// is documented in server/metrics/METRICS.md; keep the two in step.
//
// Names follow Prometheus conventions (`sbserve_` prefix, base units, `_total` on counters) and
// otherwise mirror vLLM's `vllm:` set so existing dashboards translate one to one.
//
// All members point into the Registry passed to Create, which must outlive this struct. Every
// labelled child is created up front, so the hot path never locks.
#pragma once

#include <array>
#include <cstddef>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "server/metrics/registry.h"

namespace sbserve::metrics {

// Why an admitted request ended; label `finished_reason` of sbserve_request_success_total.
enum class FinishReason : int {
  kLength = 0,  // max_tokens reached (or the context filled up)
  kStop,        // a stop string or stop token id matched
  kEos,         // the model emitted its end-of-sequence token
  kCancelled,   // the client cancelled the call or an Abort RPC named the request
  kDeadline,    // the request's deadline passed while queued or running
  kError,       // an internal error ended the request
};
inline constexpr size_t kNumFinishReasons = 6;
std::string_view FinishReasonLabel(FinishReason reason);

// Why a request was refused before admission; label `reason` of sbserve_request_rejected_total.
enum class RejectReason : int {
  kQueueFull = 0,   // too many queued requests (RESOURCE_EXHAUSTED)
  kQueueTokens,     // too many queued prompt tokens (RESOURCE_EXHAUSTED)
  kDraining,        // the server is shutting down (UNAVAILABLE)
  kInvalidArgument, // a malformed field (INVALID_ARGUMENT)
  kOutOfRange,      // a value out of range, e.g. prompt + max_tokens beyond the context (OUT_OF_RANGE)
  kLoading,         // the model is still loading (UNAVAILABLE)
  kAlreadyExists,   // the request_id of a live request (ALREADY_EXISTS)
  kMalformed,       // bytes that do not decode as the request message (INVALID_ARGUMENT), any RPC
  kOther,           // any other status code (none is expected)
};
inline constexpr size_t kNumRejectReasons = 9;
std::string_view RejectReasonLabel(RejectReason reason);

// Where a request was when its deadline passed; label `stage` of
// sbserve_request_deadline_exceeded_total.
enum class DeadlineStage : int { kQueued = 0, kRunning };
inline constexpr size_t kNumDeadlineStages = 2;
std::string_view DeadlineStageLabel(DeadlineStage stage);

// Bucket bounds, in seconds or tokens. Latency buckets start at 0.2 ms: a decode step of a 3B
// model on the H200 takes a few ms (3.4 ms at B = 1, tests/bench/engine.md), so
// millisecond-resolution buckets would lump all of them.
const std::vector<double>& StepLatencyBuckets();     // 0.0002 .. 5 s (ITL, step time, TPOT)
const std::vector<double>& RequestLatencyBuckets();  // 0.0002 .. 300 s (TTFT, e2e, queue, ...)
const std::vector<double>& TokenCountBuckets();      // 1, 2, 4, .. 65536 tokens

struct ServingMetrics {
  // Registers every family in `registry` and creates all labelled children.
  // Fails (ALREADY_EXISTS) if called twice on the same registry.
  static absl::StatusOr<ServingMetrics> Create(Registry& registry);

  // Scheduler state (set once per engine step).
  Gauge* num_requests_running = nullptr;   // sequences in the running batch
  Gauge* num_requests_waiting = nullptr;   // admitted, not yet scheduled (incl. preempted)
  Gauge* num_queued_prompt_tokens = nullptr;  // prompt tokens of waiting requests
  Gauge* kv_cache_usage_ratio = nullptr;   // used / total KV blocks, 0..1
  Gauge* kv_cache_used_blocks = nullptr;
  Gauge* kv_cache_capacity_blocks = nullptr;
  Gauge* kv_cache_cached_free_blocks = nullptr;  // unheld blocks whose content stays prefix-cached

  // Token and request counters.
  Counter* prompt_tokens = nullptr;        // prefilled prompt tokens (recomputation not counted)
  Counter* generation_tokens = nullptr;    // generated tokens streamed to clients
  std::array<Counter*, kNumFinishReasons> request_success{};   // by FinishReason
  std::array<Counter*, kNumRejectReasons> request_rejected{};  // by RejectReason
  Counter* request_aborts = nullptr;       // requests ended by an Abort RPC (MetricsObserver::OnFinish)
  std::array<Counter*, kNumDeadlineStages> request_deadline_exceeded{};  // by DeadlineStage
  Counter* num_preemptions = nullptr;      // sequences preempted for lack of KV blocks
  Counter* prefix_cache_queries = nullptr; // tokens looked up in the prefix cache
  Counter* prefix_cache_hits = nullptr;    // of those, tokens found cached
  Counter* engine_step_failures = nullptr; // engine steps whose backend call failed
  Gauge* backend_healthy = nullptr;        // 1, or 0 once the backend is reported unhealthy

  // Per-request latencies, observed once when the request finishes (seconds).
  Histogram* time_to_first_token = nullptr;      // arrival -> first token sent
  Histogram* inter_token_latency = nullptr;      // gap between consecutive tokens (each gap)
  Histogram* time_per_output_token = nullptr;    // per request: decode time / (tokens - 1)
  Histogram* e2e_request_latency = nullptr;      // arrival -> last message
  Histogram* request_queue_time = nullptr;       // arrival -> first scheduled
  Histogram* request_prefill_time = nullptr;     // first scheduled -> first token
  Histogram* request_decode_time = nullptr;      // first token -> last token
  Histogram* request_prompt_tokens = nullptr;    // prompt length per finished request
  Histogram* request_generation_tokens = nullptr;  // generated tokens per finished request

  // Engine steps.
  Histogram* engine_step_time = nullptr;         // one packed forward + sampling (seconds)
  Histogram* engine_step_tokens = nullptr;       // tokens in the packed batch (prefill + decode)
  Histogram* engine_step_sequences = nullptr;    // sequences in the packed batch

  Counter& RequestSuccess(FinishReason r) const { return *request_success[static_cast<int>(r)]; }
  Counter& RequestRejected(RejectReason r) const {
    return *request_rejected[static_cast<int>(r)];
  }
  Counter& RequestDeadlineExceeded(DeadlineStage s) const {
    return *request_deadline_exceeded[static_cast<int>(s)];
  }
  // Sets the three KV gauges together (ratio 0 when total is 0).
  void SetKvCache(double blocks_used, double blocks_total) const;
};

// One engine's series under data-parallel serving (--devices): the same gauges as the totals
// above plus step and token counters, each with the labels `engine` (its index) and `device`
// ("cuda:0", "cpu:1"). The unlabelled series above stay the totals over all engines.
struct EngineSeries {
  Gauge* num_requests_running = nullptr;
  Gauge* num_requests_waiting = nullptr;
  Gauge* num_queued_prompt_tokens = nullptr;
  Gauge* kv_cache_usage_ratio = nullptr;
  Gauge* kv_cache_used_blocks = nullptr;
  Gauge* kv_cache_capacity_blocks = nullptr;
  Gauge* backend_healthy = nullptr;        // 1, or 0 once this engine's backend is unhealthy
  Counter* steps = nullptr;                // engine steps that ran a forward pass
  Counter* step_seconds = nullptr;         // time in those steps (busy time)
  Counter* failed_steps = nullptr;
  Counter* prompt_tokens = nullptr;
  Counter* generation_tokens = nullptr;
  Counter* requests_finished = nullptr;    // admitted requests that ended, any reason

  void SetKvCache(double blocks_used, double blocks_total) const;
};

struct EngineMetrics {
  // Registers the per-engine families (no series until ForEngine). ALREADY_EXISTS if called
  // twice on the same registry.
  static absl::StatusOr<EngineMetrics> Create(Registry& registry);
  // The series of one engine, created on first use.
  absl::StatusOr<EngineSeries> ForEngine(const std::string& engine, const std::string& device) const;

  GaugeFamily* num_requests_running = nullptr;
  GaugeFamily* num_requests_waiting = nullptr;
  GaugeFamily* num_queued_prompt_tokens = nullptr;
  GaugeFamily* kv_cache_usage_ratio = nullptr;
  GaugeFamily* kv_cache_used_blocks = nullptr;
  GaugeFamily* kv_cache_capacity_blocks = nullptr;
  GaugeFamily* backend_healthy = nullptr;
  CounterFamily* steps = nullptr;
  CounterFamily* step_seconds = nullptr;
  CounterFamily* failed_steps = nullptr;
  CounterFamily* prompt_tokens = nullptr;
  CounterFamily* generation_tokens = nullptr;
  CounterFamily* requests_finished = nullptr;
};

}  // namespace sbserve::metrics
