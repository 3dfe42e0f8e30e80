// KV eviction to a per-request budget (SnapKV: Li et al., "SnapKV: LLM Knows What You are
// Looking for Before Generation", 2024), as the host and the shards agree on it.
//
// A request with kv_budget B whose prompt is longer than B computes its whole prompt with full
// attention (every prompt row sees every earlier prompt position), then compresses each layer's
// prompt KV to B positions per KV head: the last `w` prompt positions (the observation window)
// and the B - w earlier ones that the window's queries attend to most (kernels/cpu/kv_eviction.h
// scores them). Each KV head keeps its own positions, compacted in position order into cache
// indices 0..B-1; RoPE was applied before caching, so a kept key keeps its position. The tokens
// after the prompt are cached from index B on, rotated at their own positions (StepPlan's
// rope_offsets = prompt length - B).
#pragma once

#include <algorithm>
#include <cstdint>

namespace kvshard {

// The observation window for a budget: SnapKV's 32 queries, at most half the budget.
inline int64_t SnapKvWindow(int64_t budget) { return std::clamp<int64_t>(budget / 2, 1, 32); }
// Width of the average pooling that smooths the scores over neighbouring positions (SnapKV's
// kernel), zero padding at the ends.
inline constexpr int64_t kSnapKvPool = 7;

}  // namespace kvshard
