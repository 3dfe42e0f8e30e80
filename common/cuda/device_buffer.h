// Owned memory the device model allocates up front (DESIGN.md §5.7): device memory (one
// cudaMalloc at creation, one cudaFree at destruction) and pinned host memory for asynchronous
// copies (cudaMallocHost / cudaFreeHost), with the same ownership rules.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "common/status.h"

namespace kvshard::cuda {

enum class MemoryKind { kDevice, kPinnedHost };

template <MemoryKind kKind>
class OwnedBuffer {
 public:
  OwnedBuffer() = default;
  // `what` names the buffer in the error when the memory is exhausted.
  static StatusOr<OwnedBuffer> Allocate(size_t bytes, const char* what);
  ~OwnedBuffer() { Free(); }
  OwnedBuffer(OwnedBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  OwnedBuffer& operator=(OwnedBuffer&& other) noexcept {
    if (this != &other) {
      Free();
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  OwnedBuffer(const OwnedBuffer&) = delete;
  OwnedBuffer& operator=(const OwnedBuffer&) = delete;

  void* get() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void Free();

  void* data_ = nullptr;
  size_t bytes_ = 0;
};

using DeviceBuffer = OwnedBuffer<MemoryKind::kDevice>;
using PinnedBuffer = OwnedBuffer<MemoryKind::kPinnedHost>;

}  // namespace kvshard::cuda
