// The loop every rank but 0 runs: receive a step plan, run it, repeat until told to stop.
#pragma once

#include "common/status.h"
#include "shard/shard_backend.h"

namespace kvshard {

// Returns ok after a shutdown plan; an error if a plan could not be received or run.
Status RunShardWorker(ShardBackend& model);

}  // namespace kvshard
