// kvshard_gpu_bench: the GPU backend against the ceilings measured in the same run.
//
//   ceilings   device-to-device copy (GB/s, bytes read + written) and the cuBLAS bf16 GEMM
//              (TFLOP/s) at the prefill's own shapes, through the same matmul wrapper the model
//              uses
//   attention  paged decode attention alone (Llama-3-8B heads: 32 query / 8 KV heads of 128,
//              bf16 cache, 16-token blocks) at 4K, 32K and 128K context, batch 1 and 8: KV bytes
//              read per call / time, as a fraction of the copy ceiling
//   model      a random-weight model with Llama-3-8B's shape (bf16 weights, bf16 KV cache), built
//              in memory: batch-1 decode time per token against (weights + KV) bytes at the copy
//              ceiling, and the prefill of an 8K-token prompt in TFLOP/s against the GEMM ceiling
//
// Every time is the median of --repeats CUDA-event-timed runs after a warm-up; inputs are random,
// and attention rotates over KV copies larger than L2 so the cache never serves a repeat. Prints
// a table and, with --json, one JSON object per line. Runs as one MPI rank (plain or mpirun -np 1).
//
// On the CPU emulator (kvshard_gpu_bench_emu) it runs the same code at toy sizes (--smoke): a test
// that the program works, not a measurement.
#include <fmt/format.h>
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/cuda/cuda_check.h"
#include "kernels/cuda/copy_bandwidth.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/launch_config.h"
#include "kernels/cuda/paged_attention.h"
#include "shard/cuda/cuda_shard_model.h"
#include "transport/cuda/nccl_communicator.h"
#include "transport/mpi_communicator.h"

namespace kvshard::cuda {
namespace {

struct Options {
  bool smoke = false;  // toy sizes: checks that the program runs (the emulator's test)
  bool json = false;
  int repeats = 20;
  int layers = 32;
  int64_t decode_context = 1024;
  int64_t prefill_tokens = 8192;
  std::vector<int64_t> contexts{4096, 32768, 131072};
  std::vector<int64_t> batches{1, 8};
  bool skip_model = false;
};

// A fast deterministic fill: xorshift, uniform in [-scale, scale].
void FillRandom(std::vector<float>* v, uint64_t seed, float scale) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (float& f : *v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    f = scale * (static_cast<float>(x >> 40) / static_cast<float>(1 << 23) - 1.0f);
  }
}

void Check(const Status& st) {
  if (!st.ok()) {
    std::fprintf(stderr, "kvshard_gpu_bench: %s\n", st.ToString().c_str());
    std::exit(1);
  }
}

// A typed view of a DeviceBuffer (common/cuda/device_buffer.h) of `count` elements of T.
template <typename T>
struct Device {
  DeviceBuffer buffer;
  T* p = nullptr;
  size_t n = 0;
  explicit Device(size_t count) : n(count) {
    auto b = DeviceBuffer::Allocate(count * sizeof(T), "a benchmark buffer");
    Check(b.status());
    buffer = std::move(b).value();
    p = buffer.as<T>();
  }
};

#define BENCH_CUDA(call) Check(KVS_CUDA(call))
#define BENCH_CUBLAS(call) Check(KVS_CUBLAS(call))

// Random device data of `count` elements of T (converted on the host).
template <typename T>
void Upload(T* dst, size_t count, uint64_t seed, float scale) {
  std::vector<float> f(count);
  FillRandom(&f, seed, scale);
  std::vector<T> h(count);
  for (size_t i = 0; i < count; ++i) h[i] = static_cast<T>(f[i]);
  BENCH_CUDA(cudaMemcpy(dst, h.data(), count * sizeof(T), cudaMemcpyHostToDevice));
}

// Median milliseconds of `repeats` runs of fn(i) on `stream`, each timed by its own events,
// after two warm-up runs.
template <typename Fn>
double MedianMs(cudaStream_t stream, int repeats, Fn fn) {
  for (int i = 0; i < 2; ++i) fn(i);
  BENCH_CUDA(cudaStreamSynchronize(stream));
  std::vector<float> ms(repeats);
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < repeats; ++i) {
    BENCH_CUDA(cudaEventRecord(start, stream));
    fn(i + 2);
    BENCH_CUDA(cudaEventRecord(stop, stream));
    BENCH_CUDA(cudaEventSynchronize(stop));
    BENCH_CUDA(cudaEventElapsedTime(&ms[i], start, stop));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void Emit(const Options& o, const std::string& json) {
  if (o.json) std::printf("%s\n", json.c_str());
}

// ---- ceilings ---------------------------------------------------------------------------------

struct Ceilings {
  double copy_gbs = 0;
  double gemm_tflops = 0;
};

Ceilings MeasureCeilings(const Options& o, cudaStream_t stream, const CublasHandle& blas,
                         int64_t dim, int64_t ffn) {
  Ceilings c;
  const size_t copy_bytes = o.smoke ? (size_t{8} << 20) : (size_t{1} << 30);
  auto copy = MeasureDeviceCopyGbs(copy_bytes, o.smoke ? 3 : o.repeats);
  Check(copy.status());
  c.copy_gbs = *copy;
  // The prefill's GEMM shapes: tokens x dim -> ffn (gate, up) and tokens x dim -> dim (q, o).
  const int64_t t = o.smoke ? 64 : o.prefill_tokens;
  for (auto [in, out] : {std::pair<int64_t, int64_t>{dim, ffn}, {dim, dim}, {ffn, dim}}) {
    Device<__nv_bfloat16> x(t * in), w(out * in);
    Device<float> y(t * out);
    Upload(x.p, x.n, 1, 1.0f);
    Upload(w.p, w.n, 2, 0.05f);
    const double ms = MedianMs(stream, o.smoke ? 2 : o.repeats, [&](int) {
      BENCH_CUBLAS(matmul<__nv_bfloat16>(blas, y.p, x.p, w.p, t, in, out, false, stream));
    });
    const double tflops = 2.0 * t * in * out / (ms * 1e-3) / 1e12;
    std::printf("  cuBLAS bf16 GEMM %6ld x %6ld x %6ld: %8.3f ms  %7.1f TFLOP/s\n",
                static_cast<long>(t), static_cast<long>(in), static_cast<long>(out), ms, tflops);
    Emit(o, fmt::format(R"({{"bench":"gemm","m":{},"k":{},"n":{},"ms":{},"tflops":{}}})", t, in,
                        out, ms, tflops));
    c.gemm_tflops = std::max(c.gemm_tflops, tflops);
  }
  std::printf("  device copy: %.1f GB/s (read + write)\n", c.copy_gbs);
  Emit(o, fmt::format(R"({{"bench":"ceilings","device_copy_gbs":{},"gemm_tflops":{}}})", c.copy_gbs,
                      c.gemm_tflops));
  return c;
}

// ---- paged decode attention --------------------------------------------------------------------

void BenchAttention(const Options& o, const Ceilings& c, cudaStream_t stream, int sm_count) {
  const int64_t q_heads = o.smoke ? 8 : 32, kv_heads = o.smoke ? 2 : 8, hd = 128, bs = 16;
  const int64_t group = q_heads / kv_heads;
  const std::vector<int64_t> contexts = o.smoke ? std::vector<int64_t>{100} : o.contexts;
  const std::vector<int64_t> batches = o.smoke ? std::vector<int64_t>{1, 2} : o.batches;
  for (int64_t ctx : contexts) {
    for (int64_t batch : batches) {
      const int64_t blocks_per_seq = (ctx + bs - 1) / bs;
      const int64_t blocks = batch * blocks_per_seq;
      const size_t kv_bytes = static_cast<size_t>(blocks * bs * kv_heads * hd) * 2 * 2;
      // Enough copies that a repeat never finds its KV in L2 (at least 256 MiB read per cycle).
      const int64_t copies = o.smoke ? 2 : std::max<int64_t>(2, (size_t{256} << 20) / kv_bytes + 1);
      const int64_t pool_blocks = copies * blocks;
      Device<__nv_bfloat16> k(static_cast<size_t>(pool_blocks * bs * kv_heads * hd)),
          v(static_cast<size_t>(pool_blocks * bs * kv_heads * hd));
      Upload(k.p, k.n, 3, 1.0f);
      Upload(v.p, v.n, 4, 1.0f);
      Device<float> q(batch * q_heads * hd), out(batch * q_heads * hd);
      Upload(q.p, q.n, 5, 1.0f);
      // Per copy: every sequence's blocks, scattered (a permutation, as a block allocator would).
      std::vector<int32_t> indices(pool_blocks), indptr(batch + 1), tiles(batch + 1), seq(batch),
          pos(batch);
      std::mt19937 rng(7);
      for (int64_t i = 0; i < pool_blocks; ++i) indices[i] = static_cast<int32_t>(i);
      for (int64_t cp = 0; cp < copies; ++cp) {
        std::shuffle(indices.begin() + cp * blocks, indices.begin() + (cp + 1) * blocks, rng);
      }
      for (int64_t s = 0; s <= batch; ++s) {
        indptr[s] = static_cast<int32_t>(s * blocks_per_seq);
        tiles[s] = static_cast<int32_t>(s);
      }
      for (int64_t s = 0; s < batch; ++s) {
        seq[s] = static_cast<int32_t>(s);
        pos[s] = static_cast<int32_t>(ctx - 1);
      }
      Device<int32_t> d_indices(pool_blocks), d_indptr(batch + 1), d_tiles(batch + 1), d_seq(batch),
          d_pos(batch);
      BENCH_CUDA(cudaMemcpy(d_indices.p, indices.data(), pool_blocks * 4, cudaMemcpyHostToDevice));
      BENCH_CUDA(cudaMemcpy(d_indptr.p, indptr.data(), (batch + 1) * 4, cudaMemcpyHostToDevice));
      BENCH_CUDA(cudaMemcpy(d_tiles.p, tiles.data(), (batch + 1) * 4, cudaMemcpyHostToDevice));
      BENCH_CUDA(cudaMemcpy(d_seq.p, seq.data(), batch * 4, cudaMemcpyHostToDevice));
      BENCH_CUDA(cudaMemcpy(d_pos.p, pos.data(), batch * 4, cudaMemcpyHostToDevice));
      const AttentionLaunch launch =
          PlanDecodeAttention(batch, kv_heads, group, hd, blocks_per_seq, sm_count);
      Device<float> ws(
          std::max<int64_t>(1, AttentionWorkspaceFloats(batch, q_heads, hd, launch.num_splits)));
      const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
      const double ms = MedianMs(stream, o.smoke ? 2 : o.repeats, [&](int i) {
        const PagedKvView view{d_indptr.p, d_indices.p + (i % copies) * blocks, bs};
        BENCH_CUDA(paged_attention<__nv_bfloat16>(out.p, q.p, k.p, v.p, view, d_tiles.p, batch,
                                                  d_seq.p, d_pos.p, batch, q_heads, kv_heads, hd,
                                                  scale, launch, ws.p, stream));
      });
      const double bytes = static_cast<double>(batch * ctx * kv_heads * hd * 2 * 2);
      const double gbs = bytes / (ms * 1e-3) / 1e9;
      const double fraction = gbs / c.copy_gbs;
      std::printf(
          "  paged attention ctx %7ld batch %3ld: %8.4f ms  %7.1f GB/s  %5.1f%% of copy"
          "  (%ld splits)\n",
          static_cast<long>(ctx), static_cast<long>(batch), ms, gbs, 100 * fraction,
          static_cast<long>(launch.num_splits));
      Emit(o, fmt::format(R"({{"bench":"paged_attention","context":{},"batch":{},"ms":{},)"
                          R"("gbs":{},"bandwidth_fraction":{},"splits":{}}})",
                          ctx, batch, ms, gbs, fraction, launch.num_splits));
    }
  }
}

// ---- the model ---------------------------------------------------------------------------------

ModelConfig Llama3_8B(const Options& o) {
  ModelConfig c;
  c.dim = o.smoke ? 256 : 4096;
  c.hidden_dim = o.smoke ? 512 : 14336;
  c.n_layers = o.smoke ? 2 : o.layers;
  c.n_heads = o.smoke ? 8 : 32;
  c.n_kv_heads = o.smoke ? 2 : 8;
  c.head_dim = c.dim / c.n_heads;
  c.vocab_size = o.smoke ? 1000 : 128256;
  c.max_seq_len = o.smoke ? 512 : 131072;
  c.rope_theta = 500000.0f;
  c.rms_norm_eps = 1e-5f;
  c.dtype = DType::kBF16;
  return c;
}

ShardWeights RandomWeights(const ModelConfig& c) {
  ShardWeights w;
  const int64_t q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  const float s = 0.02f;
  // Each matrix in the model's dtype (what the device holds), from one f32 draw at a time.
  auto fill = [&c](HostMatrix* m, int64_t rows, int64_t cols, uint64_t seed, float scale) {
    std::vector<float> v(rows * cols);
    FillRandom(&v, seed, scale);
    *m = HostMatrix::FromF32(v, rows, cols, c.dtype);
  };
  fill(&w.embedding, c.vocab_size, c.dim, 11, 1.0f);
  w.final_norm.assign(c.dim, 1.0f);
  fill(&w.lm_head, c.vocab_size, c.dim, 12, s);
  w.layers.resize(c.n_layers);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights& l = w.layers[i];
    const uint64_t seed = 100 + 16 * static_cast<uint64_t>(i);
    l.attn_norm.assign(c.dim, 1.0f);
    l.ffn_norm.assign(c.dim, 1.0f);
    fill(&l.wq, q, c.dim, seed + 1, s);
    fill(&l.wk, kv, c.dim, seed + 2, s);
    fill(&l.wv, kv, c.dim, seed + 3, s);
    fill(&l.wo, c.dim, q, seed + 4, s);
    fill(&l.w_gate, c.hidden_dim, c.dim, seed + 5, s);
    fill(&l.w_up, c.hidden_dim, c.dim, seed + 6, s);
    fill(&l.w_down, c.dim, c.hidden_dim, seed + 7, s);
  }
  return w;
}

// One sequence in table slot 0 on blocks 0.. of `tokens` tokens starting at `start`; the last
// token's logits. The plan sets the slot's whole table (released, then appended), so the same
// plan can run again and again.
StepPlan SequencePlan(int64_t start, int64_t tokens, int64_t block_size, int64_t vocab) {
  StepPlan p;
  for (int64_t i = 0; i < tokens; ++i) {
    p.tokens.push_back(static_cast<int32_t>((start + i) * 7919 % vocab));
    p.positions.push_back(static_cast<int32_t>(start + i));
  }
  p.qo_indptr = {0, static_cast<int32_t>(tokens)};
  const int64_t blocks = (start + tokens + block_size - 1) / block_size;
  p.released_slots = {0};
  p.append_slots = {0};
  for (int64_t b = 0; b < blocks; ++b) p.append_blocks.push_back(static_cast<int32_t>(b));
  p.append_indptr = {0, static_cast<int32_t>(blocks)};
  p.seq_slots = {0};
  p.logits_rows = {static_cast<int32_t>(tokens - 1)};
  return p;
}

void BenchModel(const Options& o, const Ceilings& c, MpiCommunicator* world, cudaStream_t stream) {
  const ModelConfig config = Llama3_8B(o);
  std::printf("  building a random %ld-layer model of Llama-3-8B's shape in host memory...\n",
              static_cast<long>(config.n_layers));
  std::fflush(stdout);
  const ShardWeights weights = RandomWeights(config);
  auto comm = NcclCommunicator::Create(world, stream);
  Check(comm.status());
  CudaShardOptions options;
  options.weight_dtype = DType::kBF16;
  options.kv_dtype = DType::kBF16;
  options.block_size = 16;
  const int64_t prefill = o.smoke ? 64 : o.prefill_tokens;
  const int64_t context = o.smoke ? 32 : o.decode_context;
  options.max_tokens_per_step = std::max(prefill, context);
  options.num_blocks = (std::max(prefill, context) + 64) / options.block_size + 2;
  options.cuda_graphs = true;
  auto model = CudaShardModel::Create(config, weights, options, comm->get());
  Check(model.status());
  std::vector<float> logits;

  // Prefill of `prefill` tokens from position 0: GEMM FLOPs of every token through every layer,
  // plus causal attention (QK^T and PV, half the square), plus the last token's logits.
  const StepPlan prefill_plan = SequencePlan(0, prefill, options.block_size, config.vocab_size);
  const double prefill_ms = MedianMs(stream, o.smoke ? 1 : std::max(3, o.repeats / 4),
                                     [&](int) { Check((*model)->Forward(prefill_plan, &logits)); });
  const int64_t q = config.n_heads * config.head_dim, kv = config.n_kv_heads * config.head_dim;
  const double layer_params =
      static_cast<double>(config.dim) * (2 * q + 2 * kv) + 3.0 * config.dim * config.hidden_dim;
  const double flops = 2.0 * prefill * layer_params * config.n_layers +
                       4.0 * config.n_layers * config.n_heads * config.head_dim *
                           (static_cast<double>(prefill) * (prefill + 1) / 2) +
                       2.0 * config.vocab_size * config.dim;
  const double tflops = flops / (prefill_ms * 1e-3) / 1e12;
  std::printf(
      "  prefill %ld tokens: %9.2f ms  %7.1f TFLOP/s  %5.1f%% of the cuBLAS GEMM ceiling"
      "  (%.0f tokens/s)\n",
      static_cast<long>(prefill), prefill_ms, tflops, 100 * tflops / c.gemm_tflops,
      prefill / (prefill_ms * 1e-3));
  Emit(o, fmt::format(R"({{"bench":"prefill","tokens":{},"ms":{},"tflops":{},)"
                      R"("gemm_fraction":{},"layers":{}}})",
                      prefill, prefill_ms, tflops, tflops / c.gemm_tflops, config.n_layers));

  // Decode at batch 1 after `context` cached tokens: the step reads every weight once (less the
  // embedding table, plus one row of it) and the sequence's KV.
  Check(
      (*model)->Forward(SequencePlan(0, context, options.block_size, config.vocab_size), &logits));
  const double decode_ms = MedianMs(stream, o.smoke ? 2 : o.repeats, [&](int) {
    Check((*model)->Forward(SequencePlan(context, 1, options.block_size, config.vocab_size),
                            &logits));  // the same position each time: a fixed-length step
  });
  const double bytes = static_cast<double>((*model)->decode_read_bytes()) +
                       static_cast<double>(context + 1) * (*model)->kv_bytes_per_token();
  const double gbs = bytes / (decode_ms * 1e-3) / 1e9;
  std::printf(
      "  decode batch 1 at context %ld: %7.3f ms/token  %7.1f GB/s  %5.1f%% of copy"
      "  (%.2f GB read per step)\n",
      static_cast<long>(context), decode_ms, gbs, 100 * gbs / c.copy_gbs, bytes / 1e9);
  Emit(o, fmt::format(R"({{"bench":"decode","context":{},"ms_per_token":{},"bytes_per_step":{},)"
                      R"("gbs":{},"bandwidth_fraction":{},"layers":{}}})",
                      context, decode_ms, bytes, gbs, gbs / c.copy_gbs, config.n_layers));
}

int Main(int argc, char** argv) {
  Options o;
  CLI::App app{"kvshard's GPU benchmarks, each against a ceiling measured in the same run"};
  app.add_flag("--smoke", o.smoke, "Toy sizes: check that the program runs (not a measurement)");
  app.add_flag("--json", o.json, "Also print one JSON object per result");
  app.add_option("--repeats", o.repeats, "Timed runs per figure (the median is reported)");
  app.add_option("--layers", o.layers, "Layers of the Llama-3-8B-shaped model (32 = the real one)");
  app.add_option("--decode-context", o.decode_context, "Cached tokens before the decode steps");
  app.add_option("--prefill-tokens", o.prefill_tokens, "Prompt tokens of the prefill");
  app.add_option("--contexts", o.contexts, "Contexts of the attention benchmark");
  app.add_option("--batches", o.batches, "Batch sizes of the attention benchmark");
  app.add_flag("--skip-model", o.skip_model, "Only the ceilings and the attention kernel");
  CLI11_PARSE(app, argc, argv);

  std::string why;
  if (UsableDeviceCount(&why) == 0) {
    std::fprintf(stderr, "kvshard_gpu_bench: no CUDA device (%s)\n", why.c_str());
    return 77;
  }
  auto world = MpiCommunicator::Create(MPI_COMM_WORLD);
  Check(world.status());
  BENCH_CUDA(cudaSetDevice(0));
  cudaStream_t stream = nullptr;
  BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  int sm_count = 1;
  BENCH_CUDA(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, 0));
  std::string name = "device 0";
#ifndef KVSHARD_CUDA_EMU
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) name = prop.name;
#else
  name = "the CPU emulator (figures mean nothing)";
#endif
  std::printf("kvshard_gpu_bench on %s, %d SMs\n", name.c_str(), sm_count);
  Emit(o, fmt::format(R"({{"bench":"device","name":"{}","sms":{}}})", name, sm_count));
  auto blas = CublasHandle::Create();
  Check(blas.status());
  const ModelConfig shape = Llama3_8B(o);
  const Ceilings c = MeasureCeilings(o, stream, **blas, shape.dim, shape.hidden_dim);
  BenchAttention(o, c, stream, sm_count);
  if (!o.skip_model) BenchModel(o, c, world->get(), stream);
  cudaStreamDestroy(stream);
  return 0;
}

}  // namespace
}  // namespace kvshard::cuda

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const int rc = kvshard::cuda::Main(argc, argv);
  MPI_Finalize();
  return rc;
}
