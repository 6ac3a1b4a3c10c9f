// A request's event sink for engine tests: collects the token ids and logprobs of every event and
// keeps the final one; Wait() blocks until it arrives.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "engine/request.h"

namespace sbserve::testing {

class Collector {
 public:
  EventSink Sink() {
    return [this](GenerateEvent e) {
      std::lock_guard<std::mutex> lock(mu_);
      ids_.insert(ids_.end(), e.token_ids.begin(), e.token_ids.end());
      logprobs_.insert(logprobs_.end(), e.logprobs.begin(), e.logprobs.end());
      prompt_logprobs_.insert(prompt_logprobs_.end(), e.prompt_logprobs.begin(), e.prompt_logprobs.end());
      if (e.finished) {
        final_ = std::move(e);
        done_ = true;
        cv_.notify_all();
      }
    };
  }
  bool Wait(absl::Duration timeout = absl::Seconds(10)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] { return done_; });
  }
  bool WaitUntil(absl::Time deadline) { return Wait(std::max(deadline - absl::Now(), absl::ZeroDuration())); }
  bool done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }
  GenerateEvent final() {
    std::lock_guard<std::mutex> lock(mu_);
    return final_;
  }
  size_t num_ids() {
    std::lock_guard<std::mutex> lock(mu_);
    return ids_.size();
  }
  std::vector<int32_t> ids() {
    std::lock_guard<std::mutex> lock(mu_);
    return ids_;
  }
  std::vector<StepLogprobs> logprobs() {
    std::lock_guard<std::mutex> lock(mu_);
    return logprobs_;
  }
  std::vector<StepLogprobs> prompt_logprobs() {
    std::lock_guard<std::mutex> lock(mu_);
    return prompt_logprobs_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int32_t> ids_;
  std::vector<StepLogprobs> logprobs_;
  std::vector<StepLogprobs> prompt_logprobs_;
  GenerateEvent final_;
  bool done_ = false;
};

}  // namespace sbserve::testing
