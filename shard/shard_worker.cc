#include "shard/shard_worker.h"

namespace kvshard {

Status RunShardWorker(ShardBackend& model) {
  StepPlan plan;
  std::vector<float> unused_logits;
  for (;;) {
    KVS_RETURN_IF_ERROR(BroadcastStepPlan(model.comm(), &plan, 0));
    if (plan.kind == StepPlan::Kind::kShutdown) return Status::Ok();
    KVS_RETURN_IF_ERROR(model.Forward(plan, &unused_logits));
  }
}

}  // namespace kvshard
