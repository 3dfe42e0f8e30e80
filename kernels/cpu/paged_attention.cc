#include "kernels/cpu/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/blocked_attention.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/kv_load.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/simd.h"

namespace kvshard {
namespace {

// One code as f32, unscaled.
inline float code_f32(int8_t c) { return static_cast<float>(c); }
inline float code_f32(fp8_e4m3_t c) { return fp8_e4m3_bits_to_f32(c.bits); }

// Row of a KV pool as f32: f32 pools are used in place, the others are widened (and quantized
// ones scaled) into scratch.
template <typename KV>
inline const float* row_f32(const KV* row, float row_scale, int64_t n, float* scratch) {
  if constexpr (std::is_same_v<KV, float>) {
    return row;
  } else {
    kv_row_to_f32(scratch, row, row_scale, n);
    return scratch;
  }
}

// The largest divisor of `group` whose query heads keep their rows in at most 16 vector
// registers (16 more hold the K/V row and the scores).
constexpr int HeadChunk(int group, int vectors_per_row) {
  const int fit = vectors_per_row >= 16 ? 1 : 16 / vectors_per_row;
  for (int c = group < fit ? group : fit; c > 1; --c) {
    if (group % c == 0) return c;
  }
  return 1;
}

// A run of consecutive query tokens of one sequence (a prefill chunk; one token in decode):
// the tiled kernel reads each K/V tile once for all of them.
inline constexpr int kMaxRun = 16;

// Whether every token of the step belongs to a sequence of its own (a decode step).
inline bool IsDecodeStep(const int32_t* token_seq, int64_t tokens) {
  for (int64_t t = 1; t < tokens; ++t) {
    if (token_seq[t] == token_seq[t - 1]) return false;
  }
  return true;
}

struct Run {
  int64_t first;  // the run's first token in the step
  int count;      // tokens, positions consecutive
};

// The runs of a step's tokens, at most `cap` tokens each.
inline std::vector<Run> TokenRuns(const int32_t* token_seq, const int32_t* positions,
                                  int64_t tokens, int64_t cap) {
  std::vector<Run> runs;
  for (int64_t t = 0; t < tokens; ++t) {
    if (!runs.empty()) {
      Run& r = runs.back();
      const int64_t last = r.first + r.count - 1;
      if (r.count < cap && token_seq[t] == token_seq[last] && positions[t] == positions[last] + 1) {
        ++r.count;
        continue;
      }
    }
    runs.push_back(Run{t, 1});
  }
  return runs;
}

// The online-softmax state of one token's G query heads.
template <int G, int D>
struct RowState {
  float acc[G * D];
  float m[G], l[G];
};

// One tile of n positions (rows kb, vb of stride kv_row) for one token's G heads, whose query
// rows (pre-scaled) are qs. With the head size D known at compile time, rows live in registers:
// the G x kTile scores (each K row loaded once per chunk of heads, the dot products summed by one
// shuffle network instead of one reduction each), one online-softmax update per head with a
// vector exp, then P x V with each V row loaded once per chunk of heads. `ahead_k/ahead_v`, when
// given, are rows of a later block to prefetch, one per position. Quantized rows: ksc/vsc are
// the tile's row scales (stride sc_stride); a score is dot(q, codes) x its K scale, and a
// probability is multiplied by its V scale before P x V.
template <typename KV, int G, int D>
inline void attend_tile(RowState<G, D>& st, const float* qs, const KV* kb, const KV* vb, int n,
                        int skip, int64_t kv_row, const KV* ahead_k, const KV* ahead_v,
                        const float* ksc, const float* vsc, int64_t sc_stride) {
  using simd::vec;
  constexpr int W = simd::kWidth;
  constexpr int V = D / W;  // vectors per row
  constexpr int kTile = 16;
  constexpr int C = HeadChunk(G, V);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float s[G][kTile];
  vec dots[G][kTile];
  [[maybe_unused]] float kscale[kTile], vscale[kTile];
  if constexpr (kQuantizedKv<KV>) {
    for (int j = 0; j < kTile; ++j) {
      const int64_t r = (j < n ? j : 0) * sc_stride;
      kscale[j] = ksc[r] * kCodeDivisor<KV>;
      vscale[j] = vsc[r] * kCodeDivisor<KV>;
    }
  }
  // Scores. A short tile repeats its first row; those lanes are dropped below.
  for (int g0 = 0; g0 < G; g0 += C) {
    vec q[C][V];
    for (int g = 0; g < C; ++g) {
      for (int v = 0; v < V; ++v) q[g][v] = simd::load(qs + (g0 + g) * D + v * W);
    }
    for (int j = 0; j < kTile; ++j) {
      const KV* kr = kb + (j < n ? j : 0) * kv_row;
      vec k[V];
      for (int v = 0; v < V; ++v) k[v] = load_kv(kr + v * W);
      for (int g = 0; g < C; ++g) {
        vec x = simd::mul(q[g][0], k[0]);
        for (int v = 1; v < V; ++v) x = simd::fma(q[g][v], k[v], x);
        dots[g0 + g][j] = x;
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int j = 0; j < kTile; j += W) simd::sum_each(&dots[g][j], &s[g][j]);
    if constexpr (kQuantizedKv<KV>) {
      for (int j = 0; j < kTile; j += W) {
        simd::store(&s[g][j], simd::mul(simd::load(&s[g][j]), simd::load(kscale + j)));
      }
    }
    for (int j = n; j < kTile; ++j) s[g][j] = kNegInf;
    for (int j = 0; j < skip; ++j) s[g][j] = kNegInf;  // before this token's window
    vec mx = simd::load(s[g]);
    for (int j = W; j < kTile; j += W) mx = simd::max(mx, simd::load(s[g] + j));
    const float tile_max = simd::max_lane(mx);
    if (tile_max > st.m[g]) {  // rescale what was accumulated to the new running max
      const float correction = std::exp(st.m[g] - tile_max);
      st.l[g] *= correction;
      const vec c = simd::set1(correction);
      float* a = st.acc + g * D;
      for (int v = 0; v < V; ++v) simd::store(a + v * W, simd::mul(simd::load(a + v * W), c));
      st.m[g] = tile_max;
    }
    vec sum = simd::zero();
    for (int j = 0; j < kTile; j += W) {
      const vec p = simd::exp_nonpositive(simd::sub(simd::load(s[g] + j), simd::set1(st.m[g])));
      if constexpr (kQuantizedKv<KV>) {
        simd::store(s[g] + j, simd::mul(p, simd::load(vscale + j)));
      } else {
        simd::store(s[g] + j, p);
      }
      sum = simd::add(sum, p);
    }
    st.l[g] += simd::sum(sum);
  }
  for (int g0 = 0; g0 < G; g0 += C) {
    vec a[C][V];
    for (int g = 0; g < C; ++g) {
      for (int v = 0; v < V; ++v) a[g][v] = simd::load(st.acc + (g0 + g) * D + v * W);
    }
    for (int j = 0; j < n; ++j) {
      if (g0 == 0 && ahead_k != nullptr) {
        for (int64_t c = 0; c < D * static_cast<int64_t>(sizeof(KV)); c += 64) {
          __builtin_prefetch(reinterpret_cast<const char*>(ahead_k + j * kv_row) + c);
          __builtin_prefetch(reinterpret_cast<const char*>(ahead_v + j * kv_row) + c);
        }
      }
      const KV* vr = vb + j * kv_row;
      vec v_row[V];
      for (int v = 0; v < V; ++v) v_row[v] = load_kv(vr + v * W);
      for (int g = 0; g < C; ++g) {
        const vec p = simd::set1(s[g0 + g][j]);
        for (int v = 0; v < V; ++v) a[g][v] = simd::fma(p, v_row[v], a[g][v]);
      }
    }
    for (int g = 0; g < C; ++g) {
      for (int v = 0; v < V; ++v) simd::store(st.acc + (g0 + g) * D + v * W, a[g][v]);
    }
  }
}

// The tiled kernel for one KV head and a run of `count` tokens (query rows q, outputs o, lse:
// token stride row_stride floats, lse stride lse_stride), block by block over this pool's share
// of positions, each tile read once for every token of the run that reaches it (causal: token u
// sees positions < lens[u]). The block after next is prefetched while this one is read: blocks
// lie anywhere in the pool.
template <typename KV, int G, int D>
void attend_run(float* o, float* lse, const float* q, int count, int64_t row_stride,
                int64_t lse_stride, const int64_t* lens, const KV* k_cache, const KV* v_cache,
                const float* k_scale, const float* v_scale, const PagedKvGeometry& geometry,
                const int32_t* table, int64_t kv_row, int64_t kvh, float scale, int64_t window,
                int64_t floor) {
  constexpr int W = simd::kWidth;
  constexpr int kTile = 16;
  constexpr int kPrefetchBlocks = 2;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  RowState<G, D> state[kMaxRun];
  float qs[kMaxRun][G * D];
  for (int u = 0; u < count; ++u) {
    std::fill(state[u].acc, state[u].acc + G * D, 0.0f);
    std::fill(state[u].m, state[u].m + G, kNegInf);
    std::fill(state[u].l, state[u].l + G, 0.0f);
    for (int i = 0; i < G * D; i += W) {
      simd::store(qs[u] + i, simd::mul(simd::load(q + u * row_stride + i), simd::set1(scale)));
    }
  }
  const int64_t reach = lens[count - 1];  // the run's last token sees the most
  // Sliding window: token u sees [lows[u], lens[u]); the run's first token reaches back furthest.
  int64_t lows[kMaxRun];
  for (int u = 0; u < count; ++u) {
    lows[u] = std::max<int64_t>(floor, window > 0 ? lens[u] - window : 0);
  }
  for (int64_t b = 0;; ++b) {
    const int64_t p0 = geometry.BlockStart(b);
    if (p0 >= reach) break;
    if (p0 + geometry.block_size <= lows[0]) continue;  // wholly before every window
    const int64_t p_end = std::min(reach, p0 + geometry.block_size);
    const int64_t base = geometry.SlotOf(table[b], 0);
    const KV* ahead_k = nullptr;
    const KV* ahead_v = nullptr;
    if (geometry.BlockStart(b + kPrefetchBlocks) < reach) {
      const int64_t ahead = geometry.SlotOf(table[b + kPrefetchBlocks], 0);
      ahead_k = k_cache + ahead * kv_row + kvh * D;
      ahead_v = v_cache + ahead * kv_row + kvh * D;
    }
    for (int64_t t0 = p0; t0 < p_end; t0 += kTile) {
      const int64_t row0 = (base + (t0 - p0)) * kv_row + kvh * D;
      const int64_t sc_stride = kv_row / D;  // scales: [slots, kv_heads]
      const int64_t sc0 = (base + (t0 - p0)) * sc_stride + kvh;
      const float* ksc = kQuantizedKv<KV> ? k_scale + sc0 : nullptr;
      const float* vsc = kQuantizedKv<KV> ? v_scale + sc0 : nullptr;
      const int64_t ahead_off = t0 - p0;
      for (int u = 0; u < count; ++u) {
        const int64_t n = std::min<int64_t>({kTile, p_end - t0, lens[u] - t0});
        if (n <= 0) continue;  // this token's causal reach ends before the tile
        const int64_t skip = std::max<int64_t>(0, lows[u] - t0);
        if (skip >= n) continue;  // the tile lies before this token's window
        const bool last = u == count - 1;
        attend_tile<KV, G, D>(state[u], qs[u], k_cache + row0, v_cache + row0, static_cast<int>(n),
                              static_cast<int>(skip), kv_row,
                              last && ahead_k ? ahead_k + ahead_off * kv_row : nullptr,
                              last && ahead_v ? ahead_v + ahead_off * kv_row : nullptr, ksc, vsc,
                              sc_stride);
      }
    }
  }
  for (int u = 0; u < count; ++u) {
    const RowState<G, D>& st = state[u];
    float* ou = o + u * row_stride;
    for (int g = 0; g < G; ++g) {
      if (st.l[g] == 0.0f) {  // none of this pool's positions is within reach
        std::fill(ou + g * D, ou + (g + 1) * D, 0.0f);
        if (lse) lse[u * lse_stride + g] = kNegInf;
        continue;
      }
      const simd::vec inv = simd::set1(1.0f / st.l[g]);
      for (int i = 0; i < D; i += W) {
        simd::store(ou + g * D + i, simd::mul(simd::load(st.acc + g * D + i), inv));
      }
      if (lse) lse[u * lse_stride + g] = st.m[g] + std::log(st.l[g]);
    }
  }
}

// Decode at long context: one token's every KV head over this pool's positions [lo, hi), tile
// by tile, the tile's rows of all KV heads (one contiguous stretch of the pool) read together.
// Reading one head's rows across the whole context instead touches 1 line in kv_heads (int8 rows
// of 64) strided through the pool. o: f32 [kv_heads * G, D], the span's normalised output; lse:
// [kv_heads * G] its log-sum-exp (-inf and o = 0 when no position of the span is reached).
template <typename KV, int G, int D>
void attend_span(float* o, float* lse, const float* q, int64_t lo, int64_t hi, const void* k,
                 const void* v, const float* k_scale, const float* v_scale,
                 const PagedKvGeometry& geometry, const int32_t* table, int64_t kv_heads,
                 float scale) {
  constexpr int W = simd::kWidth;
  constexpr int kTile = 16;
  constexpr int kPrefetchBlocks = 2;
  const KV* k_cache = static_cast<const KV*>(k);
  const KV* v_cache = static_cast<const KV*>(v);
  const int64_t kv_row = kv_heads * D;
  std::vector<RowState<G, D>> state(kv_heads);
  std::vector<float> qs(kv_heads * G * D);
  for (RowState<G, D>& st : state) {
    std::fill(st.acc, st.acc + G * D, 0.0f);
    std::fill(st.m, st.m + G, -std::numeric_limits<float>::infinity());
    std::fill(st.l, st.l + G, 0.0f);
  }
  for (int64_t i = 0; i < kv_heads * G * D; i += W) {
    simd::store(qs.data() + i, simd::mul(simd::load(q + i), simd::set1(scale)));
  }
  for (int64_t b = 0;; ++b) {
    const int64_t p0 = geometry.BlockStart(b);
    if (p0 >= hi) break;
    if (p0 + geometry.block_size <= lo) continue;
    const int64_t p_end = std::min(hi, p0 + geometry.block_size);
    const int64_t base = geometry.SlotOf(table[b], 0);
    const KV* ahead_k = nullptr;
    const KV* ahead_v = nullptr;
    if (geometry.BlockStart(b + kPrefetchBlocks) < hi) {
      const int64_t ahead = geometry.SlotOf(table[b + kPrefetchBlocks], 0);
      ahead_k = k_cache + ahead * kv_row;
      ahead_v = v_cache + ahead * kv_row;
    }
    for (int64_t t0 = p0; t0 < p_end; t0 += kTile) {
      const int64_t n = std::min<int64_t>(kTile, p_end - t0);
      const int64_t skip = std::max<int64_t>(0, lo - t0);
      if (skip >= n) continue;
      const int64_t slot0 = base + (t0 - p0);
      for (int64_t h = 0; h < kv_heads; ++h) {
        const int64_t row0 = slot0 * kv_row + h * D;
        const int64_t ahead_row = (t0 - p0) * kv_row + h * D;
        attend_tile<KV, G, D>(
            state[h], qs.data() + h * G * D, k_cache + row0, v_cache + row0, static_cast<int>(n),
            static_cast<int>(skip), kv_row, ahead_k ? ahead_k + ahead_row : nullptr,
            ahead_v ? ahead_v + ahead_row : nullptr,
            kQuantizedKv<KV> ? k_scale + slot0 * kv_heads + h : nullptr,
            kQuantizedKv<KV> ? v_scale + slot0 * kv_heads + h : nullptr, kv_heads);
      }
    }
  }
  for (int64_t h = 0; h < kv_heads; ++h) {
    const RowState<G, D>& st = state[h];
    for (int g = 0; g < G; ++g) {
      float* out = o + (h * G + g) * D;
      if (st.l[g] == 0.0f) {
        std::fill(out, out + D, 0.0f);
        lse[h * G + g] = -std::numeric_limits<float>::infinity();
        continue;
      }
      const simd::vec inv = simd::set1(1.0f / st.l[g]);
      for (int i = 0; i < D; i += W) {
        simd::store(out + i, simd::mul(simd::load(st.acc + g * D + i), inv));
      }
      lse[h * G + g] = st.m[g] + std::log(st.l[g]);
    }
  }
}

using SpanFn = void (*)(float*, float*, const float*, int64_t, int64_t, const void*, const void*,
                        const float*, const float*, const PagedKvGeometry&, const int32_t*, int64_t,
                        float);

using TiledFn = void (*)(float*, float*, const float*, int, int64_t, int64_t, const int64_t*,
                         const void*, const void*, const float*, const float*,
                         const PagedKvGeometry&, const int32_t*, int64_t, int64_t, float, int64_t,
                         int64_t);

template <typename KV, int G, int D>
void attend_run_erased(float* o, float* lse, const float* q, int count, int64_t row_stride,
                       int64_t lse_stride, const int64_t* lens, const void* k, const void* v,
                       const float* k_scale, const float* v_scale, const PagedKvGeometry& geometry,
                       const int32_t* table, int64_t kv_row, int64_t kvh, float scale,
                       int64_t window, int64_t floor) {
  attend_run<KV, G, D>(o, lse, q, count, row_stride, lse_stride, lens, static_cast<const KV*>(k),
                       static_cast<const KV*>(v), k_scale, v_scale, geometry, table, kv_row, kvh,
                       scale, window, floor);
}

// The kernel `Kernel<KV, G, D>` for a query group G the kernels are built for, or nullptr.
template <typename Fn, template <typename, int, int> class Kernel, typename KV, int D>
Fn ForGroup(int64_t group) {
  switch (group) {
    case 1: return Kernel<KV, 1, D>::Run;
    case 2: return Kernel<KV, 2, D>::Run;
    case 3: return Kernel<KV, 3, D>::Run;
    case 4: return Kernel<KV, 4, D>::Run;
    case 6: return Kernel<KV, 6, D>::Run;
    case 8: return Kernel<KV, 8, D>::Run;
    default: return nullptr;
  }
}
template <typename KV, int G, int D>
struct TiledKernel {
  static constexpr auto Run = &attend_run_erased<KV, G, D>;
};
template <typename KV, int G, int D>
struct SpanKernel {
  static constexpr auto Run = &attend_span<KV, G, D>;
};

// The tiled kernel for these shapes, or nullptr where only the general loop below serves.
template <typename KV>
TiledFn TiledFor(int64_t group, int64_t head_dim) {
  if (head_dim == 64) return ForGroup<TiledFn, TiledKernel, KV, 64>(group);
  if (head_dim == 128) return ForGroup<TiledFn, TiledKernel, KV, 128>(group);
  return nullptr;
}

template <typename KV>
SpanFn SpanFor(int64_t group, int64_t head_dim) {
  if (head_dim == 64) return ForGroup<SpanFn, SpanKernel, KV, 64>(group);
  if (head_dim == 128) return ForGroup<SpanFn, SpanKernel, KV, 128>(group);
  return nullptr;
}

// Decode steps whose longest reach is at least kSpanFrom positions split each sequence into
// spans of kSpanPositions (flash-decoding), each span's every KV head one task, merged by their
// log-sum-exps: the pool is read front to back, and one sequence keeps every thread busy.
inline constexpr int64_t kSpanFrom = 4096;
inline constexpr int64_t kSpanPositions = 2048;

// Runs shorter than this in a prefill step take the tiled kernel where it serves their shape.
inline constexpr int kMinBlockedRun = 8;

}  // namespace

namespace {

// One row's codes and scale: symmetric. int8: the row's largest magnitude maps to the largest
// code. fp8: to the candidate top code (half.h) whose codes, times its scale, are nearest the row
// in squared error, each candidate's error one chain of fused multiply-adds in element order.
template <typename KV>
void quantize_row(KV* out, float* scale, const float* x, int64_t n) {
  float amax = 0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  float top = std::is_same_v<KV, int8_t> ? 127.0f : 448.0f;
  if constexpr (std::is_same_v<KV, fp8_e4m3_t>) {
    float best = std::numeric_limits<float>::infinity();
    for (int j = 0; j < kFp8ScaleCandidates && amax > 0; ++j) {
      const float t = kFp8TopStep * static_cast<float>(32 - j);
      const float inv = t / amax, s = amax / t;
      float err = 0;
      for (int64_t i = 0; i < n; ++i) {
        const float d = std::fma(-fp8_e4m3_bits_to_f32(f32_to_fp8_e4m3_bits(x[i] * inv)), s, x[i]);
        err = std::fma(d, d, err);
      }
      if (err < best) best = err, top = t;
    }
  }
  *scale = amax / top;
  const float inv = amax > 0 ? top / amax : 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<KV, int8_t>) {
      out[i] = f32_to_i8(x[i] * inv);
    } else {
      out[i] = fp8_e4m3_t{f32_to_fp8_e4m3_bits(x[i] * inv)};
    }
  }
}

}  // namespace

template <typename KV>
void kv_row_to_f32(float* out, const KV* row, float scale, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (kQuantizedKv<KV>) {
      out[i] = code_f32(row[i]) * scale;
    } else {
      out[i] = to_f32(row[i]);
    }
  }
}

template <typename KV>
void kv_append(KV* k_cache, KV* v_cache, const float* k, const float* v, const int64_t* slots,
               int64_t tokens, int64_t kv_heads, int64_t head_dim, float* k_scale, float* v_scale) {
  const int64_t row = kv_heads * head_dim;
  for (int64_t t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;  // another seq shard holds this position
    KV* kd = k_cache + slots[t] * row;
    KV* vd = v_cache + slots[t] * row;
    if constexpr (kQuantizedKv<KV>) {
      for (int64_t h = 0; h < kv_heads; ++h) {
        const int64_t i = h * head_dim;
        quantize_row(kd + i, k_scale + slots[t] * kv_heads + h, k + t * row + i, head_dim);
        quantize_row(vd + i, v_scale + slots[t] * kv_heads + h, v + t * row + i, head_dim);
      }
    } else {
      for (int64_t i = 0; i < row; ++i) {
        kd[i] = from_f32<KV>(k[t * row + i]);
        vd[i] = from_f32<KV>(v[t * row + i]);
      }
    }
  }
}

template <typename KV>
void paged_attention(float* out, const float* q, const KV* k_cache, const KV* v_cache,
                     const PagedKvView& view, const int32_t* token_seq, const int32_t* positions,
                     int64_t tokens, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                     float scale, float* lse, const float* k_scale, const float* v_scale,
                     int64_t window, int64_t floor) {
  const int64_t group = q_heads / kv_heads;
  const PagedKvGeometry geometry = view.geometry;  // a copy: no reload inside the loops
  const int64_t kv_row = kv_heads * head_dim;
  // One task per (token, KV head): the group's query heads share every K/V row they read. A
  // small step (a tiny model's decode) runs on the calling thread, as small matmuls do.
  const int64_t reach = tokens > 0 ? static_cast<int64_t>(positions[tokens - 1]) + 1 : 0;
  const bool parallel = tokens * q_heads * head_dim * reach >= kParallelMacs;
  const SpanFn span = SpanFor<KV>(group, head_dim);
  const int64_t longest =
      tokens > 0 ? static_cast<int64_t>(*std::max_element(positions, positions + tokens)) + 1 : 0;
  const bool decode = IsDecodeStep(token_seq, tokens);
  if (span && parallel && longest >= kSpanFrom && decode) {
    // [token][span] of every token's spans, then their partial outputs and log-sum-exps.
    std::vector<int64_t> first_span(tokens + 1, 0);
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t len = static_cast<int64_t>(positions[t]) + 1;
      first_span[t + 1] = first_span[t] + (len + kSpanPositions - 1) / kSpanPositions;
    }
    const int64_t spans = first_span[tokens];
    std::vector<float> parts(spans * q_heads * head_dim), part_lse(spans * q_heads);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < spans; ++task) {
      const int64_t t =
          std::upper_bound(first_span.begin(), first_span.end(), task) - first_span.begin() - 1;
      const int64_t c = task - first_span[t];
      const int64_t len = static_cast<int64_t>(positions[t]) + 1;
      const int64_t low = std::max<int64_t>(floor, window > 0 ? len - window : 0);
      const int64_t lo = std::max(low, c * kSpanPositions);
      const int64_t hi = std::min(len, (c + 1) * kSpanPositions);
      float* po = parts.data() + task * q_heads * head_dim;
      float* pl = part_lse.data() + task * q_heads;
      if (lo >= hi) {  // wholly before the window
        std::fill(po, po + q_heads * head_dim, 0.0f);
        std::fill(pl, pl + q_heads, -std::numeric_limits<float>::infinity());
        continue;
      }
      span(po, pl, q + t * q_heads * head_dim, lo, hi, k_cache, v_cache, k_scale, v_scale, geometry,
           view.Table(token_seq[t]), kv_heads, scale);
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t s0 = first_span[t];
      merge_attention(out + t * q_heads * head_dim, lse ? lse + t * q_heads : nullptr,
                      parts.data() + s0 * q_heads * head_dim, part_lse.data() + s0 * q_heads,
                      first_span[t + 1] - s0, q_heads, head_dim);
    }
    return;
  }
  const TiledFn tiled = TiledFor<KV>(group, head_dim);
  // Prefill (any step that is not pure decode): the blocked kernel for runs of a chunk's tokens,
  // the tiled one for short runs (a decode token batched beside a chunk) where it serves.
  const bool blocked = BlockedAttentionFits(head_dim) && !decode;
  if (tiled || blocked) {
    const std::vector<Run> runs =
        TokenRuns(token_seq, positions, tokens, blocked ? BlockedRunTokens(group) : kMaxRun);
    const int64_t tasks = static_cast<int64_t>(runs.size()) * kv_heads;
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
    for (int64_t task = tasks - 1; task >= 0; --task) {  // the longest causal reach first
      const Run& r = runs[task / kv_heads];
      const int64_t kvh = task % kv_heads;
      const int32_t* table = view.Table(token_seq[r.first]);
      if (blocked && !(tiled && r.count < kMinBlockedRun)) {
        const int64_t row = r.first * q_heads;
        blocked_attention_run<KV>(out + row * head_dim, lse ? lse + row : nullptr,
                                  q + row * head_dim, r.count, positions[r.first], q_heads, kvh,
                                  group, head_dim, k_cache, v_cache, k_scale, v_scale, geometry,
                                  table, kv_heads, scale, window, floor);
        continue;
      }
      int64_t lens[kMaxRun];
      for (int u = 0; u < r.count; ++u) lens[u] = static_cast<int64_t>(positions[r.first + u]) + 1;
      const int64_t row = r.first * q_heads + kvh * group;
      tiled(out + row * head_dim, lse ? lse + row : nullptr, q + row * head_dim, r.count,
            q_heads * head_dim, q_heads, lens, k_cache, v_cache, k_scale, v_scale, geometry, table,
            kv_row, kvh, scale, window, floor);
    }
    return;
  }
  // Any other head size or group: the same online softmax, one position at a time.
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int64_t task = 0; task < tokens * kv_heads; ++task) {
    const int64_t t = task / kv_heads;
    const int64_t kvh = task % kv_heads;
    const int32_t* table = view.Table(token_seq[t]);
    const int64_t len = static_cast<int64_t>(positions[t]) + 1;
    const int64_t low = std::max<int64_t>(floor, window > 0 ? len - window : 0);
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
      if (p1 <= low) continue;  // wholly before the window
      const int64_t base = geometry.SlotOf(table[b], 0);
      for (int64_t p = std::max(p0, low); p < p1; ++p) {
        const int64_t slot = base + (p - p0);
        const float ks = kQuantizedKv<KV> ? k_scale[slot * kv_heads + kvh] : 1.0f;
        const float vs = kQuantizedKv<KV> ? v_scale[slot * kv_heads + kvh] : 1.0f;
        const float* kr = row_f32(k_cache + slot * kv_row + kvh * head_dim, ks, head_dim, kbuf);
        const float* vr = row_f32(v_cache + slot * kv_row + kvh * head_dim, vs, head_dim, vbuf);
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

#define KVSHARD_INSTANTIATE_ATTENTION(KV)                                                        \
  template void kv_append<KV>(KV*, KV*, const float*, const float*, const int64_t*, int64_t,     \
                              int64_t, int64_t, float*, float*);                                 \
  template void kv_row_to_f32<KV>(float*, const KV*, float, int64_t);                            \
  template void paged_attention<KV>(float*, const float*, const KV*, const KV*,                  \
                                    const PagedKvView&, const int32_t*, const int32_t*, int64_t, \
                                    int64_t, int64_t, int64_t, float, float*, const float*,      \
                                    const float*, int64_t, int64_t);
KVSHARD_INSTANTIATE_ATTENTION(float)
KVSHARD_INSTANTIATE_ATTENTION(f16_t)
KVSHARD_INSTANTIATE_ATTENTION(bf16_t)
KVSHARD_INSTANTIATE_ATTENTION(int8_t)
KVSHARD_INSTANTIATE_ATTENTION(fp8_e4m3_t)
#undef KVSHARD_INSTANTIATE_ATTENTION

}  // namespace kvshard
