#include "kernels/cpu/matmul.h"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/simd.h"

namespace kvshard {
namespace {

inline simd::vec load_w(const float* p) { return simd::load(p); }
inline simd::vec load_w(const f16_t* p) {
  return simd::load_f16(reinterpret_cast<const uint16_t*>(p));
}
inline simd::vec load_w(const bf16_t* p) {
  return simd::load_bf16(reinterpret_cast<const uint16_t*>(p));
}

// The last n (< kWidth) columns of dot4, scalar. One compiled copy for every weight dtype (16-bit
// tails are widened first), so that a 16-bit product equals the f32 product of its widening bit
// for bit whatever the compiler contracts or vectorises here.
[[gnu::noinline]] void dot4_tail(const float* x, const float* w0, const float* w1, const float* w2,
                                 const float* w3, int64_t n, float* s) {
  for (int64_t k = 0; k < n; ++k) {
    s[0] += x[k] * w0[k];
    s[1] += x[k] * w1[k];
    s[2] += x[k] * w2[k];
    s[3] += x[k] * w3[k];
  }
}

// Four rows of w against one x row at once: x is loaded once per four weight rows.
template <typename W>
inline void dot4(const float* x, const W* w0, const W* w1, const W* w2, const W* w3, int64_t n,
                 float* r) {
  using namespace simd;
  constexpr int kW = kWidth;
  vec a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
  int64_t k = 0;
  for (; k + kW <= n; k += kW) {
    const vec xv = load(x + k);
    a0 = fma(xv, load_w(w0 + k), a0);
    a1 = fma(xv, load_w(w1 + k), a1);
    a2 = fma(xv, load_w(w2 + k), a2);
    a3 = fma(xv, load_w(w3 + k), a3);
  }
  r[0] = sum(a0);
  r[1] = sum(a1);
  r[2] = sum(a2);
  r[3] = sum(a3);
  if (k == n) return;
  if constexpr (std::is_same_v<W, float>) {
    dot4_tail(x + k, w0 + k, w1 + k, w2 + k, w3 + k, n - k, r);
  } else {
    float t[4][kW] = {};
    const W* rows[4] = {w0, w1, w2, w3};
    for (int i = 0; i < 4; ++i) {
      for (int64_t j = k; j < n; ++j) t[i][j - k] = to_f32(rows[i][j]);
    }
    dot4_tail(x + k, t[0], t[1], t[2], t[3], n - k, r);
  }
}

template <typename W>
void widen_row(const W* w, float* out, int64_t n) {
  using namespace simd;
  int64_t k = 0;
  for (; k + kWidth <= n; k += kWidth) store(out + k, load_w(w + k));
  for (; k < n; ++k) out[k] = to_f32(w[k]);
}

// dot4 over S packed tiles (matmul.h) at once: for each tile, the same additions in the same
// order as dot4 on the four rows it packs, reading each tile front to back. S tiles far apart in
// the matrix are S streams through memory at once: one core reads a single stream well below its
// bandwidth (on an AMX Xeon 9-10 GB/s against 14 GB/s for four).
template <int S, typename W>
inline void dot4_packed(const float* x, const W* const* tiles, int64_t n, float (*r)[4]) {
  using namespace simd;
  constexpr int kW = kWidth;
  vec a[S][4];
  const W* p[S];
  for (int s = 0; s < S; ++s) {
    p[s] = tiles[s];
    for (int i = 0; i < 4; ++i) a[s][i] = zero();
  }
  const int64_t main = n / kPackedChunk * kPackedChunk;
  int64_t k = 0;
  for (; k < main; k += kPackedChunk) {
    for (int v = 0; v < kPackedChunk; v += kW) {
      const vec xv = load(x + k + v);
      for (int s = 0; s < S; ++s) {
        for (int i = 0; i < 4; ++i) a[s][i] = fma(xv, load_w(p[s] + i * kPackedChunk + v), a[s][i]);
      }
    }
    for (int s = 0; s < S; ++s) p[s] += 4 * kPackedChunk;
  }
  const int64_t rem = n - main;  // the last columns, row after row
  const int64_t vec_end = main + (rem / kW) * kW;
  for (int s = 0; s < S; ++s) {
    for (int64_t kk = main; kk < vec_end; kk += kW) {
      const vec xv = load(x + kk);
      for (int i = 0; i < 4; ++i) a[s][i] = fma(xv, load_w(p[s] + i * rem + (kk - main)), a[s][i]);
    }
    for (int i = 0; i < 4; ++i) r[s][i] = sum(a[s][i]);
    if (vec_end == n) continue;
    float t[4][kW] = {};
    for (int i = 0; i < 4; ++i) {
      for (int64_t j = vec_end; j < n; ++j) t[i][j - vec_end] = to_f32(p[s][i * rem + j - main]);
    }
    dot4_tail(x + vec_end, t[0], t[1], t[2], t[3], n - vec_end, r[s]);
  }
}

// Packed tiles read at once by one thread in a decode step (registers: 4 accumulators each).
#if defined(__AVX512F__)
inline constexpr int kPackedStreams = 4;
#elif defined(__AVX2__)
inline constexpr int kPackedStreams = 2;
#else
inline constexpr int kPackedStreams = 1;
#endif

// One token's product with a packed 16-bit matrix: tile g is read beside tiles g + groups,
// g + 2 groups, ... (kPackedStreams of them), each its own stream.
template <bool kAccumulate, typename W>
void decode_packed(float* out, const float* x, const W* w, int64_t in, int64_t n_out) {
  constexpr int S = kPackedStreams;
  const int64_t tiles = (n_out + 3) / 4;
  const int64_t groups = (tiles + S - 1) / S;
  auto store = [&](int64_t tile, const float* r) {
    const int64_t n0 = tile * 4, rows = std::min<int64_t>(4, n_out - n0);
    for (int64_t i = 0; i < rows; ++i) {
      if constexpr (kAccumulate) {
        out[n0 + i] += r[i];
      } else {
        out[n0 + i] = r[i];
      }
    }
  };
#pragma omp parallel for schedule(static) if (in * n_out >= kParallelMacs)
  for (int64_t g = 0; g < groups; ++g) {
    if (g + (S - 1) * groups < tiles) {
      const W* p[S];
      float r[S][4];
      for (int s = 0; s < S; ++s) p[s] = w + (g + s * groups) * 4 * in;
      dot4_packed<S>(x, p, in, r);
      for (int s = 0; s < S; ++s) store(g + s * groups, r[s]);
    } else {
      for (int64_t tile = g; tile < tiles; tile += groups) {
        const W* p[1] = {w + tile * 4 * in};
        float r[1][4];
        dot4_packed<1>(x, p, in, r);
        store(tile, r[0]);
      }
    }
  }
}

// The packed tile's four rows widened to f32, row-major [4, n].
template <typename W>
void unpack_tile(const W* p, int64_t n, float* out) {
  const int64_t main = n / kPackedChunk * kPackedChunk, rem = n - main;
  for (int64_t c = 0; c < main; c += kPackedChunk, p += 4 * kPackedChunk) {
    for (int i = 0; i < 4; ++i) widen_row(p + i * kPackedChunk, out + i * n + c, kPackedChunk);
  }
  for (int i = 0; i < 4; ++i) widen_row(p + i * rem, out + i * n + main, rem);
}

// One tile of up to 4 output rows starting at n0, for tokens [t0, t1).
template <bool kAccumulate, typename W>
void tile_rows(float* out, const float* x, const W* const* wr, int64_t rows, int64_t n0, int64_t t0,
               int64_t t1, int64_t in, int64_t n_out) {
  for (int64_t t = t0; t < t1; ++t) {
    float r[4];
    dot4(x + t * in, wr[0], wr[1], wr[2], wr[3], in, r);
    float* o = out + t * n_out + n0;
    for (int64_t i = 0; i < rows; ++i) {
      if constexpr (kAccumulate) {
        o[i] += r[i];
      } else {
        o[i] = r[i];
      }
    }
  }
}

// Tiles of 4 output rows x blocks of tokens: a block of x rows stays in L2 while the tiles of w
// stream past it, so w is read once per token block rather than once per token. w is row-major,
// or (16-bit, kPacked) packed in tiles as matmul.h describes.
template <bool kAccumulate, bool kPacked, typename W>
void matmul_impl(float* out, const float* x, const W* w, int64_t tokens, int64_t in,
                 int64_t n_out) {
  constexpr int64_t kTokenBlock = 64;
  const int64_t tiles = (n_out + 3) / 4;
  for (int64_t t0 = 0; t0 < tokens; t0 += kTokenBlock) {
    const int64_t t1 = std::min(tokens, t0 + kTokenBlock);
    // 16-bit weights used by several tokens are widened once per tile into a per-thread buffer
    // (4 rows of f32) rather than once per token; a decode step widens them as it loads them.
    const bool widen_tile = !std::is_same_v<W, float> && t1 - t0 > 1;
    if constexpr (kPacked) {
      if (!widen_tile) {  // one token: each tile read once, as it is
        decode_packed<kAccumulate>(out + t0 * n_out, x + t0 * in, w, in, n_out);
        continue;
      }
    }
    // A small product runs on the calling thread: a team's fork and barrier would cost more than
    // it saves, and beside a busy process each barrier may wait for a descheduled thread.
#pragma omp parallel for schedule(static) if ((t1 - t0) * in * n_out >= kParallelMacs)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t n0 = tile * 4;
      const int64_t rows = std::min<int64_t>(4, n_out - n0);
      const W* wr[4];
      for (int i = 0; i < 4; ++i) wr[i] = w + (n0 + std::min<int64_t>(i, rows - 1)) * in;
      if (widen_tile) {
        static thread_local std::vector<float> wide;  // grows to 4 * the widest in, once
        if (wide.size() < static_cast<size_t>(4 * in)) wide.resize(4 * in);
        if constexpr (kPacked) {
          unpack_tile(w + n0 * in, in, wide.data());  // padding rows repeat the last one
        } else {
          for (int i = 0; i < rows; ++i) widen_row(wr[i], wide.data() + i * in, in);
        }
        const float* wf[4];
        for (int i = 0; i < 4; ++i) wf[i] = wide.data() + std::min<int64_t>(i, rows - 1) * in;
        tile_rows<kAccumulate>(out, x, wf, rows, n0, t0, t1, in, n_out);
      } else if constexpr (!kPacked) {  // packed tiles of one token went to decode_packed
        tile_rows<kAccumulate>(out, x, wr, rows, n0, t0, t1, in, n_out);
      }
    }
  }
}

// Prefill-sized products (at least this many tokens, and a weight matrix at least this large) go
// to the GEMM (kernels/cpu/gemm.h), or to OpenBLAS's sgemm where KVSHARD_GEMM=openblas asks for it
// and the library is there.
constexpr int64_t kGemmMinTokens = 16;
constexpr int64_t kGemmMinWeights = int64_t{1} << 16;
// Rows of a 16-bit matrix widened to f32 at once for sgemm (kBlasPanel * in floats per panel).
constexpr int64_t kBlasPanel = 256;
static_assert(kBlasPanel % 4 == 0, "a panel holds whole tiles of a packed matrix");

bool openblas_asked() {
  static const bool asked = [] {
    const char* e = std::getenv("KVSHARD_GEMM");
    if (e == nullptr || std::strcmp(e, "kvshard") == 0) return false;
    if (std::strcmp(e, "openblas") != 0) {
      std::fprintf(stderr, "KVSHARD_GEMM=%s: unknown (kvshard or openblas); using kvshard\n", e);
      return false;
    }
    if (blas() == nullptr) {
      std::fprintf(stderr,
                   "KVSHARD_GEMM=openblas: this build or host has no OpenBLAS; using "
                   "kvshard\n");
      return false;
    }
    return true;
  }();
  return asked;
}

bool use_gemm(int64_t tokens, int64_t in, int64_t n_out) {
  return tokens >= kGemmMinTokens && in * n_out >= kGemmMinWeights;
}

void sgemm(float* out, const float* x, const float* w, int64_t tokens, int64_t in, int64_t n_out,
           int64_t ldo, float beta) {
  constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS's enum values
  const BlasFns* b = blas();
  b->set_num_threads(omp_get_max_threads());
  b->sgemm(kRowMajor, kNoTrans, kTrans, static_cast<int>(tokens), static_cast<int>(n_out),
           static_cast<int>(in), 1.0f, x, static_cast<int>(in), w, static_cast<int>(in), beta, out,
           static_cast<int>(ldo));
}

// A 16-bit matrix (row-major, or packed in tiles of 4 rows) through sgemm, widened to f32 a panel
// of kBlasPanel rows at a time.
template <typename W>
void sgemm_16bit(float* out, const float* x, const W* w, bool packed, int64_t tokens, int64_t in,
                 int64_t n_out) {
  static thread_local std::vector<float> panel;
  if (panel.size() < static_cast<size_t>(kBlasPanel * in)) panel.resize(kBlasPanel * in);
  for (int64_t n0 = 0; n0 < n_out; n0 += kBlasPanel) {
    const int64_t rows = std::min(kBlasPanel, n_out - n0);
    float* p = panel.data();
    if (packed) {  // whole tiles (n0 is a multiple of 4); the panel has room for the padding
#pragma omp parallel for schedule(static)
      for (int64_t t = 0; t < (rows + 3) / 4; ++t) {
        unpack_tile(w + (n0 + 4 * t) * in, in, p + 4 * t * in);
      }
    } else {
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < rows; ++r) widen_row(w + (n0 + r) * in, p + r * in, in);
    }
    sgemm(out + n0, x, p, tokens, in, rows, n_out, 0.0f);
  }
}

}  // namespace

int64_t packed_weights_size(int64_t rows, int64_t cols) { return (rows + 3) / 4 * 4 * cols; }

void pack_weights(const uint16_t* w, uint16_t* packed, int64_t rows, int64_t cols) {
  const int64_t main = cols / kPackedChunk * kPackedChunk, rem = cols - main;
  for (int64_t tile = 0; tile < (rows + 3) / 4; ++tile) {
    uint16_t* p = packed + tile * 4 * cols;
    const uint16_t* src[4];
    for (int i = 0; i < 4; ++i) src[i] = w + std::min<int64_t>(tile * 4 + i, rows - 1) * cols;
    for (int64_t c = 0; c < main; c += kPackedChunk) {
      for (int i = 0; i < 4; ++i, p += kPackedChunk) {
        std::copy(src[i] + c, src[i] + c + kPackedChunk, p);
      }
    }
    for (int i = 0; i < 4; ++i, p += rem) std::copy(src[i] + main, src[i] + cols, p);
  }
}

namespace {

template <typename W>
void matmul_any(float* out, const float* x, const W* w, bool packed, int64_t tokens, int64_t in,
                int64_t n_out) {
  if (use_gemm(tokens, in, n_out)) {
    if constexpr (std::is_same_v<W, float>) {
      if (openblas_asked()) {
        sgemm(out, x, w, tokens, in, n_out, n_out, 0.0f);
      } else {
        gemm(out, x, w, tokens, in, n_out, /*accumulate=*/false);
      }
    } else if (openblas_asked()) {
      sgemm_16bit(out, x, w, packed, tokens, in, n_out);
    } else {
      gemm(out, x, w, packed, tokens, in, n_out);
    }
    return;
  }
  if constexpr (std::is_same_v<W, float>) {
    matmul_impl<false, false>(out, x, w, tokens, in, n_out);
  } else if (packed) {
    matmul_impl<false, true>(out, x, w, tokens, in, n_out);
  } else {
    matmul_impl<false, false>(out, x, w, tokens, in, n_out);
  }
}

}  // namespace

bool matmul_uses_gemm(int64_t tokens, int64_t in_features, int64_t out_features) {
  return use_gemm(tokens, in_features, out_features);
}

bool gemm_is_openblas() { return openblas_asked(); }

std::string matmul_gemm_description() {
  return openblas_asked() ? blas_description() : gemm_description();
}

void matmul_packed(float* out, const float* x, const f16_t* packed, int64_t tokens,
                   int64_t in_features, int64_t out_features) {
  matmul_any(out, x, packed, true, tokens, in_features, out_features);
}

void matmul_packed(float* out, const float* x, const bf16_t* packed, int64_t tokens,
                   int64_t in_features, int64_t out_features) {
  matmul_any(out, x, packed, true, tokens, in_features, out_features);
}

void matmul(float* out, const float* x, const float* w, int64_t tokens, int64_t in_features,
            int64_t out_features) {
  matmul_any(out, x, w, false, tokens, in_features, out_features);
}

void matmul(float* out, const float* x, const f16_t* w, int64_t tokens, int64_t in_features,
            int64_t out_features) {
  matmul_any(out, x, w, false, tokens, in_features, out_features);
}

void matmul(float* out, const float* x, const bf16_t* w, int64_t tokens, int64_t in_features,
            int64_t out_features) {
  matmul_any(out, x, w, false, tokens, in_features, out_features);
}

void matmul_accumulate(float* out, const float* x, const float* w, int64_t tokens,
                       int64_t in_features, int64_t out_features) {
  if (use_gemm(tokens, in_features, out_features)) {
    if (openblas_asked()) {
      sgemm(out, x, w, tokens, in_features, out_features, out_features, 1.0f);
    } else {
      gemm(out, x, w, tokens, in_features, out_features, /*accumulate=*/true);
    }
    return;
  }
  matmul_impl<true, false>(out, x, w, tokens, in_features, out_features);
}

float dot_f32(const float* a, const float* b, int64_t n) {
  using namespace simd;
  constexpr int W = kWidth;
  vec acc0 = zero(), acc1 = zero();
  int64_t k = 0;
  for (; k + 2 * W <= n; k += 2 * W) {
    acc0 = fma(load(a + k), load(b + k), acc0);
    acc1 = fma(load(a + k + W), load(b + k + W), acc1);
  }
  float s = sum(add(acc0, acc1));
  for (; k < n; ++k) s += a[k] * b[k];
  return s;
}

}  // namespace kvshard
