// Automatic prefix caching: the KV allocator's published blocks and the scheduler that reuses
// them, against the fake backend. The fake backend derives every logit row from the tokens it
// reads back through the block table, so a reused block with the wrong content changes the
// output; and its write guard fails any step that writes into a block that is shared, published
// or not held (a shared block is never written).
#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/scheduler.h"
#include "gtest/gtest.h"
#include "tests/server/fake_backend.h"

namespace sbserve {
namespace {

struct Result {
  std::vector<int32_t> ids;
  std::vector<StepLogprobs> logprobs;
  GenerateEvent final;
};

struct Rig {
  Rig(int num_blocks, int block_size, int max_batch_tokens, bool caching = true) : kv(num_blocks, block_size) {
    EXPECT_TRUE(backend.InitKvCache({num_blocks, block_size}).ok());
    backend.kv_guard = &kv;
    SchedulerOptions o;
    o.max_batch_tokens = max_batch_tokens;
    o.max_num_seqs = 64;
    o.context_len = backend.config().n_positions;
    o.eos_ids = {kFakeEos};
    o.sampling_threads = 1;
    o.enable_prefix_caching = caching;
    sched = std::make_unique<Scheduler>(o, &backend, &kv, nullptr, nullptr, nullptr);
  }

  void Add(GenerateRequest r) {
    const std::string id = r.request_id;
    results[id];
    sched->Add(std::move(r), [this, id](GenerateEvent e) {
      Result& res = results[id];
      ASSERT_FALSE(res.final.finished) << "event after the final one";
      res.ids.insert(res.ids.end(), e.token_ids.begin(), e.token_ids.end());
      res.logprobs.insert(res.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
      if (e.finished) res.final = std::move(e);
    }, absl::Now());
  }

  void Step() {
    absl::Status s = sched->Step(absl::Now());
    ASSERT_TRUE(s.ok()) << s;
  }
  void Run() {
    for (int i = 0; i < 10000 && sched->HasWork(); ++i) {
      Step();
      if (::testing::Test::HasFatalFailure()) return;
    }
    ASSERT_FALSE(sched->HasWork());
  }

  // The cached prefix (tokens before its chunk) of the latest batch's sequence `seq_index`.
  int PrefixOf(int seq_index) const {
    const Batch& b = sched->last_batch();
    return b.context_lens[seq_index] - (b.cu_seqlens_q[seq_index + 1] - b.cu_seqlens_q[seq_index]);
  }
  std::vector<int32_t> TableOf(int seq_index) const {
    const Batch& b = sched->last_batch();
    auto row = b.block_tables.begin() + static_cast<int64_t>(seq_index) * b.max_blocks_per_seq;
    std::vector<int32_t> t(row, row + b.max_blocks_per_seq);
    t.erase(std::remove(t.begin(), t.end(), -1), t.end());
    return t;
  }

  FakeBackend backend;
  KvBlockAllocator kv;
  std::unique_ptr<Scheduler> sched;
  std::map<std::string, Result> results;
};

std::vector<int32_t> Tokens(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(1 + static_cast<int32_t>(rng() % (kFakeVocab - 1)));
  return t;
}
std::vector<int32_t> Cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

GenerateRequest Req(const std::string& id, std::vector<int32_t> prompt, int max_tokens, float temp = 0.0f) {
  GenerateRequest r;
  r.request_id = id;
  r.prompt_ids = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = temp;
  r.sampling.seed = 7;
  r.sampling.has_seed = true;
  r.ignore_eos = true;
  r.logprobs = 2;
  return r;
}

// The output of `r` computed alone, with prefix caching off.
Result Reference(const GenerateRequest& r) {
  Rig rig(256, 4, 64, /*caching=*/false);
  rig.Add(r);
  rig.Run();
  return rig.results.at(r.request_id);
}

void ExpectSameOutput(const Result& got, const Result& want) {
  EXPECT_EQ(got.ids, want.ids);
  ASSERT_EQ(got.logprobs.size(), want.logprobs.size());
  for (size_t i = 0; i < got.logprobs.size(); ++i) {
    EXPECT_EQ(got.logprobs[i].logprob, want.logprobs[i].logprob) << i;  // bitwise: same rows
  }
  EXPECT_EQ(got.final.finish_reason, want.final.finish_reason);
}

TEST(KvBlockAllocator, PublishedBlocksAreFoundOnlyWithEqualTokensAndChain) {
  KvBlockAllocator kv(8, 2);
  std::vector<int32_t> a;
  ASSERT_TRUE(kv.EnsureCapacity(a, 6).ok());
  const std::vector<int32_t> toks = {1, 2, 3, 4, 5, 6};
  PrefixChain ca;
  kv.Publish(toks, a, 2, ca);  // the first two blocks only
  EXPECT_EQ(kv.num_published(), 2);
  EXPECT_TRUE(kv.is_published(a[0]) && kv.is_published(a[1]) && !kv.is_published(a[2]));

  std::vector<int32_t> b;
  PrefixChain cb;
  EXPECT_EQ(kv.AcquirePrefix(toks, 6, b, cb), 4);
  EXPECT_EQ(b, std::vector<int32_t>(a.begin(), a.begin() + 2));
  EXPECT_EQ(kv.ref_count(a[0]), 2);
  // Same second block after a different first block: no hit past the first difference.
  std::vector<int32_t> c;
  PrefixChain cc;
  EXPECT_EQ(kv.AcquirePrefix(std::vector<int32_t>{1, 9, 3, 4}, 4, c, cc), 0);
  // Capped by max_tokens, block-aligned.
  std::vector<int32_t> d;
  PrefixChain cd;
  EXPECT_EQ(kv.AcquirePrefix(toks, 3, d, cd), 2);
  kv.Free(d);
  kv.Free(b);
  kv.Free(a);
  EXPECT_EQ(kv.num_used(), 0);
  EXPECT_EQ(kv.num_cached_free(), 2);
  EXPECT_EQ(kv.num_free(), 8);
}

// Hash collisions never give a wrong hit: with a hash of the block's tokens alone (blocks with
// equal tokens collide whatever came before) or a constant one, lookups still find only blocks
// whose whole prefix matches, because tokens and the parent's registration are verified.
TEST(KvBlockAllocator, CollidingHashesNeverGiveAWrongHit) {
  KvBlockAllocator kv(4, 2);
  kv.set_hash_for_testing([](uint64_t, std::span<const int32_t> t) -> uint64_t {
    return 1000 + static_cast<uint64_t>(t[0]) * 100 + static_cast<uint64_t>(t[1]);
  });
  const std::vector<int32_t> xy = {1, 2, 3, 4};  // blocks [1 2] [3 4]
  std::vector<int32_t> t;
  ASSERT_TRUE(kv.EnsureCapacity(t, 4).ok());
  PrefixChain c;
  kv.Publish(xy, t, 2, c);
  const int32_t first = t[0], second = t[1];
  // Keep the second block held, let the first go and be evicted and reused for [5 6].
  std::vector<int32_t> head = {first};
  kv.Free(head);
  std::vector<int32_t> other;
  ASSERT_TRUE(kv.EnsureCapacity(other, 6).ok());  // takes the two never-used blocks, then evicts `first`
  ASSERT_EQ(other.back(), first);
  EXPECT_FALSE(kv.is_published(first));
  std::vector<int32_t> z = {5, 6};
  std::vector<int32_t> zt = {other.back()};
  PrefixChain cz;
  kv.Publish(z, zt, 1, cz);
  ASSERT_TRUE(kv.is_published(first));
  // [5 6] [3 4]: the first block hits; the second must not, although its hash and tokens match
  // (it followed [1 2], not [5 6]).
  std::vector<int32_t> got;
  PrefixChain cg;
  EXPECT_EQ(kv.AcquirePrefix(std::vector<int32_t>{5, 6, 3, 4}, 4, got, cg), 2);
  EXPECT_EQ(got, std::vector<int32_t>{first});
  EXPECT_TRUE(kv.is_published(second));

  // A constant hash: every block collides; a block with other tokens is never taken.
  KvBlockAllocator k2(4, 2);
  k2.set_hash_for_testing([](uint64_t, std::span<const int32_t>) -> uint64_t { return 7; });
  std::vector<int32_t> t2;
  ASSERT_TRUE(k2.EnsureCapacity(t2, 2).ok());
  PrefixChain c2;
  k2.Publish(std::vector<int32_t>{1, 2}, t2, 1, c2);
  std::vector<int32_t> g2;
  PrefixChain cg2;
  EXPECT_EQ(k2.AcquirePrefix(std::vector<int32_t>{1, 3}, 2, g2, cg2), 0);
  EXPECT_EQ(k2.AcquirePrefix(std::vector<int32_t>{1, 2}, 2, g2, cg2), 2);
}

TEST(PrefixCache, SharedPrefixStartsAfterTheCachedBlocksWithIdenticalOutput) {
  Rig rig(256, 4, 64);
  const std::vector<int32_t> prefix = Tokens(16, 1);
  const GenerateRequest a = Req("a", Cat(prefix, Tokens(6, 2)), 5);
  const GenerateRequest b = Req("b", Cat(prefix, Tokens(5, 3)), 6);
  rig.Add(a);
  rig.Run();
  EXPECT_EQ(rig.sched->prefix_cache_hits(), 0u);
  EXPECT_EQ(rig.sched->prefix_cache_queries(), 22u);
  // a's 22 prompt + 4 fed-back output tokens: 6 full blocks published, all unheld now.
  EXPECT_EQ(rig.kv.num_cached_free(), 6);

  rig.Add(b);
  rig.Step();
  EXPECT_EQ(rig.PrefixOf(0), 16);  // b's first chunk starts after the four shared blocks
  EXPECT_EQ(rig.sched->last_batch().num_tokens(), 5);
  const std::vector<int32_t> b_table = rig.TableOf(0);
  ASSERT_EQ(b_table.size(), 6u);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(rig.kv.is_published(b_table[i])) << i;
  EXPECT_EQ(rig.sched->prefix_cache_hits(), 16u);
  EXPECT_EQ(rig.sched->prefix_cache_queries(), 22u + 21u);
  rig.Run();
  ExpectSameOutput(rig.results["a"], Reference(a));
  ExpectSameOutput(rig.results["b"], Reference(b));
  EXPECT_EQ(rig.kv.num_used(), 0);
}

TEST(PrefixCache, RunningSequencesShareBlocksByReference) {
  Rig rig(256, 4, 64);
  const std::vector<int32_t> prefix = Tokens(12, 4);
  const GenerateRequest a = Req("a", Cat(prefix, Tokens(3, 5)), 8);
  const GenerateRequest b = Req("b", Cat(prefix, Tokens(2, 6)), 8);
  rig.Add(a);
  rig.Step();  // a prefilled, its three full blocks published
  const std::vector<int32_t> a_table = rig.TableOf(0);
  rig.Add(b);
  rig.Step();  // a decodes, b starts after a's three blocks
  ASSERT_EQ(rig.sched->last_batch().num_seqs(), 2);
  EXPECT_EQ(rig.PrefixOf(1), 12);
  const std::vector<int32_t> b_table = rig.TableOf(1);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(b_table[i], a_table[i]);
    EXPECT_EQ(rig.kv.ref_count(a_table[i]), 2);
  }
  EXPECT_NE(b_table[3], a_table[3]);  // the partial block stays private
  rig.Run();
  ExpectSameOutput(rig.results["a"], Reference(a));
  ExpectSameOutput(rig.results["b"], Reference(b));
  EXPECT_EQ(rig.kv.num_used(), 0);
}

TEST(PrefixCache, APartialBlockIsNeverShared) {
  Rig rig(256, 4, 64);
  const std::vector<int32_t> p = Tokens(18, 7);  // four full blocks and two tokens
  rig.Add(Req("a", p, 1));  // its output is never fed back: block 4 stays partial
  rig.Run();
  EXPECT_EQ(rig.kv.num_cached_free(), 4);
  const GenerateRequest b = Req("b", Cat(p, Tokens(3, 8)), 4);
  rig.Add(b);
  rig.Step();
  EXPECT_EQ(rig.PrefixOf(0), 16);  // not 18: the two cached tokens of the partial block are recomputed
  rig.Run();
  ExpectSameOutput(rig.results["b"], Reference(b));
}

TEST(PrefixCache, AFullyCachedPromptComputesItsLastBlockAgain) {
  Rig rig(256, 4, 64);
  const std::vector<int32_t> p = Tokens(16, 9);  // block-aligned
  const GenerateRequest a = Req("a", p, 3);
  rig.Add(a);
  rig.Step();  // a's four blocks are published while it runs
  rig.Add(Req("b", p, 3));
  rig.Step();
  ASSERT_EQ(rig.sched->last_batch().num_seqs(), 2);
  EXPECT_EQ(rig.PrefixOf(1), 12);  // at most len - 1 tokens cached, block-aligned: 12
  EXPECT_EQ(rig.sched->last_batch().cu_seqlens_q[2] - rig.sched->last_batch().cu_seqlens_q[1], 4);
  rig.Run();
  // One token past a whole block: 16 cached, a chunk of one.
  rig.Add(Req("c", Cat(p, {5}), 2));
  rig.Step();
  EXPECT_EQ(rig.PrefixOf(0), 16);
  EXPECT_EQ(rig.sched->last_batch().num_tokens(), 1);
  rig.Run();
  const Result ref = Reference(a);
  ExpectSameOutput(rig.results["a"], ref);
  ExpectSameOutput(rig.results["b"], ref);  // same prompt, greedy: same output
}

TEST(PrefixCache, EvictionTakesTheLeastRecentlyUsedTailsFirst) {
  Rig rig(12, 4, 64);
  const std::vector<int32_t> pa = Tokens(16, 10), pb = Tokens(16, 11);
  rig.Add(Req("a", pa, 1));
  rig.Step();
  const std::vector<int32_t> a_blocks = rig.TableOf(0);
  rig.Run();
  rig.Add(Req("b", pb, 1));
  rig.Step();
  const std::vector<int32_t> b_blocks = rig.TableOf(0);
  rig.Run();
  // a2 reads all of a's blocks, so b's are now the least recently used.
  rig.Add(Req("a2", Cat(pa, {3}), 1));
  rig.Step();
  EXPECT_EQ(rig.PrefixOf(0), 16);
  rig.Run();
  EXPECT_EQ(rig.kv.num_used(), 0);
  ASSERT_EQ(rig.kv.num_cached_free(), 8);
  // c needs 6 blocks: the 4 never used, then 2 evicted: b's, tail first.
  rig.Add(Req("c", Tokens(24, 12), 1));
  rig.Step();
  const std::vector<int32_t> c_blocks = rig.TableOf(0);
  rig.Run();
  auto taken = [&](int32_t blk) { return std::count(c_blocks.begin(), c_blocks.end(), blk) > 0; };
  for (int32_t blk : a_blocks) EXPECT_FALSE(taken(blk)) << blk;
  EXPECT_FALSE(taken(b_blocks[0]));
  EXPECT_FALSE(taken(b_blocks[1]));
  EXPECT_TRUE(taken(b_blocks[2]));
  EXPECT_TRUE(taken(b_blocks[3]));
  EXPECT_EQ(rig.kv.num_cached_free(), 12);
  const GenerateRequest a3 = Req("a3", Cat(pa, {3}), 2);
  rig.Add(a3);
  rig.Step();
  EXPECT_EQ(rig.PrefixOf(0), 16);  // a's chain is whole; its one fresh block evicts b's second
  rig.Run();
  const GenerateRequest b2 = Req("b2", pb, 2);
  rig.Add(b2);
  rig.Step();
  EXPECT_EQ(rig.PrefixOf(0), 4);  // only b's head is left
  rig.Run();
  ExpectSameOutput(rig.results["a3"], Reference(a3));
  ExpectSameOutput(rig.results["b2"], Reference(b2));
  EXPECT_EQ(rig.kv.num_used(), 0);
}

TEST(PrefixCache, CancellingOneSharerLeavesTheBlocksToTheOther) {
  Rig rig(256, 4, 64);
  const std::vector<int32_t> prefix = Tokens(12, 13);
  const GenerateRequest a = Req("a", Cat(prefix, Tokens(1, 14)), 10);
  rig.Add(a);
  rig.Step();
  const std::vector<int32_t> shared = rig.TableOf(0);
  rig.Add(Req("b", Cat(prefix, Tokens(2, 15)), 10));
  rig.Step();
  rig.Step();
  EXPECT_EQ(rig.kv.ref_count(shared[0]), 2);
  ASSERT_TRUE(rig.sched->Cancel("b", absl::Now()));
  EXPECT_EQ(rig.results["b"].final.finish_reason, FinishReason::kCancelled);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(rig.kv.ref_count(shared[i]), 1);
  rig.Run();
  ExpectSameOutput(rig.results["a"], Reference(a));
  EXPECT_EQ(rig.kv.num_used(), 0);
}

TEST(PrefixCache, PreemptingASharerKeepsBothOutputsAndRestartsFromTheCache) {
  // 10 blocks of 4: a and b share three blocks and each decodes into private ones until the pool
  // runs dry and the younger (b) is preempted; it restarts from the cached blocks.
  Rig rig(10, 4, 64);
  const std::vector<int32_t> prefix = Tokens(12, 16);
  const GenerateRequest a = Req("a", Cat(prefix, Tokens(1, 17)), 14, 0.8f);
  const GenerateRequest b = Req("b", Cat(prefix, Tokens(2, 18)), 14, 0.8f);
  rig.Add(a);
  rig.Step();
  rig.Add(b);
  rig.Run();
  EXPECT_GT(rig.sched->preemptions(), 0u);
  EXPECT_GT(rig.results["b"].final.timings.preemptions, 0);
  // b's restart found its prompt and decoded blocks cached: hits beyond the first 12 tokens.
  EXPECT_GT(rig.sched->prefix_cache_hits(), 12u);
  ExpectSameOutput(rig.results["a"], Reference(a));
  ExpectSameOutput(rig.results["b"], Reference(b));
  EXPECT_EQ(rig.kv.num_used(), 0);
}

TEST(PrefixCache, OptedOutRequestsNeitherReadNorPublish) {
  Rig rig(256, 4, 64);
  const std::vector<int32_t> p = Tokens(20, 19);
  GenerateRequest a = Req("a", p, 3);
  a.cache_prefix = false;
  rig.Add(a);
  rig.Run();
  EXPECT_EQ(rig.kv.num_published(), 0);
  EXPECT_EQ(rig.kv.num_cached_free(), 0);
  rig.Add(Req("b", p, 3));
  rig.Step();
  EXPECT_EQ(rig.PrefixOf(0), 0);
  rig.Run();
  EXPECT_EQ(rig.kv.num_published(), 5);
  GenerateRequest c = Req("c", p, 3);
  c.cache_prefix = false;
  rig.Add(c);
  rig.Step();
  EXPECT_EQ(rig.PrefixOf(0), 0);  // b's blocks are there, but c computes its own
  rig.Run();
  // Opted-out lookups are not counted.
  EXPECT_EQ(rig.sched->prefix_cache_queries(), 20u);
  ExpectSameOutput(rig.results["c"], rig.results["a"]);
}

TEST(PrefixCache, OffMeansNoSharingAndNoCachedBlocks) {
  Rig rig(256, 4, 64, /*caching=*/false);
  const std::vector<int32_t> p = Tokens(20, 20);
  rig.Add(Req("a", p, 3));
  rig.Run();
  rig.Add(Req("b", p, 3));
  rig.Step();
  EXPECT_EQ(rig.PrefixOf(0), 0);
  rig.Run();
  EXPECT_EQ(rig.kv.num_published(), 0);
  EXPECT_EQ(rig.kv.num_cached_free(), 0);
  EXPECT_EQ(rig.sched->prefix_cache_queries(), 0u);
  ExpectSameOutput(rig.results["b"], rig.results["a"]);
}

TEST(PrefixCache, MixedLoadUnderPressureMatchesTheUncachedOutputsAndReturnsEveryBlock) {
  // Families of shared prefixes, repeated prompts, preemptions, evictions and cancels; every
  // surviving request's output must equal its uncached reference, and no block may leak.
  Rig rig(40, 4, 24);
  std::mt19937 rng(21);
  std::vector<std::vector<int32_t>> prefixes;
  for (int i = 0; i < 4; ++i) prefixes.push_back(Tokens(4 + 4 * i + static_cast<int>(i % 2), 100 + i));
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < 40; ++i) {
    const auto& pre = prefixes[rng() % prefixes.size()];
    const int suffix = static_cast<int>(rng() % 6);
    GenerateRequest r = Req("r" + std::to_string(i), Cat(pre, Tokens(suffix, 200 + i % 7)), 1 + static_cast<int>(rng() % 9),
                            (i % 3 == 0) ? 0.7f : 0.0f);
    r.cache_prefix = (i % 5 != 4);
    reqs.push_back(r);
  }
  std::set<std::string> cancelled;
  size_t next = 0;
  for (int step = 0; step < 10000 && (next < reqs.size() || rig.sched->HasWork()); ++step) {
    for (int k = 0; k < 3 && next < reqs.size(); ++k) rig.Add(reqs[next++]);
    if (step % 7 == 3) {
      const std::string id = "r" + std::to_string(step % static_cast<int>(next));
      if (!rig.results[id].final.finished && rig.sched->Cancel(id, absl::Now())) cancelled.insert(id);
    }
    rig.Step();
    if (HasFatalFailure()) return;
  }
  ASSERT_FALSE(rig.sched->HasWork());
  EXPECT_GT(rig.sched->preemptions(), 0u);
  EXPECT_GT(rig.sched->prefix_cache_hits(), 0u);
  EXPECT_FALSE(cancelled.empty());
  for (const GenerateRequest& r : reqs) {
    if (cancelled.count(r.request_id)) continue;
    SCOPED_TRACE(r.request_id);
    ExpectSameOutput(rig.results[r.request_id], Reference(r));
  }
  EXPECT_EQ(rig.kv.num_used(), 0);
  EXPECT_EQ(rig.kv.num_free(), rig.kv.num_blocks());
  EXPECT_EQ(rig.kv.num_cached_free(), rig.kv.num_published());
}

}  // namespace
}  // namespace sbserve
