// SentencePiece tokenizer.model files, encoded by libsentencepiece. Decoding is done per token
// from a table built at load time, with the same rules as the llama2.c tokenizer, so that
// streaming output is identical whichever file a model ships.
#include <sentencepiece_processor.h>

#include <exception>
#include <filesystem>

#include "coordinator/tokenizer.h"

namespace kvshard {
namespace {

constexpr std::string_view kWordBoundary = "\xE2\x96\x81";  // U+2581, SentencePiece's space

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> sp);

  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  std::string DecodeToken(int32_t prev, int32_t token) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(decoded_.size()); }
  int32_t bos_id() const override { return sp_->bos_id(); }
  int32_t eos_id() const override { return sp_->eos_id(); }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::vector<std::string> decoded_;  // [vocab] bytes of each token ("" for control tokens)
  std::vector<bool> is_byte_;         // [vocab] byte tokens keep a leading space after BOS
};

SentencePieceTokenizer::SentencePieceTokenizer(
    std::unique_ptr<sentencepiece::SentencePieceProcessor> sp)
    : sp_(std::move(sp)) {
  const int32_t n = sp_->GetPieceSize();
  decoded_.resize(n);
  is_byte_.resize(n, false);
  for (int32_t id = 0; id < n; ++id) {
    if (sp_->IsControl(id) || sp_->IsUnknown(id)) continue;
    const std::string& piece = sp_->IdToPiece(id);
    if (std::optional<uint8_t> byte = ParseBytePiece(piece); byte && sp_->IsByte(id)) {
      decoded_[id] = std::string(1, static_cast<char>(*byte));
      is_byte_[id] = true;
      continue;
    }
    std::string& text = decoded_[id];
    for (size_t pos = 0; pos < piece.size();) {
      if (std::string_view(piece).substr(pos, kWordBoundary.size()) == kWordBoundary) {
        text.push_back(' ');
        pos += kWordBoundary.size();
      } else {
        text.push_back(piece[pos++]);
      }
    }
  }
}

std::vector<int32_t> SentencePieceTokenizer::Encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos && bos_id() >= 0) out.push_back(bos_id());
  std::vector<int> ids;
  // Encode fails only on an unloaded model; the constructor is only reached after a good Load.
  if (sp_->Encode(text, &ids).ok()) out.insert(out.end(), ids.begin(), ids.end());
  return out;
}

std::string SentencePieceTokenizer::DecodeToken(int32_t prev, int32_t token) const {
  if (token < 0 || token >= vocab_size()) return "";
  std::string_view text = decoded_[token];
  if (prev == bos_id() && !is_byte_[token] && !text.empty() && text.front() == ' ') {
    text.remove_prefix(1);
  }
  return std::string(text);
}

StatusOr<std::unique_ptr<Tokenizer>> ParseSentencePieceTokenizer(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return NotFound("tokenizer file {} does not exist", path);
  if (!std::filesystem::is_regular_file(path, ec)) {
    return InvalidArgument("tokenizer file {} is not a regular file", path);
  }
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  if (const auto status = sp->Load(path); !status.ok()) {
    return DataLoss("{}: not a valid SentencePiece model: {}", path, status.ToString());
  }
  if (sp->GetPieceSize() <= 0) return DataLoss("{}: SentencePiece model has no pieces", path);
  return std::unique_ptr<Tokenizer>(std::make_unique<SentencePieceTokenizer>(std::move(sp)));
}

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path) {
  try {
    return ParseSentencePieceTokenizer(path);
  } catch (const std::exception& e) {
    return DataLoss("{}: loading the SentencePiece model failed: {}", path, e.what());
  }
}

}  // namespace kvshard
