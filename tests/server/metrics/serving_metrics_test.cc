#include "server/metrics/serving_metrics.h"

#include <gtest/gtest.h>

#include <regex>
#include <set>
#include <string>

#include "tests/server/metrics/test_util.h"

namespace sbserve::metrics {
namespace {

std::set<std::string> TypedFamilies(const std::string& text) {
  std::set<std::string> names;
  const std::regex type_line("# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) ");
  for (std::sregex_iterator it(text.begin(), text.end(), type_line), end; it != end; ++it) {
    names.insert((*it)[1]);
  }
  return names;
}

TEST(ServingMetrics, RegistersTheDesignSet) {
  Registry registry;
  absl::StatusOr<ServingMetrics> m = ServingMetrics::Create(registry);
  ASSERT_TRUE(m.ok()) << m.status();
  const std::set<std::string> families = TypedFamilies(registry.Serialize());
  for (const char* name : {
           "sbserve_num_requests_running", "sbserve_num_requests_waiting",
           "sbserve_num_queued_prompt_tokens", "sbserve_kv_cache_usage_ratio",
           "sbserve_kv_cache_used_blocks", "sbserve_kv_cache_capacity_blocks",
           "sbserve_prompt_tokens_total", "sbserve_generation_tokens_total",
           "sbserve_request_success_total", "sbserve_request_rejected_total",
           "sbserve_request_aborts_total", "sbserve_request_deadline_exceeded_total",
           "sbserve_num_preemptions_total", "sbserve_time_to_first_token_seconds",
           "sbserve_inter_token_latency_seconds", "sbserve_request_time_per_output_token_seconds",
           "sbserve_e2e_request_latency_seconds", "sbserve_request_queue_time_seconds",
           "sbserve_request_prefill_time_seconds", "sbserve_request_decode_time_seconds",
           "sbserve_request_prompt_tokens", "sbserve_request_generation_tokens",
           "sbserve_engine_step_time_seconds", "sbserve_engine_step_tokens",
           "sbserve_engine_step_sequences", "sbserve_engine_step_failures_total",
           "sbserve_backend_healthy", "sbserve_prefix_cache_queries_total",
           "sbserve_prefix_cache_hits_total", "sbserve_kv_cache_cached_free_blocks"}) {
    EXPECT_TRUE(families.contains(name)) << name;
  }
  EXPECT_EQ(families.size(), 30u);

  // Every child pointer is set, so the hot path never checks for null.
  for (Counter* c : m->request_success) EXPECT_NE(c, nullptr);
  for (Counter* c : m->request_rejected) EXPECT_NE(c, nullptr);
  for (Counter* c : m->request_deadline_exceeded) EXPECT_NE(c, nullptr);
  EXPECT_NE(m->engine_step_sequences, nullptr);

  // A second registration on the same registry is refused instead of duplicating families.
  EXPECT_EQ(ServingMetrics::Create(registry).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST(ServingMetrics, LabelledChildrenExistFromTheStart) {
  Registry registry;
  ASSERT_TRUE(ServingMetrics::Create(registry).ok());
  const std::string text = registry.Serialize();
  for (const char* reason : {"length", "stop", "eos", "cancelled", "deadline", "error"}) {
    EXPECT_NE(text.find(std::string("sbserve_request_success_total{finished_reason=\"") + reason +
                        "\"} 0\n"),
              std::string::npos)
        << reason;
  }
  for (const char* reason :
       {"queue_full", "queue_tokens", "draining", "invalid_argument", "out_of_range", "loading",
        "already_exists", "malformed", "other"}) {
    EXPECT_NE(text.find(std::string("sbserve_request_rejected_total{reason=\"") + reason +
                        "\"} 0\n"),
              std::string::npos)
        << reason;
  }
  EXPECT_NE(text.find("sbserve_request_deadline_exceeded_total{stage=\"queued\"} 0\n"),
            std::string::npos);
  EXPECT_NE(text.find("sbserve_request_deadline_exceeded_total{stage=\"running\"} 0\n"),
            std::string::npos);
}

TEST(ServingMetrics, AccessorsHitTheRightSeries) {
  Registry registry;
  ServingMetrics m = ServingMetrics::Create(registry).value();
  m.RequestSuccess(FinishReason::kEos).Increment();
  m.RequestSuccess(FinishReason::kEos).Increment();
  m.RequestRejected(RejectReason::kQueueTokens).Increment();
  m.RequestDeadlineExceeded(DeadlineStage::kRunning).Increment();
  m.SetKvCache(25, 100);
  m.inter_token_latency->Observe(0.0003);
  const std::string text = registry.Serialize();
  EXPECT_NE(text.find("sbserve_request_success_total{finished_reason=\"eos\"} 2\n"),
            std::string::npos);
  EXPECT_NE(text.find("sbserve_request_rejected_total{reason=\"queue_tokens\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("sbserve_request_deadline_exceeded_total{stage=\"running\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("sbserve_kv_cache_usage_ratio 0.25\n"), std::string::npos);
  EXPECT_NE(text.find("sbserve_kv_cache_used_blocks 25\n"), std::string::npos);
  EXPECT_NE(text.find("sbserve_kv_cache_capacity_blocks 100\n"), std::string::npos);
  // 0.3 ms lands in the 0.5 ms bucket, not the 0.2 ms one: sub-millisecond resolution.
  EXPECT_NE(text.find("sbserve_inter_token_latency_seconds_bucket{le=\"0.0002\"} 0\n"),
            std::string::npos);
  EXPECT_NE(text.find("sbserve_inter_token_latency_seconds_bucket{le=\"0.0005\"} 1\n"),
            std::string::npos);
  m.SetKvCache(0, 0);
  EXPECT_EQ(m.kv_cache_usage_ratio->Value(), 0);
  EXPECT_EQ(FinishReasonLabel(FinishReason::kDeadline), "deadline");
  EXPECT_EQ(RejectReasonLabel(RejectReason::kDraining), "draining");
  EXPECT_EQ(DeadlineStageLabel(DeadlineStage::kQueued), "queued");
}

TEST(ServingMetrics, LatencyBucketsStartBelowOneMillisecond) {
  for (const std::vector<double>* b : {&StepLatencyBuckets(), &RequestLatencyBuckets()}) {
    ASSERT_FALSE(b->empty());
    EXPECT_LT(b->front(), 0.001);
    EXPECT_GE(b->back(), 5.0);
  }
  EXPECT_GE(RequestLatencyBuckets().back(), 60.0);
  EXPECT_EQ(TokenCountBuckets().front(), 1);
  EXPECT_GE(TokenCountBuckets().back(), 16384);
}

// METRICS.md is the reference the README links to: every exposed family must be documented.
TEST(ServingMetrics, EveryFamilyIsDocumented) {
  const std::string doc = testing::ReadFile(std::string(SBSERVE_SOURCE_DIR) +
                                            "/server/metrics/METRICS.md");
  ASSERT_FALSE(doc.empty()) << "server/metrics/METRICS.md missing";
  Registry registry;
  ASSERT_TRUE(ServingMetrics::Create(registry).ok());
  for (const std::string& name : TypedFamilies(registry.Serialize())) {
    EXPECT_NE(doc.find("`" + name + "`"), std::string::npos) << name << " not in METRICS.md";
  }
}

TEST(ServingMetrics, PerEngineFamiliesAreLabelledAndDocumented) {
  const std::string doc = testing::ReadFile(std::string(SBSERVE_SOURCE_DIR) + "/server/metrics/METRICS.md");
  Registry registry;
  ASSERT_TRUE(ServingMetrics::Create(registry).ok());
  absl::StatusOr<EngineMetrics> m = EngineMetrics::Create(registry);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(EngineMetrics::Create(registry).status().code(), absl::StatusCode::kAlreadyExists);
  absl::StatusOr<EngineSeries> e1 = m->ForEngine("1", "cuda:1");
  ASSERT_TRUE(e1.ok()) << e1.status();
  e1->steps->Increment(3);
  const std::string page = registry.Serialize();
  EXPECT_NE(page.find("sbserve_engine_steps_total{engine=\"1\",device=\"cuda:1\"} 3\n"), std::string::npos) << page;
  EXPECT_NE(page.find("sbserve_engine_backend_healthy{engine=\"1\",device=\"cuda:1\"} 1\n"), std::string::npos);
  int per_engine = 0;
  for (const std::string& name : TypedFamilies(page)) {
    if (name.rfind("sbserve_engine_", 0) == 0 && page.find(name + "{engine=") != std::string::npos) per_engine++;
    EXPECT_NE(doc.find("`" + name + "`"), std::string::npos) << name << " not in METRICS.md";
  }
  EXPECT_EQ(per_engine, 13);
}

}  // namespace
}  // namespace sbserve::metrics
