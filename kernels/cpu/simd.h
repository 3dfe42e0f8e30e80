// The widest f32 vector this build targets (AVX-512, else AVX2 + FMA, else scalar), behind a
// few operations, so kernels are written once. `kWidth` floats per vector.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/half.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
// GCC 12's headers self-initialise their "undefined" vectors (__Y = __Y) and then report them
// as uninitialised where they are inlined (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
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
inline vec set1(float x) { return _mm512_set1_ps(x); }
inline vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
inline vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
inline vec div(vec a, vec b) { return _mm512_div_ps(a, b); }
inline vec select_ge(vec x, float limit, vec a, vec b) {  // a where x >= limit, else b
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(limit), _CMP_GE_OQ), b, a);
}
inline vec max(vec a, vec b) { return _mm512_max_ps(a, b); }
inline float max_lane(vec a) { return _mm512_reduce_max_ps(a); }
inline void store(float* p, vec a) { _mm512_storeu_ps(p, a); }
inline vec load_f16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline vec load_bf16(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
// int8 KV codes, widened.
inline vec load_i8(const int8_t* p) {
  return _mm512_cvtepi32_ps(
      _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
// E4M3 KV codes, decoded to value / 256 (kernels/cpu/half.h: the bits moved into a binary16's
// place, converted by the F16C unit; the caller's scale carries the 2^8).
// Sign-extended to 16 bits and shifted by 7, a code's sign lands in bit 15 (and a copy in bit 14,
// cleared) and its exponent and mantissa in bits 13..7: the binary16 of its value / 256.
inline vec load_fp8_div256(const uint8_t* p) {
  const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm512_cvtph_ps(
      _mm256_and_si256(_mm256_slli_epi16(w, 7), _mm256_set1_epi16(static_cast<int16_t>(0xbf80))));
}
// 2^n * p for integral n (as floats).
inline vec scale_by_pow2(vec p, vec n) { return _mm512_scalef_ps(p, n); }
inline vec round_nearest(vec a) {
  return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline vec zero_below(vec x, float limit, vec r) {  // r where x >= limit, else 0
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, set1(limit), _CMP_GE_OQ), r);
}
// out[j] = sum(a[j]) for the kWidth vectors a[0..kWidth): a halving network of shuffles and adds
// (three operations per sum instead of a full reduction each), then one permutation.
inline void sum_each(const vec* a, float* out) {
  vec b[8], c[4], d[2];
  for (int i = 0; i < 8; ++i) {
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
  }
  for (int i = 0; i < 4; ++i) {
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
  }
  for (int i = 0; i < 2; ++i) {
    d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0xEE));
  }
  const vec e =
      _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
  // The network leaves a[j]'s sum in lane where[j].
  const __m512i where = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  _mm512_storeu_ps(out, _mm512_permutexvar_ps(where, e));
}
// Transposes the kWidth x kWidth block r[0..kWidth) (row i = r[i]) in place: 32-bit then 64-bit
// interleaves within 128-bit lanes, then a 4 x 4 transpose of the lanes.
inline void transpose(vec* r) {
  vec a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // b[4i + c], lane L: rows 4i..4i+3 at column 4L + c
    const __m512d a0 = _mm512_castps_pd(a[4 * i]), a1 = _mm512_castps_pd(a[4 * i + 1]);
    const __m512d a2 = _mm512_castps_pd(a[4 * i + 2]), a3 = _mm512_castps_pd(a[4 * i + 3]);
    b[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
    b[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
    b[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
    b[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
  }
  for (int c = 0; c < 4; ++c) {
    const vec d0 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0x44);
    const vec d1 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0xEE);
    const vec d2 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0x44);
    const vec d3 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0xEE);
    r[c] = _mm512_shuffle_f32x4(d0, d2, 0x88);
    r[4 + c] = _mm512_shuffle_f32x4(d0, d2, 0xDD);
    r[8 + c] = _mm512_shuffle_f32x4(d1, d3, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(d1, d3, 0xDD);
  }
}
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
inline vec set1(float x) { return _mm256_set1_ps(x); }
inline vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
inline vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
inline vec div(vec a, vec b) { return _mm256_div_ps(a, b); }
inline vec select_ge(vec x, float limit, vec a, vec b) {
  return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, _mm256_set1_ps(limit), _CMP_GE_OQ));
}
inline vec max(vec a, vec b) { return _mm256_max_ps(a, b); }
inline float max_lane(vec a) {
  const __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 t = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(t, _mm_shuffle_ps(t, t, 1)));
}
inline void store(float* p, vec a) { _mm256_storeu_ps(p, a); }
inline vec load_f16(const uint16_t* p) {
#if defined(__F16C__)
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  alignas(32) float f[8];
  for (int i = 0; i < 8; ++i) f[i] = f16_bits_to_f32(p[i]);
  return _mm256_load_ps(f);
#endif
}
inline vec load_bf16(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline vec load_i8(const int8_t* p) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline vec load_fp8_div256(const uint8_t* p) {
#if defined(__F16C__)
  const __m128i w = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm256_cvtph_ps(
      _mm_and_si128(_mm_slli_epi16(w, 7), _mm_set1_epi16(static_cast<int16_t>(0xbf80))));
#else
  alignas(32) float f[8];
  for (int i = 0; i < 8; ++i) f[i] = fp8_e4m3_bits_to_f32(p[i]) * (1.0f / 256.0f);
  return _mm256_load_ps(f);
#endif
}
inline vec scale_by_pow2(vec p, vec n) {  // n in [-126, 127]
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
inline vec round_nearest(vec a) {
  return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline vec zero_below(vec x, float limit, vec r) {
  return _mm256_and_ps(_mm256_cmp_ps(x, set1(limit), _CMP_GE_OQ), r);
}
inline void sum_each(const vec* a, float* out) {
  vec b[4], c[2];
  for (int i = 0; i < 4; ++i) {
    b[i] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x20),
                         _mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x31));
  }
  for (int i = 0; i < 2; ++i) {
    c[i] = _mm256_add_ps(_mm256_shuffle_ps(b[2 * i], b[2 * i + 1], 0x44),
                         _mm256_shuffle_ps(b[2 * i], b[2 * i + 1], 0xEE));
  }
  const vec e =
      _mm256_add_ps(_mm256_shuffle_ps(c[0], c[1], 0x88), _mm256_shuffle_ps(c[0], c[1], 0xDD));
  const __m256i where =
      _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // a[j]'s sum is in lane where[j]
  _mm256_storeu_ps(out, _mm256_permutevar8x32_ps(e, where));
}
inline void transpose(vec* r) {
  vec a[8], b[8];
  for (int i = 0; i < 4; ++i) {
    a[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    const __m256d a0 = _mm256_castps_pd(a[4 * i]), a1 = _mm256_castps_pd(a[4 * i + 1]);
    const __m256d a2 = _mm256_castps_pd(a[4 * i + 2]), a3 = _mm256_castps_pd(a[4 * i + 3]);
    b[4 * i] = _mm256_castpd_ps(_mm256_unpacklo_pd(a0, a2));
    b[4 * i + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a0, a2));
    b[4 * i + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(a1, a3));
    b[4 * i + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(a1, a3));
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(b[c], b[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(b[c], b[4 + c], 0x31);
  }
}
#else
using vec = float;
inline constexpr int kWidth = 1;
inline vec zero() { return 0.0f; }
inline vec load(const float* p) { return *p; }
inline vec fma(vec a, vec b, vec c) { return a * b + c; }
inline vec add(vec a, vec b) { return a + b; }
inline float sum(vec a) { return a; }
inline vec set1(float x) { return x; }
inline vec mul(vec a, vec b) { return a * b; }
inline vec sub(vec a, vec b) { return a - b; }
inline vec div(vec a, vec b) { return a / b; }
inline vec select_ge(vec x, float limit, vec a, vec b) { return x >= limit ? a : b; }
inline vec max(vec a, vec b) { return a > b ? a : b; }
inline float max_lane(vec a) { return a; }
inline void store(float* p, vec a) { *p = a; }
inline vec load_f16(const uint16_t* p) { return f16_bits_to_f32(*p); }
inline vec load_bf16(const uint16_t* p) {
  const uint32_t bits = static_cast<uint32_t>(*p) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline vec load_i8(const int8_t* p) { return static_cast<float>(*p); }
inline vec load_fp8_div256(const uint8_t* p) { return fp8_e4m3_bits_to_f32(*p) * (1.0f / 256.0f); }
inline vec scale_by_pow2(vec p, vec n) { return std::ldexp(p, static_cast<int>(n)); }
inline vec round_nearest(vec a) { return std::nearbyint(a); }
inline vec zero_below(vec x, float limit, vec r) { return x >= limit ? r : 0.0f; }
inline void sum_each(const vec* a, float* out) { *out = *a; }
inline void transpose(vec*) {}
#endif

// exp(x) for x <= 0, to about 2 ulp; 0 below -87 (and for -inf). A Cephes-style reduction,
// x = n ln2 + r with |r| <= ln2 / 2, and a degree-6 polynomial for exp(r).
inline vec exp_nonpositive(vec x) {
  const vec xc = max(x, set1(-87.0f));
  const vec n = round_nearest(mul(xc, set1(1.44269504088896341f)));
  vec r = fma(n, set1(-0.693145751953125f), xc);
  r = fma(n, set1(-1.428606765330187045e-06f), r);
  vec p = set1(1.98756912e-4f);
  p = fma(p, r, set1(1.39819994e-3f));
  p = fma(p, r, set1(8.33345205e-3f));
  p = fma(p, r, set1(4.16657962e-2f));
  p = fma(p, r, set1(1.66666657e-1f));
  p = fma(p, r, set1(5.0e-1f));
  p = fma(p, mul(r, r), add(r, set1(1.0f)));
  return zero_below(x, -87.0f, scale_by_pow2(p, n));
}

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
