// GGUF: the parser on images written here (every field kind, alignment, tensor offsets), clear
// errors for malformed images (every truncation of a valid one among them), the block formats
// against the values of llama.cpp's gguf-py (tests/gguf/dequant_reference.json), and a model's
// tensors read through Checkpoint from GGUF equal to the same model's safetensors: Hugging Face
// names, reversed dimensions, and the Q/K rows put back from llama.cpp's RoPE order.
#include "shard/gguf.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "coordinator/tokenizer.h"
#include "kernels/cpu/dequant.h"
#include "kernels/cpu/half.h"
#include "shard/model_config.h"
#include "shard/rope_frequencies.h"
#include "shard/safetensors.h"

namespace kvshard {
namespace {

using json = nlohmann::json;

// A GGUF image builder: metadata and tensor infos in order, then aligned data.
class GgufWriter {
 public:
  void U32(uint32_t v) { Raw(&v, 4); }
  void U64(uint64_t v) { Raw(&v, 8); }
  void Str(const std::string& s) {
    U64(s.size());
    head_.append(s);
  }
  void KvString(const std::string& k, const std::string& v) {
    Str(k);
    U32(8);
    Str(v);
    ++kv_;
  }
  void KvU32(const std::string& k, uint32_t v) {
    Str(k);
    U32(4);
    U32(v);
    ++kv_;
  }
  void KvF32(const std::string& k, float v) {
    Str(k);
    U32(6);
    Raw(&v, 4);
    ++kv_;
  }
  void KvBool(const std::string& k, bool v) {
    Str(k);
    U32(7);
    head_.push_back(v ? 1 : 0);
    ++kv_;
  }
  void KvStrings(const std::string& k, const std::vector<std::string>& v) {
    Str(k);
    U32(9);
    U32(8);
    U64(v.size());
    for (const auto& s : v) Str(s);
    ++kv_;
  }
  void KvI32s(const std::string& k, const std::vector<int32_t>& v) {
    Str(k);
    U32(9);
    U32(5);
    U64(v.size());
    for (int32_t x : v) Raw(&x, 4);
    ++kv_;
  }
  // A tensor of ggml `type` with dims ne (fastest first) and its bytes.
  void Tensor(const std::string& name, uint32_t type, std::vector<uint64_t> ne,
              const std::string& bytes) {
    tensors_.push_back({name, type, std::move(ne), bytes});
  }
  std::string Image() const {
    std::string out = "GGUF";
    const auto put = [&](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); };
    const uint32_t version = 3;
    const uint64_t nt = tensors_.size(), nk = kv_;
    put(&version, 4);
    put(&nt, 8);
    put(&nk, 8);
    out += head_;
    uint64_t offset = 0;
    std::vector<uint64_t> offsets;
    for (const auto& t : tensors_) {
      const uint64_t n = t.name.size();
      put(&n, 8);
      out += t.name;
      const uint32_t dims = static_cast<uint32_t>(t.ne.size());
      put(&dims, 4);
      for (uint64_t d : t.ne) put(&d, 8);
      put(&t.type, 4);
      put(&offset, 8);
      offsets.push_back(offset);
      offset += (t.bytes.size() + 31) / 32 * 32;
    }
    out.resize((out.size() + 31) / 32 * 32, '\0');
    for (const auto& t : tensors_) {
      out += t.bytes;
      out.resize((out.size() + 31) / 32 * 32, '\0');
    }
    return out;
  }

 private:
  struct T {
    std::string name;
    uint32_t type;
    std::vector<uint64_t> ne;
    std::string bytes;
  };
  void Raw(const void* p, size_t n) { head_.append(static_cast<const char*>(p), n); }
  std::string head_;
  uint64_t kv_ = 0;
  std::vector<T> tensors_;
};

std::string F32Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

StatusOr<std::unique_ptr<GgufFile>> ParseImage(const std::string& image) {
  return GgufFile::Parse(reinterpret_cast<const uint8_t*>(image.data()), image.size(), "t.gguf");
}

GgufWriter SmallFile() {
  GgufWriter w;
  w.KvString("general.architecture", "llama");
  w.KvU32("llama.block_count", 2);
  w.KvF32("llama.rope.freq_base", 500000.0f);
  w.KvBool("tokenizer.ggml.add_bos_token", true);
  w.KvStrings("tokenizer.ggml.tokens", {"a", "b", "<|x|>"});
  w.KvI32s("tokenizer.ggml.token_type", {1, 1, 3});
  w.Tensor("a.weight", 0, {2, 3}, F32Bytes({1, 2, 3, 4, 5, 6}));
  w.Tensor("b.weight", 0, {4}, F32Bytes({7, 8, 9, 10}));
  return w;
}

TEST(Gguf, ParsesMetadataAndTensors) {
  const std::string image = SmallFile().Image();
  auto f = ParseImage(image);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.String("general.architecture").value(), "llama");
  EXPECT_EQ(g.Int("llama.block_count").value(), 2);
  EXPECT_EQ(g.Float("llama.rope.freq_base").value(), 500000.0);
  EXPECT_TRUE(g.Bool("tokenizer.ggml.add_bos_token").value());
  EXPECT_EQ(g.Find("tokenizer.ggml.tokens")->strings,
            (std::vector<std::string>{"a", "b", "<|x|>"}));
  EXPECT_EQ(g.Find("tokenizer.ggml.token_type")->ints, (std::vector<int64_t>{1, 1, 3}));
  EXPECT_NE(g.String("llama.block_count").status().ToString().find("not a string"),
            std::string::npos);
  EXPECT_NE(g.Int("missing.key").status().ToString().find("no metadata key missing.key"),
            std::string::npos);
  const GgufTensor* a = g.Tensor("a.weight");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->ne, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->bytes, 24u);
  EXPECT_EQ(a->offset % 32, 0u);
  float x[6];
  std::memcpy(x, g.TensorData(*a), 24);
  EXPECT_EQ(x[5], 6.0f);
  EXPECT_EQ(g.Tensor("b.weight")->offset, a->offset + 32);
}

TEST(Gguf, EveryTruncationIsAClearError) {
  const std::string image = SmallFile().Image();
  for (size_t n = 0; n < image.size(); ++n) {
    // The tensor data ends with padding that a parser may not need: any prefix that cuts into
    // the header or a tensor's bytes must fail; prefixes inside the final padding may pass.
    auto f = ParseImage(image.substr(0, n));
    if (n < image.size() - 16) {
      ASSERT_FALSE(f.ok()) << "a " << n << "-byte prefix of " << image.size() << " parsed";
      ASSERT_NE(f.status().ToString().find("t.gguf"), std::string::npos);
    }
  }
}

std::string ErrorOf(const std::string& image) {
  auto f = ParseImage(image);
  return f.ok() ? "ok" : f.status().ToString();
}

TEST(Gguf, MalformedImagesGetClearErrors) {
  const std::string good = SmallFile().Image();
  EXPECT_NE(ErrorOf("GGML" + good.substr(4)).find("not a GGUF file"), std::string::npos);
  std::string v1 = good;
  v1[4] = 1;
  EXPECT_NE(ErrorOf(v1).find("GGUF version 1"), std::string::npos);
  // A key count far beyond what the bytes could hold.
  std::string kv = good;
  const uint64_t many = uint64_t{1} << 40;
  std::memcpy(kv.data() + 16, &many, 8);
  EXPECT_NE(ErrorOf(kv).find("metadata keys cannot fit"), std::string::npos);
  // A string length past the end.
  std::string len = good;
  std::memcpy(len.data() + 24, &many, 8);
  EXPECT_NE(ErrorOf(len).find("claims"), std::string::npos);
  {
    GgufWriter w;
    w.Tensor("q", 99, {32}, std::string(32, '\0'));
    EXPECT_NE(ErrorOf(w.Image()).find("unknown type 99"), std::string::npos);
  }
  {
    GgufWriter w;
    w.Tensor("q", 8, {33}, std::string(34, '\0'));  // Q8_0 rows must be whole 32-value blocks
    EXPECT_NE(ErrorOf(w.Image()).find("not whole Q8_0 blocks"), std::string::npos);
  }
  {
    GgufWriter w;
    w.Tensor("big", 0, {1024}, F32Bytes(std::vector<float>(4)));  // claims 4 KiB, has 16 B
    EXPECT_NE(ErrorOf(w.Image()).find("runs past the end"), std::string::npos);
  }
  {
    GgufWriter w;
    w.Tensor("x", 0, {2}, F32Bytes({1, 2}));
    w.Tensor("x", 0, {2}, F32Bytes({1, 2}));
    EXPECT_NE(ErrorOf(w.Image()).find("appears twice"), std::string::npos);
  }
  {
    GgufWriter w;
    w.KvU32("k", 1);
    w.KvU32("k", 2);
    EXPECT_NE(ErrorOf(w.Image()).find("metadata key k appears twice"), std::string::npos);
  }
  {
    GgufWriter w;
    w.KvU32("general.alignment", 24);
    EXPECT_NE(ErrorOf(w.Image()).find("power of two"), std::string::npos);
  }
  {
    GgufWriter w;
    w.Tensor("x", 0, {2, 1, 1, 1, 1}, F32Bytes({1, 2}));
    EXPECT_NE(ErrorOf(w.Image()).find("5 dimensions"), std::string::npos);
  }
  // Two tensors whose offsets overlap.
  {
    GgufWriter w;
    w.Tensor("x", 0, {16}, F32Bytes(std::vector<float>(16)));
    w.Tensor("y", 0, {16}, F32Bytes(std::vector<float>(16)));
    std::string image = w.Image();
    const uint64_t zero = 0, sixty_four = 64;
    // y's offset (64) is the last 8 bytes of its tensor info; set it to 32, inside x.
    const size_t at = image.find(std::string(reinterpret_cast<const char*>(&sixty_four), 8));
    ASSERT_NE(at, std::string::npos);
    const uint64_t thirty_two = 32;
    std::memcpy(image.data() + at, &thirty_two, 8);
    (void)zero;
    EXPECT_NE(ErrorOf(image).find("overlap"), std::string::npos);
  }
  EXPECT_NE(GgufFile::Open("/nonexistent.gguf").status().ToString().find("nonexistent"),
            std::string::npos);
}

// rope_freqs.weight as llama.cpp's converter writes it for Llama 3.1-style scaling: the RoPE
// frequencies equal those of the config.json rope_scaling they come from.
GgufWriter RopeFreqsFile(const std::vector<float>& factors) {
  GgufWriter w;
  w.KvString("general.architecture", "llama");
  w.KvU32("llama.embedding_length", 64);
  w.KvU32("llama.feed_forward_length", 96);
  w.KvU32("llama.block_count", 1);
  w.KvU32("llama.attention.head_count", 4);
  w.KvU32("llama.attention.head_count_kv", 2);
  w.KvU32("llama.context_length", 4096);
  w.KvU32("llama.vocab_size", 32);
  w.KvF32("llama.rope.freq_base", 500000.0f);
  w.Tensor("rope_freqs.weight", 0, {factors.size()}, F32Bytes(factors));
  return w;
}

TEST(Gguf, RopeFreqsEqualTheLlama3ScalingTheyEncode) {
  RopeScaling rs;
  rs.type = RopeScalingType::kLlama3;
  rs.factor = 8;
  rs.low_freq_factor = 1;
  rs.high_freq_factor = 4;
  rs.original_max_position_embeddings = 1024;
  std::vector<float> factors;
  for (int i = 0; i < 8; ++i) {  // head_dim 16, as the converter computes them
    const double freq = 1.0 / std::pow(500000.0, 2.0 * i / 16);
    const double wavelen = 2 * M_PI / freq, low = 1024.0 / 1, high = 1024.0 / 4;
    double f = 1;
    if (wavelen > low) {
      f = 8;
    } else if (wavelen >= high) {
      const double smooth = (1024.0 / wavelen - 1) / (4 - 1);
      f = 1 / ((1 - smooth) / 8 + smooth);
    }
    factors.push_back(static_cast<float>(f));
  }
  ASSERT_NE(factors.front(), factors.back());  // both bands, and the blend, are exercised
  const std::string image = RopeFreqsFile(factors).Image();  // the parsed file views it
  auto file = ParseImage(image);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto config = ModelConfigFromGguf(**file);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->rope_freq_factors, factors);
  ModelConfig reference = *config;
  reference.rope_freq_factors.clear();
  reference.rope_scaling = rs;
  const std::vector<float> got = RopeInverseFrequencies(*config);
  const std::vector<float> want = RopeInverseFrequencies(reference);
  ASSERT_EQ(got.size(), 8u);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6 * want[i]) << i;

  const std::string short_image = RopeFreqsFile({1, 1, 1}).Image();
  auto short_file = ParseImage(short_image);
  ASSERT_TRUE(short_file.ok());
  EXPECT_NE(ModelConfigFromGguf(**short_file)
                .status()
                .ToString()
                .find("rope_freqs.weight must be 8 values"),
            std::string::npos);
  factors[3] = -1;
  const std::string negative_image = RopeFreqsFile(factors).Image();
  auto negative = ParseImage(negative_image);
  ASSERT_TRUE(negative.ok());
  EXPECT_NE(ModelConfigFromGguf(**negative).status().ToString().find("finite and positive"),
            std::string::npos);
}

TEST(Gguf, BlockFormatsEqualGgufPy) {
  std::ifstream in(std::string(KVSHARD_REPO_DIR) + "/tests/gguf/dequant_reference.json");
  const json ref = json::parse(in);
  ASSERT_GE(ref.size(), 7u);
  for (const auto& [name, c] : ref.items()) {
    const std::string hex = c["hex"].get<std::string>();
    std::string bytes;
    for (size_t i = 0; i < hex.size(); i += 2) {
      bytes.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    }
    const std::vector<float> want = c["values"].get<std::vector<float>>();
    std::vector<float> got(want.size());
    ASSERT_TRUE(dequantize_row(c["type"].get<uint32_t>(),
                               reinterpret_cast<const uint8_t*>(bytes.data()), got.data(),
                               static_cast<int64_t>(got.size())))
        << name;
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-6 * std::fabs(want[i]) + 1e-7) << name << " value " << i;
    }
  }
  EXPECT_FALSE(dequantize_row(13, nullptr, nullptr, 0));  // Q5_K: not read
}

// Q8_0 of a row, as ggml's quantize_row_q8_0_reference.
std::string QuantizeQ8_0(const std::vector<float>& x) {
  std::string out;
  for (size_t b = 0; b < x.size(); b += 32) {
    float amax = 0;
    for (size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b + j]));
    const float d = amax / 127.0f;
    const uint16_t dh = f32_to_f16_bits(d);
    out.append(reinterpret_cast<const char*>(&dh), 2);
    for (size_t j = 0; j < 32; ++j) {
      out.push_back(static_cast<char>(static_cast<int8_t>(d == 0 ? 0 : std::round(x[b + j] / d))));
    }
  }
  return out;
}

// llama.cpp's convert_hf_to_gguf permute of q/k rows: view rows as [heads, 2, head_dim / 2] and
// swap the last two axes.
std::vector<float> PermuteForGguf(const std::vector<float>& w, int64_t heads, int64_t rows,
                                  int64_t cols) {
  const int64_t hd = rows / heads, half = hd / 2;
  std::vector<float> out(w.size());
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t a = 0; a < 2; ++a) {
      for (int64_t i = 0; i < half; ++i) {
        const int64_t from = h * hd + a * half + i, to = h * hd + i * 2 + a;
        std::copy(w.begin() + from * cols, w.begin() + (from + 1) * cols, out.begin() + to * cols);
      }
    }
  }
  return out;
}

class GgufCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("kvshard_gguf_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_ / "st");
    config_.dim = 64;
    config_.hidden_dim = 96;
    config_.n_layers = 1;
    config_.n_heads = 4;
    config_.n_kv_heads = 2;
    config_.head_dim = 16;
    config_.vocab_size = 32;
    config_.max_seq_len = 128;
    config_.rope_theta = 10000;
    std::ofstream(dir_ / "st" / "config.json") << ModelConfigToJson(config_);
    const int64_t d = config_.dim, q = config_.n_heads * 16, kv = config_.n_kv_heads * 16,
                  f = config_.hidden_dim, v = config_.vocab_size;
    shapes_ = {{"model.embed_tokens.weight", {v, d}},
               {"model.norm.weight", {d}},
               {"lm_head.weight", {v, d}},
               {"model.layers.0.input_layernorm.weight", {d}},
               {"model.layers.0.self_attn.q_proj.weight", {q, d}},
               {"model.layers.0.self_attn.k_proj.weight", {kv, d}},
               {"model.layers.0.self_attn.v_proj.weight", {kv, d}},
               {"model.layers.0.self_attn.o_proj.weight", {d, q}},
               {"model.layers.0.post_attention_layernorm.weight", {d}},
               {"model.layers.0.mlp.gate_proj.weight", {f, d}},
               {"model.layers.0.mlp.up_proj.weight", {f, d}},
               {"model.layers.0.mlp.down_proj.weight", {d, f}}};
    std::mt19937 rng(5);
    std::normal_distribution<float> normal;
    for (const auto& [name, shape] : shapes_) {
      int64_t n = 1;
      for (int64_t s : shape) n *= s;
      std::vector<float> x(n);
      for (float& e : x) e = normal(rng);
      values_[name] = x;
    }
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // The model as safetensors (st/) and as a GGUF file with 2-D weights in `type` (0 = F32,
  // 8 = Q8_0).
  std::string Write(uint32_t type) {
    std::vector<TensorToWrite> st;
    for (const auto& [name, shape] : shapes_) {
      st.push_back({name, DType::kF32, shape, values_[name].data()});
    }
    EXPECT_TRUE(WriteSafetensors((dir_ / "st" / "model.safetensors").string(), st, {}).ok());
    GgufWriter w;
    w.KvString("general.architecture", "llama");
    w.KvU32("llama.embedding_length", static_cast<uint32_t>(config_.dim));
    w.KvU32("llama.feed_forward_length", static_cast<uint32_t>(config_.hidden_dim));
    w.KvU32("llama.block_count", 1);
    w.KvU32("llama.attention.head_count", 4);
    w.KvU32("llama.attention.head_count_kv", 2);
    w.KvU32("llama.context_length", 128);
    w.KvF32("llama.rope.freq_base", 10000.0f);
    w.KvF32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    w.KvU32("llama.vocab_size", 32);
    const std::map<std::string, std::string> names = {
        {"model.embed_tokens.weight", "token_embd.weight"},
        {"model.norm.weight", "output_norm.weight"},
        {"lm_head.weight", "output.weight"},
        {"model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"},
        {"model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"},
        {"model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight"},
        {"model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight"},
        {"model.layers.0.self_attn.o_proj.weight", "blk.0.attn_output.weight"},
        {"model.layers.0.post_attention_layernorm.weight", "blk.0.ffn_norm.weight"},
        {"model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight"},
        {"model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight"},
        {"model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"}};
    for (const auto& [name, shape] : shapes_) {
      std::vector<float> x = values_[name];
      if (name.find("q_proj") != std::string::npos) x = PermuteForGguf(x, 4, shape[0], shape[1]);
      if (name.find("k_proj") != std::string::npos) x = PermuteForGguf(x, 2, shape[0], shape[1]);
      std::vector<uint64_t> ne(shape.rbegin(), shape.rend());
      if (shape.size() == 2 && type == 8) {
        w.Tensor(names.at(name), 8, ne, QuantizeQ8_0(x));
      } else {
        w.Tensor(names.at(name), 0, ne, F32Bytes(x));
      }
    }
    const std::string path = (dir_ / "m.gguf").string();
    std::ofstream(path, std::ios::binary) << w.Image();
    return path;
  }

  std::filesystem::path dir_;
  ModelConfig config_;
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes_;
  std::map<std::string, std::vector<float>> values_;
};

TEST_F(GgufCheckpointTest, F32TensorsEqualTheSafetensors) {
  const std::string gguf = Write(0);
  auto a = Checkpoint::Open((dir_ / "st").string());
  auto b = Checkpoint::Open(gguf);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  for (const auto& [name, shape] : shapes_) {
    const int64_t rows = shape[0], cols = shape.size() > 1 ? shape[1] : 1;
    // The whole tensor, then a slice of rows and columns as a rank reads it.
    for (const auto& [r0, r1, c0, c1] :
         {std::tuple<int64_t, int64_t, int64_t, int64_t>{0, rows, 0, cols},
          {rows / 4, rows / 2 + 1, cols > 1 ? cols / 3 : 0, cols}}) {
      std::vector<float> x((r1 - r0) * (c1 - c0)), y(x.size());
      ASSERT_TRUE((*a)->ReadSliceF32(name, shape, r0, r1, c0, c1, x.data()).ok());
      const Status st = (*b)->ReadSliceF32(name, shape, r0, r1, c0, c1, y.data());
      ASSERT_TRUE(st.ok()) << st.ToString();
      ASSERT_EQ(x, y) << name << " rows [" << r0 << ", " << r1 << ")";
    }
  }
  auto ca = LoadModelConfig((dir_ / "st").string());
  auto cb = LoadModelConfig(gguf);
  ASSERT_TRUE(cb.ok()) << cb.status().ToString();
  EXPECT_EQ(ModelConfigToJson(*ca), ModelConfigToJson(*cb));
  EXPECT_NE((*b)->TensorBytes("lm_head.weight").status().ToString().find("CPU backend"),
            std::string::npos);
  std::vector<float> z(4);
  EXPECT_NE((*b)->ReadSliceF32("model.norm.weight", {65}, 0, 4, 0, 1, z.data())
                .ToString()
                .find("expected shape"),
            std::string::npos);
}

TEST_F(GgufCheckpointTest, Q8_0TensorsAreCloseToTheSafetensors) {
  const std::string gguf = Write(8);
  auto a = Checkpoint::Open((dir_ / "st").string());
  auto b = Checkpoint::Open(gguf);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  for (const auto& [name, shape] : shapes_) {
    if (shape.size() != 2) continue;
    std::vector<float> x(shape[0] * shape[1]), y(x.size());
    ASSERT_TRUE((*a)->ReadSliceF32(name, shape, 0, shape[0], 0, shape[1], x.data()).ok());
    ASSERT_TRUE((*b)->ReadSliceF32(name, shape, 0, shape[0], 0, shape[1], y.data()).ok());
    for (size_t i = 0; i < x.size(); ++i) {
      // |error| <= d / 2 with d = max|x| / 127 of the block (|x| < 5 here), plus f16 rounding of d.
      ASSERT_NEAR(x[i], y[i], 0.03) << name << " value " << i;
    }
  }
}

// SmolLM2-135M-Instruct's GGUF (fetched by scripts/fetch-assets.sh): its config and tokenizer.
TEST(GgufSmolLM2, ConfigAndTokenizerFromTheFile) {
  const std::string path =
      std::string(KVSHARD_REPO_DIR) + "/assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) {
    FAIL() << path << " is missing: scripts/fetch-assets.sh fetches it (run-tests.sh does)";
  }
  auto c = LoadModelConfig(path);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->n_layers, 30);
  EXPECT_EQ(c->dim, 576);
  EXPECT_EQ(c->n_heads, 9);
  EXPECT_EQ(c->n_kv_heads, 3);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->vocab_size, 49152);
  EXPECT_TRUE(c->tie_word_embeddings);
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok());
  auto t = LoadGgufTokenizer(**f);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ((*t)->vocab_size(), 49152);
  EXPECT_EQ((*t)->bos_id(), 1);
  EXPECT_EQ((*t)->eos_id(), 2);
  const std::vector<int32_t> ids = (*t)->Encode("<|im_start|>user\nHi", /*add_bos=*/true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1);  // <|im_start|>: an added token; add_bos_token is false in this file
  EXPECT_EQ((*t)->Decode(ids), "<|im_start|>user\nHi");
}

}  // namespace
}  // namespace kvshard
