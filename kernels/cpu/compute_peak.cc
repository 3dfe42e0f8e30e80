#include "kernels/cpu/compute_peak.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>

#include "kernels/cpu/amx.h"
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

#if defined(__x86_64__)
// Four independent accumulators, each TDPBF16PS 16 x 16 x 32 multiply-adds, from two A and two B
// tiles loaded once (from L1) so that only the tile unit is timed.
__attribute__((target("amx-tile,amx-bf16"))) float amx_bf16_chains(int64_t iters, float seed) {
  alignas(64) uint16_t src[16 * 32];
  const uint16_t one = 0x3f80;  // bf16 1.0
  for (uint16_t& x : src) x = one;
  alignas(64) float out[16 * 16];
  amx_configure();
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, src, 64);
  _tile_loadd(5, src, 64);
  _tile_loadd(6, src, 64);
  _tile_loadd(7, src, 64);
  for (int64_t i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  amx_release();
  return out[0] + seed;
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

std::optional<double> measure_amx_bf16_peak_gflops(int threads, int repeats) {
#if defined(__x86_64__)
  if (!amx_bf16_usable()) return std::nullopt;
  // 4 tiles x 16 x 16 x 32 multiply-adds x 2 FLOP per iteration.
  return best_gflops(threads, repeats, 4.0 * 16 * 16 * 32 * 2, amx_bf16_chains);
#else
  (void)threads;
  (void)repeats;
  return std::nullopt;
#endif
}

}  // namespace kvshard
