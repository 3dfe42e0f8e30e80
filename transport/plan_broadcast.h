// The step plan's trip from rank 0 to every shard: a fixed header, then one payload.
#pragma once

#include "common/status.h"
#include "plan/step_plan.h"
#include "transport/communicator.h"

namespace kvshard {

// Rank `root` sends `plan`; every other rank receives into `plan`. `payload` is scratch space
// the caller keeps between steps (no allocation in the steady state).
Status BroadcastStepPlan(Communicator& comm, StepPlan* plan, int root,
                         std::vector<int32_t>* payload);

// Rank 0 tells every worker to leave its loop (RunShardWorker): the last plan of a job.
Status BroadcastShutdown(Communicator& comm);

}  // namespace kvshard
