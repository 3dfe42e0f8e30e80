// The tokenizer a GGUF file stores (tokenizer.ggml.*), as the encoders kvshard already has:
// byte-level BPE vocabularies ("gpt2") become the tokenizer.json model hf_tokenizer.cc reads,
// with the pre-tokenizer of their tokenizer.ggml.pre family; SentencePiece-style ones ("llama")
// the llama2.c encoder.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "coordinator/hf_tokenizer_json.h"
#include "coordinator/tokenizer.h"
#include "shard/gguf.h"

namespace kvshard {
namespace {

using json = nlohmann::json;

// Pre-tokenizer regexes by llama.cpp's tokenizer.ggml.pre families, as tokenizer.json
// pre-tokenizers.
constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

StatusOr<json> GgufPreTokenizer(const std::string& pre, const std::string& name) {
  const json byte_level_regex = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  const json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  const auto split = [&](const char* pattern) {
    return json{
        {"type", "Sequence"},
        {"pretokenizers",
         json::array(
             {json{{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}},
              byte_level})}};
  };
  for (const char* p : {"llama3", "llama-bpe", "llama-v3", "falcon3", "dbrx", "pixtral"}) {
    if (pre == p) return split(kLlama3Pattern);
  }
  for (const char* p : {"qwen2", "stablelm2", "deepseek-r1-qwen", "megrez"}) {
    if (pre == p) return split(kQwen2Pattern);
  }
  for (const char* p :
       {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}) {
    if (pre == p) {
      return json{
          {"type", "Sequence"},
          {"pretokenizers",
           json::array({json{{"type", "Digits"}, {"individual_digits", true}}, byte_level_regex})}};
    }
  }
  for (const char* p : {"gpt-2", "gpt2", "default", "mpt", "olmo", "jais", "phi-2"}) {
    if (pre == p) return byte_level_regex;
  }
  return InvalidArgument(
      "{}: tokenizer.ggml.pre {:?} is not supported (the llama3, qwen2, smollm/starcoder and "
      "gpt-2 families are)",
      name, pre);
}

StatusOr<std::unique_ptr<Tokenizer>> GgufBpe(const GgufFile& f) {
  const std::string& name = f.name();
  const GgufValue* tokens = f.Find("tokenizer.ggml.tokens");
  const GgufValue* merges = f.Find("tokenizer.ggml.merges");
  if (tokens == nullptr || tokens->strings.empty() || tokens->strings.size() != tokens->size()) {
    return DataLoss("{}: tokenizer.ggml.tokens is missing or not an array of strings", name);
  }
  if (merges == nullptr || merges->strings.size() != merges->size()) {
    return DataLoss("{}: tokenizer.ggml.merges is missing or not an array of strings", name);
  }
  const GgufValue* types = f.Find("tokenizer.ggml.token_type");
  if (types != nullptr && types->ints.size() != tokens->strings.size()) {
    return DataLoss("{}: tokenizer.ggml.token_type has {} entries for {} tokens", name,
                    types->size(), tokens->strings.size());
  }
  std::string pre = "default";
  if (f.Find("tokenizer.ggml.pre") != nullptr) {
    KVS_ASSIGN_OR_RETURN(pre, f.String("tokenizer.ggml.pre"));
  }
  KVS_ASSIGN_OR_RETURN(json pre_tokenizer, GgufPreTokenizer(pre, name));
  // Control (3) and user-defined (4) tokens are added tokens; the rest is the BPE vocabulary.
  json vocab = json::object(), added = json::array();
  for (size_t id = 0; id < tokens->strings.size(); ++id) {
    const std::string& tok = tokens->strings[id];
    const int64_t type = types != nullptr ? types->ints[id] : 1;
    if ((type == 3 || type == 4) && !tok.empty()) {
      added.push_back(json{{"id", id}, {"content", tok}, {"special", type == 3}});
    }
    vocab[tok] = id;
  }
  const auto token_at = [&](const char* key) -> StatusOr<std::string> {
    KVS_ASSIGN_OR_RETURN(const int64_t id, f.Int(key));
    if (id < 0 || static_cast<size_t>(id) >= tokens->strings.size()) {
      return DataLoss("{}: {} = {} is not a token id", name, key, id);
    }
    return tokens->strings[id];
  };
  json config = json::object();
  if (f.Find("tokenizer.ggml.bos_token_id") != nullptr) {
    KVS_ASSIGN_OR_RETURN(config["bos_token"], token_at("tokenizer.ggml.bos_token_id"));
  }
  if (f.Find("tokenizer.ggml.eos_token_id") != nullptr) {
    KVS_ASSIGN_OR_RETURN(config["eos_token"], token_at("tokenizer.ggml.eos_token_id"));
  }
  bool add_bos = false;
  if (f.Find("tokenizer.ggml.add_bos_token") != nullptr) {
    KVS_ASSIGN_OR_RETURN(add_bos, f.Bool("tokenizer.ggml.add_bos_token"));
  }
  config["add_bos_token"] = add_bos;
  json j = {{"added_tokens", added},
            {"normalizer", nullptr},
            {"pre_tokenizer", pre_tokenizer},
            {"post_processor", nullptr},
            {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges->strings}}}};
  return HfTokenizerFromJson(j, config, name);
}

// SentencePiece-style vocabularies ("llama"): "▁" is a space in the llama2.c encoder's pieces.
StatusOr<std::unique_ptr<Tokenizer>> GgufSpm(const GgufFile& f) {
  const std::string& name = f.name();
  const GgufValue* tokens = f.Find("tokenizer.ggml.tokens");
  const GgufValue* scores = f.Find("tokenizer.ggml.scores");
  if (tokens == nullptr || tokens->strings.size() != tokens->size() || tokens->strings.empty()) {
    return DataLoss("{}: tokenizer.ggml.tokens is missing or not an array of strings", name);
  }
  if (scores == nullptr || scores->floats.size() != tokens->strings.size()) {
    return DataLoss("{}: tokenizer.ggml.scores is missing or not one float per token", name);
  }
  for (const char* key : {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"}) {
    if (f.Find(key) == nullptr) continue;
    KVS_ASSIGN_OR_RETURN(const int64_t id, f.Int(key));
    const int64_t want = std::string(key).find("bos") != std::string::npos ? 1 : 2;
    if (id != want) {
      return InvalidArgument("{}: {} = {}; the SentencePiece-style encoder needs {}", name, key, id,
                             want);
    }
  }
  std::vector<std::string> pieces;
  pieces.reserve(tokens->strings.size());
  for (const std::string& t : tokens->strings) {
    std::string p;
    for (size_t i = 0; i < t.size(); ++i) {
      if (t.compare(i, 3, "\xE2\x96\x81") == 0) {
        p.push_back(' ');
        i += 2;
      } else {
        p.push_back(t[i]);
      }
    }
    pieces.push_back(std::move(p));
  }
  std::vector<float> s(scores->floats.begin(), scores->floats.end());
  return MakeLlama2cTokenizer(std::move(pieces), std::move(s), name);
}

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const GgufFile& file) {
  KVS_ASSIGN_OR_RETURN(const std::string model, file.String("tokenizer.ggml.model"));
  try {
    if (model == "gpt2") return GgufBpe(file);
    if (model == "llama") return GgufSpm(file);
  } catch (const json::exception& e) {
    return DataLoss("{}: the tokenizer in the file: {}", file.name(), e.what());
  }
  return InvalidArgument("{}: tokenizer.ggml.model {:?} is not supported (gpt2, llama)",
                         file.name(), model);
}

}  // namespace kvshard
