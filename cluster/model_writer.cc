#include "cluster/model_writer.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "shard/dtype.h"
#include "shard/safetensors.h"

namespace kvshard {
namespace {

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return Internal("cannot write {}", path);
  return Status::Ok();
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> LlamaTensorShapes(const ModelConfig& c) {
  const int64_t q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, c.dim}});
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.push_back({p + "input_layernorm.weight", {c.dim}});
    out.push_back({p + "self_attn.q_proj.weight", {q, c.dim}});
    out.push_back({p + "self_attn.k_proj.weight", {kv, c.dim}});
    out.push_back({p + "self_attn.v_proj.weight", {kv, c.dim}});
    out.push_back({p + "self_attn.o_proj.weight", {c.dim, q}});
    out.push_back({p + "post_attention_layernorm.weight", {c.dim}});
    out.push_back({p + "mlp.gate_proj.weight", {c.hidden_dim, c.dim}});
    out.push_back({p + "mlp.up_proj.weight", {c.hidden_dim, c.dim}});
    out.push_back({p + "mlp.down_proj.weight", {c.dim, c.hidden_dim}});
  }
  out.push_back({"model.norm.weight", {c.dim}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, c.dim}});
  return out;
}

Status WriteModelDir(const std::string& dir, const ModelConfig& config,
                     const std::vector<NamedTensor>& tensors, int shards,
                     const std::map<std::string, std::string>& metadata) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Internal("cannot create {}: {}", dir, ec.message());
  KVS_RETURN_IF_ERROR(WriteText(dir + "/config.json", ModelConfigToJson(config) + "\n"));

  // Convert to the model's dtype once; the writer takes raw bytes.
  std::vector<std::vector<uint8_t>> bytes(tensors.size());
  int64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    bytes[i].resize(tensors[i].values.size() * DTypeSize(config.dtype));
    ConvertFromF32(config.dtype, tensors[i].values.data(), bytes[i].data(),
                   tensors[i].values.size());
    total += static_cast<int64_t>(bytes[i].size());
  }
  shards = std::max(1, shards);
  if (shards == 1) {
    std::vector<TensorToWrite> all;
    for (size_t i = 0; i < tensors.size(); ++i) {
      all.push_back({tensors[i].name, config.dtype, tensors[i].shape, bytes[i].data()});
    }
    std::filesystem::remove(dir + "/model.safetensors.index.json", ec);
    return WriteSafetensors(dir + "/model.safetensors", all, metadata);
  }
  nlohmann::json index = {{"metadata", {{"total_size", total}}},
                          {"weight_map", nlohmann::json::object()}};
  const int64_t per_shard = (total + shards - 1) / shards;
  size_t next = 0;
  for (int s = 0; s < shards && next < tensors.size(); ++s) {
    const std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards);
    std::vector<TensorToWrite> part;
    int64_t size = 0;
    while (next < tensors.size() && (size < per_shard || s == shards - 1)) {
      part.push_back({tensors[next].name, config.dtype, tensors[next].shape, bytes[next].data()});
      index["weight_map"][tensors[next].name] = name;
      size += static_cast<int64_t>(bytes[next].size());
      ++next;
    }
    KVS_RETURN_IF_ERROR(WriteSafetensors(dir + "/" + name, part, metadata));
  }
  std::filesystem::remove(dir + "/model.safetensors", ec);
  return WriteText(dir + "/model.safetensors.index.json", index.dump(2) + "\n");
}

}  // namespace kvshard
