// A device communicator that stages through host memory: device -> pinned host -> MPI (the
// wrapped MpiCommunicator) -> device. Slower than NCCL and not capturable into CUDA graphs, but it
// works for several ranks sharing one GPU, which NCCL refuses: multi-rank GPU logic is tested on
// one GPU with it (DESIGN.md §6), and it is the fallback where NCCL is unavailable.
#pragma once

#include <memory>
#include <vector>

#include "common/cuda/device_buffer.h"
#include "transport/cuda/device_communicator.h"

namespace kvshard::cuda {

struct StagedOptions {
  size_t max_reduce_floats = 0;        // the largest AllReduceSum (staging is allocated up front)
  size_t max_gather_floats = 0;        // the largest GatherV, summed over ranks
  size_t max_group_gather_floats = 0;  // the largest AllGatherInGroups, summed over the group
  double timeout_s = 120;              // for each wait on the stream
};

class StagedDeviceCommunicator final : public DeviceCommunicator {
 public:
  // Allocates the pinned staging buffers; not collective. `control` must outlive it.
  static StatusOr<std::unique_ptr<StagedDeviceCommunicator>> Create(MpiCommunicator* control,
                                                                    cudaStream_t stream,
                                                                    const StagedOptions& options);

  // data: device f32 [n]. Copies to the host, waits for the copy, all-reduces over MPI and
  // enqueues the copy back: the result is ready for later work on stream().
  Status AllReduceSum(float* data, size_t n) override;
  // send: device f32 [count]; recv: device f32 [sum of counts] on root.
  Status GatherV(const float* send, int count, float* recv, const std::vector<int>& counts,
                 int root) override;
  // send: device f32 [count]; recv: device f32 [group_size * count]. Through the host, over the
  // control communicator's AllGatherInGroups.
  Status AllGatherInGroups(const float* send, size_t count, float* recv, int group_size) override;
  Status Synchronize() override;
  bool capturable() const override { return false; }

 private:
  StagedDeviceCommunicator(MpiCommunicator* control, cudaStream_t stream,
                           const StagedOptions& options);
  Status WaitForCopies(const char* what);

  StagedOptions options_;
  PinnedBuffer send_;  // f32 [the largest of the three maxima]
  PinnedBuffer recv_;  // f32 [max(max_gather_floats, max_group_gather_floats)]
};

}  // namespace kvshard::cuda
