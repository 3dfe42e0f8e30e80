#include "kernels/cuda/activation.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_config.h"

namespace kvshard::cuda {
namespace {

template <typename To>
__global__ void silu_mul_kernel(To* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = from_f32<To>(g / (1.0f + expf(-g)) * up[i]);
  }
}

}  // namespace

template <typename To>
cudaError_t silu_mul(To* out, const float* gate, const float* up, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  KVS_LAUNCH(static_cast<unsigned>(ElementwiseBlocks(n)), kElementwiseThreads, 0, stream,
             silu_mul_kernel<To>)
  (out, gate, up, n);
  return cudaGetLastError();
}

template cudaError_t silu_mul<float>(float*, const float*, const float*, int64_t, cudaStream_t);
template cudaError_t silu_mul<__half>(__half*, const float*, const float*, int64_t, cudaStream_t);
template cudaError_t silu_mul<__nv_bfloat16>(__nv_bfloat16*, const float*, const float*, int64_t,
                                             cudaStream_t);

}  // namespace kvshard::cuda
