// A step as the device model consumes it: the shared step inputs (shard/step_inputs.h), staged
// with decode padding when graphs replay decode steps, plus the attention tiles and launch plan of
// the CUDA kernels. Plain host code: unit-tested without a GPU.
//
// The block tables are not in the step: they persist on the device (one row per table slot, the
// rows of shard/block_tables.h plus a scratch row), and a step uploads only the entries it
// appended.
#pragma once

#include <cstdint>

#include "common/status.h"
#include "kernels/cuda/launch_config.h"
#include "plan/step_plan.h"
#include "shard/block_tables.h"
#include "shard/step_inputs.h"

namespace kvshard::cuda {

// The head geometry, pool and padding the step is staged for.
struct StageConfig {
  StepPadding padding;
  int64_t kv_heads = 0, group = 0, head_dim = 0;
  int64_t max_kv_blocks = 0;  // blocks of the longest sequence the model serves (split planning)
  int sm_count = 1;
};

// What the device runs for one step.
struct StepShape : StagedStep {
  int64_t num_tiles = 0;
  AttentionLaunch attention;
};

// Stages `plan` (accepted by `tables`) at `host_base` and plans its attention into `shape`
// (reused between steps).
Status StagePlan(const StepPlan& plan, const BlockTables& tables, const StepInputsLayout& layout,
                 const StageConfig& config, void* host_base, StepShape* shape);

}  // namespace kvshard::cuda
