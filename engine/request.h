// Requests, events and the text interface of the engine's public API.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/sampler.h"

namespace sbserve {

enum class FinishReason { kNone, kLength, kStop, kEos, kCancelled, kDeadline, kError };
const char* FinishReasonName(FinishReason r);  // "length", "stop", ...

// Who ended a request early: the client's call (a cancel, which may be the client's own deadline
// timer) or an explicit Abort RPC naming it.
enum class CancelSource { kClient, kAbortRpc };

struct GenerateRequest {
  std::string request_id;            // non-empty, unique among live requests
  bool has_text = false;             // input is `text` (tokenized by the engine) rather than `prompt_ids`
  std::string text;
  std::vector<int32_t> prompt_ids;
  bool add_special_tokens = true;
  bool skip_special_tokens = true;
  SamplingParams sampling;
  int32_t max_tokens = 0;            // 0: EngineOptions::default_max_tokens, capped by the context
  int32_t min_tokens = 0;
  std::vector<std::string> stop_strings;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool include_stop_str_in_output = false;
  int32_t logprobs = -1;             // -1: none; n >= 0: sampled token's logprob plus the top n
  // -1: none; n >= 0: the logprob of every prompt token after the first under the model given the
  // tokens before it, plus the top n there (OpenAI's echo with logprobs, vLLM's prompt_logprobs).
  // Such a request computes every prompt position it scores: prefix-cached blocks are not taken for
  // them (their logits were never computed); the blocks it computes are published for others.
  int32_t prompt_logprobs = -1;
  int32_t priority = 0;              // lower runs first
  bool cache_prefix = true;          // false: neither reuses nor publishes prefix-cached KV blocks
  // The submitter's token for Abort(..., owner): a cancel from one call (a late one, after its
  // request ended) never reaches another request that reused its id. 0: none.
  uint64_t owner = 0;
  absl::Time deadline = absl::InfiniteFuture();
};

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0.0f;
};

struct StepLogprobs {
  int32_t token_id = 0;
  float logprob = 0.0f;
  std::vector<TokenLogprob> top;  // descending
};

struct RequestTimings {
  absl::Duration queued = absl::ZeroDuration();       // arrival -> first scheduled
  absl::Duration first_token = absl::ZeroDuration();  // arrival -> first output token
  absl::Duration last_token = absl::ZeroDuration();   // arrival -> last output token
  int32_t preemptions = 0;
};

// One delivery to a request's sink. Every accepted request gets exactly one event with
// `finished` set, and none after it.
struct GenerateEvent {
  std::vector<int32_t> token_ids;     // new since the previous event
  std::string text;                   // new text since the previous event (may lag the ids)
  std::vector<StepLogprobs> logprobs; // parallel to token_ids when requested
  // Prompt tokens 1 .. prompt_tokens - 1 when requested, all in the request's first event.
  std::vector<StepLogprobs> prompt_logprobs;
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  absl::Status status;                // non-OK for deadline, cancel, shutdown and engine errors
  std::string stop_reason;            // matched stop string or stop token id
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  RequestTimings timings;
};

// Called on the engine thread; must return quickly and never block.
using EventSink = std::function<void(GenerateEvent)>;

// Streaming detokenizer of one request.
class TextStream {
 public:
  virtual ~TextStream() = default;
  virtual std::string Add(int32_t id) = 0;  // text made complete by this token
  virtual std::string Flush() = 0;          // whatever is still buffered
};

// The engine's view of a tokenizer.
class TextCodec {
 public:
  virtual ~TextCodec() = default;
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_special) const = 0;
  virtual std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const = 0;
  // The bytes one token adds inside a text (its own piece, a SentencePiece token's leading space
  // kept); they may hold part of a UTF-8 character. Empty for a token skip_special removes.
  virtual std::string TokenBytes(int32_t id, bool skip_special) const = 0;
  // A detokenizer for text that follows `prefix` (a request's prompt): its output is the text the
  // ids add after the prefix's, as a decode of the whole would give it.
  virtual std::unique_ptr<TextStream> NewStream(bool skip_special, std::span<const int32_t> prefix) const = 0;
  virtual std::vector<int32_t> eos_ids() const = 0;
};

}  // namespace sbserve
