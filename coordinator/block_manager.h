// Host-side bookkeeping of the KV blocks that every rank's pool holds (rank 0 only): free list,
// reference counts, a block table per sequence, and the prefix cache. The pools on the ranks are
// identical in block count, so one table addresses the same block on every rank. With seq shards
// (shard/tp_layout.h) its blocks are logical: `block_size` here is the pools' block size times
// the seq shards, and block id i is physical block i in every shard's pool, each holding its
// share of the positions (plan/paged_kv.h), so admission counts every shard at once.
//
// Prefix cache: a full block whose KV is computed can be registered under its content key
// (the salt, the block it follows in its sequence, and its own token ids). A later sequence with
// the same salt and the same leading tokens shares those blocks (refcounted) instead of
// recomputing them. Keys are hashed for lookup, but every hit is confirmed by comparing the key
// itself, and a block's parent is identified by (block id, generation) rather than by hash, so by
// induction a hit always means the same salt and the same tokens from position 0: a hash
// collision can never serve wrong KV. A registered block whose last user ends stays cached; it
// counts as free (it is reclaimed, least recently used first, when the free list runs out).
#pragma once

#include <cstdint>
#include <list>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/status.h"
#include "plan/paged_kv.h"

namespace kvshard {

class BlockManager {
 public:
  BlockManager(int64_t num_blocks, int64_t block_size);

  int64_t block_size() const { return block_size_; }
  int64_t total_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  // Blocks a new allocation can take: never used, or cached with no user.
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  // Free blocks that still hold a reusable prefix.
  int64_t cached_blocks() const { return static_cast<int64_t>(lru_.size()); }
  int64_t BlocksFor(int64_t tokens) const { return PagedKvGeometry{block_size_}.BlocksFor(tokens); }

  // Grows `seq`'s table to cover `tokens` positions. All or nothing: ResourceExhausted (with the
  // numbers) when the free blocks do not suffice, and then nothing was taken.
  Status EnsureCapacity(int64_t seq, int64_t tokens);
  // Drops `seq`'s references; blocks whose count reaches zero return to the free list (or to the
  // cache's LRU list when they are registered).
  void Free(int64_t seq);
  // Sliding-window attention: drops `seq`'s references to the blocks wholly before `position`
  // (no layer's window reaches them again), which return to the free list or the cache's LRU
  // list as in Free; their table entries become kReleased (the table keeps its positions).
  // Returns how many were released.
  // keep_tokens > 0 (attention sinks): the blocks holding positions [0, keep_tokens) stay.
  int64_t ReleaseBefore(int64_t seq, int64_t position, int64_t keep_tokens = 0);
  static constexpr int32_t kReleased = -1;
  // KV eviction: `seq` keeps the first `blocks` entries of its table (its KV was compacted into
  // them); the others are dropped as in Free. Returns how many blocks it released.
  int64_t Truncate(int64_t seq, int64_t blocks);
  // Blocks `seq` holds now (its table less the released entries).
  int64_t HeldBlocks(int64_t seq) const;
  // Sequences whose tables Free dropped since the last call (the step plans tell the ranks).
  std::vector<int64_t> TakeReleased() { return std::exchange(released_, {}); }
  // The sequence's blocks in position order (empty for an unknown sequence).
  const std::vector<int32_t>& Table(int64_t seq) const;
  int64_t live_sequences() const { return static_cast<int64_t>(seqs_.size()); }

  // For a new sequence `seq` (no table yet): shares the longest run of cached full blocks that
  // matches tokens[0, max_tokens) under `salt`, and returns the number of tokens it covers (a
  // multiple of block_size). The blocks are appended to the sequence's table.
  int64_t MatchPrefix(int64_t seq, const int32_t* tokens, int64_t max_tokens,
                      const std::string& salt);
  // Registers `seq`'s full blocks within positions [0, computed) (their KV is computed) in the
  // prefix cache. tokens: the sequence's ids, at least `computed` of them.
  void CommitFullBlocks(int64_t seq, const int32_t* tokens, int64_t computed,
                        const std::string& salt);

  int64_t cache_hits() const { return cache_hits_; }        // blocks served from the cache
  int64_t cache_queries() const { return cache_queries_; }  // full blocks looked up

 private:
  struct Block {
    int32_t refcount = 0;
    uint64_t generation = 0;  // bumped whenever the block's content is forgotten
    bool registered = false;  // in index_ under `key`
    uint64_t hash = 0;
    int32_t parent = -1;  // key: the block before it in its sequence (-1: first block)
    uint64_t parent_generation = 0;
    std::string salt;
    std::vector<int32_t> tokens;  // [block_size]
    std::list<int32_t>::iterator lru_pos;
  };
  struct Seq {
    std::vector<int32_t> table;
    int64_t committed = 0;  // leading blocks already registered or matched
  };

  uint64_t KeyHash(int32_t parent, uint64_t parent_generation, const std::string& salt,
                   const int32_t* tokens) const;
  bool KeyEquals(const Block& b, int32_t parent, uint64_t parent_generation,
                 const std::string& salt, const int32_t* tokens) const;
  // Takes a block with no user: the free list first, else the least recently used cached one.
  int32_t TakeBlock();
  void Forget(int32_t block);  // drops a block's registration
  // Drops one user of a block; with none left it is free (or cached, when registered).
  void Unref(int32_t block);

  int64_t block_size_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;  // stack of unregistered blocks with no user
  std::list<int32_t> lru_;     // registered blocks with no user, least recently used first
  std::unordered_map<uint64_t, int32_t> index_;  // key hash -> registered block
  std::unordered_map<int64_t, Seq> seqs_;
  std::vector<int64_t> released_;
  int64_t cache_hits_ = 0;
  int64_t cache_queries_ = 0;
};

}  // namespace kvshard
