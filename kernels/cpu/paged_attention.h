// Attention over a paged KV cache (the CPU reference and production path).
//
// The pool layout and position -> slot mapping are plan/paged_kv.h's.
#pragma once

#include <cstdint>

#include "kernels/cpu/half.h"
#include "plan/paged_kv.h"

namespace kvshard {

// KV element types: float, f16_t and bf16_t hold values; int8_t and fp8_e4m3_t (kernels/cpu/half.h)
// hold codes, and each (slot, KV head) row of head_dim codes has one f32 scale beside the pool,
// k_scale/v_scale: f32 [num_blocks * block_size, kv_heads]. A row's value is code * scale (int8:
// symmetric, scale = max |x| / 127; fp8: scale = max |x| / top, the top code of 16 from 448 down
// that stores the row best, kFp8ScaleCandidates in half.h), so a token costs head_dim + 4 bytes
// per KV head for each of K and V. The kernels dequantize inside the dot products; no
// full-precision copy of the cache is made. The scale pointers are ignored for value types.
template <typename KV>
inline constexpr bool kQuantizedKv = false;
template <>
inline constexpr bool kQuantizedKv<int8_t> = true;
template <>
inline constexpr bool kQuantizedKv<fp8_e4m3_t> = true;

// Writes each token's K and V into its slot. slots: [tokens], slot = block * block_size + offset,
// or -1 for a token this pool does not hold (another seq shard's position).
// k, v: f32 [tokens, kv_heads, head_dim]; k_cache, v_cache: KV [num_blocks * block_size, ...].
// Quantized types write each row's codes and its scale.
template <typename KV>
void kv_append(KV* k_cache, KV* v_cache, const float* k, const float* v, const int64_t* slots,
               int64_t tokens, int64_t kv_heads, int64_t head_dim, float* k_scale = nullptr,
               float* v_scale = nullptr);

// One row of a cache as f32 (code * scale for quantized types; scale ignored otherwise).
template <typename KV>
void kv_row_to_f32(float* out, const KV* row, float scale, int64_t n);

// Causal attention of each query token over positions 0..positions[t] of its sequence, those of
// them this pool holds (view.geometry: all of them unless positions are sharded).
// out, q: f32 [tokens, q_heads, head_dim]; token_seq: [tokens] sequence index of each token;
// positions: [tokens]. q_heads must be a multiple of kv_heads (grouped-query attention: the
// q_heads / kv_heads query heads of a group read their KV head's blocks once, together).
// lse, when given: f32 [tokens, q_heads], the natural log of each row's softmax denominator (its
// scores' log-sum-exp), so that the outputs of pools holding disjoint positions merge exactly
// (merge_attention). A row that reaches none of this pool's positions gets out = 0, lse = -inf.
// window > 0: sliding-window attention, each token sees positions
// max(0, positions[t] - window + 1) .. positions[t] only; blocks wholly before that are never
// read (their table entries may name blocks given to other sequences). floor > 0: positions below
// it are not attended either (attention sinks attend to them apart, with their own query).
template <typename KV>
void paged_attention(float* out, const float* q, const KV* k_cache, const KV* v_cache,
                     const PagedKvView& view, const int32_t* token_seq, const int32_t* positions,
                     int64_t tokens, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                     float scale, float* lse = nullptr, const float* k_scale = nullptr,
                     const float* v_scale = nullptr, int64_t window = 0, int64_t floor = 0);

// The exact softmax attention over the union of `shards` disjoint sets of positions, from each
// set's normalised output and log-sum-exp: out = sum_s exp(lse_s - m) o_s / sum_s exp(lse_s - m)
// with m the largest lse. partial_out: f32 [shards, rows, head_dim], partial_lse: f32 [shards,
// rows]; out: f32 [rows, head_dim]; lse (optional): the merged [rows].
void merge_attention(float* out, float* lse, const float* partial_out, const float* partial_lse,
                     int64_t shards, int64_t rows, int64_t head_dim);

// The same merge as the layer program needs it, for columns [col0, col0 + cols) of a step's
// attention output: parts holds every shard's kernel output followed by its log-sum-exp,
//   parts[s] = f32 [tokens, q_heads * head_dim] then f32 [tokens, q_heads], at s * part_floats,
// part_floats = tokens * q_heads * (head_dim + 1). out: f32 [tokens, cols].
void merge_attention_columns(float* out, const float* parts, int64_t shards, int64_t tokens,
                             int64_t q_heads, int64_t head_dim, int64_t col0, int64_t cols);

// The contiguous reference the paged kernel is tested against: k, v: f32 [len, kv_heads,
// head_dim] for one sequence, q: f32 [q_heads, head_dim] at position len - 1.
void contiguous_attention(float* out, const float* q, const float* k, const float* v, int64_t len,
                          int64_t q_heads, int64_t kv_heads, int64_t head_dim, float scale);

}  // namespace kvshard
