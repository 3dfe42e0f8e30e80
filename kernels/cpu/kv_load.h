// One vector of a KV cache row widened to f32, for every cache dtype (kernels/cpu/paged_attention.h
// names them). Quantized codes come out as code / kCodeDivisor<KV>: a row's value is then
// load_kv(p) x (its scale x kCodeDivisor<KV>).
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/cpu/half.h"
#include "kernels/cpu/simd.h"

namespace kvshard {

template <typename KV>
inline constexpr float kCodeDivisor = 1.0f;
template <>
inline constexpr float kCodeDivisor<fp8_e4m3_t> = 256.0f;

template <typename KV>
inline simd::vec load_kv(const KV* p) {
  if constexpr (std::is_same_v<KV, float>) {
    return simd::load(p);
  } else if constexpr (std::is_same_v<KV, f16_t>) {
    return simd::load_f16(reinterpret_cast<const uint16_t*>(p));
  } else if constexpr (std::is_same_v<KV, bf16_t>) {
    return simd::load_bf16(reinterpret_cast<const uint16_t*>(p));
  } else if constexpr (std::is_same_v<KV, int8_t>) {
    return simd::load_i8(p);
  } else {
    return simd::load_fp8_div256(reinterpret_cast<const uint8_t*>(p));
  }
}

}  // namespace kvshard
