#include "kernels/cpu/stream_read.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <memory>

#include "kernels/cpu/simd.h"

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
    // Eight independent accumulators keep enough loads in flight to saturate memory.
    using namespace simd;
    constexpr int W = kWidth;
    vec a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
    vec a4 = zero(), a5 = zero(), a6 = zero(), a7 = zero();
    int64_t i = begin;
    for (; i + 8 * W <= end; i += 8 * W) {
      a0 = add(a0, load(buf + i));
      a1 = add(a1, load(buf + i + W));
      a2 = add(a2, load(buf + i + 2 * W));
      a3 = add(a3, load(buf + i + 3 * W));
      a4 = add(a4, load(buf + i + 4 * W));
      a5 = add(a5, load(buf + i + 5 * W));
      a6 = add(a6, load(buf + i + 6 * W));
      a7 = add(a7, load(buf + i + 7 * W));
    }
    double part = sum(add(add(add(a0, a1), add(a2, a3)), add(add(a4, a5), add(a6, a7))));
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
