// The step plan: what rank 0 tells every shard to compute in one forward step. It carries no
// request state, only tokens, positions and the batch's view of the paged KV cache.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "transport/communicator.h"

namespace kvshard {

struct StepPlan {
  enum class Kind : int32_t { kForward = 0, kShutdown = 1 };
  Kind kind = Kind::kForward;
  std::vector<int32_t> tokens;         // [T] token ids of every sequence, concatenated
  std::vector<int32_t> positions;      // [T] position of each token in its sequence
  std::vector<int32_t> qo_indptr;      // [S+1] sequence s has tokens [qo_indptr[s], qo_indptr[s+1])
  std::vector<int32_t> block_indptr;   // [S+1] sequence s has blocks [block_indptr[s], ...[s+1])
  std::vector<int32_t> block_indices;  // [nnz] KV block ids, in position order per sequence
  std::vector<int32_t> logits_rows;    // [L] token indices whose logits are gathered to rank 0

  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  int64_t num_seqs() const { return qo_indptr.empty() ? 0 : qo_indptr.size() - 1; }
};

// Checks that a plan is self-consistent and within the shard's limits, so a corrupt or hostile
// plan is an error, never an out-of-bounds access: every token id < vocab, every block id <
// num_blocks, every position covered by its sequence's blocks, sizes within max_tokens.
Status ValidateStepPlan(const StepPlan& plan, int64_t vocab_size, int64_t num_blocks,
                        int64_t block_size, int64_t max_tokens);

// Rank `root` sends `plan`; every other rank receives into `plan`.
Status BroadcastStepPlan(Communicator& comm, StepPlan* plan, int root);

}  // namespace kvshard
