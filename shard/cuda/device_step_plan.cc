#include "shard/cuda/device_step_plan.h"

#include <algorithm>

namespace kvshard::cuda {

Status StagePlan(const StepPlan& plan, const BlockTables& tables, const StepInputsLayout& layout,
                 const StageConfig& config, void* host_base, StepShape* shape) {
  KVS_RETURN_IF_ERROR(StageStepInputs(plan, tables, layout, config.padding, host_base, shape));
  const StepInputs v = StepInputs::At(host_base, layout);
  if (shape->decode) {
    for (int64_t t = 0; t <= shape->tokens; ++t) v.tiles[t] = static_cast<int32_t>(t);
    shape->num_tiles = shape->tokens;
    shape->attention = PlanDecodeAttention(shape->tokens, config.kv_heads, config.group,
                                           config.head_dim, config.max_kv_blocks, config.sm_count);
  } else {
    shape->attention = PlanPrefillAttention(config.group, config.head_dim);
    const std::vector<int32_t> tiles =
        PlanAttentionTiles(plan.qo_indptr.data(), plan.num_seqs(), shape->attention.tile_tokens);
    std::copy(tiles.begin(), tiles.end(), v.tiles);
    shape->num_tiles = static_cast<int64_t>(tiles.size()) - 1;
  }
  return Status::Ok();
}

}  // namespace kvshard::cuda
