// Writes a model directory in the Hugging Face layout kvshard reads: config.json, the weights as
// model.safetensors (or shards plus model.safetensors.index.json) and a tokenizer file.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "shard/model_config.h"

namespace kvshard {

struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;  // f32, converted to the model's dtype when written
};

// `tensors` are written in order; with shards > 1 they are split into that many files of about
// equal size. The directory is created if needed.
Status WriteModelDir(const std::string& dir, const ModelConfig& config,
                     const std::vector<NamedTensor>& tensors, int shards,
                     const std::map<std::string, std::string>& metadata);

// The tensor names and shapes a Llama model of `config` has, in checkpoint order.
std::vector<std::pair<std::string, std::vector<int64_t>>> LlamaTensorShapes(
    const ModelConfig& config);

}  // namespace kvshard
