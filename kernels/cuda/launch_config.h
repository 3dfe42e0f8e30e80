// Launch planning of the CUDA kernels: grid sizes, attention tiles, split-K partitions and
// workspace sizes. Plain C++ (no CUDA headers needed) so that all of it is unit-tested on a host
// without a GPU; the few functions the kernels also call are KVS_HOST_DEVICE.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "plan/paged_kv.h"  // KVS_HOST_DEVICE

namespace kvshard::cuda {

// Element-wise kernels: threads per block and the grid of a grid-stride loop over n elements.
inline constexpr int kElementwiseThreads = 256;
inline constexpr int64_t kMaxElementwiseBlocks = 65535;
int64_t ElementwiseBlocks(int64_t n);

// Attention (kernels/cuda/paged_attention.h). One CTA computes the rows (token, query head) of one
// tile of tokens of one sequence and one KV head, over one split of the sequence's KV blocks.
// Each thread keeps kAttentionAccPerThread f32 accumulators of the [rows, head_dim] output tile.
inline constexpr int kAttentionThreads = 256;
inline constexpr int kAttentionAccPerThread = 16;
inline constexpr int64_t kAttentionMaxTileElems = kAttentionThreads * kAttentionAccPerThread;
inline constexpr int64_t kAttentionMaxTileTokens = 64;
inline constexpr int64_t kAttentionMaxKvTile = 32;  // one warp lane per KV position in softmax
inline constexpr int64_t kAttentionMaxSplits = 64;
// Dynamic shared memory per CTA: under the 48 KiB a kernel may use without opting in, leaving room
// for the kernel's few static variables.
inline constexpr int64_t kAttentionSmemBudget = 46 * 1024;

struct AttentionLaunch {
  int64_t tile_tokens = 1;  // query tokens per CTA (all of one sequence)
  int64_t kv_tile = 32;     // KV positions staged in shared memory per pass
  int64_t num_splits = 1;   // CTAs along each sequence's KV blocks; > 1 adds the merge kernel
  int64_t smem_bytes = 0;   // dynamic shared memory per CTA
};

// Shared memory of one CTA: q [rows, head_dim], K and V [kv_tile, head_dim + 1] (padded against
// bank conflicts), probabilities [rows, kv_tile], running max, sum and correction [rows].
KVS_HOST_DEVICE inline int64_t AttentionSmemBytes(int64_t rows, int64_t kv_tile, int64_t head_dim) {
  return 4 * (rows * head_dim + 2 * kv_tile * (head_dim + 1) + rows * kv_tile + 3 * rows);
}

// Whether the attention kernels handle this head geometry; if not, `why` says what would.
bool AttentionSupported(int64_t q_heads, int64_t kv_heads, int64_t head_dim, std::string* why);

// Decode: one token per tile, and as many splits as fill about two waves of `sm_count`
// multiprocessors, at most one per KV block of the longest sequence (`max_kv_blocks`) and at most
// kAttentionMaxSplits. For a CUDA graph, pass the longest sequence the graph will ever see: the
// kernel partitions each sequence's actual blocks over the fixed number of splits.
AttentionLaunch PlanDecodeAttention(int64_t tokens, int64_t kv_heads, int64_t group,
                                    int64_t head_dim, int64_t max_kv_blocks, int sm_count);

// Prefill: tiles of as many tokens as fit the accumulators, no split.
AttentionLaunch PlanPrefillAttention(int64_t group, int64_t head_dim);

// The tiles of a batch: tokens [tiles[i], tiles[i + 1]) of one sequence, at most `tile_tokens`
// each, in order; qo_indptr: [num_seqs + 1] as in StepPlan. Returns num_tiles + 1 offsets.
std::vector<int32_t> PlanAttentionTiles(const int32_t* qo_indptr, int64_t num_seqs,
                                        int64_t tile_tokens);

// f32 elements of the split-K workspace: partial outputs [tokens, q_heads, splits, head_dim] and
// their log-sum-exp [tokens, q_heads, splits]. 0 when num_splits == 1.
int64_t AttentionWorkspaceFloats(int64_t tokens, int64_t q_heads, int64_t head_dim,
                                 int64_t num_splits);

// The KV blocks [begin, end) that split `split` of `num_splits` handles out of `n_blocks`:
// contiguous, in order, every block exactly once; trailing splits may be empty.
struct BlockRange {
  int64_t begin = 0, end = 0;
};
KVS_HOST_DEVICE inline BlockRange SplitBlocks(int64_t n_blocks, int64_t num_splits, int64_t split) {
  const int64_t per = (n_blocks + num_splits - 1) / num_splits;
  BlockRange r;
  r.begin = split * per < n_blocks ? split * per : n_blocks;
  r.end = r.begin + per < n_blocks ? r.begin + per : n_blocks;
  return r;
}

// Row-wise kernels (argmax, sampling): threads per block, one block per row.
inline constexpr int kRowThreads = 1024;

}  // namespace kvshard::cuda
