// The step loop's logic, free of threads: a waiting queue and a running set of sequences, a
// packer that turns them into one varlen Batch per step, the backend call, sampling, stop
// conditions and event emission. The Engine owns one and drives it from its thread.
//
// Packing order per step, under `max_batch_tokens` and `max_num_seqs`:
//   1. one decode token for every running sequence whose prompt is fully cached, oldest first;
//      when the KV pool runs dry the youngest running sequence is preempted (its blocks freed,
//      to be recomputed later from its prompt and output so far);
//   2. the next prefill chunk of running sequences whose prompt is only partly cached;
//   3. the first chunk of waiting sequences by (priority, arrival) while blocks last. With prefix
//      caching a sequence first takes the cached full blocks of its tokens (at most all but the
//      last token, whose logits must be computed) and starts computing after them; a sequence
//      restarting after a preemption looks up its prompt and output so far the same way.
// After a successful step each caching sequence publishes its newly completed full blocks.
// Decode goes first so a long prompt never stalls running streams (chunked prefill).
// A request that wants prompt logprobs gets a logit row for each prompt position it computes (its
// next token's logprob, no draw); its chunks are cut so that a step holds at most
// kMaxPromptLogprobRows of them, and a prefix-cache hit covers only positions it has scored already
// (none before a preemption); it publishes its blocks like any request.
//
// Overlapped steps (SchedulerOptions::overlap_steps): Step packs and launches step N + 1 before it
// collects step N, so that the host's work (streaming N's tokens, stop checks, packing) runs while
// the device computes. A sequence whose token from step N is still unknown is packed as a decode
// of that token, which the backend feeds from N's draws on its device (Backend::TokenFeed). What
// clients see does not change:
//   - N's tokens are processed (stop conditions, streaming) before N + 1's;
//   - a sequence that ends with N's token (eos, stop id, stop string, cancel, deadline) had its
//     speculative row in N + 1 computed, and that row's token is dropped: it is never streamed;
//   - a sequence whose next token must end it by length (max_tokens, context) is not packed;
//   - one whose next draw depends on the token before it (repetition, presence and frequency
//     penalties) is not packed ahead: such steps collect N first, then pack;
//   - prefix-cache blocks are published when the step that completed them is collected.
// A backend that does not overlap steps (Backend::overlaps_steps) runs each launch at once; the
// protocol, and so its tests, are the same.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/backend.h"
#include "engine/batch.h"
#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "engine/request.h"

namespace sbserve {

struct SchedulerOptions {
  int max_batch_tokens = 512;
  int max_num_seqs = 128;
  int64_t context_len = 4096;
  std::vector<int32_t> eos_ids;
  int sampling_threads = 0;  // threads drawing tokens from logit rows; 0: all cores, 1: inline
  bool enable_prefix_caching = true;
  bool overlap_steps = false;  // see above
};

class ThreadPool;

class Scheduler {
 public:
  // `backend`, `kv`, `codec` (may be null) and `observer` (may be null) outlive the scheduler.
  // `on_finished` runs for each request just before its final event is delivered.
  // `on_packed` runs after each step's packing, before the backend call, so that whoever
  // mirrors the queue state sees requests leave the queue before their first token goes out.
  Scheduler(const SchedulerOptions& options, Backend* backend, KvBlockAllocator* kv,
            const TextCodec* codec, EngineObserver* observer,
            std::function<void(const std::string&)> on_finished, std::function<void()> on_packed = {});
  ~Scheduler();

  // Takes a validated request: prompt_ids set, max_tokens resolved and within the context.
  void Add(GenerateRequest request, EventSink sink, absl::Time arrival);
  // Finishes a live request now (its blocks are freed); false when the id is unknown.
  bool Finish(const std::string& request_id, FinishReason reason, absl::Status status);
  void FinishAll(FinishReason reason, const absl::Status& status);
  // Cancels a request; `at` is when the cancel arrived. It ends as kDeadline when the deadline
  // had passed by then, and as kCancelled otherwise, with one exception for client cancels: a
  // cancel arriving less than DeadlineAmbiguity(timeout) before the deadline is the client's own
  // deadline timer as far as the server can tell (see there), and is also kDeadline. An Abort
  // RPC before the deadline is always kCancelled.
  bool Cancel(const std::string& request_id, absl::Time at, CancelSource source = CancelSource::kClient);

  // gRPC sends a call's timeout rounded up to its wire resolution (grpc-timeout: 1 ms below 1 s,
  // 10 ms below 10 s, 100 ms below 100 s, 1 s below 1000 s, ...) and both ends keep deadlines
  // in whole milliseconds, so the server's deadline may be later than the client's by up to that
  // resolution + 2 ms. When the client's deadline fires it cancels the call (RST_STREAM CANCEL,
  // the same frame as a user's cancel), which may thus arrive up to this long before the
  // server's deadline, plus the delay between the client starting its timer and the server
  // receiving the call (allowed for with 25 ms). Returns that window for a request whose timeout
  // is `timeout`.
  static absl::Duration DeadlineAmbiguity(absl::Duration timeout);

  bool HasWork() const { return !running_.empty() || !waiting_.empty() || inflight_ != nullptr; }

  // Expires deadlines, packs, runs the backend and samples. Returns the backend's error, if
  // any, after failing the requests of that batch; the scheduler stays usable.
  absl::Status Step(absl::Time now);
  // Collects the step in flight, if any (overlapped steps), so that its tokens are delivered before
  // what comes next: a cancel, an abort or a shutdown meets each request where it would have met
  // it without overlap. Returns the backend's error like Step.
  absl::Status Settle();
  // Steps whose draws the latest Step or Settle collected successfully (0, 1 or 2).
  int steps_collected() const { return steps_collected_; }

  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int64_t waiting_tokens() const;
  uint64_t preemptions() const { return preemptions_; }
  // Prefix cache lookups, all time: tokens looked up, and tokens found cached.
  uint64_t prefix_cache_queries() const { return prefix_queries_; }
  uint64_t prefix_cache_hits() const { return prefix_hits_; }
  // The batch of the latest step launched on the backend (tests inspect it), and its tokens when
  // the latest Step launched one (0 otherwise).
  const Batch& last_batch() const { return batch_; }
  int last_step_tokens() const { return last_step_tokens_; }

 private:
  struct Seq;
  static constexpr int64_t kRowsPerSamplingTask = 2;
  struct Slot {
    Seq* seq;
    int chunk;
  };

  struct Launched;  // a step launched on the backend and not collected yet
  // Prompt-logprob rows per step, at most: a step's logit rows (and the backend's logit buffers)
  // stay within max_num_seqs plus this.
  static constexpr int kMaxPromptLogprobRows = 256;
  // The drawn (or forced) token of a collected logit row with its logprob and top n.
  StepLogprobs RowLogprobs(int32_t row, int n) const;

  bool Preempt(Seq* seq);  // false: not counted (its step in flight ends it)
  // Builds batch_, sampling_ and feed_ from the packed slots; the step's record.
  std::unique_ptr<Launched> BuildStep(const std::vector<Slot>& slots, absl::Time now, int preempted);
  // The backend's LaunchStep / CollectStep, or, for a backend that does not overlap steps, the
  // step run at once (ForwardSample, or Forward and the draws on the host) and its result queued.
  absl::Status LaunchOnBackend();
  absl::Status CollectFromBackend(SampledRows* out);
  // Collects `step`: its tokens are processed, its report sent and steps_collected_ counts it; on a
  // backend error its requests fail.
  absl::Status Collect(std::unique_ptr<Launched> step);
  // The live sequence a launched step's slot belongs to, or null when it has ended since.
  Seq* Find(const std::string& id, uint64_t seq_no) const;
  // Whether the in-flight step holds a row whose draw the next step's sampling needs on the host.
  bool MustCollectBeforePacking() const;
  bool Reserve(Seq* seq, int chunk);
  void Pack(std::vector<Slot>& slots, int& preempted);
  // Tokens `seq` may not draw next: eos and stop ids before min_tokens.
  void BannedTokens(const Seq* seq, std::vector<int32_t>* banned) const;
  // Appends the drawn token, checks stop conditions and emits events (engine thread, in order).
  void OnToken(Seq* seq, int32_t token, StepLogprobs lp, absl::Time now);
  void Complete(Seq* seq, FinishReason reason, absl::Status status, absl::Time now);
  // Inside Step, requests that end there are announced (on_finished, final event) only after the
  // step's report, so that whoever sees a request end also sees the step that ended it counted.
  void DeliverFinals();
  // Holds announcements back (in_step_) from construction to destruction, then delivers them.
  // The outermost one delivers; one inside another leaves the delivery to it.
  struct FinalsAtExit {
    explicit FinalsAtExit(Scheduler* s) : s(s), outer(!s->in_step_) { s->in_step_ = true; }
    ~FinalsAtExit() {
      if (outer) s->DeliverFinals();
    }
    FinalsAtExit(const FinalsAtExit&) = delete;
    FinalsAtExit& operator=(const FinalsAtExit&) = delete;
    Scheduler* s;
    bool outer;
  };
  void ReportState();  // EngineObserver::OnState, after requests ended outside a step
  void Emit(Seq* seq, bool final);
  void InsertRunning(Seq* seq);
  void InsertWaiting(Seq* seq);

  SchedulerOptions options_;
  Backend* backend_;
  KvBlockAllocator* kv_;
  const TextCodec* codec_;
  EngineObserver* observer_;
  std::function<void(const std::string&)> on_finished_;
  std::function<void()> on_packed_;

  std::unordered_map<std::string, std::unique_ptr<Seq>> seqs_;
  std::vector<Seq*> running_;  // ascending arrival
  std::deque<Seq*> waiting_;   // ascending (priority, arrival)
  uint64_t next_seq_no_ = 0;
  uint64_t preemptions_ = 0;
  uint64_t prefix_queries_ = 0;
  uint64_t prefix_hits_ = 0;
  int step_prefix_queries_ = 0;  // this step's share of the two above
  int step_prefix_hits_ = 0;
  Batch batch_;
  std::vector<float> logits_;
  struct Final {
    std::string id;
    EventSink sink;
    GenerateEvent event;
  };
  bool in_step_ = false;
  std::vector<Final> finals_;  // ended during the current step, not yet announced
  SamplingBatch sampling_;
  std::vector<Backend::TokenFeed> feed_;
  SampledRows sampled_;
  std::unique_ptr<ThreadPool> sample_pool_;  // null: sample on the engine thread
  std::unique_ptr<Launched> inflight_;       // launched by an earlier Step, not collected
  int last_step_tokens_ = 0;
  int steps_collected_ = 0;
  absl::Time last_collect_ = absl::InfinitePast();  // when the latest step was collected
  // Steps run at once for a backend that does not overlap steps, waiting to be collected.
  struct RanStep {
    absl::Status status;
    SampledRows out;
  };
  std::deque<RanStep> ran_;
};

}  // namespace sbserve
