#include "kernels/cpu/dequant.h"

#include <cstring>

#include "kernels/cpu/half.h"

namespace kvshard {
namespace {

float F16At(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_bits_to_f32(h);
}

void Q8_0(const uint8_t* src, float* dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 34, dst += 32) {
    const float d = F16At(src);
    for (int j = 0; j < 32; ++j) dst[j] = d * static_cast<float>(static_cast<int8_t>(src[2 + j]));
  }
}

void Q4_0(const uint8_t* src, float* dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 18, dst += 32) {
    const float d = F16At(src);
    const uint8_t* q = src + 2;
    for (int j = 0; j < 16; ++j) {
      dst[j] = d * static_cast<float>((q[j] & 0x0F) - 8);
      dst[j + 16] = d * static_cast<float>((q[j] >> 4) - 8);
    }
  }
}

void Q4_1(const uint8_t* src, float* dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 20, dst += 32) {
    const float d = F16At(src), m = F16At(src + 2);
    const uint8_t* q = src + 4;
    for (int j = 0; j < 16; ++j) {
      dst[j] = d * static_cast<float>(q[j] & 0x0F) + m;
      dst[j + 16] = d * static_cast<float>(q[j] >> 4) + m;
    }
  }
}

// Sub-block j's 6-bit scale and min from the 12 packed bytes of a Q4_K block.
void ScaleMinK4(int j, const uint8_t* q, uint8_t* scale, uint8_t* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

void Q4_K(const uint8_t* src, float* dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 144) {
    const float d = F16At(src), dmin = F16At(src + 2);
    const uint8_t* scales = src + 4;
    const uint8_t* q = src + 16;
    for (int j = 0; j < 8; j += 2, q += 32) {
      uint8_t s0, m0, s1, m1;
      ScaleMinK4(j, scales, &s0, &m0);
      ScaleMinK4(j + 1, scales, &s1, &m1);
      const float d0 = d * s0, o0 = dmin * m0, d1 = d * s1, o1 = dmin * m1;
      for (int l = 0; l < 32; ++l) *dst++ = d0 * static_cast<float>(q[l] & 0x0F) - o0;
      for (int l = 0; l < 32; ++l) *dst++ = d1 * static_cast<float>(q[l] >> 4) - o1;
    }
  }
}

void Q6_K(const uint8_t* src, float* dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 210) {
    const uint8_t* ql = src;
    const uint8_t* qh = src + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(src + 192);
    const float d = F16At(src + 208);
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, dst += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        dst[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
        dst[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        dst[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        dst[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

}  // namespace

bool dequantize_row(uint32_t type, const uint8_t* src, float* dst, int64_t n) {
  switch (type) {
    case 0: std::memcpy(dst, src, n * sizeof(float)); return true;  // F32
    case 1:                                                         // F16
      for (int64_t i = 0; i < n; ++i) dst[i] = F16At(src + 2 * i);
      return true;
    case 30:  // BF16
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(dst + i, &bits, 4);
      }
      return true;
    case 2: Q4_0(src, dst, n / 32); return true;
    case 3: Q4_1(src, dst, n / 32); return true;
    case 8: Q8_0(src, dst, n / 32); return true;
    case 12: Q4_K(src, dst, n / 256); return true;
    case 14: Q6_K(src, dst, n / 256); return true;
    default: return false;
  }
}

}  // namespace kvshard
