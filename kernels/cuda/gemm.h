// Linear layers on the GPU through cuBLAS (the twin of kernels/cpu/matmul.h): with Hugging Face's
// row-major [out, in] weights, out[t, n] = sum_k x[t, k] * w[n, k], inputs in f32, f16 or bf16 and
// f32 accumulation (CUBLAS_COMPUTE_32F), output f32.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/cuda/device_buffer.h"
#include "common/status.h"

namespace kvshard::cuda {

// A cuBLAS handle with its own workspace, allocated once (cuBLAS then allocates nothing while a
// CUDA graph is being captured). Not thread-safe: one per stream-owning thread.
class CublasHandle {
 public:
  // 32 MiB is what cuBLAS recommends for Hopper; the device must be current.
  static StatusOr<std::unique_ptr<CublasHandle>> Create(size_t workspace_bytes = 32u << 20);
  ~CublasHandle();
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;

  cublasHandle_t get() const { return handle_; }
  void* workspace() const { return workspace_.get(); }
  size_t workspace_bytes() const { return workspace_.bytes(); }

 private:
  CublasHandle() = default;
  cublasHandle_t handle_ = nullptr;
  DeviceBuffer workspace_;
};

// out: f32 [tokens, out_features]; x: T [tokens, in_features]; w: T [out_features, in_features];
// T = float (true f32, no TF32), __half or __nv_bfloat16. With `accumulate`, out += x w^T.
// Runs on `stream` (the handle is bound to it for the call). Device pointers.
template <typename T>
cublasStatus_t matmul(const CublasHandle& handle, float* out, const T* x, const T* w,
                      int64_t tokens, int64_t in_features, int64_t out_features, bool accumulate,
                      cudaStream_t stream);

}  // namespace kvshard::cuda
