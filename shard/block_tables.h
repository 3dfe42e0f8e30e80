// One rank's copy of the running sequences' KV block tables, kept between steps so that a step
// plan carries only what changed (plan/step_plan.h). Slot s owns the fixed row
// tables()[s * stride, (s + 1) * stride): the kernels read a sequence's table where it lives, so
// nothing is re-packed per step, and a step's checks cost O(changes + tokens), never O(context).
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "plan/paged_kv.h"
#include "plan/step_plan.h"

namespace kvshard {

struct BlockTableShape {
  int64_t slots = 0;       // sequences that may hold a table at once
  int64_t stride = 0;      // blocks one table may hold: the model's context in (logical) blocks
  int64_t num_blocks = 0;  // KV block ids are in [0, num_blocks)
  PagedKvGeometry geometry;
};

class BlockTables {
 public:
  static StatusOr<BlockTables> Create(const BlockTableShape& shape);

  // Checks `plan` against the shard's limits and the tables as they stand, then applies its
  // table changes. Nothing is changed when it fails. Every check is O(R + U + A + T + S + L):
  // token ids < vocab, slots in range, appended blocks in range and within a table's stride,
  // every token's position covered by its sequence's table, logits rows in the step.
  Status Apply(const StepPlan& plan, int64_t vocab_size, int64_t max_tokens);

  // int32 [slots, stride]: the rows the kernels' PagedKvView points into.
  const int32_t* tables() const { return tables_.data(); }
  int32_t* mutable_tables() { return tables_.data(); }
  const BlockTableShape& shape() const { return shape_; }
  int64_t length(int64_t slot) const { return lengths_[slot]; }  // blocks in the slot's table
  // KV eviction: the slot's table keeps its first `blocks` entries (the ranks and rank 0's block
  // manager shorten theirs alike after the step that compressed the sequence).
  void Truncate(int64_t slot, int64_t blocks);
  // Start of each sequence's table row for `plan` (ints from tables()), [S + 1] with the last
  // entry one row past the end; for a PagedKvView's indptr.
  void RowOffsets(const StepPlan& plan, int32_t* offsets) const;
  // KV slot (block * block_size + offset) of every token of an applied plan: [T]; -1 for a
  // token whose position another seq shard's pool holds.
  void Slots(const StepPlan& plan, int64_t* slots) const;

 private:
  BlockTableShape shape_;
  std::vector<int32_t> tables_;   // [slots, stride]
  std::vector<int64_t> lengths_;  // [slots]
};

}  // namespace kvshard
