// The exact merge of attention over disjoint sets of positions by their log-sum-exps, and the
// contiguous reference the paged kernel is tested against (kernels/cpu/paged_attention.h).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/paged_attention.h"

namespace kvshard {

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

}  // namespace kvshard
