// One rank's weight slice on its GPU: the matrices in the compute dtype (bf16 by default; the host
// slice of shard/weights.h is read in that dtype, so it is copied as it is), the norm weights in
// f32.
#pragma once

#include <cuda_runtime.h>

#include <vector>

#include "common/cuda/device_buffer.h"
#include "common/status.h"
#include "shard/dtype.h"
#include "shard/weights.h"

namespace kvshard::cuda {

struct DeviceLayerWeights {
  DeviceBuffer attn_norm;  // f32 [dim]
  DeviceBuffer wq;         // dtype [q_heads * head_dim, dim]
  DeviceBuffer wk;         // dtype [kv_heads * head_dim, dim]
  DeviceBuffer wv;         // dtype [kv_heads * head_dim, dim]
  DeviceBuffer wo;         // dtype [dim, q_heads * head_dim]
  DeviceBuffer ffn_norm;   // f32 [dim]
  DeviceBuffer w_gate;     // dtype [ffn, dim]
  DeviceBuffer w_up;       // dtype [ffn, dim]
  DeviceBuffer w_down;     // dtype [dim, ffn]
};

struct DeviceWeights {
  DType dtype = DType::kBF16;  // of the matrices and the embedding
  DeviceBuffer embedding;      // dtype [vocab, dim]
  DeviceBuffer final_norm;     // f32 [dim]
  DeviceBuffer lm_head;        // dtype [vocab_slice, dim]
  std::vector<DeviceLayerWeights> layers;
  int64_t bytes = 0;  // device memory held
};

// Converts and copies `host` to the current device (synchronously: this is start-up).
StatusOr<DeviceWeights> UploadWeights(const ShardWeights& host, DType dtype);

}  // namespace kvshard::cuda
