// The host element type with the same bits as a device element type: the CPU kernels' twins
// (kernels/cpu/half.h) of __half, __nv_bfloat16 and __nv_fp8_e4m3; other types are their own.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kernels/cpu/half.h"

namespace kvshard::cuda {

template <typename T>
struct HostTwin {
  using type = T;
};
template <>
struct HostTwin<__half> {
  using type = f16_t;
};
template <>
struct HostTwin<__nv_bfloat16> {
  using type = bf16_t;
};
template <>
struct HostTwin<__nv_fp8_e4m3> {
  using type = fp8_e4m3_t;
};
template <typename T>
using HostOf = typename HostTwin<T>::type;

}  // namespace kvshard::cuda
