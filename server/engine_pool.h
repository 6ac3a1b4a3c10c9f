// Data-parallel serving: N engines (one per GPU, or N on the CPU backend) behind one front door.
// Transport-free; the gRPC service (and any other front door) calls the pool exactly as it would
// call one Engine: Submit, Abort, Stats, model_config, codec, options, eos_ids, Drain, Shutdown.
// With one engine every call goes to it unchanged.
//
// Routing (Submit): each engine's load is the work it holds, in tokens, over its KV capacity in
// tokens:
//     load = (queued prompt tokens + KV blocks used x block size + tokens being submitted to it)
//            / (KV blocks total x block size)
// Queued prompt tokens include requests still in the engine's input queue, so a burst of
// concurrent submits sees each previous choice; "being submitted" covers the moment between the
// choice and the engine's own queueing. The least loaded engine takes the request; ties (an idle
// pool) go round-robin. Engines taken out of service (an unhealthy backend) are skipped while at
// least one engine still serves.
//
// Prefix affinity (a hint): the pool remembers which engine took the last request whose prompt
// starts with the same first KV block (token ids: the first block_size ids; text: the first
// 4 x block_size bytes) and sends the next one there unless that engine's load exceeds the least
// loaded one's by more than `affinity_slack`. Once engines cache prefixes, that engine holds the
// prefix's K/V; before that it costs at most `affinity_slack` of imbalance.
//
// A live request id maps to its engine: Abort finds it there, and a second request with the
// same id goes to the same engine, which refuses it (ALREADY_EXISTS) as one engine does.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/engine.h"

namespace sbserve {

struct EnginePoolOptions {
  // How much more loaded (in the load unit above: a fraction of KV capacity) the engine that
  // last took a request's first prompt block may be than the least loaded one and still get it.
  // Negative: no affinity.
  double affinity_slack = 0.05;
  // First-block hashes remembered; the table starts over when it is full.
  size_t affinity_entries = 1 << 16;
};

class EnginePool {
 public:
  // `devices[i]` names engine i's device in logs, metrics and GetServerInfo ("cuda:0", "cpu:1").
  // Every engine serves the same model with the same options.
  static absl::StatusOr<std::unique_ptr<EnginePool>> Create(std::vector<std::unique_ptr<Engine>> engines,
                                                            std::vector<std::string> devices,
                                                            EnginePoolOptions options = {});
  ~EnginePool();  // Shutdown()
  EnginePool(const EnginePool&) = delete;
  EnginePool& operator=(const EnginePool&) = delete;

  // Routes the request to one engine (see above) and submits it there; the engine's status.
  absl::Status Submit(GenerateRequest request, EventSink sink);
  // Cancels live requests on whichever engines hold them; returns the ids that were live.
  // `owner` as Engine::Abort's.
  std::vector<std::string> Abort(const std::vector<std::string>& request_ids,
                                 CancelSource source = CancelSource::kAbortRpc, uint64_t owner = 0);

  // Totals over the engines: counts and tokens summed, kv_block_size of engine 0, draining when
  // the pool drains, backend_healthy while one engine still serves, backend_fatal if any.
  EngineStats Stats() const { return Stats(nullptr); }
  // The same totals, summed from the per-engine snapshots stored in `*per_engine` when not null.
  EngineStats Stats(std::vector<EngineStats>* per_engine) const;
  EngineStats EngineStatsAt(int engine) const;
  int size() const { return static_cast<int>(engines_.size()); }
  const std::string& device(int engine) const { return devices_[engine]; }
  // False once TakeOut(engine) ran.
  bool serving(int engine) const { return serving_[engine].load(); }
  // Requests routed to the engine since start (accepted or refused by it).
  uint64_t routed(int engine) const { return routed_[engine].load(); }
  Engine& engine(int i) { return *engines_[i]; }

  // Engine 0's: every engine serves the same model.
  const ModelConfig& model_config() const { return engines_[0]->model_config(); }
  const Backend& backend() const { return engines_[0]->backend(); }
  const TextCodec* codec() const { return engines_[0]->codec(); }
  const EngineOptions& options() const { return engines_[0]->options(); }
  std::vector<int32_t> eos_ids() const { return engines_[0]->eos_ids(); }

  // Sets one observer on every engine / on one engine (before the first Submit).
  void SetObserver(std::shared_ptr<EngineObserver> observer);
  void SetObserver(int engine, std::shared_ptr<EngineObserver> observer);

  // Stops routing to the engine (its backend is unhealthy); requests it holds go on. Returns
  // the number of engines still serving.
  int TakeOut(int engine);

  // Stops admission on every engine and waits up to `timeout` (in all) for all of them to
  // finish their live requests; true when none is left anywhere.
  bool Drain(absl::Duration timeout);
  void Shutdown();

 private:
  struct Live {
    int engine = 0;
    int refs = 0;  // submits holding this id: the accepted one and any being refused
  };

  EnginePool(std::vector<std::unique_ptr<Engine>> engines, std::vector<std::string> devices,
             EnginePoolOptions options);
  // mu_ held: the engine for a new request.
  int ChooseLocked(uint64_t affinity_key, bool has_key);
  void Release(const std::string& id);

  const EnginePoolOptions options_;
  std::vector<std::unique_ptr<Engine>> engines_;
  const std::vector<std::string> devices_;
  std::unique_ptr<std::atomic<bool>[]> serving_;
  std::unique_ptr<std::atomic<uint64_t>[]> routed_;

  std::mutex mu_;
  std::vector<int64_t> submitting_tokens_;  // per engine: chosen, not yet queued there
  std::unordered_map<std::string, Live> live_;
  std::unordered_map<uint64_t, int> affinity_;  // first-block hash -> engine that took it last
  size_t next_ = 0;                              // round-robin cursor for ties
  std::atomic<bool> draining_{false};
};

}  // namespace sbserve
