// The model hyper-parameters of a Hugging Face Llama checkpoint (`config.json`).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "shard/dtype.h"

namespace kvshard {

enum class RopeScalingType { kNone, kLinear, kLlama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  float factor = 1, low_freq_factor = 1, high_freq_factor = 4;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  int64_t dim = 0;         // hidden_size
  int64_t hidden_dim = 0;  // intermediate_size
  int64_t n_layers = 0;    // num_hidden_layers
  int64_t n_heads = 0;     // num_attention_heads
  int64_t n_kv_heads = 0;  // num_key_value_heads, defaults to n_heads
  int64_t head_dim = 0;    // head_dim, defaults to dim / n_heads
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;  // max_position_embeddings (2048 when absent, as in transformers)
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.f;
  RopeScaling rope_scaling;
  // [head_dim / 2] or empty: a GGUF's rope_freqs.weight, each RoPE inverse frequency divided by
  // its factor (how llama.cpp's converter stores Llama 3.1-style scaling).
  std::vector<float> rope_freq_factors;
  bool tie_word_embeddings = false;
  // Sliding-window attention: [n_layers] positions a query of each layer sees, itself included
  // (it attends to positions p - window + 1 .. p), 0 for full attention; empty: every layer full.
  // From config.json's sliding_window with layer_types (Gemma style), use_sliding_window and
  // max_window_layers (Qwen2 style), or on every layer (Mistral style).
  std::vector<int64_t> layer_window;
  int64_t LayerWindow(int64_t layer) const {
    return layer_window.empty() ? 0 : layer_window[static_cast<size_t>(layer)];
  }
  // The window a position must leave before no layer reads it again: the largest layer window
  // when every layer has one, else 0 (some layer attends to the whole context).
  int64_t KvReleaseWindow() const {
    int64_t w = 0;
    for (const int64_t lw : layer_window) {
      if (lw == 0) return 0;
      w = lw > w ? lw : w;
    }
    return layer_window.empty() ? 0 : w;
  }
  // Attention sinks (StreamingLLM), a run-time option (--attention-sinks N --stream-window W),
  // never in config.json: a sequence keeps the KV of its first N positions and of its last W, and
  // attends with positions within that cache, so it can run past the model's context in bounded
  // memory (up to kStreamContexts (16) x max_seq_len positions, what the block tables address).
  int64_t attention_sinks = 0;
  int64_t stream_window = 0;
  static constexpr int64_t kStreamContexts = 16;
  bool streaming() const { return stream_window > 0; }
  // The most positions one sequence may reach: the context, or with attention sinks many more.
  int64_t MaxPositions() const { return streaming() ? max_seq_len * kStreamContexts : max_seq_len; }
  int32_t bos_token_id = 1;
  std::vector<int32_t> eos_token_ids{2};  // eos_token_id: an int or a list in the JSON
  DType dtype = DType::kF32;              // torch_dtype (or the newer "dtype")
};

// Parses and validates config.json text: sizes positive and below sane limits, heads divisible by
// kv heads, head_dim even, eps and theta finite and positive, a known rope_scaling type, token ids
// within the vocabulary, hidden_act "silu" and no attention/MLP biases. Absent optional fields
// keep the defaults above. Errors name the field and value ("config.json: num_key_value_heads (3)
// must divide num_attention_heads (8)").
StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);

// Reads and parses <model_dir>/config.json, or the metadata of the GGUF file `model_dir` names
// (GgufModelPath: a .gguf file, or a directory holding one and no config.json).
StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

// A GGUF file's llama metadata as a ModelConfig, through the same checks as config.json (errors
// name the file): general.architecture must be "llama"; tied embeddings when there is no
// output.weight; per-dimension RoPE factors from rope_freqs.weight (head_dim / 2 finite, positive
// values of a type kvshard reads).
class GgufFile;
StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& file);

// HF field names, model_type "llama", architectures ["LlamaForCausalLM"]; parses back equal.
std::string ModelConfigToJson(const ModelConfig& config);

}  // namespace kvshard
