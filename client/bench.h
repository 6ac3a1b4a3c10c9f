// `sbctl bench`: a load generator measuring what clients see.
//
// Arrivals are closed-loop (C clients, each sending its next request when the previous one ends)
// or open-loop (Poisson arrivals at R requests/s, or all at once). Prompts are text, exact
// token-id prompts of fixed or uniformly drawn length (optionally behind N shared prefixes), or
// lines of a JSONL file. RESOURCE_EXHAUSTED is retried after the server's retry-after.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

namespace sbserve::client {

// A length that is fixed (lo == hi) or drawn uniformly from [lo, hi].
struct LengthRange {
  int lo = 0;
  int hi = 0;
};

struct BenchOptions {
  // How many requests and for how long: stop issuing at `requests` or after `duration_s` (0 = no
  // limit), whichever comes first; requests in flight then finish. requests 0 = no limit when
  // duration_s is set, else the JSONL file's line count, else 200. JSONL lines are used in turn.
  int64_t requests = 0;
  double duration_s = 0;
  // Closed loop: `concurrency` clients. Open loop (request_rate > 0, infinity = all at once):
  // Poisson arrivals; `concurrency` then caps requests in flight (0 = no cap).
  int concurrency = 32;
  double request_rate = 0;

  // Prompts: JSONL lines if `input_jsonl` is set; else token-id prompts if prompt_tokens.hi > 0;
  // else text of `prompt_words` words.
  std::string input_jsonl;
  LengthRange prompt_tokens;
  int prompt_words = 32;
  int shared_prefixes = 0;  // > 0: each token-id prompt is one of N prefixes of prefix_tokens ids + its own suffix
  int prefix_tokens = 0;
  LengthRange max_tokens{64, 64};  // output lengths (ignore_eos, so exact unless the context ends first)
  float temperature = 0.0f;
  uint64_t seed = 0;
  int logprobs = -1;  // >= 0: each request asks for its tokens' logprobs with this many alternatives
  int prompt_logprobs = -1;  // >= 0: each request also scores its prompt (GenerateRequest.prompt_logprobs)

  // RESOURCE_EXHAUSTED: retried up to max_retries times while the request's total time stays
  // within max_retry_s.
  int max_retries = 20;
  double max_retry_s = 120;

  // Goodput: requests with TTFT <= slo_ttft_ms and no inter-token gap above slo_itl_ms (0 = no SLO).
  double slo_ttft_ms = 0;
  double slo_itl_ms = 0;

  std::string json_file;  // "-" = the JSON summary alone on stdout, "" = none
  std::string plot_file;  // SVG of latency CDFs and output tokens/s over time, "" = none
  std::string save_input_file;  // the requests sent, as JSONL for input_jsonl, "" = none
  bool progress = false;  // a live progress line on stderr
};

// Runs the load, prints the summary (and writes --json / --plot); returns the process exit code:
// 0 when every request succeeded, 1 when any failed, 2 on a bad workload (message on stderr).
int RunBench(const std::shared_ptr<grpc::Channel>& channel, const BenchOptions& options);

}  // namespace sbserve::client
