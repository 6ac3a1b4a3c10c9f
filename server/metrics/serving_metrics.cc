#include "server/metrics/serving_metrics.h"

#include <string>
#include <utility>

namespace sbserve::metrics {
namespace {

constexpr std::array<std::string_view, kNumFinishReasons> kFinishReasonLabels = {
    "length", "stop", "eos", "cancelled", "deadline", "error"};
constexpr std::array<std::string_view, kNumRejectReasons> kRejectReasonLabels = {
    "queue_full", "queue_tokens", "draining", "invalid_argument", "out_of_range", "loading",
    "already_exists", "malformed", "other"};
constexpr std::array<std::string_view, kNumDeadlineStages> kDeadlineStageLabels = {"queued",
                                                                                    "running"};

// Small helper that turns a chain of registrations into one early-returning status.
class Builder {
 public:
  explicit Builder(Registry& registry) : registry_(registry) {}

  absl::Status status() const { return status_; }

  Gauge* MakeGauge(std::string_view name, std::string_view help) {
    if (!status_.ok()) return nullptr;
    return Child(registry_.AddGauge(name, help), {});
  }
  Counter* MakeCounter(std::string_view name, std::string_view help) {
    if (!status_.ok()) return nullptr;
    return Child(registry_.AddCounter(name, help), {});
  }
  template <size_t N>
  void LabeledCounters(std::string_view name, std::string_view help, std::string label,
                       const std::array<std::string_view, N>& values,
                       std::array<Counter*, N>* out) {
    if (!status_.ok()) return;
    absl::StatusOr<CounterFamily*> family = registry_.AddCounter(name, help, {std::move(label)});
    for (size_t i = 0; i < N; ++i) (*out)[i] = Child(family, {std::string(values[i])});
  }
  Histogram* MakeHistogram(std::string_view name, std::string_view help,
                       const std::vector<double>& buckets) {
    if (!status_.ok()) return nullptr;
    return Child(registry_.AddHistogram(name, help, buckets), {});
  }

 private:
  template <typename T>
  T* Child(const absl::StatusOr<Family<T>*>& family, const std::vector<std::string>& values) {
    if (!status_.ok()) return nullptr;
    if (!family.ok()) {
      status_ = family.status();
      return nullptr;
    }
    absl::StatusOr<T*> child = (*family)->WithLabels(values);
    if (!child.ok()) {
      status_ = child.status();
      return nullptr;
    }
    return *child;
  }

  Registry& registry_;
  absl::Status status_;
};

}  // namespace

std::string_view FinishReasonLabel(FinishReason reason) {
  return kFinishReasonLabels[static_cast<int>(reason)];
}
std::string_view RejectReasonLabel(RejectReason reason) {
  return kRejectReasonLabels[static_cast<int>(reason)];
}
std::string_view DeadlineStageLabel(DeadlineStage stage) {
  return kDeadlineStageLabels[static_cast<int>(stage)];
}

const std::vector<double>& StepLatencyBuckets() {
  static const std::vector<double> kBuckets = {
      0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015,
      0.02,   0.03,   0.04,  0.05,   0.075, 0.1,   0.15,  0.2,   0.3,    0.5,  1.0,
      2.5,    5.0};
  return kBuckets;
}

const std::vector<double>& RequestLatencyBuckets() {
  static const std::vector<double> kBuckets = {
      0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
      0.75,   1.0,    2.5,   5.0,   7.5,   10.0, 20.0, 30.0, 40.0, 60.0, 120.0, 300.0};
  return kBuckets;
}

const std::vector<double>& TokenCountBuckets() {
  static const std::vector<double> kBuckets = [] {
    std::vector<double> bounds;
    for (double b = 1; b <= 65536; b *= 2) bounds.push_back(b);
    return bounds;
  }();
  return kBuckets;
}

void ServingMetrics::SetKvCache(double blocks_used, double blocks_total) const {
  kv_cache_used_blocks->Set(blocks_used);
  kv_cache_capacity_blocks->Set(blocks_total);
  kv_cache_usage_ratio->Set(blocks_total > 0 ? blocks_used / blocks_total : 0.0);
}

absl::StatusOr<ServingMetrics> ServingMetrics::Create(Registry& registry) {
  Builder b(registry);
  ServingMetrics m;

  m.num_requests_running = b.MakeGauge(
      "sbserve_num_requests_running", "Requests in the running batch (prefill or decode).");
  m.num_requests_waiting = b.MakeGauge(
      "sbserve_num_requests_waiting",
      "Admitted requests waiting to be scheduled, including preempted ones.");
  m.num_queued_prompt_tokens = b.MakeGauge(
      "sbserve_num_queued_prompt_tokens",
      "Prompt tokens of the waiting requests (the admission limit applies to this).");
  m.kv_cache_usage_ratio = b.MakeGauge(
      "sbserve_kv_cache_usage_ratio", "Fraction of KV cache blocks in use, 0 to 1.");
  m.kv_cache_used_blocks = b.MakeGauge("sbserve_kv_cache_used_blocks", "KV cache blocks in use.");
  m.kv_cache_capacity_blocks =
      b.MakeGauge("sbserve_kv_cache_capacity_blocks", "KV cache blocks allocated at start-up.");
  m.kv_cache_cached_free_blocks = b.MakeGauge(
      "sbserve_kv_cache_cached_free_blocks",
      "KV cache blocks no request holds whose content stays prefix-cached (evicted when needed).");

  m.prompt_tokens = b.MakeCounter("sbserve_prompt_tokens",
                                  "Prompt tokens prefilled, computed or found in the prefix cache.");
  m.prefix_cache_queries = b.MakeCounter(
      "sbserve_prefix_cache_queries", "Tokens looked up in the prefix cache when sequences start or restart.");
  m.prefix_cache_hits = b.MakeCounter("sbserve_prefix_cache_hits",
                                      "Tokens looked up in the prefix cache and found there.");
  m.generation_tokens = b.MakeCounter("sbserve_generation_tokens", "Tokens generated.");
  b.LabeledCounters("sbserve_request_success",
                    "Admitted requests that finished, by finish reason.", "finished_reason",
                    kFinishReasonLabels, &m.request_success);
  b.LabeledCounters("sbserve_request_rejected", "Requests refused before admission, by reason.",
                    "reason", kRejectReasonLabels, &m.request_rejected);
  m.request_aborts = b.MakeCounter("sbserve_request_aborts", "Requests aborted by an Abort RPC.");
  b.LabeledCounters("sbserve_request_deadline_exceeded",
                    "Requests dropped because their deadline passed, by stage.", "stage",
                    kDeadlineStageLabels, &m.request_deadline_exceeded);
  m.num_preemptions = b.MakeCounter("sbserve_num_preemptions",
                                "Sequences preempted (freed, recomputed later) for lack of KV blocks.");
  m.engine_step_failures = b.MakeCounter("sbserve_engine_step_failures",
                                         "Engine steps whose backend forward pass failed.");
  m.backend_healthy = b.MakeGauge("sbserve_backend_healthy",
                                  "1 while the backend serves; 0 after --max-step-failures failed steps in a row "
                                  "or a fatal device error (readiness is then NOT_SERVING).");
  if (m.backend_healthy != nullptr) m.backend_healthy->Set(1);

  const std::vector<double>& step = StepLatencyBuckets();
  const std::vector<double>& request = RequestLatencyBuckets();
  const std::vector<double>& tokens = TokenCountBuckets();
  m.time_to_first_token = b.MakeHistogram("sbserve_time_to_first_token_seconds",
                                      "Time from arrival to the first generated token.", request);
  m.inter_token_latency = b.MakeHistogram("sbserve_inter_token_latency_seconds",
                                      "Time between two consecutive generated tokens.", step);
  m.time_per_output_token = b.MakeHistogram(
      "sbserve_request_time_per_output_token_seconds",
      "Per request: decode time divided by (generated tokens - 1).", step);
  m.e2e_request_latency = b.MakeHistogram("sbserve_e2e_request_latency_seconds",
                                      "Time from arrival to the final response.", request);
  m.request_queue_time = b.MakeHistogram("sbserve_request_queue_time_seconds",
                                     "Time from arrival to first being scheduled.", request);
  m.request_prefill_time = b.MakeHistogram("sbserve_request_prefill_time_seconds",
                                       "Time from first being scheduled to the first token.",
                                       request);
  m.request_decode_time = b.MakeHistogram("sbserve_request_decode_time_seconds",
                                      "Time from the first to the last generated token.", request);
  m.request_prompt_tokens = b.MakeHistogram("sbserve_request_prompt_tokens",
                                        "Prompt length of finished requests.", tokens);
  m.request_generation_tokens = b.MakeHistogram(
      "sbserve_request_generation_tokens", "Generated tokens of finished requests.", tokens);
  m.engine_step_time = b.MakeHistogram("sbserve_engine_step_time_seconds",
                                   "Duration of one engine step (packed forward and sampling).",
                                   step);
  m.engine_step_tokens = b.MakeHistogram("sbserve_engine_step_tokens",
                                     "Tokens in one packed batch (prefill chunks + decodes).",
                                     tokens);
  m.engine_step_sequences = b.MakeHistogram("sbserve_engine_step_sequences",
                                        "Sequences in one packed batch.", tokens);

  if (!b.status().ok()) return b.status();
  return m;
}

void EngineSeries::SetKvCache(double blocks_used, double blocks_total) const {
  kv_cache_used_blocks->Set(blocks_used);
  kv_cache_capacity_blocks->Set(blocks_total);
  kv_cache_usage_ratio->Set(blocks_total > 0 ? blocks_used / blocks_total : 0.0);
}

absl::StatusOr<EngineMetrics> EngineMetrics::Create(Registry& registry) {
  const std::vector<std::string> labels = {"engine", "device"};
  absl::Status status;
  auto gauge = [&](std::string_view name, std::string_view help) -> GaugeFamily* {
    if (!status.ok()) return nullptr;
    absl::StatusOr<GaugeFamily*> f = registry.AddGauge(name, help, labels);
    if (!f.ok()) status = f.status();
    return f.ok() ? *f : nullptr;
  };
  auto counter = [&](std::string_view name, std::string_view help) -> CounterFamily* {
    if (!status.ok()) return nullptr;
    absl::StatusOr<CounterFamily*> f = registry.AddCounter(name, help, labels);
    if (!f.ok()) status = f.status();
    return f.ok() ? *f : nullptr;
  };
  EngineMetrics m;
  m.num_requests_running = gauge("sbserve_engine_num_requests_running", "Per engine: requests in its running batch.");
  m.num_requests_waiting = gauge("sbserve_engine_num_requests_waiting",
                                 "Per engine: admitted requests waiting to be scheduled, including preempted ones.");
  m.num_queued_prompt_tokens =
      gauge("sbserve_engine_num_queued_prompt_tokens", "Per engine: prompt tokens of its waiting requests.");
  m.kv_cache_usage_ratio = gauge("sbserve_engine_kv_cache_usage_ratio", "Per engine: fraction of its KV blocks in use.");
  m.kv_cache_used_blocks = gauge("sbserve_engine_kv_cache_used_blocks", "Per engine: KV cache blocks in use.");
  m.kv_cache_capacity_blocks =
      gauge("sbserve_engine_kv_cache_capacity_blocks", "Per engine: KV cache blocks allocated at start-up.");
  m.backend_healthy = gauge("sbserve_engine_backend_healthy",
                            "Per engine: 1 while its backend serves; 0 once it is unhealthy (no longer routed to).");
  m.steps = counter("sbserve_engine_steps", "Per engine: steps that ran a forward pass.");
  m.step_seconds = counter("sbserve_engine_step_seconds", "Per engine: time spent in steps (busy time), seconds.");
  m.failed_steps = counter("sbserve_engine_failed_steps", "Per engine: steps whose backend forward pass failed.");
  m.prompt_tokens = counter("sbserve_engine_prompt_tokens", "Per engine: prompt tokens prefilled.");
  m.generation_tokens = counter("sbserve_engine_generation_tokens", "Per engine: tokens generated.");
  m.requests_finished = counter("sbserve_engine_requests_finished", "Per engine: admitted requests that ended.");
  if (!status.ok()) return status;
  return m;
}

absl::StatusOr<EngineSeries> EngineMetrics::ForEngine(const std::string& engine, const std::string& device) const {
  const std::vector<std::string> values = {engine, device};
  absl::Status status;
  auto child = [&]<typename T>(Family<T>* family) -> T* {
    if (!status.ok()) return nullptr;
    absl::StatusOr<T*> c = family->WithLabels(values);
    if (!c.ok()) {
      status = c.status();
      return nullptr;
    }
    return *c;
  };
  EngineSeries s;
  s.num_requests_running = child(num_requests_running);
  s.num_requests_waiting = child(num_requests_waiting);
  s.num_queued_prompt_tokens = child(num_queued_prompt_tokens);
  s.kv_cache_usage_ratio = child(kv_cache_usage_ratio);
  s.kv_cache_used_blocks = child(kv_cache_used_blocks);
  s.kv_cache_capacity_blocks = child(kv_cache_capacity_blocks);
  s.backend_healthy = child(backend_healthy);
  s.steps = child(steps);
  s.step_seconds = child(step_seconds);
  s.failed_steps = child(failed_steps);
  s.prompt_tokens = child(prompt_tokens);
  s.generation_tokens = child(generation_tokens);
  s.requests_finished = child(requests_finished);
  if (!status.ok()) return status;
  s.backend_healthy->Set(1);
  return s;
}

}  // namespace sbserve::metrics
