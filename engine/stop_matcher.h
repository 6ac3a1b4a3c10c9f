// Stop-string matching on streamed text.
//
// Text arrives in deltas (one per token, as the incremental detokenizer produces it). A stop
// string may straddle any number of deltas, so the matcher holds back the longest suffix of the
// unreleased text that is a prefix of some stop string: that text might still turn into a match
// and must not reach the client yet. Everything before it is safe to release.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace sbserve {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops = {});

  struct Result {
    std::string text;      // releasable text (ends before the stop string when matched)
    bool matched = false;
    std::string stop;      // the stop string that matched
  };

  enum class Check {
    kMatch,     // hold back possible stop prefixes and stop at a complete stop string
    kHoldOnly,  // hold back possible stop prefixes, but match nothing (before min_tokens): a stop
                // string that completes once matching is on is found even where it began earlier
    kRelease,   // neither: everything pending goes out (the text of the token that ended the request)
  };
  // Appends `delta`. After a match the matcher discards everything that follows.
  Result Push(std::string_view delta, Check check = Check::kMatch);
  // Releases the held-back text (the stream ended without a match).
  std::string Flush();

  bool empty() const { return stops_.empty(); }
  size_t held() const { return pending_.size(); }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  size_t no_match_before_ = 0;  // pending_[0, this) came before matching was on: no match ends there
  bool done_ = false;
};

}  // namespace sbserve
