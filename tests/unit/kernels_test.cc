// The small CPU kernels against straightforward double-precision loops.
#include <gtest/gtest.h>
#include <omp.h>
#include <strings.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/stream_read.h"

namespace kvshard {
namespace {

// Whether simd::fma is one fused multiply-add (the builds with vector units).
constexpr bool kSimdFma = simd::kWidth > 1;

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (float &x : v) x = normal(rng);
  return v;
}

// An f32 [out, in] matrix rounded to bf16 and f16 (to nearest even), their widenings back to
// f32, and both packed for decode (matmul.h).
struct SixteenBit {
  std::vector<bf16_t> b, packed_b;
  std::vector<f16_t> h, packed_h;
  std::vector<float> b_wide, h_wide;
  SixteenBit(const std::vector<float> &w32, int64_t out, int64_t in)
      : b(w32.size()),
        packed_b(packed_weights_size(out, in)),
        h(w32.size()),
        packed_h(packed_weights_size(out, in)),
        b_wide(w32.size()),
        h_wide(w32.size()) {
    for (size_t i = 0; i < w32.size(); ++i) {
      b[i] = from_f32<bf16_t>(w32[i]);
      h[i] = from_f32<f16_t>(w32[i]);
      b_wide[i] = to_f32(b[i]);
      h_wide[i] = to_f32(h[i]);
    }
    pack_weights(reinterpret_cast<const uint16_t *>(b.data()),
                 reinterpret_cast<uint16_t *>(packed_b.data()), out, in);
    pack_weights(reinterpret_cast<const uint16_t *>(h.data()),
                 reinterpret_cast<uint16_t *>(packed_h.data()), out, in);
  }
};

// Debian's OpenBLAS 0.3.21 fell back to its SSE3 kernels on a CPU it did not know (a Xeon of CPUID
// model 207), a fifth of the speed of its AVX-512 kernels there: kvshard names the kernels where
// the host does not, and OpenBLAS must run the ones asked for.
TEST(Blas, RunsTheKernelsThisCpuCanUse) {
  const BlasFns *b = blas();
  if (b == nullptr || b->corename == nullptr) GTEST_SKIP() << "this build has no OpenBLAS";
  const std::string core = b->corename();
  if (blas_core_for_cpu().empty())
    GTEST_SKIP() << "no AVX2: OpenBLAS's own choice (" << core << ")";
  const char *asked = std::getenv("OPENBLAS_CORETYPE");
  ASSERT_NE(asked, nullptr) << "kvshard sets OPENBLAS_CORETYPE where the host leaves it unset";
  EXPECT_EQ(strcasecmp(core.c_str(), asked), 0) << "asked for " << asked << ", runs " << core;
  EXPECT_NE(core, "Prescott");
  EXPECT_NE(blas_description().find(core), std::string::npos) << blas_description();
}

TEST(Matmul, MatchesNaiveForOddShapes) {
  for (auto [T, in, out] : {std::tuple{1, 64, 96}, {3, 17, 5}, {70, 33, 7}, {1, 1000, 3}}) {
    const auto x = Random(T * in, 1), w = Random(out * in, 2);
    std::vector<float> y(T * out), acc(T * out, 1.0f);
    matmul(y.data(), x.data(), w.data(), T, in, out);
    matmul_accumulate(acc.data(), x.data(), w.data(), T, in, out);
    for (int t = 0; t < T; ++t) {
      for (int n = 0; n < out; ++n) {
        double ref = 0;
        for (int k = 0; k < in; ++k) ref += static_cast<double>(x[t * in + k]) * w[n * in + k];
        EXPECT_NEAR(y[t * out + n], ref, 1e-4 * std::sqrt(in)) << T << "x" << in << "x" << out;
        EXPECT_NEAR(acc[t * out + n], ref + 1.0, 1e-4 * std::sqrt(in));
      }
    }
  }
}

// 16-bit weights are widened exactly inside matmul, in the order the f32 kernel uses: the result
// equals the f32 product of the widened weights bit for bit, in decode (one token, widened as
// loaded) and in prefill (token blocks over a widened tile), at sizes off the vector width.
template <typename W>
void ExpectSixteenBitMatmulEqualsWidened() {
  for (auto [T, in, out] :
       {std::tuple{1, 64, 96}, {1, 37, 5}, {2, 17, 6}, {70, 33, 7}, {65, 128, 9}, {1, 1000, 3}}) {
    const auto x = Random(T * in, 11), w32 = Random(out * in, 12);
    std::vector<W> w(w32.size());
    std::vector<float> widened(w32.size());
    for (size_t i = 0; i < w.size(); ++i) {
      w[i] = from_f32<W>(w32[i]);
      widened[i] = to_f32(w[i]);
    }
    std::vector<float> got(T * out), want(T * out);
    matmul(got.data(), x.data(), w.data(), T, in, out);
    matmul(want.data(), x.data(), widened.data(), T, in, out);
    for (int i = 0; i < T * out; ++i) {
      ASSERT_EQ(got[i], want[i]) << T << "x" << in << "x" << out << " at " << i;
    }
  }
}

// Packed 16-bit weights: the same products as the rows they pack, bit for bit, with columns off
// the 32-column chunk and rows off the 4-row tile.
template <typename W>
void ExpectPackedMatmulEqualsUnpacked() {
  for (auto [T, in, out] : {std::tuple{1, 64, 96},
                            {1, 37, 5},
                            {1, 95, 6},
                            {2, 17, 6},
                            {70, 33, 7},
                            {65, 128, 9},
                            {1, 1000, 3},
                            {1, 16, 1},
                            // decode reads 2 or 4 tiles at once: tile counts off that, the
                            // leftover tiles one at a time, a product the team splits
                            {1, 70, 301},
                            {1, 1030, 411}}) {
    const auto x = Random(T * in, 21), w32 = Random(out * in, 22);
    std::vector<W> w(w32.size());
    for (size_t i = 0; i < w.size(); ++i) w[i] = from_f32<W>(w32[i]);
    ASSERT_EQ(packed_weights_size(out, in), (out + 3) / 4 * 4 * in);
    std::vector<W> packed(packed_weights_size(out, in));
    pack_weights(reinterpret_cast<const uint16_t *>(w.data()),
                 reinterpret_cast<uint16_t *>(packed.data()), out, in);
    std::vector<float> got(T * out), want(T * out);
    matmul_packed(got.data(), x.data(), packed.data(), T, in, out);
    matmul(want.data(), x.data(), w.data(), T, in, out);
    for (int i = 0; i < T * out; ++i) {
      ASSERT_EQ(got[i], want[i]) << T << "x" << in << "x" << out << " at " << i;
    }
  }
}

TEST(Matmul, PackedBf16EqualsUnpacked) { ExpectPackedMatmulEqualsUnpacked<bf16_t>(); }
TEST(Matmul, PackedF16EqualsUnpacked) { ExpectPackedMatmulEqualsUnpacked<f16_t>(); }

// Prefill-sized products (OpenBLAS's sgemm where the build has it; the kernels' own path in the
// avx2.* and scalar.* builds): against double-precision sums, for f32, bf16 and f16 weights,
// row-major and packed, with rows off the panel and the tile and columns off the chunk.
TEST(Matmul, PrefillSizedProductsMatchNaive) {
  for (auto [T, in, out] : {std::tuple{16, 256, 256}, {40, 300, 263}, {70, 1024, 100}}) {
    SCOPED_TRACE(::testing::Message()
                 << T << "x" << in << "x" << out << " gemm " << matmul_uses_gemm(T, in, out));
    const auto x = Random(T * in, 31), w32 = Random(out * in, 32);
    const SixteenBit sb(w32, out, in);
    const auto &wb = sb.b, &pb = sb.packed_b;
    const auto &wh = sb.h;
    const auto &wbf = sb.b_wide, &whf = sb.h_wide;
    std::vector<float> y(T * out), acc(T * out, 1.0f), yb(T * out), yh(T * out), ypb(T * out);
    matmul(y.data(), x.data(), w32.data(), T, in, out);
    matmul_accumulate(acc.data(), x.data(), w32.data(), T, in, out);
    matmul(yb.data(), x.data(), wb.data(), T, in, out);
    matmul(yh.data(), x.data(), wh.data(), T, in, out);
    matmul_packed(ypb.data(), x.data(), pb.data(), T, in, out);
    for (int t = 0; t < T; ++t) {
      for (int n = 0; n < out; ++n) {
        double ref = 0, refb = 0, refh = 0;
        for (int k = 0; k < in; ++k) {
          ref += static_cast<double>(x[t * in + k]) * w32[n * in + k];
          refb += static_cast<double>(x[t * in + k]) * wbf[n * in + k];
          refh += static_cast<double>(x[t * in + k]) * whf[n * in + k];
        }
        const double tol = 1e-4 * std::sqrt(in);
        const int i = t * out + n;
        ASSERT_NEAR(y[i], ref, tol) << t << "," << n;
        ASSERT_NEAR(acc[i], ref + 1.0, tol) << t << "," << n;
        ASSERT_NEAR(yb[i], refb, tol) << t << "," << n;
        ASSERT_NEAR(yh[i], refh, tol) << t << "," << n;
        ASSERT_EQ(ypb[i], yb[i]) << t << "," << n << ": packed != row-major";
      }
    }
  }
}

// The GEMM (kernels/cpu/gemm.h) at sizes around its tile (tokens off the microkernel's rows,
// features off the panel, the column block and the packed slice of 256 or 512 input features, the
// 32- column chunks of packed 16-bit rows): against double-precision sums; each output equal bit
// for bit to one chain of fused multiply-adds over k in order (where the build has FMA), to the
// same token computed alone and on one thread, and 16-bit weights (row-major and packed) to the f32
// product of their widening.
TEST(Gemm, OneChainPerOutputAtEveryEdge) {
  // Up to 32 tokens take the small-batch kernel (f32 weights in place, 16-bit ones widened 16 rows
  // at a time), more the packed GEMM: 16, 31, 32 and 33 tokens meet at that edge.
  for (auto [T, in, out] : {std::tuple{1, 1, 1},
                            {16, 64, 17},
                            {31, 100, 33},
                            {32, 129, 64},
                            {33, 65, 50},
                            {9, 17, 49},
                            {8, 256, 48},
                            {17, 257, 385},
                            {5, 600, 100},
                            {70, 31, 800},
                            {3, 513, 47}}) {
    SCOPED_TRACE(::testing::Message() << T << "x" << in << "x" << out);
    const auto x = Random(T * in, 41), w32 = Random(out * in, 42);
    const SixteenBit sb(w32, out, in);
    const auto &wb = sb.b, &pb = sb.packed_b;
    const auto &wh = sb.h, &ph = sb.packed_h;
    const auto &wbf = sb.b_wide, &whf = sb.h_wide;
    const size_t n = static_cast<size_t>(T) * out;
    std::vector<float> y(n, -1.0f), acc(n, 0.5f), yb(n), ybw(n), ypb(n), yh(n), yhw(n), yph(n);
    gemm(y.data(), x.data(), w32.data(), T, in, out, false);
    gemm(acc.data(), x.data(), w32.data(), T, in, out, true);
    gemm(yb.data(), x.data(), wb.data(), false, T, in, out);
    gemm(ybw.data(), x.data(), wbf.data(), T, in, out, false);
    gemm(ypb.data(), x.data(), pb.data(), true, T, in, out);
    gemm(yh.data(), x.data(), wh.data(), false, T, in, out);
    gemm(yhw.data(), x.data(), whf.data(), T, in, out, false);
    gemm(yph.data(), x.data(), ph.data(), true, T, in, out);
    // One thread, and the last token alone.
    std::vector<float> y1(n), last(out);
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    gemm(y1.data(), x.data(), w32.data(), T, in, out, false);
    omp_set_num_threads(threads);
    gemm(last.data(), x.data() + (T - 1) * in, w32.data(), 1, in, out, false);
    for (int t = 0; t < T; ++t) {
      for (int o = 0; o < out; ++o) {
        double ref = 0;
        float chain = 0.0f, chain_acc = 0.5f;
        for (int k = 0; k < in; ++k) {
          ref += static_cast<double>(x[t * in + k]) * w32[o * in + k];
          chain = std::fma(x[t * in + k], w32[o * in + k], chain);
          chain_acc = std::fma(x[t * in + k], w32[o * in + k], chain_acc);
        }
        const size_t i = static_cast<size_t>(t) * out + o;
        ASSERT_NEAR(y[i], ref, 1e-4 * std::sqrt(in)) << t << "," << o;
        ASSERT_NEAR(acc[i], ref + 0.5, 1e-4 * std::sqrt(in)) << t << "," << o;
        if (kSimdFma) {
          ASSERT_EQ(y[i], chain) << t << "," << o;
          ASSERT_EQ(acc[i], chain_acc) << t << "," << o;
        }
        ASSERT_EQ(y1[i], y[i]) << t << "," << o << ": one thread";
        if (t == T - 1) {
          ASSERT_EQ(last[o], y[i]) << o << ": the token alone";
        }
        ASSERT_EQ(yb[i], ybw[i]) << t << "," << o << ": bf16 != its widening";
        ASSERT_EQ(ypb[i], ybw[i]) << t << "," << o << ": packed bf16";
        ASSERT_EQ(yh[i], yhw[i]) << t << "," << o << ": f16 != its widening";
        ASSERT_EQ(yph[i], yhw[i]) << t << "," << o << ": packed f16";
      }
    }
  }
}

// bf16 inputs (gemm_bf16_inputs): x rounded to bf16, each pair's products added odd feature
// first. Against double-precision sums of the rounded inputs; without AVX512-BF16, bit for bit
// the fused multiply-add chain of that order; with it (VDPBF16PS, or AMX's tiles where the CPU
// has them, each path in turn), within f32 rounding of that chain; packed == row-major, the token
// alone and one thread bit for bit. Odd input sizes put the last feature alone in its pair; 33,
// 40 and 70 tokens leave AMX's 32-token tiles a last tile of 1, 8 (one 16-row tile) and 6.
class GemmBf16Inputs : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    gemm_allow_amx(GetParam());
    if (GetParam() && !gemm_uses_amx()) GTEST_SKIP() << "no AMX-BF16 on this CPU or build";
  }
  void TearDown() override { gemm_allow_amx(true); }
};
INSTANTIATE_TEST_SUITE_P(Paths, GemmBf16Inputs, ::testing::Values(false, true),
                         [](const auto &info) { return info.param ? "Amx" : "DotProducts"; });

// Runs gemm_bf16_inputs on w (row-major) and packed_w, on one thread and for the last token alone,
// and checks every output against ref(t, o) = {the double-precision sum, the sum of |terms|, the
// fused multiply-add chain in the path's order}: near the sum, equal to the chain without bf16 dot
// products and near it with them, the other three runs equal bit for bit.
struct Expected {
  double sum, scale;
  float chain;
};
template <typename W, typename Ref>
void ExpectBf16InputProduct(const std::vector<float> &x, const std::vector<W> &w,
                            const std::vector<W> &packed_w, int T, int in, int out, Ref ref) {
  const size_t n = static_cast<size_t>(T) * out;
  std::vector<float> y(n), yp(n), y1(n), last(out);
  gemm_bf16_inputs(y.data(), x.data(), w.data(), false, T, in, out);
  gemm_bf16_inputs(yp.data(), x.data(), packed_w.data(), true, T, in, out);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  gemm_bf16_inputs(y1.data(), x.data(), w.data(), false, T, in, out);
  omp_set_num_threads(threads);
  gemm_bf16_inputs(last.data(), x.data() + (T - 1) * in, w.data(), false, 1, in, out);
  for (int t = 0; t < T; ++t) {
    for (int o = 0; o < out; ++o) {
      const Expected e = ref(t, o);
      const size_t i = static_cast<size_t>(t) * out + o;
      const double tolerance = 1e-5 * e.scale + 1e-30;
      ASSERT_NEAR(y[i], e.sum, tolerance) << t << "," << o;
      if (gemm_has_bf16_dot()) {
        ASSERT_NEAR(y[i], e.chain, tolerance) << t << "," << o;
      } else {
        ASSERT_EQ(y[i], e.chain) << t << "," << o;
      }
      ASSERT_EQ(yp[i], y[i]) << t << "," << o << ": packed";
      ASSERT_EQ(y1[i], y[i]) << t << "," << o << ": one thread";
      if (t == T - 1) {
        ASSERT_EQ(last[o], y[i]) << o << ": the token alone";
      }
    }
  }
}

TEST_P(GemmBf16Inputs, PairsOfBf16ProductsInOneChain) {
  ASSERT_EQ(gemm_uses_amx(), GetParam());
  for (auto [T, in, out] : {std::tuple{1, 2, 1},
                            {33, 64, 32},
                            {40, 96, 70},
                            {9, 17, 49},
                            {8, 256, 48},
                            {17, 257, 385},
                            {5, 600, 100},
                            {70, 31, 800},
                            {3, 513, 47},
                            {16, 1024, 64}}) {
    SCOPED_TRACE(::testing::Message() << T << "x" << in << "x" << out);
    const auto x = Random(T * in, 51), w32 = Random(out * in, 52);
    const SixteenBit sb(w32, out, in);
    const auto &wb = sb.b;
    ExpectBf16InputProduct(x, wb, sb.packed_b, T, in, out, [&](int t, int o) {
      Expected e{0, 0, 0.0f};
      for (int k = 0; k < in; k += 2) {
        const float x0 = to_f32(from_f32<bf16_t>(x[t * in + k])), w0 = to_f32(wb[o * in + k]);
        const float x1 = k + 1 < in ? to_f32(from_f32<bf16_t>(x[t * in + k + 1])) : 0.0f;
        const float w1 = k + 1 < in ? to_f32(wb[o * in + k + 1]) : 0.0f;
        e.sum += static_cast<double>(x0) * w0 + static_cast<double>(x1) * w1;
        e.scale += std::abs(static_cast<double>(x0) * w0) + std::abs(static_cast<double>(x1) * w1);
        e.chain = std::fma(x0, w0, std::fma(x1, w1, e.chain));
      }
      return e;
    });
  }
}

// f16 weights with bf16 inputs: each weight split into its bf16 cut and the rest (exact), both
// met by the token's feature rounded to bf16, the rest's product added first. Against
// double-precision sums of the rounded x times the f16 weights (the split loses nothing); the
// chain of that order bit for bit without AVX512-BF16, within f32 rounding of it with dot
// products or tiles. Tiny and huge weights (f16's subnormals, 65504) and weights of many
// exponents check the split.
TEST_P(GemmBf16Inputs, F16WeightsSplitExactlyInTwoBf16Parts) {
  for (auto [T, in, out] : {std::tuple{1, 1, 1}, {33, 64, 32}, {17, 257, 385}, {70, 31, 100}}) {
    SCOPED_TRACE(::testing::Message() << T << "x" << in << "x" << out);
    const auto x = Random(T * in, 61);
    auto w32 = Random(out * in, 62);
    for (size_t i = 0; i < w32.size(); i += 7) {
      w32[i] = std::ldexp(w32[i], static_cast<int>(i % 40) - 26);
    }
    w32[0] = 65504.0f;
    if (w32.size() > 1) w32[1] = 3e-7f;  // an f16 subnormal
    const SixteenBit sb(w32, out, in);
    ExpectBf16InputProduct(x, sb.h, sb.packed_h, T, in, out, [&](int t, int o) {
      Expected e{0, 0, 0.0f};
      for (int k = 0; k < in; ++k) {
        const float xk = to_f32(from_f32<bf16_t>(x[t * in + k])), wk = sb.h_wide[o * in + k];
        uint32_t bits;
        std::memcpy(&bits, &wk, sizeof bits);
        const float cut = bf16_bits_to_f32(static_cast<uint16_t>(bits >> 16));
        e.sum += static_cast<double>(xk) * wk;
        e.scale += std::abs(static_cast<double>(xk) * wk);
        e.chain = std::fma(xk, cut, std::fma(xk, wk - cut, e.chain));
      }
      return e;
    });
  }
}

TEST(Simd, TransposeMovesRowIColumnJToRowJColumnI) {
  using simd::kWidth;
  float in[kWidth * kWidth], got[kWidth * kWidth];
  for (int i = 0; i < kWidth * kWidth; ++i) in[i] = static_cast<float>(i);
  simd::vec r[kWidth];
  for (int i = 0; i < kWidth; ++i) r[i] = simd::load(in + i * kWidth);
  simd::transpose(r);
  for (int i = 0; i < kWidth; ++i) simd::store(got + i * kWidth, r[i]);
  for (int i = 0; i < kWidth; ++i) {
    for (int j = 0; j < kWidth; ++j)
      ASSERT_EQ(got[j * kWidth + i], in[i * kWidth + j]) << i << "," << j;
  }
}

TEST(Matmul, Bf16WeightsEqualTheirF32Widening) { ExpectSixteenBitMatmulEqualsWidened<bf16_t>(); }
TEST(Matmul, F16WeightsEqualTheirF32Widening) { ExpectSixteenBitMatmulEqualsWidened<f16_t>(); }

TEST(Embedding, SixteenBitTablesAreWidened) {
  const int64_t vocab = 5, dim = 19;
  const auto t32 = Random(vocab * dim, 13);
  std::vector<bf16_t> tb(t32.size());
  std::vector<f16_t> th(t32.size());
  for (size_t i = 0; i < t32.size(); ++i) {
    tb[i] = from_f32<bf16_t>(t32[i]);
    th[i] = from_f32<f16_t>(t32[i]);
  }
  const int32_t ids[] = {4, 0, 4, 2};
  std::vector<float> ob(4 * dim), oh(4 * dim);
  embedding(ob.data(), tb.data(), ids, 4, dim);
  embedding(oh.data(), th.data(), ids, 4, dim);
  for (int t = 0; t < 4; ++t) {
    for (int64_t i = 0; i < dim; ++i) {
      EXPECT_EQ(ob[t * dim + i], to_f32(tb[ids[t] * dim + i]));
      EXPECT_EQ(oh[t * dim + i], to_f32(th[ids[t] * dim + i]));
      EXPECT_NEAR(ob[t * dim + i], t32[ids[t] * dim + i], 1e-2 * std::fabs(t32[ids[t] * dim + i]));
    }
  }
}

TEST(RmsNorm, MatchesDefinition) {
  const int dim = 37;
  const auto x = Random(2 * dim, 3), w = Random(dim, 4);
  std::vector<float> y(2 * dim);
  rmsnorm(y.data(), x.data(), w.data(), 2, dim, 1e-5f);
  for (int t = 0; t < 2; ++t) {
    double ss = 0;
    for (int i = 0; i < dim; ++i) ss += x[t * dim + i] * x[t * dim + i];
    const double s = 1.0 / std::sqrt(ss / dim + 1e-5);
    for (int i = 0; i < dim; ++i) EXPECT_NEAR(y[t * dim + i], x[t * dim + i] * s * w[i], 1e-5);
  }
}

// A prefill's rows (interleaved eight at a time, on the OpenMP team) give each row the bits it
// gets alone, at token counts around the interleave; add_rmsnorm is the residual add, then the
// norm.
TEST(RmsNorm, EachRowAsAloneAndTheResidualAddFused) {
  const int64_t dim = 1031;  // a prefill-sized call runs on the team
  for (int64_t tokens : {1, 7, 8, 9, 61}) {
    const auto x = Random(tokens * dim, 10), w = Random(dim, 11), res = Random(tokens * dim, 12);
    std::vector<float> all(tokens * dim), one(dim);
    rmsnorm(all.data(), x.data(), w.data(), tokens, dim, 1e-5f);
    std::vector<float> xs = x, fused(tokens * dim);
    add_rmsnorm(fused.data(), xs.data(), res.data(), w.data(), tokens, dim, 1e-5f);
    for (int64_t t = 0; t < tokens; ++t) {
      rmsnorm(one.data(), x.data() + t * dim, w.data(), 1, dim, 1e-5f);
      for (int64_t i = 0; i < dim; ++i) ASSERT_EQ(all[t * dim + i], one[i]) << tokens << " " << t;
      std::vector<float> sum(dim);
      for (int64_t i = 0; i < dim; ++i) {
        sum[i] = x[t * dim + i] + res[t * dim + i];
        ASSERT_EQ(xs[t * dim + i], sum[i]);
      }
      rmsnorm(one.data(), sum.data(), w.data(), 1, dim, 1e-5f);
      for (int64_t i = 0; i < dim; ++i) ASSERT_EQ(fused[t * dim + i], one[i]) << tokens << " " << t;
    }
  }
}

// Many tokens in one call (on the team) rotate each token as a call of its own does.
TEST(Rope, EachTokenAsAlone) {
  for (RopePairing pairing : {RopePairing::kHalf, RopePairing::kInterleaved}) {
    const int64_t tokens = 67, heads = 9, hd = 64, half = hd / 2;
    std::vector<float> inv(half);
    for (int64_t i = 0; i < half; ++i) inv[i] = std::pow(10000.0f, -2.0f * i / hd);
    std::vector<int32_t> pos(tokens);
    for (int64_t t = 0; t < tokens; ++t) pos[t] = static_cast<int32_t>(t * 977 % 40000);
    const auto x = Random(tokens * heads * hd, 13);
    std::vector<float> all = x;
    rope(all.data(), pos.data(), inv.data(), tokens, heads, hd, pairing);
    for (int64_t t = 0; t < tokens; ++t) {
      std::vector<float> one(x.begin() + t * heads * hd, x.begin() + (t + 1) * heads * hd);
      rope(one.data(), &pos[t], inv.data(), 1, heads, hd, pairing);
      for (int64_t i = 0; i < heads * hd; ++i) ASSERT_EQ(all[t * heads * hd + i], one[i]) << t;
    }
  }
}

TEST(Rope, PairingsAgreeUnderThePermutationAndPreserveNorm) {
  const int64_t heads = 3, hd = 8, half = hd / 2;
  std::vector<float> inv(half);
  for (int64_t i = 0; i < half; ++i) inv[i] = std::pow(10000.0f, -2.0f * i / hd);
  const auto x = Random(heads * hd, 5);
  // The same vector in interleaved order: element (2i + p) <-> (p * half + i).
  std::vector<float> xi(x.size());
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int p = 0; p < 2; ++p) xi[h * hd + 2 * i + p] = x[h * hd + p * half + i];
    }
  }
  const int32_t pos = 1234;
  std::vector<float> a = x, b = xi;
  rope(a.data(), &pos, inv.data(), 1, heads, hd, RopePairing::kHalf);
  rope(b.data(), &pos, inv.data(), 1, heads, hd, RopePairing::kInterleaved);
  double na = 0, nx = 0;
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int p = 0; p < 2; ++p) {
        EXPECT_NEAR(a[h * hd + p * half + i], b[h * hd + 2 * i + p], 1e-5);
      }
    }
  }
  for (size_t i = 0; i < x.size(); ++i) {
    na += a[i] * a[i];
    nx += x[i] * x[i];
  }
  EXPECT_NEAR(na, nx, 1e-3);
  // Position 0 is the identity.
  const int32_t zero = 0;
  std::vector<float> c = x;
  rope(c.data(), &zero, inv.data(), 1, heads, hd, RopePairing::kHalf);
  EXPECT_EQ(c, x);
}

TEST(SiluMul, MatchesDefinition) {
  const auto g = Random(50, 6), u = Random(50, 7);
  std::vector<float> y(50);
  silu_mul(y.data(), g.data(), u.data(), 50);
  for (int i = 0; i < 50; ++i) {
    const double want = g[i] / (1 + std::exp(-static_cast<double>(g[i]))) * u[i];
    EXPECT_NEAR(y[i], want, 1e-6 * (1 + std::fabs(want))) << g[i];
  }
}

// Far into both tails (exp(-|g|) underflows, sigmoid rounds to 1), in place, and each element's
// value independent of where it falls: the same inputs at another offset and length (the vector
// body, the padded tail, and the OpenMP team for a prefill-sized n) give the same bits.
TEST(SiluMul, TailsInPlaceAndIndependentOfPosition) {
  const std::vector<float> edge = {-200.0f, -88.0f, -87.0f, -20.0f, -1e-30f, 0.0f,
                                   1e-30f,  20.0f,  87.0f,  88.0f,  200.0f};
  for (float gi : edge) {
    float y = gi, u = 1.5f;
    silu_mul(&y, &y, &u, 1);
    const double want = gi / (1 + std::exp(-static_cast<double>(gi))) * 1.5;
    EXPECT_NEAR(y, want, 1e-6 * (1 + std::fabs(want))) << gi;
  }
  const int64_t n = (int64_t{1} << 16) + 5;
  const auto g = Random(n, 8), u = Random(n, 9);
  std::vector<float> all(n), shifted(n - 3);
  silu_mul(all.data(), g.data(), u.data(), n);
  silu_mul(shifted.data(), g.data() + 3, u.data() + 3, n - 3);
  for (int64_t i = 0; i + 3 < n; ++i) ASSERT_EQ(shifted[i], all[i + 3]) << i;
}

TEST(StreamRead, SumsEveryElementOnAnyThreadCount) {
  std::vector<float> buf(1 << 16);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(i % 7);
  const int64_t n = static_cast<int64_t>(buf.size()) - 5;  // not a multiple of the vector width
  double want = 0;
  for (int64_t i = 0; i < n; ++i) want += buf[i];
  for (int threads : {1, 2, 3}) EXPECT_DOUBLE_EQ(stream_read_sum(buf.data(), n, threads), want);
}

}  // namespace
}  // namespace kvshard
