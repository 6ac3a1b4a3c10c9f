#include "engine/batch.h"

#include "absl/strings/str_cat.h"

namespace sbserve {

absl::Status ValidateBatch(const Batch& batch, int64_t vocab_size, int num_blocks, int block_size,
                           size_t logits_size) {
  const int B = batch.num_seqs();
  const int N = batch.num_tokens();
  if (B <= 0 || batch.cu_seqlens_q.front() != 0 || batch.cu_seqlens_q.back() != N) {
    return absl::InvalidArgumentError("cu_seqlens_q must start at 0 and end at the token count");
  }
  if (static_cast<int>(batch.context_lens.size()) != B || static_cast<int>(batch.positions.size()) != N ||
      batch.max_blocks_per_seq < 0 ||
      batch.block_tables.size() != static_cast<size_t>(B) * batch.max_blocks_per_seq) {
    return absl::InvalidArgumentError("batch arrays have inconsistent sizes");
  }
  for (int b = 0; b < B; ++b) {
    const int len = batch.cu_seqlens_q[b + 1] - batch.cu_seqlens_q[b];
    if (len <= 0 || batch.context_lens[b] < len) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", b, ": bad chunk length ", len));
    }
    for (int i = 0; i < len; ++i) {
      if (batch.positions[batch.cu_seqlens_q[b] + i] != batch.context_lens[b] - len + i) {
        return absl::InvalidArgumentError("positions disagree with context_lens and cu_seqlens_q");
      }
    }
    const int64_t need = (static_cast<int64_t>(batch.context_lens[b]) + block_size - 1) / block_size;
    if (need > batch.max_blocks_per_seq) return absl::InvalidArgumentError("block table too short");
    for (int64_t i = 0; i < need; ++i) {
      const int32_t blk = batch.block_tables[static_cast<size_t>(b) * batch.max_blocks_per_seq + i];
      if (blk < 0 || blk >= num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", b, ": block id ", blk, " out of range"));
      }
    }
  }
  for (int32_t t : batch.tokens) {
    if (t < 0 || t >= vocab_size) return absl::InvalidArgumentError(absl::StrCat("token id ", t, " out of range"));
  }
  for (int32_t r : batch.logit_rows) {
    if (r < 0 || r >= N) return absl::InvalidArgumentError(absl::StrCat("logit row ", r, " out of range"));
  }
  if (logits_size < batch.logit_rows.size() * static_cast<size_t>(vocab_size)) {
    return absl::InvalidArgumentError("logits buffer too small");
  }
  return absl::OkStatus();
}

}  // namespace sbserve
