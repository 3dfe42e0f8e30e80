#include "transport/cuda/staged_device_communicator.h"

#include <algorithm>

#include "common/cuda/cuda_check.h"

namespace kvshard::cuda {

StagedDeviceCommunicator::StagedDeviceCommunicator(MpiCommunicator* control, cudaStream_t stream,
                                                   const StagedOptions& options)
    : DeviceCommunicator(control), options_(options) {
  stream_ = stream;
}

StatusOr<std::unique_ptr<StagedDeviceCommunicator>> StagedDeviceCommunicator::Create(
    MpiCommunicator* control, cudaStream_t stream, const StagedOptions& options) {
  std::unique_ptr<StagedDeviceCommunicator> c(
      new StagedDeviceCommunicator(control, stream, options));
  const size_t send_floats = std::max(
      {options.max_reduce_floats, options.max_gather_floats, options.max_group_gather_floats});
  const size_t recv_floats = std::max(options.max_gather_floats, options.max_group_gather_floats);
  KVS_ASSIGN_OR_RETURN(c->send_,
                       PinnedBuffer::Allocate(send_floats * sizeof(float), "all-reduce staging"));
  KVS_ASSIGN_OR_RETURN(c->recv_,
                       PinnedBuffer::Allocate(recv_floats * sizeof(float), "gather staging"));
  return c;
}

Status StagedDeviceCommunicator::WaitForCopies(const char* what) {
  return WaitForStream(stream_, options_.timeout_s, what, [this] {
    control_->PumpLiveness();
    return Status::Ok();
  });
}

Status StagedDeviceCommunicator::AllReduceSum(float* data, size_t n) {
  if (n == 0) return Status::Ok();
  if (n > options_.max_reduce_floats) {
    return InvalidArgument("all-reduce of {} floats exceeds the staging buffer of {}", n,
                           options_.max_reduce_floats);
  }
  float* host = send_.as<float>();
  KVS_RETURN_IF_ERROR(
      KVS_CUDA(cudaMemcpyAsync(host, data, n * sizeof(float), cudaMemcpyDeviceToHost, stream_)));
  KVS_RETURN_IF_ERROR(WaitForCopies("the device-to-host copy of an all-reduce"));
  KVS_RETURN_IF_ERROR(control_->AllReduceSum(host, n));
  // The host buffer is next written by a later copy on the same stream, so it stays intact until
  // this copy has read it.
  return KVS_CUDA(cudaMemcpyAsync(data, host, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
}

Status StagedDeviceCommunicator::GatherV(const float* send, int count, float* recv,
                                         const std::vector<int>& counts, int root) {
  const int n_ranks = size(), me = rank();
  if (static_cast<int>(counts.size()) != n_ranks || root < 0 || root >= n_ranks || count < 0 ||
      counts[me] != count) {
    return InvalidArgument("GatherV: {} counts for {} ranks, root {}, this rank sends {}",
                           counts.size(), n_ranks, root, count);
  }
  size_t total = 0;
  for (int c : counts) total += static_cast<size_t>(std::max(c, 0));
  if (total > options_.max_gather_floats) {
    return InvalidArgument("gather of {} floats exceeds the staging buffer of {}", total,
                           options_.max_gather_floats);
  }
  float* host_send = send_.as<float>();
  float* host_recv = recv_.as<float>();
  if (count > 0) {
    KVS_RETURN_IF_ERROR(KVS_CUDA(
        cudaMemcpyAsync(host_send, send, count * sizeof(float), cudaMemcpyDeviceToHost, stream_)));
  }
  KVS_RETURN_IF_ERROR(WaitForCopies("the device-to-host copy of a gather"));
  KVS_RETURN_IF_ERROR(
      control_->GatherV(host_send, count, me == root ? host_recv : nullptr, counts, root));
  if (me == root && total > 0) {
    KVS_RETURN_IF_ERROR(KVS_CUDA(
        cudaMemcpyAsync(recv, host_recv, total * sizeof(float), cudaMemcpyHostToDevice, stream_)));
  }
  return Status::Ok();
}

Status StagedDeviceCommunicator::AllGatherInGroups(const float* send, size_t count, float* recv,
                                                   int group_size) {
  if (group_size < 1 || count * group_size > options_.max_group_gather_floats) {
    return InvalidArgument("all-gather of {} x {} floats exceeds the staging buffer of {}",
                           group_size, count, options_.max_group_gather_floats);
  }
  if (count == 0) return Status::Ok();
  float* host_send = send_.as<float>();
  float* host_recv = recv_.as<float>();
  KVS_RETURN_IF_ERROR(KVS_CUDA(
      cudaMemcpyAsync(host_send, send, count * sizeof(float), cudaMemcpyDeviceToHost, stream_)));
  KVS_RETURN_IF_ERROR(WaitForCopies("the device-to-host copy of an all-gather"));
  KVS_RETURN_IF_ERROR(control_->AllGatherInGroups(host_send, count, host_recv, group_size));
  return KVS_CUDA(cudaMemcpyAsync(recv, host_recv, group_size * count * sizeof(float),
                                  cudaMemcpyHostToDevice, stream_));
}

Status StagedDeviceCommunicator::Synchronize() { return WaitForCopies("work on the GPU stream"); }

}  // namespace kvshard::cuda
