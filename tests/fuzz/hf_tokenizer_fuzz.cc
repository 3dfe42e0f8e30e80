// Randomised fuzz of the tokenizer.json loader (ParseHfTokenizer) and of what it loads: mutates a
// valid byte-level BPE file (JSON nodes replaced by interesting values or removed, bytes flipped,
// truncation), and for every file it accepts, encodes random and mutated texts (invalid UTF-8,
// NULs, added-token fragments) and decodes random ids, in range and out of it. Built with ASan and
// UBSan, so a read outside a buffer or undefined behaviour stops it; an accepted file must also
// encode its own vocabulary's tokens back to ids in range.
//
// Usage: hf_tokenizer_fuzz [seconds = 10] [seed = time] [max_iterations = 2000000]
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "coordinator/tokenizer.h"
#include "tests/fuzz/fuzz_args.h"

namespace kvshard {
namespace {

using json = nlohmann::json;

json ValidFile() {
  json vocab = json::object();
  int id = 0;
  for (const char* t : {"a", "b", "c", "\u0120", "1", "ab", "abc", "\u0120a", "\u00c3", "\u00a9",
                        "\u00c3\u00a9", "<", "|"}) {
    vocab[t] = id++;
  }
  return json{
      {"added_tokens", json::array({json{{"id", 30}, {"content", "<|x|>"}, {"special", true}},
                                    json{{"id", 31}, {"content", "[S]"}, {"lstrip", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       json{{"type", "Sequence"},
            {"pretokenizers",
             json::array({json{{"type", "Split"},
                               {"pattern", {{"Regex", R"(\p{L}+|\p{N}{1,3}|\s+(?!\S)|\s+|.)"}}},
                               {"behavior", "Isolated"}},
                          json{{"type", "Digits"}, {"individual_digits", false}},
                          json{{"type", "ByteLevel"}, {"use_regex", false}}})}}},
      {"post_processor", json{{"type", "TemplateProcessing"},
                              {"single", json::array({json{{"SpecialToken", {{"id", "<|x|>"}}}},
                                                      json{{"Sequence", {{"id", "A"}}}}})}}},
      {"model", json{{"type", "BPE"},
                     {"ignore_merges", false},
                     {"vocab", vocab},
                     {"merges", json::array({"a b", json::array({"ab", "c"}), "\u0120 a",
                                             "\u00c3 \u00a9"})}}}};
}

class Fuzzer {
 public:
  explicit Fuzzer(uint64_t seed) : rng_(seed) {}
  uint64_t Below(uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng_); }
  bool OneIn(uint64_t n) { return Below(n) == 0; }

  json Interesting() {
    switch (Below(12)) {
      case 0: return nullptr;
      case 1: return -1;
      case 2: return 16777216;
      case 3: return 9223372036854775807LL;
      case 4: return "";
      case 5: return "(?<!";
      case 6: return json::array();
      case 7: return json::object();
      case 8: return true;
      case 9: return 1.5;
      case 10: return std::string(Below(300), 'a');
      default: return "\xff\xfe";
    }
  }

  // Replaces, removes or adds a random node somewhere in `j`.
  void MutateNode(json& j, int depth = 0) {
    if ((j.is_object() || j.is_array()) && !j.empty() && depth < 6 && !OneIn(4)) {
      const size_t k = Below(j.size());
      auto it = j.begin();
      std::advance(it, k);
      if (OneIn(8)) {
        if (j.is_object()) {
          j.erase(it.key());
        } else {
          j.erase(k);
        }
        return;
      }
      MutateNode(*it, depth + 1);
      return;
    }
    if (j.is_object() && OneIn(2)) {
      j["x" + std::to_string(Below(4))] = Interesting();
    } else if (j.is_array() && OneIn(2)) {
      j.push_back(Interesting());
    } else {
      j = Interesting();
    }
  }

  std::string File() {
    json j = ValidFile();
    for (uint64_t m = Below(4); m > 0; --m) MutateNode(j);
    std::string text = j.dump(-1, ' ', false, json::error_handler_t::replace);
    if (OneIn(4)) {
      for (uint64_t m = 1 + Below(4); m > 0; --m) {
        if (text.empty()) break;
        text[Below(text.size())] = static_cast<char>(Below(256));
      }
    }
    if (OneIn(8)) text.resize(Below(text.size() + 1));
    return text;
  }

  std::string Text() {
    static const std::string kParts[] = {"a",
                                         "b",
                                         "abc",
                                         " ",
                                         "  ",
                                         "\n",
                                         "1234",
                                         "<|x|>",
                                         "<|x",
                                         "[S]",
                                         "\xc3\xa9",
                                         "\xff",
                                         "\xe6\x97",
                                         "\xf0\x9f\x98\x80",
                                         std::string("\0", 1),
                                         "\xed\xa0\x80",
                                         "|>"};
    std::string s;
    for (uint64_t n = Below(12); n > 0; --n) {
      if (OneIn(4)) {
        s.push_back(static_cast<char>(Below(256)));
      } else {
        s += kParts[Below(sizeof(kParts) / sizeof(kParts[0]))];
      }
    }
    if (OneIn(50)) s.append(Below(5000), ' ');
    return s;
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace
}  // namespace kvshard

int main(int argc, char** argv) {
  using namespace kvshard;
  const FuzzArgs args(argc, argv, "hf_tokenizer_fuzz", 2000000);
  Fuzzer fuzzer(args.seed);
  uint64_t iterations = 0, accepted = 0;
  while (!args.Done(iterations)) {
    ++iterations;
    const std::string file = fuzzer.OneIn(8) ? ValidFile().dump() : fuzzer.File();
    const std::string config =
        fuzzer.OneIn(4) ? R"({"bos_token": "<|x|>", "eos_token": {"content": "[S]"}})" : "";
    const auto tok = ParseHfTokenizer(file, config, "fuzz.json");
    if (!tok.ok()) {
      if (tok.status().ToString().empty()) {
        std::fprintf(stderr, "an error without a message\n");
        return 1;
      }
      continue;
    }
    ++accepted;
    const Tokenizer& t = *tok.value();
    for (int k = 0; k < 4; ++k) {
      const std::string text = fuzzer.Text();
      for (int32_t id : t.Encode(text, fuzzer.OneIn(2))) {
        if (id < 0 || id >= t.vocab_size()) {
          std::fprintf(stderr, "id %d outside [0, %d) for a text of %zu bytes\n", id,
                       t.vocab_size(), text.size());
          return 1;
        }
      }
      std::vector<int32_t> ids;
      for (uint64_t n = fuzzer.Below(8); n > 0; --n) {
        ids.push_back(static_cast<int32_t>(fuzzer.Below(t.vocab_size() + 4)) - 2);
      }
      (void)t.Decode(ids);
    }
  }
  std::printf("hf_tokenizer_fuzz: %llu files, %llu accepted, no crash\n",
              static_cast<unsigned long long>(iterations),
              static_cast<unsigned long long>(accepted));
  return accepted > 0 ? 0 : 1;
}
