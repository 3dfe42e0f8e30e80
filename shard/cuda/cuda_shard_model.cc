#include "shard/cuda/cuda_shard_model.h"

#include <algorithm>
#include <cmath>
#include <new>
#include <type_traits>

#include "common/cuda/cuda_check.h"
#include "kernels/cuda/activation.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/kv_append.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "shard/layer_program.h"
#include "shard/rope_frequencies.h"
#include "shard/safetensors.h"

namespace kvshard::cuda {
namespace {

StatusOr<DeviceBuffer> Floats(int64_t n, const char* what) {
  return DeviceBuffer::Allocate(static_cast<size_t>(n) * sizeof(float), what);
}

}  // namespace

StatusOr<std::unique_ptr<CudaShardModel>> CudaShardModel::Load(const std::string& model_dir,
                                                               const ModelConfig& config,
                                                               const CudaShardOptions& options,
                                                               DeviceCommunicator* comm) {
  KVS_ASSIGN_OR_RETURN(const TpLayout layout,
                       MakeTpLayout(config, comm->size(), comm->rank(), options.seq_shards));
  KVS_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(model_dir));
  KVS_ASSIGN_OR_RETURN(const ShardWeights weights,
                       LoadShardWeights(*checkpoint, config, layout, options.weight_dtype));
  return Create(config, weights, options, comm);
}

StatusOr<std::unique_ptr<CudaShardModel>> CudaShardModel::Create(const ModelConfig& config,
                                                                 const ShardWeights& weights,
                                                                 const CudaShardOptions& options,
                                                                 DeviceCommunicator* comm) {
  std::unique_ptr<CudaShardModel> m(new CudaShardModel());
  m->config_ = config;
  m->options_ = options;
  m->comm_ = comm;
  m->stream_ = comm->stream();
  KVS_ASSIGN_OR_RETURN(m->layout_,
                       MakeTpLayout(config, comm->size(), comm->rank(), options.seq_shards));
  const TpLayout& l = m->layout_;
  if (options.max_tokens_per_step <= 0 || options.block_size <= 0) {
    return InvalidArgument("max tokens per step ({}) and block size ({}) must be positive",
                           options.max_tokens_per_step, options.block_size);
  }
  std::string why;
  if (!AttentionSupported(l.q_heads, l.kv_heads, config.head_dim, &why)) {
    return InvalidArgument("{}", why);
  }
  if (weights.layers.size() != static_cast<size_t>(config.n_layers)) {
    return InvalidArgument("weights have {} layers, the config {}", weights.layers.size(),
                           config.n_layers);
  }
  int device = 0;
  KVS_RETURN_IF_ERROR(KVS_CUDA(cudaGetDevice(&device)));
  int sm_count = 1;
  KVS_RETURN_IF_ERROR(
      KVS_CUDA(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device)));
  // Graphs cannot capture the legacy default stream, nor host-staged collectives.
  m->use_graphs_ = options.cuda_graphs && comm->capturable() && m->stream_ != nullptr;

  m->stage_.kv_heads = l.kv_heads;
  m->stage_.group = l.q_heads / l.kv_heads;
  m->stage_.head_dim = config.head_dim;
  // Table entries are logical blocks: one id on every seq shard, block_size x seq_shards positions.
  const int64_t logical = options.block_size * l.seq_shards;
  m->stage_.max_kv_blocks = (config.MaxPositions() + logical - 1) / logical;
  m->stage_.sm_count = sm_count;
  m->stage_.padding.pad_decode = m->use_graphs_;

  // What this process holds on the device is measured from here (cuBLAS, weights, workspaces),
  // so ranks sharing a GPU each count only their own memory against their share.
  size_t free_at_start = 0, total_memory = 0;
  KVS_RETURN_IF_ERROR(KVS_CUDA(cudaMemGetInfo(&free_at_start, &total_memory)));
  m->free_at_start_ = free_at_start;
  KVS_ASSIGN_OR_RETURN(m->blas_, CublasHandle::Create());
  KVS_ASSIGN_OR_RETURN(m->weights_, UploadWeights(weights, options.weight_dtype));
  const std::vector<float> inv_freq = RopeInverseFrequencies(config);
  KVS_ASSIGN_OR_RETURN(m->inv_freq_, Floats(static_cast<int64_t>(inv_freq.size()), "inv_freq"));
  KVS_RETURN_IF_ERROR(
      KVS_CUDA(cudaMemcpy(m->inv_freq_.get(), inv_freq.data(), inv_freq.size() * sizeof(float),
                          cudaMemcpyHostToDevice)));
  KVS_RETURN_IF_ERROR(m->AllocateWorkspaces());
  KVS_RETURN_IF_ERROR(m->AllocateKv());
  KVS_RETURN_IF_ERROR(m->CreateTables());
  // The uploads (a cudaMemcpy from pageable memory may return before its DMA has landed) and the
  // KV cache's cudaMemset run on the legacy default stream, which a cudaStreamNonBlocking compute
  // stream does not wait for: without this, the first step's kernels could read weights not yet
  // copied, or have their KV appends zeroed by the late memset.
  KVS_RETURN_IF_ERROR(KVS_CUDA(cudaDeviceSynchronize()));
  return m;
}

Status CudaShardModel::AllocateWorkspaces() {
  const TpLayout& l = layout_;
  const int64_t T = options_.max_tokens_per_step, dim = config_.dim, hd = config_.head_dim;
  const int64_t act = static_cast<int64_t>(DTypeSize(options_.weight_dtype));
  const bool f32 = options_.weight_dtype == DType::kF32;
  const bool root = comm_->rank() == 0;
  KVS_ASSIGN_OR_RETURN(x_, Floats(T * dim, "residual stream"));
  KVS_ASSIGN_OR_RETURN(xn_, DeviceBuffer::Allocate(T * dim * act, "normalised activations"));
  KVS_ASSIGN_OR_RETURN(q_, Floats(T * l.q_heads * hd, "queries"));
  KVS_ASSIGN_OR_RETURN(k_, Floats(T * l.kv_heads * hd, "keys"));
  KVS_ASSIGN_OR_RETURN(v_, Floats(T * l.kv_heads * hd, "values"));
  KVS_ASSIGN_OR_RETURN(att_, Floats(T * l.q_heads * (hd + 1), "attention output"));
  if (l.seq_shards > 1) {
    KVS_ASSIGN_OR_RETURN(att_parts_,
                         Floats(l.seq_shards * T * l.q_heads * (hd + 1), "attention partials"));
    KVS_ASSIGN_OR_RETURN(att_merged_, Floats(T * l.o_cols, "merged attention"));
  }
  if (config_.streaming()) {
    KVS_ASSIGN_OR_RETURN(sink_q_, Floats(T * l.q_heads * hd, "queries rotated to the sinks"));
    KVS_ASSIGN_OR_RETURN(sink_parts_,
                         Floats(2 * T * l.q_heads * (hd + 1), "sink and window parts"));
    KVS_ASSIGN_OR_RETURN(sink_pos_,
                         DeviceBuffer::Allocate(2 * T * sizeof(int32_t), "sink positions"));
  }
  KVS_ASSIGN_OR_RETURN(att_act_,
                       DeviceBuffer::Allocate(f32 ? 0 : T * l.q_heads * hd * act, "attention out"));
  KVS_ASSIGN_OR_RETURN(partial_, Floats(T * dim, "partial sums"));
  KVS_ASSIGN_OR_RETURN(gate_, Floats(T * l.ffn, "MLP gate"));
  KVS_ASSIGN_OR_RETURN(up_, Floats(T * l.ffn, "MLP up"));
  KVS_ASSIGN_OR_RETURN(act_, DeviceBuffer::Allocate(T * l.ffn * act, "MLP activation"));
  KVS_ASSIGN_OR_RETURN(rows_, Floats(T * dim, "logits rows"));
  KVS_ASSIGN_OR_RETURN(rows_act_, DeviceBuffer::Allocate(f32 ? 0 : T * dim * act, "logits rows"));
  KVS_ASSIGN_OR_RETURN(local_logits_, Floats(T * l.vocab, "logits slice"));
  KVS_ASSIGN_OR_RETURN(gathered_,
                       Floats(root && l.tp > 1 ? T * config_.vocab_size : 0, "gathered logits"));
  // Split-K partials: the largest over every decode step size up to T.
  int64_t attention_floats = 0;
  for (int64_t t = 1; t <= T; ++t) {
    const AttentionLaunch a =
        PlanDecodeAttention(t, l.kv_heads, stage_.group, hd, stage_.max_kv_blocks, stage_.sm_count);
    attention_floats =
        std::max(attention_floats, AttentionWorkspaceFloats(t, l.q_heads, hd, a.num_splits));
  }
  KVS_ASSIGN_OR_RETURN(attention_ws_, Floats(attention_floats, "attention split-K partials"));
  plan_layout_ = StepInputsLayout::Make(T);
  shape_.result_rows.reserve(T);
  KVS_ASSIGN_OR_RETURN(plan_host_, PinnedBuffer::Allocate(plan_layout_.bytes, "step plan"));
  KVS_ASSIGN_OR_RETURN(plan_device_, DeviceBuffer::Allocate(plan_layout_.bytes, "step plan"));
  KVS_ASSIGN_OR_RETURN(
      logits_host_,
      PinnedBuffer::Allocate(root ? T * config_.vocab_size * sizeof(float) : 0, "logits"));
  gather_counts_.resize(l.tp);
  return Status::Ok();
}

Status CudaShardModel::AllocateKv() {
  const size_t row = static_cast<size_t>(layout_.kv_heads * config_.head_dim);
  // A quantized row's scale sits beside the codes: one f32 per (slot, KV head), K and V.
  const size_t scale_row =
      IsQuantizedKv(options_.kv_dtype) ? static_cast<size_t>(layout_.kv_heads) * sizeof(float) : 0;
  const size_t block_bytes = static_cast<size_t>(options_.block_size) *
                             (row * DTypeSize(options_.kv_dtype) + scale_row) * 2 *
                             static_cast<size_t>(config_.n_layers);
  int64_t blocks = options_.num_blocks;
  if (blocks <= 0) {
    size_t free = 0, total = 0;
    KVS_RETURN_IF_ERROR(KVS_CUDA(cudaMemGetInfo(&free, &total)));
    // This process's share of the device, less what it already holds, and never more than is
    // free now (another rank on the same GPU may be allocating too).
    const double used = static_cast<double>(free_at_start_ > free ? free_at_start_ - free : 0);
    const double budget = std::min(options_.memory_fraction * static_cast<double>(total) - used,
                                   0.95 * static_cast<double>(free));
    blocks = static_cast<int64_t>(std::floor(budget / static_cast<double>(block_bytes))) - 1;
    if (blocks < 1) {
      return ResourceExhausted(
          "no room for a KV cache on {}: {:.2f} of {:.2f} GiB in use (weights {:.2f} GiB and "
          "workspaces), memory fraction {}, {} bytes per KV block",
          WhereAmI(), used / (1 << 30), static_cast<double>(total) / (1 << 30),
          static_cast<double>(weights_.bytes) / (1 << 30), options_.memory_fraction, block_bytes);
    }
  }
  blocks = std::min<int64_t>(blocks, INT32_MAX - 1);
  num_blocks_ = blocks;
  stage_.padding.scratch_block = static_cast<int32_t>(blocks);
  const size_t slots = static_cast<size_t>(blocks + 1) * options_.block_size;
  // Codes (or values) of every layer, then the scales of every layer (256-byte aligned).
  kv_layer_bytes_ = (slots * row * DTypeSize(options_.kv_dtype) + 255) / 256 * 256;
  kv_scale_layer_bytes_ = slots * scale_row;
  KVS_ASSIGN_OR_RETURN(
      kv_, DeviceBuffer::Allocate(2 * config_.n_layers * (kv_layer_bytes_ + kv_scale_layer_bytes_),
                                  "the KV cache"));
  return KVS_CUDA(cudaMemset(kv_.get(), 0, kv_.bytes()));
}

Status CudaShardModel::AgreeOnBlocks() {
  int negated = -static_cast<int>(num_blocks_);  // the minimum as a maximum (blocks < 2^31)
  KVS_RETURN_IF_ERROR(comm_->AllReduceMax(&negated));
  num_blocks_ = -static_cast<int64_t>(negated);  // the scratch block stays where it is
  BlockTableShape shape = tables_.shape();
  shape.num_blocks = num_blocks_;
  KVS_ASSIGN_OR_RETURN(tables_, BlockTables::Create(shape));
  return Status::Ok();
}

Status CudaShardModel::CreateTables() {
  const int64_t stride = std::max<int64_t>(stage_.max_kv_blocks, 1);
  if (options_.max_seqs <= 0) return InvalidArgument("max_seqs must be positive");
  KVS_ASSIGN_OR_RETURN(tables_,
                       BlockTables::Create(BlockTableShape{options_.max_seqs, stride, num_blocks_,
                                                           layout_.Geometry(options_.block_size)}));
  stage_.padding.scratch_slot = static_cast<int32_t>(options_.max_seqs);
  const size_t bytes = static_cast<size_t>((options_.max_seqs + 1) * stride) * sizeof(int32_t);
  KVS_ASSIGN_OR_RETURN(tables_device_, DeviceBuffer::Allocate(bytes, "block tables"));
  KVS_RETURN_IF_ERROR(KVS_CUDA(cudaMemset(tables_device_.get(), 0, bytes)));
  // The scratch row: its first block is the scratch block, where padding tokens live.
  return KVS_CUDA(cudaMemcpy(tables_device_.as<int32_t>() + options_.max_seqs * stride,
                             &stage_.padding.scratch_block, sizeof(int32_t),
                             cudaMemcpyHostToDevice));
}

Status CudaShardModel::UploadAppends(const StepPlan& plan) {
  const int64_t stride = tables_.shape().stride;
  for (size_t u = 0; u < plan.append_slots.size(); ++u) {
    const int64_t slot = plan.append_slots[u];
    const int64_t n = plan.append_indptr[u + 1] - plan.append_indptr[u];
    if (n == 0) continue;
    const int64_t at = slot * stride + tables_.length(slot) - n;
    KVS_RETURN_IF_ERROR(
        KVS_CUDA(cudaMemcpyAsync(tables_device_.as<int32_t>() + at, tables_.tables() + at,
                                 n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_)));
  }
  return Status::Ok();
}

int64_t CudaShardModel::decode_read_bytes() const {
  const int64_t element = static_cast<int64_t>(DTypeSize(weights_.dtype));
  return weights_.bytes - static_cast<int64_t>(weights_.embedding.bytes()) + config_.dim * element;
}

int64_t CudaShardModel::kv_bytes_per_token() const {
  const int64_t scale = IsQuantizedKv(options_.kv_dtype) ? static_cast<int64_t>(sizeof(float)) : 0;
  return 2 * config_.n_layers * layout_.kv_heads *
         (config_.head_dim * static_cast<int64_t>(DTypeSize(options_.kv_dtype)) + scale);
}

CudaShardModel::~CudaShardModel() {
  for (auto& [bucket, exec] : graphs_) cudaGraphExecDestroy(exec);
}

float* CudaShardModel::KvScale(int64_t layer, int which) const {
  if (kv_scale_layer_bytes_ == 0) return nullptr;
  return reinterpret_cast<float*>(static_cast<std::byte*>(kv_.get()) +
                                  2 * config_.n_layers * kv_layer_bytes_ +
                                  (2 * layer + which) * kv_scale_layer_bytes_);
}

Status CudaShardModel::Forward(const StepPlan& plan, std::vector<float>* logits) {
  KVS_RETURN_IF_ERROR(tables_.Apply(plan, config_.vocab_size, options_.max_tokens_per_step));
  KVS_RETURN_IF_ERROR(UploadAppends(plan));
  // KV eviction: the rows whose queries score the prompt positions (Attention copies them out).
  KVS_RETURN_IF_ERROR(evict_q_.Prepare(plan, config_.n_layers, layout_.q_heads * config_.head_dim));
  // The staging buffer is free: the previous step ended with a Synchronize.
  StepShape& shape = shape_;
  KVS_RETURN_IF_ERROR(StagePlan(plan, tables_, plan_layout_, stage_, plan_host_.get(), &shape));
  KVS_RETURN_IF_ERROR(KVS_CUDA(cudaMemcpyAsync(
      plan_device_.get(), plan_host_.get(), shape.upload_bytes, cudaMemcpyHostToDevice, stream_)));
  // A step that evicts runs eagerly: its queries are copied to the host as it runs.
  KVS_RETURN_IF_ERROR(shape.padded && evict_q_.empty() ? RunDecodeGraph(shape) : Enqueue(shape));
  KVS_RETURN_IF_ERROR(comm_->Synchronize());
  if (!plan.evict_seqs.empty()) KVS_RETURN_IF_ERROR(EvictAny(plan));
  if (comm_->rank() != 0 || shape.result_rows.empty()) return Status::Ok();
  logits->resize(shape.result_rows.size() * config_.vocab_size);
  UnpackLogits(logits_host_.as<float>(), layout_, shape.rows, shape.result_rows, config_.vocab_size,
               logits->data());
  return Status::Ok();
}

Status CudaShardModel::RunDecodeGraph(const StepShape& shape) {
  auto it = graphs_.find(shape.tokens);
  if (it == graphs_.end()) {
    if (warmed_.insert(shape.tokens).second) return Enqueue(shape);
    cudaGraph_t graph = nullptr;
    KVS_RETURN_IF_ERROR(
        KVS_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal)));
    const Status enqueued = Enqueue(shape);
    const Status ended = KVS_CUDA(cudaStreamEndCapture(stream_, &graph));  // always end capture
    if (!enqueued.ok() || !ended.ok()) {
      if (graph) cudaGraphDestroy(graph);
      return enqueued.ok() ? ended : enqueued;
    }
    cudaGraphExec_t exec = nullptr;
    const Status instantiated = KVS_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    cudaGraphDestroy(graph);
    KVS_RETURN_IF_ERROR(instantiated);
    it = graphs_.emplace(shape.tokens, exec).first;
  }
  return KVS_CUDA(cudaGraphLaunch(it->second, stream_));
}

Status CudaShardModel::Enqueue(const StepShape& shape) {
  switch (options_.weight_dtype) {
    case DType::kF32:
      switch (options_.kv_dtype) {
        case DType::kF32: return EnqueueStep<float, float>(shape);
        case DType::kF16: return EnqueueStep<float, __half>(shape);
        case DType::kBF16: return EnqueueStep<float, __nv_bfloat16>(shape);
        case DType::kI8: return EnqueueStep<float, int8_t>(shape);
        case DType::kF8E4M3: return EnqueueStep<float, __nv_fp8_e4m3>(shape);
      }
      break;
    case DType::kF16:
      switch (options_.kv_dtype) {
        case DType::kF32: return EnqueueStep<__half, float>(shape);
        case DType::kF16: return EnqueueStep<__half, __half>(shape);
        case DType::kBF16: return EnqueueStep<__half, __nv_bfloat16>(shape);
        case DType::kI8: return EnqueueStep<__half, int8_t>(shape);
        case DType::kF8E4M3: return EnqueueStep<__half, __nv_fp8_e4m3>(shape);
      }
      break;
    case DType::kBF16:
      switch (options_.kv_dtype) {
        case DType::kF32: return EnqueueStep<__nv_bfloat16, float>(shape);
        case DType::kF16: return EnqueueStep<__nv_bfloat16, __half>(shape);
        case DType::kBF16: return EnqueueStep<__nv_bfloat16, __nv_bfloat16>(shape);
        case DType::kI8: return EnqueueStep<__nv_bfloat16, int8_t>(shape);
        case DType::kF8E4M3: return EnqueueStep<__nv_bfloat16, __nv_fp8_e4m3>(shape);
      }
      break;
    case DType::kI8:
    case DType::kF8E4M3: break;  // never a weight dtype
  }
  return Internal("unknown dtype");
}

// The CUDA kernels and cuBLAS as the layer program's ops (shard/layer_program.h): every op
// enqueues on the model's stream; nothing waits.
template <typename Act, typename KV>
class CudaOps {
 public:
  CudaOps(CudaShardModel& m, const StepShape& s)
      : m_(m),
        c_(m.config_),
        l_(m.layout_),
        s_(s),
        p_(StepInputs::At(m.plan_device_.get(), m.plan_layout_)),
        st_(m.stream_) {}

  Status Embed(int64_t T) {
    return KVS_CUDA(
        embedding<Act>(F(Buf::kX), m_.weights_.embedding.as<Act>(), p_.tokens, T, c_.dim, st_));
  }
  Status Norm(int64_t layer, NormWeight w, int64_t T) {
    return KVS_CUDA(
        rmsnorm<Act>(A(Buf::kXn), F(Buf::kX), NormOf(layer, w), T, c_.dim, c_.rms_norm_eps, st_));
  }
  Status AddNorm(int64_t layer, NormWeight w, int64_t T) {
    return KVS_CUDA(add_rmsnorm<Act>(F(Buf::kX), F(Buf::kPartial), A(Buf::kXn), NormOf(layer, w), T,
                                     c_.dim, c_.rms_norm_eps, st_));
  }
  Status Gemm(Buf out, Buf in, int64_t layer, Proj p, int64_t T, int64_t k, int64_t n) {
    return KVS_CUBLAS(
        matmul<Act>(*m_.blas_, F(out), A(in), WeightOf(layer, p), T, k, n, false, st_));
  }
  Status GemmInput(Buf a, int64_t n) {
    if constexpr (kF32) {
      return Status::Ok();
    } else {
      return KVS_CUDA(convert_from_f32<Act>(A(a), F(a), n, st_));
    }
  }
  Status Rope(Buf a, int64_t heads, int64_t T) {
    return KVS_CUDA(rope(F(a), p_.rope_positions, m_.inv_freq_.template as<float>(), T, heads,
                         c_.head_dim, RopePairing::kHalf, st_));
  }
  Status KvAppend(int64_t layer, int64_t T) {
    return KVS_CUDA(kv_append<KV>(m_.template KvLayer<KV>(layer, 0),
                                  m_.template KvLayer<KV>(layer, 1), F(Buf::kK), F(Buf::kV),
                                  p_.slots, T, l_.kv_heads, c_.head_dim, st_, m_.KvScale(layer, 0),
                                  m_.KvScale(layer, 1)));
  }
  Status Attention(int64_t layer, int64_t T) {
    const int64_t width = l_.q_heads * c_.head_dim;
    // KV eviction after this step: the observation window's queries of every layer, kept.
    for (size_t e = 0; e < m_.evict_q_.size(); ++e) {
      const auto [row0, w] = m_.evict_q_.window(e);
      KVS_RETURN_IF_ERROR(
          KVS_CUDA(cudaMemcpyAsync(m_.evict_q_.at(e, layer), F(Buf::kQ) + row0 * width,
                                   w * width * sizeof(float), cudaMemcpyDeviceToHost, st_)));
    }
    float* lse = l_.seq_shards > 1 ? F(Buf::kAtt) + T * width : nullptr;
    if (!c_.streaming()) {
      return Attend(layer, F(Buf::kAtt), lse, F(Buf::kQ), p_.positions, T, c_.LayerWindow(layer));
    }
    // Attention sinks, as the CPU model runs them (shard/shard_model.cc): the window with the
    // query as it is, the sinks with the query rotated back to its cache index, merged exactly.
    const int64_t N = c_.attention_sinks, W = c_.stream_window;
    if (N == 0) return Attend(layer, F(Buf::kAtt), lse, F(Buf::kQ), p_.positions, T, W);
    float* parts = m_.sink_parts_.template as<float>();  // [sinks, window] x ([T, width], lse)
    float* window = parts + T * (width + l_.q_heads);
    KVS_RETURN_IF_ERROR(
        Attend(layer, window, window + T * width, F(Buf::kQ), p_.positions, T, W, N));
    int32_t* sink_last = m_.sink_pos_.template as<int32_t>();
    int32_t* shift = sink_last + T;
    float* q_sink = m_.sink_q_.template as<float>();
    KVS_RETURN_IF_ERROR(
        KVS_CUDA(attention_sink_positions(shift, sink_last, p_.positions, T, N, W, st_)));
    KVS_RETURN_IF_ERROR(KVS_CUDA(cudaMemcpyAsync(q_sink, F(Buf::kQ), T * width * sizeof(float),
                                                 cudaMemcpyDeviceToDevice, st_)));
    KVS_RETURN_IF_ERROR(KVS_CUDA(rope(q_sink, shift, m_.inv_freq_.template as<float>(), T,
                                      l_.q_heads, c_.head_dim, RopePairing::kHalf, st_)));
    KVS_RETURN_IF_ERROR(Attend(layer, parts, parts + T * width, q_sink, sink_last, T, 0));
    return KVS_CUDA(merge_attention_columns(F(Buf::kAtt), parts, 2, T, l_.q_heads, c_.head_dim, 0,
                                            width, st_, lse));
  }
  // out: f32 [T, q_heads, head_dim]; lse: f32 [T, q_heads] or null; q: f32 [T, q_heads,
  // head_dim]; positions: int32 [T] (device).
  Status Attend(int64_t layer, float* out, float* lse, const float* q, const int32_t* positions,
                int64_t T, int64_t window, int64_t floor = 0) {
    const PagedKvView view{p_.block_indptr, m_.tables_device_.template as<int32_t>(),
                           m_.tables_.shape().geometry};
    return KVS_CUDA(paged_attention<KV>(
        out, q, m_.template KvLayer<KV>(layer, 0), m_.template KvLayer<KV>(layer, 1), view,
        p_.tiles, s_.num_tiles, p_.token_seq, positions, T, l_.q_heads, l_.kv_heads, c_.head_dim,
        1.0f / std::sqrt(static_cast<float>(c_.head_dim)), s_.attention,
        m_.attention_ws_.template as<float>(), st_, lse, m_.KvScale(layer, 0), m_.KvScale(layer, 1),
        window, floor));
  }
  Status MergeAttention(int64_t T) {
    return KVS_CUDA(merge_attention_columns(F(Buf::kAttMerged), F(Buf::kAttParts), l_.seq_shards, T,
                                            l_.q_heads, c_.head_dim, l_.o_col0, l_.o_cols, st_));
  }
  Status SiluMul(int64_t n) {
    return KVS_CUDA(silu_mul<Act>(A(Buf::kMlp), F(Buf::kGate), F(Buf::kUp), n, st_));
  }
  Status GatherRows(int64_t rows) {
    return KVS_CUDA(
        embedding<Act>(F(Buf::kLogitsIn), A(Buf::kXn), p_.logits_rows, rows, c_.dim, st_));
  }
  Status Output(Buf a, int64_t rows) {
    return KVS_CUDA(cudaMemcpyAsync(m_.logits_host_.get(), F(a),
                                    rows * c_.vocab_size * sizeof(float), cudaMemcpyDeviceToHost,
                                    st_));
  }
  float* Data(Buf a) { return F(a); }

 private:
  static constexpr bool kF32 = std::is_same_v<Act, float>;

  // An activation's f32 buffer.
  float* F(Buf a) const {
    switch (a) {
      case Buf::kX: return m_.x_.template as<float>();
      case Buf::kXn: return nullptr;  // held only as Act
      case Buf::kQ: return m_.q_.template as<float>();
      case Buf::kK: return m_.k_.template as<float>();
      case Buf::kV: return m_.v_.template as<float>();
      case Buf::kAtt: return m_.att_.template as<float>();
      case Buf::kAttParts: return m_.att_parts_.template as<float>();
      case Buf::kAttMerged: return m_.att_merged_.template as<float>();
      case Buf::kPartial: return m_.partial_.template as<float>();
      case Buf::kGate: return m_.gate_.template as<float>();
      case Buf::kUp: return m_.up_.template as<float>();
      case Buf::kMlp: return nullptr;  // held only as Act
      case Buf::kLogitsIn: return m_.rows_.template as<float>();
      case Buf::kLogits: return m_.local_logits_.template as<float>();
      case Buf::kGathered: return m_.gathered_.template as<float>();
    }
    return nullptr;
  }
  // An activation as a GEMM input: in the weights' dtype (for f32 weights, the f32 buffer).
  Act* A(Buf a) const {
    switch (a) {
      case Buf::kXn: return m_.xn_.template as<Act>();
      case Buf::kMlp: return m_.act_.template as<Act>();
      case Buf::kAtt:
      case Buf::kAttMerged:  // [T, o_cols] fits att_act_'s [T, q_heads * head_dim]
        return kF32 ? reinterpret_cast<Act*>(F(a)) : m_.att_act_.template as<Act>();
      case Buf::kLogitsIn:
        return kF32 ? reinterpret_cast<Act*>(F(a)) : m_.rows_act_.template as<Act>();
      default: return reinterpret_cast<Act*>(F(a));
    }
  }
  const float* NormOf(int64_t layer, NormWeight w) const {
    switch (w) {
      case NormWeight::kAttention: return m_.weights_.layers[layer].attn_norm.template as<float>();
      case NormWeight::kMlp: return m_.weights_.layers[layer].ffn_norm.template as<float>();
      case NormWeight::kFinal: return m_.weights_.final_norm.template as<float>();
    }
    return nullptr;
  }
  const Act* WeightOf(int64_t layer, Proj p) const {
    const DeviceLayerWeights& w = m_.weights_.layers[layer];
    switch (p) {
      case Proj::kQ: return w.wq.template as<Act>();
      case Proj::kK: return w.wk.template as<Act>();
      case Proj::kV: return w.wv.template as<Act>();
      case Proj::kO: return w.wo.template as<Act>();
      case Proj::kGate: return w.w_gate.template as<Act>();
      case Proj::kUp: return w.w_up.template as<Act>();
      case Proj::kDown: return w.w_down.template as<Act>();
      case Proj::kLmHead: return m_.weights_.lm_head.template as<Act>();
    }
    return nullptr;
  }

  CudaShardModel& m_;
  const ModelConfig& c_;
  const TpLayout& l_;
  const StepShape& s_;
  const StepInputs p_;  // device pointers
  cudaStream_t st_;
};

template <typename Act, typename KV>
Status CudaShardModel::EnqueueStep(const StepShape& s) {
  CudaOps<Act, KV> ops(*this, s);
  return RunLayerProgram(ops, *comm_, config_, layout_, ProgramStep{s.tokens, s.rows},
                         &gather_counts_);
}

}  // namespace kvshard::cuda
