#include "shard/dtype.h"

#include <bit>
#include <cstring>
#include <string>

#include "kernels/cpu/half.h"

namespace kvshard {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kI8: return 1;
    case DType::kF8E4M3: return 1;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI8: return "I8";
    case DType::kF8E4M3: return "F8_E4M3";
  }
  return "?";
}

const char* KvDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kI8: return "int8";
    case DType::kF8E4M3: return "fp8";
  }
  return "?";
}

StatusOr<DType> ParseDType(std::string_view name) {
  if (name == "F32" || name == "float32" || name == "f32") return DType::kF32;
  if (name == "F16" || name == "float16" || name == "f16") return DType::kF16;
  if (name == "BF16" || name == "bfloat16" || name == "bf16") return DType::kBF16;
  return InvalidArgument("unknown dtype \"{}\" (expected F32, F16 or BF16)", std::string(name));
}

StatusOr<DType> ParseKvDType(std::string_view name) {
  if (name == "int8" || name == "i8" || name == "I8") return DType::kI8;
  if (name == "fp8" || name == "f8_e4m3" || name == "F8_E4M3" || name == "fp8_e4m3") {
    return DType::kF8E4M3;
  }
  auto d = ParseDType(name);
  if (!d.ok()) {
    return InvalidArgument("unknown KV cache dtype \"{}\" (expected f32, f16, bf16, int8 or fp8)",
                           std::string(name));
  }
  return d;
}

// One implementation of each conversion: the kernels' (kernels/cpu/half.h), which the KV cache
// uses too, so the bit-exact tests here cover both.
float HalfToFloat(uint16_t h) { return f16_bits_to_f32(h); }
uint16_t FloatToHalf(float f) { return f32_to_f16_bits(f); }
float Bf16ToFloat(uint16_t b) { return bf16_bits_to_f32(b); }
uint16_t FloatToBf16(float f) { return f32_to_bf16_bits(f); }

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
    case DType::kI8:
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(static_cast<int8_t>(bytes[i]));
      return;
    case DType::kF8E4M3:
      for (size_t i = 0; i < n; ++i) out[i] = fp8_e4m3_bits_to_f32(bytes[i]);
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
    case DType::kI8:  // the codes of unscaled values: rounded, saturated
      for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<uint8_t>(f32_to_i8(in[i]));
      return;
    case DType::kF8E4M3:
      for (size_t i = 0; i < n; ++i) bytes[i] = f32_to_fp8_e4m3_bits(in[i]);
      return;
  }
}

}  // namespace kvshard
