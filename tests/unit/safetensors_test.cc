#include "shard/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "shard/mapped_file.h"

namespace kvshard {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/kvshard_safetensors_XXXXXX";
    const char* made = ::mkdtemp(tmpl);
    if (made != nullptr) path_ = made;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A file image: 8-byte little-endian length, the header text, then `data_bytes` bytes of data.
std::string Image(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + std::string(data_bytes, '\x7f');
}

Status ParseImage(const std::string& image) {
  return ParseSafetensorsHeader(reinterpret_cast<const uint8_t*>(image.data()), image.size())
      .status();
}

// Asserts `status` failed with `code` and its message contains `fragment`.
void ExpectError(const Status& status, StatusCode code, const std::string& fragment) {
  ASSERT_FALSE(status.ok()) << "expected an error containing: " << fragment;
  EXPECT_EQ(status.code(), code) << status.ToString();
  EXPECT_NE(status.message().find(fragment), std::string::npos)
      << "message \"" << status.message() << "\" lacks \"" << fragment << "\"";
}

void ExpectParseError(const std::string& header, size_t data_bytes, const std::string& fragment) {
  ExpectError(ParseImage(Image(header, data_bytes)), StatusCode::kDataLoss, fragment);
}

std::vector<uint16_t> ToBits(DType dtype, const std::vector<float>& values) {
  std::vector<uint16_t> bits(values.size());
  ConvertFromF32(dtype, values.data(), bits.data(), values.size());
  return bits;
}

// Three tensors, one per dtype, with exactly representable values: value = row * 100 + col.
struct Fixture {
  std::vector<float> f32;      // [3, 4]
  std::vector<uint16_t> f16;   // [2, 3, 2], 2-D view [2, 6]
  std::vector<uint16_t> bf16;  // [5], 2-D view [5, 1]
  Fixture() {
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 4; ++c) f32.push_back(r * 100 + c + 0.5f);
    std::vector<float> v;
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 6; ++c) v.push_back(-(r * 100 + c));
    f16 = ToBits(DType::kF16, v);
    bf16 = ToBits(DType::kBF16, {0.0f, 1.0f, -2.0f, 3.0f, 256.0f});
  }
  std::vector<TensorToWrite> Tensors() const {
    return {{"w.f32", DType::kF32, {3, 4}, f32.data()},
            {"w.f16", DType::kF16, {2, 3, 2}, f16.data()},
            {"w.bf16", DType::kBF16, {5}, bf16.data()}};
  }
};

TEST(SafetensorsTest, WriteThenReadEveryDtype) {
  TempDir dir;
  Fixture fx;
  ASSERT_TRUE(WriteSafetensors(dir / "model.safetensors", fx.Tensors(), {{"format", "pt"}}).ok());

  auto file = SafetensorsFile::Open(dir / "model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  const SafetensorsHeader& header = (*file)->header();
  EXPECT_EQ(header.data_offset % 8, 0u);  // header padded as the reference writer does
  EXPECT_EQ(header.metadata.at("format"), "pt");
  ASSERT_EQ(header.tensors.size(), 3u);
  const TensorInfo& f16 = header.tensors.at("w.f16");
  EXPECT_EQ(f16.dtype, DType::kF16);
  EXPECT_EQ(f16.shape, (std::vector<int64_t>{2, 3, 2}));
  EXPECT_EQ(f16.numel(), 12);
  EXPECT_EQ(f16.end - f16.begin, 24u);
  EXPECT_EQ(std::memcmp((*file)->TensorData(f16), fx.f16.data(), 24), 0);

  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  EXPECT_EQ((*ckpt)->TensorNames(), (std::vector<std::string>{"w.bf16", "w.f16", "w.f32"}));
  EXPECT_TRUE((*ckpt)->Has("w.f32"));
  EXPECT_FALSE((*ckpt)->Has("w.f64"));

  std::vector<float> all(12);
  ASSERT_TRUE((*ckpt)->ReadSliceF32("w.f32", {3, 4}, 0, 3, 0, 4, all.data()).ok());
  EXPECT_EQ(all, fx.f32);

  std::vector<float> out(4);
  ASSERT_TRUE((*ckpt)->ReadSliceF32("w.f32", {3, 4}, 1, 3, 1, 3, out.data()).ok());
  EXPECT_EQ(out, (std::vector<float>{101.5f, 102.5f, 201.5f, 202.5f}));

  out.assign(6, 0);
  ASSERT_TRUE((*ckpt)->ReadSliceF32("w.f16", {2, 3, 2}, 0, 2, 2, 5, out.data()).ok());
  EXPECT_EQ(out, (std::vector<float>{-2, -3, -4, -102, -103, -104}));

  out.assign(3, 0);
  ASSERT_TRUE((*ckpt)->ReadSliceF32("w.bf16", {5}, 1, 4, 0, 1, out.data()).ok());
  EXPECT_EQ(out, (std::vector<float>{1.0f, -2.0f, 3.0f}));

  auto bytes = (*ckpt)->TensorBytes("w.bf16");
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(bytes->size(), 10u);
  EXPECT_EQ(std::memcmp(bytes->data(), fx.bf16.data(), 10), 0);

  // A slice in its own dtype is the stored bytes; in another dtype it is converted.
  EXPECT_EQ((*ckpt)->StoredDType("w.bf16").value(), DType::kBF16);
  EXPECT_EQ((*ckpt)->StoredDType("w.f16").value(), DType::kF16);
  EXPECT_EQ((*ckpt)->StoredDType("w.f32").value(), DType::kF32);
  EXPECT_EQ((*ckpt)->StoredDType("w.f64").status().code(), StatusCode::kNotFound);
  std::vector<uint16_t> half(3);
  ASSERT_TRUE((*ckpt)->ReadSlice("w.bf16", {5}, 1, 4, 0, 1, DType::kBF16, half.data()).ok());
  EXPECT_EQ(std::memcmp(half.data(), fx.bf16.data() + 1, 6), 0);
  half.assign(4, 0);
  ASSERT_TRUE((*ckpt)->ReadSlice("w.f32", {3, 4}, 1, 3, 1, 3, DType::kBF16, half.data()).ok());
  EXPECT_EQ(half, (std::vector<uint16_t>{FloatToBf16(101.5f), FloatToBf16(102.5f),
                                         FloatToBf16(201.5f), FloatToBf16(202.5f)}));
  half.assign(6, 0);
  ASSERT_TRUE((*ckpt)->ReadSlice("w.f16", {2, 3, 2}, 0, 2, 2, 5, DType::kBF16, half.data()).ok());
  EXPECT_EQ(half, (std::vector<uint16_t>{FloatToBf16(-2), FloatToBf16(-3), FloatToBf16(-4),
                                         FloatToBf16(-102), FloatToBf16(-103), FloatToBf16(-104)}));
}

TEST(SafetensorsTest, EmptyAndScalarTensors) {
  TempDir dir;
  const float scalar = 7.0f;
  ASSERT_TRUE(WriteSafetensors(
                  dir / "model.safetensors",
                  {{"empty", DType::kF32, {0, 4}, nullptr}, {"scalar", DType::kF32, {}, &scalar}},
                  {})
                  .ok());
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  float out = 0;
  ASSERT_TRUE((*ckpt)->ReadSliceF32("scalar", {}, 0, 1, 0, 1, &out).ok());
  EXPECT_EQ(out, 7.0f);
  EXPECT_TRUE((*ckpt)->ReadSliceF32("empty", {0, 4}, 0, 0, 0, 4, &out).ok());
}

TEST(SafetensorsTest, ReadSliceChecksShapeAndRange) {
  TempDir dir;
  Fixture fx;
  ASSERT_TRUE(WriteSafetensors(dir / "model.safetensors", fx.Tensors(), {}).ok());
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok());
  std::vector<float> out(12);
  ExpectError((*ckpt)->ReadSliceF32("w.f32", {4, 3}, 0, 1, 0, 1, out.data()), StatusCode::kDataLoss,
              "w.f32 in " + (dir / "model.safetensors") + ": expected shape [4, 3], found [3, 4]");
  ExpectError((*ckpt)->ReadSliceF32("w.f32", {3, 4}, 0, 4, 0, 1, out.data()),
              StatusCode::kOutOfRange, "rows [0, 4)");
  ExpectError((*ckpt)->ReadSliceF32("w.f32", {3, 4}, 0, 1, 3, 2, out.data()),
              StatusCode::kOutOfRange, "columns [3, 2)");
  ExpectError((*ckpt)->ReadSliceF32("w.f32", {3, 4}, -1, 1, 0, 1, out.data()),
              StatusCode::kOutOfRange, "[3, 4] view");
}

TEST(SafetensorsTest, MissingTensor) {
  TempDir dir;
  Fixture fx;
  ASSERT_TRUE(WriteSafetensors(dir / "model.safetensors", fx.Tensors(), {}).ok());
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok());
  ExpectError((*ckpt)->Find("lm_head.weight").status(), StatusCode::kNotFound,
              "tensor lm_head.weight is missing from " + dir.path());
  float out;
  ExpectError((*ckpt)->ReadSliceF32("nope", {1}, 0, 1, 0, 1, &out), StatusCode::kNotFound,
              "tensor nope is missing");
}

TEST(SafetensorsTest, WriteRejectsBadInput) {
  TempDir dir;
  const float x = 1;
  ExpectError(WriteSafetensors(dir / "a.safetensors",
                               {{"a", DType::kF32, {1}, &x}, {"a", DType::kF32, {1}, &x}}, {}),
              StatusCode::kInvalidArgument, "\"a\" given twice");
  ExpectError(WriteSafetensors(dir / "a.safetensors", {{"a", DType::kF32, {-1}, &x}}, {}),
              StatusCode::kInvalidArgument, "bad shape [-1]");
  ExpectError(WriteSafetensors(dir / "a.safetensors", {{"a", DType::kF32, {2}, nullptr}}, {}),
              StatusCode::kInvalidArgument, "no data");
  ExpectError(WriteSafetensors(dir / "no/such/dir.safetensors", {{"a", DType::kF32, {1}, &x}}, {}),
              StatusCode::kDataLoss, "no/such/dir.safetensors.tmp");
  EXPECT_FALSE(fs::exists(dir / "a.safetensors"));
}

// Shards: tensors split over two files named by model.safetensors.index.json.
class ShardedCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a_ = {1, 2, 3, 4, 5, 6};
    b_ = ToBits(DType::kBF16, {-1, -2, -3});
    ASSERT_TRUE(WriteSafetensors(dir_ / "model-00001-of-00002.safetensors",
                                 {{"a", DType::kF32, {2, 3}, a_.data()}}, {})
                    .ok());
    ASSERT_TRUE(WriteSafetensors(dir_ / "model-00002-of-00002.safetensors",
                                 {{"b", DType::kBF16, {3, 1}, b_.data()}}, {})
                    .ok());
  }
  void WriteIndex(const std::string& weight_map) {
    WriteText(dir_ / "model.safetensors.index.json",
              R"({"metadata": {"total_size": 30}, "weight_map": )" + weight_map + "}");
  }
  TempDir dir_;
  std::vector<float> a_;
  std::vector<uint16_t> b_;
};

TEST_F(ShardedCheckpointTest, RoundTrip) {
  WriteIndex(
      R"({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})");
  auto ckpt = Checkpoint::Open(dir_.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  EXPECT_EQ((*ckpt)->TensorNames(), (std::vector<std::string>{"a", "b"}));
  std::vector<float> out(3);
  ASSERT_TRUE((*ckpt)->ReadSliceF32("a", {2, 3}, 1, 2, 0, 3, out.data()).ok());
  EXPECT_EQ(out, (std::vector<float>{4, 5, 6}));
  out.assign(2, 0);
  ASSERT_TRUE((*ckpt)->ReadSliceF32("b", {3, 1}, 1, 3, 0, 1, out.data()).ok());
  EXPECT_EQ(out, (std::vector<float>{-2, -3}));
  auto info = (*ckpt)->Find("b");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ((*info)->dtype, DType::kBF16);
}

TEST_F(ShardedCheckpointTest, IndexNamingMissingShard) {
  WriteIndex(R"({"a": "model-00001-of-00002.safetensors", "b": "model-00003.safetensors"})");
  ExpectError(Checkpoint::Open(dir_.path()).status(), StatusCode::kNotFound,
              "model-00003.safetensors");
}

TEST_F(ShardedCheckpointTest, IndexEscapingTheDirectory) {
  for (const std::string bad : {"../x", "/etc/passwd", "sub/model.safetensors", "..", ""}) {
    WriteIndex(R"({"a": ")" + bad + R"("})");
    ExpectError(Checkpoint::Open(dir_.path()).status(), StatusCode::kDataLoss,
                "\"" + bad + "\" is not a plain file name");
  }
}

TEST_F(ShardedCheckpointTest, IndexListsTensorInTheWrongShard) {
  WriteIndex(
      R"({"a": "model-00002-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})");
  ExpectError(Checkpoint::Open(dir_.path()).status(), StatusCode::kDataLoss,
              "tensor \"a\" in " + (dir_ / "model-00002-of-00002.safetensors") +
                  ", which does not contain it");
  WriteIndex(R"({"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                 "c": "model-00002-of-00002.safetensors"})");
  ExpectError(Checkpoint::Open(dir_.path()).status(), StatusCode::kDataLoss, "but it is in");
}

TEST_F(ShardedCheckpointTest, TensorInTwoShards) {
  std::vector<float> dup = {9};
  ASSERT_TRUE(WriteSafetensors(
                  dir_ / "model-00002-of-00002.safetensors",
                  {{"a", DType::kF32, {1}, dup.data()}, {"b", DType::kBF16, {3, 1}, b_.data()}}, {})
                  .ok());
  WriteIndex(
      R"({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})");
  ExpectError(Checkpoint::Open(dir_.path()).status(), StatusCode::kDataLoss,
              "tensor \"a\" appears in both");
}

TEST_F(ShardedCheckpointTest, MalformedIndex) {
  WriteText(dir_ / "model.safetensors.index.json", "{\"weight_map\": ");
  ExpectError(Checkpoint::Open(dir_.path()).status(), StatusCode::kDataLoss, "not valid JSON");
  WriteText(dir_ / "model.safetensors.index.json", R"({"weights": {}})");
  ExpectError(Checkpoint::Open(dir_.path()).status(), StatusCode::kDataLoss,
              "no \"weight_map\" object");
  WriteIndex(R"({"a": 3})");
  ExpectError(Checkpoint::Open(dir_.path()).status(), StatusCode::kDataLoss,
              "weight_map[\"a\"] is 3");
  WriteIndex(
      R"({"a": "model-00001-of-00002.safetensors", "a": "model-00002-of-00002.safetensors"})");
  ExpectError(Checkpoint::Open(dir_.path()).status(), StatusCode::kDataLoss,
              "repeats the key \"a\"");
}

TEST(CheckpointTest, DirectoryWithoutWeights) {
  TempDir dir;
  ExpectError(Checkpoint::Open(dir.path()).status(), StatusCode::kNotFound,
              "no model.safetensors or model.safetensors.index.json in " + dir.path());
  ExpectError(Checkpoint::Open(dir / "absent").status(), StatusCode::kNotFound, "absent");
}

TEST(CheckpointTest, TruncatedFileOnDisk) {
  TempDir dir;
  Fixture fx;
  ASSERT_TRUE(WriteSafetensors(dir / "model.safetensors", fx.Tensors(), {}).ok());
  fs::resize_file(dir / "model.safetensors", fs::file_size(dir / "model.safetensors") - 1);
  ExpectError(Checkpoint::Open(dir.path()).status(), StatusCode::kDataLoss,
              dir / "model.safetensors");
  fs::resize_file(dir / "model.safetensors", 5);
  ExpectError(Checkpoint::Open(dir.path()).status(), StatusCode::kDataLoss,
              "file is 5 bytes, too short");
}

TEST(MappedFileTest, OpensReadsAndMoves) {
  TempDir dir;
  WriteText(dir / "f", "hello");
  auto file = MappedFile::Open(dir / "f");
  ASSERT_TRUE(file.ok());
  ASSERT_EQ(file->size(), 5u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(file->data()), 5), "hello");
  MappedFile moved = std::move(*file);
  EXPECT_EQ(moved.size(), 5u);
  EXPECT_EQ(file->data(), nullptr);
  EXPECT_EQ(moved.data()[4], 'o');
}

TEST(MappedFileTest, EmptyMissingAndDirectory) {
  TempDir dir;
  WriteText(dir / "empty", "");
  auto empty = MappedFile::Open(dir / "empty");
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_EQ(empty->size(), 0u);
  ExpectError(MappedFile::Open(dir / "nope").status(), StatusCode::kNotFound,
              dir / "nope" + ": No such file or directory");
  EXPECT_FALSE(MappedFile::Open(dir.path()).ok());
}

// ---- The parser on malformed images: every error is DataLoss and names what is wrong.

TEST(SafetensorsParseTest, ValidMinimalImage) {
  const std::string header =
      R"({"__metadata__": {"k": "v"}, "t": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}})";
  auto parsed = ParseSafetensorsHeader(reinterpret_cast<const uint8_t*>(Image(header, 8).data()),
                                       8 + header.size() + 8);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->data_offset, 8 + header.size());
  EXPECT_EQ(parsed->tensors.at("t").end, 8u);
  EXPECT_EQ(parsed->metadata.at("k"), "v");
}

TEST(SafetensorsParseTest, TruncatedFile) {
  ExpectError(ParseSafetensorsHeader(nullptr, 0).status(), StatusCode::kDataLoss,
              "file is 0 bytes, too short");
  ExpectError(ParseImage(std::string("\x10\x00\x00", 3)), StatusCode::kDataLoss, "file is 3 bytes");
  // Data section one byte short of the tensor's end.
  ExpectParseError(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 7,
                   "data_offsets [0, 8] lie outside the 7-byte data section");
  // Header cut off inside the JSON.
  std::string image = Image(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 0);
  image.resize(20);
  ExpectError(ParseImage(image), StatusCode::kDataLoss,
              "exceeds the 12 bytes after the length prefix");
}

TEST(SafetensorsParseTest, HeaderLengthBeyondFile) {
  std::string image = Image("{}", 0);
  const uint64_t n = 3;
  std::memcpy(image.data(), &n, 8);
  ExpectError(ParseImage(image), StatusCode::kDataLoss, "header length 3 exceeds the 2 bytes");
}

TEST(SafetensorsParseTest, AbsurdHeaderLength) {
  for (const uint64_t n : {uint64_t{1} << 62, ~uint64_t{0}, uint64_t{100 << 20} + 1}) {
    std::string image = Image("{}", 0);
    std::memcpy(image.data(), &n, 8);
    ExpectError(ParseImage(image), StatusCode::kDataLoss,
                fmt::format("header length {} exceeds", n));
  }
}

TEST(SafetensorsParseTest, NotJsonOrNotAnObject) {
  ExpectParseError("{\"t\": ", 0, "header is not valid JSON");
  ExpectParseError("\xff\xfe{}", 0, "header is not valid JSON");
  ExpectParseError("{} trailing", 0, "header is not valid JSON");
  ExpectParseError("[1, 2]", 0, "header is a JSON array, not an object");
  ExpectParseError("\"s\"", 0, "header is a JSON string, not an object");
  ExpectParseError(std::string(100, '[') + std::string(100, ']'), 0, "nests deeper than 32");
  ExpectParseError(R"({"t": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
                       "t": {"dtype": "F32", "shape": [], "data_offsets": [4, 8]}})",
                   8, "repeats the key \"t\"");
}

TEST(SafetensorsParseTest, OffsetsOutOfRange) {
  ExpectParseError(R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})", 16,
                   "tensor \"t\": data_offsets [8, 24] lie outside the 16-byte data section");
  ExpectParseError(R"({"t": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 16,
                   "data_offsets [8, 4]");
  ExpectParseError(
      R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [18446744073709551612, 18446744073709551615]}})",
      16, "lie outside");
  ExpectParseError(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 16,
                   "are not non-negative integers");
  ExpectParseError(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}})", 16,
                   "are not non-negative integers");
  ExpectParseError(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 16,
                   "data_offsets is missing or not [begin, end]");
  ExpectParseError(R"({"t": {"dtype": "F32", "shape": [1]}})", 16, "data_offsets is missing");
}

TEST(SafetensorsParseTest, OverlappingTensors) {
  ExpectParseError(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                       "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}})",
                   32, "tensors \"a\" [0, 16) and \"b\" [12, 20) overlap");
  ExpectParseError(R"({"a": {"dtype": "F16", "shape": [2], "data_offsets": [4, 8]},
                       "b": {"dtype": "F16", "shape": [2], "data_offsets": [4, 8]}})",
                   8, "overlap");
  // Adjacent, gapped and empty tensors are fine.
  const std::string ok = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                             "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
                             "c": {"dtype": "BF16", "shape": [1], "data_offsets": [14, 16]},
                             "d": {"dtype": "F32", "shape": [0, 3], "data_offsets": [4, 4]}})";
  EXPECT_TRUE(ParseImage(Image(ok, 16)).ok()) << ParseImage(Image(ok, 16)).ToString();
}

TEST(SafetensorsParseTest, ByteSpanDisagreesWithShape) {
  ExpectParseError(R"({"w": {"dtype": "BF16", "shape": [3, 2], "data_offsets": [0, 24]}})", 24,
                   "tensor \"w\": shape [3, 2] of BF16 needs 6 x 2 bytes but data_offsets [0, 24] "
                   "span 24");
  ExpectParseError(R"({"w": {"dtype": "F32", "shape": [], "data_offsets": [0, 0]}})", 24,
                   "needs 1 x 4 bytes");
}

TEST(SafetensorsParseTest, BadDtype) {
  ExpectParseError(R"({"w": {"dtype": "Q4_K", "shape": [1], "data_offsets": [0, 1]}})", 1,
                   "tensor \"w\": dtype \"Q4_K\" is unknown or unsupported");
  ExpectParseError(R"({"w": {"dtype": "float32", "shape": [1], "data_offsets": [0, 4]}})", 4,
                   "dtype \"float32\"");
  ExpectParseError(R"({"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})", 4,
                   "dtype 4 is not a string");
  ExpectParseError(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", 4, "has no dtype");
}

TEST(SafetensorsParseTest, BadShape) {
  ExpectParseError(R"({"w": {"dtype": "F32", "shape": [3, -2], "data_offsets": [0, 0]}})", 4,
                   "tensor \"w\": shape entry -2 is not a non-negative integer");
  ExpectParseError(R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 0]}})", 4,
                   "shape entry 1.5");
  ExpectParseError(R"({"w": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}})", 16,
                   "shape is missing or not an array");
  ExpectParseError(
      R"({"w": {"dtype": "F32", "shape": [1,1,1,1,1,1,1,1,1], "data_offsets": [0, 4]}})", 4,
      "rank 9 exceeds 8");
  ExpectParseError(
      R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", 4,
      "has too many elements");
  // A zero dim does not excuse an overflowing product of the others.
  ExpectParseError(
      R"({"w": {"dtype": "F32", "shape": [0, 4294967296, 4294967296], "data_offsets": [0, 0]}})", 4,
      "has too many elements");
  ExpectParseError(
      R"({"w": {"dtype": "F32", "shape": [9223372036854775808], "data_offsets": [0, 0]}})", 4,
      "shape entry 9223372036854775808");
  ExpectParseError(R"({"w": [1, 2]})", 4, "tensor \"w\": entry [1,2] is not an object");
  ExpectParseError(R"({"": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}})", 4,
                   "empty name");
}

TEST(SafetensorsParseTest, BadMetadata) {
  ExpectParseError(R"({"__metadata__": {"format": 1}})", 0, "__metadata__ \"format\" is 1");
  ExpectParseError(R"({"__metadata__": ["pt"]})", 0, "__metadata__ is a JSON array");
}

}  // namespace
}  // namespace kvshard
