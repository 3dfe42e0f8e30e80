#include "kernels/cuda/argmax.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_config.h"

namespace kvshard::cuda {
namespace {

__global__ void __launch_bounds__(kRowThreads)
    argmax_kernel(int32_t* out, const float* logits, int64_t vocab) {
  const int32_t index = row_argmax(logits + blockIdx.x * vocab, vocab);
  if (threadIdx.x == 0) out[blockIdx.x] = index;
}

}  // namespace

cudaError_t argmax(int32_t* out, const float* logits, int64_t rows, int64_t vocab,
                   cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (vocab <= 0 || vocab > INT32_MAX || rows > INT32_MAX) return cudaErrorInvalidValue;
  KVS_LAUNCH(static_cast<unsigned>(rows), kRowThreads, 0, stream, argmax_kernel)
  (out, logits, vocab);
  return cudaGetLastError();
}

}  // namespace kvshard::cuda
