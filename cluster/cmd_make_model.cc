// kvshard make-model: a random-weight Llama model of any shape, for tests and benchmarks.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <filesystem>
#include <random>

#include "cluster/commands.h"
#include "cluster/model_writer.h"
#include "coordinator/tokenizer.h"
#include "shard/dtype.h"

namespace kvshard {
namespace {

struct MakeModelFlags {
  std::string out;
  int64_t layers = 2, dim = 64, heads = 4, kv_heads = 0, ffn = 0, vocab = 512, max_seq_len = 2048;
  int64_t head_dim = 0;
  std::string dtype = "f32";
  uint64_t seed = 1;
  bool tie = false;
  int shards = 1;
  std::string tokenizer;  // copy this tokenizer instead of writing a synthetic vocabulary
  float rope_theta = 10000.0f;
  int64_t sliding_window = 0;  // > 0: every layer but full_layers attends to this many positions
  std::vector<int64_t> full_layers;
};

// Fast uniform [-1, 1) values from a seeded generator; the shape of the numbers matters less
// than that they are reproducible and give every token distinct logits.
void FillUniform(std::vector<float>* v, float scale, std::mt19937_64* rng) {
  for (float& x : *v) {
    x = scale * (static_cast<float>((*rng)() >> 40) * (2.0f / (1 << 24)) - 1.0f);
  }
}

Status MakeModel(const MakeModelFlags& f) {
  ModelConfig c;
  c.dim = f.dim;
  c.hidden_dim = f.ffn > 0 ? f.ffn : 4 * f.dim;
  c.n_layers = f.layers;
  c.n_heads = f.heads;
  c.n_kv_heads = f.kv_heads > 0 ? f.kv_heads : f.heads;
  c.head_dim = f.head_dim > 0 ? f.head_dim : (f.heads > 0 ? f.dim / f.heads : 0);
  c.vocab_size = f.vocab;
  c.max_seq_len = f.max_seq_len;
  c.rope_theta = f.rope_theta;
  c.tie_word_embeddings = f.tie;
  if (f.sliding_window > 0) {
    c.layer_window.assign(static_cast<size_t>(std::max<int64_t>(f.layers, 0)), f.sliding_window);
    for (const int64_t l : f.full_layers) {
      if (l < 0 || l >= f.layers) {
        return InvalidArgument("--full-layers: layer {} outside [0, {})", l, f.layers);
      }
      c.layer_window[static_cast<size_t>(l)] = 0;
    }
  } else if (!f.full_layers.empty()) {
    return InvalidArgument("--full-layers goes with --sliding-window");
  }
  KVS_ASSIGN_OR_RETURN(c.dtype, ParseDType(f.dtype));
  // Whatever the flags say must be a config kvshard itself accepts.
  KVS_ASSIGN_OR_RETURN(c, ParseModelConfig(ModelConfigToJson(c)));

  std::mt19937_64 rng(f.seed);
  std::vector<NamedTensor> tensors;
  for (auto& [name, shape] : LlamaTensorShapes(c)) {
    NamedTensor t{name, shape, {}};
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    t.values.resize(n);
    if (shape.size() == 1) {
      FillUniform(&t.values, 0.2f, &rng);  // norm weights near 1, but each one distinct
      for (float& x : t.values) x += 1.0f;
    } else if (name == "model.embed_tokens.weight") {
      FillUniform(&t.values, 1.0f, &rng);
    } else {
      FillUniform(&t.values, std::sqrt(3.0f / static_cast<float>(shape[1])), &rng);
    }
    tensors.push_back(std::move(t));
  }
  KVS_RETURN_IF_ERROR(WriteModelDir(f.out, c, tensors, f.shards,
                                    {{"format", "pt"}, {"kvshard", "make-model random weights"}}));
  if (!f.tokenizer.empty()) {
    std::error_code ec;
    const std::string name = f.tokenizer.ends_with(".model") ? "tokenizer.model" : "tokenizer.bin";
    std::filesystem::copy_file(f.tokenizer, f.out + "/" + name,
                               std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) return Internal("cannot copy {}: {}", f.tokenizer, ec.message());
  } else {
    std::vector<std::string> pieces;
    std::vector<float> scores;
    KVS_RETURN_IF_ERROR(SyntheticVocabulary(static_cast<int32_t>(c.vocab_size), &pieces, &scores));
    KVS_RETURN_IF_ERROR(WriteLlama2cTokenizer(f.out + "/tokenizer.bin", pieces, scores));
  }
  // A tokenizer that does not match the model is refused now, not at first use.
  KVS_RETURN_IF_ERROR(
      LoadTokenizerFromModelDir(f.out, static_cast<int32_t>(c.vocab_size)).status());
  spdlog::info("wrote {}: {} layers, dim {}, {} heads / {} KV heads, ffn {}, vocab {}, {}", f.out,
               c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.hidden_dim, c.vocab_size,
               DTypeName(c.dtype));
  return Status::Ok();
}

}  // namespace

void RegisterMakeModel(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<MakeModelFlags>();
  CLI::App* cmd = app.add_subcommand("make-model", "Write a random-weight Llama model");
  cmd->add_option("--out", f->out, "Output directory")->required();
  cmd->add_option("--layers", f->layers, "Decoder layers");
  cmd->add_option("--dim", f->dim, "Hidden size");
  cmd->add_option("--heads", f->heads, "Attention heads");
  cmd->add_option("--kv-heads", f->kv_heads, "KV heads (default: heads)");
  cmd->add_option("--head-dim", f->head_dim, "Head size (default: dim / heads)");
  cmd->add_option("--ffn", f->ffn, "MLP width (default: 4 * dim)");
  cmd->add_option("--vocab", f->vocab, "Vocabulary size (>= 259 without --tokenizer)");
  cmd->add_option("--max-seq-len", f->max_seq_len, "Context length");
  cmd->add_option("--rope-theta", f->rope_theta, "RoPE base");
  cmd->add_option("--dtype", f->dtype, "Weight dtype: f32, f16 or bf16");
  cmd->add_option("--seed", f->seed, "Random seed");
  cmd->add_flag("--tie", f->tie, "Tie the output head to the embedding");
  cmd->add_option("--shards", f->shards, "Split the weights over this many safetensors files");
  cmd->add_option("--tokenizer", f->tokenizer, "Use this tokenizer.bin / tokenizer.model");
  cmd->add_option(
      "--sliding-window", f->sliding_window,
      "Sliding-window attention: each query sees this many positions (itself included)");
  cmd->add_option("--full-layers", f->full_layers,
                  "With --sliding-window: these layers attend to the whole context")
      ->delimiter(',');
  cmd->callback([f, exit_code] {
    const Status st = MakeModel(*f);
    if (!st.ok()) spdlog::error("{}", st.ToString());
    *exit_code = st.ok() ? 0 : 1;
  });
}

}  // namespace kvshard
