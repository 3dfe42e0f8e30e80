// The paged KV cache's geometry, defined once for the host (block manager, block tables, step
// staging, the backends' checks at load) and the kernels (CPU and CUDA, host and device code).
//
// The cache of one layer on one rank is a pool of blocks: K and V each
//   KV [num_blocks, block_size, kv_heads, head_dim]
// A sequence's positions 0..n-1 live in the blocks its table lists: position p is offset
// p % block_size of block table[p / block_size], the pool row (slot) block * block_size + offset.
// A batch's tables are one FlashInfer-style view (indptr + indices) read by every layer.
//
// Positions may also be sharded (the long-context layout): the sequence's blocks of positions are
// dealt round-robin over `seq_shards` pools, so global block b lives on shard b % seq_shards as
// that shard's local block b / seq_shards, and a shard's table lists only its local blocks. With
// one shard (the default) local and global blocks are the same.
#pragma once

#include <cstdint>
#include <string>

#if defined(__CUDACC__)
#define KVS_HOST_DEVICE __host__ __device__
#else
#define KVS_HOST_DEVICE
#endif

namespace kvshard {

// The kernels index a block's offsets, a step's tokens and a table's entries with 32-bit ints.
inline constexpr int64_t kMaxKvBlockSize = int64_t{1} << 16;
inline constexpr int64_t kMaxKvPositions = (int64_t{1} << 31) - 1;  // per sequence
inline constexpr int64_t kMaxKvBlocks = (int64_t{1} << 31) - 2;     // per pool (and a scratch one)
// The attention kernels keep one KV head's query group (kMaxQueryGroup heads of kMaxHeadDim) in
// registers or on the stack; the CUDA kernel has tighter limits of its own (AttentionSupported).
inline constexpr int64_t kMaxHeadDim = 512;
inline constexpr int64_t kMaxQueryGroup = 128;
// Seq shards one head group may have (the merge keeps one weight per shard on the stack).
inline constexpr int64_t kMaxMergeShards = 256;

struct PagedKvGeometry {
  int64_t block_size = 16;
  int64_t seq_shards = 1;  // pools the positions are dealt over, block by block
  int64_t shard = 0;       // which of them this pool is

  // This pool's (local) blocks that hold its share of positions [0, tokens).
  KVS_HOST_DEVICE int64_t BlocksFor(int64_t tokens) const {
    const int64_t global = (tokens + block_size - 1) / block_size;
    if (seq_shards == 1) return global;
    return global > shard ? (global - shard + seq_shards - 1) / seq_shards : 0;
  }
  // Whether position `pos` lives in this pool.
  KVS_HOST_DEVICE bool Owns(int64_t pos) const {
    return seq_shards == 1 || (pos / block_size) % seq_shards == shard;
  }
  // The index in this pool's table of the block that holds `pos` (a position it owns).
  KVS_HOST_DEVICE int64_t LocalBlock(int64_t pos) const {
    return seq_shards == 1 ? pos / block_size : pos / block_size / seq_shards;
  }
  // The first global position of local block `local`.
  KVS_HOST_DEVICE int64_t BlockStart(int64_t local) const {
    return (local * seq_shards + shard) * block_size;
  }
  // Whether a table of `blocks` local blocks covers position `pos` (which this pool owns).
  KVS_HOST_DEVICE bool Covers(int64_t blocks, int64_t pos) const {
    return pos >= 0 && Owns(pos) && LocalBlock(pos) < blocks;
  }
  // Whether a table of `blocks` entries covers position `pos` on every shard: each entry is one
  // block id used by every shard's pool, so it spans block_size * seq_shards positions (the
  // block manager's logical block).
  KVS_HOST_DEVICE bool CoversEverywhere(int64_t blocks, int64_t pos) const {
    return pos >= 0 && pos / (block_size * seq_shards) < blocks;
  }
  // The pool row of offset `offset` in block `block`.
  KVS_HOST_DEVICE int64_t SlotOf(int32_t block, int64_t offset) const {
    return static_cast<int64_t>(block) * block_size + offset;
  }
  // The pool row of position `pos` (owned here) of the sequence whose table is `table`.
  KVS_HOST_DEVICE int64_t Slot(const int32_t* table, int64_t pos) const {
    return SlotOf(table[LocalBlock(pos)], pos % block_size);
  }

  // Empty when the kernels handle this geometry for a pool of `num_blocks` blocks and sequences
  // of `max_positions`; otherwise what is out of range.
  std::string Check(int64_t num_blocks, int64_t max_positions) const;
};

struct PagedKvView {
  const int32_t* block_indptr;   // [seqs + 1]: sequence s owns indices[indptr[s], indptr[s+1])
  const int32_t* block_indices;  // [nnz_blocks]
  PagedKvGeometry geometry;

  KVS_HOST_DEVICE const int32_t* Table(int64_t seq) const {
    return block_indices + block_indptr[seq];
  }
};

}  // namespace kvshard
