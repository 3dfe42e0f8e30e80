#include "kernels/cpu/compute_peak.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>

#include "kernels/cpu/simd.h"

namespace kvshard {
namespace {

// Chains: an FMA's latency (4 cycles) times the FMA units (2) needs 8 independent accumulators;
// 12 leave room for the loop's own instructions.
constexpr int kChains = 12;

// FLOP of one f32 probe iteration across kChains vectors.
constexpr double kF32FlopPerIter = 2.0 * kChains * simd::kWidth;

float fma_chains(int64_t iters, float seed) {
  using namespace simd;
  vec a[kChains];
  for (int j = 0; j < kChains; ++j) a[j] = set1(seed + static_cast<float>(j));
  const vec m = set1(0.999999f), c = set1(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
    for (int j = 0; j < kChains; ++j) a[j] = fma(a[j], m, c);
  }
  vec s = a[0];
  for (int j = 1; j < kChains; ++j) s = add(s, a[j]);
  return sum(s);
}

// Seconds for `threads` threads to each run `iters` iterations of `probe`.
template <typename Probe>
double time_threads(int threads, int64_t iters, Probe probe) {
  volatile float sink = 0;
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
  {
    const float r = probe(iters, static_cast<float>(omp_get_thread_num()));
#pragma omp critical
    sink = sink + r;
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <typename Probe>
double best_gflops(int threads, int repeats, double flop_per_iter, Probe probe) {
  // Calibrate to about 20 ms a run, then keep the best of the timed runs.
  int64_t iters = 1 << 12;
  while (time_threads(threads, iters, probe) < 0.005 && iters < (int64_t{1} << 34)) iters *= 2;
  iters *= 4;
  double best = 0;
  for (int r = 0; r < std::max(1, repeats); ++r) {
    const double s = time_threads(threads, iters, probe);
    best = std::max(best, flop_per_iter * static_cast<double>(iters) * threads / s / 1e9);
  }
  return best;
}

#if defined(__AVX512BF16__)
float bf16_dot_chains(int64_t iters, float seed) {
  __m512 a[kChains];
  for (int j = 0; j < kChains; ++j) a[j] = _mm512_set1_ps(seed + static_cast<float>(j));
  const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
  const __m512bh y = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-4f), _mm512_set1_ps(1e-4f));
  for (int64_t i = 0; i < iters; ++i) {
    for (int j = 0; j < kChains; ++j) a[j] = _mm512_dpbf16_ps(a[j], x, y);
  }
  __m512 s = a[0];
  for (int j = 1; j < kChains; ++j) s = _mm512_add_ps(s, a[j]);
  return _mm512_reduce_add_ps(s);
}
#endif

}  // namespace

double measure_fma_peak_gflops(int threads, int repeats) {
  return best_gflops(threads, repeats, kF32FlopPerIter, fma_chains);
}

std::optional<double> measure_bf16_dot_peak_gflops(int threads, int repeats) {
#if defined(__AVX512BF16__)
  // 16 lanes x 2 multiply-adds x 2 FLOP per instruction.
  return best_gflops(threads, repeats, 64.0 * kChains, bf16_dot_chains);
#else
  (void)threads;
  (void)repeats;
  return std::nullopt;
#endif
}

}  // namespace kvshard
