#include "server/service.h"

#include <deque>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/tokenizer/utf8.h"
#include "server/convert.h"
#include "server/metrics_observer.h"
#include "server/status.h"
#include "server/wire_check.h"
#include "spdlog/spdlog.h"

namespace sbserve {
namespace {

constexpr const char* kVersion = kSbserveVersion;

// Counts a refusal under its reason; `loading`: refused because no model is loaded yet.
void CountReject(const ServiceContext* ctx, const absl::Status& s, bool loading) {
  if (ctx->metrics == nullptr) return;
  ctx->metrics->RequestRejected(RejectReasonFor(s, loading)).Increment();
}

std::string Flatten(const grpc::ByteBuffer& bb) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!bb.Dump(&slices).ok()) return out;
  out.reserve(bb.Length());
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

void ToByteBuffer(const google::protobuf::Message& m, grpc::ByteBuffer* out) {
  const std::string bytes = m.SerializeAsString();
  grpc::Slice slice(bytes);
  grpc::ByteBuffer bb(&slice, 1);
  out->Swap(&bb);
}

// Decodes a request with ParseStrict; a malformed one is logged and counted (reason `malformed`).
absl::Status Decode(const ServiceContext* ctx, const char* rpc, grpc::CallbackServerContext* call,
                    const grpc::ByteBuffer* bytes, google::protobuf::Message* out) {
  absl::Status s = ParseStrict(Flatten(*bytes), out);
  if (s.ok()) return s;
  if (ctx->metrics != nullptr) ctx->metrics->RequestRejected(metrics::RejectReason::kMalformed).Increment();
  // Logged whatever --log-requests says: a malformed message is a client bug worth seeing, and
  // the message names the field and byte offset only, never the request's text.
  spdlog::warn("request rpc={} peer={} status={} rejected error={}", rpc, call->peer(),
               static_cast<int>(s.code()), std::string(s.message()));
  return s;
}

// The caller's API key (null when keys are off). UNAUTHENTICATED is logged here; the message
// never repeats the presented key.
absl::StatusOr<ApiKey*> Authorize(const ServiceContext* ctx, const char* rpc, grpc::CallbackServerContext* call) {
  if (ctx->api_keys == nullptr) return nullptr;
  absl::string_view value;
  const auto& md = call->client_metadata();
  if (auto it = md.find("authorization"); it != md.end()) value = absl::string_view(it->second.data(), it->second.size());
  absl::StatusOr<ApiKey*> key = ctx->api_keys->Authenticate(value);
  if (!key.ok()) {
    spdlog::warn("request rpc={} peer={} status={} rejected error={}", rpc, call->peer(),
                 static_cast<int>(key.status().code()), std::string(key.status().message()));
  }
  return key;
}

absl::Status AuthorizeThenDecode(const ServiceContext* ctx, const char* rpc, grpc::CallbackServerContext* call,
                                 const grpc::ByteBuffer* bytes, google::protobuf::Message* out) {
  if (absl::StatusOr<ApiKey*> key = Authorize(ctx, rpc, call); !key.ok()) return key.status();
  return Decode(ctx, rpc, call, bytes, out);
}

// The gRPC call's deadline on top of PrepareRequest.
absl::StatusOr<GenerateRequest> Prepare(ServiceContext* ctx, grpc::CallbackServerContext* call,
                                        const v1::GenerateRequest& proto, EnginePool** engine, bool* loading) {
  const auto deadline = call->deadline();
  return PrepareRequest(ctx, proto,
                        deadline == std::chrono::system_clock::time_point::max() ? absl::InfiniteFuture()
                                                                                 : absl::FromChrono(deadline),
                        engine, loading);
}

void LogRequest(const ServiceContext* ctx, const std::string& rpc, const std::string& id, const std::string& peer,
                const ApiKey* key, const GenerateEvent& e, const grpc::Status& st) {
  if (!ctx->log_requests) return;
  spdlog::info(
      "request rpc={} id={} peer={}{}{} status={} finish={} prompt_tokens={} completion_tokens={} queued_ms={:.2f} "
      "ttft_ms={:.2f} last_token_ms={:.2f} preemptions={}{}{}",
      rpc, id, peer, key != nullptr ? " key=" : "", key != nullptr ? key->name : "", static_cast<int>(st.error_code()),
      FinishReasonName(e.finish_reason), e.prompt_tokens,
      e.completion_tokens, absl::ToDoubleMilliseconds(e.timings.queued),
      absl::ToDoubleMilliseconds(e.timings.first_token), absl::ToDoubleMilliseconds(e.timings.last_token),
      e.timings.preemptions, st.ok() ? "" : " error=", st.error_message());
}

// Plain-metadata twin of the RetryInfo detail for clients that do not parse status details.
void AddRetryAfter(grpc::CallbackServerContext* call, const absl::Status& s) {
  if (auto ms = s.GetPayload(kRetryAfterPayloadUrl); ms.has_value()) {
    call->AddTrailingMetadata("retry-after-ms", std::string(*ms));
  }
}

void LogRejected(const ServiceContext* ctx, const std::string& rpc, const std::string& peer, const absl::Status& s) {
  if (!ctx->log_requests) return;
  spdlog::info("request rpc={} peer={} status={} rejected error={}", rpc, peer, static_cast<int>(s.code()),
               std::string(s.message()));
}

grpc::Status FinalStatus(const GenerateEvent& e) {
  if (!e.status.ok()) return ToGrpcStatus(e.status);
  return grpc::Status::OK;
}

// Reference count shared by gRPC (released in OnDone) and the engine (released by the final
// event); the reactor deletes itself when both are gone.
class TwoOwners {
 public:
  // Returns true when the caller dropped the last reference.
  bool Release() {
    std::lock_guard<std::mutex> lock(mu_);
    return --refs_ == 0;
  }
  void Set(int n) { refs_ = n; }

 private:
  std::mutex mu_;
  int refs_ = 1;
};

class GenerateReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  GenerateReactor(ServiceContext* ctx, grpc::CallbackServerContext* call, const grpc::ByteBuffer* bytes)
      : ctx_(ctx), peer_(call->peer()) {
    absl::StatusOr<ApiKey*> key = Authorize(ctx, "Generate", call);
    absl::Status early = key.status();
    v1::GenerateRequest request;
    if (early.ok()) early = Decode(ctx, "Generate", call, bytes, &request);
    if (early.ok()) {
      early = ApiKeys::Acquire(*key);
      if (early.ok()) {
        key_ = *key;
      } else {
        LogRejected(ctx_, "Generate", peer_, early);
      }
    }
    if (!early.ok()) {
      finish_called_ = true;
      Finish(ToGrpcStatus(early));
      return;
    }
    EnginePool* engine = nullptr;
    bool loading = false;
    absl::StatusOr<GenerateRequest> req = Prepare(ctx, call, request, &engine, &loading);
    absl::Status st = req.status();
    if (req.ok()) {
      id_ = req->request_id;
      engine_ = engine;
      req->owner = reinterpret_cast<uintptr_t>(this);  // a cancel of this call reaches only its request
      owners_.Set(2);
      st = engine->Submit(*std::move(req), [this](GenerateEvent e) { OnEvent(std::move(e)); });
      if (!st.ok()) owners_.Set(1);
    }
    if (!st.ok()) {
      ApiKeys::Release(key_);
      CountReject(ctx_, st, loading);
      LogRejected(ctx_, "Generate", peer_, st);
      AddRetryAfter(call, st);
      finish_called_ = true;
      Finish(ToGrpcStatus(st));
    }
  }

  void OnWriteDone(bool ok) override {
    Action a;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (!ok) {
        broken_ = true;
        pending_.clear();
      }
      a = NextLocked();
    }
    if (!ok) AbortUnlessEnded();
    Run(a);
  }

  void OnCancel() override { AbortUnlessEnded(); }

  void OnDone() override {
    if (owners_.Release()) delete this;
  }

 private:
  enum class Action { kNone, kWrite, kFinish };

  // Engine thread.
  void OnEvent(GenerateEvent e) {
    const bool final = e.finished;
    Action a;
    grpc::Status status;  // the request's own end, for the log
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!broken_ && !finish_called_) {
        // Coalesce into the newest queued message while a write is in flight.
        if (pending_.empty() || !writing_) pending_.emplace_back();
        v1::GenerateResponse& m = pending_.back();
        if (m.request_id().empty()) m.set_request_id(id_);
        AppendEvent(e, &m);
      }
      if (final) {
        final_ = true;
        status = FinalStatus(e);
        if (broken_ && status.ok()) status = grpc::Status(grpc::StatusCode::CANCELLED, "stream broken");
        // Once Finish was decided (the stream broke first), another thread may be passing
        // final_status_ to it: it is never written after that.
        if (!finish_called_) final_status_ = status;
      }
      a = NextLocked();
    }
    if (final) {
      ApiKeys::Release(key_);
      LogRequest(ctx_, "Generate", id_, peer_, key_, e, status);
    }
    Run(a);
    if (final && owners_.Release()) delete this;
  }

  // Cancels the request unless its final event came: once it has, its id may already belong to a
  // new request, which a late cancel of this call must not reach. The abort names this call as the
  // owner, so that it also misses a new request in the moment before the final event arrives.
  void AbortUnlessEnded() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (final_) return;
    }
    if (engine_ != nullptr) engine_->Abort({id_}, CancelSource::kClient, reinterpret_cast<uintptr_t>(this));
  }

  // mu_ held: decides what to start next; the call itself happens after unlocking.
  Action NextLocked() {
    if (writing_ || finish_called_) return Action::kNone;
    if (!pending_.empty()) {
      ToByteBuffer(pending_.front(), &current_);
      pending_.pop_front();
      writing_ = true;
      return Action::kWrite;
    }
    if (final_ || broken_) {
      if (!final_ && broken_) final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      finish_called_ = true;
      return Action::kFinish;
    }
    return Action::kNone;
  }

  void Run(Action a) {
    if (a == Action::kWrite) StartWrite(&current_);
    if (a == Action::kFinish) Finish(final_status_);
  }

  ServiceContext* ctx_;
  std::string peer_;  // the call's context is gone once OnDone ran; the engine may finish later
  EnginePool* engine_ = nullptr;
  std::string id_;
  ApiKey* key_ = nullptr;  // held (one call in flight) from admission to the final event
  TwoOwners owners_;

  std::mutex mu_;
  std::deque<v1::GenerateResponse> pending_;
  grpc::ByteBuffer current_;  // the message being written
  bool writing_ = false;
  bool final_ = false;
  bool broken_ = false;
  bool finish_called_ = false;
  grpc::Status final_status_;  // mu_; read without it (by Finish) once finish_called_ is set
};

class CompleteReactor final : public grpc::ServerUnaryReactor {
 public:
  CompleteReactor(ServiceContext* ctx, grpc::CallbackServerContext* call, const grpc::ByteBuffer* bytes,
                  grpc::ByteBuffer* response)
      : ctx_(ctx), peer_(call->peer()), out_(response) {
    absl::StatusOr<ApiKey*> key = Authorize(ctx, "Complete", call);
    absl::Status early = key.status();
    v1::GenerateRequest request;
    if (early.ok()) early = Decode(ctx, "Complete", call, bytes, &request);
    if (early.ok()) {
      early = ApiKeys::Acquire(*key);
      if (early.ok()) {
        key_ = *key;
      } else {
        LogRejected(ctx_, "Complete", peer_, early);
      }
    }
    if (!early.ok()) {
      Finish(ToGrpcStatus(early));
      return;
    }
    EnginePool* engine = nullptr;
    bool loading = false;
    absl::StatusOr<GenerateRequest> req = Prepare(ctx, call, request, &engine, &loading);
    absl::Status st = req.status();
    if (req.ok()) {
      id_ = req->request_id;
      engine_ = engine;
      req->owner = reinterpret_cast<uintptr_t>(this);  // a cancel of this call reaches only its request
      response_->set_request_id(id_);
      owners_.Set(2);
      st = engine->Submit(*std::move(req), [this](GenerateEvent e) { OnEvent(std::move(e)); });
      if (!st.ok()) owners_.Set(1);
    }
    if (!st.ok()) {
      ApiKeys::Release(key_);
      CountReject(ctx_, st, loading);
      LogRejected(ctx_, "Complete", peer_, st);
      AddRetryAfter(call, st);
      Finish(ToGrpcStatus(st));
    }
  }

  void OnCancel() override {
    // Once the final event came, the id may already belong to a new request; the owner keeps the
    // abort off it in the moment before (see GenerateReactor).
    if (engine_ != nullptr && !ended_.load()) {
      engine_->Abort({id_}, CancelSource::kClient, reinterpret_cast<uintptr_t>(this));
    }
  }
  void OnDone() override {
    if (owners_.Release()) delete this;
  }

 private:
  void OnEvent(GenerateEvent e) {
    // Only the engine thread touches response_ until Finish.
    AppendEvent(e, response_);
    if (!e.finished) return;
    ended_.store(true);
    const grpc::Status st = FinalStatus(e);
    ApiKeys::Release(key_);
    LogRequest(ctx_, "Complete", id_, peer_, key_, e, st);
    if (st.ok()) ToByteBuffer(*response_, out_);
    Finish(st);
    if (owners_.Release()) delete this;
  }

  ServiceContext* ctx_;
  std::string peer_;  // the call's context is gone once OnDone ran; the engine may finish later
  grpc::ByteBuffer* out_;
  v1::GenerateResponse response_storage_;
  v1::GenerateResponse* response_ = &response_storage_;
  EnginePool* engine_ = nullptr;
  std::string id_;
  ApiKey* key_ = nullptr;
  TwoOwners owners_;
  std::atomic<bool> ended_{false};  // the final event came
};

grpc::ServerUnaryReactor* Reply(grpc::CallbackServerContext* call, const grpc::Status& st) {
  grpc::ServerUnaryReactor* r = call->DefaultReactor();
  r->Finish(st);
  return r;
}

grpc::ServerUnaryReactor* Reply(grpc::CallbackServerContext* call, const grpc::Status& st,
                                const google::protobuf::Message& response, grpc::ByteBuffer* out) {
  if (st.ok()) ToByteBuffer(response, out);
  return Reply(call, st);
}

}  // namespace

std::string NewRequestId(ServiceContext* ctx) {
  return absl::StrFormat("sb-%x-%d", absl::ToUnixMicros(ctx->start_time) & 0xffffff, ctx->next_request_id.fetch_add(1));
}

absl::StatusOr<GenerateRequest> PrepareRequest(ServiceContext* ctx, const v1::GenerateRequest& proto,
                                               absl::Time deadline, EnginePool** engine, bool* loading) {
  *loading = false;
  if (ctx->draining.load()) return absl::UnavailableError("the server is draining; retry on another replica");
  *engine = ctx->engine.load();
  if (*engine == nullptr) {
    *loading = true;
    return absl::UnavailableError("the model is still loading");
  }
  absl::StatusOr<GenerateRequest> req = RequestFromProto(proto);
  if (!req.ok()) return req.status();
  if (req->request_id.empty()) req->request_id = NewRequestId(ctx);
  req->deadline = deadline;
  return req;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* SbServeService::Generate(grpc::CallbackServerContext* context,
                                                                     const grpc::ByteBuffer* request) {
  return new GenerateReactor(ctx_, context, request);
}

grpc::ServerUnaryReactor* SbServeService::Complete(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return new CompleteReactor(ctx_, context, request, response);
}

// The unary methods below decode into `request`, fill `response` and serialize it into the raw
// output once the status is OK.
grpc::ServerUnaryReactor* SbServeService::Abort(grpc::CallbackServerContext* context, const grpc::ByteBuffer* bytes,
                                                grpc::ByteBuffer* out) {
  v1::AbortRequest req;
  v1::AbortResponse resp;
  if (absl::Status s = AuthorizeThenDecode(ctx_, "Abort", context, bytes, &req); !s.ok()) return Reply(context, ToGrpcStatus(s));
  return Reply(context, AbortTyped(context, &req, &resp), resp, out);
}

grpc::ServerUnaryReactor* SbServeService::Tokenize(grpc::CallbackServerContext* context, const grpc::ByteBuffer* bytes,
                                                   grpc::ByteBuffer* out) {
  v1::TokenizeRequest req;
  v1::TokenizeResponse resp;
  if (absl::Status s = AuthorizeThenDecode(ctx_, "Tokenize", context, bytes, &req); !s.ok()) return Reply(context, ToGrpcStatus(s));
  return Reply(context, TokenizeTyped(context, &req, &resp), resp, out);
}

grpc::ServerUnaryReactor* SbServeService::GetModelInfo(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* bytes, grpc::ByteBuffer* out) {
  v1::GetModelInfoRequest req;
  v1::ModelInfo resp;
  if (absl::Status s = AuthorizeThenDecode(ctx_, "GetModelInfo", context, bytes, &req); !s.ok()) {
    return Reply(context, ToGrpcStatus(s));
  }
  return Reply(context, GetModelInfoTyped(context, &req, &resp), resp, out);
}

grpc::ServerUnaryReactor* SbServeService::GetServerInfo(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* bytes, grpc::ByteBuffer* out) {
  v1::GetServerInfoRequest req;
  v1::ServerInfo resp;
  if (absl::Status s = AuthorizeThenDecode(ctx_, "GetServerInfo", context, bytes, &req); !s.ok()) {
    return Reply(context, ToGrpcStatus(s));
  }
  return Reply(context, GetServerInfoTyped(context, &req, &resp), resp, out);
}

grpc::Status SbServeService::AbortTyped(grpc::CallbackServerContext*, const v1::AbortRequest* request,
                                        v1::AbortResponse* response) {
  EnginePool* engine = ctx_->engine.load();
  if (engine == nullptr) return ToGrpcStatus(absl::UnavailableError("the model is still loading"));
  if (absl::Status s = CheckNoUnknownFields(*request); !s.ok()) return ToGrpcStatus(s);
  std::vector<std::string> ids(request->request_ids().begin(), request->request_ids().end());
  for (const auto& id : engine->Abort(ids)) response->add_aborted(id);
  return grpc::Status::OK;
}

grpc::Status SbServeService::TokenizeTyped(grpc::CallbackServerContext*, const v1::TokenizeRequest* request,
                                           v1::TokenizeResponse* response) {
  EnginePool* engine = ctx_->engine.load();
  if (engine == nullptr) return ToGrpcStatus(absl::UnavailableError("the model is still loading"));
  if (absl::Status s = CheckNoUnknownFields(*request); !s.ok()) return ToGrpcStatus(s);
  const TextCodec* codec = engine->codec();
  if (codec == nullptr) {
    return ToGrpcStatus(absl::FailedPreconditionError("this model has no tokenizer"));
  }
  absl::StatusOr<std::vector<int32_t>> ids =
      codec->Encode(request->text(), request->has_add_special_tokens() ? request->add_special_tokens() : true);
  if (!ids.ok()) return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat("text: ", ids.status().message())));
  for (int32_t id : *ids) {
    response->add_ids(id);
    response->add_pieces(tokenizer_internal::Utf8Lossy(codec->TokenBytes(id, false)));
  }
  return grpc::Status::OK;
}

grpc::Status SbServeService::GetModelInfoTyped(grpc::CallbackServerContext*, const v1::GetModelInfoRequest* request,
                                               v1::ModelInfo* response) {
  if (absl::Status s = CheckNoUnknownFields(*request); !s.ok()) return ToGrpcStatus(s);
  EnginePool* engine = ctx_->engine.load();
  if (engine == nullptr) return ToGrpcStatus(absl::UnavailableError("the model is still loading"));
  const ModelConfig& c = engine->model_config();
  response->set_model(ctx_->model_dir);
  response->set_architecture("stickbreaking");
  response->set_context_length(c.n_positions);
  response->set_vocab_size(c.vocab_size);
  response->set_remainder(RemainderName(c.remainder));
  response->set_dtype(ctx_->weight_dtype);
  response->set_backend(engine->backend().name());
  response->set_n_layer(c.n_layer);
  response->set_n_embd(c.n_embd);
  response->set_n_head(c.n_head);
  response->set_n_kv_head(c.n_kv_head);
  for (int32_t e : engine->eos_ids()) response->add_eos_token_ids(e);
  response->set_kv_block_size(engine->options().kv_block_size);
  response->set_kv_bytes_per_token(engine->backend().KvBytesPerToken());
  return grpc::Status::OK;
}

grpc::Status SbServeService::GetServerInfoTyped(grpc::CallbackServerContext*,
                                                const v1::GetServerInfoRequest* request, v1::ServerInfo* response) {
  if (absl::Status s = CheckNoUnknownFields(*request); !s.ok()) return ToGrpcStatus(s);
  response->set_version(kVersion);
  response->set_uptime_s(absl::ToDoubleSeconds(absl::Now() - ctx_->start_time));
  EnginePool* engine = ctx_->engine.load();
  response->set_draining(ctx_->draining.load());
  response->set_ready(ctx_->ready.load());
  if (engine != nullptr) {
    std::vector<EngineStats> per_engine;
    const EngineStats s = engine->Stats(&per_engine);
    response->set_running(s.running);
    response->set_waiting(s.waiting);
    response->set_queued_prompt_tokens(s.queued_prompt_tokens);
    response->set_kv_blocks_used(s.kv_blocks_used);
    response->set_kv_blocks_total(s.kv_blocks_total);
    response->set_kv_block_size(s.kv_block_size);
    response->set_requests_finished(s.requests_finished);
    response->set_preemptions(s.preemptions);
    response->set_prefix_caching(s.prefix_caching);
    response->set_prefix_cache_queries(s.prefix_cache_queries);
    response->set_prefix_cache_hits(s.prefix_cache_hits);
    response->set_kv_blocks_cached_free(s.kv_blocks_cached_free);
    for (int i = 0; i < static_cast<int>(per_engine.size()); ++i) {
      const EngineStats& es = per_engine[i];
      v1::EngineInfo* e = response->add_engines();
      e->set_index(i);
      e->set_device(engine->device(i));
      e->set_serving(engine->serving(i));
      e->set_running(es.running);
      e->set_waiting(es.waiting);
      e->set_queued_prompt_tokens(es.queued_prompt_tokens);
      e->set_kv_blocks_used(es.kv_blocks_used);
      e->set_kv_blocks_total(es.kv_blocks_total);
      e->set_kv_block_size(es.kv_block_size);
      e->set_requests_finished(es.requests_finished);
      e->set_preemptions(es.preemptions);
      e->set_requests_routed(engine->routed(i));
      e->set_kv_blocks_cached_free(es.kv_blocks_cached_free);
      e->set_prefix_cache_queries(es.prefix_cache_queries);
      e->set_prefix_cache_hits(es.prefix_cache_hits);
      e->set_batch_invariant(engine->engine(i).backend().batch_invariant());
      e->set_samples_on_device(engine->engine(i).backend().samples_on_device());
    }
  }
  return grpc::Status::OK;
}

}  // namespace sbserve
