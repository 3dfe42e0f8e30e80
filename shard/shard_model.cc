#include "shard/shard_model.h"

#include <cmath>
#include <cstring>
#include <new>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "shard/rope_frequencies.h"

namespace kvshard {
namespace {

template <typename KV>
void AppendAndAttend(void* k_pool, void* v_pool, const float* k, const float* v, float* out,
                     const float* q, const int64_t* slots, const PagedKvView& view,
                     const int32_t* token_seq, const int32_t* positions, int64_t T,
                     const TpLayout& l, int64_t head_dim) {
  KV* kc = static_cast<KV*>(k_pool);
  KV* vc = static_cast<KV*>(v_pool);
  kv_append<KV>(kc, vc, k, v, slots, T, l.kv_heads, head_dim);
  paged_attention<KV>(out, q, kc, vc, view, token_seq, positions, T, l.q_heads, l.kv_heads,
                      head_dim, 1.0f / std::sqrt(static_cast<float>(head_dim)));
}

}  // namespace

StatusOr<std::unique_ptr<ShardModel>> ShardModel::Load(const std::string& model_dir,
                                                       const ModelConfig& config,
                                                       const ShardOptions& options,
                                                       Communicator* comm) {
  std::unique_ptr<ShardModel> m(new ShardModel());
  m->config_ = config;
  m->options_ = options;
  m->comm_ = comm;
  KVS_ASSIGN_OR_RETURN(m->layout_, MakeTpLayout(config, comm->size(), comm->rank()));
  if (options.max_tokens_per_step <= 0) {
    return InvalidArgument("max tokens per step must be positive");
  }
  KVS_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(model_dir));
  KVS_ASSIGN_OR_RETURN(m->weights_, LoadShardWeights(*checkpoint, config, m->layout_));
  KvPoolShape shape;
  shape.layers = config.n_layers;
  shape.num_blocks = options.num_blocks;
  shape.block_size = options.block_size;
  shape.kv_heads = m->layout_.kv_heads;
  shape.head_dim = config.head_dim;
  shape.dtype = options.kv_dtype;
  KVS_ASSIGN_OR_RETURN(m->kv_, KvPool::Create(shape));
  KVS_ASSIGN_OR_RETURN(m->tables_,
                       BlockTables::Create(BlockTableShape{
                           options.max_seqs, BlocksFor(config.max_seq_len, options.block_size),
                           options.num_blocks, options.block_size}));
  m->inv_freq_ = RopeInverseFrequencies(config);

  const TpLayout& l = m->layout_;
  const int64_t T = options.max_tokens_per_step;
  const int64_t hd = config.head_dim;
  try {
    m->x_.resize(T * config.dim);
    m->xn_.resize(T * config.dim);
    m->q_.resize(T * l.q_heads * hd);
    m->k_.resize(T * l.kv_heads * hd);
    m->v_.resize(T * l.kv_heads * hd);
    m->att_.resize(T * l.q_heads * hd);
    m->gate_.resize(T * l.ffn);
    m->up_.resize(T * l.ffn);
    m->partial_.resize(T * config.dim);
    m->local_logits_.resize(T * l.vocab);
    if (comm->rank() == 0) m->gathered_.resize(T * config.vocab_size);
    m->slots_.resize(T);
    m->table_rows_.resize(T + 1);
    m->token_seq_.resize(T);
    m->gather_counts_.resize(l.tp);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("not enough memory for a workspace of {} tokens per step", T);
  }
  return m;
}

Status ShardModel::Forward(const StepPlan& plan, std::vector<float>* logits) {
  KVS_RETURN_IF_ERROR(tables_.Apply(plan, config_.vocab_size, options_.max_tokens_per_step));
  const int64_t T = plan.num_tokens();
  for (int64_t s = 0; s < plan.num_seqs(); ++s) {
    for (int32_t t = plan.qo_indptr[s]; t < plan.qo_indptr[s + 1]; ++t) {
      token_seq_[t] = static_cast<int32_t>(s);
    }
  }
  tables_.Slots(plan, slots_.data());
  tables_.RowOffsets(plan, table_rows_.data());
  embedding(x_.data(), weights_.embedding.data(), plan.tokens.data(), T, config_.dim);
  for (int64_t layer = 0; layer < config_.n_layers; ++layer) {
    KVS_RETURN_IF_ERROR(Layer(layer, plan, T));
  }
  return Logits(plan, logits);
}

Status ShardModel::Layer(int64_t layer, const StepPlan& plan, int64_t T) {
  const LayerWeights& w = weights_.layers[layer];
  const int64_t dim = config_.dim, hd = config_.head_dim;
  const int64_t q_width = layout_.q_heads * hd, kv_width = layout_.kv_heads * hd;

  // Attention: column-split QKV, this rank's heads only, row-split output projection.
  rmsnorm(xn_.data(), x_.data(), w.attn_norm.data(), T, dim, config_.rms_norm_eps);
  matmul(q_.data(), xn_.data(), w.wq.data(), T, dim, q_width);
  matmul(k_.data(), xn_.data(), w.wk.data(), T, dim, kv_width);
  matmul(v_.data(), xn_.data(), w.wv.data(), T, dim, kv_width);
  rope(q_.data(), plan.positions.data(), inv_freq_.data(), T, layout_.q_heads, hd,
       RopePairing::kHalf);
  rope(k_.data(), plan.positions.data(), inv_freq_.data(), T, layout_.kv_heads, hd,
       RopePairing::kHalf);
  const PagedKvView view{table_rows_.data(), tables_.tables(), options_.block_size};
  switch (options_.kv_dtype) {
    case DType::kF32:
      AppendAndAttend<float>(kv_->k(layer), kv_->v(layer), k_.data(), v_.data(), att_.data(),
                             q_.data(), slots_.data(), view, token_seq_.data(),
                             plan.positions.data(), T, layout_, hd);
      break;
    case DType::kF16:
      AppendAndAttend<f16_t>(kv_->k(layer), kv_->v(layer), k_.data(), v_.data(), att_.data(),
                             q_.data(), slots_.data(), view, token_seq_.data(),
                             plan.positions.data(), T, layout_, hd);
      break;
    case DType::kBF16:
      AppendAndAttend<bf16_t>(kv_->k(layer), kv_->v(layer), k_.data(), v_.data(), att_.data(),
                              q_.data(), slots_.data(), view, token_seq_.data(),
                              plan.positions.data(), T, layout_, hd);
      break;
  }
  matmul(partial_.data(), att_.data(), w.wo.data(), T, q_width, dim);
  if (layout_.tp > 1) KVS_RETURN_IF_ERROR(comm_->AllReduceSum(partial_.data(), T * dim));
  for (int64_t i = 0; i < T * dim; ++i) x_[i] += partial_[i];

  // MLP: column-split gate/up, row-split down projection.
  rmsnorm(xn_.data(), x_.data(), w.ffn_norm.data(), T, dim, config_.rms_norm_eps);
  matmul(gate_.data(), xn_.data(), w.w_gate.data(), T, dim, layout_.ffn);
  matmul(up_.data(), xn_.data(), w.w_up.data(), T, dim, layout_.ffn);
  silu_mul(gate_.data(), gate_.data(), up_.data(), T * layout_.ffn);
  matmul(partial_.data(), gate_.data(), w.w_down.data(), T, layout_.ffn, dim);
  if (layout_.tp > 1) KVS_RETURN_IF_ERROR(comm_->AllReduceSum(partial_.data(), T * dim));
  for (int64_t i = 0; i < T * dim; ++i) x_[i] += partial_[i];
  return Status::Ok();
}

Status ShardModel::Logits(const StepPlan& plan, std::vector<float>* logits) {
  const int64_t L = static_cast<int64_t>(plan.logits_rows.size());
  if (L == 0) return Status::Ok();
  const int64_t dim = config_.dim, V = config_.vocab_size;
  for (int64_t i = 0; i < L; ++i) {
    rmsnorm(xn_.data() + i * dim, x_.data() + plan.logits_rows[i] * dim, weights_.final_norm.data(),
            1, dim, config_.rms_norm_eps);
  }
  matmul(local_logits_.data(), xn_.data(), weights_.lm_head.data(), L, dim, layout_.vocab);
  const bool root = comm_->rank() == 0;
  if (root) logits->resize(L * V);
  if (layout_.tp == 1) {
    std::memcpy(logits->data(), local_logits_.data(), L * V * sizeof(float));
    return Status::Ok();
  }
  for (int r = 0; r < layout_.tp; ++r) {
    gather_counts_[r] = layout_.vocab_counts[r] * static_cast<int>(L);
  }
  KVS_RETURN_IF_ERROR(comm_->GatherV(local_logits_.data(), static_cast<int>(L * layout_.vocab),
                                     root ? gathered_.data() : nullptr, gather_counts_, 0));
  if (root) {
    // Rank-major [rank][row][slice] to row-major [row][vocab].
    int64_t off = 0, col0 = 0;
    for (int r = 0; r < layout_.tp; ++r) {
      const int64_t n = layout_.vocab_counts[r];
      for (int64_t i = 0; i < L; ++i) {
        std::memcpy(logits->data() + i * V + col0, gathered_.data() + off + i * n,
                    n * sizeof(float));
      }
      off += L * n;
      col0 += n;
    }
  }
  return Status::Ok();
}

}  // namespace kvshard
