#include "engine/stop_matcher.h"

#include <algorithm>
#include <utility>

namespace sbserve {

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (auto& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

StopMatcher::Result StopMatcher::Push(std::string_view delta, Check check) {
  Result r;
  if (done_) return r;
  pending_.append(delta);
  if (check == Check::kRelease || stops_.empty()) {
    r.text = std::move(pending_);
    pending_.clear();
    no_match_before_ = 0;
    return r;
  }
  // Earliest occurrence of any stop string that ends in text pushed while matching is on (one that
  // lies wholly in text held before min_tokens does not count); on a tie at one position the
  // longer string wins so that "ab" and "abc" behave like the longest literal the user wrote.
  size_t best = std::string::npos;
  const std::string* best_stop = nullptr;
  for (const auto& s : stops_) {
    if (check != Check::kMatch) break;
    const size_t pos = pending_.find(s, no_match_before_ >= s.size() ? no_match_before_ - s.size() + 1 : 0);
    if (pos == std::string::npos) continue;
    if (pos < best || (pos == best && s.size() > best_stop->size())) {
      best = pos;
      best_stop = &s;
    }
  }
  if (best_stop != nullptr) {
    r.matched = true;
    r.stop = *best_stop;
    r.text = pending_.substr(0, best);
    pending_.clear();
    done_ = true;
    return r;
  }
  // Longest suffix of pending_ that is a proper prefix of a stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    const size_t max_len = std::min(s.size() - 1, pending_.size());
    for (size_t len = max_len; len > hold; --len) {
      if (std::string_view(pending_).substr(pending_.size() - len) == std::string_view(s).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  const size_t released = pending_.size() - hold;
  r.text = pending_.substr(0, released);
  pending_.erase(0, released);
  no_match_before_ = check == Check::kHoldOnly ? pending_.size() : no_match_before_ - std::min(no_match_before_, released);
  return r;
}

std::string StopMatcher::Flush() {
  std::string out = std::move(pending_);
  pending_.clear();
  no_match_before_ = 0;
  return out;
}

}  // namespace sbserve
