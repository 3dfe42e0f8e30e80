#include "kernels/cpu/blocked_attention.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/half.h"
#include "kernels/cpu/kv_load.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/simd.h"

namespace kvshard {
namespace {

using simd::vec;
constexpr int W = simd::kWidth;
// Register blocking of both products: kMr broadcast rows x kPanel vectors of accumulators, plus
// kPanel loaded vectors and one broadcast (29 of AVX-512's 32 registers, 15 of AVX2's 16).
constexpr int kPanel = W == 8 ? 2 : 4;
constexpr int kMr = W == 1 ? 4 : 6;
constexpr int64_t kRowPanel = int64_t{kPanel} * W;  // query rows one scores block covers
// Positions per tile: a multiple of kMr, so that no score row of a full tile is padding (66
// measured 3% faster than 64 on AVX-512).
constexpr int64_t kTilePositions = 11 * kMr;
constexpr int64_t kTileRows = kTilePositions + kMr;  // positions padded to a multiple of kMr
constexpr int64_t kTargetRows = 128;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// st[j][r0 ..] = sum_d k_j[d] qt[d][r0 ..] for MR positions j and PW vectors of query rows.
template <int MR, int PW>
inline void scores_block(float* st, int64_t rs, const float* qt, const float* const* krow,
                         int64_t head_dim, int64_t r0) {
  vec acc[MR][PW];
  for (int j = 0; j < MR; ++j) {
    for (int p = 0; p < PW; ++p) acc[j][p] = simd::zero();
  }
  for (int64_t d = 0; d < head_dim; ++d) {
    vec qv[PW];
    for (int p = 0; p < PW; ++p) qv[p] = simd::load(qt + d * rs + r0 + p * W);
    for (int j = 0; j < MR; ++j) {
      const vec kb = simd::set1(krow[j][d]);
      for (int p = 0; p < PW; ++p) acc[j][p] = simd::fma(kb, qv[p], acc[j][p]);
    }
  }
  for (int j = 0; j < MR; ++j) {
    for (int p = 0; p < PW; ++p) simd::store(st + j * rs + r0 + p * W, acc[j][p]);
  }
}

template <int PW>
inline void scores_panel(float* st, int64_t rs, const float* qt, const float* const* krow,
                         int64_t head_dim, int64_t r0, int64_t positions) {
  for (int64_t j0 = 0; j0 < positions; j0 += kMr) {
    scores_block<kMr, PW>(st + j0 * rs, rs, qt, krow + j0, head_dim, r0);
  }
}

// S^T over query rows [rb, re) (multiples of W) and `positions` (a multiple of kMr) key rows.
void scores(float* st, int64_t rs, const float* qt, const float* const* krow, int64_t head_dim,
            int64_t rb, int64_t re, int64_t positions) {
  for (int64_t r0 = rb; r0 < re; r0 += kRowPanel) {
    switch (std::min<int64_t>(kPanel, (re - r0) / W)) {
      case 1: scores_panel<1>(st, rs, qt, krow, head_dim, r0, positions); break;
      case 2: scores_panel<2>(st, rs, qt, krow, head_dim, r0, positions); break;
      case 3: scores_panel<3>(st, rs, qt, krow, head_dim, r0, positions); break;
      default: scores_panel<kPanel>(st, rs, qt, krow, head_dim, r0, positions); break;
    }
  }
}

// o[r0 + i][d0 ..] += sum_j pt[j][r0 + i] v_j[d0 ..] for MR query rows and PW vectors of columns.
template <int MR, int PW>
inline void values_block(float* o, int64_t head_dim, const float* pt, int64_t rs,
                         const float* const* vrow, int64_t n, int64_t r0, int64_t d0) {
  vec acc[MR][PW];
  for (int i = 0; i < MR; ++i) {
    for (int p = 0; p < PW; ++p) acc[i][p] = simd::load(o + (r0 + i) * head_dim + d0 + p * W);
  }
  for (int64_t j = 0; j < n; ++j) {
    vec vv[PW];
    for (int p = 0; p < PW; ++p) vv[p] = simd::load(vrow[j] + d0 + p * W);
    const float* pj = pt + j * rs + r0;
    for (int i = 0; i < MR; ++i) {
      const vec pb = simd::set1(pj[i]);
      for (int p = 0; p < PW; ++p) acc[i][p] = simd::fma(pb, vv[p], acc[i][p]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int p = 0; p < PW; ++p) simd::store(o + (r0 + i) * head_dim + d0 + p * W, acc[i][p]);
  }
}

template <int PW>
inline void values_rows(float* o, int64_t head_dim, const float* pt, int64_t rs,
                        const float* const* vrow, int64_t n, int64_t rb, int64_t re, int64_t d0) {
  int64_t r0 = rb;
  for (; r0 + kMr <= re; r0 += kMr) values_block<kMr, PW>(o, head_dim, pt, rs, vrow, n, r0, d0);
  switch (re - r0) {
    case 1: values_block<1, PW>(o, head_dim, pt, rs, vrow, n, r0, d0); break;
    case 2: values_block<2, PW>(o, head_dim, pt, rs, vrow, n, r0, d0); break;
    case 3: values_block<3, PW>(o, head_dim, pt, rs, vrow, n, r0, d0); break;
    case 4: values_block<4, PW>(o, head_dim, pt, rs, vrow, n, r0, d0); break;
    case 5: values_block<5, PW>(o, head_dim, pt, rs, vrow, n, r0, d0); break;
    default: break;
  }
}

// O += P V over query rows [rb, re) (any) and the tile's n positions, column panel by panel.
void values(float* o, int64_t head_dim, const float* pt, int64_t rs, const float* const* vrow,
            int64_t n, int64_t rb, int64_t re) {
  for (int64_t d0 = 0; d0 < head_dim; d0 += kRowPanel) {
    switch (std::min<int64_t>(kPanel, (head_dim - d0) / W)) {
      case 1: values_rows<1>(o, head_dim, pt, rs, vrow, n, rb, re, d0); break;
      case 2: values_rows<2>(o, head_dim, pt, rs, vrow, n, rb, re, d0); break;
      case 3: values_rows<3>(o, head_dim, pt, rs, vrow, n, rb, re, d0); break;
      default: values_rows<kPanel>(o, head_dim, pt, rs, vrow, n, rb, re, d0); break;
    }
  }
}

// One thread's working set, kept between calls.
struct Scratch {
  std::vector<float> qt, o, st, m, l, corr, rows, zero;
  std::vector<const float*> krow, vrow;
  std::vector<int64_t> pos;
};

}  // namespace

bool BlockedAttentionFits(int64_t head_dim) {
  return head_dim > 0 && head_dim % W == 0 && head_dim <= kMaxHeadDim;
}

int64_t BlockedRunTokens(int64_t group) {
  return std::clamp<int64_t>(kTargetRows / std::max<int64_t>(1, group), 1, 64);
}

template <typename KV>
void blocked_attention_run(float* out, float* lse, const float* q, int64_t count, int64_t first_pos,
                           int64_t q_heads, int64_t kvh, int64_t group, int64_t head_dim,
                           const KV* k_cache, const KV* v_cache, const float* k_scale,
                           const float* v_scale, const PagedKvGeometry& geometry,
                           const int32_t* table, int64_t kv_heads, float scale, int64_t window,
                           int64_t floor) {
  const int64_t D = head_dim;
  const int64_t R = count * group;                                 // query rows, token-major
  const int64_t rs = (R + kRowPanel - 1) / kRowPanel * kRowPanel;  // their stride, padded
  const int64_t kv_row = kv_heads * D;
  static thread_local Scratch sc;
  sc.qt.assign(D * rs, 0.0f);
  sc.o.assign(rs * D, 0.0f);
  sc.st.resize(kTileRows * rs);
  sc.m.assign(rs, kNegInf);
  sc.l.assign(rs, 0.0f);
  sc.corr.resize(rs);
  sc.zero.assign(D, 0.0f);
  sc.krow.resize(kTileRows);
  sc.vrow.resize(kTileRows);
  sc.pos.resize(kTilePositions);
  if constexpr (!std::is_same_v<KV, float>) sc.rows.resize(2 * kTilePositions * D);
  // The run's queries, pre-scaled and transposed: qt[d][r], r = token * group + head.
  for (int64_t u = 0; u < count; ++u) {
    for (int64_t g = 0; g < group; ++g) {
      const float* qr = q + (u * q_heads + kvh * group + g) * D;
      const int64_t r = u * group + g;
      for (int64_t d = 0; d < D; ++d) sc.qt[d * rs + r] = qr[d] * scale;
    }
  }
  const int64_t reach = first_pos + count;  // the last token sees positions below it
  // Token u sees [low(u), first_pos + u]; the first token reaches back furthest.
  auto low = [&](int64_t u) {
    return std::max<int64_t>(floor, window > 0 ? first_pos + u + 1 - window : 0);
  };
  const int64_t low0 = low(0);
  int64_t b = 0, off = 0;  // where the next tile starts: local block, offset in it
  for (;;) {
    // Gather up to kTilePositions of this pool's positions, in order, across blocks.
    int64_t n = 0;
    while (n < kTilePositions) {
      const int64_t p0 = geometry.BlockStart(b);
      if (p0 >= reach) break;
      const int64_t end = std::min(reach, p0 + geometry.block_size);
      const int64_t p = std::max(p0 + off, low0);
      if (p >= end) {  // the block is done, or wholly before every window
        ++b;
        off = 0;
        continue;
      }
      const int64_t take = std::min(end - p, kTilePositions - n);
      const int64_t slot0 = geometry.SlotOf(table[b], p - p0);
      for (int64_t i = 0; i < take; ++i) {
        const int64_t slot = slot0 + i;
        const KV* kr = k_cache + slot * kv_row + kvh * D;
        const KV* vr = v_cache + slot * kv_row + kvh * D;
        sc.pos[n + i] = p + i;
        if constexpr (std::is_same_v<KV, float>) {
          sc.krow[n + i] = kr;
          sc.vrow[n + i] = vr;
        } else {
          float ks = kCodeDivisor<KV>, vs = kCodeDivisor<KV>;
          if constexpr (kQuantizedKv<KV>) {
            ks *= k_scale[slot * kv_heads + kvh];
            vs *= v_scale[slot * kv_heads + kvh];
          }
          float* kd = sc.rows.data() + (n + i) * D;
          float* vd = sc.rows.data() + (kTilePositions + n + i) * D;
          for (int64_t d = 0; d < D; d += W) {
            simd::store(kd + d, simd::mul(load_kv(kr + d), simd::set1(ks)));
            simd::store(vd + d, simd::mul(load_kv(vr + d), simd::set1(vs)));
          }
          sc.krow[n + i] = kd;
          sc.vrow[n + i] = vd;
        }
      }
      n += take;
      off = p + take - p0;
    }
    if (n == 0) break;
    const int64_t first = sc.pos[0], last = sc.pos[n - 1];
    // Rows this tile can reach: tokens at or past its first position, whose window starts at or
    // before its last one.
    const int64_t u_lo = std::max<int64_t>(0, first - first_pos);
    const int64_t u_hi = window > 0 ? std::min(count, last + window - first_pos) : count;
    if (u_lo >= u_hi) continue;
    const int64_t rb = u_lo * group / W * W;
    const int64_t re = std::min(rs, (u_hi * group + W - 1) / W * W);
    const int64_t padded = (n + kMr - 1) / kMr * kMr;
    for (int64_t j = n; j < padded; ++j) sc.krow[j] = sc.zero.data();
    float* st = sc.st.data();
    scores(st, rs, sc.qt.data(), sc.krow.data(), D, rb, re, padded);
    // Masks: rows of tokens before position pos[j] (causal), rows whose window starts after it,
    // every row for positions below the floor, and the padding.
    for (int64_t j = 0; j < padded; ++j) {
      float* sj = st + j * rs;
      if (j >= n || sc.pos[j] < floor) {
        std::fill(sj + rb, sj + re, kNegInf);
        continue;
      }
      const int64_t causal = std::clamp<int64_t>((sc.pos[j] - first_pos) * group, rb, re);
      std::fill(sj + rb, sj + causal, kNegInf);
      if (window > 0) {
        const int64_t beyond =
            std::clamp<int64_t>((sc.pos[j] + window - first_pos) * group, rb, re);
        std::fill(sj + beyond, sj + re, kNegInf);
      }
    }
    // Online softmax, W query rows per vector: the tile's row maxima, the correction of what
    // was accumulated, the probabilities in place of the scores, the running sums.
    for (int64_t r0 = rb; r0 < re; r0 += W) {
      vec mx = simd::set1(kNegInf);
      for (int64_t j = 0; j < padded; ++j) mx = simd::max(mx, simd::load(st + j * rs + r0));
      const vec m_old = simd::load(sc.m.data() + r0);
      const vec m_new = simd::max(m_old, mx);
      // A row with nothing reached yet keeps m = -inf; -FLT_MAX makes its exp terms 0, not NaN.
      const vec m_safe = simd::max(m_new, simd::set1(-FLT_MAX));
      const vec corr = simd::exp_nonpositive(simd::sub(m_old, m_safe));
      vec sum = simd::zero();
      for (int64_t j = 0; j < padded; ++j) {
        float* sj = st + j * rs + r0;
        const vec p = simd::exp_nonpositive(simd::sub(simd::load(sj), m_safe));
        simd::store(sj, p);
        sum = simd::add(sum, p);
      }
      simd::store(sc.m.data() + r0, m_new);
      simd::store(sc.l.data() + r0, simd::fma(simd::load(sc.l.data() + r0), corr, sum));
      simd::store(sc.corr.data() + r0, corr);
    }
    const int64_t rows_end = std::min(re, R);
    for (int64_t r = rb; r < rows_end; ++r) {
      const float c = sc.corr[r];
      if (c == 1.0f) continue;
      float* orow = sc.o.data() + r * D;
      for (int64_t d = 0; d < D; d += W) {
        simd::store(orow + d, simd::mul(simd::load(orow + d), simd::set1(c)));
      }
    }
    values(sc.o.data(), D, st, rs, sc.vrow.data(), n, rb, rows_end);
  }
  for (int64_t r = 0; r < R; ++r) {
    const int64_t u = r / group, g = r % group;
    float* orow = out + (u * q_heads + kvh * group + g) * D;
    float* lrow = lse ? lse + u * q_heads + kvh * group + g : nullptr;
    if (sc.l[r] == 0.0f) {  // none of this pool's positions is within reach
      std::fill(orow, orow + D, 0.0f);
      if (lrow) *lrow = kNegInf;
      continue;
    }
    const vec inv = simd::set1(1.0f / sc.l[r]);
    for (int64_t d = 0; d < D; d += W) {
      simd::store(orow + d, simd::mul(simd::load(sc.o.data() + r * D + d), inv));
    }
    if (lrow) *lrow = sc.m[r] + std::log(sc.l[r]);
  }
}

#define KVSHARD_INSTANTIATE_BLOCKED(KV)                                                            \
  template void blocked_attention_run<KV>(float*, float*, const float*, int64_t, int64_t, int64_t, \
                                          int64_t, int64_t, int64_t, const KV*, const KV*,         \
                                          const float*, const float*, const PagedKvGeometry&,      \
                                          const int32_t*, int64_t, float, int64_t, int64_t);
KVSHARD_INSTANTIATE_BLOCKED(float)
KVSHARD_INSTANTIATE_BLOCKED(f16_t)
KVSHARD_INSTANTIATE_BLOCKED(bf16_t)
KVSHARD_INSTANTIATE_BLOCKED(int8_t)
KVSHARD_INSTANTIATE_BLOCKED(fp8_e4m3_t)
#undef KVSHARD_INSTANTIATE_BLOCKED

}  // namespace kvshard
