#include "server/metrics/registry.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace sbserve::metrics {
namespace {

TEST(Registry, ExactExposition) {
  Registry registry;
  auto requests = registry.AddCounter("test_requests", "Requests handled.", {"code", "method"});
  ASSERT_TRUE(requests.ok()) << requests.status();
  (*requests)->WithLabels({"200", "get"}).value()->Increment(3);
  (*requests)->WithLabels({"500", "get"}).value()->Increment();
  auto temperature = registry.AddGauge("test_temperature_celsius", "Current temperature.");
  ASSERT_TRUE(temperature.ok());
  (*temperature)->WithLabels({}).value()->Set(-2.5);
  auto latency = registry.AddHistogram("test_latency_seconds", "Latency.", {0.001, 0.01, 0.1});
  ASSERT_TRUE(latency.ok());
  Histogram* h = (*latency)->WithLabels({}).value();
  h->Observe(0.0005);  // first bucket
  h->Observe(0.001);   // le is inclusive: still the first bucket
  h->Observe(0.05);    // third
  h->Observe(7);       // +Inf only

  const std::string want =
      "# HELP test_requests_total Requests handled.\n"
      "# TYPE test_requests_total counter\n"
      "test_requests_total{code=\"200\",method=\"get\"} 3\n"
      "test_requests_total{code=\"500\",method=\"get\"} 1\n"
      "# HELP test_temperature_celsius Current temperature.\n"
      "# TYPE test_temperature_celsius gauge\n"
      "test_temperature_celsius -2.5\n"
      "# HELP test_latency_seconds Latency.\n"
      "# TYPE test_latency_seconds histogram\n"
      "test_latency_seconds_bucket{le=\"0.001\"} 2\n"
      "test_latency_seconds_bucket{le=\"0.01\"} 2\n"
      "test_latency_seconds_bucket{le=\"0.1\"} 3\n"
      "test_latency_seconds_bucket{le=\"+Inf\"} 4\n"
      "test_latency_seconds_sum 7.0515\n"
      "test_latency_seconds_count 4\n";
  EXPECT_EQ(registry.Serialize(), want);
}

TEST(Registry, UnlabeledFamiliesStartAtZeroAndLabeledOnesAppearOnFirstUse) {
  Registry registry;
  ASSERT_TRUE(registry.AddCounter("a", "A.").ok());
  auto b = registry.AddCounter("b_total", "B.", {"kind"});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(registry.Serialize(), "# HELP a_total A.\n# TYPE a_total counter\na_total 0\n");
  (*b)->WithLabels({"x"}).value()->Increment(0.5);
  EXPECT_NE(registry.Serialize().find("# TYPE b_total counter\nb_total{kind=\"x\"} 0.5\n"),
            std::string::npos);
}

TEST(Registry, EscapesLabelValuesAndHelp) {
  Registry registry;
  auto family = registry.AddGauge("test_escape", "Help with \\ and\nnewline and \"quotes\".",
                                  {"path"});
  ASSERT_TRUE(family.ok());
  (*family)->WithLabels({"C:\\dir \"x\"\nnext"}).value()->Set(1);
  EXPECT_EQ(registry.Serialize(),
            "# HELP test_escape Help with \\\\ and\\nnewline and \"quotes\".\n"
            "# TYPE test_escape gauge\n"
            "test_escape{path=\"C:\\\\dir \\\"x\\\"\\nnext\"} 1\n");
}

TEST(Registry, HistogramLabelsPutLeLast) {
  Registry registry;
  auto family = registry.AddHistogram("test_h", "H.", {1, 2}, {"stage"});
  ASSERT_TRUE(family.ok());
  (*family)->WithLabels({"prefill"}).value()->Observe(1.5);
  const std::string text = registry.Serialize();
  EXPECT_NE(text.find("test_h_bucket{stage=\"prefill\",le=\"1\"} 0\n"), std::string::npos);
  EXPECT_NE(text.find("test_h_bucket{stage=\"prefill\",le=\"2\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("test_h_bucket{stage=\"prefill\",le=\"+Inf\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("test_h_sum{stage=\"prefill\"} 1.5\n"), std::string::npos);
  EXPECT_NE(text.find("test_h_count{stage=\"prefill\"} 1\n"), std::string::npos);
}

TEST(Registry, RejectsInvalidAndDuplicateFamilies) {
  Registry registry;
  ASSERT_TRUE(registry.AddCounter("dup", "x").ok());
  EXPECT_EQ(registry.AddCounter("dup", "x").status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.AddCounter("dup_total", "x").status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.AddGauge("dup_total", "x").status().code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(registry.AddHistogram("lat", "x", {1}).ok());
  EXPECT_EQ(registry.AddGauge("lat_count", "x").status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.AddGauge("lat_bucket", "x").status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.AddGauge("lat", "x").status().code(), absl::StatusCode::kAlreadyExists);

  EXPECT_EQ(registry.AddGauge("bad-name", "x").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddGauge("", "x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddGauge("g1", "x", {"__reserved"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddGauge("g2", "x", {"a", "a"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h1", "x", {1}, {"le"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h2", "x", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h3", "x", {1, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h4", "x", {2, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h5", "x", {std::nan(""), 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A trailing +Inf is accepted and not duplicated.
  auto h6 = registry.AddHistogram("h6", "x", {1, std::numeric_limits<double>::infinity()});
  ASSERT_TRUE(h6.ok());
  (*h6)->WithLabels({}).value()->Observe(5);
  const std::string text = registry.Serialize();
  size_t inf_lines = 0;
  for (size_t p = text.find("h6_bucket{le=\"+Inf\"}"); p != std::string::npos;
       p = text.find("h6_bucket{le=\"+Inf\"}", p + 1)) {
    ++inf_lines;
  }
  EXPECT_EQ(inf_lines, 1u);
  // Failed registrations left nothing behind.
  EXPECT_EQ(text.find("bad-name"), std::string::npos);
  EXPECT_EQ(text.find("g2"), std::string::npos);
}

TEST(Registry, WithLabelsChecksArityAndReturnsTheSameChild) {
  Registry registry;
  auto family = registry.AddCounter("c", "C.", {"a", "b"});
  ASSERT_TRUE(family.ok());
  EXPECT_EQ((*family)->WithLabels({"x"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*family)->WithLabels({"x", "y", "z"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  Counter* first = (*family)->WithLabels({"x", "y"}).value();
  EXPECT_EQ((*family)->WithLabels({"x", "y"}).value(), first);
  EXPECT_NE((*family)->WithLabels({"y", "x"}).value(), first);
}

TEST(Counter, IgnoresNegativeAndNaN) {
  Counter c;
  c.Increment(2);
  c.Increment(-1);
  c.Increment(std::nan(""));
  EXPECT_EQ(c.Value(), 2);
}

TEST(Gauge, SetIncrementDecrement) {
  Gauge g;
  g.Set(10);
  g.Increment(2.5);
  g.Decrement();
  EXPECT_EQ(g.Value(), 11.5);
}

TEST(Histogram, CumulativeBucketsMatchABruteForceCount) {
  const std::vector<double> bounds = {0.0002, 0.001, 0.005, 0.02, 0.1, 1, 10};
  Histogram h(bounds);
  std::mt19937_64 rng(std::random_device{}());
  std::lognormal_distribution<double> dist(std::log(0.01), 2.5);
  std::vector<double> values(5000);
  double sum = 0;
  for (double& v : values) {
    v = dist(rng);
    sum += v;
    h.Observe(v);
  }
  h.Observe(std::nan(""));  // ignored
  const Histogram::Snapshot s = h.Collect();
  ASSERT_EQ(s.cumulative_counts.size(), bounds.size() + 1);
  for (size_t i = 0; i < bounds.size(); ++i) {
    uint64_t want = 0;
    for (double v : values) want += v <= bounds[i];
    EXPECT_EQ(s.cumulative_counts[i], want) << "le=" << bounds[i];
    if (i > 0) EXPECT_GE(s.cumulative_counts[i], s.cumulative_counts[i - 1]);
  }
  EXPECT_EQ(s.cumulative_counts.back(), values.size());
  EXPECT_EQ(s.count, values.size());
  EXPECT_NEAR(s.sum, sum, 1e-9 * std::fabs(sum));
}

TEST(BucketHelpers, ExponentialAndLinear) {
  EXPECT_EQ(ExponentialBuckets(1, 2, 4).value(), (std::vector<double>{1, 2, 4, 8}));
  EXPECT_EQ(LinearBuckets(0, 0.5, 3).value(), (std::vector<double>{0, 0.5, 1}));
  EXPECT_FALSE(ExponentialBuckets(0, 2, 4).ok());
  EXPECT_FALSE(ExponentialBuckets(1, 1, 4).ok());
  EXPECT_FALSE(LinearBuckets(0, 1, 0).ok());
}

// Many threads hit the same children while another thread scrapes: totals must be exact and
// every scrape must be internally consistent (cumulative buckets never decrease, +Inf == count).
TEST(Registry, ConcurrentUpdatesAreExact) {
  Registry registry;
  auto counters = registry.AddCounter("conc_events", "Events.", {"worker_parity"});
  auto gauge = registry.AddGauge("conc_level", "Level.");
  auto histogram = registry.AddHistogram("conc_latency_seconds", "Latency.", {0.001, 0.01, 0.1});
  ASSERT_TRUE(counters.ok() && gauge.ok() && histogram.ok());

  constexpr int kThreads = 8;
  constexpr int kIterations = 100000;
  std::atomic<bool> done{false};
  std::atomic<int> scrapes{0};
  std::thread scraper([&] {
    while (!done.load()) {
      const std::string text = registry.Serialize();
      const std::string inf_key = "conc_latency_seconds_bucket{le=\"+Inf\"} ";
      const std::string count_key = "conc_latency_seconds_count ";
      const size_t inf = text.find(inf_key);
      const size_t count = text.find(count_key);
      ASSERT_NE(inf, std::string::npos);
      ASSERT_NE(count, std::string::npos);
      const long long inf_value = std::stoll(text.substr(inf + inf_key.size()));
      const long long count_value = std::stoll(text.substr(count + count_key.size()));
      EXPECT_EQ(inf_value, count_value);
      scrapes.fetch_add(1);
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      // Each thread looks its child up itself, racing with the others on first creation.
      Counter* c = (*counters)->WithLabels({t % 2 ? "odd" : "even"}).value();
      Gauge* g = (*gauge)->WithLabels({}).value();
      Histogram* h = (*histogram)->WithLabels({}).value();
      for (int i = 0; i < kIterations; ++i) {
        c->Increment();
        g->Increment(2);
        g->Decrement();
        h->Observe((i % 4) * 0.005);  // 0, 0.005, 0.01, 0.015
      }
    });
  }
  for (std::thread& w : workers) w.join();
  done.store(true);
  scraper.join();
  EXPECT_GT(scrapes.load(), 0);

  const double per_parity = kThreads / 2.0 * kIterations;
  EXPECT_EQ((*counters)->WithLabels({"odd"}).value()->Value(), per_parity);
  EXPECT_EQ((*counters)->WithLabels({"even"}).value()->Value(), per_parity);
  EXPECT_EQ((*gauge)->WithLabels({}).value()->Value(), double(kThreads) * kIterations);
  const Histogram::Snapshot s = (*histogram)->WithLabels({}).value()->Collect();
  const uint64_t n = uint64_t(kThreads) * kIterations;
  EXPECT_EQ(s.count, n);
  EXPECT_EQ(s.cumulative_counts[0], n / 4);      // the zeros
  EXPECT_EQ(s.cumulative_counts[1], n * 3 / 4);  // 0, 0.005, 0.01
  EXPECT_EQ(s.cumulative_counts[2], n);
  EXPECT_NEAR(s.sum, n / 4.0 * (0.005 + 0.01 + 0.015), 1e-6);
}

}  // namespace
}  // namespace sbserve::metrics
