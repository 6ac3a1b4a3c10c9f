// The sbserve.v1.SbServe service on gRPC's callback API: one reactor per Generate/Complete call,
// never blocking in a reaction. The engine thread hands events to a reactor through its mutex-
// guarded queue; the reactor chains StartWrite calls, coalescing deltas while a write is in flight.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "engine/engine.h"
#include "server/engine_pool.h"
#include "sbserve/v1/sbserve.grpc.pb.h"
#include "server/api_keys.h"
#include "server/metrics/serving_metrics.h"

namespace sbserve {

// The server's version: Info's `version` and the `version` label of sbserve_build_info.
inline constexpr char kSbserveVersion[] = "0.1.0";

// State the RPC handlers share with the server's lifecycle code.
struct ServiceContext {
  std::atomic<EnginePool*> engine{nullptr};  // null while loading; one or more engines
  std::atomic<bool> draining{false};
  std::atomic<bool> ready{false};  // the readiness probe's answer (GetServerInfo.ready)
  metrics::ServingMetrics* metrics = nullptr;  // may be null
  const ApiKeys* api_keys = nullptr;           // null: no authentication
  bool log_requests = true;
  std::string model_dir;
  std::string weight_dtype;
  absl::Time start_time = absl::Now();
  std::atomic<uint64_t> next_request_id{1};
};

// Both front doors (gRPC here, HTTP in server/openai/) prepare a request through this: the engine
// (UNAVAILABLE while draining or loading; `loading` tells the two apart), then RequestFromProto's
// validation, an id when the request has none, and `deadline`.
absl::StatusOr<GenerateRequest> PrepareRequest(ServiceContext* ctx, const v1::GenerateRequest& proto,
                                               absl::Time deadline, EnginePool** engine, bool* loading);
// A fresh server-chosen request id ("sb-<start>-<n>").
std::string NewRequestId(ServiceContext* ctx);

// Every method takes raw bytes (the generated WithRawCallbackMethod_* wrappers) and decodes them
// with ParseStrict (server/wire_check.h): gRPC's own decoding answers undecodable messages with
// UNIMPLEMENTED and no message, before any of our code runs. The wire API is unchanged.
using SbServeRawBase = v1::SbServe::WithRawCallbackMethod_Generate<v1::SbServe::WithRawCallbackMethod_Complete<
    v1::SbServe::WithRawCallbackMethod_Abort<v1::SbServe::WithRawCallbackMethod_Tokenize<
        v1::SbServe::WithRawCallbackMethod_GetModelInfo<v1::SbServe::WithRawCallbackMethod_GetServerInfo<
            v1::SbServe::Service>>>>>>;

class SbServeService final : public SbServeRawBase {
 public:
  explicit SbServeService(ServiceContext* ctx) : ctx_(ctx) {}

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;

 private:
  // The typed bodies of the unary methods.
  grpc::Status AbortTyped(grpc::CallbackServerContext* context, const v1::AbortRequest* request,
                          v1::AbortResponse* response);
  grpc::Status TokenizeTyped(grpc::CallbackServerContext* context, const v1::TokenizeRequest* request,
                             v1::TokenizeResponse* response);
  grpc::Status GetModelInfoTyped(grpc::CallbackServerContext* context, const v1::GetModelInfoRequest* request,
                                 v1::ModelInfo* response);
  grpc::Status GetServerInfoTyped(grpc::CallbackServerContext* context, const v1::GetServerInfoRequest* request,
                                  v1::ServerInfo* response);

  ServiceContext* ctx_;
};

}  // namespace sbserve
