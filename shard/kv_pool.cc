#include "shard/kv_pool.h"

#include <new>

namespace kvshard {

int64_t KvPoolShape::bytes_per_token() const {
  const int64_t scale = IsQuantizedKv(dtype) ? static_cast<int64_t>(sizeof(float)) : 0;
  return 2 * layers * kv_heads * (head_dim * static_cast<int64_t>(DTypeSize(dtype)) + scale);
}

KvPool::KvPool(const KvPoolShape& shape)
    : shape_(shape),
      layer_bytes_(shape.num_blocks * shape.block_size * shape.kv_heads * shape.head_dim *
                   static_cast<int64_t>(DTypeSize(shape.dtype))),
      scale_bytes_(IsQuantizedKv(shape.dtype)
                       ? shape.num_blocks * shape.block_size * shape.kv_heads *
                             static_cast<int64_t>(sizeof(float))
                       : 0) {}

StatusOr<std::unique_ptr<KvPool>> KvPool::Create(const KvPoolShape& shape) {
  if (shape.num_blocks <= 0 || shape.block_size <= 0 || shape.layers <= 0) {
    return InvalidArgument("KV pool needs positive blocks ({}), block size ({}) and layers ({})",
                           shape.num_blocks, shape.block_size, shape.layers);
  }
  std::unique_ptr<KvPool> pool(new KvPool(shape));
  try {
    // Codes (or values) first, then the scales.
    pool->data_.resize(2 * shape.layers * (pool->layer_bytes_ + pool->scale_bytes_));
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("cannot allocate {} bytes for {} KV blocks of {} tokens",
                             shape.total_bytes(), shape.num_blocks, shape.block_size);
  }
  return pool;
}

}  // namespace kvshard
