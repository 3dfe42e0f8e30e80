#include "transport/plan_broadcast.h"

namespace kvshard {

Status BroadcastStepPlan(Communicator& comm, StepPlan* plan, int root,
                         std::vector<int32_t>* payload) {
  const bool sender = comm.rank() == root;
  StepPlanHeader header{};
  if (sender) header = StepPlanHeaderOf(*plan);
  KVS_RETURN_IF_ERROR(comm.BroadcastIdle(header.data(), sizeof(header), root));
  size_t total = 0;
  if (sender) {
    PackStepPlan(*plan, payload);
  } else {
    KVS_RETURN_IF_ERROR(ShapeStepPlan(header, plan, &total));
    payload->resize(total);
  }
  KVS_RETURN_IF_ERROR(comm.Broadcast(payload->data(), payload->size() * sizeof(int32_t), root));
  if (!sender) UnpackStepPlan(*payload, plan);
  return Status::Ok();
}

Status BroadcastShutdown(Communicator& comm) {
  StepPlan stop;
  stop.kind = StepPlan::Kind::kShutdown;
  std::vector<int32_t> payload;
  return BroadcastStepPlan(comm, &stop, 0, &payload);
}

}  // namespace kvshard
