// Feeds the engine's step and request reports into the ServingMetrics families.
#pragma once

#include "engine/engine.h"
#include "server/metrics/serving_metrics.h"

namespace sbserve {

class MetricsObserver final : public EngineObserver {
 public:
  explicit MetricsObserver(const metrics::ServingMetrics* m) : m_(m) {}
  void OnStep(const StepReport& r) override;
  void OnToken(absl::Duration since_previous) override;
  void OnFinish(const FinishReport& r) override;

 private:
  const metrics::ServingMetrics* m_;
};

}  // namespace sbserve
