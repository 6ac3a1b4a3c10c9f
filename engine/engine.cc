#include "engine/engine.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/capacity.h"
#include "engine/kv_cache.h"
#include "engine/scheduler.h"

namespace sbserve {
namespace {

absl::Status Exhausted(std::string message, absl::Duration retry_after) {
  absl::Status s = absl::ResourceExhaustedError(std::move(message));
  s.SetPayload(kRetryAfterPayloadUrl, absl::Cord(absl::StrCat(absl::ToInt64Milliseconds(retry_after))));
  return s;
}

}  // namespace

class Engine::Impl {
 public:
  Impl(const EngineOptions& options, std::unique_ptr<Backend> backend, std::unique_ptr<TextCodec> codec,
       int num_blocks)
      : options_(options),
        backend_(std::move(backend)),
        codec_(std::move(codec)),
        kv_(num_blocks, options.kv_block_size) {
    const ModelConfig& cfg = backend_->config();
    if (codec_ != nullptr) eos_ids_ = codec_->eos_ids();
    if (eos_ids_.empty() && cfg.eos_token_id >= 0) eos_ids_.push_back(static_cast<int32_t>(cfg.eos_token_id));
    SchedulerOptions so;
    so.max_batch_tokens = options.max_batch_tokens;
    so.max_num_seqs = options.max_num_seqs;
    so.context_len = cfg.n_positions;
    so.eos_ids = eos_ids_;
    so.sampling_threads = options.sampling_threads;
    so.enable_prefix_caching = options.enable_prefix_caching;
    // A backend that runs each step when it is launched would only deliver every token a step
    // later: the engine overlaps steps where the backend does.
    so.overlap_steps = options.overlap_steps && backend_->overlaps_steps();
    scheduler_ = std::make_unique<Scheduler>(
        so, backend_.get(), &kv_, codec_.get(), &observer_proxy_, [this](const std::string& id) { OnFinished(id); },
        [this] { RefreshStats(); });
    stats_.kv_blocks_total = kv_.num_blocks();
    stats_.kv_block_size = kv_.block_size();
    stats_.prefix_caching = options.enable_prefix_caching;
    thread_ = std::thread([this] { Loop(); });
  }

  ~Impl() { Shutdown(); }

  absl::Status Submit(GenerateRequest req, EventSink sink);
  std::vector<std::string> Abort(const std::vector<std::string>& ids, CancelSource source, uint64_t owner);
  EngineStats Stats() const;
  bool Drain(absl::Duration timeout);
  void Shutdown();

  const EngineOptions& options() const { return options_; }
  const CapacityPlan& capacity() const { return capacity_; }
  void set_capacity(CapacityPlan plan) { capacity_ = std::move(plan); }
  const Backend& backend() const { return *backend_; }
  const TextCodec* codec() const { return codec_.get(); }
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  void SetObserver(std::shared_ptr<EngineObserver> o) { observer_proxy_.target = std::move(o); }

 private:
  // Forwards to the observer set later without re-creating the scheduler.
  struct ObserverProxy : EngineObserver {
    std::shared_ptr<EngineObserver> target;
    void OnStep(const StepReport& r) override {
      if (target) target->OnStep(r);
    }
    void OnToken(absl::Duration d) override {
      if (target) target->OnToken(d);
    }
    void OnFinish(const FinishReport& r) override {
      if (target) target->OnFinish(r);
    }
    void OnState(const QueueState& s) override {
      if (target) target->OnState(s);
    }
    void OnStepFailure(const StepFailure& f) override {
      if (target) target->OnStepFailure(f);
    }
  };

  struct Incoming {
    GenerateRequest req;
    EventSink sink;
    absl::Time arrival;
  };
  struct PendingAbort {
    std::string id;
    absl::Time at;  // when Abort was called: the step in progress may end after the deadline
    CancelSource source;
  };

  absl::Status Validate(const GenerateRequest& req) const;
  absl::Status Admit() const;  // mu_ held
  void Loop();
  void OnFinished(const std::string& id);  // engine thread
  void RefreshStats();                      // engine thread

  const EngineOptions options_;
  CapacityPlan capacity_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<TextCodec> codec_;
  KvBlockAllocator kv_;
  std::vector<int32_t> eos_ids_;
  ObserverProxy observer_proxy_;
  std::unique_ptr<Scheduler> scheduler_;  // engine thread only

  mutable std::mutex mu_;
  std::condition_variable cv_;       // engine thread wake-up
  std::condition_variable idle_cv_;  // Drain
  std::deque<Incoming> incoming_;
  int64_t incoming_tokens_ = 0;
  std::vector<PendingAbort> aborts_;
  std::unordered_map<std::string, uint64_t> live_;  // id -> GenerateRequest::owner
  bool draining_ = false;
  bool stop_ = false;
  EngineStats stats_;  // refreshed after every step
  std::thread thread_;
};

absl::Status Engine::Impl::Validate(const GenerateRequest& req) const {
  const ModelConfig& cfg = backend_->config();
  if (req.request_id.empty()) return absl::InvalidArgumentError("request_id: must not be empty");
  if (absl::Status s = req.sampling.Validate(); !s.ok()) return s;
  if (req.max_tokens < 0) return absl::InvalidArgumentError("stopping.max_tokens: must be >= 0");
  if (req.min_tokens < 0) return absl::InvalidArgumentError("stopping.min_tokens: must be >= 0");
  if (req.max_tokens > 0 && req.min_tokens > req.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.min_tokens: ", req.min_tokens,
                                                   " exceeds stopping.max_tokens ", req.max_tokens));
  }
  if (req.logprobs > options_.max_logprobs) {
    return absl::OutOfRangeError(absl::StrCat("logprobs: at most ", options_.max_logprobs, ", got ", req.logprobs));
  }
  if (req.prompt_logprobs > options_.max_logprobs) {
    return absl::OutOfRangeError(
        absl::StrCat("prompt_logprobs: at most ", options_.max_logprobs, ", got ", req.prompt_logprobs));
  }
  for (const auto& [id, bias] : req.sampling.logit_bias) {
    if (id >= cfg.vocab_size) {
      return absl::OutOfRangeError(absl::StrCat("sampling.logit_bias: token ", id, " is outside [0, ", cfg.vocab_size, ")"));
    }
  }
  for (int32_t id : req.stop_token_ids) {
    if (id < 0 || id >= cfg.vocab_size) {
      return absl::OutOfRangeError(absl::StrCat("stopping.stop_token_ids: ", id, " is outside [0, ", cfg.vocab_size, ")"));
    }
  }
  if (!req.stop_strings.empty() && codec_ == nullptr) {
    return absl::InvalidArgumentError("stopping.stop: stop strings need a tokenizer; this model has none");
  }
  for (const auto& s : req.stop_strings) {
    if (s.empty()) return absl::InvalidArgumentError("stopping.stop: stop strings must not be empty");
  }
  if (req.has_text) {
    if (codec_ == nullptr) return absl::InvalidArgumentError("text: this model has no tokenizer; send token_ids");
    if (req.text.empty()) return absl::InvalidArgumentError("text: the prompt is empty");
  } else {
    if (req.prompt_ids.empty()) return absl::InvalidArgumentError("token_ids: the prompt is empty");
    for (int32_t id : req.prompt_ids) {
      if (id < 0 || id >= cfg.vocab_size) {
        return absl::OutOfRangeError(absl::StrCat("token_ids: ", id, " is outside [0, ", cfg.vocab_size, ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Engine::Impl::Admit() const {
  if (stop_) return absl::UnavailableError("the engine is shut down");
  if (draining_) return absl::UnavailableError("the server is draining; retry on another replica");
  const int64_t queued = static_cast<int64_t>(incoming_.size()) + stats_.waiting;
  if (queued >= options_.max_queued_requests) {
    return Exhausted(absl::StrCat("queue full: ", queued, " requests waiting (limit ", options_.max_queued_requests, ")"),
                     options_.retry_after);
  }
  const int64_t tokens = incoming_tokens_ + stats_.queued_prompt_tokens;
  if (tokens >= options_.max_queued_tokens) {
    return Exhausted(absl::StrCat("queue full: ", tokens, " prompt tokens waiting (limit ", options_.max_queued_tokens, ")"),
                     options_.retry_after);
  }
  return absl::OkStatus();
}

absl::Status Engine::Impl::Submit(GenerateRequest req, EventSink sink) {
  const absl::Time arrival = absl::Now();
  if (absl::Status s = Validate(req); !s.ok()) return s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Status s = Admit(); !s.ok()) return s;
    if (live_.contains(req.request_id)) {
      return absl::AlreadyExistsError(absl::StrCat("request_id: '", req.request_id, "' is already running"));
    }
  }
  if (req.has_text) {
    absl::StatusOr<std::vector<int32_t>> ids = codec_->Encode(req.text, req.add_special_tokens);
    if (!ids.ok()) return absl::InvalidArgumentError(absl::StrCat("text: ", ids.status().message()));
    if (ids->empty()) return absl::InvalidArgumentError("text: the prompt encodes to no tokens");
    req.prompt_ids = *std::move(ids);
    req.text.clear();
  }
  const int64_t ctx = backend_->config().n_positions;
  const int64_t n = static_cast<int64_t>(req.prompt_ids.size());
  if (n >= ctx) {
    return absl::OutOfRangeError(
        absl::StrCat("prompt: ", n, " tokens leave no room in the context of ", ctx, " tokens"));
  }
  if (req.max_tokens == 0) {
    // The server default, capped by the context and by the KV cache (which --kv-blocks may make
    // smaller than a context): an unset max_tokens never makes a request that fits impossible.
    const int64_t kv_tokens = static_cast<int64_t>(kv_.num_blocks()) * kv_.block_size();
    if (n >= kv_tokens) {
      return absl::OutOfRangeError(absl::StrCat("prompt: ", n, " tokens leave no room in the KV cache of ", kv_tokens,
                                                " tokens"));
    }
    req.max_tokens = static_cast<int32_t>(std::min<int64_t>({options_.default_max_tokens, ctx - n, kv_tokens - n}));
    if (req.min_tokens > req.max_tokens) {  // README: min_tokens <= max_tokens, the effective one too
      return absl::InvalidArgumentError(absl::StrCat(
          "stopping.min_tokens: ", req.min_tokens, " exceeds the effective max_tokens ", req.max_tokens,
          " (max_tokens unset: the server default, capped by the context and the KV cache)"));
    }
  } else if (n + req.max_tokens > ctx) {
    return absl::OutOfRangeError(absl::StrCat("stopping.max_tokens: prompt (", n, " tokens) + max_tokens (",
                                              req.max_tokens, ") exceeds the context length ", ctx));
  }
  if (kv_.BlocksFor(n + req.max_tokens) > kv_.num_blocks()) {
    return absl::OutOfRangeError(absl::StrCat("stopping.max_tokens: prompt + max_tokens (", n + req.max_tokens,
                                              " tokens) exceeds the KV cache (", kv_.num_blocks() * kv_.block_size(),
                                              " tokens)"));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Status s = Admit(); !s.ok()) return s;
    const int64_t queued_tokens = incoming_tokens_ + stats_.queued_prompt_tokens;
    if (queued_tokens > 0 && queued_tokens + n > options_.max_queued_tokens) {
      return Exhausted(absl::StrCat("queue full: ", queued_tokens, " + ", n, " prompt tokens exceed the limit of ",
                                    options_.max_queued_tokens),
                       options_.retry_after);
    }
    if (!live_.emplace(req.request_id, req.owner).second) {
      return absl::AlreadyExistsError(absl::StrCat("request_id: '", req.request_id, "' is already running"));
    }
    incoming_tokens_ += n;
    incoming_.push_back({std::move(req), std::move(sink), arrival});
  }
  cv_.notify_one();
  return absl::OkStatus();
}

std::vector<std::string> Engine::Impl::Abort(const std::vector<std::string>& ids, CancelSource source,
                                             uint64_t owner) {
  const absl::Time at = absl::Now();
  std::vector<std::string> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& id : ids) {
      if (auto it = live_.find(id); it != live_.end() && (owner == 0 || it->second == owner)) {
        out.push_back(id);
        aborts_.push_back({id, at, source});
      }
    }
  }
  if (!out.empty()) cv_.notify_one();
  return out;
}

EngineStats Engine::Impl::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  EngineStats s = stats_;
  s.waiting += static_cast<int>(incoming_.size());
  s.queued_prompt_tokens += incoming_tokens_;
  s.draining = draining_;
  return s;
}

void Engine::Impl::RefreshStats() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.running = scheduler_->num_running();
  stats_.waiting = scheduler_->num_waiting();
  stats_.queued_prompt_tokens = scheduler_->waiting_tokens();
  stats_.kv_blocks_used = kv_.num_used();
  stats_.kv_blocks_total = kv_.num_blocks();
  stats_.kv_block_size = kv_.block_size();
  stats_.kv_blocks_cached_free = kv_.num_cached_free();
  stats_.preemptions = scheduler_->preemptions();
  stats_.prefix_cache_queries = scheduler_->prefix_cache_queries();
  stats_.prefix_cache_hits = scheduler_->prefix_cache_hits();
}

void Engine::Impl::OnFinished(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  live_.erase(id);
  // An Abort still queued for it is moot, and must not reach a new request that reuses the id
  // (it would be added before the queued cancels are applied).
  std::erase_if(aborts_, [&](const PendingAbort& a) { return a.id == id; });
  stats_.requests_finished++;
  // The request's blocks are already free: a client that reads Stats after its final event
  // sees them returned.
  stats_.kv_blocks_used = kv_.num_used();
  stats_.kv_blocks_cached_free = kv_.num_cached_free();
  stats_.running = scheduler_->num_running();
  if (live_.empty()) idle_cv_.notify_all();
}

void Engine::Impl::Loop() {
  for (;;) {
    std::deque<Incoming> incoming;
    std::vector<PendingAbort> aborts;
    bool stop = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !incoming_.empty() || !aborts_.empty() || scheduler_->HasWork(); });
      incoming.swap(incoming_);
      // They stay queued (for admission and Stats) until the step below recounts the scheduler.
      stats_.waiting += static_cast<int>(incoming.size());
      stats_.queued_prompt_tokens += incoming_tokens_;
      incoming_tokens_ = 0;
      aborts.swap(aborts_);
      stop = stop_;
    }
    // A backend failure has already failed that batch's requests; keep serving the rest, and
    // count it: K in a row (or one fatal error) mark the backend unhealthy.
    auto account = [&](const absl::Status& st) {
      if (!st.ok()) {
        StepFailure f;
        f.status = st;
        f.fatal = IsFatalBackendError(st);
        {
          std::lock_guard<std::mutex> lock(mu_);
          ++stats_.step_failures;
          f.consecutive = ++stats_.consecutive_step_failures;
          if (f.fatal) stats_.backend_fatal = true;
          if (f.fatal || f.consecutive >= options_.max_consecutive_step_failures) stats_.backend_healthy = false;
          f.unhealthy = !stats_.backend_healthy;
        }
        observer_proxy_.OnStepFailure(f);
      } else if (scheduler_->steps_collected() > 0) {
        std::lock_guard<std::mutex> lock(mu_);
        stats_.consecutive_step_failures = 0;
      }
    };
    for (auto& in : incoming) scheduler_->Add(std::move(in.req), std::move(in.sink), in.arrival);
    // A step still in flight delivers its tokens before cancels and a shutdown are applied.
    if (!aborts.empty() || stop) account(scheduler_->Settle());
    for (const PendingAbort& a : aborts) scheduler_->Cancel(a.id, a.at, a.source);
    if (stop) {
      scheduler_->FinishAll(FinishReason::kCancelled, absl::UnavailableError("the server is shutting down"));
      std::lock_guard<std::mutex> lock(mu_);
      stats_.running = stats_.waiting = 0;
      stats_.queued_prompt_tokens = 0;
      stats_.kv_blocks_used = kv_.num_used();
      stats_.kv_blocks_cached_free = kv_.num_cached_free();
      return;
    }
    bool progressed = false;  // a step launched or collected
    if (scheduler_->HasWork()) {
      const absl::Time before = absl::Now();
      account(scheduler_->Step(before));
      progressed = scheduler_->last_step_tokens() > 0 || scheduler_->steps_collected() > 0;
    }
    RefreshStats();
    if (!progressed && scheduler_->HasWork()) {
      // Nothing could be packed (e.g. every waiting request waits for blocks): do not spin.
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(1));
    }
  }
}

bool Engine::Impl::Drain(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  draining_ = true;
  return idle_cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] { return live_.empty(); });
}

void Engine::Impl::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

// ---------------------------------------------------------------------------------------------

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Engine>> Engine::CreateWithCodec(const EngineOptions& options,
                                                                std::unique_ptr<Backend> backend,
                                                                std::unique_ptr<TextCodec> codec) {
  if (backend == nullptr) return absl::InvalidArgumentError("engine: no backend");
  if (options.max_batch_tokens < 0) return absl::InvalidArgumentError("max_batch_tokens: must be >= 1 (0: auto)");
  if (options.max_num_seqs < 1) return absl::InvalidArgumentError("max_num_seqs: must be >= 1");
  if (options.max_consecutive_step_failures < 1) {
    return absl::InvalidArgumentError("max_consecutive_step_failures: must be >= 1");
  }
  if (options.kv_block_size < 1) return absl::InvalidArgumentError("kv_block_size: must be >= 1");
  if (options.default_max_tokens < 1) return absl::InvalidArgumentError("default_max_tokens: must be >= 1");
  absl::StatusOr<CapacityPlan> plan = PlanCapacity(options, *backend);
  if (!plan.ok()) return plan.status();
  // Every step has at most max_batch_tokens rows.
  if (absl::Status s = backend->PrepareSteps(plan->max_batch_tokens); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("preparing the backend's steps: ", s.message()));
  }
  EngineOptions resolved = options;
  resolved.max_batch_tokens = plan->max_batch_tokens;
  resolved.max_queued_tokens = plan->max_queued_tokens;
  resolved.max_queued_requests = plan->max_queued_requests;
  resolved.kv_num_blocks = plan->num_blocks;
  resolved.kv_cache_bytes = static_cast<int64_t>(plan->num_blocks) * options.kv_block_size * backend->KvBytesPerToken();
  auto impl = std::make_unique<Impl>(resolved, std::move(backend), std::move(codec), plan->num_blocks);
  impl->set_capacity(*std::move(plan));
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

absl::Status Engine::Submit(GenerateRequest request, EventSink sink) {
  return impl_->Submit(std::move(request), std::move(sink));
}
std::vector<std::string> Engine::Abort(const std::vector<std::string>& ids, CancelSource source, uint64_t owner) {
  return impl_->Abort(ids, source, owner);
}
EngineStats Engine::Stats() const { return impl_->Stats(); }
const ModelConfig& Engine::model_config() const { return impl_->backend().config(); }
const Backend& Engine::backend() const { return impl_->backend(); }
const TextCodec* Engine::codec() const { return impl_->codec(); }
const EngineOptions& Engine::options() const { return impl_->options(); }
const CapacityPlan& Engine::capacity() const { return impl_->capacity(); }
std::vector<int32_t> Engine::eos_ids() const { return impl_->eos_ids(); }
void Engine::SetObserver(std::shared_ptr<EngineObserver> observer) { impl_->SetObserver(std::move(observer)); }
bool Engine::Drain(absl::Duration timeout) { return impl_->Drain(timeout); }
void Engine::Shutdown() { impl_->Shutdown(); }

}  // namespace sbserve
