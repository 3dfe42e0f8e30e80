// A step plan as the device model consumes it: every array in one host buffer (pinned) that one
// cudaMemcpyAsync copies to its device mirror, the per-token slots and sequence ids worked out on
// the host, the attention tiles, and, for a decode step replayed from a CUDA graph, padding up to
// the graph's batch-size bucket. Plain host code: unit-tested without a GPU.
//
// The block tables are not in the plan: they persist on the device (one row per table slot, the
// rows of shard/block_tables.h plus a scratch row), and a step uploads only the entries it
// appended. Padding tokens are sequences of their own: token 0 at position 0 in the scratch row,
// whose one block is the pool's scratch block (one past the ones the block manager hands out), so
// they read and write only it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/status.h"
#include "kernels/cuda/launch_config.h"
#include "plan/step_plan.h"
#include "shard/block_tables.h"

namespace kvshard::cuda {

// Byte offsets of the arrays in the staging buffer (and its device mirror), 256-byte aligned.
struct DevicePlanLayout {
  int64_t max_tokens = 0;   // tokens per step, padding included
  size_t slots = 0;         // int64 [max_tokens]
  size_t tokens = 0;        // int32 [max_tokens]
  size_t positions = 0;     // int32 [max_tokens]
  size_t token_seq = 0;     // int32 [max_tokens]
  size_t tiles = 0;         // int32 [max_tokens + 1]
  size_t block_indptr = 0;  // int32 [max_tokens + 1] (a sequence has at least one token)
  size_t logits_rows = 0;   // int32 [max_tokens]
  size_t bytes = 0;

  static DevicePlanLayout Make(int64_t max_tokens);
};

// Typed pointers into a buffer with that layout (host staging or device mirror).
struct DevicePlanView {
  int64_t* slots;
  int32_t* tokens;
  int32_t* positions;
  int32_t* token_seq;
  int32_t* tiles;
  int32_t* block_indptr;
  int32_t* logits_rows;

  static DevicePlanView At(void* base, const DevicePlanLayout& layout);
};

// The shape of the head geometry and pool the plan is staged for.
struct StageConfig {
  int64_t block_size = 16;
  int32_t scratch_block = 0;  // the pool's extra block for padding tokens
  int32_t scratch_slot = 0;   // the device's extra table row, holding only the scratch block
  int64_t kv_heads = 0, group = 0, head_dim = 0;
  int64_t max_kv_blocks = 0;  // blocks of the longest sequence the model serves (split planning)
  int sm_count = 1;
  bool pad_decode = false;  // pad decode steps to their bucket (when graphs replay them)
};

// What the device runs for one step.
struct StepShape {
  int64_t tokens = 0;       // tokens on the device, padding included
  int64_t real_tokens = 0;  // tokens of the plan
  bool decode = false;      // one token per sequence: decode tiles and split-K
  bool padded = false;      // staged for the graph of bucket `tokens`
  int64_t num_tiles = 0;
  AttentionLaunch attention;
  int64_t rows = 0;                  // logits rows computed (all tokens when padded)
  std::vector<int32_t> result_rows;  // for each of plan.logits_rows, its computed row
  size_t upload_bytes = 0;           // the prefix of the staging buffer to copy
};

// The bucket (graph) a decode step of `seqs` sequences runs in: the next power of two, at most
// max_tokens.
int64_t DecodeBucket(int64_t seqs, int64_t max_tokens);

// Fills the staging buffer at `host_base` for a plan that `tables` accepted (BlockTables::Apply).
// An error when the plan needs more room than the layout has.
StatusOr<StepShape> StagePlan(const StepPlan& plan, const BlockTables& tables,
                              const DevicePlanLayout& layout, const StageConfig& config,
                              void* host_base);

}  // namespace kvshard::cuda
