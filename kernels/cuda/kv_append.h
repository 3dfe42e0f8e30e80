// Writes each token's K and V into its slot of the paged cache on the GPU (the twin of
// kv_append in kernels/cpu/paged_attention.h). Layout of one layer's pool, K and V each:
//   KV [num_blocks, block_size, kv_heads, head_dim], slot = block * block_size + offset.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kvshard::cuda {

// k_cache, v_cache: KV [num_blocks * block_size, kv_heads, head_dim] with KV = float, __half or
// __nv_bfloat16 (rounded to nearest even, bit-identical to the CPU's kv_append); k, v: f32
// [tokens, kv_heads, head_dim]; slots: [tokens] (-1: not this pool's position, skipped). Slots must
// be distinct within one call. KV = int8_t or __nv_fp8_e4m3 (quantized): each (slot, KV head) row
// gets codes and its f32 scale in k_scale / v_scale [num_blocks * block_size, kv_heads], as the
// CPU's kv_append computes them (codes bit-identical); required for them, ignored otherwise.
template <typename KV>
cudaError_t kv_append(KV* k_cache, KV* v_cache, const float* k, const float* v,
                      const int64_t* slots, int64_t tokens, int64_t kv_heads, int64_t head_dim,
                      cudaStream_t stream, float* k_scale = nullptr, float* v_scale = nullptr);

}  // namespace kvshard::cuda
