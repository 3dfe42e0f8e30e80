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

// E4M3 -> f32, exact. Its bits shifted into a binary16's place are a binary16 of the same sign
// and mantissa whose exponent bias (15) is 8 more than E4M3's (7): so the value is that binary16
// times 2^8, subnormals included. The vector kernels decode the same way (simd::load_fp8).
inline float fp8_e4m3_bits_to_f32(uint8_t b) {
  if ((b & 0x7f) == 0x7f) return std::nanf("");
  const uint16_t h = static_cast<uint16_t>(((b & 0x80) << 8) | ((b & 0x7f) << 7));
  return f16_bits_to_f32(h) * 256.0f;
}

// f32 -> E4M3, rounding to nearest even and saturating at +-448 (a scaled KV row never exceeds
// it); NaN gives NaN.
inline uint8_t f32_to_fp8_e4m3_bits(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7e;
  // The spacing of E4M3 values around a: 2^(e - 3) for a normal a in [2^e, 2^(e+1)), 2^-9 below
  // the smallest normal 2^-6. nearbyint rounds half to even in the default rounding mode.
  int e = 0;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1): a in [2^(e-1), 2^e)
  const int quantum_exp = (e - 1 < -6 ? -6 : e - 1) - 3;
  const float q = std::nearbyint(std::ldexp(a, -quantum_exp));  // a in quanta
  a = std::ldexp(q, quantum_exp);
  if (a == 0.0f) return sign;
  if (a >= 448.0f) return sign | 0x7e;
  if (a < 0.015625f) return sign | static_cast<uint8_t>(q);  // subnormal: q quanta of 2^-9
  std::frexp(a, &e);                                         // rounding may have carried
  const int exp_field = e - 1 + 7;
  const int mant = static_cast<int>(std::ldexp(a, -(e - 1) + 3)) - 8;
  return sign | static_cast<uint8_t>((exp_field << 3) | mant);
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
