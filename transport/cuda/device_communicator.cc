#include "transport/cuda/device_communicator.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "common/cuda/cuda_check.h"

namespace kvshard::cuda {

Status WaitForStream(cudaStream_t stream, double timeout_s, const std::string& what,
                     const std::function<Status()>& poll) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  auto pause = std::chrono::microseconds(20);
  for (;;) {
    const cudaError_t rc = cudaStreamQuery(stream);
    if (rc == cudaSuccess) return Status::Ok();
    if (rc != cudaErrorNotReady) return KVS_CUDA(rc).WithContext(what);
    if (poll) KVS_RETURN_IF_ERROR(poll());
    const auto now = Clock::now();
    if (now > deadline) {
      return Unavailable(
          "{} did not finish within {:.1f} s on {}: a peer rank may be dead or stuck", what,
          timeout_s, WhereAmI());
    }
    if (now - start > std::chrono::microseconds(200)) {
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }
}

}  // namespace kvshard::cuda
