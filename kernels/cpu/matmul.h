// out[t, n] = sum_k x[t, k] * w[n, k]: a linear layer with Hugging Face's [out, in] weight layout.
// Decode (t = 1) is a matrix-vector product bound by reading w once; prefill reuses each tile of w
// across all tokens. Threads split the output features (OpenMP), for products of kParallelMacs or
// more. w may be f32, f16 or bf16: 16-bit weights are widened to f32 as they are loaded (F16C /
// AVX-512 conversions, a shift for bf16; exact), so the result equals the f32 product of the
// widened weights bit for bit. Prefill widens each tile of w once per block of tokens.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/cpu/half.h"

namespace kvshard {

// Multiply-adds below which a CPU kernel runs on the calling thread rather than an OpenMP team.
inline constexpr int64_t kParallelMacs = int64_t{1} << 14;

// out: f32 [tokens, out_features]; x: f32 [tokens, in_features]; w: f32 [out_features, in_features]
void matmul(float* out, const float* x, const float* w, int64_t tokens, int64_t in_features,
            int64_t out_features);
void matmul(float* out, const float* x, const f16_t* w, int64_t tokens, int64_t in_features,
            int64_t out_features);
void matmul(float* out, const float* x, const bf16_t* w, int64_t tokens, int64_t in_features,
            int64_t out_features);

// 16-bit weights packed for decode: tiles of 4 rows (the last tile padded by repeating its last
// row) in which each row's next 32 columns (one 64-byte cache line) follow the previous row's, so
// that a matrix-vector product reads the matrix front to back as one stream. Read as 4 strided
// rows, each only a few KB long, DRAM streaming gave 0.56 of the read ceiling on one core against
// 0.83 packed (1024 x 4096 bf16). The columns past the last multiple of 32 close each tile, row
// after row. The same additions in the same order as matmul on the unpacked rows.
inline constexpr int64_t kPackedChunk = 32;
// Elements of the packed copy of a [rows, cols] matrix.
int64_t packed_weights_size(int64_t rows, int64_t cols);
// w: 16-bit [rows, cols] -> packed: packed_weights_size(rows, cols) elements.
void pack_weights(const uint16_t* w, uint16_t* packed, int64_t rows, int64_t cols);
void matmul_packed(float* out, const float* x, const f16_t* packed, int64_t tokens,
                   int64_t in_features, int64_t out_features);
void matmul_packed(float* out, const float* x, const bf16_t* packed, int64_t tokens,
                   int64_t in_features, int64_t out_features);

// out += the same product (used to accumulate a residual without a temporary).
void matmul_accumulate(float* out, const float* x, const float* w, int64_t tokens,
                       int64_t in_features, int64_t out_features);

// Whether a product of this shape runs on the GEMM (prefill-sized products: at least 16 tokens and
// 65,536 weights): kvshard's own (kernels/cpu/gemm.h), whose additions are one chain over k per
// output, so such a product equals the others' within f32 rounding, not bit for bit, and 16-bit
// weights still give the f32 product of their widening bit for bit; or, where KVSHARD_GEMM=openblas
// and the library is there, OpenBLAS's sgemm (16-bit weights widened to f32 a panel of 256 rows
// at a time; its order of additions). Decode never takes it.
bool matmul_uses_gemm(int64_t tokens, int64_t in_features, int64_t out_features);
// Whether that GEMM is OpenBLAS's (KVSHARD_GEMM=openblas, read once).
bool gemm_is_openblas();
// "kvshard avx512 8x48" or "OpenBLAS (OpenMP) SkylakeX": what runs the prefill-sized products.
std::string matmul_gemm_description();

// Dot product of two f32 vectors with several accumulators and wide loads.
float dot_f32(const float* a, const float* b, int64_t n);

}  // namespace kvshard
