// RoPE inverse frequencies with the model's rope_scaling (none, linear, Llama 3).
#pragma once

#include <vector>

#include "shard/model_config.h"

namespace kvshard {

// f32 [head_dim / 2]: theta^(-2i/head_dim), rescaled as config.rope_scaling says, then divided by
// config.rope_freq_factors where a GGUF gave them.
std::vector<float> RopeInverseFrequencies(const ModelConfig& config);

}  // namespace kvshard
