#include "kernels/cuda/convert.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_config.h"

namespace kvshard::cuda {
namespace {

template <typename To>
__global__ void convert_kernel(To* out, const float* in, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = from_f32<To>(in[i]);
  }
}

}  // namespace

template <typename To>
cudaError_t convert_from_f32(To* out, const float* in, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  KVS_LAUNCH(static_cast<unsigned>(ElementwiseBlocks(n)), kElementwiseThreads, 0, stream,
             convert_kernel<To>)
  (out, in, n);
  return cudaGetLastError();
}

template cudaError_t convert_from_f32<float>(float*, const float*, int64_t, cudaStream_t);
template cudaError_t convert_from_f32<__half>(__half*, const float*, int64_t, cudaStream_t);
template cudaError_t convert_from_f32<__nv_bfloat16>(__nv_bfloat16*, const float*, int64_t,
                                                     cudaStream_t);

}  // namespace kvshard::cuda
