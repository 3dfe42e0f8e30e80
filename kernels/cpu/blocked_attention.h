// Prefill attention blocked as flash attention is, on the CPU: a run of consecutive query tokens
// of one sequence (a prefill chunk's, up to BlockedRunTokens(group) of them) against one KV
// head's positions, tile by tile of this pool's paged blocks, read in place. paged_attention
// (kernels/cpu/paged_attention.h) takes it for every step that is not pure decode.
#pragma once

#include <cstdint>

#include "plan/paged_kv.h"

namespace kvshard {

// Whether the blocked kernel serves this head size on this build's vector unit.
bool BlockedAttentionFits(int64_t head_dim);

// How many query tokens one call takes: about 128 query rows (tokens x the group's heads).
int64_t BlockedRunTokens(int64_t group);

// Causal attention of `count` query tokens at positions first_pos .. first_pos + count - 1 of one
// sequence (block table `table`), heads kvh * group .. (kvh + 1) * group - 1, over the positions
// of this pool each token reaches (window and floor as paged_attention takes them).
// q, out: the run's first token's rows, f32 [count, q_heads, head_dim]; lse (optional): f32
// [count, q_heads] at the same token. A row that reaches none of this pool's positions gets
// out = 0, lse = -inf.
//
// The work is two small GEMMs per tile of 66 positions (44 without vector units): the transposed
// scores S^T = K Q^T (the run's scaled queries transposed once, [head_dim, rows]; each key element
// broadcast against vectors of query rows) and O += P V (each probability broadcast against vectors
// of a V row), with the online softmax between them vectorised across query rows. Tiles past the
// run's last position are never read, rows a tile cannot reach are not computed, and quantized or
// 16-bit rows are widened (and scaled) once per tile for all the run's rows.
template <typename KV>
void blocked_attention_run(float* out, float* lse, const float* q, int64_t count, int64_t first_pos,
                           int64_t q_heads, int64_t kvh, int64_t group, int64_t head_dim,
                           const KV* k_cache, const KV* v_cache, const float* k_scale,
                           const float* v_scale, const PagedKvGeometry& geometry,
                           const int32_t* table, int64_t kv_heads, float scale, int64_t window,
                           int64_t floor);

}  // namespace kvshard
