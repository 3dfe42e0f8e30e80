#include "coordinator/tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <set>

namespace kvshard {
namespace {

namespace fs = std::filesystem;

const std::string kRepoDir = KVSHARD_REPO_DIR;
const std::string kStoriesDir = kRepoDir + "/models/stories260K";
const std::string kStoriesBin = kStoriesDir + "/tokenizer.bin";
const std::string kLlamaDir = kRepoDir + "/models/llama2-tokenizer";
const std::string kLlamaModel = kLlamaDir + "/tokenizer.model";
const std::string kLlamaBin = kLlamaDir + "/tokenizer.bin";

using Ids = std::vector<int32_t>;

std::unique_ptr<Tokenizer> MustLoadLlama2c(const std::string& path, int32_t vocab_size) {
  auto tok = LoadLlama2cTokenizer(path, vocab_size);
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  return tok.ok() ? std::move(tok).value() : nullptr;
}

std::unique_ptr<Tokenizer> MustLoadSentencePiece(const std::string& path) {
  auto tok = LoadSentencePieceTokenizer(path);
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  return tok.ok() ? std::move(tok).value() : nullptr;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteBytes(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

void AppendU32(std::string* out, uint32_t v) {
  char b[4];
  std::memcpy(b, &v, 4);
  out->append(b, 4);
}

// A test-only reading of tokenizer.bin, for the reference encoder below.
void ReadVocab(const std::string& path, std::vector<std::string>* pieces,
               std::vector<float>* scores) {
  const std::string data = ReadBytes(path);
  for (size_t off = 4; off + 8 <= data.size();) {
    float score;
    int32_t len;
    std::memcpy(&score, data.data() + off, 4);
    std::memcpy(&len, data.data() + off + 4, 4);
    off += 8;
    pieces->emplace_back(data, off, len);
    scores->push_back(score);
    off += len;
  }
}

// A literal transcription of run.c's quadratic algorithm: rescan every adjacent pair after each
// merge, best score wins, first pair on ties, byte fallback = byte + 3.
Ids ReferenceEncode(const std::vector<std::string>& pieces, const std::vector<float>& scores,
                    std::string_view text, bool add_bos) {
  std::map<std::string, int32_t> lookup;
  for (int32_t i = 0; i < static_cast<int32_t>(pieces.size()); ++i) lookup.emplace(pieces[i], i);
  auto find = [&](const std::string& s) {
    auto it = lookup.find(s);
    return it == lookup.end() ? -1 : it->second;
  };
  Ids ids;
  if (add_bos) ids.push_back(1);
  if (text.empty()) return ids;
  if (int32_t space = find(" "); space >= 0) ids.push_back(space);
  std::string buf;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((text[i] & 0xC0) != 0x80) buf.clear();
    buf.push_back(text[i]);
    if (i + 1 < text.size() && (text[i + 1] & 0xC0) == 0x80 && buf.size() < 4) continue;
    if (int32_t id = find(buf); id >= 0) {
      ids.push_back(id);
    } else {
      for (char c : buf) ids.push_back(static_cast<uint8_t>(c) + 3);
    }
    buf.clear();
  }
  while (true) {
    float best_score = -1e10f;
    int32_t best_id = -1;
    size_t best_idx = 0;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      int32_t id = find(pieces[ids[i]] + pieces[ids[i + 1]]);
      if (id >= 0 && scores[id] > best_score) {
        best_score = scores[id];
        best_id = id;
        best_idx = i;
      }
    }
    if (best_id < 0) break;
    ids[best_idx] = best_id;
    ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(best_idx) + 1);
  }
  return ids;
}

// Random text from words, spaces, punctuation, newlines and multi-byte characters; with
// `raw_bytes`, also arbitrary bytes (invalid UTF-8).
std::string RandomText(std::mt19937* rng, size_t parts, bool raw_bytes) {
  static const std::vector<std::string> kParts = {
      "the",  " the",   "Once", " upon", "a",   " time", "Hello", " world", "ing",    "tion", "1",
      "42",   "2024",   " ",    "  ",    "   ", "\n",    "\n\n",  "\t",     ".",      ",",    "!",
      "?",    "'s",     "\"",   "(",     ")",   "-",     "<",     ">",      "<0x41>", "é",    "ï",
      "café", "日本語", "☃",    "😀",     "ß",   "Ω",     "€",     "x",      "Z",      "q"};
  std::string text;
  for (size_t i = 0; i < parts; ++i) {
    if (raw_bytes && (*rng)() % 5 == 0) {
      text.push_back(static_cast<char>((*rng)() % 256));
    } else {
      text += kParts[(*rng)() % kParts.size()];
    }
  }
  return text;
}

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("kvshard_tokenizer_test_" + std::to_string(getpid()) + "_" + std::to_string(next_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return (path_ / name).string(); }
  std::string path() const { return path_.string(); }

 private:
  static inline int next_ = 0;
  fs::path path_;
};

// ---- stories260K (llama2.c tokenizer.bin, 512 tokens) ----

TEST(Stories260KTokenizer, EncodesOnceUponATimeLikeLlama2c) {
  auto tok = MustLoadLlama2c(kStoriesBin, 512);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  const Ids ids = tok->Encode("Once upon a time", /*add_bos=*/true);
  EXPECT_EQ(ids, (Ids{1, 403, 407, 261, 378}));
  EXPECT_EQ(tok->Decode(ids), "Once upon a time");
  const Ids no_bos = tok->Encode("Once upon a time", /*add_bos=*/false);
  EXPECT_EQ(no_bos, (Ids{403, 407, 261, 378}));
  EXPECT_EQ(tok->Decode(no_bos), "Once upon a time");
}

TEST(Stories260KTokenizer, EmptyText) {
  auto tok = MustLoadLlama2c(kStoriesBin, 512);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("", true), (Ids{1}));
  EXPECT_EQ(tok->Encode("", false), Ids{});
  EXPECT_EQ(tok->Decode({1}), "");
  EXPECT_EQ(tok->Decode({}), "");
}

TEST(Stories260KTokenizer, ByteFallbackRoundTrips) {
  auto tok = MustLoadLlama2c(kStoriesBin, 512);
  ASSERT_NE(tok, nullptr);
  const std::string text = "héllo ☃";
  const Ids ids = tok->Encode(text, true);
  // The snowman U+2603 (E2 98 83) is not a piece: it becomes three byte tokens, byte + 3.
  const Ids snowman = {0xE2 + 3, 0x98 + 3, 0x83 + 3};
  EXPECT_NE(std::search(ids.begin(), ids.end(), snowman.begin(), snowman.end()), ids.end());
  EXPECT_EQ(tok->Decode(ids), text);

  std::string all_bytes;
  for (int b = 1; b < 256; ++b) all_bytes.push_back(static_cast<char>(b));
  all_bytes.push_back('\0');
  EXPECT_EQ(tok->Decode(tok->Encode(all_bytes, true)), all_bytes);
  EXPECT_EQ(tok->Decode(tok->Encode("\xF0\x9F", false)), "\xF0\x9F");  // truncated codepoint
}

TEST(Stories260KTokenizer, DecodeTokenFollowsLlama2c) {
  auto tok = MustLoadLlama2c(kStoriesBin, 512);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->DecodeToken(1, 403), "Once");  // leading space stripped after BOS
  EXPECT_EQ(tok->DecodeToken(403, 403), " Once");
  EXPECT_EQ(tok->DecodeToken(-1, 403), " Once");
  EXPECT_EQ(tok->DecodeToken(5, 0), "");  // <unk>
  EXPECT_EQ(tok->DecodeToken(5, 1), "");  // BOS
  EXPECT_EQ(tok->DecodeToken(5, 2), "");  // EOS
  EXPECT_EQ(tok->DecodeToken(5, 'A' + 3), "A");
  EXPECT_EQ(tok->DecodeToken(1, ' ' + 3), " ");  // a byte token keeps its space after BOS
  EXPECT_EQ(tok->DecodeToken(5, 0xFF + 3), "\xFF");
  EXPECT_EQ(tok->DecodeToken(5, -1), "");
  EXPECT_EQ(tok->DecodeToken(5, 512), "");
}

TEST(Stories260KTokenizer, MatchesLlama2cReferenceEncoder) {
  auto tok = MustLoadLlama2c(kStoriesBin, 512);
  ASSERT_NE(tok, nullptr);
  std::vector<std::string> pieces;
  std::vector<float> scores;
  ReadVocab(kStoriesBin, &pieces, &scores);
  ASSERT_EQ(pieces.size(), 512u);
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) {
    const std::string text = RandomText(&rng, 1 + rng() % 40, /*raw_bytes=*/true);
    const Ids ids = tok->Encode(text, true);
    ASSERT_EQ(ids, ReferenceEncode(pieces, scores, text, true)) << "text: " << text;
    ASSERT_EQ(tok->Decode(ids), text);
  }
}

// ---- Llama 2 (32,000 tokens): tokenizer.model and tokenizer.bin must agree ----

const std::vector<std::string>& VariedTexts() {
  static const std::vector<std::string> texts = {
      "Hello world",
      "Once upon a time, there was a little girl named Lily.",
      "The quick brown fox jumps over the lazy dog!",
      "What's up? I'm fine; thanks... (really) [yes] {no} <tag> \"quoted\" 'single'",
      "Digits: 0 1 2 3 12 123 1234 3.14159 1,000,000 2024-01-31 10:45pm",
      "multiple   spaces    here     and  there",
      " leading space",
      "trailing space ",
      "   ",
      "line one\nline two\n\nline four\n",
      "\ttabbed\tcolumns\r\nwindows line",
      "naïve café 日本語",
      "Ünïcödé: Привет мир, 你好世界, こんにちは, 안녕하세요, مرحبا, שלום",
      "emoji 😀🎉👍 and snowman ☃ and math ∑∫√∞ ≠ ≤",
      "int main() { return a->b[0] + x * 2; } // code",
      "a",
      "\n",
      "<s> </s> <unk> <0x41> look like control tokens but are text",
      "URL: https://example.com/path?q=1&r=two#frag email@example.org",
      "ALL CAPS SENTENCE AND MiXeD cAsE",
  };
  return texts;
}

TEST(Llama2Tokenizer, HelloWorldGivesKnownIds) {
  auto sp = MustLoadSentencePiece(kLlamaModel);
  auto bin = MustLoadLlama2c(kLlamaBin, 32000);
  ASSERT_NE(sp, nullptr);
  ASSERT_NE(bin, nullptr);
  EXPECT_EQ(sp->Encode("Hello world", true), (Ids{1, 15043, 3186}));
  EXPECT_EQ(bin->Encode("Hello world", true), (Ids{1, 15043, 3186}));
  EXPECT_EQ(sp->vocab_size(), 32000);
  EXPECT_EQ(sp->bos_id(), 1);
  EXPECT_EQ(sp->eos_id(), 2);
  EXPECT_EQ(sp->Encode("", true), (Ids{1}));
  EXPECT_EQ(bin->Encode("", true), (Ids{1}));
}

TEST(Llama2Tokenizer, SentencePieceAndLlama2cLoadersGiveIdenticalIds) {
  auto sp = MustLoadSentencePiece(kLlamaModel);
  auto bin = MustLoadLlama2c(kLlamaBin, 32000);
  ASSERT_NE(sp, nullptr);
  ASSERT_NE(bin, nullptr);
  for (const std::string& text : VariedTexts()) {
    for (bool add_bos : {true, false}) {
      const Ids ids = sp->Encode(text, add_bos);
      EXPECT_EQ(bin->Encode(text, add_bos), ids) << "text: " << text;
      EXPECT_EQ(sp->Decode(ids), text);
      EXPECT_EQ(bin->Decode(ids), text);
    }
  }
  std::mt19937 rng(11);
  for (int i = 0; i < 300; ++i) {
    const std::string text = RandomText(&rng, 1 + rng() % 30, /*raw_bytes=*/false);
    const Ids ids = sp->Encode(text, true);
    ASSERT_EQ(bin->Encode(text, true), ids) << "text: " << text;
    ASSERT_EQ(bin->Decode(ids), text);
  }
}

TEST(Llama2Tokenizer, LongDocumentMatchesAndEncodesFast) {
  auto sp = MustLoadSentencePiece(kLlamaModel);
  auto bin = MustLoadLlama2c(kLlamaBin, 32000);
  ASSERT_NE(sp, nullptr);
  ASSERT_NE(bin, nullptr);
  std::mt19937 rng(3);
  std::string text;
  while (text.size() < 400000) text += RandomText(&rng, 50, false);
  text += "       end";  // runs of spaces merge across a long span
  const auto start = std::chrono::steady_clock::now();
  const Ids ids = bin->Encode(text, true);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(ids, sp->Encode(text, true));
  EXPECT_EQ(bin->Decode(ids), text);
  // The heap-based merge is O(n log n); run.c's quadratic rescan would take minutes here.
  EXPECT_LT(seconds, 20.0) << ids.size() << " tokens";
}

TEST(Llama2Tokenizer, DecodeTokenAgreesForEveryId) {
  auto sp = MustLoadSentencePiece(kLlamaModel);
  auto bin = MustLoadLlama2c(kLlamaBin, 32000);
  ASSERT_NE(sp, nullptr);
  ASSERT_NE(bin, nullptr);
  for (int32_t prev : {-1, 1, 15043}) {
    for (int32_t id = -2; id < 32002; ++id) {
      ASSERT_EQ(sp->DecodeToken(prev, id), bin->DecodeToken(prev, id))
          << "prev " << prev << " id " << id;
    }
  }
  EXPECT_EQ(sp->DecodeToken(1, 15043), "Hello");
  EXPECT_EQ(sp->DecodeToken(15043, 3186), " world");
  EXPECT_EQ(sp->DecodeToken(15043, 13), "\n");  // <0x0A>
  EXPECT_EQ(sp->DecodeToken(15043, 2), "");
}

TEST(Llama2Tokenizer, MatchesLlama2cReferenceEncoder) {
  auto bin = MustLoadLlama2c(kLlamaBin, 32000);
  ASSERT_NE(bin, nullptr);
  std::vector<std::string> pieces;
  std::vector<float> scores;
  ReadVocab(kLlamaBin, &pieces, &scores);
  ASSERT_EQ(pieces.size(), 32000u);
  std::mt19937 rng(5);
  for (int i = 0; i < 100; ++i) {
    const std::string text = RandomText(&rng, 1 + rng() % 30, /*raw_bytes=*/true);
    const Ids ids = bin->Encode(text, false);
    ASSERT_EQ(ids, ReferenceEncode(pieces, scores, text, false)) << "text: " << text;
    ASSERT_EQ(bin->Decode(ids), text);
  }
}

// ---- Malformed files ----

// Loads `data` as a tokenizer.bin and returns the error (the test fails if it loads).
Status LoadBytes(const TempDir& dir, const std::string& data, int32_t vocab_size) {
  const std::string path = dir.File("tokenizer.bin");
  WriteBytes(path, data);
  auto tok = LoadLlama2cTokenizer(path, vocab_size);
  EXPECT_FALSE(tok.ok());
  return tok.ok() ? Status::Ok() : tok.status();
}

std::string OneEntryFile(int32_t max_len, float score, int32_t len, const std::string& bytes) {
  std::string data;
  AppendU32(&data, static_cast<uint32_t>(max_len));
  AppendU32(&data, std::bit_cast<uint32_t>(score));
  AppendU32(&data, static_cast<uint32_t>(len));
  return data + bytes;
}

TEST(Llama2cTokenizerFile, TruncatedFilesAreDataLoss) {
  TempDir dir;
  const std::string good = ReadBytes(kStoriesBin);
  ASSERT_EQ(good.size(), 6227u);

  Status s = LoadBytes(dir, good.substr(0, good.size() - 3), 512);  // inside the last piece
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("entry 511"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("tokenizer.bin"), std::string::npos) << s.message();

  s = LoadBytes(dir, good.substr(0, 10), 512);  // inside the first entry's header
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.message();

  s = LoadBytes(dir, "", 512);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("max_token_length"), std::string::npos) << s.message();

  // Proper prefixes (all short ones, then a sample ending at varied offsets) are rejected.
  for (size_t n = 0; n < good.size(); n += n < 64 ? 1 : 29) {
    ASSERT_FALSE(LoadBytes(dir, good.substr(0, n), 512).ok()) << "prefix " << n;
  }
}

TEST(Llama2cTokenizerFile, WrongVocabCountNamesBothNumbers) {
  TempDir dir;
  const std::string good = ReadBytes(kStoriesBin);
  for (int32_t vocab : {500, 513, 32000}) {
    Status s = LoadBytes(dir, good, vocab);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("holds 512 tokens"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("vocab_size is " + std::to_string(vocab)), std::string::npos)
        << s.message();
  }
  Status s = LoadBytes(dir, good, 0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("vocab_size 0"), std::string::npos) << s.message();
}

TEST(Llama2cTokenizerFile, BadLengthsAndScores) {
  TempDir dir;
  Status s = LoadBytes(dir, OneEntryFile(8, 0.0f, -5, "abc"), 3);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("negative length -5"), std::string::npos) << s.message();

  s = LoadBytes(dir, OneEntryFile(8, 0.0f, 0x7fffffff, "abc"), 3);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("length 2147483647, more than max_token_length 8"), std::string::npos)
      << s.message();

  s = LoadBytes(dir, OneEntryFile(1 << 30, 0.0f, 3, "abc"), 3);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("max_token_length 1073741824"), std::string::npos) << s.message();

  s = LoadBytes(dir, OneEntryFile(-1, 0.0f, 3, "abc"), 3);
  EXPECT_NE(s.message().find("max_token_length -1"), std::string::npos) << s.message();

  s = LoadBytes(dir, OneEntryFile(8, 0.0f, 6, "abc"), 3);  // length past the end of the file
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("needs 6 bytes, 3 are left"), std::string::npos) << s.message();

  s = LoadBytes(dir, OneEntryFile(8, std::numeric_limits<float>::quiet_NaN(), 3, "abc"), 3);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("non-finite score"), std::string::npos) << s.message();

  s = LoadBytes(dir, OneEntryFile(8, std::numeric_limits<float>::infinity(), 3, "abc"), 3);
  EXPECT_NE(s.message().find("non-finite score"), std::string::npos) << s.message();
}

TEST(Llama2cTokenizerFile, RandomCorruptionNeverCrashes) {
  TempDir dir;
  const std::string good = ReadBytes(kStoriesBin);
  const std::string path = dir.File("tokenizer.bin");
  std::mt19937 rng(1);
  int loaded = 0;
  for (int i = 0; i < 300; ++i) {
    std::string bad = good;
    for (int flips = 1 + rng() % 4; flips > 0; --flips) bad[rng() % bad.size()] = char(rng());
    WriteBytes(path, bad);
    auto tok = LoadLlama2cTokenizer(path, 512);
    if (!tok.ok()) continue;
    ++loaded;  // a flip inside a piece's bytes or score leaves a valid file: it must work
    const std::string text = RandomText(&rng, 20, true);
    const Ids ids = (*tok)->Encode(text, true);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < 512);
    (*tok)->Decode(ids);
  }
  EXPECT_GT(loaded, 0);
}

TEST(Llama2cTokenizerFile, MissingFileIsNotFound) {
  auto tok = LoadLlama2cTokenizer("/nonexistent/tokenizer.bin", 512);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kNotFound);
  EXPECT_NE(tok.status().message().find("/nonexistent/tokenizer.bin"), std::string::npos);
}

TEST(SentencePieceTokenizerFile, RejectsGarbageAndMissingFiles) {
  TempDir dir;
  WriteBytes(dir.File("tokenizer.model"), "this is not a protobuf \xFF\xFF\xFF\xFF");
  auto tok = LoadSentencePieceTokenizer(dir.File("tokenizer.model"));
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(tok.status().message().find("tokenizer.model"), std::string::npos);

  WriteBytes(dir.File("truncated.model"), ReadBytes(kLlamaModel).substr(0, 1000));
  EXPECT_FALSE(LoadSentencePieceTokenizer(dir.File("truncated.model")).ok());

  tok = LoadSentencePieceTokenizer(dir.File("missing.model"));
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kNotFound);
}

// ---- Model directories ----

TEST(LoadTokenizerFromModelDir, PicksModelThenBinAndChecksVocabSize) {
  auto tok = LoadTokenizerFromModelDir(kStoriesDir, 512);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->Encode("Once upon a time", true), (Ids{1, 403, 407, 261, 378}));

  tok = LoadTokenizerFromModelDir(kLlamaDir, 32000);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->Encode("Hello world", true), (Ids{1, 15043, 3186}));

  tok = LoadTokenizerFromModelDir(kLlamaDir, 32064);  // tokenizer.model, wrong size
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(tok.status().message().find("32000"), std::string::npos) << tok.status().message();
  EXPECT_NE(tok.status().message().find("32064"), std::string::npos) << tok.status().message();
  EXPECT_NE(tok.status().message().find("tokenizer.model"), std::string::npos);

  tok = LoadTokenizerFromModelDir(kStoriesDir, 32000);  // tokenizer.bin, wrong size
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find("512"), std::string::npos) << tok.status().message();
  EXPECT_NE(tok.status().message().find("32000"), std::string::npos) << tok.status().message();

  TempDir empty;
  tok = LoadTokenizerFromModelDir(empty.path(), 512);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kNotFound);
  EXPECT_NE(tok.status().message().find(empty.path()), std::string::npos);
}

// ---- Writing and the synthetic vocabulary ----

TEST(SyntheticVocabulary, LayoutAndRoundTripThroughFile) {
  for (int32_t vocab : {259, 300, 32000}) {
    std::vector<std::string> pieces;
    std::vector<float> scores;
    ASSERT_TRUE(SyntheticVocabulary(vocab, &pieces, &scores).ok());
    ASSERT_EQ(pieces.size(), static_cast<size_t>(vocab));
    ASSERT_EQ(scores.size(), static_cast<size_t>(vocab));
    EXPECT_EQ(pieces[0], "<unk>");
    EXPECT_EQ(pieces[1], "\n<s>\n");
    EXPECT_EQ(pieces[2], "\n</s>\n");
    EXPECT_EQ(pieces[3], "<0x00>");
    EXPECT_EQ(pieces[3 + 0xAB], "<0xAB>");
    EXPECT_EQ(pieces[258], "<0xFF>");
    if (vocab > 259) {
      EXPECT_EQ(pieces[259], " w259");
    }
    EXPECT_EQ(std::set<std::string>(pieces.begin(), pieces.end()).size(), pieces.size());

    TempDir dir;
    const std::string path = dir.File("tokenizer.bin");
    ASSERT_TRUE(WriteLlama2cTokenizer(path, pieces, scores).ok());
    auto tok = MustLoadLlama2c(path, vocab);
    ASSERT_NE(tok, nullptr);
    std::mt19937 rng(vocab);
    for (int i = 0; i < 50; ++i) {
      std::string bytes(rng() % 200, '\0');
      for (char& c : bytes) c = static_cast<char>(rng());
      const Ids ids = tok->Encode(bytes, true);
      ASSERT_EQ(ids.size(), bytes.size() + 1);
      EXPECT_EQ(ids[0], 1);
      for (size_t j = 0; j < bytes.size(); ++j) {
        ASSERT_EQ(ids[j + 1], static_cast<uint8_t>(bytes[j]) + 3);
      }
      ASSERT_EQ(tok->Decode(ids), bytes);
    }
    if (vocab > 259) {
      EXPECT_EQ(tok->DecodeToken(100, 259), " w259");
    }
  }
}

TEST(SyntheticVocabulary, RejectsTooSmallVocab) {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  Status s = SyntheticVocabulary(258, &pieces, &scores);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("258"), std::string::npos) << s.message();
}

TEST(WriteLlama2cTokenizer, RoundTripsPiecesAndRejectsBadInput) {
  TempDir dir;
  const std::string path = dir.File("tokenizer.bin");
  const std::vector<std::string> pieces = {"<unk>", "\n<s>\n", "\n</s>\n", " ",  "a",
                                           "b",     " a",      "ab",       " ab"};
  const std::vector<float> scores = {0, 0, 0, -10, -1, -1, -2, -3, -4};
  ASSERT_TRUE(WriteLlama2cTokenizer(path, pieces, scores).ok());
  std::vector<std::string> read_pieces;
  std::vector<float> read_scores;
  ReadVocab(path, &read_pieces, &read_scores);
  EXPECT_EQ(read_pieces, pieces);
  EXPECT_EQ(read_scores, scores);
  auto tok = MustLoadLlama2c(path, 9);
  ASSERT_NE(tok, nullptr);
  // " a" (-2) beats "ab" (-3), then " a"+"b" = " ab"; no byte tokens in this vocabulary.
  EXPECT_EQ(tok->Encode("ab", true), (Ids{1, 8}));
  EXPECT_EQ(tok->Encode("ba", false), (Ids{3, 5, 4}));
  EXPECT_EQ(tok->Decode({1, 8}), "ab");

  EXPECT_EQ(WriteLlama2cTokenizer(path, pieces, {0.0f}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteLlama2cTokenizer(path, {}, {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteLlama2cTokenizer(path, {"x"}, {std::numeric_limits<float>::quiet_NaN()}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_FALSE(WriteLlama2cTokenizer(dir.File("no/such/dir/tokenizer.bin"), pieces, scores).ok());
}

}  // namespace
}  // namespace kvshard
