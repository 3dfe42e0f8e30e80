#include "kernels/cpu/gemm.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/simd.h"

namespace kvshard {
namespace {

using simd::kWidth;
using simd::vec;

// The microkernel's tile: kRows tokens x kVectors vectors of features, kRows * kVectors
// accumulators (AVX-512: 24 of 32 registers, the rest for the weights and the broadcast; 8 x 48
// measured level with 6 x 64 and ahead of 14 x 32 and 12 x 32 on a Zen 4 core). kDepth input
// features per packed slice; kMaxColumns features per column block (kDepth x kMaxColumns floats
// of packed weights per thread, in L2).
#if defined(__AVX512F__)
constexpr int kRows = 8, kVectors = 3;
constexpr int64_t kMaxColumns = 384;
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kRows = 6, kVectors = 2;  // 12 of 16 registers
constexpr int64_t kMaxColumns = 256;
#else
constexpr int kRows = 4, kVectors = 4;
constexpr int64_t kMaxColumns = 64;
#endif
constexpr int kCols = kVectors * kWidth;  // NR
constexpr int64_t kDepth = 256;
static_assert(kDepth % kPackedChunk == 0, "a slice holds whole chunks of a packed matrix");
static_assert(kPackedChunk % kWidth == 0, "a vector never straddles two chunks");
static_assert(kMaxColumns % kCols == 0, "a column block holds whole panels");

// c[r][j] = (load ? c[r][j] : 0) + sum_k x[r * ldx + k] * p[k * kCols + j], k in order.
template <int R>
void micro(const float* x, int64_t ldx, const float* p, int64_t depth, float* c, int64_t ldc,
           bool load) {
  vec acc[R][kVectors];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) {
      acc[r][v] = load ? simd::load(c + r * ldc + v * kWidth) : simd::zero();
    }
  }
  for (int64_t k = 0; k < depth; ++k, p += kCols) {
    vec b[kVectors];
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) b[v] = simd::load(p + v * kWidth);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vec a = simd::set1(x[r * ldx + k]);
#pragma GCC unroll 8
      for (int v = 0; v < kVectors; ++v) acc[r][v] = simd::fma(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) simd::store(c + r * ldc + v * kWidth, acc[r][v]);
  }
}

using Micro = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, bool);
template <size_t... I>
constexpr std::array<Micro, sizeof...(I)> micro_table(std::index_sequence<I...>) {
  return {&micro<static_cast<int>(I) + 1>...};
}
// kMicro[r - 1]: a tile of r tokens (the last rows of a product).
constexpr auto kMicro = micro_table(std::make_index_sequence<kRows>{});

inline vec load_w(const float* p) { return simd::load(p); }
inline vec load_w(const f16_t* p) { return simd::load_f16(reinterpret_cast<const uint16_t*>(p)); }
inline vec load_w(const bf16_t* p) { return simd::load_bf16(reinterpret_cast<const uint16_t*>(p)); }

// Where weight (n, k) is: row-major, or in matmul.h's decode tiles (4 rows; each row's next
// kPackedChunk columns after the previous row's, then the columns past the last whole chunk
// row after row). Either way the kWidth columns from a multiple of kWidth are contiguous.
template <typename W>
const W* weight_at(const W* w, bool packed, int64_t n, int64_t k, int64_t in) {
  if (!packed) return w + n * in + k;
  const W* tile = w + n / 4 * 4 * in;
  const int64_t main = in / kPackedChunk * kPackedChunk, i = n % 4;
  if (k < main)
    return tile + k / kPackedChunk * 4 * kPackedChunk + i * kPackedChunk + k % kPackedChunk;
  return tile + main * 4 + i * (in - main) + (k - main);
}

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

template <typename W>
void gemm_any(float* out, const float* x, const W* w, bool packed, int64_t tokens, int64_t in,
              int64_t n_out, bool accumulate) {
  // Each thread takes a contiguous run of panels (runs differing by at most one panel), in column
  // blocks of at most kMaxColumns.
  const int64_t panels = (n_out + kCols - 1) / kCols;
  const bool parallel = tokens * in * n_out >= kParallelMacs && panels > 1;
#pragma omp parallel if (parallel)
  {
    const int64_t team = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t first = panels * me / team, last = panels * (me + 1) / team;
    static thread_local std::vector<float> packed_w;  // kDepth x kMaxColumns floats at most
    const int64_t max_cols = std::min<int64_t>(kMaxColumns, (last - first) * kCols);
    if (packed_w.size() < static_cast<size_t>(kDepth * max_cols)) {
      packed_w.resize(kDepth * max_cols);
    }
    alignas(64) float edge[kRows * kCols] = {};
    for (int64_t n0 = first * kCols; n0 < std::min(n_out, last * kCols); n0 += kMaxColumns) {
      const int64_t cols = std::min({kMaxColumns, n_out - n0, last * kCols - n0});
      for (int64_t k0 = 0; k0 < in; k0 += kDepth) {
        const int64_t depth = std::min(kDepth, in - k0);
        const bool load = accumulate || k0 > 0;
        pack(w, packed, in, n0, cols, k0, depth, packed_w.data());
        for (int64_t t0 = 0; t0 < tokens; t0 += kRows) {
          const int64_t rows = std::min<int64_t>(kRows, tokens - t0);
          const Micro micro = kMicro[rows - 1];
          const float* xt = x + t0 * in + k0;
          for (int64_t j0 = 0; j0 < cols; j0 += kCols) {
            const float* panel = packed_w.data() + j0 / kCols * depth * kCols;
            float* c = out + t0 * n_out + n0 + j0;
            if (j0 + kCols <= cols) {
              micro(xt, in, panel, depth, c, n_out, load);
            } else {  // the matrix's last columns, through a full-width tile
              const size_t live = (cols - j0) * sizeof(float);
              if (load) {
                for (int64_t r = 0; r < rows; ++r) {
                  std::memcpy(edge + r * kCols, c + r * n_out, live);
                }
              }
              micro(xt, in, panel, depth, edge, kCols, load);
              for (int64_t r = 0; r < rows; ++r) std::memcpy(c + r * n_out, edge + r * kCols, live);
            }
          }
        }
      }
    }
  }
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
