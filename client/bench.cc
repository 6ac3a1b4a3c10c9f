#include "client/bench.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <numeric>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "sbserve/v1/sbserve.grpc.pb.h"

namespace sbserve::client {
namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

std::string Prompt(int i, int words) {
  static const char* kWords[] = {"the", "model", "serves", "tokens", "over", "a", "stream", "while", "many",
                                 "clients", "wait", "for", "their", "answers", "and", "batches", "grow"};
  std::string out = absl::StrCat("Request ", i, ":");
  for (int w = 0; w < words; ++w) absl::StrAppend(&out, " ", kWords[(i * 7 + w * 3) % 17]);
  return out;
}

struct Sample {
  bool ok = false;
  std::string error;
  double ttft_ms = 0;
  double e2e_ms = 0;
  int tokens = 0;
  std::vector<double> itl_ms;  // per token after the first
};

}  // namespace

int RunBench(const std::shared_ptr<grpc::Channel>& channel, const BenchOptions& o) {
  auto stub = v1::SbServe::NewStub(channel);
  std::atomic<int> next{0};
  std::mutex mu;
  std::vector<Sample> samples;
  samples.reserve(o.requests);
  const auto t0 = Clock::now();
  std::vector<std::thread> workers;
  for (int w = 0; w < o.concurrency; ++w) {
    workers.emplace_back([&] {
      for (int i = next.fetch_add(1); i < o.requests; i = next.fetch_add(1)) {
        v1::GenerateRequest req;
        req.set_text(Prompt(i, o.prompt_words));
        req.mutable_sampling()->set_temperature(o.temperature);
        req.mutable_sampling()->set_seed(static_cast<uint64_t>(i));
        req.mutable_stopping()->set_max_tokens(static_cast<uint32_t>(o.max_tokens));
        req.mutable_stopping()->set_ignore_eos(true);
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
        Sample s;
        const auto start = Clock::now();
        auto last = start;
        auto reader = stub->Generate(&ctx, req);
        v1::GenerateResponse msg;
        while (reader->Read(&msg)) {
          const auto now = Clock::now();
          const int n = msg.token_ids_size();
          if (n == 0) continue;
          if (s.tokens == 0) {
            s.ttft_ms = Ms(now - start);
            // Tokens that arrive together share the gap equally.
            for (int k = 1; k < n; ++k) s.itl_ms.push_back(0.0);
          } else {
            const double gap = Ms(now - last) / n;
            for (int k = 0; k < n; ++k) s.itl_ms.push_back(gap);
          }
          s.tokens += n;
          last = now;
        }
        grpc::Status st = reader->Finish();
        s.e2e_ms = Ms(Clock::now() - start);
        s.ok = st.ok();
        if (!st.ok()) s.error = st.error_message();
        std::lock_guard<std::mutex> lock(mu);
        samples.push_back(std::move(s));
      }
    });
  }
  for (auto& t : workers) t.join();
  const double wall_s = std::chrono::duration<double>(Clock::now() - t0).count();

  std::vector<double> ttft, itl, e2e, tpot;
  int ok = 0;
  int64_t tokens = 0;
  std::string first_error;
  for (const Sample& s : samples) {
    if (!s.ok) {
      if (first_error.empty()) first_error = s.error;
      continue;
    }
    ok++;
    tokens += s.tokens;
    ttft.push_back(s.ttft_ms);
    e2e.push_back(s.e2e_ms);
    itl.insert(itl.end(), s.itl_ms.begin(), s.itl_ms.end());
    if (s.tokens > 1) tpot.push_back((s.e2e_ms - s.ttft_ms) / (s.tokens - 1));
  }
  nlohmann::json j;
  j["requests"] = o.requests;
  j["concurrency"] = o.concurrency;
  j["max_tokens"] = o.max_tokens;
  j["succeeded"] = ok;
  j["failed"] = o.requests - ok;
  j["wall_s"] = wall_s;
  j["output_tokens"] = tokens;
  j["output_tokens_per_s"] = tokens / wall_s;
  j["requests_per_s"] = ok / wall_s;
  auto pct = [&](const char* name, const std::vector<double>& v) {
    j[name] = {{"p50", Percentile(v, 50)}, {"p90", Percentile(v, 90)}, {"p99", Percentile(v, 99)},
               {"mean", v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / v.size()}};
  };
  pct("ttft_ms", ttft);
  pct("itl_ms", itl);
  pct("tpot_ms", tpot);
  pct("e2e_ms", e2e);
  if (o.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("requests %d (ok %d, failed %d) at concurrency %d, max_tokens %d, wall %.2f s\n", o.requests, ok,
                o.requests - ok, o.concurrency, o.max_tokens, wall_s);
    std::printf("output tokens %lld, %.1f tokens/s, %.2f requests/s\n", static_cast<long long>(tokens),
                tokens / wall_s, ok / wall_s);
    std::printf("%-8s %10s %10s %10s %10s\n", "ms", "p50", "p90", "p99", "mean");
    for (const char* k : {"ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"}) {
      std::printf("%-8s %10.2f %10.2f %10.2f %10.2f\n", std::string(k).substr(0, std::string(k).size() - 3).c_str(),
                  j[k]["p50"].get<double>(), j[k]["p90"].get<double>(), j[k]["p99"].get<double>(),
                  j[k]["mean"].get<double>());
    }
    if (!first_error.empty()) std::printf("first error: %s\n", first_error.c_str());
  }
  return ok == o.requests ? 0 : 1;
}

}  // namespace sbserve::client
