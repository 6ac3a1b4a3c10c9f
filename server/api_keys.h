// API keys: `--api-keys-file`, one key per line.
//
//   # KEY-or-sha256:HEX   [NAME]   [MAX_CONCURRENT]
//   sk-live-4f9c...          batch-jobs   8
//   sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae   web
//
// A key is given as itself or as `sha256:` and the hex SHA-256 of the key, so the file need not
// hold secrets. Clients send `authorization: Bearer KEY` (gRPC metadata or HTTP header). Only the
// SHA-256 of each key is kept in memory and presented keys are compared in constant time against
// every entry. NAME (default `key-N`, N the line's index among keys) is what logs show, never the
// key. MAX_CONCURRENT (0 or absent: no limit) caps that key's Generate/Complete calls in flight.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"

namespace sbserve {

struct ApiKey {
  std::array<uint8_t, 32> digest{};
  std::string name;
  int max_concurrent = 0;  // 0: unlimited
  std::atomic<int> in_flight{0};
};

class ApiKeys {
 public:
  static absl::StatusOr<std::unique_ptr<ApiKeys>> Load(const std::string& path);
  static absl::StatusOr<std::unique_ptr<ApiKeys>> Parse(absl::string_view text);

  // The key named by an `authorization` value ("Bearer KEY"); UNAUTHENTICATED when missing,
  // malformed or unknown (the message never repeats the presented key).
  absl::StatusOr<ApiKey*> Authenticate(absl::string_view authorization) const;

  // One more call in flight for `key`; RESOURCE_EXHAUSTED at its limit. Release() undoes it.
  static absl::Status Acquire(ApiKey* key);
  static void Release(ApiKey* key);

  size_t size() const { return keys_.size(); }

 private:
  std::vector<std::unique_ptr<ApiKey>> keys_;
};

}  // namespace sbserve
