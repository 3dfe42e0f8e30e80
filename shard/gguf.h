// GGUF files (llama.cpp's model format, versions 2 and 3): the metadata key/values, the tensor
// table and where each tensor's data lies, checked against the file's size before anything is
// read. The parser never trusts a count, a length or an offset: every one is bounded by the bytes
// left, so a truncated or hostile file gives a clear error, never a read outside it (fuzzed in
// CI, tests/fuzz/gguf_fuzz.cc).
//
// Layout: "GGUF", u32 version, u64 tensor_count, u64 kv_count; kv_count x (string key, u32 type,
// value); tensor_count x (string name, u32 n_dims, n_dims x u64 ne, u32 ggml type, u64 offset);
// padding to general.alignment (32 by default); the tensor data. Strings are u64 length + bytes.
// ne[0] is the fastest-varying dimension: a [rows, cols] matrix has ne = {cols, rows}.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "shard/mapped_file.h"

namespace kvshard {

// ggml tensor types that kvshard knows the block layout of.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kBF16 = 30,
};

struct GgmlTypeInfo {
  const char* name;
  int64_t block_elems;  // values per block
  int64_t block_bytes;  // bytes per block
  bool dequantizable;   // kvshard can widen it to f32 (kernels/cpu/dequant.h)
};

// nullopt for a type id kvshard does not know.
std::optional<GgmlTypeInfo> GgmlTypeInfoOf(uint32_t type);

// One metadata value. Arrays hold scalars or strings (nested arrays are refused).
struct GgufValue {
  enum class Kind { kUint, kInt, kFloat, kBool, kString, kArray };
  Kind kind = Kind::kUint;
  uint32_t type = 0;  // the GGUF value type id
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  // Arrays: the element type id, and the elements as strings or as numbers (ints exactly, as
  // int64; floats as double; bools as 0/1).
  uint32_t element_type = 0;
  std::vector<std::string> strings;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  uint64_t size() const { return strings.size() + ints.size() + floats.size(); }
};

struct GgufTensor {
  std::string name;
  uint32_t type = 0;
  std::vector<int64_t> ne;  // ne[0] fastest
  uint64_t offset = 0;      // from the start of the file
  uint64_t bytes = 0;
  int64_t elements() const;
};

class GgufFile {
 public:
  // Maps `path` and parses it. Errors name the file: NotFound, DataLoss (not GGUF, truncated,
  // counts or lengths beyond the file, offsets out of range or misaligned, overlapping tensors,
  // duplicate names), InvalidArgument (a version or a tensor type kvshard does not read).
  static StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses an image in memory that the caller keeps alive (tests, the fuzzer).
  static StatusOr<std::unique_ptr<GgufFile>> Parse(const uint8_t* data, size_t size,
                                                   const std::string& name);

  uint32_t version() const { return version_; }
  const std::string& name() const { return name_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }

  const GgufValue* Find(const std::string& key) const;
  const GgufTensor* Tensor(const std::string& name) const;
  // The typed value of `key`: NotFound naming the key when absent, DataLoss when of another type.
  StatusOr<std::string> String(const std::string& key) const;
  StatusOr<int64_t> Int(const std::string& key) const;   // any integer type
  StatusOr<double> Float(const std::string& key) const;  // f32 / f64 (or an integer)
  StatusOr<bool> Bool(const std::string& key) const;
  // The tensor's data (tensor must come from this file).
  const uint8_t* TensorData(const GgufTensor& tensor) const { return data_ + tensor.offset; }

 private:
  GgufFile() = default;
  Status ParseImage();

  std::optional<MappedFile> file_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string name_;
  uint32_t version_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> by_name_;
};

// The GGUF file a --model argument names: the path itself when it is a regular file ending in
// .gguf, or the one .gguf file of a directory that has no config.json; nullopt otherwise.
std::optional<std::string> GgufModelPath(const std::string& model);

}  // namespace kvshard
