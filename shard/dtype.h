// Element types of weights on disk and on device, and bit-exact conversions between them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/status.h"

namespace kvshard {

// kI8 and kF8E4M3 are KV cache dtypes only (codes with one f32 scale per token and KV head,
// kernels/cpu/kv_quant.h); no weight is ever held in them.
enum class DType { kF32, kF16, kBF16, kI8, kF8E4M3 };

size_t DTypeSize(DType dtype);
// True for the KV dtypes stored as codes plus per-row scales.
inline bool IsQuantizedKv(DType dtype) { return dtype == DType::kI8 || dtype == DType::kF8E4M3; }
// The safetensors spelling: "F32", "F16", "BF16" (and "I8", "F8_E4M3").
const char* DTypeName(DType dtype);
// A weight dtype: the safetensors names and the torch-style
// "float32"/"float16"/"bfloat16"/"f32"/...
StatusOr<DType> ParseDType(std::string_view name);
// A KV cache dtype (--kv-dtype): those of ParseDType, "int8" and "fp8" (e4m3).
StatusOr<DType> ParseKvDType(std::string_view name);
// The --kv-dtype spelling: f32, f16, bf16, int8, fp8.
const char* KvDTypeName(DType dtype);

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
