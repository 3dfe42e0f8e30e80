#include "kernels/cpu/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/half.h"
#include "kernels/cpu/matmul.h"

namespace kvshard {
namespace {

// Row of a KV pool as f32: f32 pools are used in place, 16-bit pools are widened into scratch.
template <typename KV>
inline const float* row_f32(const KV* row, int64_t n, float* scratch) {
  if constexpr (std::is_same_v<KV, float>) {
    return row;
  } else {
    for (int64_t i = 0; i < n; ++i) scratch[i] = to_f32(row[i]);
    return scratch;
  }
}

}  // namespace

template <typename KV>
void kv_append(KV* k_cache, KV* v_cache, const float* k, const float* v, const int64_t* slots,
               int64_t tokens, int64_t kv_heads, int64_t head_dim) {
  const int64_t row = kv_heads * head_dim;
  for (int64_t t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;  // another seq shard holds this position
    KV* kd = k_cache + slots[t] * row;
    KV* vd = v_cache + slots[t] * row;
    for (int64_t i = 0; i < row; ++i) {
      kd[i] = from_f32<KV>(k[t * row + i]);
      vd[i] = from_f32<KV>(v[t * row + i]);
    }
  }
}

template <typename KV>
void paged_attention(float* out, const float* q, const KV* k_cache, const KV* v_cache,
                     const PagedKvView& view, const int32_t* token_seq, const int32_t* positions,
                     int64_t tokens, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                     float scale, float* lse) {
  const int64_t group = q_heads / kv_heads;
  const PagedKvGeometry geometry = view.geometry;  // a copy: no reload inside the loops
  const int64_t kv_row = kv_heads * head_dim;
  // One task per (token, KV head): the group's query heads share every K/V row they read. A
  // small step (a tiny model's decode) runs on the calling thread, as small matmuls do.
  const int64_t reach = tokens > 0 ? static_cast<int64_t>(positions[tokens - 1]) + 1 : 0;
  const bool parallel = tokens * q_heads * head_dim * reach >= kParallelMacs;
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int64_t task = 0; task < tokens * kv_heads; ++task) {
    const int64_t t = task / kv_heads;
    const int64_t kvh = task % kv_heads;
    const int32_t* table = view.Table(token_seq[t]);
    const int64_t len = static_cast<int64_t>(positions[t]) + 1;
    const float* qg = q + (t * q_heads + kvh * group) * head_dim;  // [group, head_dim]
    float acc[kMaxQueryGroup * kMaxHeadDim];
    float m[kMaxQueryGroup], l[kMaxQueryGroup];
    float kbuf[kMaxHeadDim], vbuf[kMaxHeadDim];
    float s[kMaxQueryGroup];
    std::fill(acc, acc + group * head_dim, 0.0f);
    std::fill(m, m + group, -std::numeric_limits<float>::infinity());
    std::fill(l, l + group, 0.0f);
    // Block by block over this pool's share of positions [0, len), in position order.
    for (int64_t b = 0;; ++b) {
      const int64_t p0 = geometry.BlockStart(b);
      if (p0 >= len) break;
      const int64_t p1 = std::min(len, p0 + geometry.block_size);
      const int64_t base = geometry.SlotOf(table[b], 0);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t slot = base + (p - p0);
        const float* kr = row_f32(k_cache + slot * kv_row + kvh * head_dim, head_dim, kbuf);
        const float* vr = row_f32(v_cache + slot * kv_row + kvh * head_dim, head_dim, vbuf);
        for (int64_t g = 0; g < group; ++g) {
          s[g] = dot_f32(qg + g * head_dim, kr, head_dim) * scale;
        }
        // Online softmax: rescale what was accumulated when the running max grows.
        for (int64_t g = 0; g < group; ++g) {
          float* a = acc + g * head_dim;
          if (s[g] > m[g]) {
            const float correction = std::exp(m[g] - s[g]);
            l[g] *= correction;
            for (int64_t i = 0; i < head_dim; ++i) a[i] *= correction;
            m[g] = s[g];
          }
          const float w = std::exp(s[g] - m[g]);
          l[g] += w;
          for (int64_t i = 0; i < head_dim; ++i) a[i] += w * vr[i];
        }
      }
    }
    float* o = out + (t * q_heads + kvh * group) * head_dim;
    for (int64_t g = 0; g < group; ++g) {
      if (l[g] == 0.0f) {  // none of this pool's positions is within reach
        std::fill(o + g * head_dim, o + (g + 1) * head_dim, 0.0f);
        if (lse) lse[t * q_heads + kvh * group + g] = -std::numeric_limits<float>::infinity();
        continue;
      }
      const float inv = 1.0f / l[g];
      for (int64_t i = 0; i < head_dim; ++i) o[g * head_dim + i] = acc[g * head_dim + i] * inv;
      if (lse) lse[t * q_heads + kvh * group + g] = m[g] + std::log(l[g]);
    }
  }
}

void merge_attention(float* out, float* lse, const float* partial_out, const float* partial_lse,
                     int64_t shards, int64_t rows, int64_t head_dim) {
  for (int64_t r = 0; r < rows; ++r) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t s = 0; s < shards; ++s) m = std::max(m, partial_lse[s * rows + r]);
    float* o = out + r * head_dim;
    std::fill(o, o + head_dim, 0.0f);
    if (m == -std::numeric_limits<float>::infinity()) {  // no shard reached a position
      if (lse) lse[r] = m;
      continue;
    }
    float total = 0;
    for (int64_t s = 0; s < shards; ++s) {
      const float w = std::exp(partial_lse[s * rows + r] - m);  // 0 for an empty shard
      if (w == 0.0f) continue;
      total += w;
      const float* po = partial_out + (s * rows + r) * head_dim;
      for (int64_t i = 0; i < head_dim; ++i) o[i] += w * po[i];
    }
    const float inv = 1.0f / total;
    for (int64_t i = 0; i < head_dim; ++i) o[i] *= inv;
    if (lse) lse[r] = m + std::log(total);
  }
}

void merge_attention_columns(float* out, const float* parts, int64_t shards, int64_t tokens,
                             int64_t q_heads, int64_t head_dim, int64_t col0, int64_t cols) {
  const int64_t width = q_heads * head_dim;
  const int64_t part = tokens * (width + q_heads);
  const int64_t h0 = col0 / head_dim, h1 = (col0 + cols + head_dim - 1) / head_dim;
  float w[kMaxMergeShards];
  for (int64_t t = 0; t < tokens; ++t) {
    float* o = out + t * cols;
    for (int64_t h = h0; h < h1; ++h) {
      // The shards' weights for this row and head: exp(lse_s - max), normalised.
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < shards; ++s) {
        m = std::max(m, parts[s * part + tokens * width + t * q_heads + h]);
      }
      const int64_t c0 = std::max(col0, h * head_dim),
                    c1 = std::min(col0 + cols, (h + 1) * head_dim);
      if (m == -std::numeric_limits<float>::infinity()) {  // no shard reached a position
        std::fill(o + (c0 - col0), o + (c1 - col0), 0.0f);
        continue;
      }
      float total = 0;
      for (int64_t s = 0; s < shards; ++s) {
        w[s] = std::exp(parts[s * part + tokens * width + t * q_heads + h] - m);
        total += w[s];
      }
      const float inv = 1.0f / total;
      for (int64_t c = c0; c < c1; ++c) {
        float acc = 0;
        for (int64_t s = 0; s < shards; ++s) {
          if (w[s] != 0.0f) acc += w[s] * parts[s * part + t * width + c];
        }
        o[c - col0] = acc * inv;
      }
    }
  }
}

void contiguous_attention(float* out, const float* q, const float* k, const float* v, int64_t len,
                          int64_t q_heads, int64_t kv_heads, int64_t head_dim, float scale) {
  const int64_t group = q_heads / kv_heads;
  std::vector<double> scores(len);
  for (int64_t h = 0; h < q_heads; ++h) {
    const int64_t kvh = h / group;
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t p = 0; p < len; ++p) {
      double d = 0;
      for (int64_t i = 0; i < head_dim; ++i) {
        d += static_cast<double>(q[h * head_dim + i]) * k[(p * kv_heads + kvh) * head_dim + i];
      }
      scores[p] = d * scale;
      mx = std::max(mx, scores[p]);
    }
    double sum = 0;
    for (int64_t p = 0; p < len; ++p) sum += (scores[p] = std::exp(scores[p] - mx));
    for (int64_t i = 0; i < head_dim; ++i) {
      double o = 0;
      for (int64_t p = 0; p < len; ++p) o += scores[p] * v[(p * kv_heads + kvh) * head_dim + i];
      out[h * head_dim + i] = static_cast<float>(o / sum);
    }
  }
}

#define KVSHARD_INSTANTIATE_ATTENTION(KV)                                                        \
  template void kv_append<KV>(KV*, KV*, const float*, const float*, const int64_t*, int64_t,     \
                              int64_t, int64_t);                                                 \
  template void paged_attention<KV>(float*, const float*, const KV*, const KV*,                  \
                                    const PagedKvView&, const int32_t*, const int32_t*, int64_t, \
                                    int64_t, int64_t, int64_t, float, float*);
KVSHARD_INSTANTIATE_ATTENTION(float)
KVSHARD_INSTANTIATE_ATTENTION(f16_t)
KVSHARD_INSTANTIATE_ATTENTION(bf16_t)
#undef KVSHARD_INSTANTIATE_ATTENTION

}  // namespace kvshard
