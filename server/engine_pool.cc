#include "server/engine_pool.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace sbserve {
namespace {

// FNV-1a over the request's first KV block (ids) or its first 4 x block_size bytes (text);
// false when the prompt is shorter than that (no block to share).
bool FirstBlockKey(const GenerateRequest& req, int block_size, uint64_t* key) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  if (req.has_text) {
    const size_t n = static_cast<size_t>(block_size) * 4;
    if (req.text.size() < n) return false;
    mix(1);
    for (size_t i = 0; i < n; ++i) mix(static_cast<unsigned char>(req.text[i]));
  } else {
    const size_t n = static_cast<size_t>(block_size);
    if (req.prompt_ids.size() < n) return false;
    mix(2);
    for (size_t i = 0; i < n; ++i) mix(static_cast<uint32_t>(req.prompt_ids[i]));
  }
  *key = h;
  return true;
}

// Tokens a request will queue: its ids, or for text a rough count (4 bytes a token) until the
// engine has tokenized it.
int64_t EstimatedTokens(const GenerateRequest& req) {
  if (req.has_text) return static_cast<int64_t>(req.text.size() / 4 + 1);
  return static_cast<int64_t>(req.prompt_ids.size());
}

}  // namespace

EnginePool::EnginePool(std::vector<std::unique_ptr<Engine>> engines, std::vector<std::string> devices,
                       EnginePoolOptions options)
    : options_(options),
      engines_(std::move(engines)),
      devices_(std::move(devices)),
      serving_(new std::atomic<bool>[engines_.size()]),
      routed_(new std::atomic<uint64_t>[engines_.size()]),
      submitting_tokens_(engines_.size(), 0) {
  for (size_t i = 0; i < engines_.size(); ++i) {
    serving_[i].store(true);
    routed_[i].store(0);
  }
}

EnginePool::~EnginePool() { Shutdown(); }

absl::StatusOr<std::unique_ptr<EnginePool>> EnginePool::Create(std::vector<std::unique_ptr<Engine>> engines,
                                                               std::vector<std::string> devices,
                                                               EnginePoolOptions options) {
  if (engines.empty()) return absl::InvalidArgumentError("engine pool: no engines");
  if (devices.size() != engines.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine pool: ", engines.size(), " engines but ", devices.size(), " device names"));
  }
  for (const auto& e : engines) {
    if (e == nullptr) return absl::InvalidArgumentError("engine pool: a null engine");
  }
  return std::unique_ptr<EnginePool>(new EnginePool(std::move(engines), std::move(devices), options));
}

int EnginePool::ChooseLocked(uint64_t key, bool has_key) {
  const int n = size();
  if (n == 1) return 0;
  int serving = 0;
  for (int i = 0; i < n; ++i) serving += serving_[i].load() ? 1 : 0;
  std::vector<double> load(n, 0.0);
  for (int i = 0; i < n; ++i) {
    const EngineStats s = engines_[i]->Stats();
    const double capacity = std::max<double>(1.0, static_cast<double>(s.kv_blocks_total) * s.kv_block_size);
    const double held = static_cast<double>(s.queued_prompt_tokens) +
                        static_cast<double>(s.kv_blocks_used) * s.kv_block_size +
                        static_cast<double>(submitting_tokens_[i]);
    load[i] = held / capacity;
  }
  auto eligible = [&](int i) { return serving == 0 || serving_[i].load(); };
  // The least loaded, scanning from the round-robin cursor so that ties rotate.
  int best = -1;
  for (int k = 0; k < n; ++k) {
    const int i = static_cast<int>((next_ + k) % n);
    if (!eligible(i)) continue;
    if (best < 0 || load[i] < load[best]) best = i;
  }
  next_ = (static_cast<size_t>(best) + 1) % n;
  if (has_key && options_.affinity_slack >= 0) {
    if (auto it = affinity_.find(key); it != affinity_.end()) {
      const int a = it->second;
      if (a != best && eligible(a) && load[a] - load[best] <= options_.affinity_slack) best = a;
    }
    if (affinity_.size() >= options_.affinity_entries) affinity_.clear();
    affinity_[key] = best;
  }
  return best;
}

absl::Status EnginePool::Submit(GenerateRequest request, EventSink sink) {
  if (size() == 1) {
    routed_[0].fetch_add(1);
    return engines_[0]->Submit(std::move(request), std::move(sink));
  }
  if (draining_.load()) return absl::UnavailableError("the server is draining; retry on another replica");
  uint64_t key = 0;
  const bool has_key = FirstBlockKey(request, options().kv_block_size, &key);
  const int64_t tokens = EstimatedTokens(request);
  const std::string id = request.request_id;
  int chosen = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = live_.find(id); !id.empty() && it != live_.end()) {
      // That engine refuses the duplicate, or takes it if the request has just ended there (its
      // final event is on the way). An engine taken out of routing gets nothing new: the id is
      // live or was a moment ago, and the pool refuses it itself.
      if (!serving_[it->second.engine].load()) {
        return absl::AlreadyExistsError(absl::StrCat("request_id: '", id, "' is already running"));
      }
      chosen = it->second.engine;
      it->second.refs++;
    } else {
      chosen = ChooseLocked(key, has_key);
      if (!id.empty()) live_[id] = Live{chosen, 1};
    }
    submitting_tokens_[chosen] += tokens;
  }
  routed_[chosen].fetch_add(1);
  EventSink routed_sink = std::move(sink);
  if (!id.empty()) {
    routed_sink = [this, id, inner = std::move(routed_sink)](GenerateEvent e) {
      const bool final = e.finished;
      if (final) Release(id);
      inner(std::move(e));
    };
  }
  const absl::Status st = engines_[chosen]->Submit(std::move(request), std::move(routed_sink));
  {
    std::lock_guard<std::mutex> lock(mu_);
    submitting_tokens_[chosen] -= tokens;
  }
  if (!st.ok() && !id.empty()) Release(id);
  return st;
}

void EnginePool::Release(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(id);
  if (it != live_.end() && --it->second.refs <= 0) live_.erase(it);
}

std::vector<std::string> EnginePool::Abort(const std::vector<std::string>& ids, CancelSource source,
                                          uint64_t owner) {
  if (size() == 1) return engines_[0]->Abort(ids, source, owner);
  std::vector<std::vector<std::string>> per_engine(engines_.size());
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& id : ids) {
      if (auto it = live_.find(id); it != live_.end()) per_engine[it->second.engine].push_back(id);
    }
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < engines_.size(); ++i) {
    if (per_engine[i].empty()) continue;
    for (auto& id : engines_[i]->Abort(per_engine[i], source, owner)) out.push_back(std::move(id));
  }
  // In the order asked, as one engine answers.
  std::vector<std::string> ordered;
  for (const auto& id : ids) {
    if (std::find(out.begin(), out.end(), id) != out.end() &&
        std::find(ordered.begin(), ordered.end(), id) == ordered.end()) {
      ordered.push_back(id);
    }
  }
  return ordered;
}

EngineStats EnginePool::EngineStatsAt(int engine) const { return engines_[engine]->Stats(); }

EngineStats EnginePool::Stats(std::vector<EngineStats>* per_engine) const {
  if (per_engine != nullptr) per_engine->clear();
  if (size() == 1) {
    EngineStats s = engines_[0]->Stats();
    if (per_engine != nullptr) per_engine->push_back(s);
    return s;
  }
  EngineStats t;
  t.backend_healthy = false;
  for (int i = 0; i < size(); ++i) {
    const EngineStats s = engines_[i]->Stats();
    if (per_engine != nullptr) per_engine->push_back(s);
    t.running += s.running;
    t.waiting += s.waiting;
    t.queued_prompt_tokens += s.queued_prompt_tokens;
    t.kv_blocks_used += s.kv_blocks_used;
    t.kv_blocks_total += s.kv_blocks_total;
    if (i == 0) t.kv_block_size = s.kv_block_size;
    t.requests_finished += s.requests_finished;
    t.preemptions += s.preemptions;
    t.kv_blocks_cached_free += s.kv_blocks_cached_free;
    t.prefix_caching = t.prefix_caching || s.prefix_caching;
    t.prefix_cache_queries += s.prefix_cache_queries;
    t.prefix_cache_hits += s.prefix_cache_hits;
    t.step_failures += s.step_failures;
    t.consecutive_step_failures = std::max(t.consecutive_step_failures, s.consecutive_step_failures);
    t.backend_healthy = t.backend_healthy || (s.backend_healthy && serving_[i].load());
    t.backend_fatal = t.backend_fatal || s.backend_fatal;
    t.draining = t.draining || s.draining;
  }
  t.draining = t.draining || draining_.load();
  return t;
}

void EnginePool::SetObserver(std::shared_ptr<EngineObserver> observer) {
  for (auto& e : engines_) e->SetObserver(observer);
}

void EnginePool::SetObserver(int engine, std::shared_ptr<EngineObserver> observer) {
  engines_[engine]->SetObserver(std::move(observer));
}

int EnginePool::TakeOut(int engine) {
  serving_[engine].store(false);
  int left = 0;
  for (int i = 0; i < size(); ++i) left += serving_[i].load() ? 1 : 0;
  return left;
}

bool EnginePool::Drain(absl::Duration timeout) {
  draining_.store(true);
  const absl::Time end = absl::Now() + timeout;
  // Every engine stops admitting first (a zero wait), then each is waited for in turn; the others
  // keep stepping meanwhile, so the whole drain takes as long as the slowest engine.
  for (auto& e : engines_) e->Drain(absl::ZeroDuration());
  bool all = true;
  for (auto& e : engines_) all = e->Drain(std::max(absl::ZeroDuration(), end - absl::Now())) && all;
  return all;
}

void EnginePool::Shutdown() {
  for (auto& e : engines_) e->Shutdown();
}

}  // namespace sbserve
