#include "kernels/cpu/gemm.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
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

// A microkernel's R x kVectors accumulators from c (or zero), and back.
template <int R>
[[gnu::always_inline]] inline void tile_load(vec (&acc)[R][kVectors], const float* c, int64_t ldc,
                                             bool load) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) {
      acc[r][v] = load ? simd::load(c + r * ldc + v * kWidth) : simd::zero();
    }
  }
}
template <int R>
[[gnu::always_inline]] inline void tile_store(const vec (&acc)[R][kVectors], float* c,
                                              int64_t ldc) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) simd::store(c + r * ldc + v * kWidth, acc[r][v]);
  }
}

// c[r][j] = (load ? c[r][j] : 0) + sum_k x[r * ldx + k] * p[k * kCols + j], k in order.
template <int R>
void micro(const float* x, int64_t ldx, const float* p, int64_t depth, float* c, int64_t ldc,
           bool load) {
  vec acc[R][kVectors];
  tile_load<R>(acc, c, ldc, load);
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
  tile_store<R>(acc, c, ldc);
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

// The loops around a microkernel, for panels of Elem (f32 weights, or pairs of bf16 weights in
// 32-bit words) and `units` of the inner dimension (features, or pairs of them). Each thread
// takes a contiguous run of panels (runs differing by at most one panel), in column blocks of at
// most kMaxColumns; for each block and slice of `slice` units it packs the block's weights
// (pack(n0, cols, u0, depth, panels)) and runs every token tile over them (micro(rows, t0, u0,
// panel, depth, c, ldc, load)). prologue() runs first on the whole team, then a barrier.
template <typename Elem, typename Prologue, typename Pack, typename Run>
void drive(float* out, int64_t tokens, int64_t units, int64_t n_out, bool accumulate, int64_t slice,
           bool parallel, Prologue prologue, Pack pack_block, Run micro) {
  const int64_t panels = (n_out + kCols - 1) / kCols;
#pragma omp parallel if (parallel && panels > 1)
  {
    prologue();
    const int64_t team = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t first = panels * me / team, last = panels * (me + 1) / team;
    static thread_local std::vector<Elem> packed_w;  // slice x kMaxColumns at most
    const int64_t max_cols = std::min<int64_t>(kMaxColumns, (last - first) * kCols);
    if (packed_w.size() < static_cast<size_t>(slice * max_cols)) {
      packed_w.resize(slice * max_cols);
    }
    alignas(64) float edge[kRows * kCols] = {};
    for (int64_t n0 = first * kCols; n0 < std::min(n_out, last * kCols); n0 += kMaxColumns) {
      const int64_t cols = std::min({kMaxColumns, n_out - n0, last * kCols - n0});
      for (int64_t u0 = 0; u0 < units; u0 += slice) {
        const int64_t depth = std::min(slice, units - u0);
        const bool load = accumulate || u0 > 0;
        pack_block(n0, cols, u0, depth, packed_w.data());
        for (int64_t t0 = 0; t0 < tokens; t0 += kRows) {
          const int rows = static_cast<int>(std::min<int64_t>(kRows, tokens - t0));
          for (int64_t j0 = 0; j0 < cols; j0 += kCols) {
            const Elem* panel = packed_w.data() + j0 / kCols * depth * kCols;
            float* c = out + t0 * n_out + n0 + j0;
            if (j0 + kCols <= cols) {
              micro(rows, t0, u0, panel, depth, c, n_out, load);
            } else {  // the matrix's last columns, through a full-width tile
              const size_t live = (cols - j0) * sizeof(float);
              if (load) {
                for (int64_t r = 0; r < rows; ++r) {
                  std::memcpy(edge + r * kCols, c + r * n_out, live);
                }
              }
              micro(rows, t0, u0, panel, depth, edge, kCols, load);
              for (int64_t r = 0; r < rows; ++r) std::memcpy(c + r * n_out, edge + r * kCols, live);
            }
          }
        }
      }
    }
  }
}

template <typename W>
void gemm_any(float* out, const float* x, const W* w, bool packed, int64_t tokens, int64_t in,
              int64_t n_out, bool accumulate) {
  drive<float>(
      out, tokens, in, n_out, accumulate, kDepth, tokens * in * n_out >= kParallelMacs, [] {},
      [&](int64_t n0, int64_t cols, int64_t k0, int64_t depth, float* p) {
        pack(w, packed, in, n0, cols, k0, depth, p);
      },
      [&](int rows, int64_t t0, int64_t k0, const float* panel, int64_t depth, float* c,
          int64_t ldc,
          bool load) { kMicro[rows - 1](x + t0 * in + k0, in, panel, depth, c, ldc, load); });
}

// bf16 inputs: x rounded to bf16 (to nearest even), weights as they are, pairs of input features
// in 32-bit words (the lower half the even feature). Each pair's two products are added to the
// f32 sum, the odd feature's first: VDPBF16PS (AVX512-BF16) where the build has it, the same
// order in fused multiply-adds elsewhere (the same sums but for denormals, which VDPBF16PS
// flushes to zero).
constexpr int64_t kDepthPairs = kDepth / 2;

inline float bf16_low(uint32_t w) { return bf16_bits_to_f32(static_cast<uint16_t>(w)); }
inline float bf16_high(uint32_t w) { return bf16_bits_to_f32(static_cast<uint16_t>(w >> 16)); }

template <int R>
void micro_bf16(const uint32_t* x, int64_t ldx, const uint32_t* p, int64_t pairs, float* c,
                int64_t ldc, bool load) {
#if defined(__AVX512BF16__)
  vec acc[R][kVectors];
  tile_load<R>(acc, c, ldc, load);
  for (int64_t k = 0; k < pairs; ++k, p += kCols) {
    __m512bh b[kVectors];
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) {
      b[v] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(p + v * kWidth));
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512bh a =
          reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(x[r * ldx + k])));
#pragma GCC unroll 8
      for (int v = 0; v < kVectors; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]);
    }
  }
  tile_store<R>(acc, c, ldc);
#else
  for (int r = 0; r < R; ++r) {
    float acc[kCols];
    for (int j = 0; j < kCols; ++j) acc[j] = load ? c[r * ldc + j] : 0.0f;
    for (int64_t k = 0; k < pairs; ++k) {
      const uint32_t a = x[r * ldx + k];
      for (int j = 0; j < kCols; ++j) {
        const uint32_t b = p[k * kCols + j];
        acc[j] = std::fma(bf16_high(a), bf16_high(b), acc[j]);
        acc[j] = std::fma(bf16_low(a), bf16_low(b), acc[j]);
      }
    }
    for (int j = 0; j < kCols; ++j) c[r * ldc + j] = acc[j];
  }
#endif
}

using MicroBf16 = void (*)(const uint32_t*, int64_t, const uint32_t*, int64_t, float*, int64_t,
                           bool);
template <size_t... I>
constexpr std::array<MicroBf16, sizeof...(I)> micro_bf16_table(std::index_sequence<I...>) {
  return {&micro_bf16<static_cast<int>(I) + 1>...};
}
constexpr auto kMicroBf16 = micro_bf16_table(std::make_index_sequence<kRows>{});

// The word of features (k, k + 1) of row n (k even; the odd half 0 past the row's end).
inline uint32_t pair_at(const bf16_t* w, bool packed, int64_t n, int64_t k, int64_t in) {
  const uint32_t lo = weight_at(w, packed, n, k, in)->bits;
  const uint32_t hi = k + 1 < in ? weight_at(w, packed, n, k + 1, in)->bits : 0u;
  return lo | hi << 16;
}

// As pack, in words of feature pairs: p[q * pairs * kCols + k * kCols + j] holds features
// (k0 + 2k, k0 + 2k + 1) of column n0 + q * kCols + j. kWidth rows x kWidth words (2 kWidth
// features, contiguous in a row and in a packed chunk) are transposed in registers at once.
void pack_pairs(const bf16_t* w, bool packed, int64_t in, int64_t n0, int64_t cols, int64_t k0,
                int64_t pairs, uint32_t* p) {
  const int64_t panels = (cols + kCols - 1) / kCols;
  const int64_t whole = std::min(pairs, (in - k0) / 2) / kWidth * kWidth;  // words in vectors
  for (int64_t q = 0; q < panels; ++q) {
    uint32_t* panel = p + q * pairs * kCols;
    for (int g = 0; g < kVectors; ++g) {
      const int64_t j0 = q * kCols + g * kWidth;
      const int64_t live = std::clamp<int64_t>(cols - j0, 0, kWidth);
      int64_t k = 0;
      if (live == kWidth) {
        for (; k < whole; k += kWidth) {
          vec r[kWidth];
          for (int i = 0; i < kWidth; ++i) {
            std::memcpy(&r[i], weight_at(w, packed, n0 + j0 + i, k0 + 2 * k, in), sizeof(vec));
          }
          simd::transpose(r);
          for (int i = 0; i < kWidth; ++i) {
            std::memcpy(panel + (k + i) * kCols + g * kWidth, &r[i], sizeof(vec));
          }
        }
      }
      for (; k < pairs; ++k) {
        uint32_t* d = panel + k * kCols + g * kWidth;
        for (int64_t i = 0; i < kWidth; ++i) {
          d[i] = i < live ? pair_at(w, packed, n0 + j0 + i, k0 + 2 * k, in) : 0u;
        }
      }
    }
  }
}

// x [tokens, in] -> bf16 pairs [tokens, (in + 1) / 2], rows split over the team.
void round_rows(const float* x, int64_t tokens, int64_t in, uint32_t* words) {
  const int64_t pairs = (in + 1) / 2;
#pragma omp for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = x + t * in;
    uint32_t* d = words + t * pairs;
    int64_t k = 0;
#if defined(__AVX512BF16__)
    for (; k + 32 <= in; k += 32) {
      const __m512bh h =
          _mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + k + 16), _mm512_loadu_ps(row + k));
      _mm512_storeu_si512(d + k / 2, reinterpret_cast<__m512i>(h));
    }
#endif
    for (; k < in; k += 2) {
      const uint32_t lo = f32_to_bf16_bits(row[k]);
      const uint32_t hi = k + 1 < in ? f32_to_bf16_bits(row[k + 1]) : 0u;
      d[k / 2] = lo | hi << 16;
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

void gemm_bf16_inputs(float* out, const float* x, const bf16_t* w, bool packed, int64_t tokens,
                      int64_t in_features, int64_t out_features) {
  const int64_t in = in_features, pairs = (in + 1) / 2;
  static thread_local std::vector<uint32_t> words;  // the calling thread's, shared by its team
  if (words.size() < static_cast<size_t>(tokens * pairs)) words.resize(tokens * pairs);
  uint32_t* xw = words.data();
  drive<uint32_t>(
      out, tokens, pairs, out_features, false, kDepthPairs,
      tokens * in * out_features >= kParallelMacs, [&] { round_rows(x, tokens, in, xw); },
      [&](int64_t n0, int64_t cols, int64_t u0, int64_t depth, uint32_t* p) {
        pack_pairs(w, packed, in, n0, cols, 2 * u0, depth, p);
      },
      [&](int rows, int64_t t0, int64_t u0, const uint32_t* panel, int64_t depth, float* c,
          int64_t ldc, bool load) {
        kMicroBf16[rows - 1](xw + t0 * pairs + u0, pairs, panel, depth, c, ldc, load);
      });
}

bool gemm_has_bf16_dot() {
#if defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
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
