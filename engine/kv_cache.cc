#include "engine/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace sbserve {

KvBlockAllocator::KvBlockAllocator(int num_blocks, int block_size)
    : num_blocks_(num_blocks), block_size_(block_size), blocks_(static_cast<size_t>(std::max(num_blocks, 0))) {
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
    int32_t id;
    if (!free_.empty()) {
      id = free_.back();
      free_.pop_back();
    } else {
      id = lru_.front();  // evict the least recently used cached block
      Unpublish(id);      // moves it to free_
      free_.pop_back();
    }
    blocks_[static_cast<size_t>(id)].refs = 1;
    table.push_back(id);
  }
  return absl::OkStatus();
}

void KvBlockAllocator::Free(std::vector<int32_t>& table) {
  // Tail first: the end of a sequence is the least likely part to be shared, so it is evicted first.
  for (auto it = table.rbegin(); it != table.rend(); ++it) {
    Block& b = blocks_[static_cast<size_t>(*it)];
    if (--b.refs > 0) continue;
    if (b.published) {
      b.lru_pos = lru_.insert(lru_.end(), *it);
    } else {
      free_.push_back(*it);
    }
  }
  table.clear();
}

uint64_t KvBlockAllocator::ChainHash(uint64_t parent, std::span<const int32_t> tokens) {
  // splitmix64's finalizer over the parent hash and each token; a match is verified against the
  // stored tokens anyway (see the header), so the hash only has to spread well.
  auto mix = [](uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  uint64_t h = mix(parent + 0x9e3779b97f4a7c15ull);
  for (int32_t t : tokens) h = mix(h ^ (static_cast<uint64_t>(static_cast<uint32_t>(t)) + 0x9e3779b97f4a7c15ull));
  return h == 0 ? 1 : h;  // 0 is the empty chain
}

int32_t KvBlockAllocator::Find(uint64_t hash, std::span<const int32_t> tokens, const PrefixChain& chain) const {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return -1;
  const Block& b = blocks_[static_cast<size_t>(it->second)];
  if (!b.published || b.parent != chain.parent || b.parent_gen != chain.parent_gen) return -1;
  if (!std::equal(b.tokens.begin(), b.tokens.end(), tokens.begin(), tokens.end())) return -1;
  return it->second;
}

void KvBlockAllocator::Unpublish(int32_t id) {
  Block& b = blocks_[static_cast<size_t>(id)];
  if (!b.published) return;
  auto it = by_hash_.find(b.hash);
  if (it != by_hash_.end() && it->second == id) by_hash_.erase(it);
  b.published = false;
  b.gen++;  // chains through this block (published children, sequences' parents) go stale
  b.tokens.clear();
  if (b.refs == 0) {
    lru_.erase(b.lru_pos);
    free_.push_back(id);
  }
}

int KvBlockAllocator::AcquirePrefix(std::span<const int32_t> tokens, int64_t max_tokens, std::vector<int32_t>& table,
                                    PrefixChain& chain) {
  chain = PrefixChain{};
  const int64_t limit = std::min<int64_t>(max_tokens, static_cast<int64_t>(tokens.size()));
  while (static_cast<int64_t>(chain.blocks + 1) * block_size_ <= limit) {
    std::span<const int32_t> blk = tokens.subspan(static_cast<size_t>(chain.blocks) * block_size_, block_size_);
    const uint64_t h = hash_(chain.hash, blk);
    const int32_t id = Find(h, blk, chain);
    if (id < 0) break;
    Block& b = blocks_[static_cast<size_t>(id)];
    if (b.refs++ == 0) lru_.erase(b.lru_pos);
    table.push_back(id);
    chain.blocks++;
    chain.hash = h;
    chain.parent = id;
    chain.parent_gen = b.gen;
  }
  return chain.blocks * block_size_;
}

void KvBlockAllocator::Publish(std::span<const int32_t> tokens, const std::vector<int32_t>& table, int full_blocks,
                               PrefixChain& chain) {
  full_blocks = std::min<int>(full_blocks, static_cast<int>(table.size()));
  while (!chain.broken && chain.blocks < full_blocks &&
         static_cast<size_t>(chain.blocks + 1) * block_size_ <= tokens.size()) {
    if (chain.parent >= 0) {
      const Block& p = blocks_[static_cast<size_t>(chain.parent)];
      if (!p.published || p.gen != chain.parent_gen) {  // evicted or replaced since: the chain is lost
        chain.broken = true;
        break;
      }
    }
    std::span<const int32_t> blk = tokens.subspan(static_cast<size_t>(chain.blocks) * block_size_, block_size_);
    const uint64_t h = hash_(chain.hash, blk);
    int32_t id = Find(h, blk, chain);
    if (id < 0) {
      id = table[static_cast<size_t>(chain.blocks)];
      Block& b = blocks_[static_cast<size_t>(id)];
      if (b.published) {  // cannot happen: a sequence's own unmatched block is private
        chain.broken = true;
        break;
      }
      // A stale entry (its parent gone) or a colliding one under this hash gives way.
      if (auto it = by_hash_.find(h); it != by_hash_.end()) Unpublish(it->second);
      b.published = true;
      b.hash = h;
      b.parent = chain.parent;
      b.parent_gen = chain.parent_gen;
      b.tokens.assign(blk.begin(), blk.end());
      by_hash_[h] = id;
    }
    chain.blocks++;
    chain.hash = h;
    chain.parent = id;
    chain.parent_gen = blocks_[static_cast<size_t>(id)].gen;
  }
}

}  // namespace sbserve
