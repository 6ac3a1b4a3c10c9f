// The scheduler and packer against a fake backend that really stores every token in the paged
// cache and derives each logit row from the cached keys it reads back through the block table.
// A packing bug (wrong positions, block tables, context lengths, a preemption that loses state)
// therefore changes the generated tokens.
#include "engine/scheduler.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/server/fake_backend.h"

namespace sbserve {
namespace {

// Every token decodes to "<id>," so text is predictable; the end-of-stream flush gives `flush`
// (a detokenizer ending on an incomplete UTF-8 character flushes U+FFFD).
class FakeStream : public TextStream {
 public:
  explicit FakeStream(std::string flush = "") : flush_(std::move(flush)) {}
  std::string Add(int32_t id) override { return absl::StrCat(id, ","); }
  std::string Flush() override { return std::exchange(flush_, ""); }

 private:
  std::string flush_;
};
class FakeCodec : public TextCodec {
 public:
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view, bool) const override { return std::vector<int32_t>{}; }
  std::string Decode(const std::vector<int32_t>&, bool) const override { return ""; }
  std::string TokenBytes(int32_t, bool) const override { return ""; }
  std::unique_ptr<TextStream> NewStream(bool, std::span<const int32_t> prefix) const override {
    prefixes.emplace_back(prefix.begin(), prefix.end());
    return std::make_unique<FakeStream>(flush);
  }
  std::vector<int32_t> eos_ids() const override { return {kFakeEos}; }
  std::string flush;
  mutable std::vector<std::vector<int32_t>> prefixes;  // of every stream made
};

struct Result {
  std::vector<int32_t> ids;
  std::string text;
  std::vector<StepLogprobs> logprobs;
  std::vector<StepLogprobs> prompt_logprobs;
  int prompt_logprob_events = 0;  // events that carried prompt logprobs
  GenerateEvent final;
  int events = 0;
};

struct Harness {
  Harness(int num_blocks, int block_size, int max_batch_tokens, int max_num_seqs = 64,
          EngineObserver* observer = nullptr, bool overlap_steps = false)
      : kv(num_blocks, block_size) {
    EXPECT_TRUE(backend.InitKvCache({num_blocks, block_size}).ok());
    SchedulerOptions o;
    o.max_batch_tokens = max_batch_tokens;
    o.max_num_seqs = max_num_seqs;
    o.context_len = backend.config().n_positions;
    o.eos_ids = {kFakeEos};
    o.overlap_steps = overlap_steps;
    sched = std::make_unique<Scheduler>(o, &backend, &kv, &codec, observer, [this](const std::string& id) {
      finished.push_back(id);
    });
  }

  void Add(GenerateRequest r) {
    const std::string id = r.request_id;
    results[id];
    sched->Add(std::move(r), [this, id](GenerateEvent e) {
      Result& res = results[id];
      ASSERT_FALSE(res.final.finished) << "event after the final one";
      res.events++;
      res.ids.insert(res.ids.end(), e.token_ids.begin(), e.token_ids.end());
      res.text += e.text;
      res.logprobs.insert(res.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
      if (!e.prompt_logprobs.empty()) res.prompt_logprob_events++;
      res.prompt_logprobs.insert(res.prompt_logprobs.end(), e.prompt_logprobs.begin(), e.prompt_logprobs.end());
      if (e.finished) res.final = std::move(e);
    }, absl::Now());
  }

  void RunToCompletion(int max_steps = 10000) {
    for (int i = 0; i < max_steps && sched->HasWork(); ++i) {
      absl::Status s = sched->Step(absl::Now());
      ASSERT_TRUE(s.ok()) << s;
    }
    ASSERT_FALSE(sched->HasWork());
  }

  FakeBackend backend;
  FakeCodec codec;
  KvBlockAllocator kv;
  std::unique_ptr<Scheduler> sched;
  std::map<std::string, Result> results;
  std::vector<std::string> finished;
};

GenerateRequest Req(const std::string& id, int prompt_len, int max_tokens, uint64_t seed = 0, float temp = 0.0f) {
  GenerateRequest r;
  r.request_id = id;
  std::mt19937 rng(static_cast<uint32_t>(prompt_len * 131 + seed));
  for (int i = 0; i < prompt_len; ++i) r.prompt_ids.push_back(1 + static_cast<int32_t>(rng() % (kFakeVocab - 1)));
  r.max_tokens = max_tokens;
  r.sampling.temperature = temp;
  r.sampling.seed = seed;
  r.sampling.has_seed = true;
  r.ignore_eos = true;
  return r;
}

// The ids of `r` run alone (the reference a test's variant of it is compared with).
std::vector<int32_t> IdsAlone(const GenerateRequest& r) {
  Harness ref(256, 4, 64);
  ref.Add(r);
  ref.RunToCompletion();
  return ref.results[r.request_id].ids;
}

void CheckBatchShape(const Batch& b, int budget) {
  ASSERT_GE(b.num_seqs(), 1);
  ASSERT_EQ(b.cu_seqlens_q.front(), 0);
  ASSERT_EQ(b.cu_seqlens_q.back(), b.num_tokens());
  ASSERT_LE(b.num_tokens(), budget);
  ASSERT_EQ(static_cast<int>(b.context_lens.size()), b.num_seqs());
  ASSERT_EQ(static_cast<int>(b.block_tables.size()), b.num_seqs() * b.max_blocks_per_seq);
  for (size_t i = 1; i < b.logit_rows.size(); ++i) ASSERT_LT(b.logit_rows[i - 1], b.logit_rows[i]);
}

TEST(Scheduler, ChunkedPrefillUnderBudgetAndDecodeFirst) {
  Harness h(/*num_blocks=*/256, /*block_size=*/4, /*max_batch_tokens=*/16);
  h.Add(Req("a", 40, 10));
  h.Add(Req("b", 5, 10));
  h.Add(Req("c", 100, 10));
  h.RunToCompletion();
  ASSERT_FALSE(h.backend.batches.empty());
  // First step: only a's first chunk fits.
  const Batch& first = h.backend.batches[0];
  EXPECT_EQ(first.num_seqs(), 1);
  EXPECT_EQ(first.num_tokens(), 16);
  EXPECT_TRUE(first.logit_rows.empty());
  bool saw_mixed = false;
  for (const Batch& b : h.backend.batches) {
    CheckBatchShape(b, 16);
    if (b.num_seqs() > 1) saw_mixed = true;
  }
  EXPECT_TRUE(saw_mixed) << "decode and prefill never shared a step";
  for (const char* id : {"a", "b", "c"}) {
    EXPECT_EQ(h.results[id].ids.size(), 10u) << id;
    EXPECT_EQ(h.results[id].final.finish_reason, FinishReason::kLength);
    EXPECT_EQ(h.results[id].final.prompt_tokens, id[0] == 'a' ? 40 : id[0] == 'b' ? 5 : 100);
  }
  EXPECT_EQ(h.kv.num_used(), 0);
  EXPECT_EQ(h.finished.size(), 3u);
}

TEST(Scheduler, RunningStreamsKeepDecodingWhileALongPromptPrefills) {
  Harness h(512, 4, /*max_batch_tokens=*/8);
  h.Add(Req("short", 3, 60));
  ASSERT_TRUE(h.sched->Step(absl::Now()).ok());  // prefill + first token
  h.Add(Req("long", 300, 2));
  int steps_with_short = 0, steps = 0;
  while (h.results["long"].ids.empty()) {
    ASSERT_TRUE(h.sched->Step(absl::Now()).ok());
    const Batch& b = h.sched->last_batch();
    steps++;
    // The short stream's decode token is the first chunk of every step until it finishes.
    if (b.cu_seqlens_q[1] == 1) steps_with_short++;
  }
  EXPECT_GE(steps, 300 / 7);
  EXPECT_EQ(steps_with_short, std::min(steps, 59));
  h.RunToCompletion();
}

TEST(Scheduler, PreemptionUnderKvPressureGivesTheSameTokens) {
  // Reference: each request alone with plenty of blocks.
  std::map<std::string, std::vector<int32_t>> alone;
  for (int i = 0; i < 6; ++i) {
    Harness h(1024, 4, 64);
    const std::string id = absl::StrCat("r", i);
    h.Add(Req(id, 10 + 7 * i, 30, static_cast<uint64_t>(i), i % 2 ? 0.8f : 0.0f));
    h.RunToCompletion();
    alone[id] = h.results[id].ids;
    ASSERT_EQ(alone[id].size(), 30u);
  }
  // Together, with a pool that holds about two sequences: the scheduler must preempt.
  Harness h(/*num_blocks=*/36, 4, 64);
  for (int i = 0; i < 6; ++i) {
    h.Add(Req(absl::StrCat("r", i), 10 + 7 * i, 30, static_cast<uint64_t>(i), i % 2 ? 0.8f : 0.0f));
  }
  h.RunToCompletion();
  EXPECT_GT(h.sched->preemptions(), 0u);
  int preempted_requests = 0;
  for (auto& [id, ids] : alone) {
    EXPECT_EQ(h.results[id].ids, ids) << id;
    preempted_requests += h.results[id].final.timings.preemptions > 0;
  }
  EXPECT_GT(preempted_requests, 0);
  EXPECT_EQ(h.kv.num_used(), 0);
}

TEST(Scheduler, BatchingDoesNotChangeResults) {
  std::map<std::string, std::vector<int32_t>> alone;
  for (int i = 0; i < 12; ++i) {
    Harness h(1024, 8, 128);
    const std::string id = absl::StrCat("r", i);
    h.Add(Req(id, 1 + 13 * i, 5 + 3 * i, static_cast<uint64_t>(100 + i), i % 3 == 0 ? 0.0f : 1.0f));
    h.RunToCompletion();
    alone[id] = h.results[id].ids;
  }
  Harness h(1024, 8, 40, /*max_num_seqs=*/5);
  for (int i = 0; i < 12; ++i) {
    h.Add(Req(absl::StrCat("r", i), 1 + 13 * i, 5 + 3 * i, static_cast<uint64_t>(100 + i), i % 3 == 0 ? 0.0f : 1.0f));
  }
  h.RunToCompletion();
  for (const Batch& b : h.backend.batches) {
    CheckBatchShape(b, 40);
    EXPECT_LE(b.num_seqs(), 5);
  }
  for (auto& [id, ids] : alone) EXPECT_EQ(h.results[id].ids, ids) << id;
}

TEST(Scheduler, EosIgnoreEosAndMinTokens) {
  auto run = [](bool ignore_eos, int min_tokens, bool keep_stop = false) {
    Harness h(256, 4, 64);
    h.backend.eos_at_context = 10 + 3;  // the 4th output token would be eos
    GenerateRequest r = Req("x", 10, 8);
    r.ignore_eos = ignore_eos;
    r.min_tokens = min_tokens;
    r.include_stop_str_in_output = keep_stop;
    h.Add(r);
    h.RunToCompletion();
    return h.results["x"];
  };
  Result plain = run(false, 0);
  EXPECT_EQ(plain.final.finish_reason, FinishReason::kEos);
  ASSERT_EQ(plain.ids.size(), 4u);
  EXPECT_EQ(plain.ids.back(), kFakeEos);
  // The eos id ends token_ids; its text is left out, as a stop string's (the fake codec has no
  // special tokens: it would render "0,")...
  EXPECT_EQ(plain.text, absl::StrCat(plain.ids[0], ",", plain.ids[1], ",", plain.ids[2], ","));
  // ... unless include_stop_str_in_output.
  Result kept = run(false, 0, true);
  EXPECT_EQ(kept.ids, plain.ids);
  EXPECT_EQ(kept.text, absl::StrCat(plain.ids[0], ",", plain.ids[1], ",", plain.ids[2], ",", kFakeEos, ","));

  Result ignored = run(true, 0);
  EXPECT_EQ(ignored.final.finish_reason, FinishReason::kLength);
  ASSERT_EQ(ignored.ids.size(), 8u);
  EXPECT_EQ(ignored.ids[3], kFakeEos);

  Result min = run(false, 5);  // eos masked while fewer than 5 tokens exist
  EXPECT_NE(min.final.finish_reason, FinishReason::kEos);
  ASSERT_EQ(min.ids.size(), 8u);
  EXPECT_NE(min.ids[3], kFakeEos);
}

TEST(Scheduler, StopTokenIdsAndStopStringsOnStreamedText) {
  const std::vector<int32_t> ids = IdsAlone(Req("x", 12, 20));
  ASSERT_EQ(ids.size(), 20u);

  {
    Harness h(256, 4, 64);
    GenerateRequest r = Req("x", 12, 20);
    r.stop_token_ids = {ids[5]};
    h.Add(r);
    h.RunToCompletion();
    const Result& res = h.results["x"];
    EXPECT_EQ(res.final.finish_reason, FinishReason::kStop);
    EXPECT_EQ(res.final.stop_reason, absl::StrCat(ids[5]));
    // Stops at the first occurrence of that id.
    size_t first = 0;
    while (ids[first] != ids[5]) first++;
    EXPECT_EQ(res.ids.size(), first + 1);
    // The stop id's text is left out.
    std::string text;
    for (size_t i = 0; i < first; ++i) absl::StrAppend(&text, ids[i], ",");
    EXPECT_EQ(res.text, text);
  }
  {
    // A stop string spanning tokens 6 and 7: the tail of "<id6>," and the head of "<id7>,".
    const std::string stop = absl::StrCat(",", ids[7]);
    std::string full;
    for (int32_t id : ids) absl::StrAppend(&full, id, ",");
    const size_t at = full.find(stop);
    ASSERT_NE(at, std::string::npos);
    Harness h(256, 4, 64);
    GenerateRequest r = Req("x", 12, 20);
    r.stop_strings = {stop};
    h.Add(r);
    h.RunToCompletion();
    const Result& res = h.results["x"];
    EXPECT_EQ(res.final.finish_reason, FinishReason::kStop);
    EXPECT_EQ(res.final.stop_reason, stop);
    EXPECT_EQ(res.text, full.substr(0, at));
  }
}

// min_tokens turns matching on at the min_tokens-th token; a stop string that completes there is
// found even when it began in the tokens before, and no part of it reaches the text.
TEST(Scheduler, AStopStringCompletingAtMinTokensMatchesWhereItBegan) {
  const std::vector<int32_t> ids = IdsAlone(Req("x", 12, 20));
  ASSERT_EQ(ids.size(), 20u);
  // The tail "," of token 2's text and the head of token 3's: "<id2>,<id3>,".
  const std::string stop = absl::StrCat(",", ids[3]);
  std::string before;  // the text of tokens 0..2
  for (int i = 0; i < 3; ++i) absl::StrAppend(&before, ids[i], ",");
  ASSERT_EQ((before + absl::StrCat(ids[3], ",")).find(stop), before.size() - 1) << "the stop occurs earlier";
  Harness h(256, 4, 64);
  GenerateRequest r = Req("x", 12, 20);
  r.stop_strings = {stop};
  r.min_tokens = 4;  // matching starts with token 3
  h.Add(r);
  h.RunToCompletion();
  const Result& res = h.results["x"];
  EXPECT_EQ(res.final.finish_reason, FinishReason::kStop);
  EXPECT_EQ(res.final.stop_reason, stop);
  EXPECT_EQ(res.ids.size(), 4u);
  EXPECT_EQ(res.text, before.substr(0, before.size() - 1));
}

// The text flushed when a request ends (U+FFFD for a trailing incomplete UTF-8 character) is
// stop-matched like any other: a stop string in it ends the request as STOP and never reaches
// the client. Text held back as a possible stop prefix is still released when nothing matched.
// A request's text continues its prompt's (a SentencePiece token that begins it keeps its space):
// its detokenizer is primed with the prompt.
TEST(Scheduler, TheDetokenizerContinuesThePrompt) {
  Harness h(256, 4, 64);
  const GenerateRequest r = Req("x", 12, 6);
  h.Add(r);
  h.RunToCompletion();
  ASSERT_EQ(h.codec.prefixes.size(), 1u);
  EXPECT_EQ(h.codec.prefixes[0], r.prompt_ids);
  EXPECT_EQ(h.results["x"].ids.size(), 6u);
}

TEST(Scheduler, StopStringsCoverTheFinalFlush) {
  const std::string fffd = "\xEF\xBF\xBD";
  {
    Harness h(256, 4, 64);
    h.codec.flush = fffd;
    GenerateRequest r = Req("x", 12, 6);
    r.stop_strings = {fffd};
    h.Add(r);
    h.RunToCompletion();
    const Result& res = h.results["x"];
    EXPECT_EQ(res.text.find(fffd), std::string::npos) << res.text;
    EXPECT_EQ(res.final.finish_reason, FinishReason::kStop);
    EXPECT_EQ(res.final.stop_reason, fffd);
    EXPECT_EQ(res.ids.size(), 6u);
  }
  {
    // include_stop_str_in_output keeps it, as for a match inside the stream.
    Harness h(256, 4, 64);
    h.codec.flush = fffd;
    GenerateRequest r = Req("x", 12, 6);
    r.stop_strings = {fffd};
    r.include_stop_str_in_output = true;
    h.Add(r);
    h.RunToCompletion();
    const Result& res = h.results["x"];
    EXPECT_EQ(res.final.finish_reason, FinishReason::kStop);
    ASSERT_GE(res.text.size(), fffd.size());
    EXPECT_EQ(res.text.substr(res.text.size() - fffd.size()), fffd);
  }
  {
    // A request ending on a stop token id whose flush then completes a stop string: the text ends
    // at the string, and so does the stop reason.
    const std::vector<int32_t> alone = IdsAlone(Req("x", 12, 6));
    ASSERT_EQ(alone.size(), 6u);
    Harness h(256, 4, 64);
    h.codec.flush = "XY";
    GenerateRequest r = Req("x", 12, 6);
    r.stop_token_ids = {alone[2]};
    r.stop_strings = {"XY"};
    h.Add(r);
    h.RunToCompletion();
    const Result& res = h.results["x"];
    EXPECT_EQ(res.final.finish_reason, FinishReason::kStop);
    EXPECT_EQ(res.final.stop_reason, "XY");
    EXPECT_EQ(res.text.find("XY"), std::string::npos) << res.text;
  }
  {
    // A stop string that the flush only begins: everything is released, finish LENGTH.
    Harness h(256, 4, 64);
    h.codec.flush = "XY";
    GenerateRequest r = Req("x", 12, 6);
    r.stop_strings = {"XYZ"};
    h.Add(r);
    h.RunToCompletion();
    const Result& res = h.results["x"];
    EXPECT_EQ(res.final.finish_reason, FinishReason::kLength);
    ASSERT_GE(res.text.size(), 2u);
    EXPECT_EQ(res.text.substr(res.text.size() - 2), "XY");
  }
}

TEST(Scheduler, FinishFreesBlocksAtOnceAndDeliversOneFinalEvent) {
  Harness h(256, 4, 64);
  h.Add(Req("a", 30, 100));
  h.Add(Req("b", 30, 100));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(h.sched->Step(absl::Now()).ok());
  const int used = h.kv.num_used();
  EXPECT_GT(used, 0);
  EXPECT_TRUE(h.sched->Finish("a", FinishReason::kCancelled, absl::CancelledError("aborted")));
  EXPECT_LT(h.kv.num_used(), used);
  EXPECT_FALSE(h.sched->Finish("a", FinishReason::kCancelled, absl::CancelledError("again")));
  EXPECT_EQ(h.results["a"].final.finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(h.results["a"].final.status.code(), absl::StatusCode::kCancelled);
  // A deadline in the past ends b at the next step.
  GenerateRequest late = Req("c", 5, 5);
  late.deadline = absl::Now() - absl::Seconds(1);
  h.Add(late);
  ASSERT_TRUE(h.sched->Step(absl::Now()).ok());
  EXPECT_EQ(h.results["c"].final.finish_reason, FinishReason::kDeadline);
  EXPECT_EQ(h.results["c"].final.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(h.results["c"].ids.empty());
  // A cancel that arrives once the deadline has passed (gRPC cancels the call at its deadline)
  // counts as a deadline; one before it as a cancellation.
  GenerateRequest d = Req("d", 5, 50);
  const absl::Time start = absl::Now();
  d.deadline = start + absl::Seconds(30);
  h.Add(d);
  EXPECT_TRUE(h.sched->Cancel("d", start + absl::Seconds(31)));
  EXPECT_EQ(h.results["d"].final.finish_reason, FinishReason::kDeadline);
  GenerateRequest e = Req("e", 5, 50);
  e.deadline = start + absl::Seconds(30);
  h.Add(e);
  EXPECT_TRUE(h.sched->Cancel("e", start));
  EXPECT_EQ(h.results["e"].final.finish_reason, FinishReason::kCancelled);
  EXPECT_FALSE(h.sched->Cancel("e", start));
  h.sched->FinishAll(FinishReason::kCancelled, absl::UnavailableError("shutdown"));
  EXPECT_EQ(h.kv.num_used(), 0);
  EXPECT_FALSE(h.sched->HasWork());
}

// FinishReport::aborted (sbserve_request_aborts_total) marks the requests that an Abort RPC ended,
// past their deadline too; not a client's cancel, and not a request that ended by itself.
TEST(Scheduler, OnlyTheRequestsAnAbortRpcEndsAreReportedAborted) {
  struct Finishes : EngineObserver {
    std::map<std::string, FinishReport> by_id;
    void OnFinish(const FinishReport& r) override { by_id[r.request_id] = r; }
  } seen;
  Harness h(256, 4, 64, 64, &seen);
  const absl::Time start = absl::Now();
  for (const char* id : {"rpc", "client", "natural", "late"}) {
    GenerateRequest r = Req(id, 5, 30);
    r.deadline = start + absl::Seconds(30);
    h.Add(r);
  }
  ASSERT_TRUE(h.sched->Step(absl::Now()).ok());
  EXPECT_TRUE(h.sched->Cancel("rpc", start, CancelSource::kAbortRpc));
  EXPECT_TRUE(h.sched->Cancel("client", start, CancelSource::kClient));
  EXPECT_TRUE(h.sched->Cancel("late", start + absl::Seconds(31), CancelSource::kAbortRpc));
  h.RunToCompletion();
  EXPECT_FALSE(h.sched->Cancel("natural", absl::Now(), CancelSource::kAbortRpc));  // already ended
  ASSERT_EQ(seen.by_id.size(), 4u);
  EXPECT_TRUE(seen.by_id["rpc"].aborted);
  EXPECT_EQ(seen.by_id["rpc"].reason, FinishReason::kCancelled);
  EXPECT_FALSE(seen.by_id["client"].aborted);
  EXPECT_EQ(seen.by_id["client"].reason, FinishReason::kCancelled);
  EXPECT_TRUE(seen.by_id["late"].aborted);
  EXPECT_EQ(seen.by_id["late"].reason, FinishReason::kDeadline);
  EXPECT_FALSE(seen.by_id["natural"].aborted);
  EXPECT_EQ(seen.by_id["natural"].reason, FinishReason::kLength);
}

// The gauges (OnStep / OnState) end true when requests end outside a step's report: the requests
// of a failed step, and a deadline that ends the last request while a step is in flight (its
// collection reports the request still running). Nothing else runs afterwards to correct them.
TEST(Scheduler, GaugesEndTrueAfterAFailedStepAndAfterADeadlineMidFlight) {
  struct Gauges : EngineObserver {
    QueueState last;
    void OnStep(const StepReport& r) override {
      last.running = r.running;
      last.kv_blocks_used = r.kv_blocks_used;
    }
    void OnState(const QueueState& s) override { last = s; }
  };
  for (bool overlap : {false, true}) {
    SCOPED_TRACE(overlap ? "overlapped steps" : "in order");
    Gauges g;
    Harness h(256, 4, 64, 64, &g, overlap);
    h.Add(Req("a", 10, 20));
    h.Add(Req("b", 10, 20));
    ASSERT_TRUE(h.sched->Step(absl::Now()).ok());
    ASSERT_TRUE(h.sched->Step(absl::Now()).ok());
    EXPECT_EQ(g.last.running, 2);
    h.backend.fail_next = true;
    EXPECT_FALSE(h.sched->Step(absl::Now()).ok() && h.sched->Settle().ok());
    EXPECT_FALSE(h.sched->HasWork());
    EXPECT_EQ(h.kv.num_used(), 0);
    EXPECT_EQ(g.last.running, 0);
    EXPECT_EQ(g.last.kv_blocks_used, 0);

    const absl::Time start = absl::Now();
    GenerateRequest r = Req("c", 10, 400);
    r.deadline = start + absl::Seconds(10);
    h.Add(r);
    ASSERT_TRUE(h.sched->Step(start).ok());
    ASSERT_TRUE(h.sched->Step(start).ok());
    EXPECT_EQ(g.last.running, 1);
    ASSERT_TRUE(h.sched->Step(start + absl::Seconds(11)).ok());
    EXPECT_EQ(h.results["c"].final.finish_reason, FinishReason::kDeadline);
    EXPECT_FALSE(h.sched->HasWork());
    EXPECT_EQ(g.last.running, 0);
    EXPECT_EQ(g.last.kv_blocks_used, 0);
  }
}

// With overlapped steps, a sequence whose draw in flight ends it can still give up its blocks to
// an older one; it then finishes as in an in-order run, with no preemption counted. Four blocks of
// 4: "a" and "b" (8-token prompts) fill them; in the next step "a" needs a fifth block while b's
// only token is still in flight.
TEST(Scheduler, ASequenceThatEndsWithItsStepInFlightCountsNoPreemption) {
  for (bool overlap : {false, true}) {
    SCOPED_TRACE(overlap ? "overlapped steps" : "in order");
    Harness h(4, 4, 64, 64, nullptr, overlap);
    h.Add(Req("a", 8, 6));
    h.Add(Req("b", 8, 1));
    h.RunToCompletion();
    EXPECT_EQ(h.results["a"].final.finish_reason, FinishReason::kLength);
    EXPECT_EQ(h.results["b"].final.finish_reason, FinishReason::kLength);
    EXPECT_EQ(h.results["b"].ids.size(), 1u);
    EXPECT_EQ(h.results["b"].final.timings.preemptions, 0);
    EXPECT_EQ(h.sched->preemptions(), 0);
    EXPECT_EQ(h.kv.num_used(), 0);
  }
}

TEST(Scheduler, ABackendFailureFailsThatStepsRequestsOnly) {
  Harness h(256, 4, 64);
  h.Add(Req("a", 10, 20));
  h.Add(Req("b", 10, 20));
  ASSERT_TRUE(h.sched->Step(absl::Now()).ok());
  h.backend.fail_next = true;
  EXPECT_FALSE(h.sched->Step(absl::Now()).ok());
  for (const char* id : {"a", "b"}) {
    EXPECT_EQ(h.results[id].final.finish_reason, FinishReason::kError) << id;
    EXPECT_EQ(h.results[id].final.status.code(), absl::StatusCode::kInternal) << id;
  }
  EXPECT_EQ(h.kv.num_used(), 0);
  EXPECT_FALSE(h.sched->HasWork());
  h.Add(Req("c", 10, 5));
  h.RunToCompletion();
  EXPECT_EQ(h.results["c"].ids.size(), 5u);
  EXPECT_EQ(h.results["c"].final.finish_reason, FinishReason::kLength);
}

TEST(Scheduler, LogprobsAreNormalisedAndMatchTheSampledToken) {
  Harness h(256, 4, 64);
  GenerateRequest r = Req("x", 8, 6);
  r.logprobs = 5;
  h.Add(r);
  h.RunToCompletion();
  const Result& res = h.results["x"];
  ASSERT_EQ(res.ids.size(), 6u);
  ASSERT_EQ(res.logprobs.size(), 6u);
  for (size_t i = 0; i < res.ids.size(); ++i) {
    const StepLogprobs& lp = res.logprobs[i];
    EXPECT_EQ(lp.token_id, res.ids[i]);
    ASSERT_EQ(lp.top.size(), 5u);
    double mass = 0;
    for (size_t k = 0; k < lp.top.size(); ++k) {
      EXPECT_LE(lp.top[k].logprob, 0.0f);
      if (k > 0) EXPECT_LE(lp.top[k].logprob, lp.top[k - 1].logprob);
      mass += std::exp(lp.top[k].logprob);
    }
    EXPECT_LE(mass, 1.0 + 1e-5);
    // Greedy: the sampled token is the most likely one.
    EXPECT_EQ(lp.top[0].id, lp.token_id);
    EXPECT_FLOAT_EQ(lp.top[0].logprob, lp.logprob);
  }
}

// Prompt logprobs: one entry per prompt token after the first, all in the first event, each the
// logprob of that token under the logits of the position before it. Checked against another path:
// a request whose prompt is the tokens before it, its first draw forced to that token by a +100
// logit bias, reports that token's raw logprob. No step holds more than 256 prompt rows. Chunked
// next to other requests, in a pool that preempts it, with its prompt in the prefix cache (which
// it must not use: those positions' logits were never computed), the entries are the same.
TEST(Scheduler, PromptLogprobsScoreEachPromptTokenGivenTheTokensBeforeIt) {
  GenerateRequest base = Req("p", 500, 3);
  base.prompt_logprobs = 4;
  Harness big(1024, 4, 1024);
  big.Add(base);
  big.RunToCompletion();
  const Result ref = big.results["p"];
  ASSERT_EQ(ref.prompt_logprobs.size(), 499u);
  EXPECT_EQ(ref.prompt_logprob_events, 1);
  EXPECT_EQ(ref.ids.size(), 3u);
  EXPECT_EQ(big.backend.batches.size(), 2u + 2u);  // 499 rows at most 256 a step, then two decodes
  for (const Batch& b : big.backend.batches) {
    CheckBatchShape(b, 1024);
    EXPECT_LE(b.logit_rows.size(), 256u + b.num_seqs());
  }
  for (size_t t = 1; t < 500; ++t) {
    const StepLogprobs& lp = ref.prompt_logprobs[t - 1];
    ASSERT_EQ(lp.token_id, base.prompt_ids[t]) << t;
    ASSERT_EQ(lp.top.size(), 4u);
    EXPECT_LE(lp.logprob, lp.top[0].logprob) << t;
    for (size_t k = 1; k < lp.top.size(); ++k) EXPECT_LE(lp.top[k].logprob, lp.top[k - 1].logprob);
  }
  // Its blocks were published: the same prompt without scoring finds all but its last block cached.
  const uint64_t hits_before = big.sched->prefix_cache_hits();
  GenerateRequest plain = base;
  plain.request_id = "plain";
  plain.prompt_logprobs = -1;
  big.Add(plain);
  big.RunToCompletion();
  EXPECT_EQ(big.sched->prefix_cache_hits() - hits_before, 496u);  // 124 full blocks of 4 before token 499
  EXPECT_EQ(big.results["plain"].ids, ref.ids);
  for (int t : {1, 2, 37, 255, 256, 257, 499}) {
    Harness h(1024, 4, 64);
    GenerateRequest r = Req("q", 1, 1);
    r.prompt_ids.assign(base.prompt_ids.begin(), base.prompt_ids.begin() + t);
    r.logprobs = 0;
    r.sampling.logit_bias = {{base.prompt_ids[t], 100.f}};
    h.Add(r);
    h.RunToCompletion();
    ASSERT_EQ(h.results["q"].ids, std::vector<int32_t>{base.prompt_ids[t]}) << t;
    EXPECT_EQ(h.results["q"].logprobs[0].logprob, ref.prompt_logprobs[t - 1].logprob) << t;
  }

  // Its prompt cached by an earlier request; chunks of 16 tokens; three older requests in a pool
  // of 150 blocks of 4 (the four need about 200): the youngest, it is preempted.
  Harness h(/*num_blocks=*/150, 4, /*max_batch_tokens=*/16);
  GenerateRequest warm = base;
  warm.request_id = "warm";
  warm.prompt_logprobs = -1;
  h.Add(warm);
  h.RunToCompletion();
  for (int i = 0; i < 3; ++i) h.Add(Req(absl::StrCat("o", i), 60, 40, static_cast<uint64_t>(i), 0.7f));
  h.Add(base);
  h.RunToCompletion();
  const Result& got = h.results["p"];
  EXPECT_GT(got.final.timings.preemptions, 0) << "the test wants the request preempted";
  EXPECT_EQ(got.prompt_logprob_events, 1);
  EXPECT_EQ(got.ids, ref.ids);
  ASSERT_EQ(got.prompt_logprobs.size(), ref.prompt_logprobs.size());
  for (size_t i = 0; i < ref.prompt_logprobs.size(); ++i) {
    EXPECT_EQ(got.prompt_logprobs[i].token_id, ref.prompt_logprobs[i].token_id);
    EXPECT_EQ(got.prompt_logprobs[i].logprob, ref.prompt_logprobs[i].logprob) << i;
    EXPECT_EQ(got.prompt_logprobs[i].top.size(), 4u);
  }
  // Every logit row was either a draw (each drawn token is some request's) or one of the 499 prompt
  // rows: no prompt position was scored twice, though it was recomputed after the preemption.
  size_t rows = 0, drawn = 0;
  for (const Batch& b : h.backend.batches) rows += b.logit_rows.size();
  for (const auto& [id, r] : h.results) drawn += r.ids.size();
  EXPECT_EQ(rows, drawn + 499);
  EXPECT_EQ(h.kv.num_used(), 0);
}

// Waiting requests start by (priority, arrival): lower priority numbers first, ties in arrival
// order. One sequence at a time, so the finishing order is the starting order.
TEST(Scheduler, WaitingRequestsStartByPriorityThenArrival) {
  Harness h(256, 4, 64, /*max_num_seqs=*/1);
  auto req = [](const std::string& id, int32_t priority) {
    GenerateRequest r = Req(id, 6, 3);
    r.priority = priority;
    return r;
  };
  h.Add(req("running", 9));
  ASSERT_TRUE(h.sched->Step(absl::Now()).ok());
  ASSERT_EQ(h.sched->num_running(), 1);
  // Arrival order: the later, lower-numbered requests must overtake the earlier ones.
  h.Add(req("p5-first", 5));
  h.Add(req("p5-second", 5));
  h.Add(req("p1-first", 1));
  h.Add(req("p1-second", 1));
  h.Add(req("p0", 0));
  h.Add(req("p-3", -3));
  h.Add(req("p1-third", 1));
  EXPECT_EQ(h.sched->num_waiting(), 7);
  h.RunToCompletion();
  EXPECT_EQ(h.finished, (std::vector<std::string>{"running", "p-3", "p0", "p1-first", "p1-second", "p1-third",
                                                  "p5-first", "p5-second"}));
  for (const auto& [id, res] : h.results) EXPECT_EQ(res.ids.size(), 3u) << id;
}

// Logprobs are the log-softmax of the raw logit row, before penalties and temperature (README,
// GenerateRequest.logprobs), even when the draw itself uses T = 0.5 and penalties.
TEST(Scheduler, LogprobsAreUnderTheRawDistributionDespitePenaltiesAndTemperature) {
  Harness h(256, 4, 64);
  h.backend.record_rows = true;
  GenerateRequest r = Req("x", 8, 12, /*seed=*/5, /*temp=*/0.5f);
  r.sampling.repetition_penalty = 1.3f;
  r.sampling.frequency_penalty = 0.5f;
  r.logprobs = 10;
  const std::vector<int32_t> prompt = r.prompt_ids;
  h.Add(r);
  h.RunToCompletion();
  const Result& res = h.results["x"];
  ASSERT_EQ(res.ids.size(), 12u);
  ASSERT_EQ(res.logprobs.size(), 12u);
  ASSERT_EQ(h.backend.rows.size(), 12u);
  auto log_softmax = [](const std::vector<double>& l) {
    const double mx = *std::max_element(l.begin(), l.end());
    double z = 0;
    for (double x : l) z += std::exp(x - mx);
    std::vector<double> out(l.size());
    for (size_t i = 0; i < l.size(); ++i) out[i] = l[i] - mx - std::log(z);
    return out;
  };
  std::map<int32_t, int> counts;
  double max_shift = 0;  // how far the penalised, tempered logprobs are from the raw ones
  for (size_t i = 0; i < res.ids.size(); ++i) {
    SCOPED_TRACE(i);
    const std::vector<float>& row = h.backend.rows[i];
    const std::vector<double> raw = log_softmax(std::vector<double>(row.begin(), row.end()));
    const StepLogprobs& lp = res.logprobs[i];
    EXPECT_EQ(lp.token_id, res.ids[i]);
    EXPECT_NEAR(lp.logprob, raw[res.ids[i]], 1e-5);
    std::vector<int32_t> order(raw.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
    ASSERT_EQ(lp.top.size(), 10u);
    for (size_t k = 0; k < lp.top.size(); ++k) {
      EXPECT_EQ(lp.top[k].id, order[k]) << "rank " << k;
      EXPECT_NEAR(lp.top[k].logprob, raw[order[k]], 1e-5) << "rank " << k;
    }
    // The other reading (after penalties and temperature), which this request tells apart.
    std::vector<double> pen(row.begin(), row.end());
    for (int32_t t = 0; t < kFakeVocab; ++t) {
      const bool seen = counts.count(t) > 0 || std::find(prompt.begin(), prompt.end(), t) != prompt.end();
      if (seen) pen[t] = pen[t] > 0 ? pen[t] / 1.3 : pen[t] * 1.3;
      if (counts.count(t)) pen[t] -= 0.5 * counts[t];
      pen[t] /= 0.5;
    }
    const std::vector<double> after = log_softmax(pen);
    max_shift = std::max(max_shift, std::fabs(after[res.ids[i]] - raw[res.ids[i]]));
    counts[res.ids[i]]++;
  }
  EXPECT_GT(max_shift, 0.5) << "the request does not tell raw from penalised logprobs apart";
}

}  // namespace
}  // namespace sbserve
