// Strict decoding of request bytes. gRPC's callback API answers a message that protobuf cannot
// parse with UNIMPLEMENTED and an empty message; the service therefore takes raw bytes and
// decodes them here, so a malformed request gets INVALID_ARGUMENT saying what was wrong.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "google/protobuf/message.h"

namespace sbserve {

// Checks `bytes` against the wire format and `message`'s schema, then parses it into `message`.
// INVALID_ARGUMENT naming the problem: a truncated varint or length-delimited field, field number
// 0, an invalid or group wire type, a known field sent with the wrong wire type, a string field
// that is not valid UTF-8 (with its path, e.g. `stopping.stop[1]`), nesting deeper than 64.
// Unknown fields are skipped here (callers reject them by name afterwards).
absl::Status ParseStrict(std::string_view bytes, google::protobuf::Message* message);

// True when `s` is well-formed UTF-8 (no overlong forms, surrogates or code points > U+10FFFF).
bool IsValidUtf8(std::string_view s);

}  // namespace sbserve
