// Causal attention over the paged KV cache on the GPU (the twin of paged_attention in
// kernels/cpu/paged_attention.h): decode and prefill run the same kernel with different plans.
//
// One CTA owns one tile of query tokens of one sequence, one KV head and one split of that
// sequence's KV blocks. Its rows are every (token, query head) pair of the KV head's group, so a
// KV head's blocks are read once for all q_heads / kv_heads query heads (GQA). K and V pass
// through shared memory kv_tile positions at a time; the softmax is online (running max and sum
// per row, f32). With num_splits > 1 (flash-decoding), every split writes its normalised partial
// output and log-sum-exp to the workspace, and a second kernel merges the splits exactly:
//   out = sum_s exp(lse_s - max) * o_s / sum_s exp(lse_s - max).
//
//   decode:  tiles = [0, 1, ..., tokens] and PlanDecodeAttention (split-K over the blocks);
//   prefill: tiles = PlanAttentionTiles(qo_indptr, ..., launch.tile_tokens) and
//            PlanPrefillAttention (several tokens per CTA, causal within the tile).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/launch_config.h"
#include "plan/paged_kv.h"

namespace kvshard::cuda {

// out, q: f32 [tokens, q_heads, head_dim]; k_cache, v_cache: KV [num_blocks * block_size,
// kv_heads, head_dim] with KV = float, __half or __nv_bfloat16; view: the batch's block tables
// (device pointers); tiles: [num_tiles + 1] token offsets, each tile within one sequence and at
// most launch.tile_tokens long; token_seq, positions: [tokens]; workspace: f32
// [AttentionWorkspaceFloats(tokens, q_heads, head_dim, launch.num_splits)] (may be null when that
// is 0). Every token attends to positions 0..positions[t] of its sequence, which the plan must
// cover with blocks (BlockTables::Apply), those of them this pool holds when positions are sharded
// (view.geometry). lse, when given: f32 [tokens, q_heads], each row's log-sum-exp, -inf (with
// out = 0) for a row that reaches none of this pool's positions, as the CPU kernel gives it.
// Returns cudaErrorInvalidValue for a launch plan the kernel cannot run (see AttentionSupported).
// KV = int8_t or __nv_fp8_e4m3: codes, each (slot, KV head) row times its scale in k_scale /
// v_scale (f32 [num_blocks * block_size, kv_heads], kv_append's), dequantized as the tile enters
// shared memory; both are required for them and ignored otherwise. window > 0: sliding-window
// attention, a token sees positions positions[t] - window + 1 .. positions[t] (the CPU kernel's).
// floor > 0: positions below it are not attended either (attention sinks attend to them apart).
template <typename KV>
cudaError_t paged_attention(float* out, const float* q, const KV* k_cache, const KV* v_cache,
                            const PagedKvView& view, const int32_t* tiles, int64_t num_tiles,
                            const int32_t* token_seq, const int32_t* positions, int64_t tokens,
                            int64_t q_heads, int64_t kv_heads, int64_t head_dim, float scale,
                            const AttentionLaunch& launch, float* workspace, cudaStream_t stream,
                            float* lse = nullptr, const float* k_scale = nullptr,
                            const float* v_scale = nullptr, int64_t window = 0, int64_t floor = 0);

// The seq shards' exact merge for columns [col0, col0 + cols) of a step's attention output (the
// twin of the CPU merge_attention_columns): parts: device f32, shard s's kernel output [tokens,
// q_heads * head_dim] then its lse [tokens, q_heads] at s * tokens * q_heads * (head_dim + 1);
// out: device f32 [tokens, cols]. lse, when given (whole heads only: col0 and cols multiples of
// head_dim): device f32 [tokens, q_heads], the merged rows' log-sum-exp at their heads.
cudaError_t merge_attention_columns(float* out, const float* parts, int64_t shards, int64_t tokens,
                                    int64_t q_heads, int64_t head_dim, int64_t col0, int64_t cols,
                                    cudaStream_t stream, float* lse = nullptr);

}  // namespace kvshard::cuda
