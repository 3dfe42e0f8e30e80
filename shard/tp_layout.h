// The declared parallel plan (DESIGN.md §5.5, §8): which heads, KV positions, MLP columns and
// vocabulary rows one rank owns.
//
// The world is a grid of head_groups x seq_shards ranks; rank r is head group r / seq_shards, seq
// shard r % seq_shards (a group's shards are neighbours, so they share a host where they can).
//   wq, wk, wv        column-split over the head groups: a group's ranks all hold its heads' rows
//                     (replicated seq_shards times) and compute the same Q, K, V;
//   KV cache          a group's KV heads; within the group, every sequence's positions are dealt
//                     block by block over its seq shards (plan/paged_kv.h), so each shard's pool
//                     holds a disjoint share of them;
//   attention         each shard attends over its own positions and returns its partial output
//                     with the rows' log-sum-exp; one all-gather inside the group brings every
//                     shard's partials, merged exactly (rescale and sum);
//   wo                row-split over the whole world: each rank holds the rows of its slice
//                     (o_col0, o_cols) of its group's attention output columns;
//   w_gate, w_up      column-split over the whole world; w_down row-split over it;
//   lm_head           split by vocabulary rows over the whole world, the slices gathered to rank 0.
// One all-reduce over the world follows wo and one follows w_down, as in plain tensor parallelism
// (which is the grid tp x 1).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "plan/paged_kv.h"  // the kernel limits a layout is checked against
#include "shard/model_config.h"

namespace kvshard {

struct TpLayout {
  int tp = 1;  // ranks in the world: head_groups * seq_shards
  int rank = 0;
  int head_groups = 1, seq_shards = 1;
  int group = 0, shard = 0;            // rank = group * seq_shards + shard
  int64_t q_heads = 0, q_head0 = 0;    // this rank's (its group's) query heads
  int64_t kv_heads = 0, kv_head0 = 0;  // its group's KV heads
  int64_t kv_replicas = 1;             // head groups holding each KV head (> 1: groups > KV heads)
  int64_t o_cols = 0, o_col0 = 0;      // its columns of the group's attention output [T, q_heads
                                       // * head_dim]: the rows of wo it holds (all when 1 shard)
  int64_t ffn = 0, ffn0 = 0;           // this rank's MLP columns
  int64_t vocab = 0, vocab0 = 0;       // this rank's rows of the output head
  std::vector<int> vocab_counts;       // every rank's vocabulary slice size

  // Where this pool's positions come from (one pool when seq_shards is 1).
  PagedKvGeometry Geometry(int64_t block_size) const {
    return PagedKvGeometry{block_size, seq_shards, shard};
  }
};

// The layout of `rank` in a world of `world` ranks with `seq_shards` seq shards per head group,
// or an error that says why the model cannot be split that way and which grids would work.
StatusOr<TpLayout> MakeTpLayout(const ModelConfig& config, int world, int rank, int seq_shards = 1);

// Every tp in 1..max_tp that MakeTpLayout accepts for this model as a heads-only grid (tp x 1).
std::vector<int> ValidTpSizes(const ModelConfig& config, int max_tp = 64);
// Every grid (head_groups, seq_shards) of `world` ranks that MakeTpLayout accepts.
std::vector<std::pair<int, int>> ValidGrids(const ModelConfig& config, int world);
// "2x4" style list of the valid grids of `world` ranks, "none" when there is none.
std::string DescribeGrids(const ModelConfig& config, int world);

}  // namespace kvshard
