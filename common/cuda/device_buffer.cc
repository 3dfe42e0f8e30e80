#include "common/cuda/device_buffer.h"

#include "common/cuda/cuda_check.h"

namespace kvshard::cuda {

template <MemoryKind kKind>
StatusOr<OwnedBuffer<kKind>> OwnedBuffer<kKind>::Allocate(size_t bytes, const char* what) {
  OwnedBuffer b;
  if (bytes == 0) return b;
  constexpr bool kDevice = kKind == MemoryKind::kDevice;
  const Status st =
      kDevice ? KVS_CUDA(cudaMalloc(&b.data_, bytes)) : KVS_CUDA(cudaMallocHost(&b.data_, bytes));
  if (!st.ok()) {
    return st.WithContext(
        fmt::format("allocating {}{} ({} bytes)", kDevice ? "" : "pinned ", what, bytes));
  }
  b.bytes_ = bytes;
  return b;
}

template <MemoryKind kKind>
void OwnedBuffer<kKind>::Free() {
  if (!data_) return;
  if constexpr (kKind == MemoryKind::kDevice) {
    cudaFree(data_);
  } else {
    cudaFreeHost(data_);
  }
  data_ = nullptr;
  bytes_ = 0;
}

template class OwnedBuffer<MemoryKind::kDevice>;
template class OwnedBuffer<MemoryKind::kPinnedHost>;

}  // namespace kvshard::cuda
