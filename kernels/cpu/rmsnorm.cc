#include "kernels/cpu/rmsnorm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

namespace kvshard {
namespace {

// Tokens whose sums of squares run side by side: each token's sum is still one chain of double
// additions over its features in order (so its scale is the same bit for bit however many tokens
// a call has), and kInterleave independent chains hide the addition's latency.
constexpr int64_t kInterleave = 8;
// Tokens x features below which a call runs on the calling thread.
constexpr int64_t kParallelElements = int64_t{1} << 15;

template <int64_t N>
void norm_rows(float* out, float* x, const float* partial, const float* weight, int64_t dim,
               float eps) {
  if (partial != nullptr) {
    for (int64_t i = 0; i < N * dim; ++i) x[i] += partial[i];
  }
  double ss[N] = {};
  for (int64_t i = 0; i < dim; ++i) {
#pragma GCC unroll 8
    for (int64_t r = 0; r < N; ++r) {
      const double v = x[r * dim + i];
      ss[r] += v * v;  // exact product of two floats; the sum rounds as a serial chain would
    }
  }
  for (int64_t r = 0; r < N; ++r) {
    const float scale = 1.0f / std::sqrt(static_cast<float>(ss[r] / dim) + eps);
    const float* xr = x + r * dim;
    float* o = out + r * dim;
    for (int64_t i = 0; i < dim; ++i) o[i] = xr[i] * scale * weight[i];
  }
}

const float* At(const float* p, int64_t offset) { return p == nullptr ? nullptr : p + offset; }

void norm_all(float* out, float* x, const float* partial, const float* weight, int64_t tokens,
              int64_t dim, float eps) {
  const int64_t groups = (tokens + kInterleave - 1) / kInterleave;
#pragma omp parallel for schedule(static) if (tokens * dim >= kParallelElements && groups > 1)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t t0 = g * kInterleave;
    if (t0 + kInterleave <= tokens) {
      norm_rows<kInterleave>(out + t0 * dim, x + t0 * dim, At(partial, t0 * dim), weight, dim, eps);
    } else {
      for (int64_t t = t0; t < tokens; ++t) {
        norm_rows<1>(out + t * dim, x + t * dim, At(partial, t * dim), weight, dim, eps);
      }
    }
  }
}

}  // namespace

void rmsnorm(float* out, const float* x, const float* weight, int64_t tokens, int64_t dim,
             float eps) {
  // x is only read without a residual (out may alias it).
  norm_all(out, const_cast<float*>(x), nullptr, weight, tokens, dim, eps);
}

void add_rmsnorm(float* out, float* x, const float* residual, const float* weight, int64_t tokens,
                 int64_t dim, float eps) {
  norm_all(out, x, residual, weight, tokens, dim, eps);
}

}  // namespace kvshard
