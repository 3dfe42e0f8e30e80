// kvshard convert-llama2c: a llama2.c checkpoint + tokenizer.bin to the Hugging Face layout.
//
// llama2.c's "legacy" format: seven int32 header fields (dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len; a negative vocab_size means a separate classifier), then f32
// tensors in a fixed order. Its RoPE rotates interleaved pairs (x[2i], x[2i+1]); Hugging Face's
// rotates halves (x[i], x[i + d/2]), so the rows of Wq and Wk are permuted within each head.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstring>
#include <filesystem>

#include "cluster/commands.h"
#include "cluster/model_writer.h"
#include "coordinator/tokenizer.h"
#include "shard/dtype.h"
#include "shard/mapped_file.h"

namespace kvshard {
namespace {

struct ConvertFlags {
  std::string checkpoint, tokenizer, out, dtype = "f32";
  int shards = 1;
};

// Reads consecutive f32 tensors from the checkpoint body, refusing to run past its end.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const std::string& path)
      : data_(data), size_(size), path_(path) {}
  StatusOr<std::vector<float>> Take(int64_t n, const char* what) {
    const uint64_t bytes = static_cast<uint64_t>(n) * sizeof(float);
    if (n < 0 || bytes > size_ - off_) {
      return DataLoss("{}: truncated while reading {} ({} floats at byte {}, file has {} bytes)",
                      path_, what, n, off_, size_);
    }
    std::vector<float> v(n);
    std::memcpy(v.data(), data_ + off_, bytes);
    off_ += bytes;
    return v;
  }
  Status Skip(int64_t n, const char* what) {
    const uint64_t bytes = static_cast<uint64_t>(n) * sizeof(float);
    if (bytes > size_ - off_) return DataLoss("{}: truncated in {}", path_, what);
    off_ += bytes;
    return Status::Ok();
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t off_ = 7 * sizeof(int32_t);
  std::string path_;
};

// Interleaved-pair rows to half-split rows, head by head: old row h*d + 2i + p -> h*d + p*d/2 + i.
std::vector<float> PermuteForRotateHalf(const std::vector<float>& w, int64_t heads,
                                        int64_t head_dim, int64_t cols) {
  std::vector<float> out(w.size());
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t p = 0; p < 2; ++p) {
        const int64_t src = h * head_dim + 2 * i + p, dst = h * head_dim + p * half + i;
        std::memcpy(out.data() + dst * cols, w.data() + src * cols, cols * sizeof(float));
      }
    }
  }
  return out;
}

// Slice `layer` of a tensor stacked over layers: [layers, rows, cols].
std::vector<float> LayerSlice(const std::vector<float>& all, int64_t layer, int64_t n) {
  return std::vector<float>(all.begin() + layer * n, all.begin() + (layer + 1) * n);
}

Status Convert(const ConvertFlags& f) {
  KVS_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(f.checkpoint));
  if (file.size() < 7 * sizeof(int32_t)) {
    return DataLoss("{}: {} bytes is too short for a llama2.c header", f.checkpoint, file.size());
  }
  int32_t h[7];
  std::memcpy(h, file.data(), sizeof(h));
  ModelConfig c;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  const bool shared = h[5] > 0;
  c.vocab_size = h[5] > 0 ? h[5] : -static_cast<int64_t>(h[5]);
  c.max_seq_len = h[6];
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  c.tie_word_embeddings = shared;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  KVS_ASSIGN_OR_RETURN(c.dtype, ParseDType(f.dtype));
  // The header passes the same checks as any config.json, with its numbers in the message.
  auto parsed = ParseModelConfig(ModelConfigToJson(c));
  if (!parsed.ok()) return parsed.status().WithContext(f.checkpoint + ": llama2.c header");
  c = *parsed;

  const int64_t L = c.n_layers, dim = c.dim, hidden = c.hidden_dim, hd = c.head_dim;
  const int64_t kv_dim = c.n_kv_heads * hd;
  Reader r(file.data(), file.size(), f.checkpoint);
  KVS_ASSIGN_OR_RETURN(auto emb, r.Take(c.vocab_size * dim, "token_embedding"));
  KVS_ASSIGN_OR_RETURN(auto rms_att, r.Take(L * dim, "rms_att"));
  KVS_ASSIGN_OR_RETURN(auto wq, r.Take(L * dim * dim, "wq"));
  KVS_ASSIGN_OR_RETURN(auto wk, r.Take(L * kv_dim * dim, "wk"));
  KVS_ASSIGN_OR_RETURN(auto wv, r.Take(L * kv_dim * dim, "wv"));
  KVS_ASSIGN_OR_RETURN(auto wo, r.Take(L * dim * dim, "wo"));
  KVS_ASSIGN_OR_RETURN(auto rms_ffn, r.Take(L * dim, "rms_ffn"));
  KVS_ASSIGN_OR_RETURN(auto w1, r.Take(L * hidden * dim, "w1"));
  KVS_ASSIGN_OR_RETURN(auto w2, r.Take(L * dim * hidden, "w2"));
  KVS_ASSIGN_OR_RETURN(auto w3, r.Take(L * hidden * dim, "w3"));
  KVS_ASSIGN_OR_RETURN(auto rms_final, r.Take(dim, "rms_final"));
  std::vector<float> wcls;
  if (!shared) {
    KVS_RETURN_IF_ERROR(r.Skip(c.max_seq_len * hd, "legacy RoPE tables"));
    KVS_ASSIGN_OR_RETURN(wcls, r.Take(c.vocab_size * dim, "wcls"));
  }

  std::vector<NamedTensor> t;
  t.push_back({"model.embed_tokens.weight", {c.vocab_size, dim}, emb});
  for (int64_t i = 0; i < L; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    t.push_back({p + "input_layernorm.weight", {dim}, LayerSlice(rms_att, i, dim)});
    t.push_back({p + "self_attn.q_proj.weight",
                 {dim, dim},
                 PermuteForRotateHalf(LayerSlice(wq, i, dim * dim), c.n_heads, hd, dim)});
    t.push_back({p + "self_attn.k_proj.weight",
                 {kv_dim, dim},
                 PermuteForRotateHalf(LayerSlice(wk, i, kv_dim * dim), c.n_kv_heads, hd, dim)});
    t.push_back({p + "self_attn.v_proj.weight", {kv_dim, dim}, LayerSlice(wv, i, kv_dim * dim)});
    t.push_back({p + "self_attn.o_proj.weight", {dim, dim}, LayerSlice(wo, i, dim * dim)});
    t.push_back({p + "post_attention_layernorm.weight", {dim}, LayerSlice(rms_ffn, i, dim)});
    t.push_back({p + "mlp.gate_proj.weight", {hidden, dim}, LayerSlice(w1, i, hidden * dim)});
    t.push_back({p + "mlp.up_proj.weight", {hidden, dim}, LayerSlice(w3, i, hidden * dim)});
    t.push_back({p + "mlp.down_proj.weight", {dim, hidden}, LayerSlice(w2, i, dim * hidden)});
  }
  t.push_back({"model.norm.weight", {dim}, rms_final});
  if (!shared) t.push_back({"lm_head.weight", {c.vocab_size, dim}, wcls});

  // The tokenizer must load and match the vocabulary before anything is written.
  KVS_RETURN_IF_ERROR(
      LoadLlama2cTokenizer(f.tokenizer, static_cast<int32_t>(c.vocab_size)).status());
  KVS_RETURN_IF_ERROR(
      WriteModelDir(f.out, c, t, f.shards, {{"format", "pt"}, {"source", "llama2.c checkpoint"}}));
  std::error_code ec;
  std::filesystem::copy_file(f.tokenizer, f.out + "/tokenizer.bin",
                             std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) return Internal("cannot copy {}: {}", f.tokenizer, ec.message());
  spdlog::info("converted {} -> {}: dim {}, {} layers, {} heads / {} KV heads, vocab {}",
               f.checkpoint, f.out, dim, L, c.n_heads, c.n_kv_heads, c.vocab_size);
  return Status::Ok();
}

}  // namespace

void RegisterConvertLlama2c(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<ConvertFlags>();
  CLI::App* cmd =
      app.add_subcommand("convert-llama2c", "Convert a llama2.c checkpoint to the HF layout");
  cmd->add_option("--checkpoint", f->checkpoint, "llama2.c .bin checkpoint")->required();
  cmd->add_option("--tokenizer", f->tokenizer, "llama2.c tokenizer.bin")->required();
  cmd->add_option("--out", f->out, "Output directory")->required();
  cmd->add_option("--dtype", f->dtype, "Weight dtype: f32, f16 or bf16");
  cmd->add_option("--shards", f->shards, "Split the weights over this many files");
  cmd->callback([f, exit_code] {
    const Status st = Convert(*f);
    if (!st.ok()) spdlog::error("{}", st.ToString());
    *exit_code = st.ok() ? 0 : 1;
  });
}

}  // namespace kvshard
