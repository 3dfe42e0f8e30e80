// Randomised fuzz of the GGUF parser and of what reads an accepted file: mutates valid GGUF
// images (bit flips, byte changes, truncation, interesting numbers over counts, lengths, types,
// dimensions and offsets), and for every image the parser accepts, dequantizes every tensor row
// of a type kvshard reads, derives the model config and the tokenizer, and encodes a text. Built
// with ASan and UBSan, so any read outside the image or undefined behaviour stops it.
//
// Usage: gguf_fuzz [seconds = 10] [seed = time] [max_iterations = 5000000]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "coordinator/tokenizer.h"
#include "kernels/cpu/dequant.h"
#include "shard/gguf.h"
#include "shard/model_config.h"
#include "tests/fuzz/fuzz_args.h"

namespace kvshard {
namespace {

class Image {
 public:
  void U32(uint32_t v) { Raw(&v, 4); }
  void U64(uint64_t v) { Raw(&v, 8); }
  void Str(const std::string& s) {
    U64(s.size());
    bytes.append(s);
  }
  void Raw(const void* p, size_t n) { bytes.append(static_cast<const char*>(p), n); }
  std::string bytes;
};

// A small valid llama GGUF: metadata of every kind, a gpt2 tokenizer, tensors of several types.
std::string ValidImage(std::mt19937_64& rng) {
  struct T {
    const char* name;
    uint32_t type;
    std::vector<uint64_t> ne;
    size_t bytes;
  };
  const std::vector<T> tensors = {
      {"token_embd.weight", 8, {32, 4}, 4 * 34},    {"output_norm.weight", 0, {32}, 128},
      {"blk.0.attn_q.weight", 3, {32, 2}, 2 * 20},  {"blk.0.ffn_up.weight", 12, {256, 1}, 144},
      {"blk.0.ffn_down.weight", 14, {256, 1}, 210}, {"blk.0.attn_k.weight", 2, {32, 1}, 18},
      {"blk.0.attn_v.weight", 30, {8, 2}, 32}};
  Image m;
  uint64_t kv = 0;
  const auto key = [&](const char* k, uint32_t type) {
    m.Str(k);
    m.U32(type);
    ++kv;
  };
  key("general.architecture", 8);
  m.Str("llama");
  key("llama.embedding_length", 4);
  m.U32(32);
  key("llama.feed_forward_length", 4);
  m.U32(64);
  key("llama.block_count", 4);
  m.U32(1);
  key("llama.attention.head_count", 4);
  m.U32(2);
  key("llama.attention.layer_norm_rms_epsilon", 6);
  const float eps = 1e-5f;
  m.Raw(&eps, 4);
  key("tokenizer.ggml.model", 8);
  m.Str("gpt2");
  key("tokenizer.ggml.pre", 8);
  m.Str("smollm");
  key("tokenizer.ggml.tokens", 9);
  m.U32(8);
  const std::vector<std::string> toks = {"a", "b", "ab", "\xc4\xa0", "<|x|>"};
  m.U64(toks.size());
  for (const auto& t : toks) m.Str(t);
  key("tokenizer.ggml.token_type", 9);
  m.U32(5);
  m.U64(toks.size());
  for (int32_t t : {1, 1, 1, 1, 3}) m.Raw(&t, 4);
  key("tokenizer.ggml.merges", 9);
  m.U32(8);
  m.U64(1);
  m.Str("a b");
  key("tokenizer.ggml.bos_token_id", 4);
  m.U32(4);
  key("tokenizer.ggml.add_bos_token", 7);
  const uint8_t yes = 1;
  m.Raw(&yes, 1);
  Image out;
  out.Raw("GGUF", 4);
  out.U32(3);
  out.U64(tensors.size());
  out.U64(kv);
  out.bytes += m.bytes;
  uint64_t offset = 0;
  for (const T& t : tensors) {
    out.Str(t.name);
    out.U32(static_cast<uint32_t>(t.ne.size()));
    for (uint64_t d : t.ne) out.U64(d);
    out.U32(t.type);
    out.U64(offset);
    offset += (t.bytes + 31) / 32 * 32;
  }
  out.bytes.resize((out.bytes.size() + 31) / 32 * 32, '\0');
  for (const T& t : tensors) {
    for (size_t i = 0; i < t.bytes; ++i) out.bytes.push_back(static_cast<char>(rng() & 0x3F));
    out.bytes.resize((out.bytes.size() + 31) / 32 * 32, '\0');
  }
  return out.bytes;
}

const uint64_t kInteresting[] = {0,          1,          2,          3,          4,     7,
                                 8,          9,          12,         30,         31,    32,
                                 255,        256,        4096,       65535,      65536, 0x7FFFFFFF,
                                 0xFFFFFFFF, 1ull << 32, 1ull << 40, ~0ull >> 1, ~0ull};

void Mutate(std::string& s, std::mt19937_64& rng) {
  if (s.empty()) return;
  const auto below = [&](uint64_t n) {
    return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng);
  };
  switch (below(5)) {
    case 0: s[below(s.size())] ^= static_cast<char>(1 << below(8)); break;
    case 1: s[below(s.size())] = static_cast<char>(below(256)); break;
    case 2: s.resize(below(s.size())); break;
    default: {  // an interesting 4- or 8-byte number at a random place
      const uint64_t v = kInteresting[below(sizeof(kInteresting) / sizeof(kInteresting[0]))];
      const size_t width = below(2) ? 8 : 4;
      if (s.size() < width) return;
      std::memcpy(s.data() + below(s.size() - width + 1), &v, width);
    }
  }
}

}  // namespace
}  // namespace kvshard

int main(int argc, char** argv) {
  using namespace kvshard;
  const FuzzArgs args(argc, argv, "gguf_fuzz", 5000000);
  std::mt19937_64 rng(args.seed);
  uint64_t iterations = 0, accepted = 0, configs = 0, tokenizers = 0;
  while (!args.Done(iterations)) {
    ++iterations;
    std::string image = ValidImage(rng);
    const bool pristine = rng() % 16 == 0;
    if (!pristine) {
      for (uint64_t m = 1 + rng() % 3; m > 0; --m) Mutate(image, rng);
    }
    // An exactly sized heap copy, so that ASan sees any read past the end.
    std::unique_ptr<uint8_t[]> bytes(new uint8_t[image.size() + 1]);
    std::memcpy(bytes.get(), image.data(), image.size());
    auto f = GgufFile::Parse(bytes.get(), image.size(), "fuzz.gguf");
    if (!f.ok()) {
      if (pristine) {
        std::fprintf(stderr, "a valid image was refused: %s\n", f.status().ToString().c_str());
        return 1;
      }
      continue;
    }
    ++accepted;
    for (const GgufTensor& t : (*f)->tensors()) {
      const auto info = GgmlTypeInfoOf(t.type);
      if (!info || !info->dequantizable || t.elements() > (1 << 20)) continue;
      std::vector<float> row(t.ne[0]);
      const int64_t rows = t.elements() / t.ne[0];
      const int64_t row_bytes = t.ne[0] / info->block_elems * info->block_bytes;
      for (int64_t r = 0; r < rows; ++r) {
        dequantize_row(t.type, (*f)->TensorData(t) + r * row_bytes, row.data(), t.ne[0]);
      }
    }
    if (ModelConfigFromGguf(**f).ok()) ++configs;
    auto tok = LoadGgufTokenizer(**f);
    if (tok.ok()) {
      ++tokenizers;
      for (int32_t id : (*tok)->Encode("ab a<|x|>b\xff 12", true)) {
        if (id < 0 || id >= (*tok)->vocab_size()) {
          std::fprintf(stderr, "id %d outside the vocabulary\n", id);
          return 1;
        }
      }
    }
  }
  std::printf("gguf_fuzz: %llu images, %llu parsed, %llu configs, %llu tokenizers, no crash\n",
              static_cast<unsigned long long>(iterations),
              static_cast<unsigned long long>(accepted), static_cast<unsigned long long>(configs),
              static_cast<unsigned long long>(tokenizers));
  return accepted > 0 ? 0 : 1;
}
