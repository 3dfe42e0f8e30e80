// ggml's block formats widened to f32 (GGUF tensors at load time). A row of n values is n /
// block_elems consecutive blocks (shard/gguf.h gives the sizes):
//   Q8_0  [f16 d][int8 q x32]                  x = d * q
//   Q4_0  [f16 d][u8 x16: low nibbles are values 0..15, high nibbles 16..31]  x = d * (q - 8)
//   Q4_1  [f16 d][f16 m][u8 x16, as Q4_0]     x = d * q + m
//   Q4_K  [f16 d][f16 dmin][u8 scales x12: 8 6-bit scales and mins][u8 x128]: 8 sub-blocks of
//         32, x = d * scale * q - dmin * min (values 0..31 and 32..63 of each 64 share the bytes)
//   Q6_K  [u8 low 4 bits x128][u8 high 2 bits x64][int8 scales x16][f16 d]: x = d * scale * (q -
//   32)
// as ggml's dequantize_row_* functions define them.
#pragma once

#include <cstdint>

namespace kvshard {

// Widens the n values at `src` of ggml type `type` (a GgmlType id) into dst. n must be a
// multiple of the type's block size; returns false for a type this file does not read.
bool dequantize_row(uint32_t type, const uint8_t* src, float* dst, int64_t n);

}  // namespace kvshard
