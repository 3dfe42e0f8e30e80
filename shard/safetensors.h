// Safetensors files (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON describing each tensor, then the raw tensor bytes.
// A Checkpoint is a model directory's weights, in one file or in shards named by an index.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "shard/dtype.h"
#include "shard/mapped_file.h"

namespace kvshard {

// Headers larger than this are refused as corrupt rather than parsed.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t{100} << 20;
inline constexpr size_t kMaxTensorRank = 8;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data section
  int64_t numel() const;        // 1 for a scalar (empty shape)
};

struct SafetensorsHeader {
  std::map<std::string, TensorInfo> tensors;
  std::map<std::string, std::string> metadata;  // "__metadata__"
  uint64_t data_offset = 0;                     // 8 + header length
};

// Parses and validates the header of a whole file image: the length prefix, the JSON (an object,
// no duplicate keys), each tensor's dtype, shape (rank <= 8, non-negative, no overflow) and
// offsets (inside the data section, matching numel * dtype size, no two tensors overlapping),
// and "__metadata__" (an object of strings). Gaps between tensors are allowed. Never reads
// past `file + size`. Errors are DataLoss and name the tensor and the numbers.
StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* file, size_t size);

class SafetensorsFile {
 public:
  static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const SafetensorsHeader& header() const { return header_; }
  // The first byte of `info`'s data; `info` must come from this file's header.
  const uint8_t* TensorData(const TensorInfo& info) const;
  const std::string& path() const { return file_.path(); }

 private:
  SafetensorsFile(MappedFile file, SafetensorsHeader header)
      : file_(std::move(file)), header_(std::move(header)) {}

  MappedFile file_;
  SafetensorsHeader header_;
};

// A model directory's weights: `model.safetensors`, or the shards that
// `model.safetensors.index.json` ({"weight_map": {tensor: file}}) lists. Shard names must be
// plain file names inside the directory; each listed tensor must be in its shard; no tensor may
// be in two shards.
// Or, when the model is a GGUF file (GgufModelPath), that file's tensors under their Hugging
// Face names: token_embd -> model.embed_tokens, blk.N.attn_q -> model.layers.N.self_attn.q_proj,
// ... (GGUF dimensions reversed to [rows, cols]; attn_q / attn_k rows put back from llama.cpp's
// interleaved RoPE order into the rotate-half order; block formats dequantized per row). A GGUF
// checkpoint has no raw bytes to hand out (TensorBytes is FailedPrecondition): it serves the CPU
// backend.
class GgufFile;
class Checkpoint {
 public:
  static StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& model_dir);
  ~Checkpoint();

  // NotFound "tensor X is missing from <dir>" when absent.
  StatusOr<const TensorInfo*> Find(const std::string& name) const;
  bool Has(const std::string& name) const;
  // The tensor's raw bytes, in its own dtype (for device uploads that skip f32).
  StatusOr<std::span<const uint8_t>> TensorBytes(const std::string& name) const;

  // The dtype the tensor is stored in, as the engine can hold it: F32, F16 or BF16 (a GGUF
  // block-quantized tensor is F32, what it dequantizes to). NotFound when absent.
  StatusOr<DType> StoredDType(const std::string& name) const;

  // Checks the tensor's shape equals `shape` (DataLoss naming both otherwise), then copies rows
  // [row0, row1) and columns [col0, col1) of the tensor viewed as 2-D [shape[0], prod(rest)] into
  // `out` (row-major, (row1 - row0) * (col1 - col0) elements of `dtype`), converted when the
  // tensor is stored in another dtype (to f32 exactly; to f16 / bf16 rounded to nearest even).
  // A 1-D tensor [n] is viewed as [n, 1], so a bias is split by rows like its weight; a scalar is
  // [1, 1]. Reads only the bytes of the slice.
  Status ReadSlice(const std::string& name, const std::vector<int64_t>& shape, int64_t row0,
                   int64_t row1, int64_t col0, int64_t col1, DType dtype, void* out) const;
  Status ReadSliceF32(const std::string& name, const std::vector<int64_t>& shape, int64_t row0,
                      int64_t row1, int64_t col0, int64_t col1, float* out) const {
    return ReadSlice(name, shape, row0, row1, col0, col1, DType::kF32, out);
  }

  std::vector<std::string> TensorNames() const;  // sorted
  const std::string& dir() const { return dir_; }

 private:
  struct Entry {
    const SafetensorsFile* file;
    const TensorInfo* info;
  };
  explicit Checkpoint(std::string dir);
  Status AddFile(std::unique_ptr<SafetensorsFile> file);
  StatusOr<Entry> Lookup(const std::string& name) const;
  Status ReadGgufSlice(const std::string& name, const std::vector<int64_t>& shape, int64_t row0,
                       int64_t row1, int64_t col0, int64_t col1, DType dtype, void* out) const;

  std::string dir_;
  std::unique_ptr<GgufFile> gguf_;
  int64_t gguf_q_heads_ = 0, gguf_kv_heads_ = 0;  // for the Q/K row order
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> tensors_;
};

struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // numel * DTypeSize(dtype) bytes, already in `dtype`
};

// Writes a safetensors file, tensors in the given order, the header JSON padded with spaces to a
// multiple of 8 bytes as the reference implementation does. Writes `path`.tmp, then renames.
Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata);

}  // namespace kvshard
