// Hugging Face tokenizer.json (byte-level BPE): Llama 3.2's tokenizer and SmolLM2's (from its
// GGUF) against the ids of the Python `tokenizers` library on the committed corpus
// (tests/tokenizer/, made by make_reference.py), the pipeline's parts on small hand-written
// files, and clear errors for malformed ones.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "coordinator/tokenizer.h"
#include "shard/gguf.h"

namespace kvshard {
namespace {

using json = nlohmann::json;

std::string RepoPath(const std::string& rel) { return std::string(KVSHARD_REPO_DIR) + "/" + rel; }

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

// The corpus as bytes, and whether each line was valid UTF-8.
std::vector<std::pair<std::string, bool>> Corpus() {
  std::ifstream in(RepoPath("tests/tokenizer/corpus.jsonl"));
  std::vector<std::pair<std::string, bool>> out;
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line);
    if (j.contains("hex")) {
      out.emplace_back(FromHex(j["hex"].get<std::string>()), false);
    } else {
      out.emplace_back(j["text"].get<std::string>(), true);
    }
  }
  return out;
}

std::vector<std::vector<int32_t>> ReferenceIds(const std::string& name) {
  std::ifstream in(RepoPath("tests/tokenizer/" + name + ".ids.jsonl"));
  std::vector<std::vector<int32_t>> out;
  for (std::string line; std::getline(in, line);) {
    out.push_back(json::parse(line).get<std::vector<int32_t>>());
  }
  return out;
}

std::unique_ptr<Tokenizer> LoadAsset(const std::string& dir) {
  const std::string path = RepoPath("assets/" + dir + "/tokenizer.json");
  if (!std::filesystem::exists(path)) {
    ADD_FAILURE() << path << " is missing: scripts/fetch-assets.sh fetches it (run-tests.sh does)";
    return nullptr;
  }
  auto t = LoadHfTokenizer(path);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

std::string Show(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) {
    if (!s.empty()) s += ',';
    s += std::to_string(id);
  }
  return s;
}

TEST(HfTokenizer, Llama32EqualsTokenizersOnTheCorpus) {
  const auto tok = LoadAsset("llama3.2");
  ASSERT_NE(tok, nullptr);
  const auto corpus = Corpus();
  const auto want = ReferenceIds("llama3.2");
  ASSERT_GE(corpus.size(), 2000u);
  ASSERT_EQ(corpus.size(), want.size());
  int wrong = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::vector<int32_t> got = tok->Encode(corpus[i].first, /*add_bos=*/false);
    if (got != want[i] && ++wrong <= 5) {
      ADD_FAILURE() << "corpus line " << i + 1 << ": got " << Show(got) << "\n want "
                    << Show(want[i]);
    }
  }
  EXPECT_EQ(wrong, 0) << "of " << corpus.size() << " strings";
}

// SmolLM2's tokenizer as its GGUF file stores it (LoadGgufTokenizer: the "smollm" pre-tokenizer
// family), against `tokenizers` built from the same file's vocabulary and merges.
TEST(HfTokenizer, SmolLM2GgufEqualsTokenizersOnTheCorpus) {
  const std::string path = RepoPath("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
  if (!std::filesystem::exists(path)) {
    FAIL() << path << " is missing: scripts/fetch-assets.sh fetches it (run-tests.sh does)";
  }
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto tok = LoadGgufTokenizer(**file);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  const auto corpus = Corpus();
  const auto want = ReferenceIds("smollm2");
  ASSERT_EQ(corpus.size(), want.size());
  int wrong = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::vector<int32_t> got = (*tok)->Encode(corpus[i].first, /*add_bos=*/false);
    if (got != want[i] && ++wrong <= 5) {
      ADD_FAILURE() << "corpus line " << i + 1 << ": got " << Show(got) << "\n want "
                    << Show(want[i]);
    }
  }
  EXPECT_EQ(wrong, 0) << "of " << corpus.size() << " strings";
}

TEST(HfTokenizer, Llama32DecodesWhatItEncodes) {
  const auto tok = LoadAsset("llama3.2");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 128257);  // as tokenizers counts it: this file has <|image|> too
  EXPECT_EQ(tok->bos_id(), 128000);      // <|begin_of_text|>, from the post-processor and config
  EXPECT_EQ(tok->eos_id(), 128001);      // <|end_of_text|>, from tokenizer_config.json
  const std::vector<int32_t> ids = tok->Encode("Hello world", /*add_bos=*/true);
  ASSERT_EQ(ids, (std::vector<int32_t>{128000, 9906, 1917}));
  EXPECT_EQ(tok->Decode(ids), "<|begin_of_text|>Hello world");
  for (const auto& [text, valid] : Corpus()) {
    if (valid) {
      ASSERT_EQ(tok->Decode(tok->Encode(text, false)), text);
    }
  }
}

// A small byte-level BPE over the characters a..d and space: the pieces used below.
json TinyTokenizer() {
  json vocab = json::object();
  int id = 0;
  for (const char* t : {"a", "b", "c", "d", "\u0120", "1", "2", "ab", "abc", "\u0120a", "\u0120ab",
                        "cd", "\u0120abc"}) {
    vocab[t] = id++;
  }
  return json{
      {"version", "1.0"},
      {"added_tokens",
       json::array({json{{"id", 20}, {"content", "<|x|>"}, {"special", true}},
                    json{{"id", 21}, {"content", "<|xy|>"}, {"special", true}},
                    json{{"id", 22}, {"content", "[S]"}, {"lstrip", true}, {"rstrip", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       json{{"type", "Sequence"},
            {"pretokenizers", json::array({json{{"type", "Digits"}, {"individual_digits", true}},
                                           json{{"type", "ByteLevel"},
                                                {"add_prefix_space", false},
                                                {"use_regex", true}}})}}},
      {"post_processor", nullptr},
      {"model", json{{"type", "BPE"},
                     {"vocab", vocab},
                     {"merges", json::array({"a b", "ab c", "\u0120 a", "\u0120a b", "c d",
                                             json::array({"\u0120ab", "c"})})}}}};
}

std::unique_ptr<Tokenizer> Parse(const json& j, const std::string& config = "") {
  auto t = ParseHfTokenizer(j.dump(), config, "tiny");
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

TEST(HfTokenizer, MergesByRankAddedTokensAndDigits) {
  const auto tok = Parse(TinyTokenizer());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 23);
  // "abcd": a+b (rank 0), ab+c (rank 1); c+d (rank 4) never forms since c was used.
  EXPECT_EQ(tok->Encode("abcd", false), (std::vector<int32_t>{8, 3}));
  // " abc": a+b comes before space+a, and no merge joins the space to "abc".
  EXPECT_EQ(tok->Encode(" abc", false), (std::vector<int32_t>{4, 8}));
  EXPECT_EQ(tok->Encode("cd", false), (std::vector<int32_t>{11}));
  // Digits one by one; the longest added token wins; lstrip/rstrip eat the spaces around [S].
  EXPECT_EQ(tok->Encode("12", false), (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(tok->Encode("a<|xy|>b<|x|>", false), (std::vector<int32_t>{0, 21, 1, 20}));
  EXPECT_EQ(tok->Encode("a  [S]  b", false), (std::vector<int32_t>{0, 22, 1}));
  EXPECT_EQ(tok->Decode({9, 1, 21}), " ab<|xy|>");
  // No BOS in this file's template: add_bos adds nothing; the config names BOS and EOS.
  EXPECT_EQ(tok->Encode("a", true), (std::vector<int32_t>{0}));
  const auto named = Parse(TinyTokenizer(), R"({"bos_token": "<|x|>", "eos_token": {"content":
      "<|xy|>"}, "add_bos_token": true})");
  ASSERT_NE(named, nullptr);
  EXPECT_EQ(named->bos_id(), 20);
  EXPECT_EQ(named->eos_id(), 21);
  EXPECT_EQ(named->Encode("a", true), (std::vector<int32_t>{20, 0}));
}

TEST(HfTokenizer, IgnoreMergesTakesAWholePieceInTheVocabulary) {
  json j = TinyTokenizer();
  j["model"]["ignore_merges"] = true;
  const auto tok = Parse(j);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode(" abc", false), (std::vector<int32_t>{12}));
  EXPECT_EQ(tok->Encode("abcd", false), (std::vector<int32_t>{8, 3}));  // not in it: merged
}

TEST(HfTokenizer, InvalidUtf8IsRepairedAsPythonDoes) {
  json j = TinyTokenizer();
  const auto tok = Parse(j);
  ASSERT_NE(tok, nullptr);
  // U+FFFD is three bytes, none of them in the tiny vocabulary: they drop (no unk token), so
  // the valid neighbours still encode; what matters is no crash and no read past the end.
  EXPECT_EQ(tok->Encode("a\xff"
                        "b",
                        false),
            (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(tok->Encode("\xe6\x97", false), (std::vector<int32_t>{}));
  EXPECT_EQ(tok->Encode(std::string("a\0b", 3), false).size(), 2u);
}

TEST(HfTokenizer, MalformedFilesGetClearErrors) {
  const auto error = [](const std::string& text) {
    auto t = ParseHfTokenizer(text, "", "bad.json");
    return t.ok() ? std::string("ok") : t.status().ToString();
  };
  EXPECT_NE(error("{").find("not a JSON object"), std::string::npos);
  EXPECT_NE(error("[]").find("not a JSON object"), std::string::npos);
  EXPECT_NE(error("{}").find("malformed tokenizer.json"), std::string::npos);
  json j = TinyTokenizer();
  j["model"]["type"] = "Unigram";
  EXPECT_NE(error(j.dump()).find("model type \"Unigram\""), std::string::npos);
  j = TinyTokenizer();
  j["model"]["vocab"]["zz"] = -5;
  EXPECT_NE(error(j.dump()).find("out of range"), std::string::npos);
  j = TinyTokenizer();
  j["model"]["merges"].push_back("q r");
  EXPECT_NE(error(j.dump()).find("not in the vocabulary"), std::string::npos);
  j = TinyTokenizer();
  j["model"]["merges"].push_back(7);
  EXPECT_NE(error(j.dump()).find("neither"), std::string::npos);
  j = TinyTokenizer();
  j["normalizer"] = json{{"type", "NFKC"}};
  EXPECT_NE(error(j.dump()).find("normalizer \"NFKC\" is not supported"), std::string::npos);
  j = TinyTokenizer();
  j["pre_tokenizer"] = json{{"type", "Whitespace"}};
  EXPECT_NE(error(j.dump()).find("pre-tokenizer \"Whitespace\" is not supported"),
            std::string::npos);
  j = TinyTokenizer();
  j["pre_tokenizer"] = json{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}};
  EXPECT_NE(error(j.dump()).find("does not compile"), std::string::npos);
  j = TinyTokenizer();
  j["added_tokens"][0]["id"] = "seven";
  EXPECT_NE(error(j.dump()).find("malformed tokenizer.json"), std::string::npos);
  EXPECT_NE(LoadHfTokenizer("/nonexistent/tokenizer.json").status().ToString().find("cannot read"),
            std::string::npos);
}

}  // namespace
}  // namespace kvshard
