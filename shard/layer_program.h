// The forward of one step, written once for every backend: embedding, then per layer
// norm -> QKV -> RoPE -> KV append -> paged attention -> o_proj -> all-reduce -> add + norm ->
// gate/up -> silu * up -> down -> all-reduce -> add + norm, then the logits rows, the output head
// and the gather of its vocabulary slices. It is the only layer loop and the only place that runs
// the layer collectives.
//
// The parallel plan, declared once here (Megatron-style tensor parallelism as in gpt-fast, over
// a grid of head groups x seq shards as in TensorRT-LLM's Helix; shard/tp_layout.h):
//   wq, wk, wv                column-split over head groups: each group computes its heads;
//   KV, attention             each seq shard of a group holds and attends over its own positions;
//                             with more than one, an all-gather inside the group brings every
//                             shard's [output | log-sum-exp] and each rank merges the columns it
//                             feeds to wo (exact: rescale and sum);
//   w_gate, w_up              column-split over every rank;
//   wo, w_down                row-split over every rank: each a partial sum of the full width,
//                             summed by one all-reduce of [T, dim] after each;
//   lm_head                   split by vocabulary rows over every rank, gathered to rank 0.
// The widths below are this rank's (TpLayout); the weights behind them are its slices.
//
// A backend supplies `Ops`, a class with the members below (a template argument, not virtual
// calls: the CUDA backend enqueues the whole program into one stream and captures it in a graph).
// Activation buffers are named by `Buf`; the backend owns their buffers (sized once for its largest
// step) and the dtypes they hold. Every op returns Status.
//   Embed(T)                         x[T, dim] = embedding[tokens]
//   Norm(layer, w, T)                xn = rmsnorm(x) * w (the norm weight `w` of `layer`)
//   AddNorm(layer, w, T)             x += partial; xn = rmsnorm(x) * w
//   Gemm(out, in, layer, proj, T, k, n)  out[T, n] = in[T, k] . proj (of `layer`)
//   GemmInput(a, n)                  makes n elements of `a` readable as a GEMM input (a cast to
//                                    the weights' dtype where it differs from f32; else nothing)
//   Rope(a, heads, T)                rotary embedding of kQ or kK in place, at the step's positions
//   KvAppend(layer, T)               k, v into this layer's KV pool at the step's slots
//   Attention(layer, T)              att = paged attention of q over this layer's KV pool (this
//                                    shard's positions); with seq shards, each row's log-sum-exp
//                                    [T, q_heads] follows the output in kAtt
//   MergeAttention(T)                att_merged[T, o_cols] = the exact merge of kAttParts'
//                                    shards, columns [o_col0, o_col0 + o_cols)
//   SiluMul(T)                       mlp = silu(gate) * up
//   GatherRows(rows)                 logits_in[rows, dim] = xn[the step's logits rows]
//   Output(a, rows)                  the rows x vocabulary floats of `a` are the step's result
//   Data(a)                          the buffer of `a`, as the communicator takes it
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "shard/model_config.h"
#include "shard/tp_layout.h"
#include "transport/communicator.h"

namespace kvshard {

enum class Buf {
  kX,          // f32 [T, dim] residual stream
  kXn,         // [T, dim] normalised
  kQ,          // f32 [T, q_heads * head_dim]
  kK,          // f32 [T, kv_heads * head_dim]
  kV,          // f32 [T, kv_heads * head_dim]
  kAtt,        // f32 [T, q_heads * head_dim] attention output (then [T, q_heads] log-sum-exp
               //     when there are seq shards)
  kAttParts,   // f32 [seq_shards][T * q_heads * (head_dim + 1)] every shard's kAtt (seq shards)
  kAttMerged,  // f32 [T, o_cols] the merged columns this rank feeds to wo (seq shards)
  kPartial,    // f32 [T, dim] this rank's share of a row-split GEMM
  kGate,       // f32 [T, ffn]
  kUp,         // f32 [T, ffn]
  kMlp,        // [T, ffn] silu(gate) * up
  kLogitsIn,   // [rows, dim] the final-normed rows that get logits
  kLogits,     // f32 [rows, vocab slice] this rank's logits
  kGathered,   // f32 [rank][rows][slice] every rank's logits, on rank 0
};

enum class Proj { kQ, kK, kV, kO, kGate, kUp, kDown, kLmHead };
enum class NormWeight { kAttention, kMlp, kFinal };

// The step's shape as the program sees it: T tokens (padding included), `rows` logits rows.
struct ProgramStep {
  int64_t tokens = 0;
  int64_t rows = 0;
};

// Runs the program over `ops`. `counts` is scratch for the gather's per-rank counts [tp].
template <typename Ops>
Status RunLayerProgram(Ops& ops, Communicator& comm, const ModelConfig& c, const TpLayout& l,
                       const ProgramStep& step, std::vector<int>* counts) {
  const int64_t T = step.tokens, dim = c.dim;
  const int64_t q_width = l.q_heads * c.head_dim, kv_width = l.kv_heads * c.head_dim;
  auto all_reduce = [&]() -> Status {
    if (l.tp == 1) return Status::Ok();
    return comm.AllReduceSum(ops.Data(Buf::kPartial), static_cast<size_t>(T * dim));
  };

  KVS_RETURN_IF_ERROR(ops.Embed(T));
  KVS_RETURN_IF_ERROR(ops.Norm(0, NormWeight::kAttention, T));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    // Attention: this rank's query and KV heads.
    KVS_RETURN_IF_ERROR(ops.Gemm(Buf::kQ, Buf::kXn, i, Proj::kQ, T, dim, q_width));
    KVS_RETURN_IF_ERROR(ops.Gemm(Buf::kK, Buf::kXn, i, Proj::kK, T, dim, kv_width));
    KVS_RETURN_IF_ERROR(ops.Gemm(Buf::kV, Buf::kXn, i, Proj::kV, T, dim, kv_width));
    KVS_RETURN_IF_ERROR(ops.Rope(Buf::kQ, l.q_heads, T));
    KVS_RETURN_IF_ERROR(ops.Rope(Buf::kK, l.kv_heads, T));
    KVS_RETURN_IF_ERROR(ops.KvAppend(i, T));
    KVS_RETURN_IF_ERROR(ops.Attention(i, T));
    Buf o_in = Buf::kAtt;
    if (l.seq_shards > 1) {  // the group's shards' partials, merged into this rank's columns
      KVS_RETURN_IF_ERROR(comm.AllGatherInGroups(ops.Data(Buf::kAtt),
                                                 static_cast<size_t>(T * (q_width + l.q_heads)),
                                                 ops.Data(Buf::kAttParts), l.seq_shards));
      KVS_RETURN_IF_ERROR(ops.MergeAttention(T));
      o_in = Buf::kAttMerged;
    }
    KVS_RETURN_IF_ERROR(ops.GemmInput(o_in, T * l.o_cols));
    KVS_RETURN_IF_ERROR(ops.Gemm(Buf::kPartial, o_in, i, Proj::kO, T, l.o_cols, dim));
    KVS_RETURN_IF_ERROR(all_reduce());
    KVS_RETURN_IF_ERROR(ops.AddNorm(i, NormWeight::kMlp, T));

    // MLP: this rank's columns of gate and up, its rows of down.
    KVS_RETURN_IF_ERROR(ops.Gemm(Buf::kGate, Buf::kXn, i, Proj::kGate, T, dim, l.ffn));
    KVS_RETURN_IF_ERROR(ops.Gemm(Buf::kUp, Buf::kXn, i, Proj::kUp, T, dim, l.ffn));
    KVS_RETURN_IF_ERROR(ops.SiluMul(T * l.ffn));
    KVS_RETURN_IF_ERROR(ops.Gemm(Buf::kPartial, Buf::kMlp, i, Proj::kDown, T, l.ffn, dim));
    KVS_RETURN_IF_ERROR(all_reduce());
    // The residual add, fused with the next norm: the next layer's, or the final one.
    if (i + 1 < c.n_layers) {
      KVS_RETURN_IF_ERROR(ops.AddNorm(i + 1, NormWeight::kAttention, T));
    } else {
      KVS_RETURN_IF_ERROR(ops.AddNorm(i, NormWeight::kFinal, T));
    }
  }
  if (step.rows == 0) return Status::Ok();

  // Logits: this rank's vocabulary slice of the wanted rows, gathered rank-major on rank 0.
  const int64_t R = step.rows;
  KVS_RETURN_IF_ERROR(ops.GatherRows(R));
  KVS_RETURN_IF_ERROR(ops.GemmInput(Buf::kLogitsIn, R * dim));
  KVS_RETURN_IF_ERROR(ops.Gemm(Buf::kLogits, Buf::kLogitsIn, 0, Proj::kLmHead, R, dim, l.vocab));
  if (l.tp == 1) return ops.Output(Buf::kLogits, R);
  for (int r = 0; r < l.tp; ++r) (*counts)[r] = l.vocab_counts[r] * static_cast<int>(R);
  const bool root = comm.rank() == 0;
  KVS_RETURN_IF_ERROR(comm.GatherV(ops.Data(Buf::kLogits), static_cast<int>(R * l.vocab),
                                   root ? ops.Data(Buf::kGathered) : nullptr, *counts, 0));
  return root ? ops.Output(Buf::kGathered, R) : Status::Ok();
}

// Rank 0's result of the program, host f32 rank-major [rank][rows][vocab slice] (one rank:
// [rows][vocab]), into row-major `out` [result_rows.size(), vocab]: row i is computed row
// result_rows[i].
void UnpackLogits(const float* rank_major, const TpLayout& layout, int64_t rows,
                  const std::vector<int32_t>& result_rows, int64_t vocab, float* out);

}  // namespace kvshard
