// `sbctl bench`: a closed-loop load generator measuring what clients see.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

namespace sbserve::client {

struct BenchOptions {
  int requests = 200;
  int concurrency = 32;
  int max_tokens = 64;
  int prompt_words = 32;   // approximate prompt length in words
  float temperature = 0.0f;
  bool json = false;
};

// Runs the load and prints percentiles; returns the process exit code.
int RunBench(const std::shared_ptr<grpc::Channel>& channel, const BenchOptions& options);

}  // namespace sbserve::client
