// Format-independent parts of the tokenizer: sequence decoding, picking the file a model
// directory ships, and writing llama2.c tokenizer files for generated models.
#include "coordinator/tokenizer.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>

#include "shard/gguf.h"

namespace kvshard {
namespace {

constexpr size_t kMaxPieceBytes = size_t{1} << 20;
constexpr int32_t kNumControlTokens = 3;  // <unk>, BOS, EOS
constexpr int32_t kSyntheticMinVocab = kNumControlTokens + 256;

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

void AppendU32(std::string* out, uint32_t v) {
  char bytes[sizeof(v)];
  std::memcpy(bytes, &v, sizeof(v));
  out->append(bytes, sizeof(v));
}

Status WriteFile(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return NotFound("cannot create {}", tmp);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    out.close();
    if (!out) return DataLoss("writing {} bytes to {} failed", data.size(), tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return DataLoss("renaming {} to {} failed: {}", tmp, path, ec.message());
  return Status::Ok();
}

}  // namespace

std::optional<uint8_t> ParseBytePiece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return std::nullopt;
  const int hi = HexDigit(piece[3]);
  const int lo = HexDigit(piece[4]);
  if (hi < 0 || lo < 0) return std::nullopt;
  return static_cast<uint8_t>(hi * 16 + lo);
}

std::string Tokenizer::Decode(const std::vector<int32_t>& tokens) const {
  std::string text;
  int32_t prev = bos_id();
  for (int32_t token : tokens) {
    text += DecodeToken(prev, token);
    prev = token;
  }
  return text;
}

StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerFromModelDir(const std::string& dir,
                                                               int32_t vocab_size) {
  if (std::optional<std::string> gguf = GgufModelPath(dir)) {
    KVS_ASSIGN_OR_RETURN(const std::unique_ptr<GgufFile> f, GgufFile::Open(*gguf));
    KVS_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> t, LoadGgufTokenizer(*f));
    if (t->vocab_size() > vocab_size) {
      return InvalidArgument("{}: tokenizer has {} tokens but the model's vocab_size is {}", *gguf,
                             t->vocab_size(), vocab_size);
    }
    return t;
  }
  const std::filesystem::path hf = std::filesystem::path(dir) / "tokenizer.json";
  const std::filesystem::path model = std::filesystem::path(dir) / "tokenizer.model";
  const std::filesystem::path bin = std::filesystem::path(dir) / "tokenizer.bin";
  std::error_code ec;
  std::string path;
  StatusOr<std::unique_ptr<Tokenizer>> tokenizer = NotFound(
      "model directory {} has none of tokenizer.json, tokenizer.model, tokenizer.bin", dir);
  if (std::filesystem::exists(hf, ec)) {
    path = hf.string();
    tokenizer = LoadHfTokenizer(path);
    if (tokenizer.ok() && (*tokenizer)->vocab_size() > vocab_size) {
      return InvalidArgument("{}: tokenizer has {} tokens but the model's vocab_size is {}", path,
                             (*tokenizer)->vocab_size(), vocab_size);
    }
    return tokenizer;
  }
  if (std::filesystem::exists(model, ec)) {
    path = model.string();
    tokenizer = LoadSentencePieceTokenizer(path);
  } else if (std::filesystem::exists(bin, ec)) {
    // The loader itself rejects an entry count that differs from vocab_size, naming both.
    path = bin.string();
    tokenizer = LoadLlama2cTokenizer(path, vocab_size);
  }
  if (!tokenizer.ok()) return tokenizer.status();
  if ((*tokenizer)->vocab_size() != vocab_size) {
    return InvalidArgument("{}: tokenizer has {} tokens but the model's vocab_size is {}", path,
                           (*tokenizer)->vocab_size(), vocab_size);
  }
  return tokenizer;
}

Status WriteLlama2cTokenizer(const std::string& path, const std::vector<std::string>& pieces,
                             const std::vector<float>& scores) {
  if (pieces.empty() || pieces.size() != scores.size()) {
    return InvalidArgument(
        "{}: need one score per piece and at least one piece, got {} pieces "
        "and {} scores",
        path, pieces.size(), scores.size());
  }
  size_t max_len = 1;  // llama2.c readers expect a positive max_token_length
  size_t total = 4;
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (pieces[i].size() > kMaxPieceBytes) {
      return InvalidArgument("{}: piece {} has {} bytes, more than {}", path, i, pieces[i].size(),
                             kMaxPieceBytes);
    }
    if (!std::isfinite(scores[i])) {
      return InvalidArgument("{}: piece {} has a non-finite score {}", path, i, scores[i]);
    }
    max_len = std::max(max_len, pieces[i].size());
    total += 8 + pieces[i].size();
  }
  try {
    std::string data;
    data.reserve(total);
    AppendU32(&data, static_cast<uint32_t>(max_len));
    for (size_t i = 0; i < pieces.size(); ++i) {
      AppendU32(&data, std::bit_cast<uint32_t>(scores[i]));
      AppendU32(&data, static_cast<uint32_t>(pieces[i].size()));
      data += pieces[i];
    }
    return WriteFile(path, data);
  } catch (const std::exception& e) {
    return ResourceExhausted("{}: writing the tokenizer failed: {}", path, e.what());
  }
}

Status SyntheticVocabulary(int32_t vocab_size, std::vector<std::string>* pieces,
                           std::vector<float>* scores) {
  if (vocab_size < kSyntheticMinVocab) {
    return InvalidArgument(
        "a synthetic vocabulary needs vocab_size >= {} (3 control tokens and "
        "256 byte tokens), got {}",
        kSyntheticMinVocab, vocab_size);
  }
  pieces->assign({"<unk>", "\n<s>\n", "\n</s>\n"});
  scores->assign(kNumControlTokens, 0.0f);
  pieces->reserve(vocab_size);
  scores->reserve(vocab_size);
  for (int byte = 0; byte < 256; ++byte) {
    pieces->push_back(fmt::format("<0x{:02X}>", byte));
    scores->push_back(0.0f);
  }
  // BPE only reaches a piece by joining two pieces, and no two pieces here join into " wN" (no
  // single character is a piece), so text always falls back to byte tokens; sampled ids still
  // print as readable words.
  for (int32_t id = kSyntheticMinVocab; id < vocab_size; ++id) {
    pieces->push_back(fmt::format(" w{}", id));
    scores->push_back(-1000.0f - static_cast<float>(id - kSyntheticMinVocab));
  }
  return Status::Ok();
}

}  // namespace kvshard
