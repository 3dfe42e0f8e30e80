#include "shard/dtype.h"

#include <bit>
#include <cstring>
#include <string>

namespace kvshard {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
  }
  return "?";
}

StatusOr<DType> ParseDType(std::string_view name) {
  if (name == "F32" || name == "float32" || name == "f32") return DType::kF32;
  if (name == "F16" || name == "float16" || name == "f16") return DType::kF16;
  if (name == "BF16" || name == "bfloat16" || name == "bf16") return DType::kBF16;
  return InvalidArgument("unknown dtype \"{}\" (expected F32, F16 or BF16)", std::string(name));
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, or NaN with its payload kept
  } else if (exp != 0) {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal half: normalise, since every half subnormal is a normal float.
    int e = 127 - 15 + 1;
    while ((mant & 0x400) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (static_cast<uint32_t>(e) << 23) | ((mant & 0x3ff) << 13);
  }
  return std::bit_cast<float>(bits);
}

uint16_t FloatToHalf(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t exp = (x >> 23) & 0xff;
  uint32_t mant = x & 0x7fffff;
  if (exp == 0xff) {
    if (mant == 0) return sign | 0x7c00;
    return static_cast<uint16_t>(sign | 0x7e00 | (mant >> 13));  // quiet NaN, top payload bits
  }
  const int e = static_cast<int>(exp) - 127 + 15;  // biased half exponent
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    // Below 2^-25 (or exactly it: a tie that goes to the even zero) everything rounds to zero.
    if (e < -10) return sign;
    mant |= 0x800000;
    const int shift = 14 - e;  // 14..24
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) ++h;  // a carry into bit 10 makes it normal
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;  // a carry may reach the exponent, or inf
  return static_cast<uint16_t>(sign | h);
}

float Bf16ToFloat(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t FloatToBf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);
  const uint32_t rounded = x + 0x7fff + ((x >> 16) & 1);
  return static_cast<uint16_t>(rounded >> 16);
}

void ConvertToF32(DType src, const void* in, float* out, size_t n) {
  const auto* bytes = static_cast<const uint8_t*>(in);
  switch (src) {
    case DType::kF32:
      if (n > 0) std::memcpy(out, in, n * sizeof(float));
      return;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes + 2 * i, 2);
        out[i] = HalfToFloat(h);
      }
      return;
    case DType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t b;
        std::memcpy(&b, bytes + 2 * i, 2);
        out[i] = Bf16ToFloat(b);
      }
      return;
  }
}

void ConvertFromF32(DType dst, const float* in, void* out, size_t n) {
  auto* bytes = static_cast<uint8_t*>(out);
  switch (dst) {
    case DType::kF32:
      if (n > 0) std::memcpy(out, in, n * sizeof(float));
      return;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToHalf(in[i]);
        std::memcpy(bytes + 2 * i, &h, 2);
      }
      return;
    case DType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t b = FloatToBf16(in[i]);
        std::memcpy(bytes + 2 * i, &b, 2);
      }
      return;
  }
}

}  // namespace kvshard
