// The SnapKV selection (plan/kv_eviction.h): which prompt positions each KV head keeps.
#pragma once

#include <cstdint>

namespace kvshard {

// logits: f32 [q_heads, window, length], the scaled scores q . k of the prompt's last `window`
// queries (query i sits at position length - window + i) against every prompt position (entries
// past a query's own position are ignored: causal). q_heads is a multiple of kv_heads; KV head h
// serves query heads [h * g, (h + 1) * g).
// Each KV head's score of position p < length - window: the sum over its query heads and the
// window's queries of softmax(row)[p] (in double), then averaged over kSnapKvPool neighbours
// (zero padded). kept: [kv_heads, keep], for each head its keep - window best positions (higher
// score first, the lower position on a tie) in increasing order, then the window's positions.
// Needs window <= keep < length.
void snapkv_select(const float* logits, int64_t q_heads, int64_t kv_heads, int64_t window,
                   int64_t length, int64_t keep, int32_t* kept);

// The choice from one KV head's scores of positions [0, prefix) (prefix = length - window):
// pooled over kSnapKvPool neighbours, the keep - window best in increasing order, then the
// window's positions prefix..prefix + window - 1. kept: [keep].
void snapkv_pick(const float* score, int64_t prefix, int64_t window, int64_t keep, int32_t* kept);

}  // namespace kvshard
