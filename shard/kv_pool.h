// One rank's paged KV cache: for every layer a pool of K blocks and one of V blocks holding only
// this rank's KV heads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/status.h"
#include "shard/dtype.h"

namespace kvshard {

struct KvPoolShape {
  int64_t layers = 0;
  int64_t num_blocks = 0;
  int64_t block_size = 16;
  int64_t kv_heads = 0;  // this rank's
  int64_t head_dim = 0;
  DType dtype = DType::kF32;

  // Bytes of one token's K and V in one layer... summed over layers: what a cached token costs,
  // the row scales of a quantized dtype included.
  int64_t bytes_per_token() const;
  int64_t bytes_per_block() const { return bytes_per_token() * block_size; }
  int64_t total_bytes() const { return bytes_per_block() * num_blocks; }
};

class KvPool {
 public:
  // Allocates and zeroes the whole pool up front; an error if memory runs out.
  static StatusOr<std::unique_ptr<KvPool>> Create(const KvPoolShape& shape);

  const KvPoolShape& shape() const { return shape_; }
  // dtype [num_blocks, block_size, kv_heads, head_dim]
  void* k(int64_t layer) { return data_.data() + (2 * layer) * layer_bytes_; }
  void* v(int64_t layer) { return data_.data() + (2 * layer + 1) * layer_bytes_; }
  // Quantized dtypes (IsQuantizedKv): f32 [num_blocks * block_size, kv_heads], one scale per row
  // of k(layer) / v(layer); nullptr for the others.
  float* k_scale(int64_t layer) { return Scales(2 * layer); }
  float* v_scale(int64_t layer) { return Scales(2 * layer + 1); }

 private:
  explicit KvPool(const KvPoolShape& shape);
  float* Scales(int64_t i) {
    if (scale_bytes_ == 0) return nullptr;
    return reinterpret_cast<float*>(data_.data() + 2 * shape_.layers * layer_bytes_ +
                                    i * scale_bytes_);
  }
  KvPoolShape shape_;
  int64_t layer_bytes_ = 0;  // bytes of one layer's K (or V) pool
  int64_t scale_bytes_ = 0;  // bytes of one layer's K (or V) scales (quantized dtypes)
  std::vector<std::byte> data_;
};

}  // namespace kvshard
