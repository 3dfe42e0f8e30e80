#include "plan/paged_kv.h"

#include <fmt/format.h>

namespace kvshard {

std::string PagedKvGeometry::Check(int64_t num_blocks, int64_t max_positions) const {
  if (block_size <= 0 || block_size > kMaxKvBlockSize) {
    return fmt::format("KV block size must be in [1, {}], got {}", kMaxKvBlockSize, block_size);
  }
  if (seq_shards < 1 || seq_shards > kMaxMergeShards || shard < 0 || shard >= seq_shards) {
    return fmt::format("KV shard {} of {} seq shards", shard, seq_shards);
  }
  if (num_blocks < 0 || num_blocks > kMaxKvBlocks) {
    return fmt::format("KV pool of {} blocks: the kernels index at most {}", num_blocks,
                       kMaxKvBlocks);
  }
  if (max_positions < 0 || max_positions > kMaxKvPositions) {
    return fmt::format("a context of {} positions: the kernels index at most {}", max_positions,
                       kMaxKvPositions);
  }
  return {};
}

}  // namespace kvshard
