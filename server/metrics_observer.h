// Feeds the engine's step and request reports into the ServingMetrics families.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "engine/engine.h"
#include "server/metrics/serving_metrics.h"

namespace sbserve {

// The `reason` label under which a request refused before admission (by the front door or
// Engine::Submit) is counted. `loading`: the model was not loaded yet when it arrived (the
// status is then UNAVAILABLE, as it is while draining).
metrics::RejectReason RejectReasonFor(const absl::Status& s, bool loading);

// The totals of the queue and KV gauges over the engines of a pool: each engine's last state,
// summed under one lock, so that the unlabelled gauges always equal the sum of the per-engine
// series. sbserve_backend_healthy is 1 while any engine's backend is healthy (readiness follows
// the same rule) and 0 after a fatal device error on any engine (the server then drains and exits).
class EngineTotals {
 public:
  EngineTotals(const metrics::ServingMetrics* m, int engines);
  // Sets the engine's series and the totals.
  void SetState(int engine, const metrics::EngineSeries& series, const QueueState& s);
  void SetUnhealthy(int engine, const metrics::EngineSeries& series, bool fatal);

 private:
  const metrics::ServingMetrics* m_;
  std::mutex mu_;
  std::vector<QueueState> states_;
  std::vector<bool> healthy_;
  bool fatal_ = false;
};

class MetricsObserver final : public EngineObserver {
 public:
  // One engine: the unlabelled series only.
  explicit MetricsObserver(const metrics::ServingMetrics* m) : m_(m) {}
  // Engine `engine` of a pool: its own series and its share of the totals.
  MetricsObserver(const metrics::ServingMetrics* m, metrics::EngineSeries series, std::shared_ptr<EngineTotals> totals,
                  int engine)
      : m_(m), series_(series), totals_(std::move(totals)), engine_(engine) {}
  void OnStep(const StepReport& r) override;
  void OnToken(absl::Duration since_previous) override;
  void OnFinish(const FinishReport& r) override;
  void OnState(const QueueState& s) override;
  void OnStepFailure(const StepFailure& f) override;

 private:
  void SetState(const QueueState& s);

  const metrics::ServingMetrics* m_;
  metrics::EngineSeries series_;
  std::shared_ptr<EngineTotals> totals_;  // null: one engine, no per-engine series
  int engine_ = 0;
};

}  // namespace sbserve
