// The step plan: what rank 0 tells every shard to compute in one forward step. Types only (no
// ranks, no kernels): shard/, transport/ and coordinator/ all speak it.
//
// Every rank keeps its own copy of each running sequence's block table, in a numbered slot
// (shard/block_tables.h), so a plan carries only what changed since the previous one: tables
// released, block ids appended, and the step's tokens. Its size depends on the batch, never on
// how long the sequences are.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "common/status.h"

namespace kvshard {

struct StepPlan {
  enum class Kind : int32_t { kForward = 0, kShutdown = 1 };
  Kind kind = Kind::kForward;
  // Table changes, applied in this order before the step runs.
  std::vector<int32_t> released_slots;  // [R] slots whose tables are emptied (sequence ended)
  std::vector<int32_t> append_slots;    // [U] slots whose tables grow
  std::vector<int32_t> append_indptr;   // [U+1] slot append_slots[u] gains the blocks
                                        //       append_blocks[append_indptr[u], [u+1])
  std::vector<int32_t> append_blocks;   // [A] KV block ids, in position order per slot
  // The step.
  std::vector<int32_t> tokens;       // [T] token ids of every sequence, concatenated
  std::vector<int32_t> positions;    // [T] position of each token in its sequence
  std::vector<int32_t> qo_indptr;    // [S+1] sequence s has tokens [qo_indptr[s], [s+1])
  std::vector<int32_t> seq_slots;    // [S] the table slot of each sequence
  std::vector<int32_t> logits_rows;  // [L] token indices whose logits are gathered to rank 0
  // KV eviction (plan/kv_eviction.h). A sequence whose prompt was compressed keeps its later
  // tokens' KV at cache index = position - offset: `positions` above are those cache indices
  // (the KV slots and the causal bound), and RoPE rotates by cache index + rope_offsets[s].
  // Empty when no sequence of the step has an offset.
  std::vector<int32_t> rope_offsets;  // [S] or empty
  // Sequences (indices into the step's) whose chunk ends their prompt and that compress its KV,
  // after the step, to evict_keep[e] positions per KV head.
  std::vector<int32_t> evict_seqs;  // [E]
  std::vector<int32_t> evict_keep;  // [E]

  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  int64_t num_seqs() const { return qo_indptr.empty() ? 0 : qo_indptr.size() - 1; }
  // Empties every field (capacity kept: no allocation in the steady state).
  void Clear();
};

// The wire form: a fixed header (kind and the field sizes), then every field's ids in one
// int32 payload.
constexpr int kStepPlanHeaderFields = 13;
using StepPlanHeader = std::array<int32_t, kStepPlanHeaderFields>;

StepPlanHeader StepPlanHeaderOf(const StepPlan& plan);
// Sizes the plan's fields from a received header; an error for a corrupt one (negative or
// absurd sizes), before anything is allocated.
Status ShapeStepPlan(const StepPlanHeader& header, StepPlan* plan, size_t* payload_ints);
// Writes the fields into `payload` (resized), or reads them back from it.
void PackStepPlan(const StepPlan& plan, std::vector<int32_t>* payload);
void UnpackStepPlan(const std::vector<int32_t>& payload, StepPlan* plan);
// Bytes the broadcast of `plan` sends: header and payload.
int64_t StepPlanWireBytes(const StepPlan& plan);

}  // namespace kvshard
