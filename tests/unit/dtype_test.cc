#include "shard/dtype.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace kvshard {
namespace {

float Bits(uint32_t b) { return std::bit_cast<float>(b); }
uint32_t BitsOf(float f) { return std::bit_cast<uint32_t>(f); }
bool IsHalfNaN(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }
bool IsBf16NaN(uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0; }

TEST(DTypeTest, SizesAndNames) {
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_STREQ(DTypeName(DType::kF32), "F32");
  EXPECT_STREQ(DTypeName(DType::kF16), "F16");
  EXPECT_STREQ(DTypeName(DType::kBF16), "BF16");
}

TEST(DTypeTest, ParseAcceptsSafetensorsAndTorchNames) {
  for (const char* name : {"F32", "float32", "f32"})
    EXPECT_EQ(ParseDType(name).value(), DType::kF32);
  for (const char* name : {"F16", "float16", "f16"})
    EXPECT_EQ(ParseDType(name).value(), DType::kF16);
  for (const char* name : {"BF16", "bfloat16", "bf16"})
    EXPECT_EQ(ParseDType(name).value(), DType::kBF16);
  const auto bad = ParseDType("float64");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("\"float64\""), std::string::npos);
  EXPECT_FALSE(ParseDType("").ok());
}

TEST(DTypeTest, HalfKnownBitPatterns) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);  // largest finite half
  EXPECT_EQ(FloatToHalf(0.0f), 0x0000);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(0.1f), 0x2e66);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -14)), 0x0400);     // smallest normal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);     // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1023.0f, -24)), 0x03ff);  // largest subnormal
  EXPECT_EQ(FloatToHalf(-std::ldexp(3.0f, -24)), 0x8003);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(FloatToHalf(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(FloatToHalf(1e6f), 0x7c00);  // overflow
  EXPECT_EQ(FloatToHalf(-1e6f), 0xfc00);
  EXPECT_EQ(FloatToHalf(1e-9f), 0x0000);             // underflow
  EXPECT_EQ(FloatToHalf(Bits(0x00000001)), 0x0000);  // float subnormal
  EXPECT_TRUE(IsHalfNaN(FloatToHalf(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(IsHalfNaN(FloatToHalf(Bits(0x7f800001))));  // NaN payload only in low bits
  EXPECT_TRUE(IsHalfNaN(FloatToHalf(Bits(0xffc00000))));
}

TEST(DTypeTest, HalfRoundsToNearestEven) {
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie, down to even
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie, up to even
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3c01);
  EXPECT_EQ(FloatToHalf(2049.0f), 0x6800);  // 2048
  EXPECT_EQ(FloatToHalf(2051.0f), 0x6802);  // 2052
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);               // tie between 65504 and 2^16 goes to inf
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie, to even zero
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25) * 1.0000001f), 0x0001);  // just above the tie
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -25)), 0x0002);               // tie 1.5 ulp -> 2
  EXPECT_EQ(FloatToHalf(std::ldexp(5.0f, -25)), 0x0002);               // tie 2.5 ulp -> 2
  EXPECT_EQ(FloatToHalf(std::ldexp(2047.0f, -25)), 0x0400);            // rounds up into the normals
}

TEST(DTypeTest, HalfToFloatKnownValues) {
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xc000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(HalfToFloat(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(BitsOf(HalfToFloat(0x8000)), 0x80000000u);
  EXPECT_EQ(HalfToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(HalfToFloat(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7e00)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7c01)));
}

TEST(DTypeTest, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (IsHalfNaN(static_cast<uint16_t>(h))) {
      ASSERT_TRUE(std::isnan(f)) << h;
      ASSERT_TRUE(IsHalfNaN(FloatToHalf(f))) << h;
    } else {
      ASSERT_EQ(FloatToHalf(f), h) << std::hex << h;
    }
  }
}

#ifdef __FLT16_MAX__
// The compiler's own conversion (libgcc, round to nearest even) as an independent reference.
TEST(DTypeTest, HalfMatchesCompilerFloat16) {
  for (uint64_t b = 0; b <= 0xffffffffu; b += 997) {
    const float f = Bits(static_cast<uint32_t>(b));
    const _Float16 ref = static_cast<_Float16>(f);
    uint16_t ref_bits;
    std::memcpy(&ref_bits, &ref, 2);
    const uint16_t got = FloatToHalf(f);
    if (std::isnan(f)) {
      ASSERT_TRUE(IsHalfNaN(got));
    } else {
      ASSERT_EQ(got, ref_bits) << std::hex << b;
    }
  }
}
#endif

TEST(DTypeTest, Bf16KnownBitPatterns) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xc000);
  EXPECT_EQ(FloatToBf16(0.0f), 0x0000);
  EXPECT_EQ(FloatToBf16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToBf16(65504.0f), 0x4780);  // 65536: bf16 keeps 8 significant bits
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(FloatToBf16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(FloatToBf16(Bits(0x7f7fffff)), 0x7f80);  // FLT_MAX rounds up to inf
  EXPECT_EQ(FloatToBf16(Bits(0x00010000)), 0x0001);  // subnormal
  EXPECT_EQ(FloatToBf16(Bits(0x00008000)), 0x0000);  // subnormal tie to even zero
  EXPECT_TRUE(IsBf16NaN(FloatToBf16(std::numeric_limits<float>::quiet_NaN())));
  // A signalling NaN whose payload sits in the low half must not round to inf.
  EXPECT_TRUE(IsBf16NaN(FloatToBf16(Bits(0x7f800001))));
  EXPECT_TRUE(IsBf16NaN(FloatToBf16(Bits(0xffffffff))));
}

TEST(DTypeTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(Bits(0x3f808000)), 0x3f80);  // tie, down to even
  EXPECT_EQ(FloatToBf16(Bits(0x3f818000)), 0x3f82);  // tie, up to even
  EXPECT_EQ(FloatToBf16(Bits(0x3f808001)), 0x3f81);
  EXPECT_EQ(FloatToBf16(Bits(0x3f807fff)), 0x3f80);
  EXPECT_EQ(FloatToBf16(Bits(0xbf818000)), 0xbf82);
}

TEST(DTypeTest, Bf16ToFloatAndRoundTrip) {
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0xc000), -2.0f);
  EXPECT_EQ(Bf16ToFloat(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0x7fc0)));
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(b));
    if (IsBf16NaN(static_cast<uint16_t>(b))) {
      ASSERT_TRUE(IsBf16NaN(FloatToBf16(f)));
    } else {
      ASSERT_EQ(FloatToBf16(f), b) << std::hex << b;
    }
  }
}

TEST(DTypeTest, ConvertArraysThroughUnalignedBuffers) {
  const std::vector<float> values = {1.0f, -2.0f, 0.5f, 65504.0f, -0.25f, 3.0f, 0.0f};
  for (const DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    std::vector<uint8_t> storage(values.size() * DTypeSize(dtype) + 1);
    void* unaligned = storage.data() + 1;
    ConvertFromF32(dtype, values.data(), unaligned, values.size());
    std::vector<float> back(values.size());
    ConvertToF32(dtype, unaligned, back.data(), values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      const float expected = dtype == DType::kBF16 && values[i] == 65504.0f ? 65536.0f : values[i];
      EXPECT_EQ(back[i], expected) << DTypeName(dtype) << " " << i;
    }
  }
  uint16_t h[2];
  const float two[2] = {1.0f, -2.0f};
  ConvertFromF32(DType::kF16, two, h, 2);
  EXPECT_EQ(h[0], 0x3c00);
  EXPECT_EQ(h[1], 0xc000);
  ConvertFromF32(DType::kBF16, two, h, 2);
  EXPECT_EQ(h[0], 0x3f80);
  EXPECT_EQ(h[1], 0xc000);
}

}  // namespace
}  // namespace kvshard
