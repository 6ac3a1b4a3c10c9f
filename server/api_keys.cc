#include "server/api_keys.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sbserve {
namespace {

std::array<uint8_t, 32> Sha256(absl::string_view s) {
  std::array<uint8_t, 32> d{};
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d.data());
  return d;
}

bool ParseHexDigest(absl::string_view hex, std::array<uint8_t, 32>* out) {
  if (hex.size() != 64) return false;
  for (size_t i = 0; i < 32; ++i) {
    int v = 0;
    for (int k = 0; k < 2; ++k) {
      const char c = absl::ascii_tolower(hex[2 * i + k]);
      int x = 0;
      if (c >= '0' && c <= '9') {
        x = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        x = c - 'a' + 10;
      } else {
        return false;
      }
      v = v * 16 + x;
    }
    (*out)[i] = static_cast<uint8_t>(v);
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--api-keys-file: cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  absl::StatusOr<std::unique_ptr<ApiKeys>> keys = Parse(ss.str());
  if (!keys.ok()) return absl::InvalidArgumentError(absl::StrCat("--api-keys-file ", path, ": ", keys.status().message()));
  return keys;
}

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::Parse(absl::string_view text) {
  auto keys = std::make_unique<ApiKeys>();
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (f.size() > 3) return absl::InvalidArgumentError(absl::StrCat("line ", line_no, ": KEY [NAME] [MAX_CONCURRENT]"));
    auto k = std::make_unique<ApiKey>();
    if (absl::ConsumePrefix(&f[0], "sha256:")) {
      if (!ParseHexDigest(f[0], &k->digest)) {
        return absl::InvalidArgumentError(absl::StrCat("line ", line_no, ": sha256: needs 64 hex digits"));
      }
    } else {
      k->digest = Sha256(f[0]);
    }
    k->name = f.size() >= 2 ? std::string(f[1]) : absl::StrCat("key-", keys->keys_.size());
    if (f.size() == 3 && (!absl::SimpleAtoi(f[2], &k->max_concurrent) || k->max_concurrent < 0)) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_no, ": MAX_CONCURRENT must be an integer >= 0"));
    }
    keys->keys_.push_back(std::move(k));
  }
  if (keys->keys_.empty()) return absl::InvalidArgumentError("no keys");
  return keys;
}

absl::StatusOr<ApiKey*> ApiKeys::Authenticate(absl::string_view authorization) const {
  authorization = absl::StripAsciiWhitespace(authorization);
  if (authorization.empty()) return absl::UnauthenticatedError("missing API key (authorization: Bearer KEY)");
  if (authorization.size() < 7 || !absl::EqualsIgnoreCase(authorization.substr(0, 7), "bearer ")) {
    return absl::UnauthenticatedError("authorization must be 'Bearer KEY'");
  }
  const std::array<uint8_t, 32> d = Sha256(absl::StripAsciiWhitespace(authorization.substr(7)));
  // Every entry is compared, in constant time, whatever matches.
  ApiKey* found = nullptr;
  for (const auto& k : keys_) {
    const bool eq = CRYPTO_memcmp(d.data(), k->digest.data(), d.size()) == 0;
    if (eq && found == nullptr) found = k.get();
  }
  if (found == nullptr) return absl::UnauthenticatedError("unknown API key");
  return found;
}

absl::Status ApiKeys::Acquire(ApiKey* key) {
  if (key == nullptr) return absl::OkStatus();
  int cur = key->in_flight.load();
  for (;;) {
    if (key->max_concurrent > 0 && cur >= key->max_concurrent) {
      return absl::ResourceExhaustedError(absl::StrCat("API key '", key->name, "' has ", cur,
                                                       " requests in flight, its limit"));
    }
    if (key->in_flight.compare_exchange_weak(cur, cur + 1)) return absl::OkStatus();
  }
}

void ApiKeys::Release(ApiKey* key) {
  if (key != nullptr) key->in_flight.fetch_sub(1);
}

}  // namespace sbserve
