// gemm_bf16_inputs (kernels/cpu/gemm.h): products with bf16 inputs, on AVX512-BF16 dot products,
// AMX tiles, or fused multiply-adds in the same order.
#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cpu/amx.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemm_blocking.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/simd.h"

namespace kvshard {
namespace {

using namespace gemm_blocking;  // kWidth, vec, the tile sizes, weight_at, drive

// bf16 inputs: x rounded to bf16 (to nearest even), weights as they are, pairs of input features
// in 32-bit words (the lower half the even feature). Each pair's two products are added to the
// f32 sum, the odd feature's first: VDPBF16PS (AVX512-BF16) where the build has it, the same
// order in fused multiply-adds elsewhere (the same sums but for denormals, which VDPBF16PS
// flushes to zero).
constexpr int64_t kDepthPairs = std::min<int64_t>(kDepth / 2, 256);  // tuned apart from f32

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

// The 32-bit words of the products: Words<W>::at(w, packed, n, k, in) the word of row n from
// feature k, load() kWidth words from there, kFeatures the features a word holds.
//   bf16 weights: features (k, k + 1) (k even; the odd half 0 past the row's end), met by x's
//     features (k, k + 1).
//   f16 weights: feature k split in two bf16 parts whose sum is the weight exactly (the lower
//     half the weight cut to bf16's 8 significant bits, the upper half the rest: an f16 has 11
//     significant bits, so the rest has at most 3), met by x's feature k twice. The product with
//     x rounded to bf16 is then exact, and its two parts go into the sum one after the other.
template <typename W>
struct Words;

template <>
struct Words<bf16_t> {
  static constexpr int64_t kFeatures = 2;
  static uint32_t at(const bf16_t* w, bool packed, int64_t n, int64_t k, int64_t in) {
    const uint32_t lo = weight_at(w, packed, n, k, in)->bits;
    const uint32_t hi = k + 1 < in ? weight_at(w, packed, n, k + 1, in)->bits : 0u;
    return lo | hi << 16;
  }
  static vec load(const bf16_t* w, bool packed, int64_t n, int64_t k, int64_t in) {
    vec r;
    std::memcpy(&r, weight_at(w, packed, n, k, in), sizeof(vec));
    return r;
  }
};

inline uint32_t split_f16(float f) {
  uint32_t bits, rest_bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t high = bits & 0xffff0000u;
  float cut;
  std::memcpy(&cut, &high, sizeof cut);
  const float rest = f - cut;  // exact
  std::memcpy(&rest_bits, &rest, sizeof rest_bits);
  return high >> 16 | (rest_bits & 0xffff0000u);
}

template <>
struct Words<f16_t> {
  static constexpr int64_t kFeatures = 1;
  static uint32_t at(const f16_t* w, bool packed, int64_t n, int64_t k, int64_t in) {
    return split_f16(to_f32(*weight_at(w, packed, n, k, in)));
  }
  static vec load(const f16_t* w, bool packed, int64_t n, int64_t k, int64_t in) {
#if defined(__AVX512F__)
    const __m512 f =
        simd::load_f16(reinterpret_cast<const uint16_t*>(weight_at(w, packed, n, k, in)));
    const __m512i upper = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    const __m512i high = _mm512_and_si512(_mm512_castps_si512(f), upper);
    const __m512 rest = _mm512_sub_ps(f, _mm512_castsi512_ps(high));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_srli_epi32(high, 16),
                                               _mm512_and_si512(_mm512_castps_si512(rest), upper)));
#else
    uint32_t words[kWidth];
    for (int i = 0; i < kWidth; ++i) words[i] = at(w, packed, n, k + i, in);
    vec r;
    std::memcpy(&r, words, sizeof(vec));
    return r;
#endif
  }
};

// As pack, in Words<W>, for panels of Cols columns and `depth` words: p[q * depth * Cols + k *
// Cols + j] holds the word of column n0 + q * Cols + j from feature k0 + k * kFeatures for
// k < pairs, and 0 from there to depth. kWidth rows x kWidth words (contiguous in a row and in a
// packed chunk) are transposed in registers at once.
template <int Cols, typename W>
void pack_words(const W* w, bool packed, int64_t in, int64_t n0, int64_t cols, int64_t k0,
                int64_t pairs, int64_t depth, uint32_t* p) {
  static_assert(Cols % kWidth == 0, "a panel holds whole vectors");
  constexpr int64_t f = Words<W>::kFeatures;
  const int64_t panels = (cols + Cols - 1) / Cols;
  const int64_t whole = std::min(pairs, (in - k0) / f) / kWidth * kWidth;  // words in vectors
  for (int64_t q = 0; q < panels; ++q) {
    uint32_t* panel = p + q * depth * Cols;
    std::memset(panel + pairs * Cols, 0, (depth - pairs) * Cols * sizeof(uint32_t));
    for (int g = 0; g < Cols / kWidth; ++g) {
      const int64_t j0 = q * Cols + g * kWidth;
      const int64_t live = std::clamp<int64_t>(cols - j0, 0, kWidth);
      int64_t k = 0;
      if (live == kWidth) {
        for (; k < whole; k += kWidth) {
          vec r[kWidth];
          for (int i = 0; i < kWidth; ++i)
            r[i] = Words<W>::load(w, packed, n0 + j0 + i, k0 + f * k, in);
          simd::transpose(r);
          for (int i = 0; i < kWidth; ++i) {
            std::memcpy(panel + (k + i) * Cols + g * kWidth, &r[i], sizeof(vec));
          }
        }
      }
      for (; k < pairs; ++k) {
        uint32_t* d = panel + k * Cols + g * kWidth;
        for (int64_t i = 0; i < kWidth; ++i) {
          d[i] = i < live ? Words<W>::at(w, packed, n0 + j0 + i, k0 + f * k, in) : 0u;
        }
      }
    }
  }
}

// x [tokens, in] -> the words meeting Words<W>'s, rounded to bf16: pairs of features (bf16
// weights) or each feature twice (f16 weights), rows of ld words (0 past the last); rows split
// over the team.
template <typename W>
void round_rows(const float* x, int64_t tokens, int64_t in, uint32_t* words, int64_t ld) {
  constexpr int64_t f = Words<W>::kFeatures;
  const int64_t n_words = (in + f - 1) / f;
#pragma omp for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = x + t * in;
    uint32_t* d = words + t * ld;
    std::fill(d + n_words, d + ld, 0u);
    int64_t k = 0;
    if constexpr (f == 2) {
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
    } else {
#if defined(__AVX512BF16__)
      for (; k + 16 <= in; k += 16) {
        const __m512i b = _mm512_cvtepu16_epi32(
            reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_loadu_ps(row + k))));
        _mm512_storeu_si512(d + k, _mm512_or_si512(b, _mm512_slli_epi32(b, 16)));
      }
#endif
      for (; k < in; ++k) {
        const uint32_t b = f32_to_bf16_bits(row[k]);
        d[k] = b | b << 16;
      }
    }
  }
}

#if defined(__AVX512BF16__)
// AMX (where amx_bf16_usable()): the same products on the tile unit, TDPBF16PS of 16 tokens x 16
// pairs of features (A, rows of x's words) by 16 pairs x 16 features (B, rows of a panel's words)
// into 16 x 16 f32 sums. The microkernel holds 32 tokens x 32 features in four accumulator tiles
// and, per 16 pairs, loads two A and two B tiles (all eight tiles). x's rows and the panels are
// padded with zero pairs to a multiple of 16, and x's rows to a multiple of 32 tokens. The tile
// unit sums each 16 pairs in its own order (not VDPBF16PS's, nor the fused multiply-add chain's:
// the results differ in the last bits), but an output's sums still depend only on its token's
// row and its feature's column: not on the tokens beside it, the tile, or the threads.
constexpr int kAmxRows = 32, kAmxCols = 32;
constexpr int64_t kAmxPairs = 16;  // pairs of one tile product (64-byte rows)
// Pairs per packed slice: deeper than the vector kernel's, since the accumulator tiles go through
// memory once per slice (512-token prefill of a dim-1024 bf16 model on one core: 128 pairs 3,100
// tok/s, 256 3,400, 512 3,400-3,700, 1,024 3,400-4,000, 2,048 3,300-3,500).
constexpr int64_t kAmxDepthPairs = 512;
static_assert(kAmxDepthPairs % kAmxPairs == 0, "a slice holds whole tile products");

// c[r][j] (+)= sum over pairs of x[r * ldx + k] . p[k * kAmxCols + j] for r < rows (Two: rows >
// 16, both token tiles; else only the first).
template <bool Two>
__attribute__((target("amx-tile,amx-bf16"))) void amx_tiles(const uint32_t* x, int64_t ldx,
                                                            const uint32_t* p, int64_t pairs,
                                                            float* c, int64_t ldc, bool load) {
  const int64_t sc = ldc * static_cast<int64_t>(sizeof(float));
  const int64_t sx = ldx * static_cast<int64_t>(sizeof(uint32_t));
  constexpr int64_t sp = kAmxCols * sizeof(uint32_t);
  if (load) {
    _tile_loadd(0, c, sc);
    _tile_loadd(1, c + 16, sc);
    if (Two) {
      _tile_loadd(2, c + 16 * ldc, sc);
      _tile_loadd(3, c + 16 * ldc + 16, sc);
    }
  } else {
    _tile_zero(0);
    _tile_zero(1);
    if (Two) {
      _tile_zero(2);
      _tile_zero(3);
    }
  }
  for (int64_t k = 0; k < pairs; k += kAmxPairs) {
    _tile_loadd(6, p + k * kAmxCols, sp);
    _tile_loadd(7, p + k * kAmxCols + 16, sp);
    _tile_loadd(4, x + k, sx);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if (Two) {
      _tile_loadd(5, x + 16 * ldx + k, sx);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, sc);
  _tile_stored(1, c + 16, sc);
  if (Two) {
    _tile_stored(2, c + 16 * ldc, sc);
    _tile_stored(3, c + 16 * ldc + 16, sc);
  }
}

// A tile of `rows` tokens: the last rows of a product go through a whole 32 x 32 tile.
void micro_amx(int rows, const uint32_t* x, int64_t ldx, const uint32_t* p, int64_t pairs, float* c,
               int64_t ldc, bool load) {
  if (rows == kAmxRows) {
    amx_tiles<true>(x, ldx, p, pairs, c, ldc, load);
    return;
  }
  alignas(64) float edge[kAmxRows * kAmxCols];
  if (load) {
    for (int r = 0; r < rows; ++r)
      std::memcpy(edge + r * kAmxCols, c + r * ldc, sizeof(float) * kAmxCols);
  }
  if (rows > 16) {
    amx_tiles<true>(x, ldx, p, pairs, edge, kAmxCols, load);
  } else {
    amx_tiles<false>(x, ldx, p, pairs, edge, kAmxCols, load);
  }
  for (int r = 0; r < rows; ++r)
    std::memcpy(c + r * ldc, edge + r * kAmxCols, sizeof(float) * kAmxCols);
}

template <typename W>
void gemm_bf16_amx(float* out, const float* x, const W* w, bool packed, int64_t tokens, int64_t in,
                   int64_t n_out) {
  constexpr int64_t f = Words<W>::kFeatures;
  const int64_t pairs = (in + f - 1) / f;
  const int64_t ld = (pairs + kAmxPairs - 1) / kAmxPairs * kAmxPairs;
  const int64_t rows = (tokens + kAmxRows - 1) / kAmxRows * kAmxRows;
  static thread_local std::vector<uint32_t> words;  // the calling thread's, shared by its team
  if (words.size() < static_cast<size_t>(rows * ld)) words.resize(rows * ld);
  uint32_t* xw = words.data();
  std::fill(xw + tokens * ld, xw + rows * ld, 0u);  // the last tile's rows past the tokens
  drive<kAmxRows, kAmxCols, uint32_t>(
      out, tokens, ld, n_out, false, kAmxDepthPairs, tokens * in * n_out >= kParallelMacs,
      [&] {
        round_rows<W>(x, tokens, in, xw, ld);
        amx_configure();
      },
      [&](int64_t n0, int64_t cols, int64_t u0, int64_t depth, uint32_t* p) {
        const int64_t live = std::clamp<int64_t>(pairs - u0, 0, depth);
        pack_words<kAmxCols>(w, packed, in, n0, cols, f * u0, live, depth, p);
      },
      [&](int r, int64_t t0, int64_t u0, const uint32_t* panel, int64_t depth, float* c,
          int64_t ldc, bool load,
          int) { micro_amx(r, xw + t0 * ld + u0, ld, panel, depth, c, ldc, load); },
      [] { amx_release(); });
}
#endif

// Whether gemm_bf16_inputs takes the tile unit: where the CPU and Linux allow it, unless
// gemm_allow_amx(false) or KVSHARD_AMX=0 said no.
std::atomic<int> amx_allowed{-1};  // -1: not asked yet

bool amx_on() {
#if defined(__AVX512BF16__)
  int a = amx_allowed.load(std::memory_order_relaxed);
  if (a < 0) {
    const char* e = std::getenv("KVSHARD_AMX");
    a = (e == nullptr || std::string(e) != "0") ? 1 : 0;
    amx_allowed.store(a, std::memory_order_relaxed);
  }
  return a == 1 && amx_bf16_usable();
#else
  return false;
#endif
}

template <typename W>
void gemm_bf16_any(float* out, const float* x, const W* w, bool packed, int64_t tokens, int64_t in,
                   int64_t out_features) {
#if defined(__AVX512BF16__)
  if (amx_on()) {
    gemm_bf16_amx(out, x, w, packed, tokens, in, out_features);
    return;
  }
#endif
  constexpr int64_t f = Words<W>::kFeatures;
  const int64_t pairs = (in + f - 1) / f;
  static thread_local std::vector<uint32_t> words;  // the calling thread's, shared by its team
  if (words.size() < static_cast<size_t>(tokens * pairs)) words.resize(tokens * pairs);
  uint32_t* xw = words.data();
  drive<kRows, kCols, uint32_t>(
      out, tokens, pairs, out_features, false, kDepthPairs,
      tokens * in * out_features >= kParallelMacs, [&] { round_rows<W>(x, tokens, in, xw, pairs); },
      [&](int64_t n0, int64_t cols, int64_t u0, int64_t depth, uint32_t* p) {
        pack_words<kCols>(w, packed, in, n0, cols, f * u0, depth, depth, p);
      },
      [&](int rows, int64_t t0, int64_t u0, const uint32_t* panel, int64_t depth, float* c,
          int64_t ldc, bool load,
          int) { kMicroBf16[rows - 1](xw + t0 * pairs + u0, pairs, panel, depth, c, ldc, load); },
      [] {});
}

}  // namespace

void gemm_bf16_inputs(float* out, const float* x, const bf16_t* w, bool packed, int64_t tokens,
                      int64_t in_features, int64_t out_features) {
  gemm_bf16_any(out, x, w, packed, tokens, in_features, out_features);
}

void gemm_bf16_inputs(float* out, const float* x, const f16_t* w, bool packed, int64_t tokens,
                      int64_t in_features, int64_t out_features) {
  gemm_bf16_any(out, x, w, packed, tokens, in_features, out_features);
}

void gemm_allow_amx(bool allow) { amx_allowed.store(allow ? 1 : 0, std::memory_order_relaxed); }

bool gemm_uses_amx() { return amx_on(); }

std::string gemm_bf16_description() {
  if (amx_on()) return "kvshard amx 32x32";
#if defined(__AVX512BF16__)
  return "kvshard avx512bf16 " + std::to_string(kRows) + "x" + std::to_string(kCols);
#else
  return "kvshard fma " + std::to_string(kRows) + "x" + std::to_string(kCols);
#endif
}

bool gemm_has_bf16_dot() {
#if defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

}  // namespace kvshard
