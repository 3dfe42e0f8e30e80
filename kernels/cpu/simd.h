// The widest f32 vector this build targets (AVX-512, else AVX2 + FMA, else scalar), behind four
// operations, so kernels are written once. `kSimdWidth` floats per vector.
#pragma once

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace kvshard::simd {

#if defined(__AVX512F__)
using vec = __m512;
inline constexpr int kWidth = 16;
inline vec zero() { return _mm512_setzero_ps(); }
inline vec load(const float* p) { return _mm512_loadu_ps(p); }
inline vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
inline float sum(vec a) { return _mm512_reduce_add_ps(a); }
#elif defined(__AVX2__) && defined(__FMA__)
using vec = __m256;
inline constexpr int kWidth = 8;
inline vec zero() { return _mm256_setzero_ps(); }
inline vec load(const float* p) { return _mm256_loadu_ps(p); }
inline vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
inline float sum(vec a) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}
#else
using vec = float;
inline constexpr int kWidth = 1;
inline vec zero() { return 0.0f; }
inline vec load(const float* p) { return *p; }
inline vec fma(vec a, vec b, vec c) { return a * b + c; }
inline vec add(vec a, vec b) { return a + b; }
inline float sum(vec a) { return a; }
#endif

// Which of the above this build uses, for benchmark reports.
inline const char* Isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#else
  return "scalar";
#endif
}

}  // namespace kvshard::simd
