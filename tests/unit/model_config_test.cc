#include "shard/model_config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace kvshard {
namespace {

using json = nlohmann::json;

// Llama-3.2-1B's config.json, as published.
constexpr const char* kLlama32Config = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

// A TinyLlama-style config: no head_dim, eos an int, no rope_scaling.
json TinyConfig() {
  return json::parse(R"({
    "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512,
    "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "bos_token_id": 1,
    "eos_token_id": 2, "torch_dtype": "float32", "rope_scaling": null
  })");
}

void ExpectConfigError(const std::string& text, const std::string& fragment) {
  const auto parsed = ParseModelConfig(text);
  ASSERT_FALSE(parsed.ok()) << "expected an error containing: " << fragment << " in " << text;
  EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(parsed.status().message().find(fragment), std::string::npos)
      << "message \"" << parsed.status().message() << "\" lacks \"" << fragment << "\"";
}

// TinyConfig with `key` set to the JSON `value` (or removed when value is "DELETE").
std::string TinyWith(const std::string& key, const std::string& value) {
  json j = TinyConfig();
  if (value == "DELETE") {
    j.erase(key);
  } else {
    j[key] = json::parse(value);
  }
  return j.dump();
}

TEST(ModelConfigTest, ParsesLlama32WithLlama3RopeScaling) {
  const auto c = ParseModelConfig(kLlama32Config);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->dim, 2048);
  EXPECT_EQ(c->hidden_dim, 8192);
  EXPECT_EQ(c->n_layers, 16);
  EXPECT_EQ(c->n_heads, 32);
  EXPECT_EQ(c->n_kv_heads, 8);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_EQ(c->max_seq_len, 131072);
  EXPECT_EQ(c->rms_norm_eps, 1e-5f);
  EXPECT_EQ(c->rope_theta, 500000.f);
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(c->rope_scaling.factor, 32.f);
  EXPECT_EQ(c->rope_scaling.low_freq_factor, 1.f);
  EXPECT_EQ(c->rope_scaling.high_freq_factor, 4.f);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, 128000);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_EQ(c->dtype, DType::kBF16);
}

TEST(ModelConfigTest, DefaultsForAbsentFields) {
  const auto c = ParseModelConfig(TinyConfig().dump());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->head_dim, 8);  // hidden_size / num_attention_heads
  EXPECT_EQ(c->n_kv_heads, 4);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{2}));
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kNone);
  EXPECT_EQ(c->rope_theta, 10000.f);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->dtype, DType::kF32);

  const auto no_kv = ParseModelConfig(TinyWith("num_key_value_heads", "DELETE"));
  ASSERT_TRUE(no_kv.ok());
  EXPECT_EQ(no_kv->n_kv_heads, 8);
  const auto no_seq = ParseModelConfig(TinyWith("max_position_embeddings", "DELETE"));
  ASSERT_TRUE(no_seq.ok());
  EXPECT_EQ(no_seq->max_seq_len, 2048);
  const auto newer_dtype_key = ParseModelConfig(
      R"({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
          "num_attention_heads": 4, "vocab_size": 16, "dtype": "float16"})");
  ASSERT_TRUE(newer_dtype_key.ok()) << newer_dtype_key.status().ToString();
  EXPECT_EQ(newer_dtype_key->dtype, DType::kF16);
}

TEST(ModelConfigTest, RopeScalingVariants) {
  auto linear = ParseModelConfig(TinyWith("rope_scaling", R"({"type": "linear", "factor": 2.0})"));
  ASSERT_TRUE(linear.ok()) << linear.status().ToString();
  EXPECT_EQ(linear->rope_scaling.type, RopeScalingType::kLinear);
  EXPECT_EQ(linear->rope_scaling.factor, 2.f);
  auto dflt = ParseModelConfig(TinyWith("rope_scaling", R"({"rope_type": "default"})"));
  ASSERT_TRUE(dflt.ok());
  EXPECT_EQ(dflt->rope_scaling.type, RopeScalingType::kNone);
  // transformers >= 4.56 nests theta and the scaling in rope_parameters.
  auto nested = ParseModelConfig(
      TinyWith("rope_parameters", R"({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192})"));
  ASSERT_TRUE(nested.ok()) << nested.status().ToString();
  EXPECT_EQ(nested->rope_theta, 500000.f);
  EXPECT_EQ(nested->rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(nested->rope_scaling.factor, 8.f);
}

TEST(ModelConfigTest, RoundTripsThroughJson) {
  for (const std::string& text : {std::string(kLlama32Config), TinyConfig().dump(),
                                  TinyWith("rope_scaling", R"({"type": "linear", "factor": 4})")}) {
    const auto c = ParseModelConfig(text);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    const std::string emitted = ModelConfigToJson(c.value());
    const json j = json::parse(emitted);
    EXPECT_EQ(j["model_type"], "llama");
    EXPECT_EQ(j["architectures"], json::array({"LlamaForCausalLM"}));
    const auto back = ParseModelConfig(emitted);
    ASSERT_TRUE(back.ok()) << back.status().ToString() << "\n" << emitted;
    EXPECT_EQ(back->dim, c->dim);
    EXPECT_EQ(back->hidden_dim, c->hidden_dim);
    EXPECT_EQ(back->n_layers, c->n_layers);
    EXPECT_EQ(back->n_heads, c->n_heads);
    EXPECT_EQ(back->n_kv_heads, c->n_kv_heads);
    EXPECT_EQ(back->head_dim, c->head_dim);
    EXPECT_EQ(back->vocab_size, c->vocab_size);
    EXPECT_EQ(back->max_seq_len, c->max_seq_len);
    EXPECT_EQ(back->rms_norm_eps, c->rms_norm_eps);
    EXPECT_EQ(back->rope_theta, c->rope_theta);
    EXPECT_EQ(back->rope_scaling.type, c->rope_scaling.type);
    EXPECT_EQ(back->rope_scaling.factor, c->rope_scaling.factor);
    EXPECT_EQ(back->rope_scaling.low_freq_factor, c->rope_scaling.low_freq_factor);
    EXPECT_EQ(back->rope_scaling.high_freq_factor, c->rope_scaling.high_freq_factor);
    EXPECT_EQ(back->rope_scaling.original_max_position_embeddings,
              c->rope_scaling.original_max_position_embeddings);
    EXPECT_EQ(back->tie_word_embeddings, c->tie_word_embeddings);
    EXPECT_EQ(back->bos_token_id, c->bos_token_id);
    EXPECT_EQ(back->eos_token_ids, c->eos_token_ids);
    EXPECT_EQ(back->dtype, c->dtype);
  }
  EXPECT_NE(ModelConfigToJson(ParseModelConfig(TinyConfig().dump()).value()).find("1e-06"),
            std::string::npos);
}

TEST(ModelConfigTest, ImpossibleSizes) {
  ExpectConfigError(TinyWith("num_hidden_layers", "0"),
                    "config.json: num_hidden_layers (0) must be in [1, 1024]");
  ExpectConfigError(TinyWith("num_key_value_heads", "3"),
                    "config.json: num_key_value_heads (3) must divide num_attention_heads (8)");
  ExpectConfigError(TinyWith("hidden_size", "-4096"), "config.json: hidden_size (-4096)");
  ExpectConfigError(TinyWith("hidden_size", "9223372036854775808"),
                    "hidden_size (9223372036854775808) is too large");
  ExpectConfigError(TinyWith("intermediate_size", "2000000"), "intermediate_size (2000000)");
  ExpectConfigError(TinyWith("vocab_size", "0"), "vocab_size (0)");
  ExpectConfigError(TinyWith("num_attention_heads", "5000"), "num_attention_heads (5000)");
  ExpectConfigError(TinyWith("max_position_embeddings", "100000000"),
                    "max_position_embeddings (100000000)");
  ExpectConfigError(TinyWith("num_attention_heads", "12"),
                    "num_attention_heads (12) must divide hidden_size (64)");
  ExpectConfigError(TinyWith("head_dim", "7"), "head_dim (7) must be even");
  ExpectConfigError(TinyWith("hidden_size", "DELETE"), "config.json: hidden_size is missing");
}

TEST(ModelConfigTest, BadFloats) {
  ExpectConfigError(R"({"hidden_size": 64, "rms_norm_eps": NaN})", "not valid JSON");
  ExpectConfigError(TinyWith("rms_norm_eps", "1e300"), "rms_norm_eps (1e+300) is not a finite");
  ExpectConfigError(TinyWith("rms_norm_eps", "-1e-5"), "rms_norm_eps (-1e-05) must be > 0");
  ExpectConfigError(TinyWith("rms_norm_eps", "0"), "rms_norm_eps (0) must be > 0");
  ExpectConfigError(TinyWith("rope_theta", "0.0"), "rope_theta (0) must be > 0");
  ExpectConfigError(TinyWith("rope_theta", "\"10000\""), "rope_theta must be a number");
}

TEST(ModelConfigTest, BadRopeScaling) {
  ExpectConfigError(TinyWith("rope_scaling", R"({"rope_type": "yarn", "factor": 4})"),
                    "rope_scaling type \"yarn\" is not supported");
  ExpectConfigError(TinyWith("rope_scaling", R"({"type": "linear", "factor": 0})"),
                    "rope_scaling.factor (0) must be > 0");
  ExpectConfigError(TinyWith("rope_scaling", R"({"type": "linear"})"),
                    "rope_scaling.factor is missing");
  ExpectConfigError(TinyWith("rope_scaling", R"({"factor": 2})"), "rope_scaling has no rope_type");
  ExpectConfigError(TinyWith("rope_scaling", "\"llama3\""), "rope_scaling must be an object");
  ExpectConfigError(
      TinyWith("rope_scaling", R"({"rope_type": "llama3", "factor": 8, "high_freq_factor": 4,
                                   "original_max_position_embeddings": 8192})"),
      "rope_scaling.low_freq_factor is missing");
  ExpectConfigError(
      TinyWith("rope_scaling", R"({"rope_type": "llama3", "factor": 8, "low_freq_factor": 4,
                                   "high_freq_factor": 4, "original_max_position_embeddings": 8192})"),
      "high_freq_factor (4) must exceed low_freq_factor (4)");
}

TEST(ModelConfigTest, WrongJsonTypes) {
  ExpectConfigError(TinyWith("hidden_size", "\"4096\""),
                    "config.json: hidden_size must be an integer, got \"4096\"");
  ExpectConfigError(TinyWith("num_hidden_layers", "2.0"), "num_hidden_layers must be an integer");
  ExpectConfigError(TinyWith("num_hidden_layers", "[2]"), "num_hidden_layers must be an integer");
  ExpectConfigError(TinyWith("tie_word_embeddings", "1"),
                    "tie_word_embeddings must be true or false");
  ExpectConfigError(TinyWith("eos_token_id", "\"</s>\""), "eos_token_id must be an integer");
  ExpectConfigError(TinyWith("torch_dtype", "\"float64\""),
                    "torch_dtype: unknown dtype \"float64\"");
  ExpectConfigError(TinyWith("torch_dtype", "16"), "torch_dtype must be a string");
  ExpectConfigError("[1, 2, 3]", "must be a JSON object, got a array");
  ExpectConfigError("", "not valid JSON");
  ExpectConfigError("{\"hidden_size\": 64,", "not valid JSON");
}

TEST(ModelConfigTest, TokenIdsAndUnsupportedFeatures) {
  ExpectConfigError(TinyWith("bos_token_id", "512"),
                    "bos_token_id (512) is outside the vocabulary [0, 512)");
  ExpectConfigError(TinyWith("eos_token_id", "[2, -1]"), "eos_token_id (-1) is outside");
  ExpectConfigError(TinyWith("vocab_size", "2"),
                    "eos_token_id (2) is outside the vocabulary [0, 2)");
  ExpectConfigError(TinyWith("hidden_act", "\"gelu\""), "hidden_act \"gelu\" is not supported");
  ExpectConfigError(TinyWith("attention_bias", "true"), "attention_bias = true is not supported");
  const auto no_eos = ParseModelConfig(TinyWith("eos_token_id", "[]"));
  ASSERT_TRUE(no_eos.ok());
  EXPECT_TRUE(no_eos->eos_token_ids.empty());
}

TEST(ModelConfigTest, LoadFromDirectory) {
  char tmpl[] = "/tmp/kvshard_config_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  auto missing = LoadModelConfig(dir);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(dir + "/config.json"), std::string::npos);

  std::ofstream(dir + "/config.json") << kLlama32Config;
  auto loaded = LoadModelConfig(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->n_layers, 16);

  std::ofstream(dir + "/config.json") << TinyWith("num_key_value_heads", "3");
  auto bad = LoadModelConfig(dir);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(dir + ": config.json: num_key_value_heads (3)"),
            std::string::npos)
      << bad.status().message();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvshard

namespace kvshard {
namespace {

// Sliding windows as Mistral (every layer), Gemma (layer_types) and Qwen2 (use_sliding_window,
// max_window_layers) configs give them; null or disabled windows; bad layer types.
TEST(ModelConfigTest, SlidingWindows) {
  json j = TinyConfig();
  const int64_t layers = j["num_hidden_layers"];
  ASSERT_GE(layers, 2);
  EXPECT_TRUE(ParseModelConfig(j.dump())->layer_window.empty());
  j["sliding_window"] = nullptr;  // Mistral v0.2+: no window
  EXPECT_TRUE(ParseModelConfig(j.dump())->layer_window.empty());
  j["sliding_window"] = 4096;
  auto mistral = ParseModelConfig(j.dump());
  ASSERT_TRUE(mistral.ok()) << mistral.status().ToString();
  EXPECT_EQ(mistral->layer_window, std::vector<int64_t>(layers, 4096));
  EXPECT_EQ(mistral->KvReleaseWindow(), 4096);
  json types = json::array();
  for (int64_t i = 0; i < layers; ++i)
    types.push_back(i == 1 ? "full_attention" : "sliding_attention");
  j["layer_types"] = types;
  auto gemma = ParseModelConfig(j.dump());
  ASSERT_TRUE(gemma.ok()) << gemma.status().ToString();
  EXPECT_EQ(gemma->LayerWindow(0), 4096);
  EXPECT_EQ(gemma->LayerWindow(1), 0);
  EXPECT_EQ(gemma->KvReleaseWindow(), 0) << "a full layer reads every position";
  // Round trip through our own writer.
  auto back = ParseModelConfig(ModelConfigToJson(*gemma));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->layer_window, gemma->layer_window);
  j.erase("layer_types");
  j["use_sliding_window"] = false;  // Qwen2's default: the window is not used
  EXPECT_TRUE(ParseModelConfig(j.dump())->layer_window.empty());
  j["use_sliding_window"] = true;
  j["max_window_layers"] = 1;  // layers from 1 on slide
  auto qwen = ParseModelConfig(j.dump());
  ASSERT_TRUE(qwen.ok()) << qwen.status().ToString();
  EXPECT_EQ(qwen->LayerWindow(0), 0);
  EXPECT_EQ(qwen->LayerWindow(1), 4096);
  j.erase("use_sliding_window");
  j.erase("max_window_layers");
  j["layer_types"] = json::array({"sliding_attention"});
  ExpectConfigError(j.dump(), "layer_types must list num_hidden_layers");
  types[0] = "chunked_attention";
  j["layer_types"] = types;
  ExpectConfigError(j.dump(), "layer_types[0] \"chunked_attention\" is not supported");
  j["sliding_window"] = 0;
  ExpectConfigError(j.dump(), "sliding_window (0) must be in");
}

}  // namespace
}  // namespace kvshard
