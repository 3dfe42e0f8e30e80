// Start-up shared by the commands that run the model: MPI, the tensor-parallel group, every
// rank's shard, and agreement on success (a failing rank is named on rank 0, and every rank
// exits non-zero rather than one rank waiting for the others forever).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "cluster/commands.h"
#include "common/status.h"
#include "shard/model_config.h"
#include "shard/shard_backend.h"
#include "transport/mpi_communicator.h"

namespace kvshard {

// Initialises MPI (once per process) and finalises it at exit.
class MpiSession {
 public:
  MpiSession();
  ~MpiSession();
  bool ok() const { return ok_; }

 private:
  bool ok_ = false;
};

// With --device cuda, the device's objects (stream, device communicator) live behind `device`;
// the model's comm() is then the device communicator, whose control plane is `comm`.
struct DeviceRuntime {
  virtual ~DeviceRuntime() = default;
};

struct Runtime {
  std::unique_ptr<MpiCommunicator> comm;
  ModelConfig config;
  std::unique_ptr<DeviceRuntime> device;  // before `model`: destroyed after it
  std::unique_ptr<ShardBackend> model;
  int threads = 1;
  std::string device_name = "cpu";  // what --device resolved to: cpu or cuda
  std::string kv_dtype = "f32";     // --kv-dtype as KvDTypeName spells it
  bool is_root() const { return comm->rank() == 0; }
};

// Loads every rank's shard. `min_kv_tokens` is the context the KV pool must hold when
// flags.kv_blocks is 0 (the model's whole context when 0 too).
StatusOr<Runtime> StartRuntime(const ShardFlags& flags, int64_t min_kv_tokens = 0);

// KV blocks per rank: what --kv-memory holds (whole blocks), else --kv-blocks, else enough for
// `min_kv_tokens` (the model's context when 0) in one request across the grid's seq shards.
StatusOr<int64_t> KvBlocksPerRank(const ShardFlags& flags, const ModelConfig& config, int world,
                                  int64_t min_kv_tokens);

// "rank R on HOST -> (head group G, seq shard S)" for every rank.
std::vector<std::string> DescribeRanks(const Runtime& rt);

// Prints `status` as the job's error (rank 0, or any rank when it is rank-local) and returns 1.
int ReportFailure(const Status& status, int rank);

}  // namespace kvshard
