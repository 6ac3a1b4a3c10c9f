// Conversions between the sbserve.v1 messages and the engine's types, with request validation.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "engine/request.h"
#include "sbserve/v1/sbserve.pb.h"

namespace sbserve {

// INVALID_ARGUMENT / OUT_OF_RANGE naming the field for anything malformed, including fields this
// server version does not know (unknown field numbers).
absl::StatusOr<GenerateRequest> RequestFromProto(const v1::GenerateRequest& proto);

// Appends an event's delta (ids, text, logprobs) and, for a final event, the finish fields.
void AppendEvent(const GenerateEvent& event, v1::GenerateResponse* out);

v1::FinishReason FinishReasonToProto(FinishReason r);

// OK when `message` and its set sub-messages carry no unknown fields.
absl::Status CheckNoUnknownFields(const google::protobuf::Message& message, const std::string& path = "");

}  // namespace sbserve
