// Element types of weights on disk and on device, and bit-exact conversions between them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/status.h"

namespace kvshard {

enum class DType { kF32, kF16, kBF16 };

size_t DTypeSize(DType dtype);
// The safetensors spelling: "F32", "F16", "BF16".
const char* DTypeName(DType dtype);
// Accepts the safetensors names and the torch-style "float32"/"float16"/"bfloat16"/"f32"/...
StatusOr<DType> ParseDType(std::string_view name);

// IEEE binary16. FloatToHalf rounds to nearest even; overflow gives inf, NaN stays NaN (quiet).
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
// bfloat16: the top half of a binary32. FloatToBf16 rounds to nearest even; NaN stays NaN (quiet).
float Bf16ToFloat(uint16_t b);
uint16_t FloatToBf16(float f);

// `in`/`out` need no alignment (tensor data in a safetensors file may sit at any offset).
void ConvertToF32(DType src, const void* in, float* out, size_t n);
void ConvertFromF32(DType dst, const float* in, void* out, size_t n);

}  // namespace kvshard
