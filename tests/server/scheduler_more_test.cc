// More scheduler cases against the fake backend: who is preempted and where it queues again,
// the context length, stop token ids before min_tokens, include_stop_str_in_output, the step
// report and the queue time. Each kills a mutant of tests/mutants/ that scheduler_test.cc lets
// through.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/scheduler.h"
#include "gtest/gtest.h"
#include "tests/server/fake_backend.h"

namespace sbserve {
namespace {

struct Reports : EngineObserver {
  void OnStep(const StepReport& r) override { steps.push_back(r); }
  std::vector<StepReport> steps;
};

struct Out {
  std::vector<int32_t> ids;
  std::string text;
  GenerateEvent final;
};

struct Rig {
  Rig(int num_blocks, int block_size, int max_batch_tokens, int64_t context_len = 512) : kv(num_blocks, block_size) {
    EXPECT_TRUE(backend.InitKvCache({num_blocks, block_size}).ok());
    SchedulerOptions o;
    o.max_batch_tokens = max_batch_tokens;
    o.context_len = context_len;
    o.eos_ids = {kFakeEos};
    o.sampling_threads = 1;
    sched = std::make_unique<Scheduler>(o, &backend, &kv, &codec, &reports,
                                        [this](const std::string& id) { finished.push_back(id); });
  }
  void Add(GenerateRequest r, absl::Time arrival = absl::Now()) {
    const std::string id = r.request_id;
    sched->Add(std::move(r), [this, id](GenerateEvent e) {
      Out& o = out[id];
      o.ids.insert(o.ids.end(), e.token_ids.begin(), e.token_ids.end());
      o.text += e.text;
      if (e.finished) o.final = std::move(e);
    }, arrival);
  }
  void Run() {
    for (int i = 0; i < 10000 && sched->HasWork(); ++i) ASSERT_TRUE(sched->Step(absl::Now()).ok());
    ASSERT_FALSE(sched->HasWork());
  }
  FakeBackend backend;
  FakeCommaCodec codec;
  Reports reports;
  KvBlockAllocator kv;
  std::unique_ptr<Scheduler> sched;
  std::map<std::string, Out> out;
  std::vector<std::string> finished;
};

GenerateRequest Greedy(const std::string& id, int prompt_len, int max_tokens) {
  GenerateRequest r;
  r.request_id = id;
  for (int i = 0; i < prompt_len; ++i) r.prompt_ids.push_back(1 + (i * 7 + static_cast<int>(id[0])) % (kFakeVocab - 1));
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0.f;
  r.ignore_eos = true;
  return r;
}

// 8 blocks of 4 tokens, one step per second. A and B (12-token prompts) start; C (12 tokens)
// finds 2 free blocks and waits. At 16 tokens A and B fill the pool; A's next block preempts B,
// the youngest, at step 6. B arrived before C, so it queues again ahead of C, and C (which would
// fit into the 3 free blocks) waits behind B until A has finished at step 20.
TEST(SchedulerMore, PreemptsTheYoungestAndRequeuesItAheadOfLaterArrivals) {
  Rig rig(/*num_blocks=*/8, /*block_size=*/4, /*max_batch_tokens=*/64);
  const absl::Time t0 = absl::Now();
  for (const char* id : {"A", "B", "C"}) rig.Add(Greedy(id, 12, 20), t0);
  for (int i = 1; i <= 1000 && rig.sched->HasWork(); ++i) ASSERT_TRUE(rig.sched->Step(t0 + absl::Seconds(i)).ok());
  ASSERT_FALSE(rig.sched->HasWork());
  EXPECT_EQ(rig.out["A"].final.timings.preemptions, 0) << "the oldest request is never the victim";
  EXPECT_GT(rig.out["B"].final.timings.preemptions, 0);
  EXPECT_EQ(rig.out["A"].final.timings.queued, absl::Seconds(1));
  EXPECT_EQ(rig.out["B"].final.timings.queued, absl::Seconds(1));
  EXPECT_GT(rig.out["C"].final.timings.queued, absl::Seconds(20)) << "C jumped ahead of the preempted B";
  EXPECT_EQ(rig.finished, (std::vector<std::string>{"A", "B", "C"}));
  for (const char* id : {"A", "B", "C"}) EXPECT_EQ(rig.out[id].ids.size(), 20u) << id;
  EXPECT_EQ(rig.kv.num_used(), 0);
}

TEST(SchedulerMore, ContextLengthEndsTheSequence) {
  Rig rig(64, 4, 64, /*context_len=*/20);
  rig.Add(Greedy("x", 10, 50));
  rig.Run();
  EXPECT_EQ(rig.out["x"].final.finish_reason, FinishReason::kLength);
  EXPECT_EQ(rig.out["x"].ids.size(), 10u) << "10 prompt + 10 generated fill the context of 20";
}

TEST(SchedulerMore, StopTokenIdsAreMaskedBeforeMinTokens) {
  auto run = [](int min_tokens) {
    Rig rig(64, 4, 64);
    rig.backend.eos_at_context = 11;  // token 0 wins the 2nd output step by a mile
    GenerateRequest r = Greedy("x", 10, 8);
    r.stop_token_ids = {kFakeEos};  // ignore_eos is set: token 0 stops only as a stop id
    r.min_tokens = min_tokens;
    rig.Add(r);
    rig.Run();
    return rig.out["x"];
  };
  Out plain = run(0);
  EXPECT_EQ(plain.final.finish_reason, FinishReason::kStop);
  ASSERT_EQ(plain.ids.size(), 2u);
  EXPECT_EQ(plain.ids[1], kFakeEos);
  Out masked = run(5);
  EXPECT_EQ(masked.final.finish_reason, FinishReason::kLength);
  ASSERT_EQ(masked.ids.size(), 8u);
  EXPECT_NE(masked.ids[1], kFakeEos);
}

TEST(SchedulerMore, IncludeStopStrInOutput) {
  for (bool include : {false, true}) {
    Rig rig(64, 4, 64);
    GenerateRequest r = Greedy("x", 5, 8);
    r.stop_strings = {","};  // the first token's text "<id>," ends in it
    r.include_stop_str_in_output = include;
    rig.Add(r);
    rig.Run();
    const Out& o = rig.out["x"];
    ASSERT_EQ(o.ids.size(), 1u);
    EXPECT_EQ(o.final.finish_reason, FinishReason::kStop);
    EXPECT_EQ(o.text, absl::StrCat(o.ids[0], include ? "," : "")) << include;
  }
}

TEST(SchedulerMore, AOneTokenPromptIsPrefillInTheStepReport) {
  Rig rig(64, 4, 64);
  rig.Add(Greedy("x", 1, 3));
  rig.Run();
  ASSERT_EQ(rig.reports.steps.size(), 3u);
  EXPECT_EQ(rig.reports.steps[0].prefill_tokens, 1);
  EXPECT_EQ(rig.reports.steps[0].decode_tokens, 0);
  EXPECT_EQ(rig.reports.steps[1].prefill_tokens, 0);
  EXPECT_EQ(rig.reports.steps[1].decode_tokens, 1);
}

// Steps at arrival + 1 s, + 2 s, ...: the queue time is the first, whatever follows.
TEST(SchedulerMore, QueueTimeEndsAtTheFirstScheduling) {
  Rig rig(64, 4, 64);
  const absl::Time t0 = absl::Now();
  rig.Add(Greedy("x", 4, 5), t0);
  for (int i = 1; i <= 20 && rig.sched->HasWork(); ++i) ASSERT_TRUE(rig.sched->Step(t0 + absl::Seconds(i)).ok());
  ASSERT_FALSE(rig.sched->HasWork());
  EXPECT_EQ(rig.out["x"].final.timings.queued, absl::Seconds(1));
}

// Whoever learns that a request ended (on_finished, its final event) already sees the step that
// ended it in the step reports: a client that scrapes the metrics right after its last token must
// find that step counted.
TEST(SchedulerMore, ARequestEndsAfterTheReportOfItsLastStep) {
  Rig rig(64, 4, 64);
  std::map<std::string, size_t> steps_seen_at_final, steps_seen_at_finished;
  size_t steps_run = 0;
  std::map<std::string, size_t> last_step;
  rig.sched = std::make_unique<Scheduler>(
      SchedulerOptions{.max_batch_tokens = 64, .context_len = 512, .eos_ids = {kFakeEos}, .sampling_threads = 1},
      &rig.backend, &rig.kv, &rig.codec, &rig.reports,
      [&](const std::string& id) { steps_seen_at_finished[id] = rig.reports.steps.size(); });
  for (auto [id, n] : {std::pair<const char*, int>{"short", 2}, {"long", 6}}) {
    const std::string name = id;
    rig.sched->Add(Greedy(name, 5, n), [&, name](GenerateEvent e) {
      if (e.finished) steps_seen_at_final[name] = rig.reports.steps.size();
    }, absl::Now());
  }
  while (rig.sched->HasWork()) {
    ASSERT_TRUE(rig.sched->Step(absl::Now()).ok());
    ++steps_run;
    for (const char* id : {"short", "long"}) {
      if (steps_seen_at_final.count(id) && !last_step.count(id)) last_step[id] = steps_run;
    }
  }
  ASSERT_EQ(last_step.size(), 2u);
  for (const char* id : {"short", "long"}) {
    EXPECT_EQ(steps_seen_at_final[id], last_step[id]) << id << ": final event before its step's report";
    EXPECT_EQ(steps_seen_at_finished[id], last_step[id]) << id << ": on_finished before its step's report";
  }
  EXPECT_LT(last_step["short"], last_step["long"]);
}

}  // namespace
}  // namespace sbserve
