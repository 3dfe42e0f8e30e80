#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_config.h"

namespace kvshard::cuda {
namespace {

// One CTA per token copies (and widens) its table row.
template <typename T>
__global__ void embedding_kernel(float* out, const T* table, const int32_t* ids, int64_t dim) {
  const int64_t t = blockIdx.x;
  const T* row = table + static_cast<int64_t>(ids[t]) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) out[t * dim + i] = to_f32(row[i]);
}

}  // namespace

template <typename T>
cudaError_t embedding(float* out, const T* table, const int32_t* ids, int64_t tokens, int64_t dim,
                      cudaStream_t stream) {
  if (tokens <= 0 || dim <= 0) return cudaSuccess;
  if (tokens > INT32_MAX) return cudaErrorInvalidValue;
  KVS_LAUNCH(static_cast<unsigned>(tokens), kElementwiseThreads, 0, stream, embedding_kernel<T>)
  (out, table, ids, dim);
  return cudaGetLastError();
}

template cudaError_t embedding<float>(float*, const float*, const int32_t*, int64_t, int64_t,
                                      cudaStream_t);
template cudaError_t embedding<__half>(float*, const __half*, const int32_t*, int64_t, int64_t,
                                       cudaStream_t);
template cudaError_t embedding<__nv_bfloat16>(float*, const __nv_bfloat16*, const int32_t*, int64_t,
                                              int64_t, cudaStream_t);

}  // namespace kvshard::cuda
