#include "server/openai/http_api.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/tokenizer/utf8.h"
#include "server/convert.h"
#include "server/metrics/text_format.h"
#include "server/metrics_observer.h"
#include "server/openai/protocol.h"
#include "spdlog/spdlog.h"

namespace sbserve::openai {
namespace {

using nlohmann::json;

constexpr char kJson[] = "application/json";
// Optional request header: the request's deadline, in milliseconds from arrival (gRPC's
// deadline on this door). Past it the request ends with 504 (or an error event when streaming).
constexpr char kTimeoutHeader[] = "X-Request-Timeout-Ms";
constexpr auto kPollInterval = std::chrono::milliseconds(50);
// The `endpoint` label values of sbserve_http_requests_total ("other" for the rest).
constexpr const char* kEndpoints[] = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize",
                                      "/detokenize",     "/health",              "/ready",     "/metrics"};

// The method a known path takes, or null for an unknown path.
const char* AllowedMethod(const std::string& path) {
  for (const char* p : {"/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"}) {
    if (path == p) return "POST";
  }
  for (const char* p : {"/v1/models", "/health", "/ready", "/metrics"}) {
    if (path == p) return "GET";
  }
  if (path.rfind("/v1/models/", 0) == 0 && path.size() > 11) return "GET";
  return nullptr;
}

// ---- the connection ---------------------------------------------------------------------------

std::string SockAddrIp(const sockaddr_storage& a, int* port) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&a);
    inet_ntop(AF_INET, &in->sin_addr, buf, sizeof(buf));
    *port = ntohs(in->sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a);
    inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof(buf));
    *port = ntohs(in6->sin6_port);
  }
  return buf;
}

// The socket of the connection `req` came on, -1 if not found. httplib 0.11 gives a handler no
// access to its connection (later versions have Request::is_connection_closed); with TLS the SSL
// object names it, without TLS the open socket with the request's address pair is it (a TCP
// address pair names at most one open connection). Looked up once per generation request.
int ConnectionSocket(const httplib::Request& req) {
  if (req.ssl != nullptr) return SSL_get_fd(req.ssl);
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (dirent* e = readdir(dir)) {
    int fd = -1;
    if (!absl::SimpleAtoi(e->d_name, &fd) || fd == dirfd(dir)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof(local), pl = sizeof(peer);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0) continue;
    int lport = -1, pport = -1;
    if (SockAddrIp(local, &lport).empty() || lport != req.local_port) continue;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) continue;
    const std::string pip = SockAddrIp(peer, &pport);
    if (pport == req.remote_port && pip == req.remote_addr) {
      found = fd;
      break;
    }
  }
  closedir(dir);
  return found;
}

// True once the client has closed or reset the connection. Bytes waiting to be read (a
// pipelined next request) do not count.
bool PeerGone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, static_cast<short>(POLLIN | POLLRDHUP), 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLERR | POLLHUP | POLLRDHUP | POLLNVAL)) return true;
  if (p.revents & POLLIN) {
    char c;
    return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
  }
  return false;
}

// ---- one generation request: n engine requests and their events ---------------------------------

struct ChoiceEvent {
  int index;
  GenerateEvent event;
};

// Shared by the handler (worker thread) and the engine sinks (engine thread). The sinks only
// queue; the worker formats and writes.
class Generation {
 public:
  Generation(EnginePool* engine, ApiKey* key) : engine_(engine), key_(key) {}

  // All n choices are expected before the first is submitted: an early choice may finish before
  // a later one is submitted, and the key must be released once, after the last.
  void Expect(int n) { live_ = n; }
  void AddChoice(std::string id) {
    std::lock_guard<std::mutex> lock(mu_);
    ids_.push_back(std::move(id));
  }
  void Push(int index, GenerateEvent e) {
    bool release = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (e.finished && --live_ == 0) release = true;
      events_.push_back({index, std::move(e)});
    }
    if (release) ApiKeys::Release(key_);
    cv_.notify_all();
  }
  // A Submit that failed: that choice and the ones after it never get an event.
  void DropChoices(int count) {
    bool release = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ids_.pop_back();
      live_ -= count;
      release = live_ == 0;
    }
    if (release) ApiKeys::Release(key_);
  }
  void AbortAll() {
    std::vector<std::string> ids;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (live_ == 0) return;
      ids = ids_;
    }
    engine_->Abort(ids, CancelSource::kClient);
  }
  // Waits for events; false when the client went away first (`fd`) or the server stops.
  // The connection is looked at every kPollInterval, busy or idle: a stream's events come
  // every step, and a client gone mid-stream must not wait for a write to fail.
  bool Wait(std::deque<ChoiceEvent>* out, int fd, const std::atomic<bool>& stopping) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_check_ >= kPollInterval) {
      last_check_ = now;
      if (stopping.load() || PeerGone(fd)) return false;
    }
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (cv_.wait_for(lock, kPollInterval, [&] { return !events_.empty(); })) {
        out->swap(events_);
        return true;
      }
      last_check_ = std::chrono::steady_clock::now();
      if (stopping.load() || PeerGone(fd)) return false;
    }
  }

 private:
  EnginePool* engine_;
  ApiKey* key_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> ids_;  // guarded by mu_ once submitted
  int live_ = 0;
  std::deque<ChoiceEvent> events_;
  std::chrono::steady_clock::time_point last_check_;  // the waiting worker's own
};

// What a choice has produced so far.
struct Choice {
  std::string text;
  std::vector<StepLogprobs> logprobs;
  std::vector<StepLogprobs> prompt_logprobs;  // echo with logprobs
  bool echoed = false;                        // streaming: the echo chunk went out
  size_t text_offset = 0;  // bytes of text before this choice's new text (echo included)
  // Streaming: where the next listed token's text starts (from text_offset on). Not text_offset +
  // text.size(): a token's text may come later than its id (a held-back stop-string prefix, a split
  // UTF-8 character).
  size_t next_lp_offset = 0;
  bool finished = false;
  FinishReason finish = FinishReason::kNone;
  absl::Status status;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
};

}  // namespace

class HttpApiServer::Impl {
 public:
  Impl(ServiceContext* ctx, metrics::Registry* registry, HttpApiOptions options)
      : ctx_(ctx), registry_(registry), options_(std::move(options)) {}
  ~Impl() { Stop(); }

  absl::Status Start();
  void Stop() {
    if (!started_) return;
    stopping_.store(true);
    server_->stop();
    if (thread_.joinable()) thread_.join();
    started_ = false;
  }
  int port() const { return port_.load(); }

  std::unique_ptr<ChatTemplate> chat_template_;
  std::string no_template_reason_ = "the model is still loading";

 private:
  // Every reply's JSON body goes through these two.
  static void SendJson(httplib::Response& res, int status, const json& body) {
    res.status = status;
    res.set_content(Dump(body), kJson);
  }
  void SendError(httplib::Response& res, const HttpError& e) {
    if (e.retry_after_ms >= 0) {
      res.set_header("Retry-After", std::to_string((e.retry_after_ms + 999) / 1000));
      res.set_header("retry-after-ms", std::to_string(e.retry_after_ms));
    }
    if (e.http_status == 401) res.set_header("WWW-Authenticate", "Bearer");
    SendJson(res, e.http_status, e.body);
  }

  // API key check; on failure the reply is written and null returned through `ok`.
  bool Authorize(const httplib::Request& req, httplib::Response& res, ApiKey** key) {
    *key = nullptr;
    if (ctx_->api_keys == nullptr) return true;
    absl::StatusOr<ApiKey*> k = ctx_->api_keys->Authenticate(req.get_header_value("Authorization"));
    if (!k.ok()) {
      spdlog::warn("request rpc=http:{} peer={} status=401 rejected error={}", req.path, req.remote_addr,
                   std::string(k.status().message()));
      SendError(res, ErrorFor(k.status()));
      return false;
    }
    *key = *k;
    return true;
  }

  void CountReject(const absl::Status& s, bool loading) {
    if (ctx_->metrics != nullptr) ctx_->metrics->RequestRejected(RejectReasonFor(s, loading)).Increment();
  }

  // Reads the body of a POST into req.body, after the API key check: at most max_body_bytes are
  // kept, whether the body comes with a Content-Length or chunked (httplib's own limit covers only
  // the first), so that no client, authenticated or not, makes the server hold more. The rest of a
  // refused body (no key, or too large) is read and dropped, not kept, up to twice the limit; past
  // that, reading stops. On failure the reply is written (401, 413 or 400) and false returned.
  bool ReadBody(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read) {
    ApiKey* key = nullptr;
    const bool authorized = Authorize(req, res, &key);
    std::string body;
    size_t seen = 0;
    const size_t limit = options_.max_body_bytes;
    const bool ok = read([&](const char* data, size_t n) {
      seen += n;
      if (authorized && seen <= limit) body.append(data, n);
      return seen <= 2 * limit;
    });
    if (!authorized) return false;
    if (seen > limit || res.status == 413) {
      SendError(res, MakeError(413, "invalid_request_error", absl::StrCat("request body larger than ", limit, " bytes"),
                               "body", "payload_too_large"));
      return false;
    }
    if (!ok) {
      SendError(res, MakeError(400, "invalid_request_error", "body: could not be read", "body"));
      return false;
    }
    // httplib owns the request (not const there) and reads the body into it for plain handlers;
    // this does the same for the handlers below.
    const_cast<httplib::Request&>(req).body = std::move(body);
    return true;
  }

  // The body as a JSON object; 400 (counted as malformed) otherwise.
  bool ParseBody(const httplib::Request& req, httplib::Response& res, json* out) {
    *out = json::parse(req.body, nullptr, false);
    if (!out->is_discarded() && out->is_object()) return true;
    if (ctx_->metrics != nullptr) ctx_->metrics->RequestRejected(metrics::RejectReason::kMalformed).Increment();
    SendError(res, MakeError(400, "invalid_request_error",
                             out->is_discarded() ? "body: not valid JSON" : "body: must be a JSON object", "body"));
    return false;
  }

  // The served model, or 404 naming the one asked for.
  bool CheckModel(const std::string& model, httplib::Response& res) {
    if (model.empty() || model == options_.served_model_name) return true;
    SendError(res, MakeError(404, "not_found_error",
                             absl::StrCat("The model `", model, "` does not exist; this server serves `",
                                          options_.served_model_name, "`"),
                             "model", "model_not_found"));
    return false;
  }

  EnginePool* EngineOrError(httplib::Response& res) {
    if (ctx_->draining.load()) {
      SendError(res, ErrorFor(absl::UnavailableError("the server is draining; retry on another replica")));
      return nullptr;
    }
    EnginePool* engine = ctx_->engine.load();
    if (engine == nullptr) SendError(res, ErrorFor(absl::UnavailableError("the model is still loading")));
    return engine;
  }

  void HandleGenerate(const httplib::Request& req, httplib::Response& res, Api api);
  void HandleCompletions(const httplib::Request& req, httplib::Response& res) { HandleGenerate(req, res, Api::kCompletions); }
  void HandleChat(const httplib::Request& req, httplib::Response& res) { HandleGenerate(req, res, Api::kChat); }
  void HandleModels(const httplib::Request& req, httplib::Response& res);
  void HandleTokenize(const httplib::Request& req, httplib::Response& res);
  void HandleDetokenize(const httplib::Request& req, httplib::Response& res);
  void CountHttp(const httplib::Request& req, const httplib::Response& res);

  ServiceContext* ctx_;
  metrics::Registry* registry_;
  const HttpApiOptions options_;
  metrics::CounterFamily* http_requests_ = nullptr;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::atomic<int> port_{0};
  std::atomic<bool> stopping_{false};
  bool started_ = false;
  socket_t listen_fd_ = -1;
};

absl::Status HttpApiServer::Impl::Start() {
  if (started_) return absl::FailedPreconditionError("HTTP API server already started");
  if (registry_ != nullptr) {
    absl::StatusOr<metrics::CounterFamily*> f = registry_->AddCounter(
        "sbserve_http_requests", "HTTP API requests answered, by endpoint and HTTP status code.", {"endpoint", "code"});
    if (!f.ok()) return f.status();
    http_requests_ = *f;
    for (const char* e : kEndpoints) (void)http_requests_->WithLabels({e, "200"});  // exposed from the first scrape
  }
  if (options_.tls_setup) {
    auto setup = options_.tls_setup;
    server_ = std::make_unique<httplib::SSLServer>([setup](SSL_CTX& ctx) { return setup(&ctx); });
  } else {
    server_ = std::make_unique<httplib::Server>();
  }
  if (!server_->is_valid()) return absl::InvalidArgumentError("HTTP API server: TLS setup failed");
  httplib::Server& srv = *server_;
  const int threads = std::max(2, options_.worker_threads);
  srv.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  srv.set_keep_alive_max_count(1000);
  srv.set_keep_alive_timeout(options_.keep_alive_timeout_s);
  srv.set_read_timeout(options_.io_timeout_s, 0);
  srv.set_write_timeout(options_.io_timeout_s, 0);
  srv.set_payload_max_length(options_.max_body_bytes);
  // No SO_REUSEPORT (httplib's default): a second process must not share the port.
  srv.set_socket_options([this](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd_ = sock;
  });
  // Replies httplib makes itself (unknown route, oversize body, unparsable request) in OpenAI's
  // error shape; the handlers' own errors already have a body.
  srv.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    HttpError e;
    switch (res.status) {
      case 404:
        if (const char* allow = AllowedMethod(req.path); allow != nullptr) {
          // A known path asked with another method: 405 with the method it takes, as FastAPI does.
          res.status = 405;
          res.set_header("Allow", allow);
          e = MakeError(405, "invalid_request_error",
                        absl::StrCat(req.method, " ", req.path, " is not allowed; use ", allow), "",
                        "method_not_allowed");
          break;
        }
        e = MakeError(404, "not_found_error", absl::StrCat("no route ", req.method, " ", req.path), "", "not_found");
        break;
      case 413:
        e = MakeError(413, "invalid_request_error",
                      absl::StrCat("request body larger than ", options_.max_body_bytes, " bytes"), "body",
                      "payload_too_large");
        break;
      default:
        e = MakeError(res.status, res.status >= 500 ? "server_error" : "invalid_request_error",
                      absl::StrCat("HTTP status ", res.status, " (", req.method, " ", req.path, ")"));
        break;
    }
    e.http_status = res.status;
    SendJson(res, e.http_status, e.body);
    return httplib::Server::HandlerResponse::Handled;
  }));
  srv.set_logger([this](const httplib::Request& req, const httplib::Response& res) { CountHttp(req, res); });

  // POST bodies go through ReadBody (its size limit and the key check before any of the body).
  auto post = [this, &srv](const char* path, void (Impl::*handle)(const httplib::Request&, httplib::Response&)) {
    srv.Post(path, [this, handle](const httplib::Request& req, httplib::Response& res,
                                  const httplib::ContentReader& read) {
      if (ReadBody(req, res, read)) (this->*handle)(req, res);
    });
  };
  post("/v1/completions", &Impl::HandleCompletions);
  post("/v1/chat/completions", &Impl::HandleChat);
  srv.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) { HandleModels(req, res); });
  srv.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) { HandleModels(req, res); });
  post("/tokenize", &Impl::HandleTokenize);
  post("/detokenize", &Impl::HandleDetokenize);
  srv.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain; charset=utf-8");
  });
  srv.Get("/ready", [this](const httplib::Request&, httplib::Response& res) {
    const bool ready = !options_.ready || options_.ready();
    res.status = ready ? 200 : 503;
    res.set_content(ready ? "ready\n" : "not ready\n", "text/plain; charset=utf-8");
  });
  srv.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
    ApiKey* key = nullptr;
    if (options_.metrics_need_key && !Authorize(req, res, &key)) return;
    if (registry_ != nullptr) res.set_content(registry_->Serialize(), std::string(metrics::kTextContentType));
  });

  int bound = -1;
  if (options_.port == 0) {
    bound = srv.bind_to_any_port(options_.host);
  } else if (srv.bind_to_port(options_.host, options_.port)) {
    bound = options_.port;
  }
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("HTTP API server cannot bind ", options_.host, ":", options_.port));
  }
  // httplib listens with a backlog of 5; a burst of benchmark connections would overflow it.
  if (listen_fd_ >= 0) ::listen(listen_fd_, 1024);
  port_.store(bound);
  started_ = true;
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!srv.is_running()) {
    if (std::chrono::steady_clock::now() > deadline) return absl::InternalError("HTTP API server thread did not start");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return absl::OkStatus();
}

void HttpApiServer::Impl::CountHttp(const httplib::Request& req, const httplib::Response& res) {
  if (http_requests_ == nullptr) return;
  std::string endpoint = "other";
  for (const char* e : kEndpoints) {
    if (req.path == e) endpoint = e;
  }
  if (req.path.rfind("/v1/models/", 0) == 0) endpoint = "/v1/models";
  if (absl::StatusOr<metrics::Counter*> c = http_requests_->WithLabels({endpoint, std::to_string(res.status)}); c.ok()) {
    (*c)->Increment();
  }
}

void HttpApiServer::Impl::HandleModels(const httplib::Request& req, httplib::Response& res) {
  ApiKey* key = nullptr;
  if (!Authorize(req, res, &key)) return;
  if (req.matches.size() > 1 && !CheckModel(req.matches[1], res)) return;
  EnginePool* engine = ctx_->engine.load();
  json model = {{"id", options_.served_model_name},
                {"object", "model"},
                {"created", absl::ToUnixSeconds(ctx_->start_time)},
                {"owned_by", "sbserve"}};
  // model_dir is written before the engine pointer is published (Server::LoadModel); read it only after.
  if (engine != nullptr) {
    model["root"] = ctx_->model_dir;
    model["max_model_len"] = engine->model_config().n_positions;
  }
  if (req.matches.size() > 1) {
    SendJson(res, 200, model);
  } else {
    SendJson(res, 200, {{"object", "list"}, {"data", json::array({model})}});
  }
}

void HttpApiServer::Impl::HandleTokenize(const httplib::Request& req, httplib::Response& res) {
  ApiKey* key = nullptr;
  json body;
  if (!Authorize(req, res, &key) || !ParseBody(req, res, &body)) return;
  if (body.contains("model") && !body["model"].is_null()) {
    if (!body["model"].is_string()) return SendError(res, MakeError(400, "invalid_request_error", "model: must be a string", "model"));
    if (!CheckModel(body["model"].get<std::string>(), res)) return;
  }
  EnginePool* engine = EngineOrError(res);
  if (engine == nullptr) return;
  const TextCodec* codec = engine->codec();
  if (codec == nullptr) return SendError(res, ErrorFor(absl::FailedPreconditionError("this model has no tokenizer")));
  std::string text;
  bool add_special = true;
  if (body.contains("messages")) {
    // The chat request's prompt: messages through the chat template, as /v1/chat/completions.
    json chat = body;
    absl::StatusOr<ParsedRequest> p = ParseChatRequest(chat, chat_template_.get(), no_template_reason_);
    if (!p.ok()) return SendError(res, ErrorFor(p.status()));
    text = p->prompts[0].text();
    add_special = false;
  } else {
    if (!body.contains("prompt") || !body["prompt"].is_string()) {
      return SendError(res, MakeError(400, "invalid_request_error", "prompt: required, a string", "prompt"));
    }
    text = body["prompt"].get<std::string>();
  }
  if (body.contains("add_special_tokens")) {
    if (!body["add_special_tokens"].is_boolean()) {
      return SendError(res, MakeError(400, "invalid_request_error", "add_special_tokens: must be true or false",
                                      "add_special_tokens"));
    }
    add_special = body["add_special_tokens"].get<bool>();
  }
  absl::StatusOr<std::vector<int32_t>> ids = codec->Encode(text, add_special);
  if (!ids.ok()) return SendError(res, ErrorFor(absl::InvalidArgumentError(absl::StrCat("prompt: ", ids.status().message()))));
  json strs = json::array();
  for (int32_t id : *ids) strs.push_back(tokenizer_internal::Utf8Lossy(codec->TokenBytes(id, false)));
  SendJson(res, 200,
           {{"count", ids->size()},
            {"max_model_len", engine->model_config().n_positions},
            {"tokens", *ids},
            {"token_strs", strs}});
}

void HttpApiServer::Impl::HandleDetokenize(const httplib::Request& req, httplib::Response& res) {
  ApiKey* key = nullptr;
  json body;
  if (!Authorize(req, res, &key) || !ParseBody(req, res, &body)) return;
  if (body.contains("model") && body["model"].is_string() && !CheckModel(body["model"].get<std::string>(), res)) return;
  EnginePool* engine = EngineOrError(res);
  if (engine == nullptr) return;
  const TextCodec* codec = engine->codec();
  if (codec == nullptr) return SendError(res, ErrorFor(absl::FailedPreconditionError("this model has no tokenizer")));
  if (!body.contains("tokens") || !body["tokens"].is_array()) {
    return SendError(res, MakeError(400, "invalid_request_error", "tokens: required, a list of token ids", "tokens"));
  }
  std::vector<int32_t> ids;
  const int vocab = engine->model_config().vocab_size;
  for (const json& t : body["tokens"]) {
    if (!t.is_number_integer()) {
      return SendError(res, MakeError(400, "invalid_request_error", absl::StrCat("tokens: ", t.dump(), " is not a token id"),
                                      "tokens"));
    }
    if (t.get<int64_t>() < 0 || t.get<int64_t>() >= vocab) {
      return SendError(res, MakeError(400, "invalid_request_error",
                                      absl::StrCat("tokens: ", t.dump(), " is outside [0, ", vocab, ")"), "tokens"));
    }
    ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
  }
  SendJson(res, 200, {{"prompt", codec->Decode(ids, false)}});
}

void HttpApiServer::Impl::HandleGenerate(const httplib::Request& req, httplib::Response& res, Api api) {
  const char* route = api == Api::kChat ? "/v1/chat/completions" : "/v1/completions";
  ApiKey* key = nullptr;
  json body;
  if (!Authorize(req, res, &key) || !ParseBody(req, res, &body)) return;
  const absl::Time arrival = absl::Now();

  // `count`: a refusal the request metrics count (as gRPC does: not an API key's own limit).
  auto reject = [&](const absl::Status& s, bool loading, bool count = true) {
    if (count) CountReject(s, loading);
    if (ctx_->log_requests) {
      spdlog::info("request rpc=http:{} peer={} status={} rejected error={}", route, req.remote_addr,
                   ErrorFor(s).http_status, std::string(s.message()));
    }
    SendError(res, ErrorFor(s));
  };

  // Same order as gRPC: draining / loading, then validation.
  bool loading = false;
  EnginePool* engine = nullptr;
  if (ctx_->draining.load()) {
    return reject(absl::UnavailableError("the server is draining; retry on another replica"), false);
  }
  engine = ctx_->engine.load();
  if (engine == nullptr) return reject(absl::UnavailableError("the model is still loading"), true);

  absl::StatusOr<ParsedRequest> parsed = api == Api::kChat
                                             ? ParseChatRequest(body, chat_template_.get(), no_template_reason_)
                                             : ParseCompletionRequest(body);
  if (!parsed.ok()) return reject(parsed.status(), false);
  if (!CheckModel(parsed->model, res)) return;

  absl::Time deadline = absl::InfiniteFuture();
  if (req.has_header(kTimeoutHeader)) {
    int64_t ms = 0;
    if (!absl::SimpleAtoi(req.get_header_value(kTimeoutHeader), &ms) || ms <= 0) {
      return reject(absl::InvalidArgumentError(absl::StrCat(kTimeoutHeader, ": must be a positive integer (milliseconds)")),
                    false);
    }
    deadline = arrival + absl::Milliseconds(ms);
  }

  // Validate every choice before submitting any, so that a bad request leaves nothing behind.
  const std::string base_id = NewRequestId(ctx_);
  const int n = parsed->n;
  const size_t num_choices = parsed->prompts.size() * static_cast<size_t>(n);
  std::vector<GenerateRequest> requests;
  requests.reserve(num_choices);
  for (size_t p = 0; p < parsed->prompts.size(); ++p) {
    for (int j = 0; j < n; ++j) {
      v1::GenerateRequest proto = ChoiceRequest(*parsed, p, j);
      proto.set_request_id(num_choices == 1 ? base_id : absl::StrCat(base_id, "-", requests.size()));
      absl::StatusOr<GenerateRequest> r = PrepareRequest(ctx_, proto, deadline, &engine, &loading);
      if (!r.ok()) return reject(ToOpenAiNames(r.status(), api, parsed->max_completion_tokens), loading);
      requests.push_back(*std::move(r));
    }
  }
  // Echo: a token-id prompt is echoed as its text. With logprobs the prompt's ids are needed for
  // its tokens: a text prompt is tokenized here (as the engine would) and submitted as ids.
  const TextCodec* codec = engine->codec();
  auto prompt_ids = std::make_shared<std::vector<std::vector<int32_t>>>(parsed->prompts.size());
  if (parsed->echo && codec != nullptr) {
    for (size_t p = 0; p < parsed->prompts.size(); ++p) {
      GenerateRequest& first = requests[p * n];
      if (first.has_text && parsed->logprobs >= 0) {
        absl::StatusOr<std::vector<int32_t>> ids = codec->Encode(first.text, first.add_special_tokens);
        if (!ids.ok()) return reject(absl::InvalidArgumentError(absl::StrCat("prompt: ", ids.status().message())), false);
        for (int j = 0; j < n; ++j) {
          requests[p * n + j].has_text = false;
          requests[p * n + j].prompt_ids = *ids;
        }
      }
      if (!first.has_text) {
        (*prompt_ids)[p] = first.prompt_ids;
        if (parsed->echo_texts[p].empty()) parsed->echo_texts[p] = codec->Decode(first.prompt_ids, first.skip_special_tokens);
      }
    }
  }
  // A request's choices are admitted together or not at all: choices that cannot fit the queues
  // are refused before any is submitted, so that one large n x prompts request does not fill the
  // queue and withdraw again, turning other requests away meanwhile (a race with other requests
  // can still leave it to the engines to refuse a late choice).
  if (num_choices > 1) {
    // Each engine queues max_queued_requests, and a prompt's choices share their first KV block, so
    // that routing may send them all to one engine: the choices must fit one engine's queue.
    const int64_t limit = engine->options().max_queued_requests;
    if (static_cast<int64_t>(num_choices) > limit) {
      return reject(absl::InvalidArgumentError(absl::StrCat("n: ", num_choices, " choices (n x prompts) exceed the ",
                                                            limit, " requests an engine queues")),
                    false);
    }
    int64_t waiting = limit;  // on the serving engine with the most room
    for (int i = 0; i < engine->size(); ++i) {
      if (engine->serving(i)) waiting = std::min<int64_t>(waiting, engine->EngineStatsAt(i).waiting);
    }
    if (waiting + static_cast<int64_t>(num_choices) > limit) {
      absl::Status full = absl::ResourceExhaustedError(absl::StrCat(
          "queue full: ", waiting, " requests waiting + ", num_choices, " choices exceed the limit of ", limit));
      full.SetPayload(kRetryAfterPayloadUrl,
                      absl::Cord(absl::StrCat(absl::ToInt64Milliseconds(engine->options().retry_after))));
      return reject(full, false);
    }
  }
  if (absl::Status s = ApiKeys::Acquire(key); !s.ok()) return reject(s, false, /*count=*/false);

  auto gen = std::make_shared<Generation>(engine, key);
  gen->Expect(static_cast<int>(requests.size()));
  for (size_t i = 0; i < requests.size(); ++i) {
    gen->AddChoice(requests[i].request_id);
    absl::Status s = engine->Submit(std::move(requests[i]),
                                    [gen, i](GenerateEvent e) { gen->Push(static_cast<int>(i), std::move(e)); });
    if (!s.ok()) {
      gen->DropChoices(static_cast<int>(requests.size() - i));
      gen->AbortAll();
      return reject(ToOpenAiNames(s, api, parsed->max_completion_tokens), false);
    }
  }

  const std::string id = absl::StrCat(api == Api::kChat ? "chatcmpl-" : "cmpl-", base_id);
  const int64_t created = absl::ToUnixSeconds(arrival);
  const std::string& model = options_.served_model_name;
  auto choices = std::make_shared<std::vector<Choice>>(num_choices);
  for (size_t i = 0; i < num_choices; ++i) {
    if (parsed->echo) (*choices)[i].text_offset = (*choices)[i].next_lp_offset = parsed->echo_texts[i / n].size();
  }
  const int fd = ConnectionSocket(req);
  const std::string peer = req.remote_addr;
  auto p = std::make_shared<ParsedRequest>(*std::move(parsed));

  // Folds events into the choices; returns the indices that changed.
  auto apply = [choices](std::deque<ChoiceEvent>& events) {
    for (ChoiceEvent& ce : events) {
      Choice& c = (*choices)[ce.index];
      GenerateEvent& e = ce.event;
      c.text += e.text;
      for (StepLogprobs& lp : e.logprobs) c.logprobs.push_back(std::move(lp));
      for (StepLogprobs& lp : e.prompt_logprobs) c.prompt_logprobs.push_back(std::move(lp));
      if (e.finished) {
        c.finished = true;
        c.finish = e.finish_reason;
        c.status = e.status;
        c.prompt_tokens = e.prompt_tokens;
        c.completion_tokens = e.completion_tokens;
      }
    }
  };
  auto usage = [choices, n]() {
    int64_t prompt = 0, completion = 0;
    for (size_t i = 0; i < choices->size(); ++i) {
      if (i % n == 0) prompt += (*choices)[i].prompt_tokens;  // a prompt counts once, however many choices
      completion += (*choices)[i].completion_tokens;
    }
    return json{{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
  };
  auto first_error = [choices]() {
    for (const Choice& c : *choices) {
      if (c.finished && !c.status.ok()) return c.status;
    }
    return absl::OkStatus();
  };
  auto log_done = [this, route, id, peer, choices, key](int http_status, const absl::Status& st) {
    if (!ctx_->log_requests) return;
    int64_t completion = 0;
    for (const Choice& c : *choices) completion += c.completion_tokens;
    spdlog::info("request rpc=http:{} id={} peer={}{}{} status={} choices={} finish={} prompt_tokens={} "
                 "completion_tokens={}{}{}",
                 route, id, peer, key != nullptr ? " key=" : "", key != nullptr ? key->name : "", http_status,
                 choices->size(), FinishReasonName(choices->front().finish), choices->front().prompt_tokens, completion,
                 st.ok() ? "" : " error=", std::string(st.message()));
  };

  if (!p->stream) {
    size_t finished = 0;
    std::deque<ChoiceEvent> events;
    while (finished < num_choices) {
      events.clear();
      if (!gen->Wait(&events, fd, stopping_)) {
        // The client went away (or the server stops): nobody will read the reply.
        gen->AbortAll();
        log_done(499, absl::CancelledError("client went away"));
        res.status = 499;
        return;
      }
      for (const ChoiceEvent& ce : events) finished += ce.event.finished ? 1 : 0;
      apply(events);
    }
    if (absl::Status st = first_error(); !st.ok()) {
      log_done(ErrorFor(st).http_status, st);
      return SendError(res, ErrorFor(st));
    }
    json out_choices = json::array();
    for (size_t i = 0; i < num_choices; ++i) {
      const Choice& c = (*choices)[i];
      json lp = nullptr;
      if (p->logprobs >= 0 && codec != nullptr) {
        lp = api == Api::kChat ? json{{"content", ChatLogprobsContent(c.logprobs, *codec, p->logprobs)}, {"refusal", nullptr}}
                               : CompletionLogprobs(c.logprobs, *codec, p->logprobs, c.text, c.text_offset, c.text_offset,
                                                    p->skip_special_tokens);
        if (api == Api::kCompletions && p->echo) {
          json all = EchoLogprobs((*prompt_ids)[i / n], c.prompt_logprobs, *codec, p->logprobs, p->echo_texts[i / n],
                                   p->skip_special_tokens);
          AppendLogprobs(&all, lp);
          lp = std::move(all);
        }
      }
      if (api == Api::kChat) {
        out_choices.push_back({{"index", i},
                               {"message", {{"role", "assistant"}, {"content", c.text}}},
                               {"logprobs", lp},
                               {"finish_reason", FinishReasonString(c.finish)}});
      } else {
        out_choices.push_back({{"index", i},
                               {"text", p->echo ? p->echo_texts[i / n] + c.text : c.text},
                               {"logprobs", lp},
                               {"finish_reason", FinishReasonString(c.finish)}});
      }
    }
    log_done(200, absl::OkStatus());
    return SendJson(res, 200,
                    {{"id", id},
                     {"object", api == Api::kChat ? "chat.completion" : "text_completion"},
                     {"created", created},
                     {"model", model},
                     {"choices", out_choices},
                     {"usage", usage()}});
  }

  // Streaming: server-sent events, one `data: {chunk}` per choice update, `data: [DONE]` last.
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  auto chunk = [id, created, model, api, p](json choice) {
    json c = {{"id", id},
              {"object", api == Api::kChat ? "chat.completion.chunk" : "text_completion"},
              {"created", created},
              {"model", model},
              {"choices", json::array({std::move(choice)})}};
    if (p->include_usage) c["usage"] = nullptr;
    return absl::StrCat("data: ", Dump(c), "\n\n");
  };
  auto started = std::make_shared<bool>(false);
  auto finished = std::make_shared<size_t>(0);
  auto done = std::make_shared<bool>(false);
  res.set_chunked_content_provider(
      "text/event-stream",
      [=, this](size_t, httplib::DataSink& sink) {
        std::string out;
        if (!*started) {
          *started = true;
          for (size_t i = 0; i < num_choices; ++i) {
            if (api == Api::kChat) {
              out += chunk({{"index", i},
                            {"delta", {{"role", "assistant"}, {"content", ""}}},
                            {"logprobs", nullptr},
                            {"finish_reason", nullptr}});
            } else if (p->echo && !(p->logprobs >= 0 && codec != nullptr)) {
              out += chunk({{"index", i}, {"text", p->echo_texts[i / n]}, {"logprobs", nullptr}, {"finish_reason", nullptr}});
              (*choices)[i].echoed = true;
            }
          }
        }
        std::deque<ChoiceEvent> events;
        if (!gen->Wait(&events, fd, stopping_)) {
          gen->AbortAll();
          log_done(499, absl::CancelledError("client went away"));
          return false;
        }
        absl::Status error;
        for (ChoiceEvent& ce : events) {
          Choice& c = (*choices)[ce.index];
          const GenerateEvent& e = ce.event;
          std::deque<ChoiceEvent> one;
          one.push_back(ce);
          apply(one);
          if (e.finished && !e.status.ok()) {
            if (error.ok()) error = e.status;
            continue;
          }
          if (api == Api::kCompletions && p->echo && !c.echoed) {
            // Echo with logprobs: the prompt's chunk carries its logprobs, which come with the first event.
            c.echoed = true;
            out += chunk({{"index", ce.index},
                          {"text", p->echo_texts[ce.index / n]},
                          {"logprobs", EchoLogprobs((*prompt_ids)[ce.index / n], c.prompt_logprobs, *codec,
                                                    p->logprobs, p->echo_texts[ce.index / n], p->skip_special_tokens)},
                          {"finish_reason", nullptr}});
          }
          const bool has_lp = p->logprobs >= 0 && codec != nullptr && !e.logprobs.empty();
          if (!e.text.empty() || has_lp) {
            json lp = nullptr;
            if (has_lp) {
              lp = api == Api::kChat ? json{{"content", ChatLogprobsContent(e.logprobs, *codec, p->logprobs)}, {"refusal", nullptr}}
                                     : CompletionLogprobs(e.logprobs, *codec, p->logprobs, c.text, c.text_offset,
                                                          c.next_lp_offset, p->skip_special_tokens, &c.next_lp_offset);
            }
            if (api == Api::kChat) {
              out += chunk({{"index", ce.index}, {"delta", {{"content", e.text}}}, {"logprobs", lp}, {"finish_reason", nullptr}});
            } else {
              out += chunk({{"index", ce.index}, {"text", e.text}, {"logprobs", lp}, {"finish_reason", nullptr}});
            }
          }
          if (e.finished) {
            ++*finished;
            if (api == Api::kChat) {
              out += chunk({{"index", ce.index}, {"delta", json::object()}, {"logprobs", nullptr},
                            {"finish_reason", FinishReasonString(e.finish_reason)}});
            } else {
              out += chunk({{"index", ce.index}, {"text", ""}, {"logprobs", nullptr},
                            {"finish_reason", FinishReasonString(e.finish_reason)}});
            }
          }
        }
        if (!error.ok()) {
          // The status line went out with the headers; an error event is what OpenAI clients read
          // mid-stream (they raise it). The other choices end here too.
          gen->AbortAll();
          *done = true;
          out += absl::StrCat("data: ", Dump(ErrorFor(error).body), "\n\ndata: [DONE]\n\n");
          log_done(ErrorFor(error).http_status, error);
        } else if (*finished == num_choices) {
          *done = true;
          if (p->include_usage) {
            out += absl::StrCat("data: ",
                                Dump({{"id", id},
                                      {"object", api == Api::kChat ? "chat.completion.chunk" : "text_completion"},
                                      {"created", created},
                                      {"model", model},
                                      {"choices", json::array()},
                                      {"usage", usage()}}),
                                "\n\n");
          }
          out += "data: [DONE]\n\n";
          log_done(200, absl::OkStatus());
        }
        if (!out.empty() && !sink.write(out.data(), out.size())) {
          gen->AbortAll();
          if (!*done) log_done(499, absl::CancelledError("client went away"));
          return false;
        }
        if (*done) sink.done();
        return true;
      },
      // Runs when the response ends, written or not: a stream that never got to its end (the
      // connection failed before the first write, the server stopped) must not leave requests.
      [gen](bool) { gen->AbortAll(); });
}

HttpApiServer::HttpApiServer(ServiceContext* ctx, metrics::Registry* registry, HttpApiOptions options)
    : impl_(std::make_unique<Impl>(ctx, registry, std::move(options))) {}
HttpApiServer::~HttpApiServer() = default;
absl::Status HttpApiServer::Start() { return impl_->Start(); }
void HttpApiServer::Stop() { impl_->Stop(); }
int HttpApiServer::port() const { return impl_->port(); }
void HttpApiServer::SetChatTemplate(std::unique_ptr<ChatTemplate> chat_template, std::string why_none) {
  impl_->chat_template_ = std::move(chat_template);
  impl_->no_template_reason_ = std::move(why_none);
}

}  // namespace sbserve::openai
