// One rank's slice of the model weights, read straight from the checkpoint (only that slice is
// touched) and held as f32 in host memory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "shard/model_config.h"
#include "shard/safetensors.h"
#include "shard/tp_layout.h"

namespace kvshard {

struct LayerWeights {
  std::vector<float> attn_norm;  // f32 [dim]
  std::vector<float> wq;         // f32 [q_heads * head_dim, dim]   rows of this rank's heads
  std::vector<float> wk;         // f32 [kv_heads * head_dim, dim]
  std::vector<float> wv;         // f32 [kv_heads * head_dim, dim]
  std::vector<float> wo;         // f32 [dim, o_cols]   this rank's columns of its group's heads
  std::vector<float> ffn_norm;   // f32 [dim]
  std::vector<float> w_gate;     // f32 [ffn, dim]
  std::vector<float> w_up;       // f32 [ffn, dim]
  std::vector<float> w_down;     // f32 [dim, ffn]
};

struct ShardWeights {
  std::vector<float> embedding;   // f32 [vocab, dim] (every rank embeds its own input)
  std::vector<float> final_norm;  // f32 [dim]
  std::vector<float> lm_head;     // f32 [vocab_slice, dim] this rank's rows of the output head
  std::vector<LayerWeights> layers;

  // Bytes held in memory by this rank.
  int64_t bytes() const;
  // Bytes one decode step reads: every layer, the norms and the output head, one embedding row.
  int64_t decode_read_bytes(int64_t dim) const;
};

// Reads the rank's slice. Shapes are checked against config.json; a missing tensor or a shape
// that disagrees is an error naming the tensor.
StatusOr<ShardWeights> LoadShardWeights(const Checkpoint& checkpoint, const ModelConfig& config,
                                        const TpLayout& layout);

}  // namespace kvshard
