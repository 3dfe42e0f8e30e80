// 16-bit float storage types for the KV cache and weights, with scalar conversions.
// Kernels template over the storage type; arithmetic is always f32.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace kvshard {

struct f16_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};
// OCP FP8 E4M3 ("e4m3fn"): 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinity, the largest
// finite value 448, S.1111.111 NaN. A KV cache code (with a per-row scale), never a weight.
struct fp8_e4m3_t {
  uint8_t bits;
};
// An fp8 KV row's scale is the one of kFp8ScaleCandidates that stores the row with the least
// squared error: candidate j maps the row's largest magnitude to kFp8TopStep * (32 - j), from 448
// (j = 0) down to 238, every one exact in f32 (kv_append in kernels/cpu/paged_attention.cc and
// kernels/cuda/kv_append.cu; ties go to the smaller j).
inline constexpr int kFp8ScaleCandidates = 16;
inline constexpr float kFp8TopStep = 14.0f;

inline float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_f16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or nan
    return sign | 0x7c00 | (abs > 0x7f800000u ? 0x200 : 0);
  }
  if (abs >= 0x477ff000u) return sign | 0x7c00;  // rounds to >= 65520: overflow to inf
  if (abs < 0x38800000u) {                       // result is subnormal or zero
    if (abs < 0x33000000u) return sign;          // below half the smallest subnormal
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) ++h;
    return sign | static_cast<uint16_t>(h);
  }
  uint32_t h = ((abs - 0x38000000u) >> 13);
  const uint32_t rem = abs & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return sign | static_cast<uint16_t>(h);
}

inline float bf16_bits_to_f32(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40);  // quiet nan
  const uint32_t rounding = 0x7fff + ((x >> 16) & 1);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

// E4M3 -> f32, exact: a normal code's exponent and mantissa fields are an f32's, moved down by
// 20 bits and rebiased (127 - 7 = 120); a subnormal code q (exponent field 0) is q * 2^-9.
inline float fp8_e4m3_bits_to_f32(uint8_t b) {
  const uint32_t c = b & 0x7f;
  if (c == 0x7f) return std::nanf("");
  float a;
  if (c >= 8) {
    const uint32_t bits = (c + (120u << 3)) << 20;
    std::memcpy(&a, &bits, 4);
  } else {
    a = static_cast<float>(c) * 0.001953125f;  // 2^-9
  }
  return (b & 0x80) ? -a : a;
}

// f32 -> E4M3, rounding to nearest even and saturating at +-448 (a scaled KV row never exceeds
// it); NaN gives NaN. Normal values round in the f32's bits (add half a step less one, plus the
// kept mantissa's low bit: ties go to even, and a carry moves into the exponent); below 2^-6 the
// step is 2^-9, and adding 2^14 (whose f32 spacing is 2^-9) rounds to it.
inline uint8_t f32_to_fp8_e4m3_bits(float f) {
  uint32_t x = 0;
  std::memcpy(&x, &f, 4);
  const uint8_t sign = static_cast<uint8_t>((x >> 24) & 0x80);
  const uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7f;          // NaN
  if (a >= 0x43e00000u) return sign | 0x7e;  // 448 and above
  uint32_t code = 0;
  if (a < 0x3c800000u) {  // below 2^-6: subnormal steps of 2^-9
    float af = 0;
    std::memcpy(&af, &a, 4);
    const float y = af + 16384.0f;
    uint32_t yb = 0;
    std::memcpy(&yb, &y, 4);
    code = yb - 0x46800000u;  // the bits of 16384.0f
  } else {
    code = ((a + 0x7ffffu + ((a >> 20) & 1)) >> 20) - (120u << 3);
  }
  return sign | static_cast<uint8_t>(code > 0x7e ? 0x7e : code);
}

// f32 -> int8, rounding to nearest even and saturating at +-127 (symmetric: -128 is never used).
inline int8_t f32_to_i8(float f) {
  if (std::isnan(f)) return 0;
  const float r = std::nearbyint(f);
  return static_cast<int8_t>(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r));
}

inline float to_f32(float v) { return v; }
inline float to_f32(f16_t v) { return f16_bits_to_f32(v.bits); }
inline float to_f32(bf16_t v) { return bf16_bits_to_f32(v.bits); }

template <typename T>
inline T from_f32(float v);
template <>
inline float from_f32<float>(float v) {
  return v;
}
template <>
inline f16_t from_f32<f16_t>(float v) {
  return f16_t{f32_to_f16_bits(v)};
}
template <>
inline bf16_t from_f32<bf16_t>(float v) {
  return bf16_t{f32_to_bf16_bits(v)};
}

}  // namespace kvshard
