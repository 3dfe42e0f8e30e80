// The compute ceilings prefill is compared with, measured on this machine: a probe of
// independent multiply-add chains that keeps every FMA unit busy (f32 at the build's vector
// width), of bf16 dot products (AVX512-BF16 vdpbf16ps) where the build targets them, and of AMX
// bf16 tile products where the CPU and the kernel allow them.
#pragma once

#include <optional>

namespace kvshard {

// f32 multiply-add peak of `threads` OpenMP threads at once, GFLOP/s (a multiply-add is 2 FLOP):
// the best of `repeats` timed runs of about 20 ms each.
double measure_fma_peak_gflops(int threads, int repeats);

// The same for bf16 dot products accumulated in f32 (2 multiply-adds per f32 lane and
// instruction); nullopt when this build has no bf16 dot-product instruction.
std::optional<double> measure_bf16_dot_peak_gflops(int threads, int repeats);

// The same for AMX bf16 tile products (TDPBF16PS into f32 tiles), found at run time: nullopt
// where the CPU has no AMX-BF16 or Linux refuses this process the tile registers.
std::optional<double> measure_amx_bf16_peak_gflops(int threads, int repeats);

}  // namespace kvshard
