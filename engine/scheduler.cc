#include "engine/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/sampler.h"
#include "engine/stop_matcher.h"
#include "engine/cpu/thread_pool.h"

namespace sbserve {

struct Scheduler::Seq {
  Seq(GenerateRequest r, EventSink s, absl::Time t, uint64_t n, bool caching)
      : req(std::move(r)),
        sink(std::move(s)),
        arrival(t),
        seq_no(n),
        sampler(req.sampling, req.prompt_ids),
        stop(req.stop_strings) {
    tokens = req.prompt_ids;
    prompt_len = static_cast<int32_t>(tokens.size());
    cache_prefix = caching && req.cache_prefix;
  }

  GenerateRequest req;
  EventSink sink;
  absl::Time arrival;
  uint64_t seq_no;
  SequenceSampler sampler;
  StopMatcher stop;
  std::unique_ptr<TextStream> detok;

  std::vector<int32_t> tokens;  // prompt + output
  int32_t prompt_len = 0;
  int32_t num_computed = 0;     // tokens whose K/V are in the cache
  int32_t prompt_prefilled = 0; // prompt tokens ever computed (kept across preemptions)
  std::vector<int32_t> blocks;
  bool cache_prefix = false;    // reuses and publishes prefix-cached blocks
  // Prompt logprobs: the next prompt token whose row is to be packed (token t's row is position
  // t - 1), those collected, and those not delivered yet. Positions still to score need their
  // logits computed, so a prefix-cache hit may only cover positions already scored (none at first,
  // those before prompt_lp_next - 1 after a preemption); the blocks it computes are published.
  int32_t prompt_lp_next = 1;
  int32_t prompt_lp_collected = 0;
  std::vector<StepLogprobs> pending_prompt_logprobs;
  PrefixChain chain;            // its blocks known to the prefix cache
  bool running = false;
  bool preempted_this_step = false;
  // Logit rows of this sequence in launched, uncollected steps (0 or 1 when a step is packed) and
  // the latest one's index: its token is not in `tokens` yet.
  int32_t pending = 0;
  int32_t pending_row = -1;

  absl::Time first_scheduled = absl::InfinitePast();
  absl::Time first_token = absl::InfinitePast();
  absl::Time last_token = absl::InfinitePast();
  int32_t preemptions = 0;      // preemptions that make it recompute (reported, counted in metrics)
  int32_t evictions = 0;        // times its blocks were freed, preemptions or not
  bool ended_by_abort_rpc = false;  // Cancel with CancelSource::kAbortRpc found it live
  std::string stop_reason;      // matched stop string or stop token id

  // Undelivered output.
  std::vector<int32_t> pending_ids;
  std::string pending_text;
  std::vector<StepLogprobs> pending_logprobs;

  int32_t num_output() const { return static_cast<int32_t>(tokens.size()) - prompt_len; }
  // Tokens a prefix-cache hit may cover: all but the last (its logits are needed), and with prompt
  // logprobs only the positions already scored.
  int64_t max_cached_prefix() const {
    const int64_t all_but_last = static_cast<int64_t>(tokens.size()) - 1;
    return req.prompt_logprobs < 0 ? all_but_last : std::min<int64_t>(all_but_last, prompt_lp_next - 1);
  }
  // Positions [first, last) of a chunk [start, start + chunk) that need a prompt-logprob row.
  std::pair<int, int> PromptRows(int start, int chunk) const {
    if (req.prompt_logprobs < 0) return {0, 0};
    const int first = std::max(start, prompt_lp_next - 1);
    const int last = std::min(start + chunk, prompt_len - 1);
    return first < last ? std::pair<int, int>{first, last} : std::pair<int, int>{0, 0};
  }
  // Tokens (known or pending) whose K/V are not in the cache.
  int32_t need() const { return static_cast<int32_t>(tokens.size()) + pending - num_computed; }
  // Whether the pending token's draw must end the sequence by length (then it is not packed ahead).
  bool pending_ends(int64_t context_len) const {
    return pending > 0 && (num_output() + pending >= req.max_tokens ||
                           static_cast<int64_t>(tokens.size()) + pending >= context_len);
  }
};

// A launched step: what its collection needs of each slot, and its report's counts.
struct Scheduler::Launched {
  struct SlotRec {
    std::string id;
    uint64_t seq_no = 0;
    int32_t end = 0;          // tokens of the sequence computed once this step has run
    int32_t evictions = 0;    // the sequence's count at launch: a later eviction freed its blocks
    int32_t row = -1;         // its logit row, or -1
    // Prompt-logprob rows: (logit row, prompt token index), ascending.
    std::vector<std::pair<int32_t, int32_t>> prompt_rows;
  };
  std::vector<SlotRec> slots;
  absl::Time packed;
  StepReport report;  // counts of the step; the queue state is filled in when it is collected
};

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "none";
    case FinishReason::kLength: return "length";
    case FinishReason::kStop: return "stop";
    case FinishReason::kEos: return "eos";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kDeadline: return "deadline";
    case FinishReason::kError: return "error";
  }
  return "unknown";
}

Scheduler::Scheduler(const SchedulerOptions& options, Backend* backend, KvBlockAllocator* kv,
                     const TextCodec* codec, EngineObserver* observer,
                     std::function<void(const std::string&)> on_finished, std::function<void()> on_packed)
    : options_(options),
      backend_(backend),
      kv_(kv),
      codec_(codec),
      observer_(observer),
      on_finished_(std::move(on_finished)),
      on_packed_(std::move(on_packed)) {
  if (options_.sampling_threads != 1) sample_pool_ = std::make_unique<ThreadPool>(options_.sampling_threads);
}

Scheduler::~Scheduler() {
  // A step still on the device finishes before its buffers (the backend's) can go.
  if (inflight_ != nullptr) CollectFromBackend(&sampled_).IgnoreError();
}

int64_t Scheduler::waiting_tokens() const {
  int64_t n = 0;
  for (const Seq* s : waiting_) n += s->need();
  return n;
}

void Scheduler::Add(GenerateRequest request, EventSink sink, absl::Time arrival) {
  auto seq = std::make_unique<Seq>(std::move(request), std::move(sink), arrival, next_seq_no_++,
                                   options_.enable_prefix_caching);
  if (codec_ != nullptr) seq->detok = codec_->NewStream(seq->req.skip_special_tokens, seq->req.prompt_ids);
  Seq* raw = seq.get();
  seqs_[raw->req.request_id] = std::move(seq);
  InsertWaiting(raw);
}

void Scheduler::InsertWaiting(Seq* seq) {
  auto before = [](const Seq* a, const Seq* b) {
    return a->req.priority != b->req.priority ? a->req.priority < b->req.priority : a->seq_no < b->seq_no;
  };
  waiting_.insert(std::upper_bound(waiting_.begin(), waiting_.end(), seq, before), seq);
  seq->running = false;
}

void Scheduler::InsertRunning(Seq* seq) {
  auto before = [](const Seq* a, const Seq* b) { return a->seq_no < b->seq_no; };
  running_.insert(std::upper_bound(running_.begin(), running_.end(), seq, before), seq);
  seq->running = true;
}

bool Scheduler::Finish(const std::string& request_id, FinishReason reason, absl::Status status) {
  auto it = seqs_.find(request_id);
  if (it == seqs_.end()) return false;
  // The final event goes out after the gauges were reported, as a step's finals do: a client that
  // has seen it reads true gauges.
  const FinalsAtExit finals(this);
  Complete(it->second.get(), reason, std::move(status), absl::Now());
  ReportState();
  return true;
}

void Scheduler::ReportState() {
  if (observer_ == nullptr) return;
  QueueState s;
  s.running = num_running();
  s.waiting = num_waiting();
  s.queued_prompt_tokens = waiting_tokens();
  s.kv_blocks_used = kv_->num_used();
  s.kv_blocks_total = kv_->num_blocks();
  s.kv_blocks_cached_free = kv_->num_cached_free();
  observer_->OnState(s);
}

absl::Duration Scheduler::DeadlineAmbiguity(absl::Duration timeout) {
  absl::Duration resolution = absl::Milliseconds(1);
  for (absl::Duration band = absl::Seconds(1); timeout >= band && band < absl::Hours(10000); band *= 10) {
    resolution *= 10;
  }
  // + 2 ms of millisecond truncation at both ends, + 25 ms for the client's timer starting before
  // the server receives the call (transit and scheduling delay; tens of ms on a loaded machine).
  return resolution + absl::Milliseconds(2) + absl::Milliseconds(25);
}

bool Scheduler::Cancel(const std::string& request_id, absl::Time at, CancelSource source) {
  auto it = seqs_.find(request_id);
  if (it == seqs_.end()) return false;
  Seq* seq = it->second.get();
  seq->ended_by_abort_rpc = source == CancelSource::kAbortRpc;
  absl::Time cutoff = seq->req.deadline;
  if (source == CancelSource::kClient && cutoff != absl::InfiniteFuture()) {
    cutoff -= DeadlineAmbiguity(cutoff - seq->arrival);
  }
  // The timings end now, when the request really ends (a step may have run since `at`).
  const absl::Time now = std::max(at, absl::Now());
  const FinalsAtExit finals(this);  // delivered after ReportState, as in Finish
  if (at >= cutoff) {
    Complete(seq, FinishReason::kDeadline,
             absl::DeadlineExceededError(seq->running ? "deadline passed while generating"
                                                      : "deadline passed while queued"),
             now);
  } else {
    Complete(seq, FinishReason::kCancelled, absl::CancelledError("request cancelled"), now);
  }
  ReportState();
  return true;
}

void Scheduler::FinishAll(FinishReason reason, const absl::Status& status) {
  std::vector<std::string> ids;
  ids.reserve(seqs_.size());
  for (const auto& [id, seq] : seqs_) ids.push_back(id);
  for (const auto& id : ids) Finish(id, reason, status);
}

bool Scheduler::Preempt(Seq* seq) {
  // With overlapped steps a sequence whose draw in flight ends it (by length or context) may give
  // up its blocks too; it finishes when that step is collected and never recomputes, so as in an
  // in-order run it counts no preemption.
  const bool counted = !seq->pending_ends(options_.context_len);
  kv_->Free(seq->blocks);
  seq->num_computed = 0;
  seq->chain = PrefixChain{};
  seq->evictions++;
  if (counted) {
    seq->preemptions++;
    preemptions_++;
  }
  seq->preempted_this_step = true;
  running_.erase(std::find(running_.begin(), running_.end(), seq));
  InsertWaiting(seq);
  return counted;
}

bool Scheduler::Reserve(Seq* seq, int chunk) {
  return kv_->EnsureCapacity(seq->blocks, static_cast<int64_t>(seq->num_computed) + chunk).ok();
}

void Scheduler::Pack(std::vector<Slot>& slots, int& preempted) {
  int budget = options_.max_batch_tokens;
  // Chunks of sequences that want prompt logprobs are cut so that their rows fit the step's share
  // (kMaxPromptLogprobRows); 0 when none fits. `take` counts a packed chunk's rows.
  int prompt_rows_left = kMaxPromptLogprobRows;
  auto fit_prompt_rows = [&](const Seq* seq, int chunk) {
    const auto [first, last] = seq->PromptRows(seq->num_computed, chunk);
    return last - first <= prompt_rows_left ? chunk : first - seq->num_computed + prompt_rows_left;
  };
  auto take = [&](const Seq* seq, int chunk) {
    const auto [first, last] = seq->PromptRows(seq->num_computed, chunk);
    prompt_rows_left -= last - first;
  };
  auto full = [&] { return budget <= 0 || static_cast<int>(slots.size()) >= options_.max_num_seqs; };
  auto scheduled = [&](const Seq* s) {
    return std::any_of(slots.begin(), slots.end(), [s](const Slot& x) { return x.seq == s; });
  };
  // Frees blocks by preempting the youngest running sequence that is not `keep` and not yet in
  // this step; false when there is none.
  auto evict_younger = [&](Seq* keep) {
    for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
      Seq* victim = *it;
      if (victim == keep) return false;  // everything younger is gone already
      if (scheduled(victim)) continue;
      preempted += Preempt(victim) ? 1 : 0;
      return true;
    }
    return false;
  };

  // 1 and 2: running sequences, decode steps first, then continuing prefill chunks.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < running_.size() && !full(); ++i) {
      Seq* seq = running_[i];
      if (seq->pending_ends(options_.context_len)) continue;  // it ends when its step is collected
      const bool decode = seq->need() == 1;
      if (decode != (pass == 0)) continue;
      const int chunk = fit_prompt_rows(seq, std::min(seq->need(), budget));
      if (chunk == 0) continue;
      bool ok = Reserve(seq, chunk);
      while (!ok && evict_younger(seq)) ok = Reserve(seq, chunk);
      if (!ok) {
        // Even alone it does not fit next to older sequences: recompute it later.
        preempted += Preempt(seq) ? 1 : 0;
        --i;
        continue;
      }
      take(seq, chunk);
      slots.push_back({seq, chunk});
      budget -= chunk;
    }
  }
  // 3: waiting sequences, while blocks last; never preempt for them.
  while (!waiting_.empty() && !full()) {
    Seq* seq = waiting_.front();
    // Preempted in this step, possibly with a draw still pending: it restarts from a later step.
    if (seq->preempted_this_step || seq->pending > 0) break;
    // A waiting sequence holds no blocks (new, or preempted). Its cached prefix leaves at least the
    // last token to compute: its logits are needed, and a chunk is never empty.
    int hit = 0;
    if (seq->cache_prefix) {
      hit = kv_->AcquirePrefix(seq->tokens, seq->max_cached_prefix(), seq->blocks, seq->chain);
      seq->num_computed = hit;
    }
    const int chunk = fit_prompt_rows(seq, std::min(seq->need(), budget));
    if (chunk == 0 || !Reserve(seq, chunk)) {
      kv_->Free(seq->blocks);  // the cached blocks stay cached for the next attempt
      seq->num_computed = 0;
      seq->chain = PrefixChain{};
      break;
    }
    if (seq->cache_prefix) {
      // A request scoring its prompt looks up only the positions already scored.
      step_prefix_queries_ += seq->req.prompt_logprobs < 0 ? static_cast<int>(seq->tokens.size())
                                                           : static_cast<int>(seq->max_cached_prefix());
      step_prefix_hits_ += hit;
    }
    waiting_.pop_front();
    InsertRunning(seq);
    take(seq, chunk);
    slots.push_back({seq, chunk});
    budget -= chunk;
  }
}

absl::Status Scheduler::Step(absl::Time now) {
  // Requests ending in this step are announced when it returns, after its StepReport.
  const FinalsAtExit finals(this);
  last_step_tokens_ = 0;
  steps_collected_ = 0;
  absl::Status result;
  bool collected = false;
  auto collect = [&](std::unique_ptr<Launched> step) {
    absl::Status st = Collect(std::move(step));
    collected = true;
    if (result.ok()) result = std::move(st);
  };
  // Deadlines, queued or running. A step in flight delivers its tokens first, as it would have
  // before the deadline was looked at without overlap.
  std::vector<Seq*> expired;
  auto find_expired = [&] {
    expired.clear();
    for (auto& [id, seq] : seqs_) {
      if (now >= seq->req.deadline) expired.push_back(seq.get());
    }
  };
  find_expired();
  if (!expired.empty() && inflight_ != nullptr) {
    collect(std::move(inflight_));
    find_expired();
  }
  for (Seq* seq : expired) {
    Complete(seq, FinishReason::kDeadline,
             absl::DeadlineExceededError(seq->running ? "deadline passed while generating"
                                                      : "deadline passed while queued"),
             now);
  }

  if (inflight_ != nullptr && MustCollectBeforePacking()) collect(std::move(inflight_));

  std::vector<Slot> slots;
  int preempted = 0;
  step_prefix_queries_ = step_prefix_hits_ = 0;
  for (Seq* s : running_) s->preempted_this_step = false;
  for (Seq* s : waiting_) s->preempted_this_step = false;
  Pack(slots, preempted);
  if (on_packed_) on_packed_();
  // A sequence preempted after it was packed cannot happen (victims are never in `slots`), but
  // a packed sequence's order in `running_` is irrelevant: the batch follows `slots`.
  std::unique_ptr<Launched> launched;
  if (!slots.empty()) {
    launched = BuildStep(slots, now, preempted);
    if (absl::Status st = LaunchOnBackend(); !st.ok()) {
      const absl::Time t1 = absl::Now();
      const absl::Status err = absl::InternalError(absl::StrCat("backend forward failed: ", st.message()));
      for (const Slot& s : slots) Complete(s.seq, FinishReason::kError, err, t1);
      launched.reset();
      if (result.ok()) result = st;
    } else {
      last_step_tokens_ = batch_.num_tokens();
      // What the launched step changes, as far as packing the next one is concerned.
      for (size_t i = 0; i < slots.size(); ++i) {
        Seq* seq = slots[i].seq;
        const Launched::SlotRec& r = launched->slots[i];
        seq->num_computed = r.end;
        seq->prompt_prefilled = std::max(seq->prompt_prefilled, std::min(r.end, seq->prompt_len));
        if (r.row >= 0) {
          seq->pending++;
          seq->pending_row = r.row;
        }
      }
    }
  }
  // The previous step (overlapped: it ran while this one was packed), then, without overlap, this one.
  if (inflight_ != nullptr) collect(std::move(inflight_));
  inflight_ = std::move(launched);
  if (inflight_ != nullptr && !options_.overlap_steps) collect(std::move(inflight_));
  // No StepReport follows, or the last one came before requests ended (a deadline after the
  // in-flight step was collected, a failed step): the gauges are reported again.
  if (!finals_.empty() || (!collected && !expired.empty())) ReportState();
  return result;
}

absl::Status Scheduler::Settle() {
  if (inflight_ == nullptr) return absl::OkStatus();
  const FinalsAtExit finals(this);
  steps_collected_ = 0;
  absl::Status st = Collect(std::move(inflight_));
  if (!st.ok()) ReportState();  // the failed step's requests ended after its report
  return st;
}

StepLogprobs Scheduler::RowLogprobs(int32_t row, int n) const {
  StepLogprobs lp;
  lp.token_id = sampled_.tokens[row];
  lp.logprob = sampled_.logprobs[row];
  const int k = static_cast<int>(std::min<int64_t>(n, backend_->config().vocab_size));
  for (int j = 0; j < k; ++j) {
    const size_t at = static_cast<size_t>(row) * sampled_.top_n + j;
    lp.top.push_back({sampled_.top_ids[at], sampled_.top_logprobs[at]});
  }
  return lp;
}

std::unique_ptr<Scheduler::Launched> Scheduler::BuildStep(const std::vector<Slot>& slots, absl::Time now,
                                                          int preempted) {
  auto step = std::make_unique<Launched>();
  step->packed = now;
  Batch& b = batch_;
  b.tokens.clear();
  b.positions.clear();
  b.cu_seqlens_q.assign(1, 0);
  b.context_lens.clear();
  b.block_tables.clear();
  b.logit_rows.clear();
  b.max_blocks_per_seq = 0;
  feed_.clear();
  sampling_.rows.clear();
  sampling_.adjust.clear();
  std::vector<int32_t> banned;
  int prefill_tokens = 0;
  int decode_tokens = 0;
  int new_prompt_tokens = 0;
  for (const Slot& s : slots) {
    b.max_blocks_per_seq = std::max(b.max_blocks_per_seq, static_cast<int32_t>(s.seq->blocks.size()));
  }
  b.block_tables.assign(slots.size() * static_cast<size_t>(b.max_blocks_per_seq), -1);
  for (size_t i = 0; i < slots.size(); ++i) {
    Seq* seq = slots[i].seq;
    const int start = seq->num_computed;
    const int end = start + slots[i].chunk;
    const int known = static_cast<int>(seq->tokens.size());
    for (int p = start; p < end; ++p) {
      // A position past the known tokens is the pending draw of the step in flight.
      if (p >= known) feed_.push_back({static_cast<int32_t>(b.tokens.size()), seq->pending_row});
      b.tokens.push_back(p < known ? seq->tokens[p] : 0);
      b.positions.push_back(p);
    }
    b.cu_seqlens_q.push_back(static_cast<int32_t>(b.tokens.size()));
    b.context_lens.push_back(end);
    std::copy(seq->blocks.begin(), seq->blocks.end(),
              b.block_tables.begin() + static_cast<int64_t>(i) * b.max_blocks_per_seq);
    Launched::SlotRec rec;
    rec.id = seq->req.request_id;
    rec.seq_no = seq->seq_no;
    rec.end = end;
    rec.evictions = seq->evictions;
    // Prompt-logprob rows: position p's logits give token p + 1's logprob (no draw; ascending rows,
    // all before the chunk's last position, the sampling row's).
    const auto [lp_first, lp_last] = seq->PromptRows(start, slots[i].chunk);
    const int chunk_row0 = static_cast<int>(b.tokens.size()) - slots[i].chunk;
    for (int p = lp_first; p < lp_last; ++p) {
      rec.prompt_rows.push_back({static_cast<int32_t>(b.logit_rows.size()), p + 1});
      b.logit_rows.push_back(chunk_row0 + p - start);
      RowSampling& rs = sampling_.rows.emplace_back();
      rs.temperature = 0.f;
      rs.num_logprobs = seq->req.prompt_logprobs;
      rs.forced_token = seq->tokens[p + 1];
      rs.adjust_begin = rs.adjust_end = static_cast<int32_t>(sampling_.adjust.size());
    }
    if (lp_last > lp_first) seq->prompt_lp_next = lp_last + 1;
    if (end == known + seq->pending) {
      rec.row = static_cast<int32_t>(b.logit_rows.size());
      b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size()) - 1);
      // The row's draw as the backend takes it; a pending token is the draw before this one.
      BannedTokens(seq, &banned);
      sampling_.rows.emplace_back();
      seq->sampler.Describe(banned, seq->req.logprobs, &sampling_.rows.back(), &sampling_.adjust);
      sampling_.rows.back().position += seq->pending;
    }
    step->slots.push_back(std::move(rec));
    if (slots[i].chunk == 1 && seq->num_output() + seq->pending > 0) {
      decode_tokens++;
    } else {
      prefill_tokens += slots[i].chunk;
    }
    new_prompt_tokens += std::max(0, std::min(end, seq->prompt_len) - seq->prompt_prefilled);
    if (seq->first_scheduled == absl::InfinitePast()) seq->first_scheduled = now;
  }
  StepReport& rep = step->report;
  rep.num_seqs = static_cast<int>(slots.size());
  rep.prefill_tokens = prefill_tokens;
  rep.decode_tokens = decode_tokens;
  rep.preempted = preempted;
  rep.new_prompt_tokens = new_prompt_tokens;
  rep.prefix_cache_queries = step_prefix_queries_;
  rep.prefix_cache_hits = step_prefix_hits_;
  return step;
}

absl::Status Scheduler::LaunchOnBackend() {
  if (backend_->overlaps_steps()) return backend_->LaunchStep(batch_, sampling_, feed_);
  RanStep ran;
  // Fed tokens are the previous launch's draws. When that step failed, its sequences fail with it
  // and the rows fed from it are dropped at collection; they run on token 0 like any stand-in.
  const bool fed = !ran_.empty() && ran_.back().status.ok();
  for (const Backend::TokenFeed& f : feed_) batch_.tokens[f.token_index] = fed ? ran_.back().out.tokens[f.from_row] : 0;
  if (backend_->samples_on_device()) {
    ran.status = backend_->ForwardSample(batch_, sampling_, &ran.out);
  } else {
    const int64_t vocab = backend_->config().vocab_size;
    logits_.resize(batch_.logit_rows.size() * static_cast<size_t>(vocab));
    ran.status = backend_->Forward(batch_, std::span<float>(logits_));
    // Sampling a 49k vocabulary costs 30 us (greedy) to milliseconds (top-p) per row on the host,
    // which at 64 rows would rival a GPU decode step: rows are drawn in parallel.
    if (ran.status.ok()) {
      DrawRows(sampling_, std::span<float>(logits_), vocab, &ran.out, sample_pool_.get(), kRowsPerSamplingTask);
    }
  }
  ran_.push_back(std::move(ran));
  return absl::OkStatus();
}

absl::Status Scheduler::CollectFromBackend(SampledRows* out) {
  if (backend_->overlaps_steps()) return backend_->CollectStep(out);
  if (ran_.empty()) return absl::InternalError("no launched step to collect");
  RanStep ran = std::move(ran_.front());
  ran_.pop_front();
  *out = std::move(ran.out);
  return ran.status;
}

Scheduler::Seq* Scheduler::Find(const std::string& id, uint64_t seq_no) const {
  auto it = seqs_.find(id);
  return it != seqs_.end() && it->second->seq_no == seq_no ? it->second.get() : nullptr;
}

bool Scheduler::MustCollectBeforePacking() const {
  return std::any_of(running_.begin(), running_.end(),
                     [](const Seq* s) { return s->pending > 0 && s->sampler.penalizes(); });
}

absl::Status Scheduler::Collect(std::unique_ptr<Launched> step) {
  const absl::Status st = CollectFromBackend(&sampled_);
  const absl::Time t1 = absl::Now();
  if (!st.ok()) {
    const absl::Status err = absl::InternalError(absl::StrCat("backend forward failed: ", st.message()));
    // A step launched after this one on its draws holds rows of these sequences only where they
    // continue from this step: those rows are dropped when it is collected, the rest stand.
    int failed = 0;
    for (const Launched::SlotRec& r : step->slots) {
      if (Seq* seq = Find(r.id, r.seq_no)) {
        Complete(seq, FinishReason::kError, err, t1);
        failed++;
      }
    }
    // Such a step, whose requests all ended with the step before it, fails no request: it is not
    // counted as a failed step (in order, it would not have run), unless the device is lost.
    if (failed == 0 && !IsFatalBackendError(st)) return absl::OkStatus();
    return st;
  }
  steps_collected_++;
  // Counted with the step that used them (as the StepReport does), not for a failed one.
  prefix_queries_ += static_cast<uint64_t>(step->report.prefix_cache_queries);
  prefix_hits_ += static_cast<uint64_t>(step->report.prefix_cache_hits);

  struct Pick {
    Seq* seq = nullptr;
    int32_t token = 0;
    StepLogprobs lp;
  };
  std::vector<Pick> picks;
  for (const Launched::SlotRec& r : step->slots) {
    Seq* seq = Find(r.id, r.seq_no);
    if (seq == nullptr) continue;  // ended since: a speculative row's draw is dropped
    // Blocks this step completed now hold K/V for good: others may share them from now on.
    if (seq->cache_prefix && seq->evictions == r.evictions) {
      kv_->Publish(seq->tokens, seq->blocks, r.end / kv_->block_size(), seq->chain);
    }
    for (const auto& [row, t] : r.prompt_rows) {
      if (t != seq->prompt_lp_collected + 1) continue;  // never: rows are packed once, in order
      seq->prompt_lp_collected = t;
      seq->pending_prompt_logprobs.push_back(RowLogprobs(row, seq->req.prompt_logprobs));
    }
    if (r.row < 0) continue;
    seq->pending--;
    Pick p;
    p.seq = seq;
    p.token = sampled_.tokens[r.row];
    seq->sampler.Record(p.token);
    if (seq->req.logprobs >= 0) p.lp = RowLogprobs(r.row, seq->req.logprobs);
    picks.push_back(std::move(p));
  }
  for (Pick& p : picks) OnToken(p.seq, p.token, std::move(p.lp), t1);

  // Pack + forward + sample; overlapped, the step was packed while the one before ran, and its
  // share of the wall time starts when that one was collected.
  const absl::Time end = absl::Now();
  const absl::Duration step_time = end - std::max(step->packed, last_collect_);
  last_collect_ = end;
  if (observer_ != nullptr) {
    StepReport rep = step->report;
    rep.step_time = step_time;
    rep.running = num_running();
    rep.waiting = num_waiting();
    rep.queued_prompt_tokens = waiting_tokens();
    rep.kv_blocks_used = kv_->num_used();
    rep.kv_blocks_total = kv_->num_blocks();
    rep.kv_blocks_cached_free = kv_->num_cached_free();
    observer_->OnStep(rep);
  }
  return absl::OkStatus();
}

void Scheduler::BannedTokens(const Seq* seq, std::vector<int32_t>* banned) const {
  // Before min_tokens, nothing that would end the sequence may be drawn.
  banned->clear();
  const GenerateRequest& req = seq->req;
  if (seq->num_output() + seq->pending >= req.min_tokens) return;
  if (!req.ignore_eos) banned->insert(banned->end(), options_.eos_ids.begin(), options_.eos_ids.end());
  banned->insert(banned->end(), req.stop_token_ids.begin(), req.stop_token_ids.end());
}

void Scheduler::OnToken(Seq* seq, int32_t token, StepLogprobs lp, absl::Time now) {
  const GenerateRequest& req = seq->req;
  seq->tokens.push_back(token);
  if (seq->first_token == absl::InfinitePast()) {
    seq->first_token = now;
  } else if (observer_ != nullptr) {
    observer_->OnToken(now - seq->last_token);
  }
  seq->last_token = now;
  seq->pending_ids.push_back(token);
  if (req.logprobs >= 0) seq->pending_logprobs.push_back(std::move(lp));

  const int32_t n = seq->num_output();
  const bool can_stop = n >= req.min_tokens;
  FinishReason reason = FinishReason::kNone;
  // One rule for text and ids: the text of a request is the detokenization of its token_ids under
  // skip_special_tokens, after its prompt's text. What ended it is left out of the text unless
  // include_stop_str_in_output: a matched stop string, and the eos or stop id that ended it (the
  // id stays in token_ids), as vLLM does (README, GenerateResponse).
  if (!req.ignore_eos &&
      std::find(options_.eos_ids.begin(), options_.eos_ids.end(), token) != options_.eos_ids.end()) {
    reason = FinishReason::kEos;
  } else if (std::find(req.stop_token_ids.begin(), req.stop_token_ids.end(), token) != req.stop_token_ids.end()) {
    reason = FinishReason::kStop;
    seq->stop_reason = absl::StrCat(token);
  }
  if (reason != FinishReason::kNone) {
    // The ending token's text, kept only on request and unmatched: stop strings do not apply to it.
    if (seq->detok != nullptr && req.include_stop_str_in_output) {
      seq->pending_text += seq->stop.Push(seq->detok->Add(token), StopMatcher::Check::kRelease).text;
    }
  } else if (seq->detok != nullptr) {
    StopMatcher::Result r = seq->stop.Push(seq->detok->Add(token), can_stop ? StopMatcher::Check::kMatch
                                                                              : StopMatcher::Check::kHoldOnly);
    seq->pending_text += r.text;
    if (r.matched) {
      reason = FinishReason::kStop;
      seq->stop_reason = r.stop;
      if (req.include_stop_str_in_output) seq->pending_text += r.stop;
    }
  }
  if (reason == FinishReason::kNone &&
      (n >= req.max_tokens || static_cast<int64_t>(seq->tokens.size()) >= options_.context_len)) {
    reason = FinishReason::kLength;
  }
  if (reason != FinishReason::kNone) {
    Complete(seq, reason, absl::OkStatus(), now);  // destroys seq
    return;
  }
  Emit(seq, false);
}

void Scheduler::Emit(Seq* seq, bool final) {
  if (!final && seq->pending_ids.empty() && seq->pending_text.empty()) return;
  GenerateEvent ev;
  ev.token_ids = std::move(seq->pending_ids);
  ev.text = std::move(seq->pending_text);
  ev.logprobs = std::move(seq->pending_logprobs);
  ev.prompt_logprobs = std::move(seq->pending_prompt_logprobs);
  seq->pending_ids.clear();
  seq->pending_text.clear();
  seq->pending_logprobs.clear();
  seq->pending_prompt_logprobs.clear();
  ev.prompt_tokens = seq->prompt_len;
  ev.completion_tokens = seq->num_output();
  seq->sink(std::move(ev));
}

void Scheduler::Complete(Seq* seq, FinishReason reason, absl::Status status, absl::Time now) {
  const GenerateRequest& req = seq->req;
  if (seq->detok != nullptr) {  // after a stop-string match the matcher releases nothing more
    // The flush (e.g. U+FFFD for a trailing incomplete character) is stop-matched like any other
    // delta; then whatever was held back as a possible stop prefix is released.
    const bool can_stop = seq->num_output() >= req.min_tokens;
    StopMatcher::Result r =
        seq->stop.Push(seq->detok->Flush(), can_stop ? StopMatcher::Check::kMatch : StopMatcher::Check::kHoldOnly);
    seq->pending_text += r.text;
    if (r.matched) {
      if (req.include_stop_str_in_output) seq->pending_text += r.stop;
      // A natural end becomes STOP on the string, which the text now ends at (also an end on a
      // stop token id); a cancel, deadline or error keeps its reason.
      if (status.ok() &&
          (reason == FinishReason::kLength || reason == FinishReason::kEos || reason == FinishReason::kStop)) {
        reason = FinishReason::kStop;
        seq->stop_reason = r.stop;
      }
    } else {
      seq->pending_text += seq->stop.Flush();
    }
  }

  kv_->Free(seq->blocks);
  if (seq->running) {
    running_.erase(std::find(running_.begin(), running_.end(), seq));
  } else {
    auto it = std::find(waiting_.begin(), waiting_.end(), seq);
    if (it != waiting_.end()) waiting_.erase(it);
  }

  GenerateEvent ev;
  ev.token_ids = std::move(seq->pending_ids);
  ev.text = std::move(seq->pending_text);
  ev.logprobs = std::move(seq->pending_logprobs);
  ev.prompt_logprobs = std::move(seq->pending_prompt_logprobs);
  ev.finished = true;
  ev.finish_reason = reason;
  ev.status = std::move(status);
  ev.stop_reason = std::move(seq->stop_reason);
  ev.prompt_tokens = seq->prompt_len;
  ev.completion_tokens = seq->num_output();
  auto since = [&](absl::Time t) { return t == absl::InfinitePast() ? absl::ZeroDuration() : t - seq->arrival; };
  ev.timings.queued = since(seq->first_scheduled == absl::InfinitePast() ? now : seq->first_scheduled);
  ev.timings.first_token = since(seq->first_token);
  ev.timings.last_token = since(seq->last_token);
  ev.timings.preemptions = seq->preemptions;

  if (observer_ != nullptr) {
    FinishReport rep;
    rep.request_id = req.request_id;
    rep.reason = reason;
    rep.status = ev.status;
    rep.prompt_tokens = ev.prompt_tokens;
    rep.completion_tokens = ev.completion_tokens;
    rep.timings = ev.timings;
    if (seq->first_token != absl::InfinitePast()) {
      rep.prefill_time = seq->first_token - seq->first_scheduled;
      rep.decode_time = seq->last_token - seq->first_token;
    }
    rep.e2e = now - seq->arrival;
    rep.scheduled = seq->first_scheduled != absl::InfinitePast();
    rep.running = seq->running;
    rep.aborted = seq->ended_by_abort_rpc;
    observer_->OnFinish(rep);
  }

  EventSink sink = std::move(seq->sink);
  std::string id = req.request_id;
  seqs_.erase(id);  // destroys seq
  if (in_step_) {
    finals_.push_back({std::move(id), std::move(sink), std::move(ev)});
    return;
  }
  if (on_finished_) on_finished_(id);
  sink(std::move(ev));
}

void Scheduler::DeliverFinals() {
  in_step_ = false;
  std::vector<Final> finals = std::move(finals_);
  finals_.clear();
  for (Final& f : finals) {
    if (on_finished_) on_finished_(f.id);
    f.sink(std::move(f.event));
  }
}

}  // namespace sbserve
