// The sbserve.v1.SbServe service on gRPC's callback API: one reactor per Generate/Complete call,
// never blocking in a reaction. The engine thread hands events to a reactor through its mutex-
// guarded queue; the reactor chains StartWrite calls, coalescing deltas while a write is in flight.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "engine/engine.h"
#include "sbserve/v1/sbserve.grpc.pb.h"
#include "server/metrics/serving_metrics.h"

namespace sbserve {

// The server's version: Info's `version` and the `version` label of sbserve_build_info.
inline constexpr char kSbserveVersion[] = "0.1.0";

// State the RPC handlers share with the server's lifecycle code.
struct ServiceContext {
  std::atomic<Engine*> engine{nullptr};  // null while loading
  std::atomic<bool> draining{false};
  metrics::ServingMetrics* metrics = nullptr;  // may be null
  bool log_requests = true;
  std::string model_dir;
  std::string weight_dtype;
  absl::Time start_time = absl::Now();
  std::atomic<uint64_t> next_request_id{1};
};

class SbServeService final : public v1::SbServe::CallbackService {
 public:
  explicit SbServeService(ServiceContext* ctx) : ctx_(ctx) {}

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                          const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* context, const v1::GenerateRequest* request,
                                     v1::GenerateResponse* response) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context, const v1::AbortRequest* request,
                                  v1::AbortResponse* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context, const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context, const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request, v1::ServerInfo* response) override;

 private:
  ServiceContext* ctx_;
};

}  // namespace sbserve
