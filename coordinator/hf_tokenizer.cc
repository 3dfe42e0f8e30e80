// Hugging Face tokenizer.json files with a byte-level BPE model (GPT-2, Llama 3, SmolLM2, Qwen
// style), after the `tokenizers` library's pipeline:
//   1. added tokens are cut out first (leftmost-longest), as whole tokens;
//   2. the rest is pre-tokenized: Split (a regex with Unicode classes, compiled by PCRE2),
//      Digits, and ByteLevel (GPT-2's regex when use_regex, then each byte mapped to a printable
//      character);
//   3. each piece is looked up whole when the model says ignore_merges, else merged by rank.
// Text that is not valid UTF-8 is first repaired as Python's errors="replace" does (one U+FFFD
// per maximal ill-formed subpart), so kvshard's ids equal `tokenizers` on the repaired string.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "coordinator/hf_tokenizer_json.h"
#include "coordinator/text_stream.h"
#include "coordinator/tokenizer.h"

namespace kvshard {
namespace {

using json = nlohmann::json;

constexpr size_t kMaxFileBytes = size_t{1} << 30;
constexpr size_t kMaxTokenBytes = size_t{1} << 16;
constexpr int64_t kMaxVocab = int64_t{1} << 24;

// GPT-2's pre-tokenizer regex (ByteLevel with use_regex).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// GPT-2's byte -> character table: printable bytes map to themselves, the others to U+0100 on.
std::array<uint32_t, 256> ByteToCodepoint() {
  std::array<uint32_t, 256> map{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    map[b] = printable ? b : next++;
  }
  return map;
}

void AppendUtf8(std::string* out, uint32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

struct Pcre2CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
using Regex = std::unique_ptr<pcre2_code, Pcre2CodeDeleter>;

StatusOr<Regex> CompileRegex(const std::string& pattern, const std::string& where) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &error, &offset, nullptr);
  if (code == nullptr) {
    std::array<PCRE2_UCHAR, 256> message{};
    pcre2_get_error_message(error, message.data(), message.size());
    return InvalidArgument("{}: regex {:?} does not compile at offset {}: {}", where, pattern,
                           offset, reinterpret_cast<const char*>(message.data()));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional: matching works without it
  return Regex(code);
}

// One pre-tokenizer step, applied to every piece.
struct PreStep {
  enum Kind { kSplit, kDigits, kByteLevelRegex } kind;
  Regex regex;              // kSplit, kByteLevelRegex
  bool removed = false;     // kSplit: behavior "Removed" (matches dropped) instead of "Isolated"
  bool invert = false;      // kSplit: the pattern matches the pieces' separators' complement
  bool individual = false;  // kDigits: one piece per digit
};

// Pieces of [begin, end) of `text` cut by `regex`: matches and the gaps between them, in order
// (behavior Isolated; Removed drops the matches; invert swaps the roles).
void SplitByRegex(const PreStep& step, std::string_view text, pcre2_match_data* md,
                  std::vector<std::string_view>* out) {
  size_t pos = 0, gap = 0;
  const auto emit = [&](size_t b, size_t e, bool is_match) {
    if (e <= b) return;
    const bool keep = step.invert ? is_match || !step.removed : !is_match || !step.removed;
    if (keep) out->push_back(text.substr(b, e - b));
  };
  while (pos <= text.size()) {
    const int rc = pcre2_match(step.regex.get(), reinterpret_cast<PCRE2_SPTR>(text.data()),
                               text.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t b = ov[0], e = ov[1];
    if (e == b) {  // an empty match: step over one character
      if (b >= text.size()) break;
      pos = b + std::max(1, Utf8SequenceAt(text, b));
      continue;
    }
    emit(gap, b, false);
    emit(b, e, true);
    gap = pos = e;
  }
  emit(gap, text.size(), false);
}

void SplitDigits(bool individual, std::string_view text, std::vector<std::string_view>* out) {
  size_t start = 0;
  const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  for (size_t i = 0; i < text.size(); ++i) {
    const bool d = is_digit(text[i]);
    if (!d) continue;
    if (i > start) out->push_back(text.substr(start, i - start));
    size_t j = i + 1;
    if (!individual) {
      while (j < text.size() && is_digit(text[j])) ++j;
    }
    out->push_back(text.substr(i, j - i));
    start = j;
    i = j - 1;
  }
  if (start < text.size()) out->push_back(text.substr(start));
}

struct AddedToken {
  std::string content;
  int32_t id;
  bool special, lstrip, rstrip;
};

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

class HfTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  std::string DecodeToken(int32_t prev, int32_t token) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }

  static StatusOr<std::unique_ptr<Tokenizer>> Parse(std::string_view text,
                                                    std::string_view config_text,
                                                    const std::string& path);
  // From a parsed tokenizer.json `j` and tokenizer_config.json `c` (null when there is none).
  static StatusOr<std::unique_ptr<Tokenizer>> FromJson(const json& j, const json& c,
                                                       const std::string& path);

 private:
  void EncodeText(std::string_view text, pcre2_match_data* md, std::vector<int32_t>* out) const;
  void EncodePiece(std::string_view piece, std::vector<int32_t>* out) const;

  std::vector<std::string> pieces_;  // id -> token text as the file has it (byte-mapped)
  std::vector<std::string> bytes_;   // id -> the bytes it decodes to
  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (a, b) -> (rank, a+b)
  std::vector<AddedToken> added_;                                     // longest first
  std::array<std::vector<int>, 256> added_by_first_;  // first byte -> indexes into added_
  std::vector<PreStep> steps_;
  bool byte_level_ = true;
  bool ignore_merges_ = false;
  bool add_prefix_space_ = false;
  std::array<int32_t, 256> byte_ids_{};  // byte -> id of its mapped character (-1: none)
  int32_t unk_ = -1;
  int32_t bos_ = -1, eos_ = -1;
  bool adds_bos_ = false;
};

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

void HfTokenizer::EncodePiece(std::string_view piece, std::vector<int32_t>* out) const {
  // `piece` is raw bytes; the vocabulary holds byte-mapped text.
  std::string mapped;
  static const std::array<uint32_t, 256> kMap = ByteToCodepoint();
  for (unsigned char c : piece) AppendUtf8(&mapped, kMap[c]);
  if (ignore_merges_) {
    if (auto it = vocab_.find(mapped); it != vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  // Symbols: one per byte, then merges by rank, lowest first and leftmost among equals.
  std::vector<int32_t> sym;
  sym.reserve(piece.size());
  for (unsigned char c : piece) {
    if (byte_ids_[c] >= 0) {
      sym.push_back(byte_ids_[c]);
    } else if (unk_ >= 0) {
      sym.push_back(unk_);
    }
  }
  const int n = static_cast<int>(sym.size());
  std::vector<int> next(n), prev(n);
  for (int i = 0; i < n; ++i) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t left, right;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  const auto push = [&](int i) {
    if (i < 0 || next[i] < 0) return;
    if (auto it = merges_.find(PairKey(sym[i], sym[next[i]])); it != merges_.end()) {
      heap.push(Candidate{it->second.first, i, sym[i], sym[next[i]]});
    }
  };
  for (int i = 0; i < n; ++i) push(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int i = c.pos;
    if (sym[i] != c.left || next[i] < 0 || sym[next[i]] != c.right) continue;  // stale
    const int j = next[i];
    sym[i] = merges_.at(PairKey(c.left, c.right)).second;
    sym[j] = -1;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    push(prev[i]);
    push(i);
  }
  for (int i = 0; i >= 0 && i < n; i = next[i]) out->push_back(sym[i]);
}

void HfTokenizer::EncodeText(std::string_view segment, pcre2_match_data* md,
                             std::vector<int32_t>* out) const {
  // ByteLevel's add_prefix_space: each segment between added tokens gets a leading space.
  std::string spaced;
  std::string_view text = segment;
  if (add_prefix_space_ && segment[0] != ' ') {
    spaced.reserve(segment.size() + 1);
    spaced.push_back(' ');
    spaced.append(segment);
    text = spaced;
  }
  std::vector<std::string_view> pieces = {text}, cut;
  for (const PreStep& step : steps_) {
    cut.clear();
    for (std::string_view p : pieces) {
      if (step.kind == PreStep::kDigits) {
        SplitDigits(step.individual, p, &cut);
      } else {
        SplitByRegex(step, p, md, &cut);
      }
    }
    pieces.swap(cut);
  }
  for (std::string_view p : pieces) EncodePiece(p, out);
}

std::vector<int32_t> HfTokenizer::Encode(std::string_view raw, bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos && adds_bos_ && bos_ >= 0) out.push_back(bos_);
  const std::string text = SanitizeUtf8(raw);
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
      pcre2_match_data_create(2, nullptr), &pcre2_match_data_free);
  // Added tokens first: leftmost-longest, each one id; the text between goes through BPE.
  size_t start = 0;
  const std::string_view t = text;
  for (size_t i = 0; i < t.size();) {
    const AddedToken* hit = nullptr;
    for (int k : added_by_first_[static_cast<unsigned char>(t[i])]) {
      if (t.compare(i, added_[k].content.size(), added_[k].content) == 0) {
        hit = &added_[k];
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t before_end = i;
    if (hit->lstrip) {
      while (before_end > start && IsSpace(t[before_end - 1])) --before_end;
    }
    if (before_end > start) EncodeText(t.substr(start, before_end - start), md.get(), &out);
    out.push_back(hit->id);
    i += hit->content.size();
    if (hit->rstrip) {
      while (i < t.size() && IsSpace(t[i])) ++i;
    }
    start = i;
  }
  if (start < t.size()) EncodeText(t.substr(start), md.get(), &out);
  return out;
}

std::string HfTokenizer::DecodeToken(int32_t /*prev*/, int32_t token) const {
  if (token < 0 || token >= vocab_size()) return "";
  return bytes_[token];
}

// A token's text in tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> TokenText(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return std::nullopt;
}

StatusOr<std::string> ReadSmallFile(const std::string& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) return NotFound("{}: cannot read: {}", path, ec.message());
  if (size > kMaxFileBytes)
    return DataLoss("{}: {} bytes, more than a tokenizer file has", path, size);
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  if (!in && !in.eof()) return DataLoss("{}: read failed", path);
  return buf.str();
}

StatusOr<std::unique_ptr<Tokenizer>> HfTokenizer::Parse(std::string_view text,
                                                        std::string_view config_text,
                                                        const std::string& path) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return DataLoss("{}: not a JSON object", path);
  json c;  // null: no tokenizer_config.json
  if (!config_text.empty()) {
    c = json::parse(config_text, nullptr, false);
    if (c.is_discarded() || !c.is_object()) {
      return DataLoss("{}: tokenizer_config.json beside it is not a JSON object", path);
    }
  }
  return FromJson(j, c, path);
}

StatusOr<std::unique_ptr<Tokenizer>> HfTokenizer::FromJson(const json& j, const json& c,
                                                           const std::string& path) {
  std::error_code ec;
  auto t = std::make_unique<HfTokenizer>();
  try {
    const json& model = j.at("model");
    const std::string type = model.value("type", "");
    if (type != "BPE") {
      return InvalidArgument(
          "{}: model type {:?}: only byte-level BPE tokenizer.json files are read", path, type);
    }
    if (model.value("byte_fallback", false)) {
      return InvalidArgument(
          "{}: a BPE model with byte_fallback (SentencePiece style) is not supported; use its "
          "tokenizer.model",
          path);
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
        return InvalidArgument("{}: BPE {} is not supported", path, key);
      }
    }
    t->ignore_merges_ = model.value("ignore_merges", false);
    const json& vocab = model.at("vocab");
    if (!vocab.is_object()) return DataLoss("{}: model.vocab is not an object", path);
    int64_t max_id = -1;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      if (!it.value().is_number_integer())
        return DataLoss("{}: vocab entry {:?} has no integer id", path, it.key());
      const int64_t id = it.value().get<int64_t>();
      if (id < 0 || id >= kMaxVocab)
        return DataLoss("{}: vocab id {} of {:?} out of range", path, id, it.key());
      if (it.key().size() > kMaxTokenBytes)
        return DataLoss("{}: a vocab token of {} bytes", path, it.key().size());
      max_id = std::max(max_id, id);
    }
    std::vector<AddedToken> added;
    if (j.contains("added_tokens")) {
      if (!j["added_tokens"].is_array()) return DataLoss("{}: added_tokens is not an array", path);
      for (const json& a : j["added_tokens"]) {
        AddedToken tok{a.at("content").get<std::string>(), 0, a.value("special", false),
                       a.value("lstrip", false), a.value("rstrip", false)};
        const int64_t id = a.at("id").get<int64_t>();
        if (id < 0 || id >= kMaxVocab)
          return DataLoss("{}: added token id {} out of range", path, id);
        if (tok.content.empty() || tok.content.size() > kMaxTokenBytes)
          return DataLoss("{}: added token {} has {} bytes", path, id, tok.content.size());
        tok.id = static_cast<int32_t>(id);
        max_id = std::max(max_id, id);
        added.push_back(std::move(tok));
      }
    }
    if (max_id < 0) return DataLoss("{}: an empty vocabulary", path);
    t->pieces_.assign(max_id + 1, "");
    t->bytes_.assign(max_id + 1, "");
    std::unordered_map<uint32_t, uint8_t> unmap;
    const std::array<uint32_t, 256> map = ByteToCodepoint();
    for (int b = 0; b < 256; ++b) unmap[map[b]] = static_cast<uint8_t>(b);
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const int32_t id = it.value().get<int32_t>();
      t->pieces_[id] = it.key();
      t->vocab_[it.key()] = id;
      // Decode: each character back to its byte (characters outside the table stay as UTF-8).
      std::string bytes;
      const std::string& s = it.key();
      for (size_t i = 0; i < s.size();) {
        int n = Utf8SequenceAt(s, i);
        if (n <= 0) return DataLoss("{}: vocab token {} is not valid UTF-8", path, id);
        uint32_t cp = static_cast<uint8_t>(s[i]);
        if (n > 1) {
          cp &= (0xFF >> (n + 1));
          for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
        }
        if (auto u = unmap.find(cp); u != unmap.end()) {
          bytes.push_back(static_cast<char>(u->second));
        } else {
          bytes.append(s, i, n);
        }
        i += n;
      }
      t->bytes_[id] = std::move(bytes);
    }
    for (const AddedToken& a : added) {
      t->pieces_[a.id] = a.content;
      t->bytes_[a.id] = a.content;
    }
    for (int b = 0; b < 256; ++b) {
      std::string c;
      AppendUtf8(&c, map[b]);
      auto it = t->vocab_.find(c);
      t->byte_ids_[b] = it == t->vocab_.end() ? -1 : it->second;
    }
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
      if (auto it = t->vocab_.find(model["unk_token"].get<std::string>()); it != t->vocab_.end()) {
        t->unk_ = it->second;
      }
    }
    // Merges: "a b" strings (older files) or ["a", "b"] pairs.
    const json& merges = model.at("merges");
    if (!merges.is_array()) return DataLoss("{}: model.merges is not an array", path);
    int32_t rank = 0;
    for (const json& m : merges) {
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ', 1);
        if (sp == std::string::npos)
          return DataLoss("{}: merge {} {:?} is not two tokens", path, rank, s);
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        return DataLoss("{}: merge {} is neither \"a b\" nor [a, b]", path, rank);
      }
      const auto ia = t->vocab_.find(a), ib = t->vocab_.find(b), iab = t->vocab_.find(a + b);
      if (ia == t->vocab_.end() || ib == t->vocab_.end() || iab == t->vocab_.end()) {
        return DataLoss("{}: merge {} ({:?} + {:?}) names a token not in the vocabulary", path,
                        rank, a, b);
      }
      t->merges_.try_emplace(PairKey(ia->second, ib->second), rank, iab->second);
      ++rank;
    }
    // The normalizer: none is supported beyond the identity.
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      const json& n = j["normalizer"];
      const bool empty_sequence = n.value("type", "") == "Sequence" && n.contains("normalizers") &&
                                  n["normalizers"].is_array() && n["normalizers"].empty();
      if (!empty_sequence) {
        return InvalidArgument("{}: normalizer {:?} is not supported (only none)", path,
                               n.value("type", "?"));
      }
    }
    // Pre-tokenizers.
    std::vector<const json*> pre;
    if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) {
      const json& p = j["pre_tokenizer"];
      if (p.value("type", "") == "Sequence") {
        for (const json& q : p.at("pretokenizers")) pre.push_back(&q);
      } else {
        pre.push_back(&p);
      }
    }
    bool saw_byte_level = false;
    for (const json* q : pre) {
      const std::string kind = q->value("type", "");
      if (saw_byte_level) {
        return InvalidArgument("{}: pre-tokenizer {:?} after ByteLevel is not supported", path,
                               kind);
      }
      if (kind == "Split") {
        const json& pat = q->at("pattern");
        std::string regex;
        if (pat.contains("Regex")) {
          regex = pat["Regex"].get<std::string>();
        } else if (pat.contains("String")) {
          // A literal: quote every character for PCRE2.
          regex = "\\Q" + pat["String"].get<std::string>() + "\\E";
        } else {
          return DataLoss("{}: Split pattern is neither Regex nor String", path);
        }
        const std::string behavior = q->value("behavior", "Isolated");
        if (behavior != "Isolated" && behavior != "Removed") {
          return InvalidArgument("{}: Split behavior {:?} is not supported (Isolated, Removed)",
                                 path, behavior);
        }
        PreStep step{PreStep::kSplit, nullptr};
        KVS_ASSIGN_OR_RETURN(step.regex, CompileRegex(regex, path));
        step.removed = behavior == "Removed";
        step.invert = q->value("invert", false);
        t->steps_.push_back(std::move(step));
      } else if (kind == "Digits") {
        PreStep step{PreStep::kDigits, nullptr};
        step.individual = q->value("individual_digits", false);
        t->steps_.push_back(std::move(step));
      } else if (kind == "ByteLevel") {
        saw_byte_level = true;
        t->add_prefix_space_ = q->value("add_prefix_space", false);
        if (t->add_prefix_space_ && !t->steps_.empty()) {
          return InvalidArgument(
              "{}: ByteLevel add_prefix_space after another pre-tokenizer is not supported", path);
        }
        if (q->value("use_regex", true)) {
          PreStep step{PreStep::kByteLevelRegex, nullptr};
          KVS_ASSIGN_OR_RETURN(step.regex, CompileRegex(kGpt2Pattern, path));
          t->steps_.push_back(std::move(step));
        }
      } else {
        return InvalidArgument("{}: pre-tokenizer {:?} is not supported (Split, Digits, ByteLevel)",
                               path, kind);
      }
    }
    if (!saw_byte_level) {
      return InvalidArgument("{}: no ByteLevel pre-tokenizer: only byte-level BPE is supported",
                             path);
    }
    // Added tokens, longest first so that the first hit at a position is the longest.
    std::stable_sort(added.begin(), added.end(), [](const AddedToken& a, const AddedToken& b) {
      return a.content.size() > b.content.size();
    });
    t->added_ = std::move(added);
    for (size_t k = 0; k < t->added_.size(); ++k) {
      t->added_by_first_[static_cast<unsigned char>(t->added_[k].content[0])].push_back(
          static_cast<int>(k));
    }
    // BOS: the post-processor's leading special token (TemplateProcessing), as add_special_tokens
    // does; EOS and BOS names from tokenizer_config.json beside the file when it has them.
    if (j.contains("post_processor") && j["post_processor"].is_object()) {
      const json& pp = j["post_processor"];
      const json* tp = nullptr;
      if (pp.value("type", "") == "TemplateProcessing") tp = &pp;
      if (pp.value("type", "") == "Sequence" && pp.contains("processors")) {
        for (const json& q : pp["processors"]) {
          if (q.value("type", "") == "TemplateProcessing") tp = &q;
        }
      }
      if (tp != nullptr && tp->contains("single") && (*tp)["single"].is_array() &&
          !(*tp)["single"].empty() && (*tp)["single"][0].contains("SpecialToken")) {
        const std::string name = (*tp)["single"][0]["SpecialToken"].at("id").get<std::string>();
        if (auto it = std::find_if(t->added_.begin(), t->added_.end(),
                                   [&](const AddedToken& a) { return a.content == name; });
            it != t->added_.end()) {
          t->bos_ = it->id;
          t->adds_bos_ = true;
        }
      }
    }
    if (c.is_object()) {
      const auto id_of = [&](const std::string& s) -> int32_t {
        for (const AddedToken& a : t->added_) {
          if (a.content == s) return a.id;
        }
        auto it = t->vocab_.find(s);
        return it == t->vocab_.end() ? -1 : it->second;
      };
      if (c.contains("bos_token")) {
        if (auto s = TokenText(c["bos_token"])) t->bos_ = id_of(*s);
      }
      if (c.contains("eos_token")) {
        if (auto s = TokenText(c["eos_token"])) t->eos_ = id_of(*s);
      }
      if (c.contains("add_bos_token") && c["add_bos_token"].is_boolean()) {
        t->adds_bos_ = c["add_bos_token"].get<bool>() && t->bos_ >= 0;
      }
    }
  } catch (const json::exception& e) {
    return DataLoss("{}: malformed tokenizer.json: {}", path, e.what());
  }
  return std::unique_ptr<Tokenizer>(std::move(t));
}

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> HfTokenizerFromJson(const nlohmann::json& tokenizer_json,
                                                         const nlohmann::json& tokenizer_config,
                                                         const std::string& name) {
  return HfTokenizer::FromJson(tokenizer_json, tokenizer_config, name);
}

StatusOr<std::unique_ptr<Tokenizer>> ParseHfTokenizer(std::string_view tokenizer_json,
                                                      std::string_view tokenizer_config_json,
                                                      const std::string& name) {
  return HfTokenizer::Parse(tokenizer_json, tokenizer_config_json, name);
}

StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& path) {
  KVS_ASSIGN_OR_RETURN(const std::string text, ReadSmallFile(path));
  const std::filesystem::path config =
      std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  std::string config_text;
  if (std::filesystem::exists(config, ec)) {
    KVS_ASSIGN_OR_RETURN(config_text, ReadSmallFile(config.string()));
  }
  return HfTokenizer::Parse(text, config_text, path);
}

}  // namespace kvshard
