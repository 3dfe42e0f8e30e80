// KV eviction on the CUDA backend (docs/gpu.md): the CPU's per-layer pass
// (shard/kv_eviction_pass.h) on a host copy of each layer of the prompt's blocks.
#include <new>
#include <numeric>
#include <vector>

#include "common/cuda/cuda_check.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cuda/host_twin.h"
#include "shard/cuda/cuda_shard_model.h"
#include "shard/kv_eviction_pass.h"

namespace kvshard::cuda {

template <typename KV>
Status CudaShardModel::Evict(const StepPlan& plan) {
  using H = HostOf<KV>;  // the CPU element type of the same bits
  static_assert(sizeof(H) == sizeof(KV));
  const PagedKvGeometry& geo = tables_.shape().geometry;
  const int64_t S = layout_.seq_shards, bs = geo.block_size, kvh = layout_.kv_heads;
  const int64_t row = kvh * config_.head_dim;  // elements of one slot
  constexpr bool kQuantized = ::kvshard::kQuantizedKv<H>;
  KVS_ASSIGN_OR_RETURN(const std::vector<int64_t> group_kv0,
                       HeadGroupFirstKvHeads(config_, layout_));
  for (size_t e = 0; e < plan.evict_seqs.size(); ++e) {
    const int64_t s = plan.evict_seqs[e], keep = plan.evict_keep[e];
    const int64_t length = plan.positions[plan.qo_indptr[s + 1] - 1] + 1;
    const int32_t* table = tables_.tables() + plan.seq_slots[s] * tables_.shape().stride;
    // This shard's blocks of the prompt, copied to a host pool of their own (local block lb in
    // host block lb), and the ones that receive the kept rows, copied back.
    const int64_t blocks = geo.BlocksFor(length), back = geo.BlocksFor(keep);
    std::vector<int32_t> local(blocks);
    std::iota(local.begin(), local.end(), 0);
    std::vector<H> k, v;
    std::vector<float> ks, vs;
    try {
      k.resize(blocks * bs * row);
      v.resize(blocks * bs * row);
      ks.resize(kQuantized ? blocks * bs * kvh : 0);
      vs.resize(kQuantized ? blocks * bs * kvh : 0);
    } catch (const std::bad_alloc&) {
      return ResourceExhausted("not enough host memory to evict a {}-token prompt's KV", length);
    }
    const size_t block_bytes = bs * row * sizeof(KV), scale_bytes = bs * kvh * sizeof(float);
    for (int64_t layer = 0; layer < config_.n_layers; ++layer) {
      KV* dk = KvLayer<KV>(layer, 0);
      KV* dv = KvLayer<KV>(layer, 1);
      float* dks = KvScale(layer, 0);
      float* dvs = KvScale(layer, 1);
      // Block lb's K and V rows (and scales) between its place in the pool and host block lb.
      auto move = [&](int64_t lb, cudaMemcpyKind kind) -> Status {
        const int64_t slot0 = static_cast<int64_t>(table[lb]) * bs;
        const bool down = kind == cudaMemcpyDeviceToHost;
        auto copy = [&](void* host, void* device, size_t bytes) {
          return KVS_CUDA(
              cudaMemcpyAsync(down ? host : device, down ? device : host, bytes, kind, stream_));
        };
        KVS_RETURN_IF_ERROR(copy(k.data() + lb * bs * row, dk + slot0 * row, block_bytes));
        KVS_RETURN_IF_ERROR(copy(v.data() + lb * bs * row, dv + slot0 * row, block_bytes));
        if constexpr (kQuantized) {
          KVS_RETURN_IF_ERROR(copy(ks.data() + lb * bs * kvh, dks + slot0 * kvh, scale_bytes));
          KVS_RETURN_IF_ERROR(copy(vs.data() + lb * bs * kvh, dvs + slot0 * kvh, scale_bytes));
        }
        return Status::Ok();
      };
      for (int64_t lb = 0; lb < blocks; ++lb) {
        KVS_RETURN_IF_ERROR(move(lb, cudaMemcpyDeviceToHost));
      }
      KVS_RETURN_IF_ERROR(KVS_CUDA(cudaStreamSynchronize(stream_)));
      const HostKvLayer<H> pool{k.data(), v.data(), kQuantized ? ks.data() : nullptr,
                                kQuantized ? vs.data() : nullptr};
      KVS_RETURN_IF_ERROR(EvictLayer<H>(comm_->control(), config_, layout_, group_kv0, geo,
                                        EvictedSequence{local.data(), length, keep},
                                        evict_q_.at(e, layer), pool));
      for (int64_t lb = 0; lb < back; ++lb) KVS_RETURN_IF_ERROR(move(lb, cudaMemcpyHostToDevice));
      // The host copies are reused by the next layer.
      KVS_RETURN_IF_ERROR(KVS_CUDA(cudaStreamSynchronize(stream_)));
    }
    tables_.Truncate(plan.seq_slots[s], (keep + bs * S - 1) / (bs * S));
  }
  return Status::Ok();
}

Status CudaShardModel::EvictAny(const StepPlan& plan) {
  switch (options_.kv_dtype) {
    case DType::kF32: return Evict<float>(plan);
    case DType::kF16: return Evict<__half>(plan);
    case DType::kBF16: return Evict<__nv_bfloat16>(plan);
    case DType::kI8: return Evict<int8_t>(plan);
    case DType::kF8E4M3: return Evict<__nv_fp8_e4m3>(plan);
  }
  return Internal("unknown KV dtype");
}

}  // namespace kvshard::cuda
