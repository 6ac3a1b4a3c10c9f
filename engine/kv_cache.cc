#include "engine/kv_cache.h"

#include "absl/strings/str_cat.h"

namespace sbserve {

KvBlockAllocator::KvBlockAllocator(int num_blocks, int block_size)
    : num_blocks_(num_blocks), block_size_(block_size) {
  free_.reserve(static_cast<size_t>(num_blocks));
  // Hand out low ids first (stack top = last element).
  for (int i = num_blocks - 1; i >= 0; --i) free_.push_back(i);
}

absl::Status KvBlockAllocator::EnsureCapacity(std::vector<int32_t>& table, int64_t tokens) {
  const int need = BlocksFor(tokens) - static_cast<int>(table.size());
  if (need <= 0) return absl::OkStatus();
  if (need > num_free()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache full: need ", need, " blocks, ", num_free(), " free of ", num_blocks_));
  }
  for (int i = 0; i < need; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

void KvBlockAllocator::Free(std::vector<int32_t>& table) {
  for (int32_t b : table) free_.push_back(b);
  table.clear();
}

}  // namespace sbserve
