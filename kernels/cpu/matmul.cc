#include "kernels/cpu/matmul.h"

#include <algorithm>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace kvshard {
namespace {

// Four rows of w against one x row at once: x is loaded once per four weight rows.
inline void dot4(const float* x, const float* w0, const float* w1, const float* w2, const float* w3,
                 int64_t n, float* r) {
  int64_t k = 0;
#if defined(__AVX512F__)
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  for (; k + 16 <= n; k += 16) {
    const __m512 xv = _mm512_loadu_ps(x + k);
    a0 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w0 + k), a0);
    a1 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w1 + k), a1);
    a2 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w2 + k), a2);
    a3 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w3 + k), a3);
  }
  float s0 = _mm512_reduce_add_ps(a0), s1 = _mm512_reduce_add_ps(a1);
  float s2 = _mm512_reduce_add_ps(a2), s3 = _mm512_reduce_add_ps(a3);
#else
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#endif
  for (; k < n; ++k) {
    s0 += x[k] * w0[k];
    s1 += x[k] * w1[k];
    s2 += x[k] * w2[k];
    s3 += x[k] * w3[k];
  }
  r[0] = s0;
  r[1] = s1;
  r[2] = s2;
  r[3] = s3;
}

template <bool kAccumulate>
void matmul_impl(float* out, const float* x, const float* w, int64_t tokens, int64_t in,
                 int64_t n_out) {
  // Tiles of 4 output rows × blocks of tokens: a block of x rows stays in L2 while the tiles of w
  // stream past it, so w is read once per token block rather than once per token.
  constexpr int64_t kTokenBlock = 64;
  const int64_t tiles = (n_out + 3) / 4;
  for (int64_t t0 = 0; t0 < tokens; t0 += kTokenBlock) {
    const int64_t t1 = std::min(tokens, t0 + kTokenBlock);
#pragma omp parallel for schedule(static)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t n0 = tile * 4;
      const int64_t rows = std::min<int64_t>(4, n_out - n0);
      const float* wr[4];
      for (int i = 0; i < 4; ++i) wr[i] = w + (n0 + std::min<int64_t>(i, rows - 1)) * in;
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
  }
}

}  // namespace

void matmul(float* out, const float* x, const float* w, int64_t tokens, int64_t in_features,
            int64_t out_features) {
  matmul_impl<false>(out, x, w, tokens, in_features, out_features);
}

void matmul_accumulate(float* out, const float* x, const float* w, int64_t tokens,
                       int64_t in_features, int64_t out_features) {
  matmul_impl<true>(out, x, w, tokens, in_features, out_features);
}

float dot_f32(const float* a, const float* b, int64_t n) {
  int64_t k = 0;
#if defined(__AVX512F__)
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  for (; k + 32 <= n; k += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 16), _mm512_loadu_ps(b + k + 16), acc1);
  }
  float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#else
  float s = 0;
#endif
  for (; k < n; ++k) s += a[k] * b[k];
  return s;
}

}  // namespace kvshard
