#include <algorithm>
#include <type_traits>

#include "kernels/cpu/half.h"
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

// Quantized caches: one warp per (token, KV head, K or V) row: its largest magnitude (a warp
// max), its scale, then its codes (the CPU's quantize_row, the same f32 operations).
constexpr int kQuantWarps = kElementwiseThreads / 32;

// fp8: the top code (kernels/cpu/half.h) whose codes store the row best. Lane j < 16 computes
// candidate j's squared error as the CPU does (one fused multiply-add chain in element order); the
// warp then takes the least error, the smaller j on a tie, as the CPU's strict comparison does.
__device__ __forceinline__ float fp8_best_top(const float* x, int64_t n, float amax, int lane) {
  static_assert(kFp8ScaleCandidates <= 32);
  float err = INFINITY;
  int j = lane;
  if (lane < kFp8ScaleCandidates && amax > 0.0f) {
    const float t = kFp8TopStep * static_cast<float>(32 - lane);
    const float inv = t / amax, s = amax / t;
    err = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      const float d = fmaf(-to_f32(quantize<__nv_fp8_e4m3>(x[i] * inv)), s, x[i]);
      err = fmaf(d, d, err);
    }
    if (!(err <= INFINITY)) err = INFINITY;  // NaN (a NaN in the row): never less, as on the CPU
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other_err = __shfl_xor_sync(0xffffffffu, err, offset);
    const int other_j = __shfl_xor_sync(0xffffffffu, j, offset);
    if (other_err < err || (other_err == err && other_j < j)) err = other_err, j = other_j;
  }
  return kFp8TopStep * static_cast<float>(32 - j);
}

template <typename KV>
__global__ void kv_append_quantized_kernel(KV* k_cache, KV* v_cache, float* k_scale, float* v_scale,
                                           const float* k, const float* v, const int64_t* slots,
                                           int64_t rows, int64_t kv_heads, int64_t head_dim) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kQuantWarps) + (threadIdx.x >> 5); r < rows;
       r += static_cast<int64_t>(gridDim.x) * kQuantWarps) {
    const int64_t which = r & 1, th = r >> 1;  // th = token * kv_heads + head
    const int64_t t = th / kv_heads, h = th % kv_heads;
    if (slots[t] < 0) continue;  // another seq shard holds this position (uniform per warp)
    const float* x = (which == 0 ? k : v) + th * head_dim;
    float amax = 0.0f;
    for (int64_t i = lane; i < head_dim; i += 32) amax = fmaxf(amax, fabsf(x[i]));
    amax = warp_max(amax);
    float top = kMaxCode<KV>;
    if constexpr (std::is_same_v<KV, __nv_fp8_e4m3>) top = fp8_best_top(x, head_dim, amax, lane);
    const float inv = amax > 0.0f ? top / amax : 0.0f;
    const int64_t dst_row = slots[t] * kv_heads + h;
    KV* dst = (which == 0 ? k_cache : v_cache) + dst_row * head_dim;
    for (int64_t i = lane; i < head_dim; i += 32) dst[i] = quantize<KV>(x[i] * inv);
    if (lane == 0) (which == 0 ? k_scale : v_scale)[dst_row] = amax / top;
  }
}

}  // namespace

template <typename KV>
cudaError_t kv_append(KV* k_cache, KV* v_cache, const float* k, const float* v,
                      const int64_t* slots, int64_t tokens, int64_t kv_heads, int64_t head_dim,
                      cudaStream_t stream, float* k_scale, float* v_scale) {
  const int64_t row = kv_heads * head_dim;
  const int64_t n = tokens * row;
  if (n <= 0) return cudaSuccess;
  if constexpr (kQuantizedKv<KV>) {
    if (k_scale == nullptr || v_scale == nullptr) return cudaErrorInvalidValue;
    const int64_t rows = 2 * tokens * kv_heads;
    const int64_t blocks = std::min<int64_t>((rows + kQuantWarps - 1) / kQuantWarps, 65535);
    KVS_LAUNCH(static_cast<unsigned>(blocks), kElementwiseThreads, 0, stream,
               kv_append_quantized_kernel<KV>)
    (k_cache, v_cache, k_scale, v_scale, k, v, slots, rows, kv_heads, head_dim);
  } else {
    KVS_LAUNCH(static_cast<unsigned>(ElementwiseBlocks(n)), kElementwiseThreads, 0, stream,
               kv_append_kernel<KV>)
    (k_cache, v_cache, k, v, slots, n, row);
  }
  return cudaGetLastError();
}

#define KVSHARD_INSTANTIATE_KV_APPEND(KV)                                                  \
  template cudaError_t kv_append<KV>(KV*, KV*, const float*, const float*, const int64_t*, \
                                     int64_t, int64_t, int64_t, cudaStream_t, float*, float*);
KVSHARD_INSTANTIATE_KV_APPEND(float)
KVSHARD_INSTANTIATE_KV_APPEND(__half)
KVSHARD_INSTANTIATE_KV_APPEND(__nv_bfloat16)
KVSHARD_INSTANTIATE_KV_APPEND(int8_t)
KVSHARD_INSTANTIATE_KV_APPEND(__nv_fp8_e4m3)
#undef KVSHARD_INSTANTIATE_KV_APPEND

}  // namespace kvshard::cuda
