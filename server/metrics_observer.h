// Feeds the engine's step and request reports into the ServingMetrics families.
#pragma once

#include "absl/status/status.h"
#include "engine/engine.h"
#include "server/metrics/serving_metrics.h"

namespace sbserve {

// The `reason` label under which a request refused before admission (by the front door or
// Engine::Submit) is counted. `loading`: the model was not loaded yet when it arrived (the
// status is then UNAVAILABLE, as it is while draining).
metrics::RejectReason RejectReasonFor(const absl::Status& s, bool loading);

class MetricsObserver final : public EngineObserver {
 public:
  explicit MetricsObserver(const metrics::ServingMetrics* m) : m_(m) {}
  void OnStep(const StepReport& r) override;
  void OnToken(absl::Duration since_previous) override;
  void OnFinish(const FinishReport& r) override;
  void OnState(const QueueState& s) override;
  void OnStepFailure(const StepFailure& f) override;

 private:
  const metrics::ServingMetrics* m_;
};

}  // namespace sbserve
