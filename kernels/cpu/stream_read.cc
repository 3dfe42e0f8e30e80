#include "kernels/cpu/stream_read.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <memory>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace kvshard {

double stream_read_sum(const float* buf, int64_t n, int threads) {
  double total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    const int64_t nt = omp_get_num_threads();
    const int64_t id = omp_get_thread_num();
    const int64_t chunk = (n / nt) & ~int64_t{63};
    const int64_t begin = id * chunk;
    const int64_t end = id == nt - 1 ? n : begin + chunk;
    int64_t i = begin;
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (; i + 64 <= end; i += 64) {
      a0 = _mm512_add_ps(a0, _mm512_load_ps(buf + i));
      a1 = _mm512_add_ps(a1, _mm512_load_ps(buf + i + 16));
      a2 = _mm512_add_ps(a2, _mm512_load_ps(buf + i + 32));
      a3 = _mm512_add_ps(a3, _mm512_load_ps(buf + i + 48));
    }
    double part = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#else
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (; i + 4 <= end; i += 4) {
      s0 += buf[i];
      s1 += buf[i + 1];
      s2 += buf[i + 2];
      s3 += buf[i + 3];
    }
    double part = s0 + s1 + s2 + s3;
#endif
    for (; i < end; ++i) part += buf[i];
    total += part;
  }
  return total;
}

double measure_read_bandwidth_gbs(int64_t bytes, int threads, int repeats) {
  const int64_t n = bytes / sizeof(float) / 64 * 64;
  std::unique_ptr<float[], decltype(&std::free)> buf(
      static_cast<float*>(std::aligned_alloc(64, n * sizeof(float))), &std::free);
  // First touch from the same threads that will read, so pages land where they are read.
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) buf[i] = 1.0f;
  double best = 0;
  volatile double sink = 0;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    sink = sink + stream_read_sum(buf.get(), n, threads);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, n * sizeof(float) / s / 1e9);
  }
  return best;
}

}  // namespace kvshard
