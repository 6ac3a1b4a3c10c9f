#include "server/metrics_observer.h"

#include "absl/strings/match.h"

namespace sbserve {
namespace {

metrics::FinishReason ToMetrics(FinishReason r) {
  switch (r) {
    case FinishReason::kLength: return metrics::FinishReason::kLength;
    case FinishReason::kStop: return metrics::FinishReason::kStop;
    case FinishReason::kEos: return metrics::FinishReason::kEos;
    case FinishReason::kCancelled: return metrics::FinishReason::kCancelled;
    case FinishReason::kDeadline: return metrics::FinishReason::kDeadline;
    case FinishReason::kError:
    case FinishReason::kNone: break;
  }
  return metrics::FinishReason::kError;
}

}  // namespace

metrics::RejectReason RejectReasonFor(const absl::Status& s, bool loading) {
  using metrics::RejectReason;
  switch (s.code()) {
    case absl::StatusCode::kResourceExhausted:
      // The engine names the limit it hit: "... N prompt tokens ..." or "... N requests ...".
      return absl::StrContains(s.message(), "tokens") ? RejectReason::kQueueTokens : RejectReason::kQueueFull;
    case absl::StatusCode::kUnavailable: return loading ? RejectReason::kLoading : RejectReason::kDraining;
    case absl::StatusCode::kInvalidArgument: return RejectReason::kInvalidArgument;
    case absl::StatusCode::kOutOfRange: return RejectReason::kOutOfRange;
    case absl::StatusCode::kAlreadyExists: return RejectReason::kAlreadyExists;
    default: return RejectReason::kOther;
  }
}

EngineTotals::EngineTotals(const metrics::ServingMetrics* m, int engines)
    : m_(m), states_(engines), healthy_(engines, true) {}

void EngineTotals::SetState(int engine, const metrics::EngineSeries& series, const QueueState& s) {
  std::lock_guard<std::mutex> lock(mu_);
  series.num_requests_running->Set(s.running);
  series.num_requests_waiting->Set(s.waiting);
  series.num_queued_prompt_tokens->Set(static_cast<double>(s.queued_prompt_tokens));
  series.SetKvCache(s.kv_blocks_used, s.kv_blocks_total);
  states_[engine] = s;
  QueueState t;
  for (const QueueState& e : states_) {
    t.running += e.running;
    t.waiting += e.waiting;
    t.queued_prompt_tokens += e.queued_prompt_tokens;
    t.kv_blocks_used += e.kv_blocks_used;
    t.kv_blocks_total += e.kv_blocks_total;
    t.kv_blocks_cached_free += e.kv_blocks_cached_free;
  }
  m_->num_requests_running->Set(t.running);
  m_->num_requests_waiting->Set(t.waiting);
  m_->num_queued_prompt_tokens->Set(static_cast<double>(t.queued_prompt_tokens));
  m_->SetKvCache(t.kv_blocks_used, t.kv_blocks_total);
  m_->kv_cache_cached_free_blocks->Set(t.kv_blocks_cached_free);
}

void EngineTotals::SetUnhealthy(int engine, const metrics::EngineSeries& series, bool fatal) {
  std::lock_guard<std::mutex> lock(mu_);
  series.backend_healthy->Set(0);
  healthy_[engine] = false;
  fatal_ = fatal_ || fatal;
  bool any = false;
  for (bool h : healthy_) any = any || h;
  m_->backend_healthy->Set(any && !fatal_ ? 1 : 0);
}

void MetricsObserver::SetState(const QueueState& s) {
  if (totals_ != nullptr) {
    totals_->SetState(engine_, series_, s);
    return;
  }
  m_->num_requests_running->Set(s.running);
  m_->num_requests_waiting->Set(s.waiting);
  m_->num_queued_prompt_tokens->Set(static_cast<double>(s.queued_prompt_tokens));
  m_->SetKvCache(s.kv_blocks_used, s.kv_blocks_total);
  m_->kv_cache_cached_free_blocks->Set(s.kv_blocks_cached_free);
}

void MetricsObserver::OnStep(const StepReport& r) {
  QueueState s;
  s.running = r.running;
  s.waiting = r.waiting;
  s.queued_prompt_tokens = r.queued_prompt_tokens;
  s.kv_blocks_used = r.kv_blocks_used;
  s.kv_blocks_total = r.kv_blocks_total;
  s.kv_blocks_cached_free = r.kv_blocks_cached_free;
  SetState(s);
  if (totals_ != nullptr) {
    series_.steps->Increment();
    series_.step_seconds->Increment(absl::ToDoubleSeconds(r.step_time));
    if (r.new_prompt_tokens > 0) series_.prompt_tokens->Increment(r.new_prompt_tokens);
  }
  m_->engine_step_time->Observe(absl::ToDoubleSeconds(r.step_time));
  m_->engine_step_tokens->Observe(r.prefill_tokens + r.decode_tokens);
  m_->engine_step_sequences->Observe(r.num_seqs);
  if (r.preempted > 0) m_->num_preemptions->Increment(r.preempted);
  if (r.new_prompt_tokens > 0) m_->prompt_tokens->Increment(r.new_prompt_tokens);
  if (r.prefix_cache_queries > 0) m_->prefix_cache_queries->Increment(r.prefix_cache_queries);
  if (r.prefix_cache_hits > 0) m_->prefix_cache_hits->Increment(r.prefix_cache_hits);
}

void MetricsObserver::OnState(const QueueState& s) { SetState(s); }

void MetricsObserver::OnToken(absl::Duration since_previous) {
  m_->inter_token_latency->Observe(absl::ToDoubleSeconds(since_previous));
  m_->generation_tokens->Increment();
  if (totals_ != nullptr) series_.generation_tokens->Increment();
}

void MetricsObserver::OnFinish(const FinishReport& r) {
  m_->RequestSuccess(ToMetrics(r.reason)).Increment();
  // Counted where the cancel takes effect: a request that the RPC named but that ended by itself
  // first (its last token was on the device) is not an abort.
  if (r.aborted) m_->request_aborts->Increment();
  if (r.reason == FinishReason::kDeadline) {
    // Where it was: a preempted request back in the queue is queued, as the engine's status says.
    m_->RequestDeadlineExceeded(r.running ? metrics::DeadlineStage::kRunning : metrics::DeadlineStage::kQueued)
        .Increment();
  }
  // The first token of each request has no inter-token gap; OnToken counted the others.
  if (r.completion_tokens > 0) m_->generation_tokens->Increment();
  if (totals_ != nullptr) {
    if (r.completion_tokens > 0) series_.generation_tokens->Increment();
    series_.requests_finished->Increment();
  }
  m_->request_prompt_tokens->Observe(r.prompt_tokens);
  m_->request_generation_tokens->Observe(r.completion_tokens);
  m_->e2e_request_latency->Observe(absl::ToDoubleSeconds(r.e2e));
  if (r.scheduled) m_->request_queue_time->Observe(absl::ToDoubleSeconds(r.timings.queued));
  if (r.completion_tokens > 0) {
    m_->time_to_first_token->Observe(absl::ToDoubleSeconds(r.timings.first_token));
    m_->request_prefill_time->Observe(absl::ToDoubleSeconds(r.prefill_time));
    m_->request_decode_time->Observe(absl::ToDoubleSeconds(r.decode_time));
    if (r.completion_tokens > 1) {
      m_->time_per_output_token->Observe(absl::ToDoubleSeconds(r.decode_time) / (r.completion_tokens - 1));
    }
  }
}

void MetricsObserver::OnStepFailure(const StepFailure& f) {
  m_->engine_step_failures->Increment();
  if (totals_ != nullptr) {
    series_.failed_steps->Increment();
    if (f.unhealthy) totals_->SetUnhealthy(engine_, series_, f.fatal);
    return;
  }
  if (f.unhealthy) m_->backend_healthy->Set(0);
}

}  // namespace sbserve
