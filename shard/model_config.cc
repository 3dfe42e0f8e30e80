#include "shard/model_config.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "kernels/cpu/dequant.h"
#include "shard/gguf.h"
#include "shard/mapped_file.h"

namespace kvshard {
namespace {

using json = nlohmann::json;

constexpr int64_t kMaxDim = int64_t{1} << 20;
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxHeads = 1024;
constexpr int64_t kMaxHeadDim = int64_t{1} << 14;
constexpr int64_t kMaxVocab = int64_t{1} << 22;
constexpr int64_t kMaxSeqLen = int64_t{1} << 24;
constexpr int64_t kDefaultMaxSeqLen = 2048;

std::string Snippet(const json& j) {
  std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 48) s = s.substr(0, 45) + "...";
  return s;
}

// The value at `key`, or nullptr when it is absent or null (both mean "use the default").
const json* Field(const json& obj, const char* key) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

Status ToInt(const json& v, const std::string& name, int64_t* out) {
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{std::numeric_limits<int64_t>::max()}) {
    return InvalidArgument("config.json: {} ({}) is too large", name, Snippet(v));
  }
  if (!v.is_number_integer()) {
    return InvalidArgument("config.json: {} must be an integer, got {}", name, Snippet(v));
  }
  *out = v.get<int64_t>();
  return Status::Ok();
}

// Reads an integer field; absent or null leaves *out as it is unless `required`.
Status GetInt(const json& obj, const char* key, bool required, int64_t* out,
              const std::string& prefix = "") {
  const json* v = Field(obj, key);
  if (v == nullptr) {
    if (required) return InvalidArgument("config.json: {}{} is missing", prefix, key);
    return Status::Ok();
  }
  return ToInt(*v, prefix + key, out);
}

// Reads a number field as float; it must be finite as a float.
Status GetFloat(const json& obj, const char* key, bool required, float* out,
                const std::string& prefix = "") {
  const json* v = Field(obj, key);
  if (v == nullptr) {
    if (required) return InvalidArgument("config.json: {}{} is missing", prefix, key);
    return Status::Ok();
  }
  if (!v->is_number()) {
    return InvalidArgument("config.json: {}{} must be a number, got {}", prefix, key, Snippet(*v));
  }
  const float f = static_cast<float>(v->get<double>());
  if (!std::isfinite(f)) {
    return InvalidArgument("config.json: {}{} ({}) is not a finite float", prefix, key,
                           Snippet(*v));
  }
  *out = f;
  return Status::Ok();
}

Status GetBool(const json& obj, const char* key, bool* out) {
  const json* v = Field(obj, key);
  if (v == nullptr) return Status::Ok();
  if (!v->is_boolean()) {
    return InvalidArgument("config.json: {} must be true or false, got {}", key, Snippet(*v));
  }
  *out = v->get<bool>();
  return Status::Ok();
}

Status CheckRange(const char* key, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) {
    return InvalidArgument("config.json: {} ({}) must be in [{}, {}]", key, value, lo, hi);
  }
  return Status::Ok();
}

Status CheckPositive(const std::string& key, float value) {
  if (!(value > 0)) return InvalidArgument("config.json: {} ({}) must be > 0", key, value);
  return Status::Ok();
}

Status CheckTokenId(const char* key, int64_t id, int64_t vocab) {
  if (id < 0 || id >= vocab) {
    return InvalidArgument("config.json: {} ({}) is outside the vocabulary [0, {})", key, id,
                           vocab);
  }
  return Status::Ok();
}

Status ParseRopeScaling(const json& rs, RopeScaling* out) {
  if (!rs.is_object()) {
    return InvalidArgument("config.json: rope_scaling must be an object, got {}", Snippet(rs));
  }
  const json* type = Field(rs, "rope_type");
  if (type == nullptr) type = Field(rs, "type");
  if (type == nullptr) return InvalidArgument("config.json: rope_scaling has no rope_type");
  if (!type->is_string()) {
    return InvalidArgument("config.json: rope_scaling.rope_type must be a string, got {}",
                           Snippet(*type));
  }
  const auto& name = type->get_ref<const std::string&>();
  RopeScaling scaling;
  const std::string prefix = "rope_scaling.";
  if (name == "default") {
    *out = scaling;
    return Status::Ok();
  }
  if (name == "linear") {
    scaling.type = RopeScalingType::kLinear;
    KVS_RETURN_IF_ERROR(GetFloat(rs, "factor", true, &scaling.factor, prefix));
    KVS_RETURN_IF_ERROR(CheckPositive(prefix + "factor", scaling.factor));
    *out = scaling;
    return Status::Ok();
  }
  if (name != "llama3") {
    return InvalidArgument(
        "config.json: rope_scaling type \"{}\" is not supported (expected default, linear or "
        "llama3)",
        name);
  }
  scaling.type = RopeScalingType::kLlama3;
  KVS_RETURN_IF_ERROR(GetFloat(rs, "factor", true, &scaling.factor, prefix));
  KVS_RETURN_IF_ERROR(GetFloat(rs, "low_freq_factor", true, &scaling.low_freq_factor, prefix));
  KVS_RETURN_IF_ERROR(GetFloat(rs, "high_freq_factor", true, &scaling.high_freq_factor, prefix));
  KVS_RETURN_IF_ERROR(GetInt(rs, "original_max_position_embeddings", true,
                             &scaling.original_max_position_embeddings, prefix));
  KVS_RETURN_IF_ERROR(CheckPositive(prefix + "factor", scaling.factor));
  KVS_RETURN_IF_ERROR(CheckPositive(prefix + "low_freq_factor", scaling.low_freq_factor));
  if (!(scaling.high_freq_factor > scaling.low_freq_factor)) {
    return InvalidArgument(
        "config.json: rope_scaling.high_freq_factor ({}) must exceed low_freq_factor ({})",
        scaling.high_freq_factor, scaling.low_freq_factor);
  }
  KVS_RETURN_IF_ERROR(CheckRange("rope_scaling.original_max_position_embeddings",
                                 scaling.original_max_position_embeddings, 1, kMaxSeqLen));
  *out = scaling;
  return Status::Ok();
}

// sliding_window (an int, or null), use_sliding_window and max_window_layers (Qwen2: layers from
// max_window_layers on slide), layer_types ("sliding_attention" / "full_attention" per layer).
Status ParseSlidingWindow(const json& j, ModelConfig* c) {
  int64_t window = 0;
  KVS_RETURN_IF_ERROR(GetInt(j, "sliding_window", false, &window));
  if (Field(j, "sliding_window") != nullptr) {
    KVS_RETURN_IF_ERROR(CheckRange("sliding_window", window, 1, kMaxSeqLen));
  }
  bool use = true;
  KVS_RETURN_IF_ERROR(GetBool(j, "use_sliding_window", &use));
  const json* types = Field(j, "layer_types");
  if (window == 0 || !use) {
    if (types != nullptr && types->is_array()) {
      for (const json& t : *types) {
        if (t == "sliding_attention" && use) {
          return InvalidArgument(
              "config.json: layer_types has sliding_attention layers but "
              "sliding_window is missing");
        }
      }
    }
    return Status::Ok();
  }
  c->layer_window.assign(static_cast<size_t>(c->n_layers), window);
  if (types != nullptr) {
    if (!types->is_array() || static_cast<int64_t>(types->size()) != c->n_layers) {
      return InvalidArgument(
          "config.json: layer_types must list num_hidden_layers ({}) types, got "
          "{}",
          c->n_layers, Snippet(*types));
    }
    for (size_t i = 0; i < types->size(); ++i) {
      const json& t = (*types)[i];
      if (t == "full_attention") {
        c->layer_window[i] = 0;
      } else if (t != "sliding_attention") {
        return InvalidArgument(
            "config.json: layer_types[{}] {} is not supported (sliding_attention or "
            "full_attention)",
            i, Snippet(t));
      }
    }
  } else if (Field(j, "use_sliding_window") != nullptr) {
    int64_t from = 0;
    KVS_RETURN_IF_ERROR(GetInt(j, "max_window_layers", false, &from));
    for (int64_t i = 0; i < std::min(from, c->n_layers); ++i) c->layer_window[i] = 0;
  }
  return Status::Ok();
}

StatusOr<ModelConfig> ParseUnguarded(std::string_view text) {
  const json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument("config.json: not valid JSON");
  if (!j.is_object()) {
    return InvalidArgument("config.json: must be a JSON object, got a {}", j.type_name());
  }
  ModelConfig c;
  KVS_RETURN_IF_ERROR(GetInt(j, "hidden_size", true, &c.dim));
  KVS_RETURN_IF_ERROR(CheckRange("hidden_size", c.dim, 1, kMaxDim));
  KVS_RETURN_IF_ERROR(GetInt(j, "intermediate_size", true, &c.hidden_dim));
  KVS_RETURN_IF_ERROR(CheckRange("intermediate_size", c.hidden_dim, 1, kMaxDim));
  KVS_RETURN_IF_ERROR(GetInt(j, "num_hidden_layers", true, &c.n_layers));
  KVS_RETURN_IF_ERROR(CheckRange("num_hidden_layers", c.n_layers, 1, kMaxLayers));
  KVS_RETURN_IF_ERROR(GetInt(j, "num_attention_heads", true, &c.n_heads));
  KVS_RETURN_IF_ERROR(CheckRange("num_attention_heads", c.n_heads, 1, kMaxHeads));
  c.n_kv_heads = c.n_heads;
  KVS_RETURN_IF_ERROR(GetInt(j, "num_key_value_heads", false, &c.n_kv_heads));
  KVS_RETURN_IF_ERROR(CheckRange("num_key_value_heads", c.n_kv_heads, 1, kMaxHeads));
  if (c.n_heads % c.n_kv_heads != 0) {
    return InvalidArgument(
        "config.json: num_key_value_heads ({}) must divide num_attention_heads ({})", c.n_kv_heads,
        c.n_heads);
  }
  if (Field(j, "head_dim") != nullptr) {
    KVS_RETURN_IF_ERROR(GetInt(j, "head_dim", true, &c.head_dim));
    KVS_RETURN_IF_ERROR(CheckRange("head_dim", c.head_dim, 1, kMaxHeadDim));
  } else {
    if (c.dim % c.n_heads != 0) {
      return InvalidArgument(
          "config.json: num_attention_heads ({}) must divide hidden_size ({}) when head_dim is "
          "absent",
          c.n_heads, c.dim);
    }
    c.head_dim = c.dim / c.n_heads;
  }
  if (c.head_dim % 2 != 0) {
    return InvalidArgument("config.json: head_dim ({}) must be even for rotary embeddings",
                           c.head_dim);
  }
  KVS_RETURN_IF_ERROR(GetInt(j, "vocab_size", true, &c.vocab_size));
  KVS_RETURN_IF_ERROR(CheckRange("vocab_size", c.vocab_size, 1, kMaxVocab));
  c.max_seq_len = kDefaultMaxSeqLen;
  KVS_RETURN_IF_ERROR(GetInt(j, "max_position_embeddings", false, &c.max_seq_len));
  KVS_RETURN_IF_ERROR(CheckRange("max_position_embeddings", c.max_seq_len, 1, kMaxSeqLen));

  KVS_RETURN_IF_ERROR(GetFloat(j, "rms_norm_eps", false, &c.rms_norm_eps));
  KVS_RETURN_IF_ERROR(CheckPositive("rms_norm_eps", c.rms_norm_eps));
  // Newer transformers nest rope_theta and the scaling under "rope_parameters".
  const json* rope_params = Field(j, "rope_parameters");
  if (rope_params != nullptr && !rope_params->is_object()) {
    return InvalidArgument("config.json: rope_parameters must be an object, got {}",
                           Snippet(*rope_params));
  }
  KVS_RETURN_IF_ERROR(GetFloat(j, "rope_theta", false, &c.rope_theta));
  if (rope_params != nullptr) {
    KVS_RETURN_IF_ERROR(
        GetFloat(*rope_params, "rope_theta", false, &c.rope_theta, "rope_parameters."));
  }
  KVS_RETURN_IF_ERROR(CheckPositive("rope_theta", c.rope_theta));
  const json* rope_scaling = Field(j, "rope_scaling");
  if (rope_scaling == nullptr) rope_scaling = rope_params;
  if (rope_scaling != nullptr) {
    KVS_RETURN_IF_ERROR(ParseRopeScaling(*rope_scaling, &c.rope_scaling));
  }

  KVS_RETURN_IF_ERROR(GetBool(j, "tie_word_embeddings", &c.tie_word_embeddings));
  KVS_RETURN_IF_ERROR(ParseSlidingWindow(j, &c));
  int64_t bos = c.bos_token_id;
  KVS_RETURN_IF_ERROR(GetInt(j, "bos_token_id", false, &bos));
  KVS_RETURN_IF_ERROR(CheckTokenId("bos_token_id", bos, c.vocab_size));
  c.bos_token_id = static_cast<int32_t>(bos);
  if (const json* v = Field(j, "eos_token_id")) {
    // A list may be empty: then only the length limit ends generation.
    const json ids = v->is_array() ? *v : json::array({*v});
    c.eos_token_ids.clear();
    for (const json& id : ids) {
      int64_t eos = 0;
      KVS_RETURN_IF_ERROR(ToInt(id, "eos_token_id", &eos));
      KVS_RETURN_IF_ERROR(CheckTokenId("eos_token_id", eos, c.vocab_size));
      c.eos_token_ids.push_back(static_cast<int32_t>(eos));
    }
  } else {
    for (const int32_t eos : c.eos_token_ids) {
      KVS_RETURN_IF_ERROR(CheckTokenId("eos_token_id (default)", eos, c.vocab_size));
    }
  }

  const json* dtype = Field(j, "torch_dtype");
  if (dtype == nullptr) dtype = Field(j, "dtype");
  if (dtype != nullptr) {
    if (!dtype->is_string()) {
      return InvalidArgument("config.json: torch_dtype must be a string, got {}", Snippet(*dtype));
    }
    auto parsed = ParseDType(dtype->get_ref<const std::string&>());
    if (!parsed.ok()) return parsed.status().WithContext("config.json: torch_dtype");
    c.dtype = *parsed;
  }

  // kvshard implements the Llama block only; refuse what it would silently compute wrong.
  if (const json* act = Field(j, "hidden_act"); act != nullptr && *act != "silu") {
    return InvalidArgument("config.json: hidden_act {} is not supported (only \"silu\")",
                           Snippet(*act));
  }
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    bool bias = false;
    KVS_RETURN_IF_ERROR(GetBool(j, key, &bias));
    if (bias) return InvalidArgument("config.json: {} = true is not supported", key);
  }
  return c;
}

const char* TorchDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "float32";
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
    case DType::kI8:
    case DType::kF8E4M3: break;  // KV dtypes only
  }
  return "float32";
}

// A double that prints as the float's shortest decimal form (1e-05, not 9.999999747378752e-06)
// and still converts back to exactly the same float.
double ShortestDouble(float f) { return std::stod(fmt::format("{}", f)); }

}  // namespace

StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  try {
    return ParseUnguarded(json_text);
  } catch (const std::exception& e) {
    return InvalidArgument("config.json: {}", e.what());
  }
}

StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& f) {
  KVS_ASSIGN_OR_RETURN(const std::string arch, f.String("general.architecture"));
  if (arch != "llama") {
    return InvalidArgument("{}: general.architecture {:?}; kvshard runs \"llama\" models", f.name(),
                           arch);
  }
  // The equivalent config.json, so that the same checks and defaults apply.
  json j = {{"model_type", "llama"}, {"torch_dtype", "float32"}, {"hidden_act", "silu"}};
  const auto take_int = [&](const char* key, const char* field, bool required) -> Status {
    const std::string k = arch + "." + key;
    if (f.Find(k) == nullptr) {
      return required ? NotFound("{}: no metadata key {}", f.name(), k) : Status::Ok();
    }
    KVS_ASSIGN_OR_RETURN(j[field], f.Int(k));
    return Status::Ok();
  };
  KVS_RETURN_IF_ERROR(take_int("embedding_length", "hidden_size", true));
  KVS_RETURN_IF_ERROR(take_int("feed_forward_length", "intermediate_size", true));
  KVS_RETURN_IF_ERROR(take_int("block_count", "num_hidden_layers", true));
  KVS_RETURN_IF_ERROR(take_int("attention.head_count", "num_attention_heads", true));
  KVS_RETURN_IF_ERROR(take_int("attention.head_count_kv", "num_key_value_heads", false));
  KVS_RETURN_IF_ERROR(take_int("attention.key_length", "head_dim", false));
  KVS_RETURN_IF_ERROR(take_int("context_length", "max_position_embeddings", false));
  KVS_RETURN_IF_ERROR(take_int("vocab_size", "vocab_size", false));
  if (!j.contains("vocab_size")) {
    const GgufValue* tokens = f.Find("tokenizer.ggml.tokens");
    if (tokens == nullptr) return NotFound("{}: no {}.vocab_size and no tokens", f.name(), arch);
    j["vocab_size"] = tokens->size();
  }
  if (f.Find(arch + ".attention.layer_norm_rms_epsilon") != nullptr) {
    KVS_ASSIGN_OR_RETURN(j["rms_norm_eps"], f.Float(arch + ".attention.layer_norm_rms_epsilon"));
  }
  if (f.Find(arch + ".rope.freq_base") != nullptr) {
    KVS_ASSIGN_OR_RETURN(j["rope_theta"], f.Float(arch + ".rope.freq_base"));
  }
  if (f.Find(arch + ".rope.scaling.type") != nullptr) {
    KVS_ASSIGN_OR_RETURN(const std::string type, f.String(arch + ".rope.scaling.type"));
    if (type == "linear") {
      KVS_ASSIGN_OR_RETURN(const double factor, f.Float(arch + ".rope.scaling.factor"));
      j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", factor}};
    } else if (type != "none") {
      return InvalidArgument("{}: {}.rope.scaling.type {:?} is not supported", f.name(), arch,
                             type);
    }
  }
  if (f.Find("tokenizer.ggml.bos_token_id") != nullptr) {
    KVS_ASSIGN_OR_RETURN(j["bos_token_id"], f.Int("tokenizer.ggml.bos_token_id"));
  }
  if (f.Find("tokenizer.ggml.eos_token_id") != nullptr) {
    KVS_ASSIGN_OR_RETURN(j["eos_token_id"], f.Int("tokenizer.ggml.eos_token_id"));
  }
  j["tie_word_embeddings"] = f.Tensor("output.weight") == nullptr;
  auto config = ParseModelConfig(j.dump());
  if (!config.ok()) return config.status().WithContext(f.name() + " (its GGUF metadata)");
  if (const GgufTensor* t = f.Tensor("rope_freqs.weight")) {
    const int64_t half = config->head_dim / 2;
    const std::optional<GgmlTypeInfo> type = GgmlTypeInfoOf(t->type);
    if (t->ne.size() != 1 || t->ne[0] != half || !type || !type->dequantizable ||
        type->block_elems != 1) {
      return DataLoss("{}: rope_freqs.weight must be {} values (head_dim / 2) of F32, F16 or BF16",
                      f.name(), half);
    }
    config->rope_freq_factors.resize(half);
    dequantize_row(t->type, f.TensorData(*t), config->rope_freq_factors.data(), half);
    for (int64_t i = 0; i < half; ++i) {
      const float x = config->rope_freq_factors[i];
      if (!std::isfinite(x) || x <= 0) {
        return DataLoss("{}: rope_freqs.weight[{}] is {}; RoPE factors must be finite and positive",
                        f.name(), i, x);
      }
    }
  }
  return config;
}

StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  if (std::optional<std::string> gguf = GgufModelPath(model_dir)) {
    KVS_ASSIGN_OR_RETURN(const std::unique_ptr<GgufFile> f, GgufFile::Open(*gguf));
    return ModelConfigFromGguf(*f);
  }
  const std::string path = model_dir + "/config.json";
  KVS_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  const std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
  auto config = ParseModelConfig(text);
  if (!config.ok()) return config.status().WithContext(model_dir);
  return config;
}

std::string ModelConfigToJson(const ModelConfig& c) {
  json j = {
      {"architectures", json::array({"LlamaForCausalLM"})},
      {"model_type", "llama"},
      {"hidden_act", "silu"},
      {"hidden_size", c.dim},
      {"intermediate_size", c.hidden_dim},
      {"num_hidden_layers", c.n_layers},
      {"num_attention_heads", c.n_heads},
      {"num_key_value_heads", c.n_kv_heads},
      {"head_dim", c.head_dim},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.max_seq_len},
      {"rms_norm_eps", ShortestDouble(c.rms_norm_eps)},
      {"rope_theta", ShortestDouble(c.rope_theta)},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"bos_token_id", c.bos_token_id},
      {"torch_dtype", TorchDTypeName(c.dtype)},
  };
  if (!c.layer_window.empty()) {
    int64_t window = 0;
    for (const int64_t w : c.layer_window) window = std::max(window, w);
    j["sliding_window"] = window;
    json types = json::array();
    for (const int64_t w : c.layer_window) {  // config.json has one window size
      types.push_back(w == 0 ? "full_attention" : "sliding_attention");
    }
    j["layer_types"] = types;
  }
  if (c.eos_token_ids.size() == 1) {
    j["eos_token_id"] = c.eos_token_ids[0];
  } else {
    j["eos_token_id"] = c.eos_token_ids;
  }
  const RopeScaling& rs = c.rope_scaling;
  switch (rs.type) {
    case RopeScalingType::kNone: j["rope_scaling"] = nullptr; break;
    case RopeScalingType::kLinear:
      j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", ShortestDouble(rs.factor)}};
      break;
    case RopeScalingType::kLlama3:
      j["rope_scaling"] = {
          {"rope_type", "llama3"},
          {"factor", ShortestDouble(rs.factor)},
          {"low_freq_factor", ShortestDouble(rs.low_freq_factor)},
          {"high_freq_factor", ShortestDouble(rs.high_freq_factor)},
          {"original_max_position_embeddings", rs.original_max_position_embeddings},
      };
      break;
  }
  return j.dump(2);
}

}  // namespace kvshard
