// The declared tensor-parallel plan (DESIGN.md §5.5): which heads, MLP columns and vocabulary rows
// one rank owns. Column-split Wq/Wk/Wv/W_gate/W_up, row-split Wo/W_down, one all-reduce after each
// of the two row-split projections, and a vocabulary slice of the output head.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "plan/paged_kv.h"  // the kernel limits a layout is checked against
#include "shard/model_config.h"

namespace kvshard {

struct TpLayout {
  int tp = 1;
  int rank = 0;
  int64_t q_heads = 0, q_head0 = 0;    // this rank's query heads [q_head0, q_head0 + q_heads)
  int64_t kv_heads = 0, kv_head0 = 0;  // this rank's KV heads
  int64_t kv_replicas = 1;             // ranks holding each KV head (> 1 when tp > n_kv_heads)
  int64_t ffn = 0, ffn0 = 0;           // this rank's MLP columns
  int64_t vocab = 0, vocab0 = 0;       // this rank's rows of the output head
  std::vector<int> vocab_counts;       // every rank's vocabulary slice size
};

// The layout of `rank` among `tp` ranks, or an error that says why the model cannot be split that
// way and which tensor-parallel sizes would work.
StatusOr<TpLayout> MakeTpLayout(const ModelConfig& config, int tp, int rank);

// Every tp in 1..max_tp that MakeTpLayout accepts for this model.
std::vector<int> ValidTpSizes(const ModelConfig& config, int max_tp = 64);

}  // namespace kvshard
