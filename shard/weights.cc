#include "shard/weights.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/cpu/matmul.h"

namespace kvshard {

void HostMatrixFree::operator()(std::byte* p) const {
  if (owned) std::free(p);
}

namespace {

// 64 bytes (a cache line) aligned storage; throws std::bad_alloc.
std::byte* AllocateAligned(int64_t bytes) {
  constexpr size_t kAlign = 64;
  const size_t size = (static_cast<size_t>(bytes) + kAlign - 1) / kAlign * kAlign;
  if (size == 0) return nullptr;
  auto* p = static_cast<std::byte*>(std::aligned_alloc(kAlign, size));
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

HostMatrix::HostMatrix(DType dtype, int64_t rows, int64_t cols)
    : dtype_(dtype), rows_(rows), cols_(cols) {
  data_.reset(AllocateAligned(bytes()));
}

int64_t HostMatrix::storage_elems() const {
  return packed_ ? packed_weights_size(rows_, cols_) : rows_ * cols_;
}

HostMatrix HostMatrix::Packed() const {
  HostMatrix m;
  m.dtype_ = dtype_;
  m.rows_ = rows_;
  m.cols_ = cols_;
  m.packed_ = true;
  m.data_.reset(AllocateAligned(m.bytes()));
  if (m.bytes() > 0) {
    pack_weights(static_cast<const uint16_t*>(data()), static_cast<uint16_t*>(m.data()), rows_,
                 cols_);
  }
  return m;
}

HostMatrix HostMatrix::FromF32(const std::vector<float>& values, int64_t rows, int64_t cols,
                               DType dtype) {
  HostMatrix m(dtype, rows, cols);
  ConvertFromF32(dtype, values.data(), m.data(), static_cast<size_t>(m.numel()));
  return m;
}

HostMatrix HostMatrix::RowsView(const HostMatrix& m, int64_t row0, int64_t row1) {
  HostMatrix v;
  v.dtype_ = m.dtype_;
  v.rows_ = row1 - row0;
  v.cols_ = m.cols_;
  const size_t row_bytes = static_cast<size_t>(m.cols_) * DTypeSize(m.dtype_);
  v.data_ = std::unique_ptr<std::byte, HostMatrixFree>(
      const_cast<std::byte*>(m.data_.get()) + row0 * row_bytes, HostMatrixFree{false});
  return v;
}

std::vector<float> HostMatrix::ToF32() const {
  std::vector<float> out(numel());
  ConvertToF32(dtype_, data(), out.data(), out.size());
  return out;
}

namespace {

int64_t VecBytes(const std::vector<float>& v) {
  return static_cast<int64_t>(v.size() * sizeof(float));
}

struct Reader {
  const Checkpoint& ckpt;
  std::optional<DType> matrix_dtype;

  // Rows [row0, row1) and columns [col0, col1) of the 2-D tensor `name` of full shape [rows, cols].
  StatusOr<HostMatrix> Slice(const std::string& name, int64_t rows, int64_t cols, int64_t row0,
                             int64_t row1, int64_t col0, int64_t col1) const {
    DType dtype = DType::kF32;
    if (matrix_dtype) {
      dtype = *matrix_dtype;
    } else {
      KVS_ASSIGN_OR_RETURN(dtype, ckpt.StoredDType(name));
    }
    HostMatrix out(dtype, row1 - row0, col1 - col0);
    KVS_RETURN_IF_ERROR(
        ckpt.ReadSlice(name, {rows, cols}, row0, row1, col0, col1, dtype, out.data()));
    return out;
  }

  StatusOr<std::vector<float>> Vector(const std::string& name, int64_t n) const {
    std::vector<float> out(n);
    KVS_RETURN_IF_ERROR(ckpt.ReadSliceF32(name, {n}, 0, n, 0, 1, out.data()));
    return out;
  }
};

StatusOr<LayerWeights> LoadLayer(const Reader& rd, const ModelConfig& c, const TpLayout& l,
                                 int64_t i) {
  const std::string p = fmt::format("model.layers.{}.", i);
  const int64_t hd = c.head_dim;
  const int64_t q_rows = c.n_heads * hd, kv_rows = c.n_kv_heads * hd;
  LayerWeights w;
  KVS_ASSIGN_OR_RETURN(w.attn_norm, rd.Vector(p + "input_layernorm.weight", c.dim));
  KVS_ASSIGN_OR_RETURN(w.wq, rd.Slice(p + "self_attn.q_proj.weight", q_rows, c.dim, l.q_head0 * hd,
                                      (l.q_head0 + l.q_heads) * hd, 0, c.dim));
  KVS_ASSIGN_OR_RETURN(w.wk, rd.Slice(p + "self_attn.k_proj.weight", kv_rows, c.dim,
                                      l.kv_head0 * hd, (l.kv_head0 + l.kv_heads) * hd, 0, c.dim));
  KVS_ASSIGN_OR_RETURN(w.wv, rd.Slice(p + "self_attn.v_proj.weight", kv_rows, c.dim,
                                      l.kv_head0 * hd, (l.kv_head0 + l.kv_heads) * hd, 0, c.dim));
  const int64_t o0 = l.q_head0 * hd + l.o_col0;  // this rank's columns of its group's heads
  KVS_ASSIGN_OR_RETURN(
      w.wo, rd.Slice(p + "self_attn.o_proj.weight", c.dim, q_rows, 0, c.dim, o0, o0 + l.o_cols));
  KVS_ASSIGN_OR_RETURN(w.ffn_norm, rd.Vector(p + "post_attention_layernorm.weight", c.dim));
  KVS_ASSIGN_OR_RETURN(w.w_gate, rd.Slice(p + "mlp.gate_proj.weight", c.hidden_dim, c.dim, l.ffn0,
                                          l.ffn0 + l.ffn, 0, c.dim));
  KVS_ASSIGN_OR_RETURN(w.w_up, rd.Slice(p + "mlp.up_proj.weight", c.hidden_dim, c.dim, l.ffn0,
                                        l.ffn0 + l.ffn, 0, c.dim));
  KVS_ASSIGN_OR_RETURN(w.w_down, rd.Slice(p + "mlp.down_proj.weight", c.dim, c.hidden_dim, 0, c.dim,
                                          l.ffn0, l.ffn0 + l.ffn));
  return w;
}

StatusOr<ShardWeights> LoadAll(const Reader& rd, const ModelConfig& c, const TpLayout& l) {
  ShardWeights w;
  KVS_ASSIGN_OR_RETURN(w.embedding, rd.Slice("model.embed_tokens.weight", c.vocab_size, c.dim, 0,
                                             c.vocab_size, 0, c.dim));
  KVS_ASSIGN_OR_RETURN(w.final_norm, rd.Vector("model.norm.weight", c.dim));
  if (c.tie_word_embeddings) {
    w.lm_head = HostMatrix::RowsView(w.embedding, l.vocab0, l.vocab0 + l.vocab);
  } else {
    KVS_ASSIGN_OR_RETURN(w.lm_head, rd.Slice("lm_head.weight", c.vocab_size, c.dim, l.vocab0,
                                             l.vocab0 + l.vocab, 0, c.dim));
  }
  for (int64_t i = 0; i < c.n_layers; ++i) {
    KVS_ASSIGN_OR_RETURN(LayerWeights layer, LoadLayer(rd, c, l, i));
    w.layers.push_back(std::move(layer));
  }
  return w;
}

}  // namespace

int64_t ShardWeights::bytes() const {
  int64_t b = embedding.bytes() + VecBytes(final_norm) + (lm_head.view() ? 0 : lm_head.bytes());
  for (const auto& L : layers) {
    b += VecBytes(L.attn_norm) + VecBytes(L.ffn_norm);
    for (const HostMatrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) {
      b += m->bytes();
    }
  }
  return b;
}

std::string ShardWeights::matrix_dtypes() const {
  bool used[3] = {false, false, false};
  used[static_cast<int>(embedding.dtype())] = true;
  used[static_cast<int>(lm_head.dtype())] = true;
  for (const auto& L : layers) {
    for (const HostMatrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) {
      used[static_cast<int>(m->dtype())] = true;
    }
  }
  std::string out;
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16}) {
    if (!used[static_cast<int>(d)]) continue;
    if (!out.empty()) out += '+';
    out += DTypeName(d);
  }
  return out;
}

int64_t ShardWeights::decode_read_bytes() const {
  const int64_t row = embedding.cols() * static_cast<int64_t>(DTypeSize(embedding.dtype()));
  // The output head is read whole each step, a view of the embedding included.
  return bytes() - embedding.bytes() + row + (lm_head.view() ? lm_head.bytes() : 0);
}

StatusOr<ShardWeights> LoadShardWeights(const Checkpoint& checkpoint, const ModelConfig& config,
                                        const TpLayout& layout, std::optional<DType> matrix_dtype) {
  try {
    return LoadAll(Reader{checkpoint, matrix_dtype}, config, layout);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("not enough host memory for this rank's weight slice");
  }
}

}  // namespace kvshard
