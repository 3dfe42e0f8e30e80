// What a backend's kernels read of one step, prepared on the host once for every backend: every
// array of the step in one buffer (a CUDA backend pins it and copies it to a device mirror in one
// transfer), each token's KV slot and sequence, each sequence's row in the persistent block
// tables, and, for a decode step replayed from a CUDA graph, padding up to the graph's batch-size
// bucket.
//
// Padding tokens are sequences of their own: token 0 at position 0 in the scratch table row,
// whose one block is the pool's scratch block (one past the ones the block manager hands out), so
// they read and write only it. A backend without graphs stages with no padding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/status.h"
#include "plan/step_plan.h"
#include "shard/block_tables.h"

namespace kvshard {

// Byte offsets of the arrays in the staging buffer (and any device mirror), 256-byte aligned.
struct StepInputsLayout {
  int64_t max_tokens = 0;  // tokens per step, padding included
  size_t slots = 0;        // int64 [max_tokens]
  size_t tokens = 0;       // int32 [max_tokens]
  size_t positions = 0;    // int32 [max_tokens] cache index of each token
  size_t rope_positions =
      0;                    // int32 [max_tokens] position RoPE rotates by (StepPlan::rope_offsets)
  size_t token_seq = 0;     // int32 [max_tokens]
  size_t tiles = 0;         // int32 [max_tokens + 1] (the CUDA attention's tiles)
  size_t block_indptr = 0;  // int32 [max_tokens + 1] (a sequence has at least one token)
  size_t logits_rows = 0;   // int32 [max_tokens]
  size_t bytes = 0;

  static StepInputsLayout Make(int64_t max_tokens);
};

// Typed pointers into a buffer with that layout (host staging or device mirror).
struct StepInputs {
  int64_t* slots;
  int32_t* tokens;
  int32_t* positions;
  int32_t* rope_positions;
  int32_t* token_seq;
  int32_t* tiles;
  int32_t* block_indptr;
  int32_t* logits_rows;

  static StepInputs At(void* base, const StepInputsLayout& layout);
};

struct StepPadding {
  bool pad_decode = false;    // pad decode steps to their bucket (when graphs replay them)
  int32_t scratch_block = 0;  // the pool's extra block for padding tokens
  int32_t scratch_slot = 0;   // the extra table row, holding only the scratch block
};

// What the kernels run for one step.
struct StagedStep {
  int64_t tokens = 0;                // tokens staged, padding included
  int64_t real_tokens = 0;           // tokens of the plan
  bool decode = false;               // one token per sequence
  bool padded = false;               // staged for the graph of bucket `tokens`
  int64_t rows = 0;                  // logits rows computed (all tokens when padded)
  std::vector<int32_t> result_rows;  // for each of plan.logits_rows, its computed row
  size_t upload_bytes = 0;           // the prefix of the staging buffer that holds the step
};

// The bucket (graph) a decode step of `seqs` sequences runs in: the next power of two, at most
// max_tokens.
int64_t DecodeBucket(int64_t seqs, int64_t max_tokens);

// Fills the staging buffer at `host_base` (all but the tiles) and `step` (reused: no allocation
// once its result_rows has grown) for a plan that `tables` accepted (BlockTables::Apply). An error
// when the plan needs more room than the layout has.
Status StageStepInputs(const StepPlan& plan, const BlockTables& tables,
                       const StepInputsLayout& layout, const StepPadding& padding, void* host_base,
                       StagedStep* step);

}  // namespace kvshard
