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

void MetricsObserver::OnStep(const StepReport& r) {
  m_->num_requests_running->Set(r.running);
  m_->num_requests_waiting->Set(r.waiting);
  m_->num_queued_prompt_tokens->Set(static_cast<double>(r.queued_prompt_tokens));
  m_->SetKvCache(r.kv_blocks_used, r.kv_blocks_total);
  m_->engine_step_time->Observe(absl::ToDoubleSeconds(r.step_time));
  m_->engine_step_tokens->Observe(r.prefill_tokens + r.decode_tokens);
  m_->engine_step_sequences->Observe(r.num_seqs);
  if (r.preempted > 0) m_->num_preemptions->Increment(r.preempted);
  if (r.new_prompt_tokens > 0) m_->prompt_tokens->Increment(r.new_prompt_tokens);
  m_->kv_cache_cached_free_blocks->Set(r.kv_blocks_cached_free);
  if (r.prefix_cache_queries > 0) m_->prefix_cache_queries->Increment(r.prefix_cache_queries);
  if (r.prefix_cache_hits > 0) m_->prefix_cache_hits->Increment(r.prefix_cache_hits);
}

void MetricsObserver::OnState(const QueueState& s) {
  m_->num_requests_running->Set(s.running);
  m_->num_requests_waiting->Set(s.waiting);
  m_->num_queued_prompt_tokens->Set(static_cast<double>(s.queued_prompt_tokens));
  m_->SetKvCache(s.kv_blocks_used, s.kv_blocks_total);
  m_->kv_cache_cached_free_blocks->Set(s.kv_blocks_cached_free);
}

void MetricsObserver::OnToken(absl::Duration since_previous) {
  m_->inter_token_latency->Observe(absl::ToDoubleSeconds(since_previous));
  m_->generation_tokens->Increment();
}

void MetricsObserver::OnFinish(const FinishReport& r) {
  m_->RequestSuccess(ToMetrics(r.reason)).Increment();
  if (r.reason == FinishReason::kDeadline) {
    m_->RequestDeadlineExceeded(r.scheduled ? metrics::DeadlineStage::kRunning : metrics::DeadlineStage::kQueued)
        .Increment();
  }
  // The first token of each request has no inter-token gap; OnToken counted the others.
  if (r.completion_tokens > 0) m_->generation_tokens->Increment();
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
  if (f.unhealthy) m_->backend_healthy->Set(0);
}

}  // namespace sbserve
