// The blocking shared by kernels/cpu/gemm.cc (f32 inputs) and gemm_bf16.cc (bf16 inputs): the
// microkernel tile and slice sizes of this build's vector unit, where a weight sits in a row-major
// or decode-packed matrix, and drive(), the loops around a microkernel. Internal to those files.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/half.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/simd.h"

namespace kvshard::gemm_blocking {

using simd::kWidth;
using simd::vec;

// The microkernel's tile: kRows tokens x kVectors vectors of features, kRows * kVectors
// accumulators (AVX-512: 24 of 32 registers, the rest for the weights and the broadcast; 8 x 48
// measured level with 6 x 64 and ahead of 14 x 32 and 12 x 32 on a Zen 4 core, and ahead of 12 x
// 32 and 6 x 64 on a Sapphire Rapids-class Xeon core). kDepth input features per packed slice;
// kMaxColumns features per column block (kDepth x kMaxColumns floats of packed weights per
// thread, in L2: 768 KB on AVX-512, where 512 x 192 measured 2-8% ahead of 256 x 384 on the Xeon
// and 1,024 x 192 another 3-5% ahead of 512 x 192 (fewer passes of the output tile through
// memory), 256 KB on AVX2).
#if defined(__AVX512F__)
constexpr int kRows = 8, kVectors = 3;
constexpr int64_t kMaxColumns = 192, kDepth = 1024;
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kRows = 6, kVectors = 2;  // 12 of 16 registers
constexpr int64_t kMaxColumns = 256, kDepth = 256;
#else
constexpr int kRows = 4, kVectors = 4;
constexpr int64_t kMaxColumns = 64, kDepth = 256;
#endif
constexpr int kCols = kVectors * kWidth;  // NR
static_assert(kDepth % kPackedChunk == 0, "a slice holds whole chunks of a packed matrix");
static_assert(kPackedChunk % kWidth == 0, "a vector never straddles two chunks");
static_assert(kMaxColumns % kCols == 0, "a column block holds whole panels");

// A microkernel's R x V accumulators (V vectors of a panel's kVectors) from c (or zero), and back.
template <int R, int V = kVectors>
[[gnu::always_inline]] inline void tile_load(vec (&acc)[R][V], const float* c, int64_t ldc,
                                             bool load) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) {
      acc[r][v] = load ? simd::load(c + r * ldc + v * kWidth) : simd::zero();
    }
  }
}
template <int R, int V = kVectors>
[[gnu::always_inline]] inline void tile_store(const vec (&acc)[R][V], float* c, int64_t ldc) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) simd::store(c + r * ldc + v * kWidth, acc[r][v]);
  }
}

inline vec load_w(const float* p) { return simd::load(p); }
inline vec load_w(const f16_t* p) { return simd::load_f16(reinterpret_cast<const uint16_t*>(p)); }
inline vec load_w(const bf16_t* p) { return simd::load_bf16(reinterpret_cast<const uint16_t*>(p)); }

// Where weight (n, k) is: row-major, or in matmul.h's decode tiles (4 rows; each row's next
// kPackedChunk columns after the previous row's, then the columns past the last whole chunk
// row after row). Either way the kWidth columns from a multiple of kWidth are contiguous.
template <typename W>
const W* weight_at(const W* w, bool packed, int64_t n, int64_t k, int64_t in) {
  if (!packed) return w + n * in + k;
  const W* tile = w + n / 4 * 4 * in;
  const int64_t main = in / kPackedChunk * kPackedChunk, i = n % 4;
  if (k < main)
    return tile + k / kPackedChunk * 4 * kPackedChunk + i * kPackedChunk + k % kPackedChunk;
  return tile + main * 4 + i * (in - main) + (k - main);
}

// The loops around a microkernel of Rows tokens x Cols features, for panels of Elem (f32 weights,
// or pairs of bf16 weights in 32-bit words) and `units` of the inner dimension (features, or pairs
// of them). Each thread takes a contiguous run of panels (runs differing by at most one panel), in
// column blocks of at most kMaxColumns; for each block and slice of `slice` units it packs the
// block's weights (pack(n0, cols, u0, depth, panels)) and runs every token tile over them
// (micro(rows, t0, u0, panel, depth, c, ldc, load, live): `live` of the panel's Cols columns are
// the matrix's, fewer in its last panel, which may skip the padding past them). prologue() runs
// first on every thread of the team (the ones with work wait for the others at its barrier),
// epilogue() last.
template <int Rows, int Cols, typename Elem, typename Prologue, typename Pack, typename Run,
          typename Epilogue>
void drive(float* out, int64_t tokens, int64_t units, int64_t n_out, bool accumulate, int64_t slice,
           bool parallel, Prologue prologue, Pack pack_block, Run micro, Epilogue epilogue) {
  static_assert(kMaxColumns % Cols == 0, "a column block holds whole panels");
  const int64_t panels = (n_out + Cols - 1) / Cols;
#pragma omp parallel if (parallel && panels > 1)
  {
    prologue();
    const int64_t team = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t first = panels * me / team, last = panels * (me + 1) / team;
    // slice x kMaxColumns at most, from a 64-byte boundary: a panel's vector loads never straddle
    // two cache lines (a large vector's data starts 16 bytes into its pages).
    static thread_local std::vector<Elem> packed_buf;
    const int64_t max_cols = std::min<int64_t>(kMaxColumns, (last - first) * Cols);
    constexpr int64_t kAlign = 64 / sizeof(Elem);
    if (packed_buf.size() < static_cast<size_t>(slice * max_cols + kAlign)) {
      packed_buf.resize(slice * max_cols + kAlign);
    }
    Elem* const packed_w =
        packed_buf.data() +
        (kAlign - reinterpret_cast<uintptr_t>(packed_buf.data()) / sizeof(Elem) % kAlign) % kAlign;
    alignas(64) float edge[Rows * Cols] = {};
    for (int64_t n0 = first * Cols; n0 < std::min(n_out, last * Cols); n0 += kMaxColumns) {
      const int64_t cols = std::min({kMaxColumns, n_out - n0, last * Cols - n0});
      for (int64_t u0 = 0; u0 < units; u0 += slice) {
        const int64_t depth = std::min(slice, units - u0);
        const bool load = accumulate || u0 > 0;
        pack_block(n0, cols, u0, depth, packed_w);
        for (int64_t t0 = 0; t0 < tokens; t0 += Rows) {
          const int rows = static_cast<int>(std::min<int64_t>(Rows, tokens - t0));
          for (int64_t j0 = 0; j0 < cols; j0 += Cols) {
            const Elem* panel = packed_w + j0 / Cols * depth * Cols;
            float* c = out + t0 * n_out + n0 + j0;
            if (j0 + Cols <= cols) {
              micro(rows, t0, u0, panel, depth, c, n_out, load, Cols);
            } else {  // the matrix's last columns, through a tile of its own
              const size_t live = (cols - j0) * sizeof(float);
              if (load) {
                for (int64_t r = 0; r < rows; ++r) {
                  std::memcpy(edge + r * Cols, c + r * n_out, live);
                }
              }
              micro(rows, t0, u0, panel, depth, edge, Cols, load, static_cast<int>(cols - j0));
              for (int64_t r = 0; r < rows; ++r) std::memcpy(c + r * n_out, edge + r * Cols, live);
            }
          }
        }
      }
    }
    epilogue();
  }
}

}  // namespace kvshard::gemm_blocking
