#include "client/bench.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <thread>
#include <unordered_set>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/bench_plot.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "nlohmann/json.hpp"
#include "sbserve/v1/sbserve.grpc.pb.h"

namespace sbserve::client {
namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }
double Sec(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Used when a RESOURCE_EXHAUSTED status carries no retry delay (the server's default).
constexpr double kDefaultRetryAfterMs = 500;
constexpr auto kAttemptDeadline = std::chrono::minutes(30);

const char* CodeName(grpc::StatusCode c) {
  switch (c) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::UNKNOWN: return "UNKNOWN";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND: return "NOT_FOUND";
    case grpc::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::ABORTED: return "ABORTED";
    case grpc::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::INTERNAL: return "INTERNAL";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::DATA_LOSS: return "DATA_LOSS";
    case grpc::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN_CODE";
  }
}

// Linear interpolation between the two nearest ranks.
double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0.0;
  const double rank = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - static_cast<double>(lo));
}

nlohmann::json Distribution(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const double mean = v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  return {{"count", v.size()},
          {"min", v.empty() ? 0.0 : v.front()},
          {"p50", Percentile(v, 50)},
          {"p90", Percentile(v, 90)},
          {"p95", Percentile(v, 95)},
          {"p99", Percentile(v, 99)},
          {"max", v.empty() ? 0.0 : v.back()},
          {"mean", mean}};
}

std::string RangeText(const LengthRange& r) {
  return r.lo == r.hi ? absl::StrCat(r.lo) : absl::StrCat(r.lo, ":", r.hi);
}

uint64_t Mix(uint64_t x) {  // splitmix64: independent-looking streams from (seed, index)
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

int Draw(std::mt19937_64& rng, const LengthRange& r) {
  if (r.lo >= r.hi) return r.lo;
  return std::uniform_int_distribution<int>(r.lo, r.hi)(rng);
}

std::string WordPrompt(int64_t i, int words) {
  static const char* kWords[] = {"the", "model", "serves", "tokens", "over", "a", "stream", "while", "many",
                                 "clients", "wait", "for", "their", "answers", "and", "batches", "grow"};
  std::string out = absl::StrCat("Request ", i, ":");
  for (int w = 0; w < words; ++w) absl::StrAppend(&out, " ", kWords[(i * 7 + w * 3) % 17]);
  return out;
}

struct WorkItem {
  std::string text;             // text prompt, or
  std::vector<int32_t> ids;     // token-id prompt
  int max_tokens = 0;
};

// Builds request i of the workload; deterministic in (options, i).
class Workload {
 public:
  static absl::StatusOr<Workload> Make(const BenchOptions& o, v1::SbServe::Stub& stub) {
    Workload w;
    w.o_ = &o;
    if (!o.input_jsonl.empty()) {
      if (absl::Status s = w.LoadJsonl(o.input_jsonl); !s.ok()) return s;
    }
    const bool token_prompts = o.input_jsonl.empty() && o.prompt_tokens.hi > 0;
    if (o.shared_prefixes > 0 && !token_prompts) {
      return absl::InvalidArgumentError("--shared-prefixes needs token-id prompts: give --prompt-tokens N (the suffix length)");
    }
    if (!token_prompts) return w;
    v1::ModelInfo info;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    grpc::Status st = stub.GetModelInfo(&ctx, {}, &info);
    if (!st.ok()) return absl::UnavailableError(absl::StrCat("GetModelInfo (for the vocabulary): ", st.error_message()));
    if (info.vocab_size() < 16) return absl::FailedPreconditionError("the model reports a vocabulary under 16 ids");
    // Special tokens sit at either end of most vocabularies; random ids come from the middle, and
    // never an eos id (the prompt would not end, but the model's reading of it would).
    const int64_t margin = std::min<int64_t>(1000, info.vocab_size() / 8);
    w.id_lo_ = static_cast<int32_t>(margin);
    w.id_hi_ = static_cast<int32_t>(info.vocab_size() - margin);
    w.eos_.insert(info.eos_token_ids().begin(), info.eos_token_ids().end());
    const int64_t longest = int64_t{o.prompt_tokens.hi} + (o.shared_prefixes > 0 ? o.prefix_tokens : 0) + o.max_tokens.hi;
    if (info.context_length() > 0 && longest > info.context_length()) {
      return absl::InvalidArgumentError(absl::StrCat("the longest request (", longest,
                                                     " tokens of prompt and output) exceeds the model's context of ",
                                                     info.context_length(), " tokens"));
    }
    w.token_prompts_ = true;
    for (int p = 0; p < o.shared_prefixes; ++p) {
      std::mt19937_64 rng(Mix(o.seed ^ Mix(0x5eed0000ULL + static_cast<uint64_t>(p))));
      w.prefixes_.push_back(w.RandomIds(rng, o.prefix_tokens));
    }
    return w;
  }

  // Number of distinct requests the input defines (JSONL lines), or 0 when unbounded.
  int64_t natural_count() const { return static_cast<int64_t>(lines_.size()); }

  WorkItem Get(int64_t i) const {
    WorkItem item;
    std::mt19937_64 rng(Mix(o_->seed ^ Mix(static_cast<uint64_t>(i))));
    item.max_tokens = Draw(rng, o_->max_tokens);
    if (!lines_.empty()) {
      const WorkItem& line = lines_[static_cast<size_t>(i) % lines_.size()];
      item.text = line.text;
      item.ids = line.ids;
      if (line.max_tokens > 0) item.max_tokens = line.max_tokens;
      return item;
    }
    if (!token_prompts_) {
      item.text = WordPrompt(i, o_->prompt_words);
      return item;
    }
    const int n = Draw(rng, o_->prompt_tokens);
    if (!prefixes_.empty()) item.ids = prefixes_[static_cast<size_t>(i) % prefixes_.size()];
    std::vector<int32_t> own = RandomIds(rng, n);
    item.ids.insert(item.ids.end(), own.begin(), own.end());
    return item;
  }

  std::string Describe() const {
    std::string out;
    if (!lines_.empty()) {
      out = absl::StrCat(o_->input_jsonl, " (", lines_.size(), " prompts)");
    } else if (token_prompts_) {
      out = absl::StrCat("token-id prompts of ", RangeText(o_->prompt_tokens), " tokens");
      if (!prefixes_.empty()) {
        absl::StrAppend(&out, " after one of ", prefixes_.size(), " shared prefixes of ", o_->prefix_tokens, " tokens");
      }
    } else {
      out = absl::StrCat("text prompts of ", o_->prompt_words, " words");
    }
    absl::StrAppend(&out, ", max_tokens ", RangeText(o_->max_tokens), lines_.empty() ? "" : " (unless the line sets it)",
                    ", ignore_eos");
    return out;
  }

 private:
  std::vector<int32_t> RandomIds(std::mt19937_64& rng, int n) const {
    std::uniform_int_distribution<int32_t> pick(id_lo_, id_hi_ - 1);
    std::vector<int32_t> ids;
    ids.reserve(static_cast<size_t>(n));
    while (static_cast<int>(ids.size()) < n) {
      const int32_t id = pick(rng);
      if (!eos_.count(id)) ids.push_back(id);
    }
    return ids;
  }

  absl::Status LoadJsonl(const std::string& path) {
    std::ifstream in(path);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = absl::StrCat(path, ":", n, ": ");
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError(where + "not a JSON object");
      WorkItem item;
      if (j.contains("prompt") == j.contains("prompt_ids")) {
        return absl::InvalidArgumentError(where + "needs exactly one of \"prompt\" (text) and \"prompt_ids\" (ids)");
      }
      if (j.contains("prompt")) {
        if (!j["prompt"].is_string()) return absl::InvalidArgumentError(where + "\"prompt\" is not a string");
        item.text = j["prompt"].get<std::string>();
      } else {
        if (!j["prompt_ids"].is_array() || j["prompt_ids"].empty()) {
          return absl::InvalidArgumentError(where + "\"prompt_ids\" is not a non-empty array");
        }
        for (const auto& id : j["prompt_ids"]) {
          if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
            return absl::InvalidArgumentError(where + "\"prompt_ids\" holds a value that is not a token id");
          }
          item.ids.push_back(id.get<int32_t>());
        }
      }
      if (j.contains("max_tokens")) {
        if (!j["max_tokens"].is_number_integer() || j["max_tokens"].get<int64_t>() < 1 ||
            j["max_tokens"].get<int64_t>() > INT32_MAX) {
          return absl::InvalidArgumentError(where + "\"max_tokens\" is not a positive integer");
        }
        item.max_tokens = j["max_tokens"].get<int>();
      }
      lines_.push_back(std::move(item));
    }
    if (lines_.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no prompts"));
    return absl::OkStatus();
  }

  const BenchOptions* o_ = nullptr;
  std::vector<WorkItem> lines_;
  bool token_prompts_ = false;
  int32_t id_lo_ = 0;
  int32_t id_hi_ = 0;
  std::unordered_set<int32_t> eos_;
  std::vector<std::vector<int32_t>> prefixes_;
};

struct Sample {
  int64_t index = 0;  // the workload's request number
  grpc::StatusCode code = grpc::OK;
  std::string error;
  double start_s = 0;  // first attempt, from the start of the run
  double ttft_ms = 0;  // from the first attempt: retry waits are part of what the client sees
  double e2e_ms = 0;
  double max_itl_ms = 0;
  int tokens = 0;
  int prompt_tokens = 0;  // usage.prompt_tokens of the last message
  int prompt_logprobs = 0;  // prompt_logprobs entries received (--prompt-logprobs)
  int retries = 0;
  double retry_wait_ms = 0;
  std::vector<double> itl_ms;                   // per token after the first
  std::vector<std::pair<double, int>> chunks;  // (seconds from the start of the run, tokens)
};

// The retry delay the server suggested: the RetryInfo detail of grpc-status-details-bin, else
// the retry-after-ms trailer, else the server's default.
double RetryAfterMs(const grpc::Status& st, const grpc::ClientContext& ctx) {
  google::rpc::Status details;
  if (!st.error_details().empty() && details.ParseFromString(st.error_details())) {
    for (const auto& any : details.details()) {
      google::rpc::RetryInfo info;
      if (any.UnpackTo(&info)) {
        return static_cast<double>(info.retry_delay().seconds()) * 1e3 + info.retry_delay().nanos() / 1e6;
      }
    }
  }
  const auto& trailers = ctx.GetServerTrailingMetadata();
  if (auto it = trailers.find("retry-after-ms"); it != trailers.end()) {
    double ms;
    if (absl::SimpleAtod(std::string(it->second.data(), it->second.size()), &ms) && ms >= 0) return ms;
  }
  return kDefaultRetryAfterMs;
}

class Runner {
 public:
  Runner(const std::shared_ptr<grpc::Channel>& channel, const BenchOptions& o, const Workload& w)
      : stub_(v1::SbServe::NewStub(channel)), o_(o), work_(w) {}

  void Run() {
    t0_ = Clock::now();
    std::thread progress;
    if (o_.progress) progress = std::thread([this] { Progress(); });
    if (o_.request_rate > 0) {
      OpenLoop();
    } else {
      ClosedLoop();
    }
    wall_s_ = Sec(Clock::now() - t0_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      finished_ = true;
    }
    cv_.notify_all();
    if (progress.joinable()) progress.join();
  }

  std::vector<Sample>& samples() { return samples_; }
  double wall_s() const { return wall_s_; }
  int max_in_flight() const { return max_in_flight_.load(); }

 private:
  bool DurationOver() const { return o_.duration_s > 0 && Sec(Clock::now() - t0_) >= o_.duration_s; }

  void ClosedLoop() {
    std::atomic<int64_t> next{0};
    std::vector<std::thread> workers;
    for (int c = 0; c < o_.concurrency; ++c) {
      workers.emplace_back([&] {
        for (;;) {
          if (DurationOver()) return;
          const int64_t i = next.fetch_add(1);
          if (i >= o_.requests) return;
          RunOne(i);
        }
      });
    }
    for (auto& t : workers) t.join();
  }

  // Arrivals on their own schedule; a worker per request in flight (grown as needed, capped by
  // --concurrency when set), so a slow server delays no arrival.
  void OpenLoop() {
    std::mt19937_64 rng(Mix(o_.seed ^ 0xa771a1ULL));
    std::exponential_distribution<double> gap(std::isinf(o_.request_rate) ? 1.0 : o_.request_rate);
    auto at = Clock::now();
    for (int64_t i = 0; i < o_.requests; ++i) {
      if (i > 0 && !std::isinf(o_.request_rate)) {
        at += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
        std::this_thread::sleep_until(at);
      }
      if (DurationOver()) break;
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(i);
      if (static_cast<int64_t>(queue_.size()) > idle_ + starting_ &&
          (o_.concurrency <= 0 || static_cast<int>(pool_.size()) < o_.concurrency)) {
        ++starting_;
        pool_.emplace_back([this] { Worker(); });
      }
      work_cv_.notify_one();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
    }
    work_cv_.notify_all();
    for (auto& t : pool_) t.join();
  }

  void Worker() {
    std::unique_lock<std::mutex> lock(mu_);
    --starting_;
    for (;;) {
      while (queue_.empty() && !closing_) {
        ++idle_;
        work_cv_.wait(lock);
        --idle_;
      }
      if (queue_.empty()) return;
      const int64_t i = queue_.front();
      queue_.pop_front();
      lock.unlock();
      RunOne(i);
      lock.lock();
    }
  }

  void RunOne(int64_t i) {
    const WorkItem item = work_.Get(i);
    v1::GenerateRequest req;
    if (item.ids.empty()) {
      req.set_text(item.text);
    } else {
      req.mutable_token_ids()->mutable_ids()->Assign(item.ids.begin(), item.ids.end());
    }
    req.mutable_sampling()->set_temperature(o_.temperature);
    if (o_.logprobs >= 0) req.set_logprobs(static_cast<uint32_t>(o_.logprobs));
    if (o_.prompt_logprobs >= 0) req.set_prompt_logprobs(static_cast<uint32_t>(o_.prompt_logprobs));
    req.mutable_sampling()->set_seed(o_.seed + static_cast<uint64_t>(i));
    req.mutable_stopping()->set_max_tokens(static_cast<uint32_t>(item.max_tokens));
    req.mutable_stopping()->set_ignore_eos(true);
    const int now_in_flight = in_flight_.fetch_add(1) + 1;
    for (int seen = max_in_flight_.load(); now_in_flight > seen && !max_in_flight_.compare_exchange_weak(seen, now_in_flight);) {
    }

    Sample s;
    s.index = i;
    const auto start = Clock::now();
    s.start_s = Sec(start - t0_);
    thread_local std::mt19937_64 jitter_rng(std::random_device{}());
    for (;;) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + kAttemptDeadline);
      auto last = Clock::now();
      auto reader = stub_->Generate(&ctx, req);
      v1::GenerateResponse msg;
      while (reader->Read(&msg)) {
        const auto now = Clock::now();
        if (msg.has_usage()) s.prompt_tokens = static_cast<int>(msg.usage().prompt_tokens());
        s.prompt_logprobs += msg.prompt_logprobs_size();
        const int n = msg.token_ids_size();
        if (n == 0) continue;
        if (s.tokens == 0) {
          s.ttft_ms = Ms(now - start);
          // Tokens that arrive together share the gap equally.
          for (int k = 1; k < n; ++k) s.itl_ms.push_back(0.0);
        } else {
          const double gap = Ms(now - last) / n;
          for (int k = 0; k < n; ++k) s.itl_ms.push_back(gap);
          s.max_itl_ms = std::max(s.max_itl_ms, gap);
        }
        s.chunks.emplace_back(Sec(now - t0_), n);
        s.tokens += n;
        tokens_.fetch_add(n);
        last = now;
      }
      const grpc::Status st = reader->Finish();
      if (st.ok()) break;
      if (st.error_code() == grpc::RESOURCE_EXHAUSTED && s.tokens == 0 && s.retries < o_.max_retries) {
        // Retry after the server's delay plus up to half of it again, so rejected clients do not
        // all return in the same instant.
        const double base = RetryAfterMs(st, ctx);
        const double wait = base * (1.0 + std::uniform_real_distribution<double>(0.0, 0.5)(jitter_rng));
        if (Ms(Clock::now() - start) + wait <= o_.max_retry_s * 1e3) {
          std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(wait));
          s.retries++;
          s.retry_wait_ms += wait;
          retries_.fetch_add(1);
          continue;
        }
      }
      s.code = st.error_code();
      s.error = st.error_message();
      failed_.fetch_add(1);
      break;
    }
    s.e2e_ms = Ms(Clock::now() - start);
    in_flight_.fetch_sub(1);
    done_.fetch_add(1);
    std::lock_guard<std::mutex> lock(samples_mu_);
    samples_.push_back(std::move(s));
  }

  // One line on stderr, rewritten in place twice a second.
  void Progress() {
    std::unique_lock<std::mutex> lock(mu_);
    int64_t last_tokens = 0;
    auto last_at = Clock::now();
    while (!cv_.wait_for(lock, std::chrono::milliseconds(500), [this] { return finished_; })) {
      const auto now = Clock::now();
      const int64_t tokens = tokens_.load();
      const double rate = static_cast<double>(tokens - last_tokens) / std::max(1e-9, Sec(now - last_at));
      last_tokens = tokens;
      last_at = now;
      std::string total = o_.requests == INT64_MAX ? "" : absl::StrCat("/", o_.requests);
      std::fprintf(stderr, "\r[%6.1f s] %lld%s done, %lld failed, %lld retries, %d in flight, %.0f output tok/s\033[K",
                   Sec(now - t0_), static_cast<long long>(done_.load()), total.c_str(),
                   static_cast<long long>(failed_.load()), static_cast<long long>(retries_.load()), in_flight_.load(),
                   rate);
      std::fflush(stderr);
    }
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  }

  std::unique_ptr<v1::SbServe::Stub> stub_;
  const BenchOptions& o_;
  const Workload& work_;
  Clock::time_point t0_;
  double wall_s_ = 0;

  std::mutex mu_;  // guards the open-loop queue and pool, and finished_
  std::condition_variable work_cv_;
  std::condition_variable cv_;
  std::deque<int64_t> queue_;
  std::vector<std::thread> pool_;
  int64_t idle_ = 0;
  int64_t starting_ = 0;
  bool closing_ = false;
  bool finished_ = false;

  std::atomic<int64_t> done_{0};
  std::atomic<int64_t> failed_{0};
  std::atomic<int64_t> retries_{0};
  std::atomic<int64_t> tokens_{0};
  std::atomic<int> in_flight_{0};
  std::atomic<int> max_in_flight_{0};

  std::mutex samples_mu_;
  std::vector<Sample> samples_;
};

// Bins of 1, 2 or 5 times a power of ten seconds, about 40 over the run.
double TimelineBin(double wall_s) {
  const double raw = std::max(wall_s / 40.0, 0.01);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0}) {
    if (raw <= m * mag) return m * mag;
  }
  return 10 * mag;
}

nlohmann::json Summarize(const BenchOptions& o, const std::string& workload, std::vector<Sample>& samples,
                         double wall_s, int max_in_flight) {
  std::sort(samples.begin(), samples.end(), [](const Sample& a, const Sample& b) { return a.start_s < b.start_s; });
  std::vector<double> ttft, itl, e2e, tpot, prompt, output;
  int64_t ok = 0, retried = 0, retries = 0, good = 0, prompt_total = 0, output_total = 0, prompt_scored = 0;
  double retry_wait_ms = 0;
  std::map<std::string, int64_t> failed_by_status;
  std::string first_error;
  const double bin_s = TimelineBin(wall_s);
  std::vector<double> timeline(static_cast<size_t>(std::ceil(wall_s / bin_s)) + 1, 0.0);
  for (const Sample& s : samples) {
    retries += s.retries;
    retried += s.retries > 0;
    retry_wait_ms += s.retry_wait_ms;
    if (s.code != grpc::OK) {
      failed_by_status[CodeName(s.code)]++;
      if (first_error.empty()) first_error = absl::StrCat(CodeName(s.code), ": ", s.error);
      continue;
    }
    ok++;
    output_total += s.tokens;
    prompt_total += s.prompt_tokens;
    prompt_scored += s.prompt_logprobs;
    prompt.push_back(s.prompt_tokens);
    output.push_back(s.tokens);
    ttft.push_back(s.ttft_ms);
    e2e.push_back(s.e2e_ms);
    itl.insert(itl.end(), s.itl_ms.begin(), s.itl_ms.end());
    if (s.tokens > 1) tpot.push_back((s.e2e_ms - s.ttft_ms) / (s.tokens - 1));
    const bool meets_ttft = o.slo_ttft_ms <= 0 || s.ttft_ms <= o.slo_ttft_ms;
    const bool meets_itl = o.slo_itl_ms <= 0 || s.max_itl_ms <= o.slo_itl_ms;
    good += meets_ttft && meets_itl;
    for (const auto& [t, n] : s.chunks) {
      timeline[std::min(timeline.size() - 1, static_cast<size_t>(t / bin_s))] += n;
    }
  }
  for (double& v : timeline) v /= bin_s;
  const double wall = std::max(wall_s, 1e-9);
  const int64_t failed = static_cast<int64_t>(samples.size()) - ok;

  nlohmann::json j;
  j["mode"] = o.request_rate > 0 ? "open" : "closed";
  if (o.request_rate > 0) {
    j["request_rate"] = std::isinf(o.request_rate) ? nlohmann::json("inf") : nlohmann::json(o.request_rate);
    j["concurrency"] = o.concurrency > 0 ? nlohmann::json(o.concurrency) : nlohmann::json(nullptr);
  } else {
    j["request_rate"] = nullptr;
    j["concurrency"] = o.concurrency;
  }
  j["workload"] = workload;
  j["prompt_tokens_range"] = RangeText(o.prompt_tokens);
  j["max_tokens_range"] = RangeText(o.max_tokens);
  j["max_tokens"] = o.max_tokens.hi;
  j["shared_prefixes"] = o.shared_prefixes;
  j["prefix_tokens"] = o.shared_prefixes > 0 ? o.prefix_tokens : 0;
  j["requests"] = static_cast<int64_t>(samples.size());
  j["succeeded"] = ok;
  j["failed"] = failed;
  j["failed_by_status"] = failed_by_status;
  j["retried_requests"] = retried;
  j["retries"] = retries;
  j["retry_wait_s"] = retry_wait_ms / 1e3;
  j["wall_s"] = wall_s;
  j["max_in_flight"] = max_in_flight;
  j["prompt_tokens"] = prompt_total;
  j["output_tokens"] = output_total;
  j["prompt_logprobs"] = prompt_scored;  // entries received: prompt tokens after the first, with --prompt-logprobs
  j["prompt_tokens_per_request"] = Distribution(prompt);
  j["output_tokens_per_request"] = Distribution(output);
  j["requests_per_s"] = static_cast<double>(ok) / wall;
  j["output_tokens_per_s"] = static_cast<double>(output_total) / wall;
  j["total_tokens_per_s"] = static_cast<double>(prompt_total + output_total) / wall;
  j["ttft_ms"] = Distribution(ttft);
  j["itl_ms"] = Distribution(itl);
  j["tpot_ms"] = Distribution(tpot);
  j["e2e_ms"] = Distribution(e2e);
  j["goodput"] = {{"slo_ttft_ms", o.slo_ttft_ms},
                  {"slo_itl_ms", o.slo_itl_ms},
                  {"requests", good},
                  {"requests_per_s", static_cast<double>(good) / wall}};
  j["timeline"] = {{"bin_s", bin_s}, {"output_tokens_per_s", timeline}};
  j["first_error"] = first_error;
  return j;
}

void PrintSummary(const nlohmann::json& j) {
  if (j["mode"] == "open") {
    const std::string rate =
        j["request_rate"].is_string() ? "all at once" : absl::StrFormat("%.2f requests/s (Poisson)", j["request_rate"].get<double>());
    std::printf("open loop, %s%s\n", rate.c_str(),
                j["concurrency"].is_null() ? "" : absl::StrCat(", at most ", j["concurrency"].get<int>(), " in flight").c_str());
  } else {
    std::printf("closed loop, concurrency %d\n", j["concurrency"].get<int>());
  }
  std::printf("workload: %s\n", j["workload"].get<std::string>().c_str());
  std::string failures;
  for (const auto& [code, n] : j["failed_by_status"].items()) {
    absl::StrAppend(&failures, failures.empty() ? " (" : ", ", code, " ", n.get<int64_t>());
  }
  if (!failures.empty()) failures += ")";
  std::printf("requests %lld: ok %lld, failed %lld%s; retried %lld (%lld retries, %.2f s waited in all)\n",
              j["requests"].get<long long>(), j["succeeded"].get<long long>(), j["failed"].get<long long>(),
              failures.c_str(), j["retried_requests"].get<long long>(), j["retries"].get<long long>(),
              j["retry_wait_s"].get<double>());
  const auto& pt = j["prompt_tokens_per_request"];
  const auto& ot = j["output_tokens_per_request"];
  std::printf("wall %.2f s, %.2f requests/s; prompt tokens/request mean %.1f (min %.0f, max %.0f), output mean %.1f "
              "(min %.0f, max %.0f)\n",
              j["wall_s"].get<double>(), j["requests_per_s"].get<double>(), pt["mean"].get<double>(),
              pt["min"].get<double>(), pt["max"].get<double>(), ot["mean"].get<double>(), ot["min"].get<double>(),
              ot["max"].get<double>());
  std::printf("output tokens %lld, %.1f tokens/s; prompt + output %.1f tokens/s\n", j["output_tokens"].get<long long>(),
              j["output_tokens_per_s"].get<double>(), j["total_tokens_per_s"].get<double>());
  const auto& g = j["goodput"];
  if (g["slo_ttft_ms"].get<double>() > 0 || g["slo_itl_ms"].get<double>() > 0) {
    std::printf("goodput (TTFT <= %g ms, every inter-token gap <= %g ms; 0 = no limit): %lld requests, %.2f requests/s\n",
                g["slo_ttft_ms"].get<double>(), g["slo_itl_ms"].get<double>(), g["requests"].get<long long>(),
                g["requests_per_s"].get<double>());
  }
  std::printf("%-8s %10s %10s %10s %10s %10s %10s %10s\n", "ms", "min", "p50", "p90", "p95", "p99", "max", "mean");
  for (const char* k : {"ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"}) {
    const auto& d = j[k];
    const std::string name(k);
    std::printf("%-8s %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f\n", name.substr(0, name.size() - 3).c_str(),
                d["min"].get<double>(), d["p50"].get<double>(), d["p90"].get<double>(), d["p95"].get<double>(),
                d["p99"].get<double>(), d["max"].get<double>(), d["mean"].get<double>());
  }
  if (!j["first_error"].get<std::string>().empty()) {
    std::printf("first error: %s\n", j["first_error"].get<std::string>().c_str());
  }
}

std::string Plot(const nlohmann::json& j, const std::vector<Sample>& samples) {
  std::vector<double> ttft, itl;
  for (const Sample& s : samples) {
    if (s.code != grpc::OK) continue;
    ttft.push_back(s.ttft_ms);
    itl.insert(itl.end(), s.itl_ms.begin(), s.itl_ms.end());
  }
  PlotSeries throughput{"output tok/s", "#2ca02c", {}};
  const double bin_s = j["timeline"]["bin_s"].get<double>();
  const auto& values = j["timeline"]["output_tokens_per_s"];
  for (size_t b = 0; b < values.size(); ++b) {
    // Each bin drawn flat over its interval.
    throughput.points.emplace_back(static_cast<double>(b) * bin_s, values[b].get<double>());
    throughput.points.emplace_back(static_cast<double>(b + 1) * bin_s, values[b].get<double>());
  }
  const std::string load =
      j["mode"] == "open"
          ? (j["request_rate"].is_string() ? std::string("all at once")
                                           : absl::StrFormat("%.2f req/s", j["request_rate"].get<double>()))
          : absl::StrCat("concurrency ", j["concurrency"].get<int>());
  const std::string title =
      absl::StrFormat("sbctl bench: %s, %lld ok / %lld failed, %.1f output tok/s", load, j["succeeded"].get<long long>(),
                      j["failed"].get<long long>(), j["output_tokens_per_s"].get<double>());
  return RenderSvg(title, {{"TTFT CDF", "ms", "fraction of requests", {{"TTFT", "#1f77b4", CdfPoints(ttft)}}},
                           {"Inter-token latency CDF", "ms", "fraction of tokens", {{"ITL", "#d62728", CdfPoints(itl)}}},
                           {"Output throughput", "s since start", "tokens/s", {throughput}}});
}

// The requests sent, in the --input format, so a run can be repeated exactly.
std::string SavedInput(const Workload& work, std::vector<int64_t> indices) {
  std::sort(indices.begin(), indices.end());
  std::string out;
  for (int64_t i : indices) {
    const WorkItem item = work.Get(i);
    nlohmann::json j;
    if (item.ids.empty()) {
      j["prompt"] = item.text;
    } else {
      j["prompt_ids"] = item.ids;
    }
    j["max_tokens"] = item.max_tokens;
    absl::StrAppend(&out, j.dump(), "\n");
  }
  return out;
}

bool WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  out.close();
  if (!out) {
    std::fprintf(stderr, "sbctl: cannot write %s\n", path.c_str());
    return false;
  }
  return true;
}

}  // namespace

int RunBench(const std::shared_ptr<grpc::Channel>& channel, const BenchOptions& options) {
  BenchOptions o = options;
  auto stub = v1::SbServe::NewStub(channel);
  absl::StatusOr<Workload> work = Workload::Make(o, *stub);
  if (!work.ok()) {
    std::fprintf(stderr, "sbctl: bench: %s\n", std::string(work.status().message()).c_str());
    return 2;
  }
  if (o.requests <= 0) {
    o.requests = o.duration_s > 0 ? INT64_MAX : work->natural_count() > 0 ? work->natural_count() : 200;
  }
  if (o.requests == INT64_MAX && std::isinf(o.request_rate)) {
    std::fprintf(stderr, "sbctl: bench: --request-rate inf needs --requests (all of them are sent at once)\n");
    return 2;
  }
  Runner runner(channel, o, *work);
  runner.Run();
  std::vector<Sample>& samples = runner.samples();
  const nlohmann::json j = Summarize(o, work->Describe(), samples, runner.wall_s(), runner.max_in_flight());
  bool written = true;
  if (o.json_file == "-") {
    std::printf("%s\n", j.dump().c_str());
  } else {
    PrintSummary(j);
    if (!o.json_file.empty()) written = WriteFile(o.json_file, j.dump(2) + "\n") && written;
  }
  if (!o.plot_file.empty()) written = WriteFile(o.plot_file, Plot(j, samples)) && written;
  if (!o.save_input_file.empty()) {
    std::vector<int64_t> sent;
    for (const Sample& s : samples) sent.push_back(s.index);
    written = WriteFile(o.save_input_file, SavedInput(*work, sent)) && written;
  }
  if (!written) return 2;
  return j["failed"].get<int64_t>() == 0 ? 0 : 1;
}

}  // namespace sbserve::client
