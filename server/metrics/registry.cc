#include "server/metrics/registry.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "server/metrics/text_format.h"

namespace sbserve::metrics {
namespace {

// `{a="x",b="y"` without the closing brace, or "" when there are no labels and no `le`.
void AppendLabels(const std::vector<std::string>& names, const std::vector<std::string>& values,
                  const std::string* le, std::string* out) {
  if (names.empty() && le == nullptr) return;
  out->push_back('{');
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out->push_back(',');
    Append(out, names[i], "=\"", EscapeLabelValue(values[i]), "\"");
  }
  if (le != nullptr) {
    if (!names.empty()) out->push_back(',');
    Append(out, "le=\"", *le, "\"");
  }
  out->push_back('}');
}

void AppendSample(std::string_view name, const std::vector<std::string>& label_names,
                  const std::vector<std::string>& label_values, const std::string* le,
                  double value, std::string* out) {
  out->append(name);
  AppendLabels(label_names, label_values, le, out);
  Append(out, " ", FormatValue(value), "\n");
}

std::string_view TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter: return "counter";
    case MetricType::kGauge: return "gauge";
    case MetricType::kHistogram: return "histogram";
  }
  return "untyped";
}

absl::Status CheckBuckets(const std::vector<double>& bounds) {
  if (bounds.empty()) {
    return absl::InvalidArgumentError("a histogram needs at least one finite bucket bound");
  }
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i])) {
      return absl::InvalidArgumentError(
          Cat("bucket bound ", std::to_string(i), " is not finite (+Inf is implicit and only allowed last)"));
    }
    if (i > 0 && !(bounds[i] > bounds[i - 1])) {
      return absl::InvalidArgumentError(Cat("bucket bounds must be strictly increasing: ",
                                                     FormatValue(bounds[i - 1]), " then ",
                                                     FormatValue(bounds[i])));
    }
  }
  return absl::OkStatus();
}

}  // namespace

void Counter::Increment(double amount) {
  if (!(amount >= 0.0)) return;  // also rejects NaN
  value_.fetch_add(amount, std::memory_order_relaxed);
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)),
      bucket_counts_(new std::atomic<uint64_t>[upper_bounds_.size() + 1]) {
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) bucket_counts_[i].store(0);
}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;
  // First bound >= value: the `le` bucket that value belongs to (end() means +Inf).
  const size_t index = static_cast<size_t>(
      std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value) - upper_bounds_.begin());
  bucket_counts_[index].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Collect() const {
  Snapshot snapshot;
  snapshot.upper_bounds = upper_bounds_;
  snapshot.cumulative_counts.resize(upper_bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) {
    running += bucket_counts_[i].load(std::memory_order_relaxed);
    snapshot.cumulative_counts[i] = running;
  }
  snapshot.count = running;
  snapshot.sum = sum_.load(std::memory_order_relaxed);
  return snapshot;
}

absl::StatusOr<std::vector<double>> ExponentialBuckets(double start, double factor, int count) {
  if (count < 1 || !(start > 0.0) || !(factor > 1.0)) {
    return absl::InvalidArgumentError("ExponentialBuckets needs count >= 1, start > 0, factor > 1");
  }
  std::vector<double> bounds;
  bounds.reserve(count);
  double bound = start;
  for (int i = 0; i < count; ++i, bound *= factor) bounds.push_back(bound);
  return bounds;
}

absl::StatusOr<std::vector<double>> LinearBuckets(double start, double width, int count) {
  if (count < 1 || !(width > 0.0) || !std::isfinite(start)) {
    return absl::InvalidArgumentError("LinearBuckets needs count >= 1, width > 0, finite start");
  }
  std::vector<double> bounds;
  bounds.reserve(count);
  for (int i = 0; i < count; ++i) bounds.push_back(start + width * i);
  return bounds;
}

template <typename T>
Family<T>::Family(std::string name, std::string help, std::vector<std::string> label_names,
                  std::vector<double> bucket_bounds)
    : FamilyBase(std::move(name), std::move(help), std::move(label_names)),
      bucket_bounds_(std::move(bucket_bounds)) {}

template <typename T>
absl::StatusOr<T*> Family<T>::WithLabels(const std::vector<std::string>& label_values) {
  if (label_values.size() != label_names().size()) {
    return absl::InvalidArgumentError(Cat(name(), " takes ", std::to_string(label_names().size()),
                                   " label values, got ", std::to_string(label_values.size())));
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = children_.try_emplace(label_values);
  if (inserted) {
    if constexpr (std::is_same_v<T, Histogram>) {
      it->second = std::make_unique<Histogram>(bucket_bounds_);
    } else {
      it->second = std::make_unique<T>();
    }
  }
  return it->second.get();
}

template <>
MetricType Family<Counter>::type() const { return MetricType::kCounter; }
template <>
MetricType Family<Gauge>::type() const { return MetricType::kGauge; }
template <>
MetricType Family<Histogram>::type() const { return MetricType::kHistogram; }

template <typename T>
void Family<T>::AppendText(std::string* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (children_.empty()) return;
  Append(out, "# HELP ", name(), " ", EscapeHelp(help()), "\n");
  Append(out, "# TYPE ", name(), " ", TypeName(type()), "\n");
  for (const auto& [values, child] : children_) {
    if constexpr (std::is_same_v<T, Histogram>) {
      const Histogram::Snapshot s = child->Collect();
      const std::string bucket_name = Cat(name(), "_bucket");
      for (size_t i = 0; i < s.cumulative_counts.size(); ++i) {
        const std::string le =
            i < s.upper_bounds.size() ? FormatValue(s.upper_bounds[i]) : std::string("+Inf");
        AppendSample(bucket_name, label_names(), values, &le,
                     static_cast<double>(s.cumulative_counts[i]), out);
      }
      AppendSample(Cat(name(), "_sum"), label_names(), values, nullptr, s.sum, out);
      AppendSample(Cat(name(), "_count"), label_names(), values, nullptr,
                   static_cast<double>(s.count), out);
    } else {
      AppendSample(name(), label_names(), values, nullptr, child->Value(), out);
    }
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

absl::Status Registry::CheckNewFamily(std::string_view name,
                                      const std::vector<std::string>& label_names,
                                      const std::vector<std::string>& series_names,
                                      bool is_histogram) const {
  if (!IsValidMetricName(name)) {
    return absl::InvalidArgumentError(
        Cat("invalid metric name \"", name, "\" (want [a-zA-Z_:][a-zA-Z0-9_:]*)"));
  }
  for (size_t i = 0; i < label_names.size(); ++i) {
    const std::string& label = label_names[i];
    if (!IsValidLabelName(label)) {
      return absl::InvalidArgumentError(Cat(
          "metric ", name, ": invalid label name \"", label,
          "\" (want [a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"));
    }
    if (is_histogram && label == "le") {
      return absl::InvalidArgumentError(
          Cat("metric ", name, ": \"le\" is reserved for histogram buckets"));
    }
    if (std::find(label_names.begin(), label_names.begin() + i, label) !=
        label_names.begin() + i) {
      return absl::InvalidArgumentError(
          Cat("metric ", name, ": label name \"", label, "\" repeated"));
    }
  }
  for (const std::string& series : series_names) {
    if (taken_names_.contains(series)) {
      return absl::AlreadyExistsError(Cat(
          "metric ", name, ": the name \"", series, "\" is already used by another family"));
    }
  }
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<Family<T>*> Registry::Add(std::string name, std::string_view help,
                                         std::vector<std::string> label_names,
                                         std::vector<double> bucket_bounds,
                                         std::vector<std::string> series_names) {
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status status =
      CheckNewFamily(name, label_names, series_names, std::is_same_v<T, Histogram>);
  if (!status.ok()) return status;
  const bool unlabeled = label_names.empty();
  auto family = std::unique_ptr<Family<T>>(new Family<T>(
      std::move(name), std::string(help), std::move(label_names), std::move(bucket_bounds)));
  if (unlabeled) {
    absl::StatusOr<T*> child = family->WithLabels({});
    if (!child.ok()) return child.status();
  }
  Family<T>* result = family.get();
  for (std::string& series : series_names) taken_names_.insert(std::move(series));
  families_.push_back(std::move(family));
  return result;
}

absl::StatusOr<CounterFamily*> Registry::AddCounter(std::string_view name, std::string_view help,
                                                    std::vector<std::string> label_names) {
  std::string_view base = name;
  if (base.ends_with("_total")) base.remove_suffix(6);
  std::string exposed = Cat(base, "_total");
  // Reserve the base name too: OpenMetrics and newer Prometheus versions treat it as the family.
  std::vector<std::string> series = {std::string(base), exposed};
  return Add<Counter>(std::move(exposed), help, std::move(label_names), {}, std::move(series));
}

absl::StatusOr<GaugeFamily*> Registry::AddGauge(std::string_view name, std::string_view help,
                                                std::vector<std::string> label_names) {
  return Add<Gauge>(std::string(name), help, std::move(label_names), {}, {std::string(name)});
}

absl::StatusOr<HistogramFamily*> Registry::AddHistogram(std::string_view name,
                                                        std::string_view help,
                                                        std::vector<double> bucket_bounds,
                                                        std::vector<std::string> label_names) {
  if (!bucket_bounds.empty() && std::isinf(bucket_bounds.back()) && bucket_bounds.back() > 0) {
    bucket_bounds.pop_back();
  }
  absl::Status buckets_ok = CheckBuckets(bucket_bounds);
  if (!buckets_ok.ok()) {
    return absl::InvalidArgumentError(Cat("metric ", name, ": ", std::string(buckets_ok.message())));
  }
  std::vector<std::string> series = {std::string(name), Cat(name, "_bucket"),
                                     Cat(name, "_sum"), Cat(name, "_count")};
  return Add<Histogram>(std::string(name), help, std::move(label_names), std::move(bucket_bounds),
                        std::move(series));
}

void Registry::AddCollector(std::function<void()> collect) {
  if (!collect) return;
  std::lock_guard<std::mutex> lock(mu_);
  collectors_.push_back(std::move(collect));
}

std::string Registry::Serialize() const {
  std::vector<std::function<void()>> collectors;
  {
    std::lock_guard<std::mutex> lock(mu_);
    collectors = collectors_;
  }
  // Outside the lock: a collector sets gauges and may create labelled children.
  for (const auto& collect : collectors) collect();
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  out.reserve(4096);
  for (const auto& family : families_) family->AppendText(&out);
  return out;
}

}  // namespace sbserve::metrics
