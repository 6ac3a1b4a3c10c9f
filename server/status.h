// The one place where absl::Status becomes grpc::Status.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace sbserve {

// Same code and message. A RESOURCE_EXHAUSTED status carrying the engine's retry-after payload
// also carries a google.rpc.Status with a google.rpc.RetryInfo detail (the standard
// grpc-status-details-bin trailer), so clients know how long to back off.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace sbserve
