#include "kernels/cpu/matmul.h"

#include <algorithm>

#include "kernels/cpu/simd.h"

namespace kvshard {
namespace {

// Four rows of w against one x row at once: x is loaded once per four weight rows.
inline void dot4(const float* x, const float* w0, const float* w1, const float* w2, const float* w3,
                 int64_t n, float* r) {
  using namespace simd;
  constexpr int W = kWidth;
  vec a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
  int64_t k = 0;
  for (; k + W <= n; k += W) {
    const vec xv = load(x + k);
    a0 = fma(xv, load(w0 + k), a0);
    a1 = fma(xv, load(w1 + k), a1);
    a2 = fma(xv, load(w2 + k), a2);
    a3 = fma(xv, load(w3 + k), a3);
  }
  float s0 = sum(a0), s1 = sum(a1), s2 = sum(a2), s3 = sum(a3);
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
    // A small product runs on the calling thread: a team's fork and barrier would cost more than
    // it saves, and beside a busy process each barrier may wait for a descheduled thread.
#pragma omp parallel for schedule(static) if ((t1 - t0) * in * n_out >= kParallelMacs)
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
