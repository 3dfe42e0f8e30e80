#include "kernels/cpu/gemm.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cpu/gemm_blocking.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/simd.h"

namespace kvshard {
namespace {

using namespace gemm_blocking;  // kWidth, vec, the tile sizes, weight_at, drive

// c[r][j] = (load ? c[r][j] : 0) + sum_k x[r * ldx + k] * p[k * kCols + j], k in order, for the
// first V vectors of a panel's columns (fewer than kVectors in a matrix's last panel).
template <int R, int V>
void micro(const float* x, int64_t ldx, const float* p, int64_t depth, float* c, int64_t ldc,
           bool load) {
  vec acc[R][V];
  tile_load<R, V>(acc, c, ldc, load);
  // Unrolled by 4: 156-162 against 139-144 GFLOP/s on one Xeon core (M 512, N and K 1024-4096).
#pragma GCC unroll 4
  for (int64_t k = 0; k < depth; ++k, p += kCols) {
    vec b[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) b[v] = simd::load(p + v * kWidth);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vec a = simd::set1(x[r * ldx + k]);
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[r][v] = simd::fma(a, b[v], acc[r][v]);
    }
  }
  tile_store<R, V>(acc, c, ldc);
}

using Micro = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, bool);
template <int V, size_t... I>
constexpr std::array<Micro, sizeof...(I)> micro_rows(std::index_sequence<I...>) {
  return {&micro<static_cast<int>(I) + 1, V>...};
}
template <size_t... V>
constexpr std::array<std::array<Micro, kRows>, sizeof...(V)> micro_table(
    std::index_sequence<V...>) {
  return {micro_rows<static_cast<int>(V) + 1>(std::make_index_sequence<kRows>{})...};
}
// kMicro[v - 1][r - 1]: a tile of r tokens (the last rows of a product) x v vectors of columns
// (the last columns of a matrix).
constexpr auto kMicro = micro_table(std::make_index_sequence<kVectors>{});

// Packs columns [n0, n0 + cols) x features [k0, k0 + depth) of w into panels of kCols columns:
// panel q holds p[q * depth * kCols + k * kCols + j] = w[n0 + q * kCols + j, k0 + k] (f32), zero
// past the last column. kWidth rows x kWidth features are loaded, transposed in registers and
// stored at once.
template <typename W>
void pack(const W* w, bool packed, int64_t in, int64_t n0, int64_t cols, int64_t k0, int64_t depth,
          float* p) {
  const int64_t panels = (cols + kCols - 1) / kCols;
  const int64_t vec_depth = depth / kWidth * kWidth;
  for (int64_t q = 0; q < panels; ++q) {
    float* panel = p + q * depth * kCols;
    for (int g = 0; g < kVectors; ++g) {
      const int64_t j0 = q * kCols + g * kWidth;  // first column of this group, within the block
      const int64_t live = std::clamp<int64_t>(cols - j0, 0, kWidth);
      if (live == kWidth) {
        for (int64_t k = 0; k < vec_depth; k += kWidth) {
          vec r[kWidth];
          for (int i = 0; i < kWidth; ++i)
            r[i] = load_w(weight_at(w, packed, n0 + j0 + i, k0 + k, in));
          simd::transpose(r);
          for (int i = 0; i < kWidth; ++i) simd::store(panel + (k + i) * kCols + g * kWidth, r[i]);
        }
      } else {
        for (int64_t k = 0; k < vec_depth; ++k) {
          float* d = panel + k * kCols + g * kWidth;
          for (int64_t i = 0; i < kWidth; ++i) {
            d[i] = i < live ? to_f32(*weight_at(w, packed, n0 + j0 + i, k0 + k, in)) : 0.0f;
          }
        }
      }
      for (int64_t k = vec_depth; k < depth; ++k) {
        float* d = panel + k * kCols + g * kWidth;
        for (int64_t i = 0; i < kWidth; ++i) {
          d[i] = i < live ? to_f32(*weight_at(w, packed, n0 + j0 + i, k0 + k, in)) : 0.0f;
        }
      }
    }
  }
}

// Products of a few tokens (batched decode), where packing the weights would cost as much as
// multiplying them: the roles turned around so that f32 weights are read in place. x is transposed
// once per call into vectors of kWidth tokens (zero past the last token); for kWidth rows of w at a
// time, each input feature's kWidth weights are broadcast, one per row, against the token vector
// (one vector load and kWidth broadcasts per kWidth fused multiply-adds), and the kWidth x kWidth
// accumulators are transposed into rows of out at the end. Each output is the GEMM's chain of fused
// multiply-adds over k in order, so the results are the GEMM's bit for bit. Up to kSmallTokens
// tokens (measured below); threads take contiguous runs of row blocks.
constexpr int64_t kSmallTokens = 32;
constexpr int64_t kSmallGroups = (kSmallTokens + kWidth - 1) / kWidth;
// Input features per pass: all token vectors meet kWidth rows of this many weights (16-bit ones
// widened into kWidth x kSmallDepth floats, 16 KB on AVX-512, in L1) before the next.
constexpr int64_t kSmallDepth = 256;
static_assert(kSmallDepth % kWidth == 0, "a pass holds whole vectors");
// KVSHARD_SMALL_GEMM=0 (read once) sends them to the packed GEMM, for measurements.
[[maybe_unused]] bool small_gemm_off() {
  static const bool off = [] {
    const char* e = std::getenv("KVSHARD_SMALL_GEMM");
    return e != nullptr && std::string(e) == "0";
  }();
  return off;
}

[[gnu::always_inline]] inline void small_block(const float* xt, const float* const* rows,
                                               int64_t depth, vec (&acc)[kWidth]) {
  vec a[kWidth];  // in registers for the whole pass
#pragma GCC unroll 16
  for (int r = 0; r < kWidth; ++r) a[r] = acc[r];
  for (int64_t k = 0; k < depth; ++k) {
    const vec xv = simd::load(xt + k * kWidth);
#pragma GCC unroll 16
    for (int r = 0; r < kWidth; ++r) a[r] = simd::fma(simd::set1(rows[r][k]), xv, a[r]);
  }
#pragma GCC unroll 16
  for (int r = 0; r < kWidth; ++r) acc[r] = a[r];
}

// 16-bit weights (row-major or decode-packed) are widened kWidth rows x kSmallDepth features at a
// time into a thread's buffer, from which the same kernel reads them.
template <typename W>
[[maybe_unused]] void gemm_small(float* out, const float* x, const W* w, bool packed,
                                 int64_t tokens, int64_t in, int64_t n_out, bool accumulate) {
  const int64_t groups = (tokens + kWidth - 1) / kWidth;
  static thread_local std::vector<float> xt_store;  // [group][k][lane]
  if (xt_store.size() < static_cast<size_t>(groups * in * kWidth)) {
    xt_store.resize(groups * in * kWidth);
  }
  float* xt = xt_store.data();
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t k = 0; k < in; ++k) {
      for (int l = 0; l < kWidth; ++l) {
        const int64_t t = g * kWidth + l;
        xt[(g * in + k) * kWidth + l] = t < tokens ? x[t * in + k] : 0.0f;
      }
    }
  }
  const int64_t blocks = (n_out + kWidth - 1) / kWidth;
#pragma omp parallel for schedule(static) if (tokens * in * n_out >= kParallelMacs && blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * kWidth, live = std::min<int64_t>(kWidth, n_out - n0);
    vec acc[kSmallGroups][kWidth];
    alignas(64) float tile[kWidth * kWidth] = {};  // [token][row]
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t t0 = g * kWidth, nt = std::min<int64_t>(kWidth, tokens - t0);
      if (accumulate) {
        for (int64_t t = 0; t < nt; ++t) {
          std::memcpy(tile + t * kWidth, out + (t0 + t) * n_out + n0, live * sizeof(float));
        }
        for (int i = 0; i < kWidth; ++i) acc[g][i] = simd::load(tile + i * kWidth);
        simd::transpose(acc[g]);  // [row][token]
      } else {
        for (vec& a : acc[g]) a = simd::zero();
      }
    }
    // f32 rows in one pass (measured ahead of passes of kSmallDepth: 109-111 against 105 GFLOP/s at
    // 32 tokens on one Xeon core); 16-bit ones in passes, each widened once.
    const int64_t pass = std::is_same_v<W, float> ? in : kSmallDepth;
    for (int64_t k0 = 0; k0 < in; k0 += pass) {
      const int64_t depth = std::min(pass, in - k0);
      const float* rows[kWidth];
      for (int r = 0; r < kWidth; ++r) {
        const int64_t n = std::min<int64_t>(n0 + r, n_out - 1);
        if constexpr (std::is_same_v<W, float>) {
          rows[r] = w + n * in + k0;
        } else {
          static thread_local std::vector<float> wide;  // kWidth rows of kSmallDepth, in L1
          if (wide.empty()) wide.resize(kWidth * kSmallDepth);
          float* d = wide.data() + r * kSmallDepth;
          int64_t k = 0;
          for (; k + kWidth <= depth; k += kWidth) {
            // kWidth columns from a multiple of kWidth are contiguous in either layout.
            simd::store(d + k, load_w(weight_at(w, packed, n, k0 + k, in)));
          }
          for (; k < depth; ++k) d[k] = to_f32(*weight_at(w, packed, n, k0 + k, in));
          rows[r] = d;
        }
      }
      for (int64_t g = 0; g < groups; ++g) {
        small_block(xt + (g * in + k0) * kWidth, rows, depth, acc[g]);
      }
    }
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t t0 = g * kWidth, nt = std::min<int64_t>(kWidth, tokens - t0);
      simd::transpose(acc[g]);  // [token][row]
      for (int i = 0; i < kWidth; ++i) simd::store(tile + i * kWidth, acc[g][i]);
      for (int64_t t = 0; t < nt; ++t) {
        std::memcpy(out + (t0 + t) * n_out + n0, tile + t * kWidth, live * sizeof(float));
      }
    }
  }
}

template <typename W>
void gemm_any(float* out, const float* x, const W* w, bool packed, int64_t tokens, int64_t in,
              int64_t n_out, bool accumulate) {
  if constexpr (kWidth > 1) {
    if (tokens <= kSmallTokens && !small_gemm_off()) {
      gemm_small(out, x, w, packed, tokens, in, n_out, accumulate);
      return;
    }
  }
  drive<kRows, kCols, float>(
      out, tokens, in, n_out, accumulate, kDepth, tokens * in * n_out >= kParallelMacs, [] {},
      [&](int64_t n0, int64_t cols, int64_t k0, int64_t depth, float* p) {
        pack(w, packed, in, n0, cols, k0, depth, p);
      },
      [&](int rows, int64_t t0, int64_t k0, const float* panel, int64_t depth, float* c,
          int64_t ldc, bool load, int live) {
        kMicro[(live + kWidth - 1) / kWidth - 1][rows - 1](x + t0 * in + k0, in, panel, depth, c,
                                                           ldc, load);
      },
      [] {});
}

}  // namespace

void gemm(float* out, const float* x, const float* w, int64_t tokens, int64_t in_features,
          int64_t out_features, bool accumulate) {
  gemm_any(out, x, w, false, tokens, in_features, out_features, accumulate);
}

void gemm(float* out, const float* x, const f16_t* w, bool packed, int64_t tokens,
          int64_t in_features, int64_t out_features) {
  gemm_any(out, x, w, packed, tokens, in_features, out_features, false);
}

void gemm(float* out, const float* x, const bf16_t* w, bool packed, int64_t tokens,
          int64_t in_features, int64_t out_features) {
  gemm_any(out, x, w, packed, tokens, in_features, out_features, false);
}

std::string gemm_description() {
#if defined(__AVX512F__)
  const char* isa = "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  const char* isa = "avx2";
#else
  const char* isa = "scalar";
#endif
  return std::string("kvshard ") + isa + " " + std::to_string(kRows) + "x" + std::to_string(kCols);
}

}  // namespace kvshard
