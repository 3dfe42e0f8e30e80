// Communicator over an MPI communicator (host buffers).
#pragma once

#include <mpi.h>

#include <atomic>
#include <string>
#include <vector>

#include "transport/communicator.h"
#include "transport/heartbeat.h"

namespace kvshard {

// Turns an MPI return code into a Status naming the call, file:line, rank and host.
Status MpiStatus(int rc, const char* call, const char* file, int line);
#define KVS_MPI(call) ::kvshard::MpiStatus((call), #call, __FILE__, __LINE__)

class MpiCommunicator : public Communicator {
 public:
  // Duplicates `comm` (so its traffic never mixes with other users of `comm`) and sets
  // MPI_ERRORS_RETURN on it so that failures become Status values.
  static StatusOr<std::unique_ptr<MpiCommunicator>> Create(MPI_Comm comm);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string Where(int rank) const override;
  MPI_Comm comm() const { return comm_; }

  Status AllReduceSum(float* data, size_t n) override;
  Status AllReduceSumDouble(double* data, size_t n) override;
  Status AllReduceMax(int* value) override;
  Status Broadcast(void* data, size_t bytes, int root) override;
  Status BroadcastIdle(void* data, size_t bytes, int root) override;
  Status GatherV(const float* send, int count, float* recv, const std::vector<int>& counts,
                 int root) override;
  // Point-to-point inside the group (no sub-communicator to create: a split is a blocking
  // collective that a dead rank would hang), waited on with the step deadline.
  Status AllGatherInGroups(const float* send, size_t count, float* recv, int group_size) override;
  StatusOr<std::vector<std::string>> GatherStrings(const std::string& mine, int root) override;
  Status Barrier() override;

  // From now on every collective has a deadline (options.step_timeout_s, scaled by
  // `timeout_scale` on this rank), and heartbeats run between rank 0 and every other rank. A
  // collective past its deadline, or an idle wait whose root stopped beating, fails with
  // Unavailable naming the quietest peer; the communicator is then broken. Collective.
  Status EnableLiveness(const LivenessOptions& options, double timeout_scale = 1.0);
  void PumpLiveness() override;
  Status CheckLiveness() override;
  void ShortenDeadlines(double seconds) override { deadline_cap_s_.store(seconds); }

 private:
  MpiCommunicator(MPI_Comm comm, std::vector<std::string> hosts);
  // Waits for a non-blocking collective: spins briefly, then polls with short sleeps, pumping
  // heartbeats; fails past `timeout_s` (<= 0: no deadline, but a silent root fails it).
  Status Wait(MPI_Request* request, const char* what, double timeout_s) {
    return WaitAll(request, 1, what, timeout_s);
  }
  Status WaitAll(MPI_Request* requests, int n, const char* what, double timeout_s);
  Status Broken() const;
  // BroadcastIdle without liveness: polls with sleeps so an idle rank does not spin.
  Status PollWithoutSpinning(MPI_Request* request);
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  std::vector<std::string> hosts_;        // host name of every rank
  std::unique_ptr<Heartbeat> heartbeat_;  // null until EnableLiveness
  double step_timeout_s_ = 0;
  std::atomic<double> deadline_cap_s_{1e30};
  std::vector<MPI_Request> group_requests_;  // AllGatherInGroups' sends and receives
  std::string broken_;  // why the communicator can no longer be used ("" while healthy)
};

}  // namespace kvshard
