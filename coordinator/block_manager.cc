#include "coordinator/block_manager.h"

namespace kvshard {

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size)
    : block_size_(block_size), refcount_(num_blocks, 0) {
  free_.reserve(num_blocks);
  // Pop order 0, 1, 2, ...: low block ids first, which keeps small runs easy to read in logs.
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

Status BlockManager::EnsureCapacity(int64_t seq, int64_t tokens) {
  std::vector<int32_t>& table = tables_[seq];
  const int64_t need = BlocksFor(tokens) - static_cast<int64_t>(table.size());
  if (need <= 0) return Status::Ok();
  if (need > free_blocks()) {
    if (table.empty()) tables_.erase(seq);
    return ResourceExhausted(
        "KV cache full: {} tokens need {} more blocks of {} but only {} of {} are free", tokens,
        need, block_size_, free_blocks(), total_blocks());
  }
  for (int64_t i = 0; i < need; ++i) {
    const int32_t b = free_.back();
    free_.pop_back();
    refcount_[b] = 1;
    table.push_back(b);
  }
  return Status::Ok();
}

void BlockManager::Free(int64_t seq) {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  for (int32_t b : it->second) {
    if (--refcount_[b] == 0) free_.push_back(b);
  }
  tables_.erase(it);
}

const std::vector<int32_t>& BlockManager::Table(int64_t seq) const {
  static const std::vector<int32_t> kEmpty;
  auto it = tables_.find(seq);
  return it == tables_.end() ? kEmpty : it->second;
}

}  // namespace kvshard
