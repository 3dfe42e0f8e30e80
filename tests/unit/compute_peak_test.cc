// The compute-ceiling probes `kvshard bench` reports beside prefill: present exactly where the
// build or the CPU has the instruction, and measuring something real.
#include "kernels/cpu/compute_peak.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>

namespace kvshard {
namespace {

// Whether the kernel lists `flag` among the first CPU's flags.
bool CpuHasFlag(const std::string& flag) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) == 0)
      return (line + " ").find(" " + flag + " ") != std::string::npos;
  }
  return false;
}

TEST(ComputePeak, F32AndBf16DotProbesWhereTheBuildHasThem) {
  const double f32 = measure_fma_peak_gflops(1, 1);
  EXPECT_GT(f32, 0.1);
  const auto bf16 = measure_bf16_dot_peak_gflops(1, 1);
#if defined(__AVX512BF16__)
  ASSERT_TRUE(bf16.has_value());
  EXPECT_GT(*bf16, 0.1);
#else
  EXPECT_FALSE(bf16.has_value());
#endif
}

// AMX is found at run time: on a CPU with AMX-BF16 (and a kernel that grants the tiles, as any
// Linux from 5.16 does) the probe runs, and one tile unit out-computes the FMA units many times
// over; elsewhere it reports nothing.
TEST(ComputePeak, AmxTileProbeWhereTheCpuHasAmx) {
  const auto amx = measure_amx_bf16_peak_gflops(1, 1);
  if (!CpuHasFlag("amx_bf16") || !CpuHasFlag("amx_tile")) {
    EXPECT_FALSE(amx.has_value());
    return;
  }
  ASSERT_TRUE(amx.has_value());
  EXPECT_GT(*amx, measure_fma_peak_gflops(1, 1));
}

}  // namespace
}  // namespace kvshard
