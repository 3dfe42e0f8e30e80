// Intel AMX (the tile registers and their bf16 products), found at run time: the functions below
// are compiled for AMX whatever vector unit the build targets, and run only where
// amx_bf16_usable() said yes.
#pragma once

#include <cstdint>

#if defined(__x86_64__)
// The AMX intrinsics (_tile_*), whatever vector unit this build targets (GCC bug 105593, as
// simd.h), for functions compiled with __attribute__((target("amx-tile,amx-bf16"))).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

namespace kvshard {

// Whether the CPU has the bf16 tile unit (CPUID leaf 7: AMX-TILE and AMX-BF16) and Linux lets this
// process use the tile data registers (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA).
// Asked once for the process; false off x86-64.
bool amx_bf16_usable();

// The calling thread's tile configuration (palette 1): all eight tiles 16 rows of 64 bytes (16 x
// 16 f32 accumulators, or 16 rows of 16 pairs of bf16). amx_release() hands the tile state back
// (so that Linux need not save it at a context switch).
void amx_configure();
void amx_release();

}  // namespace kvshard
