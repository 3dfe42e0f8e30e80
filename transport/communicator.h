// Bytes between the ranks of one tensor-parallel group. The MPI implementation works on host
// buffers; a device implementation (NCCL) comes with the GPU backend.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "common/status.h"

namespace kvshard {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "rank R on HOST", for messages that must say where something went wrong.
  virtual std::string Where(int rank) const = 0;

  // In-place element-wise sum over all ranks. data: f32 [n].
  virtual Status AllReduceSum(float* data, size_t n) = 0;
  // In-place sum of a few doubles (bookkeeping: bytes, bandwidths), not for the hot path.
  virtual Status AllReduceSumDouble(double* data, size_t n) = 0;
  // Largest value over all ranks, everywhere.
  virtual Status AllReduceMax(int* value) = 0;
  virtual Status Broadcast(void* data, size_t bytes, int root) = 0;
  // Broadcast for a message that may be long in coming (a server's shards waiting for the next
  // step while idle): waits without keeping a core busy. Every rank must call the same one.
  virtual Status BroadcastIdle(void* data, size_t bytes, int root) {
    return Broadcast(data, bytes, root);
  }
  // Concatenates every rank's `send` (counts[r] floats from rank r) into `recv` on root.
  virtual Status GatherV(const float* send, int count, float* recv, const std::vector<int>& counts,
                         int root) = 0;
  // Within groups of `group_size` consecutive ranks ([g * group_size, (g + 1) * group_size)):
  // every member's `count` floats of `send`, concatenated in rank order into `recv` [group_size
  // * count] on every member. Same deadlines as the other collectives. Every rank calls it.
  virtual Status AllGatherInGroups(const float* send, size_t count, float* recv,
                                   int group_size) = 0;
  // Each rank's string, on root (empty elsewhere). Used to report which rank failed and why.
  virtual StatusOr<std::vector<std::string>> GatherStrings(const std::string& mine, int root) = 0;
  virtual Status Barrier() = 0;

  // Liveness, where the implementation has it (MpiCommunicator after EnableLiveness): keeps
  // heartbeats flowing while the caller waits on something else, and says whether every peer
  // is alive. Once a collective has failed the communicator is broken: every later call fails.
  virtual void PumpLiveness() {}
  virtual Status CheckLiveness() { return Status::Ok(); }
  // Caps the deadline of every collective, also one already waiting. Async-signal-safe: called
  // when the job is asked to stop, because mpirun also asks that when a rank has died, and then
  // a collective with the dead rank must fail in time to tell the clients.
  virtual void ShortenDeadlines(double seconds) {}
};

// Combines every rank's status: all ranks return the same result, ok only when every rank was ok,
// otherwise an error that names each failing rank and its host with its message.
Status AgreeOnStatus(Communicator& comm, const Status& mine);

}  // namespace kvshard
