// OpenBLAS, for the prefill-sized products of kernels/cpu/matmul.cc where KVSHARD_GEMM=openblas
// asks for it instead of kvshard's own GEMM (kernels/cpu/gemm.h): its OpenMP build (Debian's
// libopenblas0-openmp, whose threads are the engine's OpenMP team), opened at run time, so that a
// host without it runs the kernels' own path. It picks its kernels for the CPU it finds, or as
// OPENBLAS_CORETYPE says. Debian's 0.3.21 does not know every CPU it runs on: on a Xeon of CPUID
// model 207 it fell back to its SSE3 "Prescott" kernels, 30 GFLOP/s where its SkylakeX kernels
// give 150 on one core. So where the host leaves OPENBLAS_CORETYPE unset, kvshard sets it before
// opening the library to the kernels the CPU's instruction sets can run (blas_core_for_cpu).
#pragma once

#include <string>

namespace kvshard {

struct BlasFns {
  // cblas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
  void (*sgemm)(int, int, int, int, int, int, float, const float*, int, const float*, int, float,
                float*, int);
  void (*set_num_threads)(int);
  char* (*corename)();
};

// The library's functions, opened on first use (thread-safe); nullptr when this build has none
// or the library cannot be opened (the kernels' own path runs then).
const BlasFns* blas();

// "OpenBLAS (OpenMP) Haswell" (its kernels), or "none".
std::string blas_description();

// The OPENBLAS_CORETYPE kvshard asks for on this CPU where the host sets none: "SkylakeX" with
// AVX-512 F/BW/DQ/VL, "Haswell" with AVX2 and FMA, otherwise "" (OpenBLAS's own choice).
std::string blas_core_for_cpu();

}  // namespace kvshard
