// kvshard tokenize: the model's tokenizer on one text, ids printed comma-separated on stdout (no
// MPI, no weights). --bos prepends BOS where the tokenizer's template does; --decode prints the
// text the ids decode back to on a second line.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cluster/commands.h"
#include "coordinator/tokenizer.h"
#include "shard/gguf.h"
#include "shard/model_config.h"

namespace kvshard {
namespace {

struct TokenizeFlags {
  std::string model, text, text_file;
  bool text_given = false;
  bool bos = false, decode = false;
};

// The model directory's tokenizer, checked against its config.json when it has one (a directory
// with only a tokenizer file is accepted too).
StatusOr<std::unique_ptr<Tokenizer>> ModelTokenizer(const std::string& dir) {
  std::error_code ec;
  if (std::optional<std::string> gguf = GgufModelPath(dir)) {
    KVS_ASSIGN_OR_RETURN(const std::unique_ptr<GgufFile> f, GgufFile::Open(*gguf));
    return LoadGgufTokenizer(*f);
  }
  if (!std::filesystem::is_directory(dir, ec)) {
    return NotFound("--model {}: not a model directory or .gguf file", dir);
  }
  if (std::filesystem::exists(std::filesystem::path(dir) / "config.json", ec)) {
    KVS_ASSIGN_OR_RETURN(const ModelConfig config, LoadModelConfig(dir));
    return LoadTokenizerFromModelDir(dir, static_cast<int32_t>(config.vocab_size));
  }
  const std::filesystem::path hf = std::filesystem::path(dir) / "tokenizer.json";
  if (std::filesystem::exists(hf, ec)) return LoadHfTokenizer(hf.string());
  const std::filesystem::path sp = std::filesystem::path(dir) / "tokenizer.model";
  if (std::filesystem::exists(sp, ec)) return LoadSentencePieceTokenizer(sp.string());
  return NotFound("--model {}: no config.json, tokenizer.json or tokenizer.model", dir);
}

Status Tokenize(const TokenizeFlags& f) {
  KVS_ASSIGN_OR_RETURN(const std::unique_ptr<Tokenizer> tok, ModelTokenizer(f.model));
  std::string text = f.text;
  if (f.text_given == !f.text_file.empty()) {
    return InvalidArgument("give one of --text and --text-file");
  }
  if (!f.text_file.empty()) {
    std::ifstream in(f.text_file, std::ios::binary);
    if (!in) return NotFound("--text-file {}: cannot open", f.text_file);
    std::ostringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  const std::vector<int32_t> ids = tok->Encode(text, f.bos);
  std::string line;
  for (int32_t id : ids) {
    if (!line.empty()) line += ',';
    line += std::to_string(id);
  }
  std::printf("%s\n", line.c_str());
  if (f.decode) std::printf("%s\n", tok->Decode(ids).c_str());
  return Status::Ok();
}

}  // namespace

void RegisterTokenize(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<TokenizeFlags>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Print the token ids of a text");
  cmd->add_option("--model", f->model, "Model directory (its tokenizer file) or .gguf file")
      ->required();
  CLI::Option* text = cmd->add_option("--text", f->text, "Text to tokenize");
  cmd->add_option("--text-file", f->text_file, "Or the bytes of this file");
  cmd->add_flag("--bos", f->bos, "Prepend BOS where the tokenizer's template does");
  cmd->add_flag("--decode", f->decode, "Also print the ids decoded back to text");
  cmd->callback([f, exit_code, text] {
    f->text_given = text->count() > 0;
    const Status st = Tokenize(*f);
    if (!st.ok()) spdlog::error("{}", st.ToString());
    *exit_code = st.ok() ? 0 : 1;
  });
}

}  // namespace kvshard
