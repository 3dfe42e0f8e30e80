#include "shard/kv_eviction_pass.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <new>

#include "kernels/cpu/half.h"
#include "kernels/cpu/kv_eviction.h"
#include "kernels/cpu/paged_attention.h"
#include "plan/kv_eviction.h"

namespace kvshard {
namespace {

// Moves each local KV head h's rows at positions kept[h][0..keep) to cache indices 0..keep-1
// of the same sequence: every row is copied out first (each shard its own), then written
// where its new index lives. An entry is K row, V row, and their scales (quantized dtypes).
template <typename KV>
Status Compact(Communicator& comm, const ModelConfig& c, const TpLayout& l,
               const PagedKvGeometry& geo, HostKvLayer<KV> pool, const int32_t* table,
               const int32_t* kept, int64_t keep, int64_t length, int64_t ef) {
  const int64_t kvh = l.kv_heads, hd = c.head_dim, S = l.seq_shards;
  const size_t row_bytes = hd * sizeof(KV);
  auto owner = [&](int64_t p) { return (p / geo.block_size) % S; };
  std::vector<int64_t> count(S, 0);
  for (int64_t i = 0; i < kvh * keep; ++i) ++count[owner(kept[i])];
  const int64_t most = *std::max_element(count.begin(), count.end());
  std::vector<float> mine(most * ef, 0.0f), all(S > 1 ? S * most * ef : 0);
  KV* K = pool.k;
  KV* V = pool.v;
  float* ks = pool.k_scale;
  float* vs = pool.v_scale;
  int64_t n = 0;
  for (int64_t h = 0; h < kvh; ++h) {
    for (int64_t j = 0; j < keep; ++j) {
      const int64_t p = kept[h * keep + j];
      if (p >= length || !geo.Owns(p)) continue;
      const int64_t row = geo.Slot(table, p) * kvh + h;
      auto* dst = reinterpret_cast<std::byte*>(mine.data() + n++ * ef);
      std::memcpy(dst, K + row * hd, row_bytes);
      std::memcpy(dst + row_bytes, V + row * hd, row_bytes);
      if constexpr (kQuantizedKv<KV>) {
        std::memcpy(dst + 2 * row_bytes, ks + row, sizeof(float));
        std::memcpy(dst + 2 * row_bytes + sizeof(float), vs + row, sizeof(float));
      }
    }
  }
  const float* from = mine.data();
  if (S > 1) {
    KVS_RETURN_IF_ERROR(
        comm.AllGatherInGroups(mine.data(), mine.size(), all.data(), static_cast<int>(S)));
    from = all.data();
  }
  std::vector<int64_t> next(S, 0);
  for (int64_t h = 0; h < kvh; ++h) {
    for (int64_t j = 0; j < keep; ++j) {
      const int64_t o = owner(kept[h * keep + j]);
      const auto* src = reinterpret_cast<const std::byte*>(from + (o * most + next[o]++) * ef);
      if (!geo.Owns(j)) continue;
      const int64_t row = geo.Slot(table, j) * kvh + h;
      std::memcpy(K + row * hd, src, row_bytes);
      std::memcpy(V + row * hd, src + row_bytes, row_bytes);
      if constexpr (kQuantizedKv<KV>) {
        std::memcpy(ks + row, src + 2 * row_bytes, sizeof(float));
        std::memcpy(vs + row, src + 2 * row_bytes + sizeof(float), sizeof(float));
      }
    }
  }
  return Status::Ok();
}

}  // namespace

Status EvictionQueries::Prepare(const StepPlan& plan, int64_t layers, int64_t q_width) {
  windows_.clear();
  most_rows_ = 0;
  layers_ = layers;
  q_width_ = q_width;
  for (size_t e = 0; e < plan.evict_seqs.size(); ++e) {
    const int64_t w = SnapKvWindow(plan.evict_keep[e]);
    windows_.emplace_back(plan.qo_indptr[plan.evict_seqs[e] + 1] - w, w);
    most_rows_ = std::max(most_rows_, w);
  }
  if (windows_.empty()) return Status::Ok();
  try {
    q_.resize(windows_.size() * layers * most_rows_ * q_width);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("not enough memory to score the KV eviction's queries");
  }
  return Status::Ok();
}

StatusOr<std::vector<int64_t>> HeadGroupFirstKvHeads(const ModelConfig& c, const TpLayout& l) {
  std::vector<int64_t> group_kv0(l.head_groups);
  for (int64_t hg = 0; hg < l.head_groups; ++hg) {
    KVS_ASSIGN_OR_RETURN(const TpLayout other,
                         MakeTpLayout(c, l.tp, static_cast<int>(hg * l.seq_shards), l.seq_shards));
    group_kv0[hg] = other.kv_head0;
  }
  return group_kv0;
}

template <typename KV>
Status EvictLayer(Communicator& comm, const ModelConfig& c, const TpLayout& l,
                  const std::vector<int64_t>& group_kv0, const PagedKvGeometry& geo,
                  const EvictedSequence& seq, const float* q, HostKvLayer<KV> pool) {
  const int64_t hq = l.q_heads, kvh = l.kv_heads, hd = c.head_dim, S = l.seq_shards;
  const int64_t bs = geo.block_size, world = l.tp, g = hq / kvh;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int64_t row_bytes = hd * static_cast<int64_t>(sizeof(KV));
  const int64_t entry_bytes = 2 * row_bytes + (kQuantizedKv<KV> ? 2 * sizeof(float) : 0);
  const int64_t ef = (entry_bytes + 3) / 4;  // an entry's floats on the wire
  const int32_t* table = seq.table;
  const int64_t keep = seq.keep, w = SnapKvWindow(keep), L = seq.length, prefix = L - w;
  const int64_t M = ((L + bs - 1) / bs + S - 1) / S * bs;  // most positions a shard holds
  const int64_t rows = hq * w;                             // (query head, window query)
  const KV* K = pool.k;
  const float* ks = pool.k_scale;
  std::vector<float> krow(hd);
  std::vector<float> logits, stats, all_stats, part, all_part, score;
  std::vector<double> total;
  std::vector<int32_t> kept(kvh * keep);
  try {
    logits.assign(rows * M, -std::numeric_limits<float>::infinity());
    stats.resize(2 * rows);
    all_stats.resize(S * 2 * rows);
    part.resize(kvh * M);
    all_part.resize(world * kvh * M);
    score.resize(prefix);
    total.resize(2 * rows);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("not enough memory to score a {}-token prompt for KV eviction", L);
  }
  // This shard's scores, local index lb * bs + o; a query's later positions stay -inf.
  for (int64_t lb = 0; lb < geo.BlocksFor(L); ++lb) {
    for (int64_t o = 0; o < bs && geo.BlockStart(lb) + o < L; ++o) {
      const int64_t p = geo.BlockStart(lb) + o, slot = geo.SlotOf(table[lb], o);
      for (int64_t h = 0; h < kvh; ++h) {
        const int64_t row = slot * kvh + h;
        kv_row_to_f32(krow.data(), K + row * hd, ks ? ks[row] : 1.0f, hd);
        for (int64_t qh = h * g; qh < (h + 1) * g; ++qh) {
          for (int64_t i = std::max<int64_t>(0, p - prefix); i < w; ++i) {
            const float* qi = q + (i * hq + qh) * hd;
            float dot = 0;
            for (int64_t d = 0; d < hd; ++d) dot += qi[d] * krow[d];
            logits[(qh * w + i) * M + lb * bs + o] = dot * scale;
          }
        }
      }
    }
  }
  // Each row's max and sum of exps over this shard's positions, merged over the group.
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = logits.data() + r * M;
    const float mx = *std::max_element(x, x + M);
    double sum = 0;
    if (mx > -std::numeric_limits<float>::infinity()) {
      for (int64_t k = 0; k < M; ++k) sum += std::exp(static_cast<double>(x[k] - mx));
    }
    stats[2 * r] = mx;
    stats[2 * r + 1] = static_cast<float>(sum);
  }
  const float* st = stats.data();
  if (S > 1) {
    KVS_RETURN_IF_ERROR(
        comm.AllGatherInGroups(stats.data(), stats.size(), all_stats.data(), static_cast<int>(S)));
    st = all_stats.data();
  }
  for (int64_t r = 0; r < rows; ++r) {  // total[2r] = the row's max, [2r + 1] its sum
    double mx = -std::numeric_limits<double>::infinity(), sum = 0;
    for (int64_t sh = 0; sh < S; ++sh) mx = std::max<double>(mx, st[sh * 2 * rows + 2 * r]);
    for (int64_t sh = 0; sh < S; ++sh) {
      const double m_sh = st[sh * 2 * rows + 2 * r];
      if (m_sh > -std::numeric_limits<double>::infinity()) {
        sum += st[sh * 2 * rows + 2 * r + 1] * std::exp(m_sh - mx);
      }
    }
    total[2 * r] = mx;
    total[2 * r + 1] = sum;
  }
  // This rank's part of each KV head's score: its query heads, its positions.
  std::fill(part.begin(), part.end(), 0.0f);
  for (int64_t h = 0; h < kvh; ++h) {
    for (int64_t k = 0; k < M; ++k) {
      double sc = 0;
      for (int64_t r = h * g * w; r < (h + 1) * g * w; ++r) {
        const float x = logits[r * M + k];
        if (x > -std::numeric_limits<float>::infinity()) {
          sc += std::exp(static_cast<double>(x) - total[2 * r]) / total[2 * r + 1];
        }
      }
      part[h * M + k] = static_cast<float>(sc);
    }
  }
  const float* parts = part.data();
  if (world > 1) {
    KVS_RETURN_IF_ERROR(
        comm.AllGatherInGroups(part.data(), part.size(), all_part.data(), static_cast<int>(world)));
    parts = all_part.data();
  }
  for (int64_t h = 0; h < kvh; ++h) {
    const int64_t head = l.kv_head0 + h;  // global
    for (int64_t p = 0; p < prefix; ++p) {
      const int64_t sh = (p / bs) % S, k = (p / bs) / S * bs + p % bs;
      double sc = 0;
      for (int64_t hg = 0; hg < l.head_groups; ++hg) {  // the groups holding this head
        const int64_t local = head - group_kv0[hg];
        if (local < 0 || local >= kvh) continue;
        sc += parts[((hg * S + sh) * kvh + local) * M + k];
      }
      score[p] = static_cast<float>(sc);
    }
    snapkv_pick(score.data(), prefix, w, keep, kept.data() + h * keep);
  }
  return Compact<KV>(comm, c, l, geo, pool, table, kept.data(), keep, L, ef);
}

#define KVSHARD_INSTANTIATE_EVICT_LAYER(KV)                                           \
  template Status EvictLayer<KV>(Communicator&, const ModelConfig&, const TpLayout&,  \
                                 const std::vector<int64_t>&, const PagedKvGeometry&, \
                                 const EvictedSequence&, const float*, HostKvLayer<KV>);
KVSHARD_INSTANTIATE_EVICT_LAYER(float)
KVSHARD_INSTANTIATE_EVICT_LAYER(f16_t)
KVSHARD_INSTANTIATE_EVICT_LAYER(bf16_t)
KVSHARD_INSTANTIATE_EVICT_LAYER(int8_t)
KVSHARD_INSTANTIATE_EVICT_LAYER(fp8_e4m3_t)
#undef KVSHARD_INSTANTIATE_EVICT_LAYER

}  // namespace kvshard
