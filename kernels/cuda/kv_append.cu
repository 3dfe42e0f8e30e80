#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/kv_append.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/launch_config.h"

namespace kvshard::cuda {
namespace {

template <typename KV>
__global__ void kv_append_kernel(KV* k_cache, KV* v_cache, const float* k, const float* v,
                                 const int64_t* slots, int64_t n, int64_t row) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = idx / row, i = idx % row;
    if (slots[t] < 0) continue;  // another seq shard holds this position
    const int64_t dst = slots[t] * row + i;
    k_cache[dst] = from_f32<KV>(k[idx]);
    v_cache[dst] = from_f32<KV>(v[idx]);
  }
}

}  // namespace

template <typename KV>
cudaError_t kv_append(KV* k_cache, KV* v_cache, const float* k, const float* v,
                      const int64_t* slots, int64_t tokens, int64_t kv_heads, int64_t head_dim,
                      cudaStream_t stream) {
  const int64_t row = kv_heads * head_dim;
  const int64_t n = tokens * row;
  if (n <= 0) return cudaSuccess;
  KVS_LAUNCH(static_cast<unsigned>(ElementwiseBlocks(n)), kElementwiseThreads, 0, stream,
             kv_append_kernel<KV>)
  (k_cache, v_cache, k, v, slots, n, row);
  return cudaGetLastError();
}

template cudaError_t kv_append<float>(float*, float*, const float*, const float*, const int64_t*,
                                      int64_t, int64_t, int64_t, cudaStream_t);
template cudaError_t kv_append<__half>(__half*, __half*, const float*, const float*, const int64_t*,
                                       int64_t, int64_t, int64_t, cudaStream_t);
template cudaError_t kv_append<__nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, const float*,
                                              const float*, const int64_t*, int64_t, int64_t,
                                              int64_t, cudaStream_t);

}  // namespace kvshard::cuda
