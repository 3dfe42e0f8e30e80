#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/paged_attention.h"

namespace kvshard::cuda {
namespace {

constexpr int kWarps = kAttentionThreads / 32;
constexpr int kMergeThreads = 128;

template <typename KV>
__global__ void __launch_bounds__(kAttentionThreads)
    paged_attention_kernel(float* out, float* out_lse, float* partial_out, float* partial_lse,
                           const float* q, const KV* k_cache, const KV* v_cache,
                           const float* k_scale, const float* v_scale, const PagedKvView view,
                           const int32_t* tiles, const int32_t* token_seq, const int32_t* positions,
                           int q_heads, int kv_heads, int head_dim, int tile_tokens, int kv_tile,
                           int num_splits, float scale, int window, int floor) {
  const int kvh = blockIdx.y;
  const int split = blockIdx.z;
  const int group = q_heads / kv_heads;
  const int t0 = tiles[blockIdx.x];
  const int n_tokens = tiles[blockIdx.x + 1] - t0;
  if (n_tokens <= 0) return;                 // an empty tile: nothing to do (uniform per CTA)
  if (n_tokens > tile_tokens) __trap();      // a tile plan that does not match the launch
  const int rows = n_tokens * group;         // row r: token t0 + r / group, head r % group
  const int max_rows = tile_tokens * group;  // the shared memory layout is sized for these
  const int kv_stride = head_dim + 1;

  KVS_DYNAMIC_SMEM(float, smem);
  float* q_s = smem;                       // f32 [max_rows, head_dim]
  float* k_s = q_s + max_rows * head_dim;  // f32 [kv_tile, head_dim + 1]
  float* v_s = k_s + kv_tile * kv_stride;  // f32 [kv_tile, head_dim + 1]
  float* p_s = v_s + kv_tile * kv_stride;  // f32 [max_rows, kv_tile] scores, then weights
  float* m_s = p_s + max_rows * kv_tile;   // f32 [max_rows] running max of the scores
  float* l_s = m_s + max_rows;             // f32 [max_rows] running sum of exp(score - max)
  float* c_s = l_s + max_rows;             // f32 [max_rows] this pass's rescale of the output
  KVS_SHARED(int32_t, pos_s, kAttentionMaxTileTokens);
  KVS_SHARED(int32_t, kv_len_s, 2);  // the tile's causal reach, then its first position

  if (threadIdx.x < n_tokens) pos_s[threadIdx.x] = positions[t0 + threadIdx.x];
  for (int e = threadIdx.x; e < rows * head_dim; e += kAttentionThreads) {
    const int r = e / head_dim, d = e - r * head_dim;
    const int64_t t = t0 + r / group;
    const int h = kvh * group + r % group;
    q_s[e] = q[(t * q_heads + h) * head_dim + d];
  }
  for (int r = threadIdx.x; r < max_rows; r += kAttentionThreads) {
    m_s[r] = -INFINITY;
    l_s[r] = 0.0f;
    c_s[r] = 1.0f;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t last = 0, first = pos_s[0];
    for (int i = 0; i < n_tokens; ++i) {
      last = max(last, pos_s[i]);
      first = min(first, pos_s[i]);
    }
    kv_len_s[0] = last + 1;
    kv_len_s[1] = first;
  }
  __syncthreads();

  // This split's share of the tile's KV: whole blocks of this pool, cut at the longest causal
  // reach. Positions are counted locally (this pool's positions in order: all of them unless
  // positions are sharded), and mapped to global positions for the causal mask.
  const int kv_len = kv_len_s[0];
  const PagedKvGeometry g = view.geometry;
  const int64_t block_size = g.block_size;
  const int64_t local_blocks = g.BlocksFor(kv_len);
  const int64_t local_len =
      local_blocks == 0
          ? 0
          : (local_blocks - 1) * block_size +
                min(block_size, static_cast<int64_t>(kv_len) - g.BlockStart(local_blocks - 1));
  // Blocks wholly before every token's window, or below the floor, are never read (as on the
  // CPU): their table entries may name blocks released to other sequences.
  const int64_t low = window > 0 ? max(floor, kv_len_s[1] - window + 1) : floor;
  const int64_t skipped = min(local_blocks, g.BlocksFor(low - block_size + 1));
  BlockRange range = SplitBlocks(local_blocks - skipped, num_splits, split);
  range.begin += skipped;
  range.end += skipped;
  const int p_begin = static_cast<int>(range.begin * block_size);
  const int p_end = static_cast<int>(min(range.end * block_size, local_len));
  const int32_t* table = view.Table(token_seq[t0]);
  const int64_t kv_row = static_cast<int64_t>(kv_heads) * head_dim;
  const KV* k_head = k_cache + static_cast<int64_t>(kvh) * head_dim;
  const KV* v_head = v_cache + static_cast<int64_t>(kvh) * head_dim;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  // Output accumulators: element threadIdx.x + i * kAttentionThreads of [rows, head_dim].
  float acc[kAttentionAccPerThread];
#pragma unroll
  for (int i = 0; i < kAttentionAccPerThread; ++i) acc[i] = 0.0f;

  for (int p0 = p_begin; p0 < p_end; p0 += kv_tile) {
    for (int e = threadIdx.x; e < kv_tile * head_dim; e += kAttentionThreads) {
      const int j = e / head_dim, d = e - j * head_dim;
      const int p = p0 + j;  // local
      float kx = 0.0f, vx = 0.0f;
      if (p < p_end) {
        const int64_t slot = g.SlotOf(table[p / block_size], p % block_size);
        kx = to_f32(k_head[slot * kv_row + d]);
        vx = to_f32(v_head[slot * kv_row + d]);
        if constexpr (kQuantizedKv<KV>) {  // code x its row's scale, dequantized in shared memory
          kx *= k_scale[slot * kv_heads + kvh];
          vx *= v_scale[slot * kv_heads + kvh];
        }
      }
      k_s[j * kv_stride + d] = kx;
      v_s[j * kv_stride + d] = vx;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < rows * kv_tile; e += kAttentionThreads) {
      const int r = e / kv_tile, j = e - r * kv_tile;
      const int p = p0 + j;  // local
      float s = -INFINITY;
      const int64_t at = g.BlockStart(p / block_size) + p % block_size;  // global position
      if (p < p_end && at <= pos_s[r / group] && at >= floor &&
          (window == 0 || at > pos_s[r / group] - window)) {
        const float* qr = q_s + r * head_dim;
        const float* kr = k_s + j * kv_stride;
        float dot = 0.0f;
        for (int d = 0; d < head_dim; ++d) dot = fmaf(qr[d], kr[d], dot);
        s = dot * scale;
      }
      p_s[e] = s;
    }
    __syncthreads();
    // Online softmax, one warp per row: rescale what was accumulated when the running max grows.
    for (int r = warp; r < rows; r += kWarps) {
      const float s = lane < kv_tile ? p_s[r * kv_tile + lane] : -INFINITY;
      const float m_old = m_s[r];
      const float m_new = fmaxf(m_old, warp_max(s));
      const float corr = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
      const float w = s == -INFINITY ? 0.0f : expf(s - m_new);
      const float sum = warp_sum(w);
      if (lane < kv_tile) p_s[r * kv_tile + lane] = w;
      if (lane == 0) {
        m_s[r] = m_new;
        l_s[r] = l_s[r] * corr + sum;
        c_s[r] = corr;
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kAttentionAccPerThread; ++i) {
      const int e = threadIdx.x + i * kAttentionThreads;
      if (e < rows * head_dim) {
        const int r = e / head_dim, d = e - r * head_dim;
        const float* pr = p_s + r * kv_tile;
        float a = acc[i] * c_s[r];
        for (int j = 0; j < kv_tile; ++j) a = fmaf(pr[j], v_s[j * kv_stride + d], a);
        acc[i] = a;
      }
    }
    __syncthreads();  // the next pass overwrites k_s, v_s and p_s
  }

#pragma unroll
  for (int i = 0; i < kAttentionAccPerThread; ++i) {
    const int e = threadIdx.x + i * kAttentionThreads;
    if (e < rows * head_dim) {
      const int r = e / head_dim, d = e - r * head_dim;
      const int64_t row = static_cast<int64_t>(t0 + r / group) * q_heads + kvh * group + r % group;
      const float l = l_s[r];
      const float o = l > 0.0f ? acc[i] / l : 0.0f;
      if (num_splits == 1) {
        out[row * head_dim + d] = o;
        if (out_lse != nullptr && d == 0) {
          out_lse[row] = l > 0.0f ? m_s[r] + logf(l) : -INFINITY;
        }
      } else {
        partial_out[(row * num_splits + split) * head_dim + d] = o;
      }
    }
  }
  if (num_splits > 1) {
    for (int r = threadIdx.x; r < rows; r += kAttentionThreads) {
      const int64_t row = static_cast<int64_t>(t0 + r / group) * q_heads + kvh * group + r % group;
      partial_lse[row * num_splits + split] = l_s[r] > 0.0f ? m_s[r] + logf(l_s[r]) : -INFINITY;
    }
  }
}

// One CTA per (token, query head): the exact log-sum-exp merge of the splits. Empty splits have
// lse = -inf and weigh nothing.
__global__ void __launch_bounds__(kMergeThreads)
    attention_merge_kernel(float* out, float* out_lse, const float* partial_out,
                           const float* partial_lse, int num_splits, int head_dim) {
  const int64_t row = blockIdx.x;
  const float* lse = partial_lse + row * num_splits;
  float mx = -INFINITY;
  for (int s = 0; s < num_splits; ++s) mx = fmaxf(mx, lse[s]);
  float denom = 0.0f;
  for (int s = 0; s < num_splits; ++s) {
    if (lse[s] != -INFINITY) denom += expf(lse[s] - mx);
  }
  for (int d = threadIdx.x; d < head_dim; d += kMergeThreads) {
    float o = 0.0f;
    for (int s = 0; s < num_splits; ++s) {
      if (lse[s] != -INFINITY) {
        o += expf(lse[s] - mx) * partial_out[(row * num_splits + s) * head_dim + d];
      }
    }
    out[row * head_dim + d] = denom > 0.0f ? o / denom : 0.0f;
  }
  if (out_lse != nullptr && threadIdx.x == 0) {
    out_lse[row] = denom > 0.0f ? mx + logf(denom) : -INFINITY;
  }
}

// One CTA per (token, head of the column range): the seq shards' exact merge, written for the
// columns [col0, col0 + cols) only (the twin of the CPU merge_attention_columns).
__global__ void __launch_bounds__(kMergeThreads)
    merge_columns_kernel(float* out, float* out_lse, const float* parts, int shards, int64_t tokens,
                         int64_t q_heads, int64_t head_dim, int64_t col0, int64_t cols, int64_t h0,
                         int64_t heads) {
  const int64_t t = blockIdx.x / heads, h = h0 + blockIdx.x % heads;
  const int64_t width = q_heads * head_dim, part = tokens * (width + q_heads);
  float mx = -INFINITY;
  for (int s = 0; s < shards; ++s)
    mx = fmaxf(mx, parts[s * part + tokens * width + t * q_heads + h]);
  float denom = 0.0f;
  if (mx != -INFINITY) {
    for (int s = 0; s < shards; ++s)
      denom += expf(parts[s * part + tokens * width + t * q_heads + h] - mx);
  }
  const int64_t c0 = max(col0, h * head_dim), c1 = min(col0 + cols, (h + 1) * head_dim);
  for (int64_t c = c0 + threadIdx.x; c < c1; c += kMergeThreads) {
    float o = 0.0f;
    if (denom > 0.0f) {
      for (int s = 0; s < shards; ++s) {
        const float w = expf(parts[s * part + tokens * width + t * q_heads + h] - mx);
        if (w != 0.0f) o += w * parts[s * part + t * width + c];
      }
      o /= denom;
    }
    out[t * cols + (c - col0)] = o;
  }
  if (out_lse != nullptr && threadIdx.x == 0) {
    out_lse[t * q_heads + h] = denom > 0.0f ? mx + logf(denom) : -INFINITY;
  }
}

bool LaunchIsValid(const AttentionLaunch& l, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                   int64_t block_size, int64_t num_tiles, int64_t tokens, const float* workspace) {
  if (kv_heads <= 0 || q_heads % kv_heads != 0 || head_dim <= 0 || block_size <= 0 ||
      block_size > kMaxKvBlockSize) {
    return false;
  }
  const int64_t group = q_heads / kv_heads;
  const int64_t rows = l.tile_tokens * group;
  return l.tile_tokens >= 1 && l.tile_tokens <= kAttentionMaxTileTokens && l.kv_tile >= 1 &&
         l.kv_tile <= kAttentionMaxKvTile && rows * head_dim <= kAttentionMaxTileElems &&
         l.num_splits >= 1 && l.num_splits <= kAttentionMaxSplits &&
         l.smem_bytes == AttentionSmemBytes(rows, l.kv_tile, head_dim) &&
         l.smem_bytes <= kAttentionSmemBudget && kv_heads <= 65535 && num_tiles <= INT32_MAX &&
         tokens * q_heads <= INT32_MAX && (l.num_splits == 1 || workspace != nullptr);
}

}  // namespace

template <typename KV>
cudaError_t paged_attention(float* out, const float* q, const KV* k_cache, const KV* v_cache,
                            const PagedKvView& view, const int32_t* tiles, int64_t num_tiles,
                            const int32_t* token_seq, const int32_t* positions, int64_t tokens,
                            int64_t q_heads, int64_t kv_heads, int64_t head_dim, float scale,
                            const AttentionLaunch& launch, float* workspace, cudaStream_t stream,
                            float* lse, const float* k_scale, const float* v_scale, int64_t window,
                            int64_t floor) {
  if (tokens <= 0 || num_tiles <= 0) return cudaSuccess;
  if (kQuantizedKv<KV> && (k_scale == nullptr || v_scale == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (!LaunchIsValid(launch, q_heads, kv_heads, head_dim, view.geometry.block_size, num_tiles,
                     tokens, workspace)) {
    return cudaErrorInvalidValue;
  }
  const int64_t splits = launch.num_splits;
  float* partial_out = splits > 1 ? workspace : nullptr;
  float* partial_lse = splits > 1 ? workspace + tokens * q_heads * splits * head_dim : nullptr;
  const dim3 grid(static_cast<unsigned>(num_tiles), static_cast<unsigned>(kv_heads),
                  static_cast<unsigned>(splits));
  KVS_LAUNCH(grid, kAttentionThreads, launch.smem_bytes, stream, paged_attention_kernel<KV>)
  (out, lse, partial_out, partial_lse, q, k_cache, v_cache, k_scale, v_scale, view, tiles,
   token_seq, positions, static_cast<int>(q_heads), static_cast<int>(kv_heads),
   static_cast<int>(head_dim), static_cast<int>(launch.tile_tokens),
   static_cast<int>(launch.kv_tile), static_cast<int>(splits), scale, static_cast<int>(window),
   static_cast<int>(floor));
  const cudaError_t rc = cudaGetLastError();
  if (rc != cudaSuccess || splits == 1) return rc;
  KVS_LAUNCH(static_cast<unsigned>(tokens * q_heads), kMergeThreads, 0, stream,
             attention_merge_kernel)
  (out, lse, partial_out, partial_lse, static_cast<int>(splits), static_cast<int>(head_dim));
  return cudaGetLastError();
}

cudaError_t merge_attention_columns(float* out, const float* parts, int64_t shards, int64_t tokens,
                                    int64_t q_heads, int64_t head_dim, int64_t col0, int64_t cols,
                                    cudaStream_t stream, float* lse) {
  if (tokens <= 0 || cols <= 0) return cudaSuccess;
  if (shards < 1 || shards > kMaxMergeShards || col0 < 0 || col0 + cols > q_heads * head_dim ||
      (lse != nullptr && (col0 % head_dim != 0 || cols % head_dim != 0))) {
    return cudaErrorInvalidValue;
  }
  const int64_t h0 = col0 / head_dim, h1 = (col0 + cols + head_dim - 1) / head_dim;
  KVS_LAUNCH(static_cast<unsigned>(tokens * (h1 - h0)), kMergeThreads, 0, stream,
             merge_columns_kernel)
  (out, lse, parts, static_cast<int>(shards), tokens, q_heads, head_dim, col0, cols, h0, h1 - h0);
  return cudaGetLastError();
}

#define KVSHARD_INSTANTIATE_ATTENTION(KV)                                                        \
  template cudaError_t paged_attention<KV>(                                                      \
      float*, const float*, const KV*, const KV*, const PagedKvView&, const int32_t*, int64_t,   \
      const int32_t*, const int32_t*, int64_t, int64_t, int64_t, int64_t, float,                 \
      const AttentionLaunch&, float*, cudaStream_t, float*, const float*, const float*, int64_t, \
      int64_t);
KVSHARD_INSTANTIATE_ATTENTION(float)
KVSHARD_INSTANTIATE_ATTENTION(__half)
KVSHARD_INSTANTIATE_ATTENTION(__nv_bfloat16)
KVSHARD_INSTANTIATE_ATTENTION(int8_t)
KVSHARD_INSTANTIATE_ATTENTION(__nv_fp8_e4m3)
#undef KVSHARD_INSTANTIATE_ATTENTION

}  // namespace kvshard::cuda
