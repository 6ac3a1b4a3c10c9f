// Overlapped steps (SchedulerOptions::overlap_steps) against the fake backend, whose logits depend
// on the keys it reads back from the paged cache: every request's stream (ids, text, logprobs,
// finish reason) must be exactly what it is without overlap, under eos, stop ids before min_tokens,
// stop strings, max_tokens, the context length, penalties, seeded draws, preemption, prefix caching,
// cancels and a failing step. Each case runs on two backends: the fake as it is (the scheduler runs
// each launch at once) and a fake that really holds two launched steps and feeds the pending tokens
// itself (the path a CUDA backend takes).
#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "gtest/gtest.h"
#include "tests/server/fake_backend.h"

namespace sbserve {
namespace {

// The fake backend behind the overlap protocol: LaunchStep runs the step at once on the tokens
// fed from the previous launch's draws, CollectStep hands results out in launch order. It checks
// the protocol: at most two launched steps outstanding, feeds only from the step launched last.
class OverlappingFake : public FakeBackend {
 public:
  bool overlaps_steps() const override { return true; }
  absl::Status LaunchStep(const Batch& batch, const SamplingBatch& sampling, std::span<const TokenFeed> feed) override {
    if (queue_.size() >= 2) return absl::InternalError("a third step launched before the first was collected");
    Batch b = batch;
    for (const TokenFeed& f : feed) {
      if (!has_last_) return absl::InternalError("a feed with no launch before it");
      if (!last_ok_) {  // the device would read whatever is there; its rows are dropped
        b.tokens[f.token_index] = 0;
        continue;
      }
      if (f.from_row < 0 || f.from_row >= static_cast<int>(last_.size())) {
        return absl::InternalError("feed from a row the previous launch does not have");
      }
      b.tokens[f.token_index] = last_[f.from_row];
    }
    fed_tokens += static_cast<int>(feed.size());
    if (!queue_.empty()) launched_while_one_outstanding++;
    Result r;
    const int64_t V = config().vocab_size;
    std::vector<float> logits(b.logit_rows.size() * V);
    r.status = Forward(b, logits);
    // The step ran (its K/V are written) and then failed, as a device error shows up at the end.
    if (--fail_in == 0) r.status = absl::InternalError("injected: the step failed on the device");
    if (r.status.ok()) DrawRows(sampling, logits, V, &r.out);
    has_last_ = true;
    last_ok_ = r.status.ok();
    last_ = r.out.tokens;
    queue_.push_back(std::move(r));
    return absl::OkStatus();
  }
  absl::Status CollectStep(SampledRows* out) override {
    if (queue_.empty()) return absl::InternalError("collect without a launched step");
    Result r = std::move(queue_.front());
    queue_.pop_front();
    *out = std::move(r.out);
    return r.status;
  }
  int fed_tokens = 0;
  int launched_while_one_outstanding = 0;
  int fail_in = -1;  // the n-th launch (1-based) fails when collected

 private:
  struct Result {
    absl::Status status;
    SampledRows out;
  };
  std::deque<Result> queue_;
  bool has_last_ = false;
  bool last_ok_ = false;
  std::vector<int32_t> last_;
};

struct Out {
  std::vector<int32_t> ids;
  std::string text;
  std::vector<StepLogprobs> logprobs;
  std::vector<StepLogprobs> prompt_logprobs;
  GenerateEvent final;
  static bool Same(const std::vector<StepLogprobs>& x, const std::vector<StepLogprobs>& y) {
    if (x.size() != y.size()) return false;
    for (size_t i = 0; i < x.size(); ++i) {
      const StepLogprobs& a = x[i];
      const StepLogprobs& b = y[i];
      if (a.token_id != b.token_id || a.logprob != b.logprob || a.top.size() != b.top.size()) return false;
      for (size_t j = 0; j < a.top.size(); ++j) {
        if (a.top[j].id != b.top[j].id || a.top[j].logprob != b.top[j].logprob) return false;
      }
    }
    return true;
  }
  bool operator==(const Out& o) const {
    if (ids != o.ids || text != o.text || !Same(logprobs, o.logprobs) || !Same(prompt_logprobs, o.prompt_logprobs)) {
      return false;
    }
    return final.finish_reason == o.final.finish_reason && final.status.code() == o.final.status.code() &&
           final.stop_reason == o.final.stop_reason && final.completion_tokens == o.final.completion_tokens &&
           final.prompt_tokens == o.final.prompt_tokens;
  }
};

enum class Mode { kInOrder, kOverlapAtOnce, kOverlapDevice };
const char* Name(Mode m) {
  return m == Mode::kInOrder ? "in order" : m == Mode::kOverlapAtOnce ? "overlap, run at launch" : "overlap, device fake";
}

struct Rig {
  Rig(Mode mode, int num_blocks, int block_size, int max_batch_tokens, int max_num_seqs = 64, int64_t context_len = 512)
      : kv(num_blocks, block_size) {
    backend = mode == Mode::kOverlapDevice ? std::make_unique<OverlappingFake>() : std::make_unique<FakeBackend>();
    EXPECT_TRUE(backend->InitKvCache({num_blocks, block_size}).ok());
    SchedulerOptions o;
    o.max_batch_tokens = max_batch_tokens;
    o.max_num_seqs = max_num_seqs;
    o.context_len = context_len;
    o.eos_ids = {kFakeEos};
    o.sampling_threads = 1;
    o.overlap_steps = mode != Mode::kInOrder;
    sched = std::make_unique<Scheduler>(o, backend.get(), &kv, &codec, nullptr,
                                        [this](const std::string& id) { finished.push_back(id); });
  }
  void Add(GenerateRequest r) {
    const std::string id = r.request_id;
    sched->Add(std::move(r), [this, id](GenerateEvent e) {
      Out& o = out[id];
      EXPECT_FALSE(o.final.finished) << id << ": an event after the final one";
      o.ids.insert(o.ids.end(), e.token_ids.begin(), e.token_ids.end());
      o.text += e.text;
      o.logprobs.insert(o.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
      o.prompt_logprobs.insert(o.prompt_logprobs.end(), e.prompt_logprobs.begin(), e.prompt_logprobs.end());
      if (e.finished) o.final = std::move(e);
    }, absl::Now());
  }
  // Runs every step; before step i, `before(i)` may add or cancel requests. A cancel is applied as
  // the engine applies it: after Settle.
  void Run(const std::function<void(int)>& before = {}) {
    for (int i = 0; i < 20000 && (sched->HasWork() || i < 64); ++i) {
      if (before) before(i);
      const absl::Status st = sched->Step(absl::Now());
      if (!st.ok()) {
        failures++;
        errors.push_back(st.ToString());
      }
    }
    ASSERT_FALSE(sched->HasWork());
  }
  void Cancel(const std::string& id) {
    if (!sched->Settle().ok()) failures++;
    sched->Cancel(id, absl::Now());
  }
  std::unique_ptr<FakeBackend> backend;
  FakeCommaCodec codec;
  KvBlockAllocator kv;
  std::unique_ptr<Scheduler> sched;
  std::map<std::string, Out> out;
  std::vector<std::string> finished;
  int failures = 0;
  std::vector<std::string> errors;
};

GenerateRequest Req(const std::string& id, int prompt_len, int max_tokens, uint64_t salt) {
  GenerateRequest r;
  r.request_id = id;
  std::mt19937 rng(static_cast<uint32_t>(prompt_len * 131 + salt));
  for (int i = 0; i < prompt_len; ++i) r.prompt_ids.push_back(1 + static_cast<int32_t>(rng() % (kFakeVocab - 1)));
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  r.sampling.temperature = 0.8f;
  r.sampling.seed = salt;
  r.sampling.has_seed = true;
  return r;
}

// A mix of what clients ask for; i picks the variant.
GenerateRequest Mixed(int i) {
  GenerateRequest r = Req(absl::StrCat("r", i), 3 + (i * 11) % 40, 4 + (i * 7) % 25, static_cast<uint64_t>(i));
  r.sampling.seed = 1000 + i;
  r.sampling.has_seed = true;
  switch (i % 6) {
    case 0:  // greedy
      break;
    case 1:  // seeded, filtered, with logprobs
      r.sampling.temperature = 0.9f;
      r.sampling.top_p = 0.8f;
      r.sampling.top_k = 20;
      r.logprobs = 3;
      break;
    case 2:  // eos may end it (the fake puts eos on top at some contexts)
      r.ignore_eos = false;
      r.sampling.temperature = 1.0f;
      break;
    case 3:  // stop ids, held off by min_tokens
      r.sampling.temperature = 1.2f;
      r.stop_token_ids = {5, 9, 17, 33};
      r.min_tokens = 3;
      break;
    case 4:  // stop strings ("<id>," text), with the stop text kept
      r.sampling.temperature = 1.0f;
      r.stop_strings = {"7,", "12,1"};
      r.include_stop_str_in_output = i % 4 == 0;
      break;
    case 5:  // penalties: each draw depends on the tokens before it
      r.sampling.temperature = 0.7f;
      r.sampling.repetition_penalty = 1.3f;
      r.sampling.frequency_penalty = 0.4f;
      r.sampling.presence_penalty = 0.2f;
      r.logprobs = 0;
      break;
  }
  // Every fifth also scores its prompt (rows before its chunks' last ones; no prefix-cache use).
  if (i % 5 == 2) r.prompt_logprobs = i % 3;
  return r;
}

std::map<std::string, Out> RunMixed(Mode mode, int num_blocks, int max_batch_tokens, int n, int* preemptions,
                                    bool prefix = false) {
  Rig rig(mode, num_blocks, /*block_size=*/4, max_batch_tokens, /*max_num_seqs=*/12, /*context_len=*/60);
  rig.backend->eos_at_context = 23;
  rig.Run([&](int step) {
    // Arrivals spread over the first steps, so that prefills and decodes share steps.
    for (int i = 0; i < n; ++i) {
      if (i % 8 == step) {
        GenerateRequest r = Mixed(i);
        if (prefix && i % 2 == 0) {
          // Equal leading blocks with an earlier request: prefix-cache hits.
          GenerateRequest base = Mixed(0);
          r.prompt_ids.insert(r.prompt_ids.begin(), base.prompt_ids.begin(), base.prompt_ids.end());
        }
        rig.Add(std::move(r));
      }
    }
  });
  EXPECT_EQ(rig.failures, 0);
  EXPECT_EQ(rig.kv.num_used(), 0) << Name(mode);
  EXPECT_EQ(rig.finished.size(), static_cast<size_t>(n)) << Name(mode);
  if (preemptions != nullptr) *preemptions = static_cast<int>(rig.sched->preemptions());
  if (mode == Mode::kOverlapDevice) {
    auto* dev = static_cast<OverlappingFake*>(rig.backend.get());
    EXPECT_GT(dev->fed_tokens, 0) << "no token was fed on the device";
    EXPECT_GT(dev->launched_while_one_outstanding, 0) << "no two steps were ever outstanding";
  }
  return rig.out;
}

void ExpectSameStreams(const std::map<std::string, Out>& want, const std::map<std::string, Out>& got, Mode mode) {
  ASSERT_EQ(want.size(), got.size()) << Name(mode);
  for (const auto& [id, o] : want) {
    auto it = got.find(id);
    ASSERT_NE(it, got.end()) << id;
    EXPECT_TRUE(o == it->second) << Name(mode) << ": " << id << " differs: ids " << o.ids.size() << " vs "
                                 << it->second.ids.size() << ", text '" << o.text << "' vs '" << it->second.text
                                 << "', reason " << FinishReasonName(o.final.finish_reason) << " vs "
                                 << FinishReasonName(it->second.final.finish_reason);
  }
}

TEST(SchedulerOverlap, StreamsEqualTheInOrderStepsForEveryKindOfRequest) {
  int preempted = 0;
  const auto want = RunMixed(Mode::kInOrder, /*num_blocks=*/512, /*max_batch_tokens=*/48, 36, &preempted);
  int reasons[7] = {};
  for (const auto& [id, o] : want) reasons[static_cast<int>(o.final.finish_reason)]++;
  EXPECT_GT(reasons[static_cast<int>(FinishReason::kLength)], 0);
  EXPECT_GT(reasons[static_cast<int>(FinishReason::kEos)], 0) << "the mix never met eos";
  EXPECT_GT(reasons[static_cast<int>(FinishReason::kStop)], 0) << "the mix never met a stop";
  int scored = 0;
  for (const auto& [id, o] : want) {
    if (!o.prompt_logprobs.empty()) {
      EXPECT_EQ(static_cast<int>(o.prompt_logprobs.size()), o.final.prompt_tokens - 1) << id;
      scored++;
    }
  }
  EXPECT_GT(scored, 0) << "no request of the mix scored its prompt";
  for (Mode m : {Mode::kOverlapAtOnce, Mode::kOverlapDevice}) ExpectSameStreams(want, RunMixed(m, 512, 48, 36, nullptr), m);
}

TEST(SchedulerOverlap, StreamsEqualUnderPreemptionAndPrefixCaching) {
  int preempted = 0;
  // About four sequences' worth of blocks for twelve running at once: the scheduler must preempt.
  const auto want = RunMixed(Mode::kInOrder, /*num_blocks=*/40, /*max_batch_tokens=*/64, 24, &preempted, true);
  EXPECT_GT(preempted, 0);
  for (Mode m : {Mode::kOverlapAtOnce, Mode::kOverlapDevice}) {
    int p = 0;
    ExpectSameStreams(want, RunMixed(m, 40, 64, 24, &p, true), m);
    EXPECT_GT(p, 0) << Name(m);
  }
}

TEST(SchedulerOverlap, ContextLengthAndMaxTokensEndWithoutAStepPastThem) {
  for (Mode m : {Mode::kOverlapAtOnce, Mode::kOverlapDevice}) {
    Rig rig(m, 64, 4, 64, 8, /*context_len=*/20);
    rig.Add(Req("ctx", 10, 50, 1));
    rig.Add(Req("max", 5, 6, 2));
    rig.Run();
    EXPECT_EQ(rig.out["ctx"].ids.size(), 10u) << Name(m);
    EXPECT_EQ(rig.out["ctx"].final.finish_reason, FinishReason::kLength);
    EXPECT_EQ(rig.out["max"].ids.size(), 6u) << Name(m);
    // Neither was packed past its last token: the cache never held more than prompt + output - 1
    // tokens of either (the last draw is never computed).
    int max_context = 0;
    for (const Batch& b : rig.backend->batches) {
      for (int c : b.context_lens) max_context = std::max(max_context, c);
    }
    EXPECT_EQ(max_context, 19) << Name(m);
  }
}

TEST(SchedulerOverlap, ACancelMeetsTheRequestWhereInOrderStepsWould) {
  std::map<std::string, Out> want;
  for (Mode m : {Mode::kInOrder, Mode::kOverlapAtOnce, Mode::kOverlapDevice}) {
    Rig rig(m, 256, 4, 64, 8);
    rig.Run([&](int step) {
      if (step == 0) {
        for (int i = 0; i < 4; ++i) rig.Add(Req(absl::StrCat("c", i), 6 + i, 40, static_cast<uint64_t>(i)));
      }
      if (step == 9) rig.Cancel("c1");
      if (step == 15) rig.Cancel("c3");
    });
    EXPECT_EQ(rig.out["c1"].final.finish_reason, FinishReason::kCancelled) << Name(m);
    EXPECT_EQ(rig.out["c3"].final.finish_reason, FinishReason::kCancelled) << Name(m);
    EXPECT_EQ(rig.kv.num_used(), 0) << Name(m);
    if (m == Mode::kInOrder) {
      want = rig.out;
      EXPECT_EQ(want["c1"].ids.size(), 9u) << "one token per step after the prefill step";
    } else {
      ExpectSameStreams(want, rig.out, m);
    }
  }
}

TEST(SchedulerOverlap, ADeadlineMeetsTheRequestWhereInOrderStepsWould) {
  std::map<std::string, Out> want;
  for (Mode m : {Mode::kInOrder, Mode::kOverlapAtOnce, Mode::kOverlapDevice}) {
    Rig rig(m, 256, 4, 64, 8);
    const absl::Time t0 = absl::Now();
    GenerateRequest r = Req("d", 7, 40, 3);
    r.deadline = t0 + absl::Milliseconds(5500);  // one step per second: expires at the 6th
    rig.Add(std::move(r));
    rig.Add(Req("e", 9, 12, 4));
    for (int i = 1; i <= 100 && rig.sched->HasWork(); ++i) ASSERT_TRUE(rig.sched->Step(t0 + absl::Seconds(i)).ok());
    ASSERT_FALSE(rig.sched->HasWork());
    EXPECT_EQ(rig.out["d"].final.finish_reason, FinishReason::kDeadline) << Name(m);
    EXPECT_EQ(rig.out["d"].ids.size(), 5u) << Name(m);
    if (m == Mode::kInOrder) {
      want = rig.out;
    } else {
      ExpectSameStreams(want, rig.out, m);
    }
  }
}

struct StepTimes : EngineObserver {
  void OnStep(const StepReport& r) override { sum += r.step_time; steps++; }
  absl::Duration sum;
  int steps = 0;
};

// The reported step time is each step's share of the wall time: overlapped steps do not count the
// time they waited behind the step before, so the times add up to no more than the run.
TEST(SchedulerOverlap, StepTimesAddUpToTheWallTime) {
  for (Mode m : {Mode::kInOrder, Mode::kOverlapDevice}) {
    StepTimes times;
    KvBlockAllocator kv(64, 4);
    std::unique_ptr<FakeBackend> backend =
        m == Mode::kOverlapDevice ? std::make_unique<OverlappingFake>() : std::make_unique<FakeBackend>();
    ASSERT_TRUE(backend->InitKvCache({64, 4}).ok());
    backend->step_delay = absl::Milliseconds(4);
    SchedulerOptions o;
    o.eos_ids = {kFakeEos};
    o.sampling_threads = 1;
    o.overlap_steps = m != Mode::kInOrder;
    Scheduler sched(o, backend.get(), &kv, nullptr, &times, [](const std::string&) {});
    sched.Add(Req("t", 6, 20, 5), [](GenerateEvent) {}, absl::Now());
    const absl::Time t0 = absl::Now();
    while (sched.HasWork()) ASSERT_TRUE(sched.Step(absl::Now()).ok());
    const absl::Duration wall = absl::Now() - t0;
    EXPECT_EQ(times.steps, 20) << Name(m);
    EXPECT_LE(times.sum, wall) << Name(m);
    EXPECT_GE(times.sum, 20 * absl::Milliseconds(4)) << Name(m);
  }
}

// A step that fails on the device fails its requests (INTERNAL); a request that was not in it keeps
// its tokens, and the blocks all come back.
TEST(SchedulerOverlap, AFailedStepFailsItsRequestsOnly) {
  Rig ref(Mode::kInOrder, 256, 4, 64, 8);
  Rig rig(Mode::kOverlapDevice, 256, 4, 64, 8);
  static_cast<OverlappingFake*>(rig.backend.get())->fail_in = 4;
  for (Rig* r : {&ref, &rig}) {
    r->Run([&](int step) {
      if (step == 0) r->Add(Req("early", 8, 6, 1));
      // Arrives while the failing step is in flight: packed into the step launched after it.
      if (step == 4) r->Add(Req("late", 9, 6, 2));
    });
  }
  EXPECT_EQ(rig.failures, 1) << testing::PrintToString(rig.errors);
  EXPECT_EQ(rig.out["early"].final.finish_reason, FinishReason::kError);
  EXPECT_EQ(rig.out["early"].final.status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(rig.out["early"].ids.size(), 3u) << "the tokens of the three steps before the failed one";
  EXPECT_TRUE(rig.out["late"] == ref.out["late"]) << "a request that was not in the failed step keeps its stream";
  EXPECT_EQ(rig.kv.num_used(), 0);
}

}  // namespace
}  // namespace sbserve
