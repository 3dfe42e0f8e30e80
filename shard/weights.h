// One rank's slice of the model weights, read straight from the checkpoint (only that slice is
// touched) and held in host memory: each matrix in its stored dtype (bf16 and f16 stay 16-bit and
// are widened inside the kernels) or in a dtype the caller names, the norm weights in f32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "shard/dtype.h"
#include "shard/model_config.h"
#include "shard/safetensors.h"
#include "shard/tp_layout.h"

namespace kvshard {

// Frees a HostMatrix's storage, unless it is a view of another's.
struct HostMatrixFree {
  bool owned = true;
  void operator()(std::byte* p) const;
};

// A row-major [rows, cols] matrix in host memory, 64-byte aligned, in f32, f16 or bf16.
class HostMatrix {
 public:
  HostMatrix() = default;
  // Uninitialised storage; throws std::bad_alloc when the host has no room.
  HostMatrix(DType dtype, int64_t rows, int64_t cols);
  // `values` (rows * cols f32) converted to `dtype`.
  static HostMatrix FromF32(const std::vector<float>& values, int64_t rows, int64_t cols,
                            DType dtype);

  DType dtype() const { return dtype_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t numel() const { return rows_ * cols_; }
  // Whether the storage is packed for the CPU matmul (kernels/cpu/matmul.h: 16-bit only).
  bool packed() const { return packed_; }
  // Bytes of storage (a packed matrix pads its last tile of 4 rows).
  int64_t bytes() const { return storage_elems() * static_cast<int64_t>(DTypeSize(dtype_)); }
  void* data() { return data_.get(); }
  const void* data() const { return data_.get(); }
  // Rows [row0, row1) of `m` (unpacked) without a copy: `m` must outlive the view.
  static HostMatrix RowsView(const HostMatrix& m, int64_t row0, int64_t row1);
  bool view() const { return !data_.get_deleter().owned; }
  // The same values packed for matmul_packed (a 16-bit, unpacked matrix).
  HostMatrix Packed() const;
  std::vector<float> ToF32() const;  // of an unpacked matrix

 private:
  int64_t storage_elems() const;
  DType dtype_ = DType::kF32;
  int64_t rows_ = 0, cols_ = 0;
  bool packed_ = false;
  std::unique_ptr<std::byte, HostMatrixFree> data_;
};

struct LayerWeights {
  std::vector<float> attn_norm;  // f32 [dim]
  HostMatrix wq;                 // [q_heads * head_dim, dim]   rows of this rank's heads
  HostMatrix wk;                 // [kv_heads * head_dim, dim]
  HostMatrix wv;                 // [kv_heads * head_dim, dim]
  HostMatrix wo;                 // [dim, o_cols]   this rank's columns of its group's heads
  std::vector<float> ffn_norm;   // f32 [dim]
  HostMatrix w_gate;             // [ffn, dim]
  HostMatrix w_up;               // [ffn, dim]
  HostMatrix w_down;             // [dim, ffn]
};

struct ShardWeights {
  HostMatrix embedding;           // [vocab, dim] (every rank embeds its own input)
  std::vector<float> final_norm;  // f32 [dim]
  HostMatrix lm_head;  // [vocab_slice, dim] this rank's rows of the output head; with tied
                       // embeddings in f32 a view of the embedding's rows (held once)
  std::vector<LayerWeights> layers;

  // Bytes held in memory by this rank (a view counts in the matrix it views).
  int64_t bytes() const;
  // Bytes one decode step reads: every layer, the norms and the output head, one embedding row.
  int64_t decode_read_bytes() const;
  // The matrices' dtypes: "BF16", or "F32+BF16" (in DType order) when they differ.
  std::string matrix_dtypes() const;
};

// Reads the rank's slice. Shapes are checked against config.json; a missing tensor or a shape
// that disagrees is an error naming the tensor. `matrix_dtype` is the dtype every matrix is held
// in; without one each keeps its stored dtype (Checkpoint::StoredDType: a block-quantized GGUF
// tensor is dequantized to f32).
StatusOr<ShardWeights> LoadShardWeights(const Checkpoint& checkpoint, const ModelConfig& config,
                                        const TpLayout& layout,
                                        std::optional<DType> matrix_dtype = std::nullopt);

}  // namespace kvshard
