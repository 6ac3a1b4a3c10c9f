// The scheduler's device-sampling path, on the CPU: a backend that says it samples on its device
// (Backend::ForwardSample) and does so with the CPU sampler's own steps, as the CUDA sampler does on
// the GPU. Requests of every kind (greedy, seeded, filtered, penalised, min_tokens with stop ids,
// logprobs) must give exactly the tokens and logprobs of the host path. What this checks is the
// scheduler's side: which rows it hands over, in which order, with which seed, position, penalties
// and bans, and how it records the draws and assembles logprobs.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "engine/engine.h"
#include "engine/model/checkpoint.h"
#include "engine/model/model_writer.h"
#include "engine/sampler.h"
#include "gtest/gtest.h"
#include "tests/engine/test_util.h"
#include "tests/server/collector.h"

namespace sbserve {
namespace {


// Draws each row as the device sampler does (DrawRow: logprobs of the raw row, then penalties and
// bans, then DrawToken).
class HostDrawsAsDevice : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  bool samples_on_device() const override { return true; }
  absl::Status ForwardSample(const Batch& batch, const SamplingBatch& sampling, SampledRows* out) override {
    calls++;
    const int64_t V = config().vocab_size;
    const size_t R = batch.logit_rows.size();
    if (sampling.rows.size() != R) return absl::InvalidArgumentError("rows != logit rows");
    std::vector<float> logits(R * V);
    if (absl::Status st = Forward(batch, logits); !st.ok()) return st;
    DrawRows(sampling, logits, V, out);
    return absl::OkStatus();
  }
  std::atomic<int> calls{0};
};

// The same draws behind the overlap protocol, computed on a thread of its own as a device would:
// LaunchStep queues the step and returns, the thread runs the steps in launch order (fed tokens
// from the previous step's draws), CollectStep waits for the oldest.
class AsyncHostDraws : public HostDrawsAsDevice {
 public:
  using HostDrawsAsDevice::HostDrawsAsDevice;
  ~AsyncHostDraws() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
  }
  bool overlaps_steps() const override { return true; }
  absl::Status LaunchStep(const Batch& batch, const SamplingBatch& sampling, std::span<const TokenFeed> feed) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!worker_.joinable()) worker_ = std::thread([this] { Work(); });
    if (launched_.size() >= 2) return absl::InternalError("a third step launched before the first was collected");
    auto job = std::make_shared<Job>();
    job->batch = batch;
    job->sampling = sampling;
    job->feed.assign(feed.begin(), feed.end());
    launched_.push_back(job);
    todo_.push_back(job);
    if (launched_.size() == 2) overlapped++;
    cv_.notify_all();
    return absl::OkStatus();
  }
  absl::Status CollectStep(SampledRows* out) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (launched_.empty()) return absl::InternalError("collect without a launched step");
    std::shared_ptr<Job> job = launched_.front();
    cv_.wait(lock, [&] { return job->done; });
    launched_.pop_front();
    *out = std::move(job->out);
    return job->status;
  }
  std::atomic<int> overlapped{0};  // launches made while another step was outstanding

 private:
  struct Job {
    Batch batch;
    SamplingBatch sampling;
    std::vector<TokenFeed> feed;
    absl::Status status;
    SampledRows out;
    bool done = false;
  };
  void Work() {
    std::vector<int32_t> last;  // the previous step's draws
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !todo_.empty(); });
        if (stop_) return;
        job = todo_.front();
        todo_.pop_front();
      }
      for (const TokenFeed& f : job->feed) {
        job->batch.tokens[f.token_index] = f.from_row < static_cast<int>(last.size()) ? last[f.from_row] : 0;
      }
      absl::Status st = ForwardSample(job->batch, job->sampling, &job->out);
      last = job->out.tokens;
      std::lock_guard<std::mutex> lock(mu_);
      job->status = st;
      job->done = true;
      cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> launched_, todo_;
  bool stop_ = false;
  std::thread worker_;
};

const Checkpoint& TinyCheckpoint() {
  CreateOptions co;
  co.preset = "tiny";
  co.variant = "R1";
  co.dtype = "f32";
  co.seed = 3;
  return testing::SharedRandomCheckpoint("devpath", co);
}

struct Output {
  std::vector<int32_t> ids;
  std::vector<StepLogprobs> logprobs;
  FinishReason reason = FinishReason::kNone;
  bool done = false;
};

std::vector<GenerateRequest> Requests(int vocab) {
  std::vector<GenerateRequest> reqs;
  auto add = [&](const std::string& id, auto set) {
    GenerateRequest r;
    r.request_id = id;
    for (int t = 0; t < 9 + static_cast<int>(reqs.size()) * 5; ++t) {
      r.prompt_ids.push_back(1 + (t * 37 + static_cast<int>(reqs.size()) * 11) % (vocab - 1));
    }
    r.max_tokens = 24;
    r.ignore_eos = true;
    r.sampling.seed = 100 + reqs.size();
    r.sampling.has_seed = true;
    set(r);
    reqs.push_back(std::move(r));
  };
  add("greedy", [](GenerateRequest& r) { r.sampling.temperature = 0; });
  add("greedy-logprobs", [](GenerateRequest& r) { r.sampling.temperature = 0; r.logprobs = 3; });
  add("tempered", [](GenerateRequest& r) { r.sampling.temperature = 1.3f; });
  add("top-k", [](GenerateRequest& r) { r.sampling.temperature = 0.9f; r.sampling.top_k = 5; r.logprobs = 0; });
  add("top-p", [](GenerateRequest& r) { r.sampling.temperature = 1.0f; r.sampling.top_p = 0.7f; });
  add("min-p", [](GenerateRequest& r) { r.sampling.temperature = 1.5f; r.sampling.min_p = 0.1f; r.logprobs = 2; });
  add("repetition", [](GenerateRequest& r) {
    r.sampling.temperature = 0;
    r.sampling.repetition_penalty = 1.8f;
  });
  add("frequency-presence", [](GenerateRequest& r) {
    r.sampling.temperature = 0.8f;
    r.sampling.frequency_penalty = 1.2f;
    r.sampling.presence_penalty = 0.5f;
    r.logprobs = 4;
  });
  // Bans: before min_tokens neither eos nor the stop ids may be drawn; after it they end the request.
  add("min-tokens-stop-ids", [vocab](GenerateRequest& r) {
    r.sampling.temperature = 2.0f;
    r.ignore_eos = false;
    r.min_tokens = 10;
    for (int t = 1; t < vocab; t += 3) r.stop_token_ids.push_back(t);
    r.logprobs = 1;
  });
  add("everything", [](GenerateRequest& r) {
    r.sampling.temperature = 0.7f;
    r.sampling.top_k = 40;
    r.sampling.top_p = 0.9f;
    r.sampling.min_p = 0.02f;
    r.sampling.repetition_penalty = 1.3f;
    r.sampling.frequency_penalty = 0.3f;
    r.sampling.presence_penalty = 0.2f;
    r.logprobs = 5;
  });
  return reqs;
}

// All requests at once through an engine over `backend`.
std::map<std::string, Output> RunAll(std::unique_ptr<Backend> backend, bool penalties = true) {
  std::map<std::string, testing::Collector> events;  // outlives the engine
  EngineOptions o;
  o.kv_num_blocks = 256;
  o.max_queued_tokens = 1 << 20;
  o.max_batch_tokens = 64;  // chunked prefill beside decodes
  o.overlap_steps = true;   // where the backend overlaps steps
  auto engine = Engine::CreateWithCodec(o, std::move(backend), nullptr);
  EXPECT_TRUE(engine.ok()) << engine.status();
  for (const GenerateRequest& r : Requests(static_cast<int>(TinyCheckpoint().config().vocab_size))) {
    const SamplingParams& sp = r.sampling;
    if (!penalties && (sp.repetition_penalty != 1.f || sp.frequency_penalty != 0.f || sp.presence_penalty != 0.f)) {
      continue;
    }
    absl::Status st = (*engine)->Submit(r, events[r.request_id].Sink());
    EXPECT_TRUE(st.ok()) << st;
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  std::map<std::string, Output> out;
  for (auto& [id, c] : events) {
    Output& o = out[id];
    o.done = c.WaitUntil(deadline);
    EXPECT_TRUE(o.done) << id << " did not finish";
    o.ids = c.ids();
    o.logprobs = c.logprobs();
    o.reason = c.final().finish_reason;
  }
  return out;
}

TEST(DeviceSamplingPath, GivesTheTokensAndLogprobsOfTheHostPath) {
  const Checkpoint& ckpt = TinyCheckpoint();
  auto host = CreateCpuBackend(ckpt, {});
  ASSERT_TRUE(host.ok()) << host.status();
  const auto want = RunAll(*std::move(host));
  auto inner = CreateCpuBackend(ckpt, {});
  ASSERT_TRUE(inner.ok()) << inner.status();
  auto device = std::make_unique<HostDrawsAsDevice>(*std::move(inner));
  HostDrawsAsDevice* seen = device.get();
  const auto got = RunAll(std::move(device));
  EXPECT_GT(seen->calls.load(), 24) << "the scheduler did not use ForwardSample";
  int sampled_tokens = 0;
  for (const auto& [id, w] : want) {
    SCOPED_TRACE(id);
    const Output& g = got.at(id);
    ASSERT_TRUE(w.done && g.done);
    EXPECT_FALSE(w.ids.empty());
    EXPECT_EQ(g.ids, w.ids);
    EXPECT_EQ(g.reason, w.reason);
    ASSERT_EQ(g.logprobs.size(), w.logprobs.size());
    for (size_t i = 0; i < w.logprobs.size(); ++i) {
      EXPECT_EQ(g.logprobs[i].token_id, w.logprobs[i].token_id) << i;
      EXPECT_EQ(g.logprobs[i].logprob, w.logprobs[i].logprob) << i;
      ASSERT_EQ(g.logprobs[i].top.size(), w.logprobs[i].top.size()) << i;
      for (size_t j = 0; j < w.logprobs[i].top.size(); ++j) {
        EXPECT_EQ(g.logprobs[i].top[j].id, w.logprobs[i].top[j].id);
        EXPECT_EQ(g.logprobs[i].top[j].logprob, w.logprobs[i].top[j].logprob);
      }
    }
    sampled_tokens += static_cast<int>(w.ids.size());
  }
  // The cases really do what they say: min_tokens held off the stop ids, then one ended the request.
  const Output& stop = want.at("min-tokens-stop-ids");
  EXPECT_GE(stop.ids.size(), 10u);
  EXPECT_EQ(stop.reason, FinishReason::kStop);
  EXPECT_EQ(want.at("top-k").logprobs.size(), want.at("top-k").ids.size());
  EXPECT_GT(sampled_tokens, 150);
}

// Overlapped steps through the engine over a backend that computes on its own thread: the streams
// (ids, logprobs, finish reasons) are those of the host path run one step at a time.
void ExpectSameStreams(const std::map<std::string, Output>& want, const std::map<std::string, Output>& got);

// Requests with penalties make steps collect first; without them nearly every step overlaps.
TEST(DeviceSamplingPath, OverlappedStepsOnAnAsynchronousBackendGiveTheSameStreams) {
  const Checkpoint& ckpt = TinyCheckpoint();
  for (bool penalties : {false, true}) {
    SCOPED_TRACE(penalties ? "with penalties" : "without penalties");
    auto host = CreateCpuBackend(ckpt, {});
    ASSERT_TRUE(host.ok()) << host.status();
    const auto want = RunAll(*std::move(host), penalties);
    auto inner = CreateCpuBackend(ckpt, {});
    ASSERT_TRUE(inner.ok()) << inner.status();
    auto device = std::make_unique<AsyncHostDraws>(*std::move(inner));
    AsyncHostDraws* seen = device.get();
    const auto got = RunAll(std::move(device), penalties);
    if (!penalties) EXPECT_GT(seen->overlapped.load(), 20) << "steps were not overlapped";
    ExpectSameStreams(want, got);
  }
}

void ExpectSameStreams(const std::map<std::string, Output>& want, const std::map<std::string, Output>& got) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [id, w] : want) {
    SCOPED_TRACE(id);
    const Output& g = got.at(id);
    ASSERT_TRUE(w.done && g.done);
    EXPECT_EQ(g.ids, w.ids);
    EXPECT_EQ(g.reason, w.reason);
    ASSERT_EQ(g.logprobs.size(), w.logprobs.size());
    for (size_t i = 0; i < w.logprobs.size(); ++i) {
      EXPECT_EQ(g.logprobs[i].logprob, w.logprobs[i].logprob) << i;
      ASSERT_EQ(g.logprobs[i].top.size(), w.logprobs[i].top.size()) << i;
    }
  }
}

}  // namespace
}  // namespace sbserve
