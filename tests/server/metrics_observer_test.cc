// MetricsObserver, the bridge from the engine's reports to the serving metrics, fed reports by
// hand: token counts, time per output token, the deadline stage and the KV usage ratio. Each
// check kills a mutant of tests/mutants/.
#include "server/metrics_observer.h"

#include "gtest/gtest.h"
#include "server/metrics/registry.h"
#include "server/metrics/serving_metrics.h"

namespace sbserve {
namespace {

struct Fixture {
  Fixture() {
    auto created = metrics::ServingMetrics::Create(registry);
    EXPECT_TRUE(created.ok()) << created.status();
    m = *created;
  }
  metrics::Registry registry;
  metrics::ServingMetrics m;
};

TEST(MetricsObserver, ThreeTokensCountThreeAndTwoGapsMakeTheTimePerOutputToken) {
  Fixture f;
  MetricsObserver obs(&f.m);
  obs.OnToken(absl::Milliseconds(500));  // gaps before tokens 2 and 3
  obs.OnToken(absl::Milliseconds(500));
  FinishReport r;
  r.reason = FinishReason::kLength;
  r.prompt_tokens = 4;
  r.completion_tokens = 3;
  r.scheduled = true;
  r.prefill_time = absl::Milliseconds(250);
  r.decode_time = absl::Seconds(1);
  r.e2e = absl::Seconds(2);
  obs.OnFinish(r);
  EXPECT_EQ(f.m.generation_tokens->Value(), 3.0) << "the first token has no gap but is a token";
  const auto tpot = f.m.time_per_output_token->Collect();
  ASSERT_EQ(tpot.count, 1u);
  EXPECT_DOUBLE_EQ(tpot.sum, 0.5) << "1 s of decode over 2 gaps";
  EXPECT_EQ(f.m.RequestSuccess(metrics::FinishReason::kLength).Value(), 1.0);
}

TEST(MetricsObserver, DeadlineStageFollowsWhereTheRequestWas) {
  Fixture f;
  MetricsObserver obs(&f.m);
  FinishReport queued;
  queued.reason = FinishReason::kDeadline;
  queued.scheduled = false;
  obs.OnFinish(queued);
  EXPECT_EQ(f.m.RequestDeadlineExceeded(metrics::DeadlineStage::kQueued).Value(), 1.0);
  EXPECT_EQ(f.m.RequestDeadlineExceeded(metrics::DeadlineStage::kRunning).Value(), 0.0);
  FinishReport running = queued;
  running.scheduled = true;
  running.running = true;
  running.completion_tokens = 1;
  obs.OnFinish(running);
  obs.OnFinish(running);
  EXPECT_EQ(f.m.RequestDeadlineExceeded(metrics::DeadlineStage::kQueued).Value(), 1.0);
  EXPECT_EQ(f.m.RequestDeadlineExceeded(metrics::DeadlineStage::kRunning).Value(), 2.0);
  // Preempted: it ran, but its deadline passed while it waited again.
  FinishReport preempted = running;
  preempted.running = false;
  obs.OnFinish(preempted);
  EXPECT_EQ(f.m.RequestDeadlineExceeded(metrics::DeadlineStage::kQueued).Value(), 2.0);
  EXPECT_EQ(f.m.RequestDeadlineExceeded(metrics::DeadlineStage::kRunning).Value(), 2.0);
}

TEST(MetricsObserver, KvUsageRatioIsTheUsedFraction) {
  Fixture f;
  MetricsObserver obs(&f.m);
  StepReport s;
  s.kv_blocks_used = 30;
  s.kv_blocks_total = 40;
  obs.OnStep(s);
  EXPECT_DOUBLE_EQ(f.m.kv_cache_usage_ratio->Value(), 0.75);
  EXPECT_EQ(f.m.kv_cache_used_blocks->Value(), 30.0);
  EXPECT_EQ(f.m.kv_cache_capacity_blocks->Value(), 40.0);
}

TEST(MetricsObserver, PrefixCacheCountersAddUpAndTheCachedFreeGaugeFollowsTheState) {
  Fixture f;
  MetricsObserver obs(&f.m);
  StepReport s;
  s.prefix_cache_queries = 100;
  s.prefix_cache_hits = 64;
  s.kv_blocks_cached_free = 7;
  obs.OnStep(s);
  s.prefix_cache_queries = 20;
  s.prefix_cache_hits = 0;
  obs.OnStep(s);
  EXPECT_EQ(f.m.prefix_cache_queries->Value(), 120.0);
  EXPECT_EQ(f.m.prefix_cache_hits->Value(), 64.0);
  EXPECT_EQ(f.m.kv_cache_cached_free_blocks->Value(), 7.0);
  QueueState q;
  q.kv_blocks_cached_free = 9;  // a cancelled request's blocks stayed cached
  obs.OnState(q);
  EXPECT_EQ(f.m.kv_cache_cached_free_blocks->Value(), 9.0);
}

}  // namespace
}  // namespace sbserve
