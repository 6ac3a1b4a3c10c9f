// Server-sent events as the OpenAI door streams them, split for tests.
#pragma once

#include <string>
#include <vector>

namespace sbserve::testing {

// Appends the data of each event of `body` to `out`. Every event must be one "data: ...\n\n" line;
// false at the first one that is not, with `error` naming it.
inline bool SplitSse(const std::string& body, std::vector<std::string>* out, std::string* error) {
  size_t at = 0;
  while (at < body.size()) {
    const size_t end = body.find("\n\n", at);
    if (end == std::string::npos) {
      *error = "unterminated event: " + body.substr(at);
      return false;
    }
    const std::string event = body.substr(at, end - at);
    if (event.rfind("data: ", 0) != 0 || event.find('\n') != std::string::npos) {
      *error = "not one data line: " + event;
      return false;
    }
    out->push_back(event.substr(6));
    at = end + 2;
  }
  return true;
}

}  // namespace sbserve::testing
