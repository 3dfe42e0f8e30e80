// Rank 0's side of the persistent block tables (shard/block_tables.h): which table slot each
// running sequence has on every rank, how much of its block table the ranks already know, and so
// what the next step plan must carry: only the tables released and the block ids appended since.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "plan/step_plan.h"

namespace kvshard {

class PlanBuilder {
 public:
  explicit PlanBuilder(int64_t slots);

  // Starts the next plan: clears it and lists the tables released since the last one.
  void Begin(StepPlan* plan);
  // Adds positions [begin, end) of a sequence (tokens: its ids) as one chunk of the step, with
  // the logits of positions [logits_from, end) wanted (none when logits_from == end; the last
  // position alone to sample the next token). `table` is the sequence's block table on rank 0;
  // its first BlocksFor(end) entries must be final. ResourceExhausted when no table slot is free
  // (more sequences than the shards have slots).
  // shift > 0 (KV eviction): position p is cached at index p - shift (plan.positions) and
  // rotated by RoPE at p (plan.rope_offsets, present once a sequence of the step has one).
  Status Add(StepPlan* plan, int64_t seq, const std::vector<int32_t>& table, int64_t blocks_needed,
             const int32_t* tokens, int64_t begin, int64_t end, int64_t logits_from,
             int64_t shift = 0);
  // KV eviction: the sequence's table was cut to its first `blocks` entries on every rank.
  void Truncate(int64_t seq, int64_t blocks);
  // The sequence's table is gone on rank 0 (finished, preempted, or freed to recompute): its slot
  // is released in the next plan and may be given to another sequence there (not before).
  void Release(int64_t seq);
  int64_t live() const { return static_cast<int64_t>(seqs_.size()); }

 private:
  struct Entry {
    int32_t slot = 0;
    int64_t sent = 0;  // leading table entries every rank has
  };
  std::unordered_map<int64_t, Entry> seqs_;
  std::vector<int32_t> free_slots_;
  std::vector<int32_t> released_;  // for the next plan
};

}  // namespace kvshard
