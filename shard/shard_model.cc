#include "shard/shard_model.h"

#include <omp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/kv_eviction.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "plan/kv_eviction.h"
#include "shard/kv_eviction_pass.h"
#include "shard/layer_program.h"
#include "shard/rope_frequencies.h"

namespace kvshard {
namespace {

// Calls f with the matrix's data as the element type it is held in.
template <typename F>
void WithElements(const HostMatrix& m, F&& f) {
  switch (m.dtype()) {
    case DType::kF32: f(static_cast<const float*>(m.data())); return;
    case DType::kF16: f(static_cast<const f16_t*>(m.data())); return;
    case DType::kBF16: f(static_cast<const bf16_t*>(m.data())); return;
    case DType::kI8:
    case DType::kF8E4M3: return;  // KV dtypes only: never a weight's (ParseDType rejects them)
  }
}

}  // namespace

// The CPU kernels as the layer program's ops (shard/layer_program.h), over the model's workspace.
template <typename KV>
class CpuOps {
 public:
  CpuOps(ShardModel& m, const StepInputs& in) : m_(m), c_(m.config_), l_(m.layout_), in_(in) {}

  Status Embed(int64_t T) {
    WithElements(m_.weights_.embedding,
                 [&](const auto* table) { embedding(m_.x_.data(), table, in_.tokens, T, c_.dim); });
    return Status::Ok();
  }
  Status Norm(int64_t layer, NormWeight w, int64_t T) {
    rmsnorm(m_.xn_.data(), m_.x_.data(), NormOf(layer, w), T, c_.dim, c_.rms_norm_eps);
    return Status::Ok();
  }
  Status AddNorm(int64_t layer, NormWeight w, int64_t T) {
    add_rmsnorm(m_.xn_.data(), m_.x_.data(), m_.partial_.data(), NormOf(layer, w), T, c_.dim,
                c_.rms_norm_eps);
    return Status::Ok();
  }
  Status Gemm(Buf out, Buf in, int64_t layer, Proj p, int64_t T, int64_t k, int64_t n) {
    const HostMatrix& m = WeightOf(layer, p);
    WithElements(m, [&](const auto* w) {
      using W = std::remove_cv_t<std::remove_pointer_t<decltype(w)>>;
      if constexpr (std::is_same_v<W, float>) {
        matmul(Data(out), Data(in), w, T, k, n);
      } else if (m_.options_.bf16_gemm_inputs && matmul_uses_gemm(T, k, n)) {
        gemm_bf16_inputs(Data(out), Data(in), w, m.packed(), T, k, n);
      } else if (m.packed()) {
        matmul_packed(Data(out), Data(in), w, T, k, n);
      } else {
        matmul(Data(out), Data(in), w, T, k, n);
      }
    });
    return Status::Ok();
  }
  // Activations stay f32: 16-bit weights are widened inside matmul (or, with bf16_gemm_inputs,
  // the activations rounded to bf16 inside gemm_bf16_inputs).
  Status GemmInput(Buf, int64_t) { return Status::Ok(); }
  Status Rope(Buf a, int64_t heads, int64_t T) {
    rope(Data(a), in_.rope_positions, m_.inv_freq_.data(), T, heads, c_.head_dim,
         RopePairing::kHalf);
    return Status::Ok();
  }
  Status KvAppend(int64_t layer, int64_t T) {
    kv_append<KV>(Pool(layer, 0), Pool(layer, 1), m_.k_.data(), m_.v_.data(), in_.slots, T,
                  l_.kv_heads, c_.head_dim, m_.kv_->k_scale(layer), m_.kv_->v_scale(layer));
    return Status::Ok();
  }
  Status Attention(int64_t layer, int64_t T) {
    const PagedKvView view{in_.block_indptr, m_.tables_.tables(), m_.tables_.shape().geometry};
    float* lse = l_.seq_shards > 1 ? m_.att_.data() + T * l_.q_heads * c_.head_dim : nullptr;
    // KV eviction after this step: the observation window's queries of every layer, kept.
    const int64_t q_width = l_.q_heads * c_.head_dim;
    for (size_t e = 0; e < m_.evict_q_.size(); ++e) {
      const auto [row0, w] = m_.evict_q_.window(e);
      std::memcpy(m_.evict_q_.at(e, layer), m_.q_.data() + row0 * q_width,
                  w * q_width * sizeof(float));
    }
    if (c_.streaming()) return StreamingAttention(layer, T, view, lse);
    paged_attention<KV>(m_.att_.data(), m_.q_.data(), Pool(layer, 0), Pool(layer, 1), view,
                        in_.token_seq, in_.positions, T, l_.q_heads, l_.kv_heads, c_.head_dim,
                        1.0f / std::sqrt(static_cast<float>(c_.head_dim)), lse,
                        m_.kv_->k_scale(layer), m_.kv_->v_scale(layer), c_.LayerWindow(layer));
    return Status::Ok();
  }
  // Attention sinks (StreamingLLM, positions within the cache): the cache holds the first N
  // positions and the window [max(N, p - W + 1), p] of a query at position p, which sits at cache
  // index c = p - d, d = max(0, p - W + 1 - N) positions dropped. RoPE scores depend on position
  // differences only, so the window (stored at its own positions, as the query is) is attended
  // with the query as it is, and the sinks (stored at 0..N-1) with the query rotated back by d
  // to its cache index; the two parts merge exactly by their log-sum-exps.
  Status StreamingAttention(int64_t layer, int64_t T, const PagedKvView& view, float* lse) {
    const int64_t N = c_.attention_sinks, W = c_.stream_window;
    const int64_t rows = T * l_.q_heads, hd = c_.head_dim;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const float* ks = m_.kv_->k_scale(layer);
    const float* vs = m_.kv_->v_scale(layer);
    float* parts = m_.sink_parts_.data();  // out [2][rows][hd], then lse [2][rows]
    float* lse_parts = parts + 2 * rows * hd;
    paged_attention<KV>(parts + rows * hd, m_.q_.data(), Pool(layer, 0), Pool(layer, 1), view,
                        in_.token_seq, in_.positions, T, l_.q_heads, l_.kv_heads, hd, scale,
                        lse_parts + rows, ks, vs, W, N);
    if (N == 0) {  // a window alone (no sinks): part B is the answer
      std::memcpy(m_.att_.data(), parts + rows * hd, rows * hd * sizeof(float));
      if (lse) std::memcpy(lse, lse_parts + rows, rows * sizeof(float));
      return Status::Ok();
    }
    int32_t* pos_a = m_.sink_pos_.data();
    int32_t* shift = pos_a + T;
    attention_sink_positions(shift, pos_a, in_.positions, T, N, W);
    float* q_sink = m_.sink_q_.data();
    std::memcpy(q_sink, m_.q_.data(), rows * hd * sizeof(float));
    rope(q_sink, shift, m_.inv_freq_.data(), T, l_.q_heads, hd, RopePairing::kHalf);
    paged_attention<KV>(parts, q_sink, Pool(layer, 0), Pool(layer, 1), view, in_.token_seq, pos_a,
                        T, l_.q_heads, l_.kv_heads, hd, scale, lse_parts, ks, vs);
    merge_attention(m_.att_.data(), lse, parts, lse_parts, 2, rows, hd);
    return Status::Ok();
  }
  // KV eviction (plan/kv_eviction.h), after the step whose chunks end the evicted prompts:
  // shard/kv_eviction_pass.h scores and compacts each layer in the pool itself.
  Status Evict(const StepPlan& plan) {
    const PagedKvGeometry& geo = m_.tables_.shape().geometry;
    const int64_t S = l_.seq_shards;
    KVS_ASSIGN_OR_RETURN(const std::vector<int64_t> group_kv0, HeadGroupFirstKvHeads(c_, l_));
    for (size_t e = 0; e < plan.evict_seqs.size(); ++e) {
      const int64_t s = plan.evict_seqs[e], keep = plan.evict_keep[e];
      const EvictedSequence seq{m_.tables_.tables() + plan.seq_slots[s] * m_.tables_.shape().stride,
                                plan.positions[plan.qo_indptr[s + 1] - 1] + 1, keep};
      for (int64_t layer = 0; layer < c_.n_layers; ++layer) {
        const HostKvLayer<KV> pool{Pool(layer, 0), Pool(layer, 1), m_.kv_->k_scale(layer),
                                   m_.kv_->v_scale(layer)};
        KVS_RETURN_IF_ERROR(
            EvictLayer<KV>(*m_.comm_, c_, l_, group_kv0, geo, seq, m_.evict_q_.at(e, layer), pool));
      }
      m_.tables_.Truncate(plan.seq_slots[s],
                          (keep + geo.block_size * S - 1) / (geo.block_size * S));
    }
    return Status::Ok();
  }
  Status MergeAttention(int64_t T) {
    merge_attention_columns(m_.att_merged_.data(), m_.att_parts_.data(), l_.seq_shards, T,
                            l_.q_heads, c_.head_dim, l_.o_col0, l_.o_cols);
    return Status::Ok();
  }
  Status SiluMul(int64_t n) {
    silu_mul(m_.gate_.data(), m_.gate_.data(), m_.up_.data(), n);
    return Status::Ok();
  }
  Status GatherRows(int64_t rows) {
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(m_.rows_.data() + i * c_.dim, m_.xn_.data() + in_.logits_rows[i] * c_.dim,
                  c_.dim * sizeof(float));
    }
    return Status::Ok();
  }
  Status Output(Buf a, int64_t) {
    result_ = Data(a);
    return Status::Ok();
  }
  float* Data(Buf a) {
    switch (a) {
      case Buf::kX: return m_.x_.data();
      case Buf::kXn: return m_.xn_.data();
      case Buf::kQ: return m_.q_.data();
      case Buf::kK: return m_.k_.data();
      case Buf::kV: return m_.v_.data();
      case Buf::kAtt: return m_.att_.data();
      case Buf::kAttParts: return m_.att_parts_.data();
      case Buf::kAttMerged: return m_.att_merged_.data();
      case Buf::kPartial: return m_.partial_.data();
      case Buf::kGate: return m_.gate_.data();
      case Buf::kUp: return m_.up_.data();
      case Buf::kMlp: return m_.gate_.data();  // silu_mul runs in place
      case Buf::kLogitsIn: return m_.rows_.data();
      case Buf::kLogits: return m_.local_logits_.data();
      case Buf::kGathered: return m_.gathered_.data();
    }
    return nullptr;
  }
  const float* result() const { return result_; }

 private:
  const float* NormOf(int64_t layer, NormWeight w) const {
    switch (w) {
      case NormWeight::kAttention: return m_.weights_.layers[layer].attn_norm.data();
      case NormWeight::kMlp: return m_.weights_.layers[layer].ffn_norm.data();
      case NormWeight::kFinal: return m_.weights_.final_norm.data();
    }
    return nullptr;
  }
  const HostMatrix& WeightOf(int64_t layer, Proj p) const {
    const LayerWeights& w = m_.weights_.layers[layer];
    switch (p) {
      case Proj::kQ: return w.wq;
      case Proj::kK: return w.wk;
      case Proj::kV: return w.wv;
      case Proj::kO: return w.wo;
      case Proj::kGate: return w.w_gate;
      case Proj::kUp: return w.w_up;
      case Proj::kDown: return w.w_down;
      case Proj::kLmHead: break;
    }
    return m_.weights_.lm_head;
  }
  KV* Pool(int64_t layer, int which) const {
    return static_cast<KV*>(which == 0 ? m_.kv_->k(layer) : m_.kv_->v(layer));
  }

  ShardModel& m_;
  const ModelConfig& c_;
  const TpLayout& l_;
  const StepInputs in_;
  const float* result_ = nullptr;
};

StatusOr<std::unique_ptr<ShardModel>> ShardModel::Load(const std::string& model_dir,
                                                       const ModelConfig& config,
                                                       const ShardOptions& options,
                                                       Communicator* comm) {
  std::unique_ptr<ShardModel> m(new ShardModel());
  m->config_ = config;
  m->options_ = options;
  m->comm_ = comm;
  KVS_ASSIGN_OR_RETURN(m->layout_,
                       MakeTpLayout(config, comm->size(), comm->rank(), options.seq_shards));
  if (options.max_tokens_per_step <= 0) {
    return InvalidArgument("max tokens per step must be positive");
  }
  KVS_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(model_dir));
  KVS_ASSIGN_OR_RETURN(m->weights_,
                       LoadShardWeights(*checkpoint, config, m->layout_, options.weight_dtype));
  checkpoint.reset();  // unmapped before the packed copies are made
  // 16-bit matrices packed for decode (kernels/cpu/matmul.h), one at a time.
  try {
    auto pack = [](HostMatrix* w) {
      if (w->dtype() != DType::kF32) *w = w->Packed();
    };
    pack(&m->weights_.lm_head);
    for (LayerWeights& L : m->weights_.layers) {
      for (HostMatrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) pack(w);
    }
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("not enough host memory to pack this rank's 16-bit weights");
  }
  KvPoolShape shape;
  shape.layers = config.n_layers;
  shape.num_blocks = options.num_blocks;
  shape.block_size = options.block_size;
  shape.kv_heads = m->layout_.kv_heads;
  shape.head_dim = config.head_dim;
  shape.dtype = options.kv_dtype;
  KVS_ASSIGN_OR_RETURN(m->kv_, KvPool::Create(shape));
  // A table entry is one block id on every seq shard: it spans block_size * seq_shards positions.
  const int64_t logical = options.block_size * options.seq_shards;
  KVS_ASSIGN_OR_RETURN(m->tables_,
                       BlockTables::Create(BlockTableShape{
                           options.max_seqs, (config.MaxPositions() + logical - 1) / logical,
                           options.num_blocks, m->layout_.Geometry(options.block_size)}));
  m->inv_freq_ = RopeInverseFrequencies(config);
  if (options.tune_threads > 0) {
    m->tuner_ = std::make_unique<ThreadTuner>(options.tune_threads);
    omp_set_num_threads(m->tuner_->threads());
  }

  const TpLayout& l = m->layout_;
  const int64_t T = options.max_tokens_per_step;
  const int64_t hd = config.head_dim;
  try {
    m->x_.resize(T * config.dim);
    m->xn_.resize(T * config.dim);
    m->q_.resize(T * l.q_heads * hd);
    m->k_.resize(T * l.kv_heads * hd);
    m->v_.resize(T * l.kv_heads * hd);
    m->att_.resize(T * l.q_heads * (hd + 1));  // output, then the log-sum-exp (seq shards)
    if (l.seq_shards > 1) {
      m->att_parts_.resize(l.seq_shards * T * l.q_heads * (hd + 1));
      m->att_merged_.resize(T * l.o_cols);
    }
    m->gate_.resize(T * l.ffn);
    m->up_.resize(T * l.ffn);
    m->partial_.resize(T * config.dim);
    if (config.streaming()) {
      m->sink_q_.resize(T * l.q_heads * hd);
      m->sink_parts_.resize(2 * T * l.q_heads * (hd + 1));
      m->sink_pos_.resize(2 * T);
    }
    m->rows_.resize(T * config.dim);
    m->local_logits_.resize(T * l.vocab);
    if (comm->rank() == 0) m->gathered_.resize(T * config.vocab_size);
    m->inputs_layout_ = StepInputsLayout::Make(T);
    m->inputs_.resize(m->inputs_layout_.bytes);
    m->staged_.result_rows.reserve(T);
    m->gather_counts_.resize(l.tp);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("not enough memory for a workspace of {} tokens per step", T);
  }
  if (l.seq_shards > 1) {
    // Opens every connection the attention all-gather uses now, while every peer is alive: a
    // connection first attempted to a peer that has died is fatal inside Open MPI's TCP
    // transport, where a broken one is an error our deadlines handle.
    float mine = 0;
    std::vector<float> all(l.seq_shards);
    KVS_RETURN_IF_ERROR(comm->AllGatherInGroups(&mine, 1, all.data(), l.seq_shards));
  }
  return m;
}

Status ShardModel::Forward(const StepPlan& plan, std::vector<float>* logits) {
  const auto t0 = std::chrono::steady_clock::now();
  KVS_RETURN_IF_ERROR(tables_.Apply(plan, config_.vocab_size, options_.max_tokens_per_step));
  KVS_RETURN_IF_ERROR(
      StageStepInputs(plan, tables_, inputs_layout_, StepPadding{}, inputs_.data(), &staged_));
  const StepInputs in = StepInputs::At(inputs_.data(), inputs_layout_);
  const ProgramStep step{staged_.tokens, staged_.rows};
  const float* result = nullptr;
  // KV eviction: the rows whose queries score the prompt positions.
  KVS_RETURN_IF_ERROR(evict_q_.Prepare(plan, config_.n_layers, layout_.q_heads * config_.head_dim));
  auto run = [&](auto kv_tag) -> Status {
    CpuOps<decltype(kv_tag)> ops(*this, in);
    KVS_RETURN_IF_ERROR(RunLayerProgram(ops, *comm_, config_, layout_, step, &gather_counts_));
    result = ops.result();
    if (!plan.evict_seqs.empty()) KVS_RETURN_IF_ERROR(ops.Evict(plan));
    return Status::Ok();
  };
  switch (options_.kv_dtype) {
    case DType::kF32: KVS_RETURN_IF_ERROR(run(float{})); break;
    case DType::kF16: KVS_RETURN_IF_ERROR(run(f16_t{})); break;
    case DType::kBF16: KVS_RETURN_IF_ERROR(run(bf16_t{})); break;
    case DType::kI8: KVS_RETURN_IF_ERROR(run(int8_t{})); break;
    case DType::kF8E4M3: KVS_RETURN_IF_ERROR(run(fp8_e4m3_t{})); break;
  }
  if (tuner_ && plan.num_tokens() == plan.num_seqs()) {  // a decode step: tune the team size
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int before = tuner_->threads();
    if (tuner_->Record(plan.num_tokens(), seconds)) {
      omp_set_num_threads(tuner_->threads());
      spdlog::debug("rank {}: decode threads {} -> {} (last step {:.3f} ms)", comm_->rank(), before,
                    tuner_->threads(), seconds * 1e3);
    }
  }
  if (comm_->rank() != 0 || step.rows == 0) return Status::Ok();
  logits->resize(staged_.result_rows.size() * config_.vocab_size);
  UnpackLogits(result, layout_, step.rows, staged_.result_rows, config_.vocab_size, logits->data());
  return Status::Ok();
}

}  // namespace kvshard
