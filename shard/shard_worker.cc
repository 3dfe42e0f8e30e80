#include "shard/shard_worker.h"

#include "transport/plan_broadcast.h"

namespace kvshard {

Status RunShardWorker(ShardBackend& model) {
  StepPlan plan;
  std::vector<int32_t> payload;
  std::vector<float> unused_logits;
  for (;;) {
    KVS_RETURN_IF_ERROR(BroadcastStepPlan(model.comm(), &plan, 0, &payload));
    if (plan.kind == StepPlan::Kind::kShutdown) return Status::Ok();
    KVS_RETURN_IF_ERROR(model.Forward(plan, &unused_logits));
  }
}

}  // namespace kvshard
