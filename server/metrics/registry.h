// A small Prometheus client: counters, gauges and histograms grouped in labelled families, and a
// registry that renders them in the text exposition format 0.0.4.
//
// Hot path: Counter::Increment, Gauge::Set/Increment/Decrement and Histogram::Observe are a few
// relaxed atomic operations and never lock. Family::WithLabels and the Registry::Add* calls take a
// mutex; look children up once and keep the pointer (children live as long as the registry).
//
//   Registry registry;
//   auto requests = registry.AddCounter("sbserve_requests", "Requests finished.", {"reason"});
//   Counter* stopped = (*requests)->WithLabels({"stop"}).value();
//   stopped->Increment();
//   std::string text = registry.Serialize();
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sbserve::metrics {

enum class MetricType { kCounter, kGauge, kHistogram };

// A monotonically increasing value, exposed with a `_total` suffix.
class Counter {
 public:
  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  // Adds `amount`. Negative and NaN amounts are ignored: a counter never goes down.
  void Increment(double amount = 1.0);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// A value that goes up and down.
class Gauge {
 public:
  Gauge() = default;
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Increment(double amount = 1.0) { value_.fetch_add(amount, std::memory_order_relaxed); }
  void Decrement(double amount = 1.0) { value_.fetch_sub(amount, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// A histogram with fixed bucket upper bounds (an implicit +Inf bucket is always last).
class Histogram {
 public:
  // `upper_bounds` must be finite and strictly increasing; Family checks this before constructing.
  explicit Histogram(std::vector<double> upper_bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  // Counts `value` in the first bucket whose bound is >= value (Prometheus' `le`). NaN is ignored.
  void Observe(double value);

  struct Snapshot {
    std::vector<double> upper_bounds;         // finite bounds; the +Inf bucket is implicit
    std::vector<uint64_t> cumulative_counts;  // upper_bounds.size() + 1 entries, last is +Inf
    uint64_t count = 0;                       // equals cumulative_counts.back()
    double sum = 0.0;
  };
  // Reads the buckets without stopping writers. `count` is derived from the buckets so that the
  // +Inf bucket and _count always agree; `sum` may include an observation whose bucket increment
  // is not yet visible (the usual trade-off of lock-free histograms).
  Snapshot Collect() const;

 private:
  const std::vector<double> upper_bounds_;
  // Per-bucket (non-cumulative) counts; index upper_bounds_.size() is the +Inf bucket.
  std::unique_ptr<std::atomic<uint64_t>[]> bucket_counts_;
  std::atomic<double> sum_{0.0};
};

// Bucket helpers. Both return an error for non-positive counts or invalid parameters.
// {start, start*factor, ..., start*factor^(count-1)}, start > 0, factor > 1.
absl::StatusOr<std::vector<double>> ExponentialBuckets(double start, double factor, int count);
// {start, start+width, ..., start+width*(count-1)}, width > 0.
absl::StatusOr<std::vector<double>> LinearBuckets(double start, double width, int count);

// Type-independent part of a family; the registry serializes families through this interface.
class FamilyBase {
 public:
  virtual ~FamilyBase() = default;
  // The name as it appears in HELP and TYPE lines (for counters, including `_total`).
  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  virtual MetricType type() const = 0;
  // Appends this family's HELP, TYPE and sample lines; nothing if it has no children yet.
  virtual void AppendText(std::string* out) const = 0;

 protected:
  FamilyBase(std::string name, std::string help, std::vector<std::string> label_names)
      : name_(std::move(name)), help_(std::move(help)), label_names_(std::move(label_names)) {}

 private:
  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
};

// All series of one metric: one child per distinct tuple of label values.
template <typename T>
class Family final : public FamilyBase {
 public:
  // Returns the child for `label_values` (one value per label name, in the registered order),
  // creating it on first use. INVALID_ARGUMENT when the number of values is wrong.
  absl::StatusOr<T*> WithLabels(const std::vector<std::string>& label_values);

  MetricType type() const override;
  void AppendText(std::string* out) const override;

 private:
  friend class Registry;
  Family(std::string name, std::string help, std::vector<std::string> label_names,
         std::vector<double> bucket_bounds);

  const std::vector<double> bucket_bounds_;  // histograms only
  mutable std::mutex mu_;
  // Ordered by label values so the exposition is deterministic.
  std::map<std::vector<std::string>, std::unique_ptr<T>> children_;
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;

// Owns metric families and renders them. Families appear in registration order.
class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Counter `name` is exposed as `name_total` (a name that already ends in `_total` is kept).
  // A family without label names gets its single child at once, so it is exposed as 0 from the
  // first scrape. Errors (INVALID_ARGUMENT): invalid metric or label name, repeated label name,
  // `le` as a histogram label, bad buckets; ALREADY_EXISTS: a name, or a series name a histogram
  // or counter derives from it (`_bucket`, `_sum`, `_count`, `_total`), is already taken.
  absl::StatusOr<CounterFamily*> AddCounter(std::string_view name, std::string_view help,
                                            std::vector<std::string> label_names = {});
  absl::StatusOr<GaugeFamily*> AddGauge(std::string_view name, std::string_view help,
                                        std::vector<std::string> label_names = {});
  // `bucket_bounds`: finite, strictly increasing upper bounds; a trailing +Inf may be given and is
  // dropped (the +Inf bucket is always exposed).
  absl::StatusOr<HistogramFamily*> AddHistogram(std::string_view name, std::string_view help,
                                                std::vector<double> bucket_bounds,
                                                std::vector<std::string> label_names = {});

  // Registers `collect`, called at the start of every Serialize() to refresh values that are
  // read rather than pushed (process and device gauges). Collectors may run concurrently when
  // two scrapes overlap, so they must be thread-safe; they must not call Serialize().
  void AddCollector(std::function<void()> collect);

  // The whole registry in text format 0.0.4; every line ends with a line feed. Safe to call
  // while other threads update metrics or register families. Runs the collectors first.
  std::string Serialize() const;

 private:
  absl::Status CheckNewFamily(std::string_view name, const std::vector<std::string>& label_names,
                              const std::vector<std::string>& series_names,
                              bool is_histogram) const;
  template <typename T>
  absl::StatusOr<Family<T>*> Add(std::string name, std::string_view help,
                                 std::vector<std::string> label_names,
                                 std::vector<double> bucket_bounds,
                                 std::vector<std::string> series_names);

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<FamilyBase>> families_;
  std::set<std::string, std::less<>> taken_names_;  // every series name any family exposes
  std::vector<std::function<void()>> collectors_;   // guarded by mu_; run without it held
};

}  // namespace sbserve::metrics
