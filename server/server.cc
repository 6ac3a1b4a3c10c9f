#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/backend.h"
#include "engine/model/checkpoint.h"
#include "engine/model/dtype.h"
#include "engine/engine.h"
#include "engine/model/model_writer.h"
#include "engine/tokenizer/tokenizer.h"
#include "server/engine_pool.h"
#include "server/metrics/http_server.h"
#include "server/metrics/nvml_metrics.h"
#include "server/metrics/process_metrics.h"
#include "server/metrics/registry.h"
#include "server/metrics/serving_metrics.h"
#include "server/metrics_observer.h"
#include "server/openai/chat_template.h"
#include "server/openai/http_api.h"
#include "server/service.h"
#include "server/tls.h"
#include "server/api_keys.h"
#include "spdlog/spdlog.h"

#ifdef SBSERVE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace sbserve {

class Server::Impl {
 public:
  explicit Impl(ServerOptions o) : options_(std::move(o)), service_(&ctx_) { ctx_.log_requests = options_.log_requests; }

  ~Impl() { Shutdown(); }

  absl::Status Start();
  absl::Status LoadModel();
  void BeginDrain();
  bool WaitDrained(absl::Duration timeout);
  void Shutdown();
  absl::Status ReloadTls();
  std::string Banner() const;

  int port_ = 0;
  int metrics_port_ = 0;
  int probe_port_ = 0;
  int http_port_ = 0;
  std::atomic<bool> ready_{false};
  std::mutex ready_mu_;  // SetReady's decisions and the health service's status, in one order; grpc_'s reset
  std::function<void(const absl::Status&)> on_fatal_;  // set before LoadModel

  // Engine `engine`'s backend failed a step (engine thread). Unhealthy: the pool stops routing to
  // that engine; with none left, readiness is off for good while liveness stays (an orchestrator
  // restarts the process). Fatal (a sticky device error on any engine): readiness off, drain,
  // then the fatal handler, which exits non-zero: the device cannot be trusted and a restart is
  // the one way to get it back.
  void OnStepFailure(int engine, const StepFailure& f) {
    const std::string& device = pool_->device(engine);
    spdlog::error("engine step failed on {} ({} in a row): {}", device, f.consecutive, f.status.ToString());
    if (!f.unhealthy || engine_out_[engine].exchange(true)) return;
    const int left = pool_->TakeOut(engine);
    if (pool_->size() > 1) {
      spdlog::error("engine {} on {} unhealthy{}: no longer routed to; {} of {} engines serve", engine, device,
                    f.fatal ? " (fatal device error)" : "", left, pool_->size());
    }
    if (!f.fatal && left > 0) return;
    if (backend_failed_.exchange(true)) return;
    spdlog::error("backend unhealthy{}: readiness NOT_SERVING until the process is restarted",
                  f.fatal ? " (fatal device error)" : "");
    SetReady(false);
    if (f.fatal) {
      ctx_.draining.store(true);
      if (on_fatal_) on_fatal_(f.status);
    }
  }

 private:
  // The backend of one engine: CUDA device `device`, or the CPU backend when `device` < 0.
  absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const Checkpoint& ckpt, int device);
  // The engines' devices from --devices/--device/--backend: CUDA ordinals, or -1 per CPU engine
  // (an empty list: one engine, --backend auto picks).
  absl::StatusOr<std::vector<int>> EngineDevices() const;
  void SetReady(bool ready);
  void RegisterDeviceMetrics(const std::string& model_dir);
  absl::Status LoadChatTemplate(const std::string& model_dir);
  std::string ServedModelName() const;

  ServerOptions options_;
  ServiceContext ctx_;
  SbServeService service_;
  metrics::Registry registry_;
  std::unique_ptr<metrics::ServingMetrics> metrics_;
  std::unique_ptr<metrics::EngineMetrics> engine_metrics_;
  std::unique_ptr<TlsFiles> tls_;
  std::unique_ptr<ApiKeys> api_keys_;
  std::unique_ptr<metrics::MetricsHttpServer> http_;
  std::unique_ptr<metrics::MetricsHttpServer> probe_http_;  // --probe-port
  std::unique_ptr<openai::HttpApiServer> http_api_;         // --http-port
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<EnginePool> pool_;
  std::unique_ptr<std::atomic<bool>[]> engine_out_;  // per engine: taken out of routing
  std::mutex shutdown_mu_;
  bool shut_down_ = false;
  std::atomic<bool> backend_failed_{false};
};

// The engine's reports: metrics, plus the server's own reaction to a failing backend.
class ServerObserver final : public EngineObserver {
 public:
  ServerObserver(std::shared_ptr<MetricsObserver> metrics, std::function<void(const StepFailure&)> on_failure)
      : metrics_(std::move(metrics)), on_failure_(std::move(on_failure)) {}
  void OnStep(const StepReport& r) override { metrics_->OnStep(r); }
  void OnToken(absl::Duration d) override { metrics_->OnToken(d); }
  void OnFinish(const FinishReport& r) override { metrics_->OnFinish(r); }
  void OnState(const QueueState& s) override { metrics_->OnState(s); }
  void OnStepFailure(const StepFailure& f) override {
    metrics_->OnStepFailure(f);
    on_failure_(f);
  }

 private:
  std::shared_ptr<MetricsObserver> metrics_;
  std::function<void(const StepFailure&)> on_failure_;
};

void Server::Impl::SetReady(bool ready) {
  // One at a time, and never ready once draining or failed: LoadModel's "ready" cannot land after
  // a drain or a backend failure that began while it was finishing.
  std::lock_guard<std::mutex> lock(ready_mu_);
  if (ctx_.draining.load() || backend_failed_.load()) ready = false;
  ready_.store(ready);
  ctx_.ready.store(ready);
  if (grpc_ != nullptr && grpc_->GetHealthCheckService() != nullptr) {
    grpc_->GetHealthCheckService()->SetServingStatus(kReadinessService, ready);
  }
}

absl::Status Server::Impl::Start() {
  absl::StatusOr<metrics::ServingMetrics> m = metrics::ServingMetrics::Create(registry_);
  if (!m.ok()) return m.status();
  metrics_ = std::make_unique<metrics::ServingMetrics>(*std::move(m));
  absl::StatusOr<metrics::EngineMetrics> em = metrics::EngineMetrics::Create(registry_);
  if (!em.ok()) return em.status();
  engine_metrics_ = std::make_unique<metrics::EngineMetrics>(*std::move(em));
  ctx_.metrics = metrics_.get();
  if (absl::Status s = metrics::RegisterProcessMetrics(registry_); !s.ok()) {
    spdlog::warn("no process metrics: {}", std::string(s.message()));
  }

  if (!options_.api_keys_file.empty()) {
    absl::StatusOr<std::unique_ptr<ApiKeys>> keys = ApiKeys::Load(options_.api_keys_file);
    if (!keys.ok()) return keys.status();
    api_keys_ = *std::move(keys);
    ctx_.api_keys = api_keys_.get();
    spdlog::info("API keys: {} loaded; sbserve.v1 RPCs need 'authorization: Bearer KEY'", api_keys_->size());
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!options_.tls_cert.empty()) {
    absl::StatusOr<std::unique_ptr<TlsFiles>> tls =
        TlsFiles::Create(options_.tls_cert, options_.tls_key, options_.tls_client_ca);
    if (!tls.ok()) return tls.status();
    tls_ = *std::move(tls);
    creds = tls_->GrpcCredentials();
  }
  // Without SO_REUSEPORT a port another process listens on is an error here, not a second server
  // silently sharing its connections (gRPC turns it on by default on Linux).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(absl::StrCat(options_.host, ":", options_.port), creds, &port_);
  builder.SetMaxReceiveMessageSize(options_.max_message_bytes);
  builder.SetMaxSendMessageSize(options_.max_message_bytes);
  builder.RegisterService(&service_);
  grpc_ = builder.BuildAndStart();
  if (grpc_ == nullptr || port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.host, ":", options_.port));
  }
  // Live at once; ready only once the model is loaded.
  grpc_->GetHealthCheckService()->SetServingStatus("", true);
  SetReady(false);

  if (options_.metrics_port >= 0) {
    metrics::MetricsHttpServerOptions ho;
    ho.host = options_.metrics_host;
    ho.port = options_.metrics_port;
    ho.live = [] { return true; };
    ho.ready = [this] { return ready_.load(); };
    if (api_keys_ != nullptr && !options_.metrics_open) {
      ho.authorize_metrics = [this](const std::string& auth) { return api_keys_->Authenticate(auth).ok(); };
    }
    if (tls_ != nullptr) ho.tls_setup = [this](void* ctx) { return tls_->SetupSslCtx(ctx); };
    http_ = std::make_unique<metrics::MetricsHttpServer>(registry_, ho);
    if (absl::Status s = http_->Start(); !s.ok()) return s;
    metrics_port_ = http_->port();
  }
  // The open operations listener: plain HTTP, no API key, for probes (kubelet has no client
  // certificate under mTLS) and for a scraper inside the pod network.
  if (options_.probe_port >= 0) {
    metrics::MetricsHttpServerOptions po;
    po.host = options_.metrics_host;
    po.port = options_.probe_port;
    po.live = [] { return true; };
    po.ready = [this] { return ready_.load(); };
    probe_http_ = std::make_unique<metrics::MetricsHttpServer>(registry_, po);
    if (absl::Status s = probe_http_->Start(); !s.ok()) return s;
    probe_port_ = probe_http_->port();
  }
  // The OpenAI-compatible HTTP API: a second front door to the same engine (ctx_), with the same
  // API keys and TLS material.
  if (options_.http_port >= 0) {
    openai::HttpApiOptions ao;
    ao.host = options_.http_host;
    ao.port = options_.http_port;
    ao.served_model_name = ServedModelName();
    ao.worker_threads = options_.http_threads;
    ao.max_body_bytes = static_cast<size_t>(options_.max_message_bytes);
    ao.ready = [this] { return ready_.load(); };
    ao.metrics_need_key = api_keys_ != nullptr && !options_.metrics_open;
    if (tls_ != nullptr) ao.tls_setup = [this](void* ctx) { return tls_->SetupSslCtx(ctx); };
    http_api_ = std::make_unique<openai::HttpApiServer>(&ctx_, &registry_, ao);
    if (absl::Status s = http_api_->Start(); !s.ok()) return s;
    http_port_ = http_api_->port();
  }
  return absl::OkStatus();
}

std::string Server::Impl::ServedModelName() const {
  if (!options_.served_model_name.empty()) return options_.served_model_name;
  if (options_.model.empty()) return "sbserve-demo";
  std::string model = options_.model;
  while (model.size() > 1 && model.back() == '/') model.pop_back();
  if (const size_t slash = model.rfind('/'); slash != std::string::npos) model = model.substr(slash + 1);
  return model;
}

namespace {

// A special token of tokenizer_config.json: a string or an {"content": ...} object; "" if absent.
std::string SpecialToken(const nlohmann::json& config, const char* name) {
  auto it = config.find(name);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  return "";
}

}  // namespace

// --chat-template FILE must parse (the load fails otherwise, naming the construct); without it the
// checkpoint's own template is used when it has one. A checkpoint template outside the Jinja
// subset is logged and chat requests are answered 400 with the reason; gRPC is unaffected.
absl::Status Server::Impl::LoadChatTemplate(const std::string& dir) {
  const std::string config_path = dir + "/tokenizer_config.json";
  std::unique_ptr<ChatTemplate> chat;
  std::string why;
  if (!options_.chat_template.empty()) {
    std::ifstream file(options_.chat_template, std::ios::binary);
    if (!file) return absl::NotFoundError(absl::StrCat("--chat-template: cannot read ", options_.chat_template));
    std::stringstream text;
    text << file.rdbuf();
    nlohmann::json config = nlohmann::json::object();
    if (std::ifstream cf(config_path); cf) {
      std::stringstream ct;
      ct << cf.rdbuf();
      config = nlohmann::json::parse(ct.str(), nullptr, false);
      if (config.is_discarded()) config = nlohmann::json::object();
    }
    absl::StatusOr<ChatTemplate> t =
        ChatTemplate::FromSource(text.str(), SpecialToken(config, "bos_token"), SpecialToken(config, "eos_token"));
    if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat("--chat-template ", options_.chat_template, ": ", t.status().message()));
    chat = std::make_unique<ChatTemplate>(*std::move(t));
    spdlog::info("chat template: {}", options_.chat_template);
  } else if (absl::StatusOr<ChatTemplate> t = ChatTemplate::FromTokenizerConfig(config_path); t.ok()) {
    chat = std::make_unique<ChatTemplate>(*std::move(t));
    spdlog::info("chat template: {}'s chat_template", config_path);
  } else if (absl::IsNotFound(t.status())) {
    why = "its tokenizer_config.json has no chat_template";
    spdlog::info("no chat template in {}; /v1/chat/completions answers 400 (--chat-template FILE gives one)", config_path);
  } else {
    why = absl::StrCat("its chat_template does not load: ", t.status().message());
    spdlog::error("chat template of {} does not load ({}); /v1/chat/completions answers 400", config_path,
                  std::string(t.status().message()));
  }
  http_api_->SetChatTemplate(std::move(chat), why);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int>> Server::Impl::EngineDevices() const {
  absl::StatusOr<DeviceList> list = ParseDevices(options_.devices);
  if (!list.ok()) return list.status();
  if (list->cpu_engines > 0) {
    if (options_.backend == "cuda") return absl::InvalidArgumentError("--devices cpu:N contradicts --backend cuda");
    return std::vector<int>(list->cpu_engines, -1);
  }
  if (!list->all && list->cuda.empty()) return std::vector<int>{};
  if (options_.backend == "cpu") {
    return absl::InvalidArgumentError("--devices lists CUDA devices but --backend is cpu (for CPU engines: --devices cpu:N)");
  }
  if (!list->all) return list->cuda;
  int count = 0;
#ifdef SBSERVE_HAVE_CUDA
  if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
#endif
  if (count < 1) return absl::FailedPreconditionError("--devices all: no CUDA device found");
  std::vector<int> all(count);
  for (int i = 0; i < count; ++i) all[i] = i;
  return all;
}

absl::StatusOr<std::unique_ptr<Backend>> Server::Impl::MakeBackend(const Checkpoint& ckpt, int device) {
  if (options_.backend != "cpu" && device >= 0) {
    CudaBackendOptions co;
    co.device = device;
    co.deterministic = options_.deterministic || ckpt.config().deterministic;
    if (co.deterministic) spdlog::info("CUDA device {}: batch-invariant (deterministic) mode", device);
    absl::StatusOr<std::unique_ptr<Backend>> cuda = CreateCudaBackend(ckpt, co);
    if (cuda.ok()) return cuda;
    // --devices asks for these GPUs: no silent fallback to the CPU.
    if (options_.backend == "cuda" || !options_.devices.empty()) {
      return absl::Status(cuda.status().code(), absl::StrCat("CUDA device ", device, ": ", cuda.status().message()));
    }
    spdlog::info("CUDA backend unavailable ({}); using the CPU backend", std::string(cuda.status().message()));
  }
  CpuBackendOptions cpu;
  cpu.num_threads = options_.cpu_threads;
  return CreateCpuBackend(ckpt, cpu);
}

// sbserve_build_info, and on the CUDA backend the serving device's NVML gauges.
void Server::Impl::RegisterDeviceMetrics(const std::string& model_dir) {
  const std::string backend = pool_->backend().name();
  std::string model = model_dir;
  while (model.size() > 1 && model.back() == '/') model.pop_back();
  if (const size_t slash = model.rfind('/'); slash != std::string::npos && slash + 1 < model.size()) {
    model = model.substr(slash + 1);
  }
  std::string cuda = "none";
  metrics::NvmlMetricsOptions nvml;
  // Every engine's GPU, by PCI bus id (CUDA ordinals and NVML indices differ under
  // CUDA_VISIBLE_DEVICES); by index when a bus id is unknown.
  std::vector<int> devices = {options_.device};
  if (absl::StatusOr<std::vector<int>> d = EngineDevices(); d.ok() && !d->empty() && (*d)[0] >= 0) devices = *d;
  nvml.index = static_cast<unsigned int>(devices[0] < 0 ? 0 : devices[0]);
#ifdef SBSERVE_HAVE_CUDA
  cuda = absl::StrCat(CUDART_VERSION / 1000, ".", (CUDART_VERSION % 1000) / 10);
  for (int device : devices) {
    char bus_id[32] = {};
    if (cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), device) != cudaSuccess) {
      nvml.pci_bus_ids.clear();
      break;
    }
    nvml.pci_bus_ids.push_back(bus_id);
  }
#endif
  if (absl::Status s = metrics::RegisterBuildInfo(registry_, {kSbserveVersion, backend, cuda, model}); !s.ok()) {
    spdlog::warn("no build info metric: {}", std::string(s.message()));
  }
  if (backend == "cuda") {
    if (absl::Status s = metrics::RegisterNvmlMetrics(registry_, nvml); !s.ok()) {
      spdlog::info("no GPU metrics: {}", std::string(s.message()));
    }
  }
}

absl::Status Server::Impl::LoadModel() {
  if (options_.load_delay > absl::ZeroDuration()) absl::SleepFor(options_.load_delay);
  std::string dir = options_.model;
  if (dir.empty()) {
    absl::StatusOr<std::string> demo = EnsureDemoModel();
    if (!demo.ok()) return demo.status();
    dir = *demo;
    spdlog::info("no --model given; serving the demo model in {}", dir);
  }
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) return ckpt.status();
  checkpoint_ = *std::move(ckpt);
  absl::StatusOr<std::vector<int>> devices = EngineDevices();
  if (!devices.ok()) return devices.status();
  const bool one_auto = devices->empty();  // one engine; --backend and --device pick
  if (one_auto) devices->push_back(options_.device);
  // One engine per device, each with its own backend, tokenizer and engine thread.
  std::vector<std::unique_ptr<Engine>> engines;
  std::vector<std::string> labels;
  for (size_t i = 0; i < devices->size(); ++i) {
    const int device = (*devices)[i];
    absl::StatusOr<std::unique_ptr<Backend>> backend = MakeBackend(*checkpoint_, device);
    if (!backend.ok()) return backend.status();
    if (options_.wrap_backend) backend = options_.wrap_backend(*std::move(backend));
    std::unique_ptr<Tokenizer> tokenizer;
    if (absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load(dir); tok.ok()) {
      tokenizer = *std::move(tok);
    } else if (i == 0) {
      spdlog::warn("no usable tokenizer in {} ({}); only token-id input is served", dir,
                   std::string(tok.status().message()));
    }
    const bool cuda = (*backend)->name() == "cuda";
    labels.push_back(cuda ? absl::StrCat("cuda:", device) : absl::StrCat("cpu:", one_auto ? 0 : static_cast<int>(i)));
    absl::StatusOr<std::unique_ptr<Engine>> engine =
        Engine::Create(options_.engine, *std::move(backend), std::move(tokenizer));
    if (!engine.ok()) {
      if (devices->size() == 1) return engine.status();
      return absl::Status(engine.status().code(), absl::StrCat(labels.back(), ": ", engine.status().message()));
    }
    engines.push_back(*std::move(engine));
  }
  EnginePoolOptions po;
  po.affinity_slack = options_.affinity_slack;
  absl::StatusOr<std::unique_ptr<EnginePool>> pool = EnginePool::Create(std::move(engines), labels, po);
  if (!pool.ok()) return pool.status();
  pool_ = *std::move(pool);
  engine_out_.reset(new std::atomic<bool>[pool_->size()]);
  auto totals = std::make_shared<EngineTotals>(metrics_.get(), pool_->size());
  for (int i = 0; i < pool_->size(); ++i) {
    engine_out_[i].store(false);
    absl::StatusOr<metrics::EngineSeries> series = engine_metrics_->ForEngine(absl::StrCat(i), pool_->device(i));
    if (!series.ok()) return series.status();
    pool_->SetObserver(i, std::make_shared<ServerObserver>(
                              std::make_shared<MetricsObserver>(metrics_.get(), *series, totals, i),
                              [this, i](const StepFailure& f) { OnStepFailure(i, f); }));
    // The capacity is known before the first step.
    const EngineStats es = pool_->EngineStatsAt(i);
    QueueState qs;
    qs.kv_blocks_total = es.kv_blocks_total;
    totals->SetState(i, *series, qs);
  }
  RegisterDeviceMetrics(dir);
  if (http_api_ != nullptr) {
    if (absl::Status s = LoadChatTemplate(dir); !s.ok()) return s;
  }
  ctx_.model_dir = dir;
  ctx_.weight_dtype = DTypeName(checkpoint_->weight_dtype());
  ctx_.engine.store(pool_.get());
  const EngineStats st = pool_->EngineStatsAt(0);
  spdlog::info("model ready: {} ({} layers, d={}, vocab {}, context {}, {}) on the {} backend; KV cache {} blocks x {}{}",
               dir, pool_->model_config().n_layer, pool_->model_config().n_embd, pool_->model_config().vocab_size,
               pool_->model_config().n_positions, RemainderName(pool_->model_config().remainder),
               pool_->backend().name(), st.kv_blocks_total, st.kv_block_size,
               pool_->size() > 1 ? absl::StrCat(" per engine; ", pool_->size(), " engines on ", absl::StrJoin(labels, ", "))
                                 : std::string());
  for (int i = 0; i < pool_->size(); ++i) {
    spdlog::info("{}{}", pool_->size() > 1 ? absl::StrCat("engine ", i, " (", pool_->device(i), "): ") : std::string(),
                 pool_->engine(i).capacity().summary);
  }
  SetReady(true);  // unless a drain or a backend failure began meanwhile
  return absl::OkStatus();
}

void Server::Impl::BeginDrain() {
  ctx_.draining.store(true);
  SetReady(false);
}

bool Server::Impl::WaitDrained(absl::Duration timeout) {
  EnginePool* pool = ctx_.engine.load();
  if (pool == nullptr) return true;
  return pool->Drain(timeout);
}

void Server::Impl::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  ctx_.draining.store(true);
  SetReady(false);
  // Ending the engine first gives every open stream its final event, so the gRPC shutdown
  // below has only short writes to wait for.
  if (pool_ != nullptr) pool_->Shutdown();
  if (grpc_ != nullptr) grpc_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (http_ != nullptr) http_->Stop();
  if (probe_http_ != nullptr) probe_http_->Stop();
  if (http_api_ != nullptr) http_api_->Stop();
  ctx_.engine.store(nullptr);
  {
    std::lock_guard<std::mutex> lock(ready_mu_);  // SetReady reads grpc_
    grpc_.reset();
  }
  pool_.reset();
}

absl::Status Server::Impl::ReloadTls() {
  if (tls_ == nullptr) return absl::FailedPreconditionError("TLS is off (no --tls-cert)");
  return tls_->Reload();
}

std::string Server::Impl::Banner() const {
  const std::string addr = absl::StrCat(options_.host == "0.0.0.0" ? "localhost" : options_.host, ":", port_);
  std::string out = absl::StrCat("sbserve listening on ", options_.host, ":", port_, " (gRPC, sbserve.v1.SbServe)\n",
                                 "  try: sbctl --addr ", addr, " generate \"Once upon a time\"\n",
                                 "       sbctl --addr ", addr, " health | info\n",
                                 tls_ != nullptr ? absl::StrCat("       grpcurl -cacert CA.pem ", addr, " list   (TLS",
                                                                tls_->mtls() ? ", mTLS" : "", "; server reflection is on)\n")
                                                 : absl::StrCat("       grpcurl -plaintext ", addr,
                                                                " list   (server reflection is on)\n"));
  if (metrics_port_ > 0) {
    absl::StrAppend(&out, tls_ != nullptr ? "  metrics: https://localhost:" : "  metrics: http://localhost:", metrics_port_, "/metrics  (probes: /health, /ready)\n");
  }
  if (probe_port_ > 0) {
    absl::StrAppend(&out, "  probes: http://localhost:", probe_port_, "/health, /ready, /metrics  (plain HTTP, no key)\n");
  }
  if (http_port_ > 0) {
    const std::string scheme = tls_ != nullptr ? "https" : "http";
    absl::StrAppend(&out, "  OpenAI API: ", scheme, "://localhost:", http_port_, "/v1  (model '", ServedModelName(),
                    "'; /v1/completions, /v1/chat/completions, /v1/models)\n",
                    "  try: curl ", scheme, "://localhost:", http_port_,
                    "/v1/completions -H 'Content-Type: application/json' -d '{\"prompt\": \"Once upon a time\", "
                    "\"max_tokens\": 32}'\n");
  }
  return out;
}

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Server::~Server() { Shutdown(); }
absl::Status Server::Start() { return impl_->Start(); }
absl::Status Server::LoadModel() { return impl_->LoadModel(); }
void Server::BeginDrain() { impl_->BeginDrain(); }
bool Server::WaitDrained(absl::Duration timeout) { return impl_->WaitDrained(timeout); }
void Server::Shutdown() { impl_->Shutdown(); }
absl::Status Server::ReloadTls() { return impl_->ReloadTls(); }
int Server::port() const { return impl_->port_; }
int Server::metrics_port() const { return impl_->metrics_port_; }
int Server::probe_port() const { return impl_->probe_port_; }
int Server::http_port() const { return impl_->http_port_; }
bool Server::ready() const { return impl_->ready_.load(); }
std::string Server::Banner() const { return impl_->Banner(); }
void Server::SetFatalHandler(std::function<void(const absl::Status&)> handler) { impl_->on_fatal_ = std::move(handler); }

}  // namespace sbserve
