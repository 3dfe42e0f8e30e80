#include "kernels/cuda/launch_config.h"

#include <algorithm>

#include "fmt/format.h"

namespace kvshard::cuda {
namespace {

// The largest KV tile (a power of two, at most a warp) that keeps a CTA within the shared memory
// budget; 0 if none does.
int64_t FitKvTile(int64_t rows, int64_t head_dim) {
  for (int64_t kv_tile = kAttentionMaxKvTile; kv_tile >= 1; kv_tile /= 2) {
    if (AttentionSmemBytes(rows, kv_tile, head_dim) <= kAttentionSmemBudget) return kv_tile;
  }
  return 0;
}

}  // namespace

int64_t ElementwiseBlocks(int64_t n) {
  const int64_t blocks = (n + kElementwiseThreads - 1) / kElementwiseThreads;
  return std::clamp<int64_t>(blocks, 1, kMaxElementwiseBlocks);
}

bool AttentionSupported(int64_t q_heads, int64_t kv_heads, int64_t head_dim, std::string* why) {
  std::string reason;
  if (q_heads <= 0 || kv_heads <= 0 || head_dim <= 0 || q_heads % kv_heads != 0) {
    reason = fmt::format(
        "q_heads ({}) must be a positive multiple of kv_heads ({}) and head_dim "
        "({}) positive",
        q_heads, kv_heads, head_dim);
  } else if ((q_heads / kv_heads) * head_dim > kAttentionMaxTileElems) {
    reason = fmt::format(
        "the CUDA attention kernel holds one KV head's query group in a CTA: (q_heads / kv_heads) "
        "* head_dim must be at most {}, got {} * {} (use more ranks or the CPU backend)",
        kAttentionMaxTileElems, q_heads / kv_heads, head_dim);
  } else if (FitKvTile(q_heads / kv_heads, head_dim) == 0) {
    reason =
        fmt::format("head_dim {} does not fit the CUDA attention kernel's shared memory", head_dim);
  }
  if (why) *why = reason;
  return reason.empty();
}

AttentionLaunch PlanDecodeAttention(int64_t tokens, int64_t kv_heads, int64_t group,
                                    int64_t head_dim, int64_t max_kv_blocks, int sm_count) {
  AttentionLaunch launch;
  launch.tile_tokens = 1;
  launch.kv_tile = FitKvTile(group, head_dim);
  const int64_t ctas = std::max<int64_t>(1, tokens * kv_heads);
  const int64_t target = 2 * std::max(sm_count, 1);
  int64_t splits = (target + ctas - 1) / ctas;
  splits = std::min({splits, std::max<int64_t>(max_kv_blocks, 1), kAttentionMaxSplits});
  launch.num_splits = std::max<int64_t>(splits, 1);
  launch.smem_bytes = AttentionSmemBytes(group, launch.kv_tile, head_dim);
  return launch;
}

AttentionLaunch PlanPrefillAttention(int64_t group, int64_t head_dim) {
  AttentionLaunch launch;
  const int64_t max_rows = std::max<int64_t>(kAttentionMaxTileElems / head_dim, 1);
  launch.tile_tokens = std::clamp<int64_t>(max_rows / group, 1, kAttentionMaxTileTokens);
  const int64_t rows = launch.tile_tokens * group;
  launch.kv_tile = FitKvTile(rows, head_dim);
  launch.num_splits = 1;
  launch.smem_bytes = AttentionSmemBytes(rows, launch.kv_tile, head_dim);
  return launch;
}

std::vector<int32_t> PlanAttentionTiles(const int32_t* qo_indptr, int64_t num_seqs,
                                        int64_t tile_tokens) {
  std::vector<int32_t> tiles;
  tiles.push_back(num_seqs > 0 ? qo_indptr[0] : 0);
  for (int64_t s = 0; s < num_seqs; ++s) {
    for (int64_t t = qo_indptr[s]; t < qo_indptr[s + 1]; t += tile_tokens) {
      tiles.push_back(static_cast<int32_t>(std::min<int64_t>(t + tile_tokens, qo_indptr[s + 1])));
    }
  }
  return tiles;
}

int64_t AttentionWorkspaceFloats(int64_t tokens, int64_t q_heads, int64_t head_dim,
                                 int64_t num_splits) {
  if (num_splits <= 1) return 0;
  return tokens * q_heads * num_splits * (head_dim + 1);
}

}  // namespace kvshard::cuda
