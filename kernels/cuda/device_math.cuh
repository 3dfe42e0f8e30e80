// Device helpers shared by the kernels: f32 <-> storage-type conversions (arithmetic is always
// f32, as on the CPU, kernels/cpu/half.h) and warp/block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "kernels/cuda/launch.cuh"

namespace kvshard::cuda {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
// Quantized KV codes, unscaled (the row's scale multiplies them: kernels/cpu/paged_attention.h).
__device__ __forceinline__ float to_f32(int8_t v) { return static_cast<float>(v); }
__device__ __forceinline__ float to_f32(__nv_fp8_e4m3 v) { return static_cast<float>(v); }

template <typename KV>
inline constexpr bool kQuantizedKv = false;
template <>
inline constexpr bool kQuantizedKv<int8_t> = true;
template <>
inline constexpr bool kQuantizedKv<__nv_fp8_e4m3> = true;
// The largest code: a row's largest magnitude maps to it.
template <typename KV>
inline constexpr float kMaxCode = 127.0f;
template <>
inline constexpr float kMaxCode<__nv_fp8_e4m3> = 448.0f;

// A scaled value's code: round to nearest even, saturated (int8: to +-127, fp8: to +-448), as the
// CPU's f32_to_i8 / f32_to_fp8_e4m3_bits.
template <typename KV>
__device__ __forceinline__ KV quantize(float x);
template <>
__device__ __forceinline__ int8_t quantize<int8_t>(float x) {
  return static_cast<int8_t>(fminf(fmaxf(rintf(x), -127.0f), 127.0f));
}
template <>
__device__ __forceinline__ __nv_fp8_e4m3 quantize<__nv_fp8_e4m3>(float x) {
  __nv_fp8_e4m3 r;
  r.__x = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
  return r;
}

// Round to nearest even, like the CPU's from_f32 (kernels/cpu/half.h).
template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Sum over the thread block, returned to every thread. blockDim.x must be a multiple of 32 (at
// most 1024) and every thread of the block must call it (it synchronises).
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  KVS_SHARED(T, partial, 32);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // a previous call's readers are done with `partial`
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  return warp_sum(lane < warps ? partial[lane] : T(0));
}

// Maximum over the thread block, returned to every thread; same rules as block_sum.
__device__ __forceinline__ float block_max(float v) {
  KVS_SHARED(float, partial, 32);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  return warp_max(lane < warps ? partial[lane] : -INFINITY);
}

// The better of two (value, index) candidates for an argmax: the larger value, the smaller index
// on ties (std::max_element's first maximum). NaN never wins.
__device__ __forceinline__ void argmax_combine(float& value, int32_t& index, float other_value,
                                               int32_t other_index) {
  if (other_value > value || (other_value == value && other_index < index) ||
      (value != value && other_value == other_value)) {
    value = other_value;
    index = other_index;
  }
}

// Argmax over the thread block of each thread's candidate, returned to every thread; same rules
// as block_sum. A thread with no candidate passes (-inf, INT32_MAX).
__device__ __forceinline__ int32_t block_argmax(float value, int32_t index) {
  KVS_SHARED(float, values, 32);
  KVS_SHARED(int32_t, indices, 32);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int offset = 16; offset > 0; offset >>= 1) {
    argmax_combine(value, index, __shfl_xor_sync(0xffffffffu, value, offset),
                   __shfl_xor_sync(0xffffffffu, index, offset));
  }
  __syncthreads();
  if (lane == 0) {
    values[warp] = value;
    indices[warp] = index;
  }
  __syncthreads();
  const int warps = blockDim.x >> 5;
  value = lane < warps ? values[lane] : -INFINITY;
  index = lane < warps ? indices[lane] : INT32_MAX;
  for (int offset = 16; offset > 0; offset >>= 1) {
    argmax_combine(value, index, __shfl_xor_sync(0xffffffffu, value, offset),
                   __shfl_xor_sync(0xffffffffu, index, offset));
  }
  return index;
}

// The first index of the largest value of row[0, n), returned to every thread; the block's
// threads stride over the row (same rules as block_sum).
__device__ __forceinline__ int32_t row_argmax(const float* row, int64_t n) {
  float best = -INFINITY;
  int32_t index = INT32_MAX;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    argmax_combine(best, index, row[i], static_cast<int32_t>(i));
  }
  return block_argmax(best, index);
}

}  // namespace kvshard::cuda
