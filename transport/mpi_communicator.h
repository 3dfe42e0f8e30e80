// Communicator over an MPI communicator (host buffers).
#pragma once

#include <mpi.h>

#include <string>
#include <vector>

#include "transport/communicator.h"

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
  StatusOr<std::vector<std::string>> GatherStrings(const std::string& mine, int root) override;
  Status Barrier() override;

 private:
  MpiCommunicator(MPI_Comm comm, std::vector<std::string> hosts);
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  std::vector<std::string> hosts_;  // host name of every rank
};

}  // namespace kvshard
