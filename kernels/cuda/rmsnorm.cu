#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_config.h"
#include "kernels/cuda/rmsnorm.h"

namespace kvshard::cuda {
namespace {

// One CTA per token. With kAdd, x is the residual and gets delta added (each thread writes the
// elements it later reads back, so no synchronisation beyond the reduction is needed).
template <typename To, bool kAdd>
__global__ void rmsnorm_kernel(To* out, float* residual, const float* x, const float* delta,
                               const float* weight, int64_t dim, float eps) {
  const int64_t t = blockIdx.x;
  const float* xr = kAdd ? residual + t * dim : x + t * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = xr[i];
    if constexpr (kAdd) {
      v += delta[t * dim + i];
      residual[t * dim + i] = v;
    }
    ss += v * v;
  }
  ss = block_sum(ss);
  const float scale = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    out[t * dim + i] = from_f32<To>(xr[i] * scale * weight[i]);
  }
}

}  // namespace

template <typename To>
cudaError_t rmsnorm(To* out, const float* x, const float* weight, int64_t tokens, int64_t dim,
                    float eps, cudaStream_t stream) {
  if (tokens <= 0 || dim <= 0) return cudaSuccess;
  if (tokens > INT32_MAX) return cudaErrorInvalidValue;
  KVS_LAUNCH(static_cast<unsigned>(tokens), kElementwiseThreads, 0, stream,
             rmsnorm_kernel<To, false>)
  (out, nullptr, x, nullptr, weight, dim, eps);
  return cudaGetLastError();
}

template <typename To>
cudaError_t add_rmsnorm(float* residual, const float* delta, To* out, const float* weight,
                        int64_t tokens, int64_t dim, float eps, cudaStream_t stream) {
  if (tokens <= 0 || dim <= 0) return cudaSuccess;
  if (tokens > INT32_MAX) return cudaErrorInvalidValue;
  KVS_LAUNCH(static_cast<unsigned>(tokens), kElementwiseThreads, 0, stream,
             rmsnorm_kernel<To, true>)
  (out, residual, nullptr, delta, weight, dim, eps);
  return cudaGetLastError();
}

#define KVSHARD_INSTANTIATE_RMSNORM(To)                                                           \
  template cudaError_t rmsnorm<To>(To*, const float*, const float*, int64_t, int64_t, float,      \
                                   cudaStream_t);                                                 \
  template cudaError_t add_rmsnorm<To>(float*, const float*, To*, const float*, int64_t, int64_t, \
                                       float, cudaStream_t);
KVSHARD_INSTANTIATE_RMSNORM(float)
KVSHARD_INSTANTIATE_RMSNORM(__half)
KVSHARD_INSTANTIATE_RMSNORM(__nv_bfloat16)
#undef KVSHARD_INSTANTIATE_RMSNORM

}  // namespace kvshard::cuda
