// A Communicator for ranks whose activations live on a GPU.
//
// Pointer rules: the data-plane operations, AllReduceSum, GatherV and AllGatherInGroups, take
// DEVICE pointers and are
// ordered on stream(): they enqueue work and may return before it has run, so the data is ready
// only for later work on that stream, and Synchronize() is where a failed or stuck collective
// shows up. Every other operation (AllReduceSumDouble, AllReduceMax, Broadcast, BroadcastIdle,
// GatherStrings, Barrier) is control plane: HOST memory, blocking, over the MPI communicator the
// device communicator was made from, exactly as MpiCommunicator does.
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "transport/communicator.h"
#include "transport/mpi_communicator.h"

namespace kvshard::cuda {

class DeviceCommunicator : public Communicator {
 public:
  explicit DeviceCommunicator(MpiCommunicator* control) : control_(control) {}

  // The stream the data-plane operations are ordered on. Change it only while nothing is in
  // flight (after Synchronize).
  cudaStream_t stream() const { return stream_; }
  void set_stream(cudaStream_t stream) { stream_ = stream; }
  // Waits until the work enqueued on stream() has finished: ok, or an error naming this rank and
  // host when a collective failed or did not finish before the deadline (the communicator is then
  // aborted and every later data-plane call fails). Never waits forever.
  virtual Status Synchronize() = 0;
  // Whether the data-plane operations may be captured into a CUDA graph (no host round trips).
  virtual bool capturable() const = 0;

  MpiCommunicator& control() { return *control_; }

  // Control plane: host memory, over MPI.
  int rank() const override { return control_->rank(); }
  int size() const override { return control_->size(); }
  std::string Where(int rank) const override { return control_->Where(rank); }
  Status AllReduceSumDouble(double* data, size_t n) override {
    return control_->AllReduceSumDouble(data, n);
  }
  Status AllReduceMax(int* value) override { return control_->AllReduceMax(value); }
  Status Broadcast(void* data, size_t bytes, int root) override {
    return control_->Broadcast(data, bytes, root);
  }
  Status BroadcastIdle(void* data, size_t bytes, int root) override {
    return control_->BroadcastIdle(data, bytes, root);
  }
  StatusOr<std::vector<std::string>> GatherStrings(const std::string& mine, int root) override {
    return control_->GatherStrings(mine, root);
  }
  Status Barrier() override { return control_->Barrier(); }

  void PumpLiveness() override { control_->PumpLiveness(); }
  Status CheckLiveness() override { return control_->CheckLiveness(); }
  void ShortenDeadlines(double seconds) override { control_->ShortenDeadlines(seconds); }

 protected:
  MpiCommunicator* control_;
  cudaStream_t stream_ = nullptr;
};

// Waits for `stream` with a deadline, polling cudaStreamQuery and, between queries, `poll` (a
// non-ok Status from it stops the wait with that error). Spins briefly, then sleeps up to 1 ms.
// Never blocks inside a CUDA call, so a stream stuck on a dead peer becomes an error in time:
// Unavailable naming `what`, the timeout and this rank. Not during CUDA graph capture.
Status WaitForStream(cudaStream_t stream, double timeout_s, const std::string& what,
                     const std::function<Status()>& poll);

}  // namespace kvshard::cuda
