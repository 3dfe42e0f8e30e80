// out[t, n] = sum_k x[t, k] * w[n, k] for prefill-sized products (many tokens against a weight
// matrix in Hugging Face's [out, in] layout): kvshard's own register-blocked GEMM, over the
// engine's OpenMP team.
//
// Blocking (the BLIS scheme, with the operands' roles chosen for this layout): threads split the
// output features into column blocks of at most kGemmColumns; for each block and each slice of
// kGemmDepth input features the weights are packed once, transposed, into panels of NR columns
// (widened to f32 there for 16-bit weights, from row-major or decode-packed rows), which stay in
// L2 while every token passes; a microkernel holds an MR x NR tile of out in registers and adds,
// for each input feature, one broadcast x element times NR packed weights (MR x NR / kWidth fused
// multiply-adds per feature). x is read in place (its MR rows of one slice stay in L1).
//
// Every output is one chain of fused multiply-adds over k in order, starting from 0 (or from out,
// accumulating): the result does not depend on the number of tokens, the tile a token falls in,
// the column block or the thread count, and 16-bit weights give the f32 product of their widening
// bit for bit.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/cpu/half.h"

namespace kvshard {

// out: [tokens, out_features]; x: [tokens, in_features]; w: [out_features, in_features], or
// (16-bit, packed) in matmul.h's decode tiles. accumulate: out += the product.
void gemm(float* out, const float* x, const float* w, int64_t tokens, int64_t in_features,
          int64_t out_features, bool accumulate);
void gemm(float* out, const float* x, const f16_t* w, bool packed, int64_t tokens,
          int64_t in_features, int64_t out_features);
void gemm(float* out, const float* x, const bf16_t* w, bool packed, int64_t tokens,
          int64_t in_features, int64_t out_features);

// The same product with bf16 inputs (llama.cpp's choice for BF16 weights): x rounded to bf16 to
// nearest even, each pair of input features' two products added to the f32 sums with AVX512-BF16
// dot products (VDPBF16PS, twice the f32 multiply-adds per instruction) where the build has them,
// and in the same order with fused multiply-adds elsewhere (equal but for denormals, flushed by
// VDPBF16PS). Still one chain per output: independent of the tokens beside it and the threads.
void gemm_bf16_inputs(float* out, const float* x, const bf16_t* w, bool packed, int64_t tokens,
                      int64_t in_features, int64_t out_features);
// f16 weights: each split exactly into two bf16 parts (the weight cut to bf16 and the rest), both
// met by the token's feature rounded to bf16, their products added one after the other: twice the
// dot products of bf16 weights, for the tile unit's rate where the CPU has AMX.
void gemm_bf16_inputs(float* out, const float* x, const f16_t* w, bool packed, int64_t tokens,
                      int64_t in_features, int64_t out_features);
// On a CPU with AMX-BF16 (where Linux allows it, and unless KVSHARD_AMX=0), the same products run
// on the tile unit (32 x 32 tiles of TDPBF16PS), which sums each 16 pairs in its own order: equal
// to the dot products' sums within f32 rounding, and still one chain per output, independent of
// the tokens beside it and the threads.
// Whether gemm_bf16_inputs runs on bf16 dot products (AVX512-BF16 or AMX) in this build.
bool gemm_has_bf16_dot();
// Whether gemm_bf16_inputs takes the tile unit now; gemm_allow_amx(false) keeps it off for the
// process from then on (tests and benchmarks of the other path), true lets it back.
bool gemm_uses_amx();
void gemm_allow_amx(bool allow);
// "kvshard amx 32x32", "kvshard avx512bf16 8x48" or "kvshard fma 6x16": gemm_bf16_inputs' path.
std::string gemm_bf16_description();

// "kvshard avx512 8x48" (the vector unit, and the microkernel's tile: tokens x features).
std::string gemm_description();

}  // namespace kvshard
