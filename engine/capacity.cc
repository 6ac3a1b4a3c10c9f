#include "engine/capacity.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/engine.h"

namespace sbserve {
namespace {

constexpr int64_t kGiB = int64_t{1} << 30;
constexpr int64_t kCpuKvCap = int64_t{1} << 30;
constexpr int64_t kFallbackKvBytes = int64_t{256} << 20;

std::string GiB(int64_t bytes) { return absl::StrFormat("%.2f GiB", static_cast<double>(bytes) / kGiB); }

// One prefill step of `tokens` tokens in chunks of at most `max_chunk`, each sequence in its own
// blocks from `first_block` on; logits of each chunk's last token.
Batch PrefillBatch(int tokens, int max_chunk, int block_size, int64_t vocab) {
  Batch b;
  std::vector<int> chunks;
  for (int left = tokens; left > 0; left -= max_chunk) chunks.push_back(std::min(left, max_chunk));
  const int per_seq = (max_chunk + block_size - 1) / block_size;
  b.max_blocks_per_seq = per_seq;
  b.cu_seqlens_q.push_back(0);
  int next_block = 0;
  for (int len : chunks) {
    for (int t = 0; t < len; ++t) {
      b.tokens.push_back(static_cast<int32_t>((static_cast<int64_t>(b.tokens.size()) * 7919 + 13) % vocab));
      b.positions.push_back(t);
    }
    b.cu_seqlens_q.push_back(static_cast<int32_t>(b.tokens.size()));
    b.context_lens.push_back(len);
    b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size()) - 1);
    for (int i = 0; i < per_seq; ++i) b.block_tables.push_back(i < (len + block_size - 1) / block_size ? next_block++ : -1);
  }
  return b;
}

// One decode step of `seqs` sequences at the full context: they share the first blocks (read only)
// and each appends into its own last block. This sizes the decode workspace and logit buffers at
// their largest.
Batch DecodeBatch(int seqs, int64_t context, int block_size, int64_t vocab) {
  Batch b;
  const int nb = static_cast<int>((context + block_size - 1) / block_size);
  b.max_blocks_per_seq = nb;
  b.cu_seqlens_q.push_back(0);
  for (int s = 0; s < seqs; ++s) {
    b.tokens.push_back(static_cast<int32_t>((s * 31 + 7) % vocab));
    b.positions.push_back(static_cast<int32_t>(context - 1));
    b.cu_seqlens_q.push_back(s + 1);
    b.context_lens.push_back(static_cast<int32_t>(context));
    b.logit_rows.push_back(s);
    for (int i = 0; i < nb - 1; ++i) b.block_tables.push_back(i);
    b.block_tables.push_back(nb - 1 + s);
  }
  return b;
}

int BlocksNeeded(const Batch& b) {
  int hi = -1;
  for (int32_t x : b.block_tables) hi = std::max(hi, x);
  return hi + 1;
}

absl::Status RunForward(Backend& backend, const Batch& b, int64_t vocab) {
  std::vector<float> logits(b.logit_rows.size() * static_cast<size_t>(vocab));
  return backend.Forward(b, std::span<float>(logits));
}

}  // namespace

absl::StatusOr<CapacityPlan> PlanCapacity(const EngineOptions& o, Backend& backend) {
  const ModelConfig& cfg = backend.config();
  const bool cuda = backend.name() == "cuda";
  const bool cpu = backend.name() == "cpu";
  const int bs = o.kv_block_size;
  const int64_t ctx = cfg.n_positions;
  const int64_t per_block = backend.KvBytesPerToken() * bs;
  if (per_block <= 0) return absl::InternalError("engine: backend reports no KV bytes per token");
  if (!(o.gpu_memory_utilization > 0.0 && o.gpu_memory_utilization <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("--gpu-memory-utilization must be in (0, 1], got ",
                                                   o.gpu_memory_utilization));
  }
  const int ctx_blocks = static_cast<int>((ctx + bs - 1) / bs);
  CapacityPlan plan;
  plan.max_batch_tokens = o.max_batch_tokens > 0 ? o.max_batch_tokens : (cuda ? 2048 : 512);

  const bool kv_auto = o.kv_num_blocks <= 0 && o.kv_cache_bytes <= 0;
  const bool queue_auto = o.max_queued_tokens <= 0;
  const bool warm = (cuda && (kv_auto || queue_auto)) || (cpu && queue_auto);

  int64_t free_before = 0, warm_kv_bytes = 0;
  if (warm) {
    // Prefill at the largest step (CUDA; a short one on the CPU, only to time it), then decode at
    // max_num_seqs sequences of the full context (CUDA).
    const int prefill_tokens = cuda ? plan.max_batch_tokens : std::min(plan.max_batch_tokens, 128);
    const int max_chunk = static_cast<int>(std::min<int64_t>(prefill_tokens, ctx));
    const Batch prefill = PrefillBatch(prefill_tokens, max_chunk, bs, cfg.vocab_size);
    Batch decode;
    int warm_blocks = BlocksNeeded(prefill);
    if (cuda) {
      decode = DecodeBatch(o.max_num_seqs, ctx, bs, cfg.vocab_size);
      warm_blocks = std::max(warm_blocks, BlocksNeeded(decode));
    }
    if (absl::Status s = backend.InitKvCache({warm_blocks, bs}); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("warm-up KV cache of ", warm_blocks, " blocks: ", s.message()));
    }
    if (absl::StatusOr<MemoryInfo> m = backend.Memory(); m.ok()) {
      free_before = m->free_bytes;
      warm_kv_bytes = m->kv_bytes;
    }
    if (cuda) {  // the first run allocates and captures; the second is timed
      if (absl::Status s = RunForward(backend, prefill, cfg.vocab_size); !s.ok()) {
        return absl::Status(s.code(), absl::StrCat("warm-up prefill: ", s.message()));
      }
    }
    const absl::Time t0 = absl::Now();
    if (absl::Status s = RunForward(backend, prefill, cfg.vocab_size); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("warm-up prefill: ", s.message()));
    }
    const double secs = absl::ToDoubleSeconds(absl::Now() - t0);
    plan.prefill_tokens_per_s = secs > 0 ? prefill_tokens / secs : 0;
    if (cuda) {
      if (absl::Status s = RunForward(backend, decode, cfg.vocab_size); !s.ok()) {
        return absl::Status(s.code(), absl::StrCat("warm-up decode of ", o.max_num_seqs, " sequences: ", s.message()));
      }
    }
  }

  std::string how;
  int64_t num_blocks = 0;
  if (o.kv_num_blocks > 0) {
    num_blocks = o.kv_num_blocks;
    how = "--kv-blocks";
  } else if (o.kv_cache_bytes > 0) {
    num_blocks = o.kv_cache_bytes / per_block;
    how = "--kv-cache-mb";
    if (num_blocks < ctx_blocks) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--kv-cache-mb ", o.kv_cache_bytes >> 20, " holds ", num_blocks * bs, " tokens, less than one request of the full context (",
          ctx, " tokens, ", GiB(ctx_blocks * per_block), "): raise it, or leave it unset to size the cache from memory"));
    }
  } else {
    absl::StatusOr<MemoryInfo> m = backend.Memory();
    if (cuda && m.ok()) {
      const int64_t in_use = m->total_bytes - m->free_bytes - m->kv_bytes;  // weights, activations, context, others
      const int64_t budget =
          static_cast<int64_t>(o.gpu_memory_utilization * static_cast<double>(m->total_bytes)) - in_use;
      num_blocks = std::max<int64_t>(budget, 0) / per_block;
      how = absl::StrFormat("--gpu-memory-utilization %.2f", o.gpu_memory_utilization);
      if (num_blocks < ctx_blocks) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--gpu-memory-utilization ", o.gpu_memory_utilization, " of ", GiB(m->total_bytes), " leaves ",
            GiB(std::max<int64_t>(budget, 0)), " for the KV cache after ", GiB(in_use),
            " in use (weights ", GiB(m->weights_bytes), ", activations, workspaces, other processes); one request of the full context (",
            ctx, " tokens) needs ", GiB(ctx_blocks * per_block), ": raise --gpu-memory-utilization or free the device"));
      }
    } else if (cpu && m.ok()) {
      const int64_t bytes = std::min(m->free_bytes / 16, kCpuKvCap);
      num_blocks = std::max<int64_t>(bytes / per_block, ctx_blocks);
      how = "1/16 of available RAM, at most 1 GiB";
      if (num_blocks * per_block > m->free_bytes) {
        return absl::InvalidArgumentError(absl::StrCat("one request of the full context (", ctx, " tokens) needs ",
                                                       GiB(ctx_blocks * per_block), " of KV cache; only ",
                                                       GiB(m->free_bytes), " of RAM is available"));
      }
    } else {
      num_blocks = std::max<int64_t>(kFallbackKvBytes / per_block, ctx_blocks);
      how = "default 256 MiB";
    }
  }
  num_blocks = std::min<int64_t>(num_blocks, int64_t{1} << 24);
  if (num_blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("the KV cache holds not even one block of ", bs, " tokens"));
  }
  plan.num_blocks = static_cast<int>(num_blocks);
  if (absl::Status s = backend.InitKvCache({plan.num_blocks, bs}); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("KV cache of ", plan.num_blocks, " blocks (", GiB(num_blocks * per_block),
                                               ", ", how, "): ", s.message()));
  }
  if (absl::StatusOr<MemoryInfo> m = backend.Memory(); m.ok()) {
    plan.memory = *m;
    if (cuda && warm && free_before > 0) {
      // What the warm-up steps added (buffers, workspaces, graphs): free before them minus free
      // after them, with the warm-up cache swapped for the final one accounted for.
      plan.activation_bytes = std::max<int64_t>(0, free_before - m->free_bytes - (m->kv_bytes - warm_kv_bytes));
    }
  }

  const int64_t kv_tokens = num_blocks * bs;
  if (queue_auto) {
    const int64_t by_rate = static_cast<int64_t>(plan.prefill_tokens_per_s * absl::ToDoubleSeconds(kAdmissionHorizon));
    plan.max_queued_tokens = std::max<int64_t>({kv_tokens, by_rate, warm ? 0 : 65536});
  } else {
    plan.max_queued_tokens = o.max_queued_tokens;
  }
  plan.max_queued_requests = o.max_queued_requests > 0 ? o.max_queued_requests : std::max(256, 4 * o.max_num_seqs);

  std::string mem;
  if (plan.memory.total_bytes > 0) {
    mem = absl::StrCat(cuda ? "device " : "host ", GiB(plan.memory.total_bytes), ", weights ", GiB(plan.memory.weights_bytes));
    if (cuda && warm) absl::StrAppend(&mem, ", activations ", GiB(plan.activation_bytes));
    absl::StrAppend(&mem, "; ");
  }
  plan.summary = absl::StrCat(
      "capacity: ", mem, "KV cache ", GiB(num_blocks * per_block), " = ", kv_tokens, " tokens (", num_blocks, " blocks of ", bs,
      ", ", how, "); steps of ", plan.max_batch_tokens, " tokens, ", o.max_num_seqs, " sequences",
      plan.prefill_tokens_per_s > 0 ? absl::StrFormat("; prefill %.0f tok/s measured", plan.prefill_tokens_per_s) : "",
      "; admission: ", plan.max_queued_tokens, " queued prompt tokens", queue_auto ? " (auto)" : "", ", ",
      plan.max_queued_requests, " queued requests", o.max_queued_requests > 0 ? "" : " (auto)");
  return plan;
}

}  // namespace sbserve
