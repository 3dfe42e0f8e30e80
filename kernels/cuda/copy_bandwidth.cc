#include "kernels/cuda/copy_bandwidth.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "common/cuda/cuda_check.h"
#include "common/cuda/device_buffer.h"

namespace kvshard::cuda {

StatusOr<double> MeasureDeviceCopyGbs(size_t bytes, int repeats) {
  KVS_ASSIGN_OR_RETURN(DeviceBuffer src_buffer, DeviceBuffer::Allocate(bytes, "copy source"));
  KVS_ASSIGN_OR_RETURN(DeviceBuffer dst_buffer, DeviceBuffer::Allocate(bytes, "copy target"));
  void* src = src_buffer.get();
  void* dst = dst_buffer.get();
  cudaEvent_t start = nullptr, stop = nullptr;
  auto release = [&] {
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
  };
  Status st = KVS_CUDA(cudaMemset(src, 1, bytes));
  if (st.ok()) st = KVS_CUDA(cudaEventCreate(&start));
  if (st.ok()) st = KVS_CUDA(cudaEventCreate(&stop));
  double best_ms = 1e30;
  // One untimed copy first: page mapping and clocks settle.
  for (int i = 0; st.ok() && i <= repeats; ++i) {
    st = KVS_CUDA(cudaEventRecord(start));
    if (st.ok()) st = KVS_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice));
    if (st.ok()) st = KVS_CUDA(cudaEventRecord(stop));
    if (st.ok()) st = KVS_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    if (st.ok()) st = KVS_CUDA(cudaEventElapsedTime(&ms, start, stop));
    if (st.ok() && i > 0) best_ms = std::min<double>(best_ms, ms);
  }
  release();
  if (!st.ok()) return st;
  return 2.0 * static_cast<double>(bytes) / (best_ms * 1e-3) / 1e9;
}

}  // namespace kvshard::cuda
