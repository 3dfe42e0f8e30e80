#include "kernels/cpu/activation.h"

#include <omp.h>

#include <algorithm>

#include "kernels/cpu/simd.h"

namespace kvshard {
namespace {

// Elements below which silu_mul runs on the calling thread.
constexpr int64_t kParallelElements = int64_t{1} << 15;

// silu(g) * u = g * sigmoid(g) * u, sigmoid(g) = 1 / (1 + e) for g >= 0 and e / (1 + e) below,
// e = exp(-|g|) <= 1 (so exp_nonpositive serves both signs and never overflows).
inline simd::vec silu_mul_vec(simd::vec g, simd::vec u) {
  using namespace simd;
  const vec e = exp_nonpositive(sub(zero(), max(g, sub(zero(), g))));
  const vec one = set1(1.0f);
  return mul(mul(g, div(select_ge(g, 0.0f, one, e), add(one, e))), u);
}

}  // namespace

void silu_mul(float* out, const float* gate, const float* up, int64_t n) {
  using simd::kWidth;
  const int64_t whole = n / kWidth * kWidth;
#pragma omp parallel for schedule(static) if (n >= kParallelElements)
  for (int64_t i = 0; i < whole; i += kWidth) {
    simd::store(out + i, silu_mul_vec(simd::load(gate + i), simd::load(up + i)));
  }
  if (whole == n) return;
  // The last elements through the same vector formula, so that every element's value is the
  // same wherever it falls (a tensor-parallel slice moves an element's index).
  float g[kWidth] = {}, u[kWidth] = {}, o[kWidth];
  std::copy(gate + whole, gate + n, g);
  std::copy(up + whole, up + n, u);
  simd::store(o, silu_mul_vec(simd::load(g), simd::load(u)));
  std::copy(o, o + (n - whole), out + whole);
}

}  // namespace kvshard
