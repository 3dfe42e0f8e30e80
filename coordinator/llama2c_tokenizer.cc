// llama2.c's tokenizer.bin and its SentencePiece-style BPE encoder (after run.c's `encode`):
// dummy-prefix " ", one symbol per UTF-8 codepoint (byte tokens for codepoints the vocabulary
// lacks), then repeatedly merge the adjacent pair whose concatenation is the highest-scoring
// piece, leftmost on ties. run.c rescans every pair after each merge (quadratic); this version
// keeps candidate pairs in a heap, which yields the same merges in the same order, so prompts of
// 100K+ tokens encode in O(n log n).
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <queue>
#include <unordered_map>

#include "coordinator/tokenizer.h"

namespace kvshard {
namespace {

static_assert(std::endian::native == std::endian::little, "tokenizer.bin is little-endian");

constexpr int32_t kUnkId = 0;
constexpr int32_t kBosId = 1;
constexpr int32_t kEosId = 2;
constexpr int32_t kMaxPieceBytes = 1 << 20;
constexpr uint64_t kMaxFileBytes = uint64_t{1} << 30;

class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(std::vector<std::string> pieces, std::vector<float> scores);

  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  std::string DecodeToken(int32_t prev, int32_t token) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  int32_t bos_id() const override { return kBosId; }
  int32_t eos_id() const override { return kEosId; }

 private:
  // Id of a piece that text may produce (not a control or byte token), or -1.
  int32_t Lookup(const std::string& piece) const {
    auto it = piece_to_id_.find(piece);
    return it == piece_to_id_.end() ? -1 : it->second;
  }
  void MergePairs(std::vector<int32_t>* symbols) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<int16_t> byte_value_;  // [vocab] the byte of a <0xXX> piece, or -1
  std::array<int32_t, 256> byte_to_id_;
  std::unordered_map<std::string, int32_t> piece_to_id_;
  int32_t dummy_prefix_id_ = -1;  // the piece " ", if the vocabulary has it
  size_t max_piece_bytes_ = 0;
};

Llama2cTokenizer::Llama2cTokenizer(std::vector<std::string> pieces, std::vector<float> scores)
    : pieces_(std::move(pieces)), scores_(std::move(scores)), byte_value_(pieces_.size(), -1) {
  byte_to_id_.fill(kUnkId);
  std::array<bool, 256> byte_seen{};
  piece_to_id_.reserve(pieces_.size());
  for (int32_t id = kEosId + 1; id < vocab_size(); ++id) {
    const std::string& piece = pieces_[id];
    max_piece_bytes_ = std::max(max_piece_bytes_, piece.size());
    if (std::optional<uint8_t> byte = ParseBytePiece(piece)) {
      byte_value_[id] = *byte;
      if (!byte_seen[*byte]) byte_to_id_[*byte] = id;
      byte_seen[*byte] = true;
    } else if (!piece.empty()) {
      piece_to_id_.emplace(piece, id);  // the first id wins if a piece repeats
    }
  }
  dummy_prefix_id_ = Lookup(" ");
}

std::vector<int32_t> Llama2cTokenizer::Encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos) out.push_back(kBosId);
  if (text.empty()) return out;

  std::vector<int32_t> symbols;
  symbols.reserve(text.size() + 1);
  if (dummy_prefix_id_ >= 0) symbols.push_back(dummy_prefix_id_);
  std::string codepoint;
  for (size_t i = 0; i < text.size();) {
    // A lead byte (or a stray continuation byte) plus up to three continuation bytes.
    size_t len = 1;
    while (len < 4 && i + len < text.size() &&
           (static_cast<uint8_t>(text[i + len]) & 0xC0) == 0x80) {
      ++len;
    }
    codepoint.assign(text.substr(i, len));
    if (int32_t id = Lookup(codepoint); id >= 0) {
      symbols.push_back(id);
    } else {
      for (char c : codepoint) symbols.push_back(byte_to_id_[static_cast<uint8_t>(c)]);
    }
    i += len;
  }
  MergePairs(&symbols);
  out.insert(out.end(), symbols.begin(), symbols.end());
  return out;
}

void Llama2cTokenizer::MergePairs(std::vector<int32_t>* symbols) const {
  const int32_t n = static_cast<int32_t>(symbols->size());
  std::vector<int32_t>& id = *symbols;  // id[i] < 0: symbol i was merged into its left neighbour
  std::vector<int32_t> prev(n), next(n);
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }

  struct Candidate {
    float score;
    int32_t left, right;        // symbol positions
    int32_t left_id, right_id;  // their ids when pushed; a mismatch marks the entry stale
    int32_t merged_id;
  };
  // Highest score first; on ties the leftmost pair, as run.c's scan picks it.
  auto lower_priority = [](const Candidate& a, const Candidate& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(lower_priority)> heap(
      lower_priority);
  std::string joined;
  auto try_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const std::string& a = pieces_[id[left]];
    const std::string& b = pieces_[id[right]];
    if (a.size() + b.size() > max_piece_bytes_) return;
    joined.assign(a).append(b);
    if (int32_t merged = Lookup(joined); merged >= 0) {
      heap.push({scores_[merged], left, right, id[left], id[right], merged});
    }
  };

  for (int32_t i = 0; i + 1 < n; ++i) try_pair(i, i + 1);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    if (id[c.left] != c.left_id || id[c.right] != c.right_id || next[c.left] != c.right) continue;
    id[c.left] = c.merged_id;
    id[c.right] = -1;
    next[c.left] = next[c.right];
    if (next[c.left] >= 0) prev[next[c.left]] = c.left;
    try_pair(prev[c.left], c.left);
    try_pair(c.left, next[c.left]);
  }
  std::erase_if(id, [](int32_t v) { return v < 0; });
}

std::string Llama2cTokenizer::DecodeToken(int32_t prev, int32_t token) const {
  if (token < 0 || token >= vocab_size() || token <= kEosId) return "";
  if (byte_value_[token] >= 0) return std::string(1, static_cast<char>(byte_value_[token]));
  std::string_view piece = pieces_[token];
  if (prev == kBosId && !piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
  return std::string(piece);
}

uint32_t ReadU32(const std::string& data, size_t offset) {
  uint32_t v;
  std::memcpy(&v, data.data() + offset, sizeof(v));
  return v;
}

StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return NotFound("tokenizer file {} does not exist", path);
  if (!std::filesystem::is_regular_file(path, ec)) {
    return InvalidArgument("tokenizer file {} is not a regular file", path);
  }
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return NotFound("cannot stat tokenizer file {}: {}", path, ec.message());
  if (size > kMaxFileBytes) {
    return DataLoss("{}: {} bytes is too large for a llama2.c tokenizer", path, size);
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open tokenizer file {}", path);
  std::string data(size, '\0');
  in.read(data.data(), static_cast<std::streamsize>(size));
  if (static_cast<uint64_t>(in.gcount()) != size) {
    return DataLoss("{}: read {} of {} bytes", path, in.gcount(), size);
  }
  return data;
}

StatusOr<std::unique_ptr<Tokenizer>> ParseLlama2cTokenizer(const std::string& path,
                                                           int32_t vocab_size) {
  if (vocab_size <= kEosId) {
    return InvalidArgument("{}: vocab_size {} is too small (ids 0, 1, 2 are <unk>, BOS, EOS)", path,
                           vocab_size);
  }
  KVS_ASSIGN_OR_RETURN(std::string data, ReadWholeFile(path));
  if (data.size() < 4) {
    return DataLoss("{}: truncated llama2.c tokenizer: {} bytes, no room for max_token_length",
                    path, data.size());
  }
  const int32_t max_token_length = static_cast<int32_t>(ReadU32(data, 0));
  if (max_token_length <= 0 || max_token_length > kMaxPieceBytes) {
    return DataLoss("{}: max_token_length {} is not in [1, {}]", path, max_token_length,
                    kMaxPieceBytes);
  }

  std::vector<std::string> pieces;
  std::vector<float> scores;
  size_t offset = 4;
  while (offset < data.size()) {
    const size_t entry = pieces.size();
    if (data.size() - offset < 8) {
      return DataLoss(
          "{}: truncated at byte {}: entry {} needs an 8-byte score and length, {} "
          "bytes are left",
          path, offset, entry, data.size() - offset);
    }
    const float score = std::bit_cast<float>(ReadU32(data, offset));
    const int32_t length = static_cast<int32_t>(ReadU32(data, offset + 4));
    offset += 8;
    if (!std::isfinite(score)) {
      return DataLoss("{}: entry {} has a non-finite score {}", path, entry, score);
    }
    if (length < 0) return DataLoss("{}: entry {} has a negative length {}", path, entry, length);
    if (length > max_token_length) {
      return DataLoss("{}: entry {} has length {}, more than max_token_length {}", path, entry,
                      length, max_token_length);
    }
    if (data.size() - offset < static_cast<size_t>(length)) {
      return DataLoss("{}: truncated at byte {}: entry {} needs {} bytes, {} are left", path,
                      offset, entry, length, data.size() - offset);
    }
    pieces.emplace_back(data, offset, length);
    scores.push_back(score);
    offset += length;
  }
  if (pieces.size() != static_cast<size_t>(vocab_size)) {
    return InvalidArgument("{}: holds {} tokens but the model's vocab_size is {}", path,
                           pieces.size(), vocab_size);
  }
  return std::unique_ptr<Tokenizer>(
      std::make_unique<Llama2cTokenizer>(std::move(pieces), std::move(scores)));
}

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> MakeLlama2cTokenizer(std::vector<std::string> pieces,
                                                          std::vector<float> scores,
                                                          const std::string& name) {
  if (pieces.size() != scores.size() || pieces.size() <= static_cast<size_t>(kEosId)) {
    return InvalidArgument("{}: {} pieces and {} scores (need one score each and at least 3)", name,
                           pieces.size(), scores.size());
  }
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (!std::isfinite(scores[i])) {
      return DataLoss("{}: token {} has a non-finite score {}", name, i, scores[i]);
    }
    if (pieces[i].size() > static_cast<size_t>(kMaxPieceBytes)) {
      return DataLoss("{}: token {} has {} bytes", name, i, pieces[i].size());
    }
  }
  return std::unique_ptr<Tokenizer>(
      std::make_unique<Llama2cTokenizer>(std::move(pieces), std::move(scores)));
}

StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::string& path,
                                                          int32_t vocab_size) {
  try {
    return ParseLlama2cTokenizer(path, vocab_size);
  } catch (const std::exception& e) {
    return ResourceExhausted("{}: loading the tokenizer failed: {}", path, e.what());
  }
}

}  // namespace kvshard
