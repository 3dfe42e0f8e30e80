#include "shard/weights.h"

#include <new>

namespace kvshard {
namespace {

int64_t VecBytes(const std::vector<float>& v) {
  return static_cast<int64_t>(v.size() * sizeof(float));
}

// Rows [row0, row1) and columns [col0, col1) of the 2-D tensor `name` of full shape [rows, cols].
StatusOr<std::vector<float>> ReadSlice(const Checkpoint& ckpt, const std::string& name,
                                       int64_t rows, int64_t cols, int64_t row0, int64_t row1,
                                       int64_t col0, int64_t col1) {
  std::vector<float> out((row1 - row0) * (col1 - col0));
  KVS_RETURN_IF_ERROR(ckpt.ReadSliceF32(name, {rows, cols}, row0, row1, col0, col1, out.data()));
  return out;
}

StatusOr<std::vector<float>> ReadVector(const Checkpoint& ckpt, const std::string& name,
                                        int64_t n) {
  std::vector<float> out(n);
  KVS_RETURN_IF_ERROR(ckpt.ReadSliceF32(name, {n}, 0, n, 0, 1, out.data()));
  return out;
}

StatusOr<LayerWeights> LoadLayer(const Checkpoint& ckpt, const ModelConfig& c, const TpLayout& l,
                                 int64_t i) {
  const std::string p = fmt::format("model.layers.{}.", i);
  const int64_t hd = c.head_dim;
  const int64_t q_rows = c.n_heads * hd, kv_rows = c.n_kv_heads * hd;
  LayerWeights w;
  KVS_ASSIGN_OR_RETURN(w.attn_norm, ReadVector(ckpt, p + "input_layernorm.weight", c.dim));
  KVS_ASSIGN_OR_RETURN(w.wq, ReadSlice(ckpt, p + "self_attn.q_proj.weight", q_rows, c.dim,
                                       l.q_head0 * hd, (l.q_head0 + l.q_heads) * hd, 0, c.dim));
  KVS_ASSIGN_OR_RETURN(w.wk, ReadSlice(ckpt, p + "self_attn.k_proj.weight", kv_rows, c.dim,
                                       l.kv_head0 * hd, (l.kv_head0 + l.kv_heads) * hd, 0, c.dim));
  KVS_ASSIGN_OR_RETURN(w.wv, ReadSlice(ckpt, p + "self_attn.v_proj.weight", kv_rows, c.dim,
                                       l.kv_head0 * hd, (l.kv_head0 + l.kv_heads) * hd, 0, c.dim));
  const int64_t o0 = l.q_head0 * hd + l.o_col0;  // this rank's columns of its group's heads
  KVS_ASSIGN_OR_RETURN(w.wo, ReadSlice(ckpt, p + "self_attn.o_proj.weight", c.dim, q_rows, 0, c.dim,
                                       o0, o0 + l.o_cols));
  KVS_ASSIGN_OR_RETURN(w.ffn_norm, ReadVector(ckpt, p + "post_attention_layernorm.weight", c.dim));
  KVS_ASSIGN_OR_RETURN(w.w_gate, ReadSlice(ckpt, p + "mlp.gate_proj.weight", c.hidden_dim, c.dim,
                                           l.ffn0, l.ffn0 + l.ffn, 0, c.dim));
  KVS_ASSIGN_OR_RETURN(w.w_up, ReadSlice(ckpt, p + "mlp.up_proj.weight", c.hidden_dim, c.dim,
                                         l.ffn0, l.ffn0 + l.ffn, 0, c.dim));
  KVS_ASSIGN_OR_RETURN(w.w_down, ReadSlice(ckpt, p + "mlp.down_proj.weight", c.dim, c.hidden_dim, 0,
                                           c.dim, l.ffn0, l.ffn0 + l.ffn));
  return w;
}

StatusOr<ShardWeights> LoadAll(const Checkpoint& ckpt, const ModelConfig& c, const TpLayout& l) {
  ShardWeights w;
  KVS_ASSIGN_OR_RETURN(w.embedding, ReadSlice(ckpt, "model.embed_tokens.weight", c.vocab_size,
                                              c.dim, 0, c.vocab_size, 0, c.dim));
  KVS_ASSIGN_OR_RETURN(w.final_norm, ReadVector(ckpt, "model.norm.weight", c.dim));
  if (c.tie_word_embeddings) {
    w.lm_head.assign(w.embedding.begin() + l.vocab0 * c.dim,
                     w.embedding.begin() + (l.vocab0 + l.vocab) * c.dim);
  } else {
    KVS_ASSIGN_OR_RETURN(w.lm_head, ReadSlice(ckpt, "lm_head.weight", c.vocab_size, c.dim, l.vocab0,
                                              l.vocab0 + l.vocab, 0, c.dim));
  }
  for (int64_t i = 0; i < c.n_layers; ++i) {
    KVS_ASSIGN_OR_RETURN(LayerWeights layer, LoadLayer(ckpt, c, l, i));
    w.layers.push_back(std::move(layer));
  }
  return w;
}

}  // namespace

int64_t ShardWeights::bytes() const {
  int64_t b = VecBytes(embedding) + VecBytes(final_norm) + VecBytes(lm_head);
  for (const auto& L : layers) {
    for (const auto* v :
         {&L.attn_norm, &L.wq, &L.wk, &L.wv, &L.wo, &L.ffn_norm, &L.w_gate, &L.w_up, &L.w_down}) {
      b += VecBytes(*v);
    }
  }
  return b;
}

int64_t ShardWeights::decode_read_bytes(int64_t dim) const {
  return bytes() - VecBytes(embedding) + dim * static_cast<int64_t>(sizeof(float));
}

StatusOr<ShardWeights> LoadShardWeights(const Checkpoint& checkpoint, const ModelConfig& config,
                                        const TpLayout& layout) {
  try {
    return LoadAll(checkpoint, config, layout);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("not enough host memory for this rank's weight slice");
  }
}

}  // namespace kvshard
