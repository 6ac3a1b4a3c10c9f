#include "server/status.h"

#include <cstdint>
#include <string>

#include "absl/strings/numbers.h"
#include "engine/engine.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace sbserve {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode share the canonical numbering.
  const auto code = static_cast<grpc::StatusCode>(static_cast<int>(status.code()));
  const std::string message(status.message());
  auto retry = status.GetPayload(kRetryAfterPayloadUrl);
  int64_t ms = 0;
  if (!retry.has_value() || !absl::SimpleAtoi(std::string(*retry), &ms)) return grpc::Status(code, message);
  google::rpc::RetryInfo info;
  info.mutable_retry_delay()->set_seconds(ms / 1000);
  info.mutable_retry_delay()->set_nanos(static_cast<int32_t>((ms % 1000) * 1000000));
  google::rpc::Status details;
  details.set_code(static_cast<int32_t>(code));
  details.set_message(message);
  details.add_details()->PackFrom(info);
  return grpc::Status(code, message, details.SerializeAsString());
}

}  // namespace sbserve
