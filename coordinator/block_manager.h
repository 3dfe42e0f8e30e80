// Host-side bookkeeping of the KV blocks that every rank's pool holds (rank 0 only): free list,
// reference counts and a block table per sequence. The pools on the ranks are identical in
// block count, so one table addresses the same block on every rank.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace kvshard {

class BlockManager {
 public:
  BlockManager(int64_t num_blocks, int64_t block_size);

  int64_t block_size() const { return block_size_; }
  int64_t total_blocks() const { return static_cast<int64_t>(refcount_.size()); }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t BlocksFor(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // Grows `seq`'s table to cover `tokens` positions. All or nothing: ResourceExhausted (with the
  // numbers) when the free blocks do not suffice, and then nothing was taken.
  Status EnsureCapacity(int64_t seq, int64_t tokens);
  // Drops `seq`'s references; blocks whose count reaches zero return to the free list.
  void Free(int64_t seq);
  // The sequence's blocks in position order (empty for an unknown sequence).
  const std::vector<int32_t>& Table(int64_t seq) const;
  int64_t live_sequences() const { return static_cast<int64_t>(tables_.size()); }

 private:
  int64_t block_size_;
  std::vector<int32_t> free_;      // stack of free block ids
  std::vector<int32_t> refcount_;  // [num_blocks]
  std::unordered_map<int64_t, std::vector<int32_t>> tables_;
};

}  // namespace kvshard
