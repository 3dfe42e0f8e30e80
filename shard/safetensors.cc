#include "shard/safetensors.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string_view>
#include <unordered_set>

#include "kernels/cpu/dequant.h"
#include "shard/gguf.h"
#include "shard/model_config.h"

namespace kvshard {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

// A real header nests three levels ({name: {shape: [...]}}); anything deeper is garbage, and
// bounding it keeps a hostile header from costing memory proportional to its depth.
constexpr int kMaxJsonDepth = 32;

std::string ShapeString(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// A JSON value for an error message, cut short if long.
std::string Snippet(const json& j) {
  std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 64) s = s.substr(0, 61) + "...";
  return s;
}

bool NestsTooDeep(std::string_view text) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) return true;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return false;
}

// Parses JSON text, refusing what nlohmann would accept silently: a key repeated within one
// object (later ones would override earlier ones) and absurd nesting. `what` names the text.
StatusOr<json> ParseJsonStrict(std::string_view text, const std::string& what) {
  if (NestsTooDeep(text)) {
    return DataLoss("{} nests deeper than {} levels", what, kMaxJsonDepth);
  }
  std::vector<std::unordered_set<std::string>> keys_at_depth(kMaxJsonDepth + 2);
  std::string duplicate;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    const size_t d = static_cast<size_t>(depth);
    if (d + 1 >= keys_at_depth.size()) return true;
    if (event == json::parse_event_t::object_start) {
      keys_at_depth[d + 1].clear();
    } else if (event == json::parse_event_t::key && parsed.is_string()) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!keys_at_depth[d].insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json j = json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/false);
  if (j.is_discarded()) return DataLoss("{} is not valid JSON", what);
  if (!duplicate.empty()) return DataLoss("{} repeats the key \"{}\"", what, duplicate);
  return j;
}

std::optional<uint64_t> AsU64(const json& j) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  if (j.is_number_integer() && j.get<int64_t>() >= 0)
    return static_cast<uint64_t>(j.get<int64_t>());
  return std::nullopt;
}

StatusOr<DType> ParseFileDType(const std::string& name, const json& entry) {
  const auto it = entry.find("dtype");
  if (it == entry.end()) return DataLoss("tensor \"{}\" has no dtype", name);
  if (!it->is_string())
    return DataLoss("tensor \"{}\": dtype {} is not a string", name, Snippet(*it));
  const auto& s = it->get_ref<const std::string&>();
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  return DataLoss(
      "tensor \"{}\": dtype \"{}\" is unknown or unsupported (expected F32, F16 or BF16)", name, s);
}

StatusOr<TensorInfo> ParseTensorEntry(const std::string& name, const json& entry,
                                      uint64_t data_size) {
  if (name.empty()) return DataLoss("a tensor has an empty name");
  if (!entry.is_object()) {
    return DataLoss("tensor \"{}\": entry {} is not an object", name, Snippet(entry));
  }
  TensorInfo info;
  info.name = name;
  KVS_ASSIGN_OR_RETURN(info.dtype, ParseFileDType(name, entry));

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return DataLoss("tensor \"{}\": shape is missing or not an array", name);
  }
  if (shape_it->size() > kMaxTensorRank) {
    return DataLoss("tensor \"{}\": rank {} exceeds {}", name, shape_it->size(), kMaxTensorRank);
  }
  // Products of the non-zero dims must fit in int64, so that any sub-product (such as the row
  // length of a 2-D view) is safe to compute even when another dim is zero.
  uint64_t numel = 1, nonzero_product = 1;
  constexpr uint64_t kI64Max = std::numeric_limits<int64_t>::max();
  for (const json& dim_json : *shape_it) {
    const std::optional<uint64_t> dim = AsU64(dim_json);
    if (!dim || *dim > kI64Max) {
      return DataLoss("tensor \"{}\": shape entry {} is not a non-negative integer", name,
                      Snippet(dim_json));
    }
    if (*dim != 0 && (__builtin_mul_overflow(nonzero_product, *dim, &nonzero_product) ||
                      nonzero_product > kI64Max)) {
      return DataLoss("tensor \"{}\": shape {} has too many elements", name, Snippet(*shape_it));
    }
    info.shape.push_back(static_cast<int64_t>(*dim));
    numel *= *dim;
  }

  const auto off_it = entry.find("data_offsets");
  if (off_it == entry.end() || !off_it->is_array() || off_it->size() != 2) {
    return DataLoss("tensor \"{}\": data_offsets is missing or not [begin, end]", name);
  }
  const std::optional<uint64_t> begin = AsU64((*off_it)[0]), end = AsU64((*off_it)[1]);
  if (!begin || !end) {
    return DataLoss("tensor \"{}\": data_offsets {} are not non-negative integers", name,
                    Snippet(*off_it));
  }
  if (*begin > *end || *end > data_size) {
    return DataLoss("tensor \"{}\": data_offsets [{}, {}] lie outside the {}-byte data section",
                    name, *begin, *end, data_size);
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(numel, DTypeSize(info.dtype), &bytes) || bytes != *end - *begin) {
    return DataLoss(
        "tensor \"{}\": shape {} of {} needs {} x {} bytes but data_offsets [{}, {}] span {}", name,
        ShapeString(info.shape), DTypeName(info.dtype), numel, DTypeSize(info.dtype), *begin, *end,
        *end - *begin);
  }
  info.begin = *begin;
  info.end = *end;
  return info;
}

Status CheckNoOverlap(const std::map<std::string, TensorInfo>& tensors) {
  std::vector<const TensorInfo*> spans;
  for (const auto& [name, info] : tensors) {
    if (info.end > info.begin) spans.push_back(&info);
  }
  std::sort(spans.begin(), spans.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < spans.size(); ++i) {
    const TensorInfo& prev = *spans[i - 1];
    const TensorInfo& cur = *spans[i];
    if (cur.begin < prev.end) {
      return DataLoss("tensors \"{}\" [{}, {}) and \"{}\" [{}, {}) overlap", prev.name, prev.begin,
                      prev.end, cur.name, cur.begin, cur.end);
    }
  }
  return Status::Ok();
}

StatusOr<SafetensorsHeader> ParseHeaderUnguarded(const uint8_t* file, size_t size) {
  if (size < 8) {
    return DataLoss("file is {} bytes, too short for the 8-byte header length", size);
  }
  uint64_t n = 0;
  std::memcpy(&n, file, 8);
  if (n > kMaxSafetensorsHeaderBytes) {
    return DataLoss("header length {} exceeds the {}-byte limit", n, kMaxSafetensorsHeaderBytes);
  }
  if (n > size - 8) {
    return DataLoss("header length {} exceeds the {} bytes after the length prefix", n, size - 8);
  }
  SafetensorsHeader header;
  header.data_offset = 8 + n;
  const uint64_t data_size = size - header.data_offset;
  const std::string_view text(reinterpret_cast<const char*>(file + 8), n);
  KVS_ASSIGN_OR_RETURN(json root, ParseJsonStrict(text, "header"));
  if (!root.is_object()) return DataLoss("header is a JSON {}, not an object", root.type_name());

  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) {
        return DataLoss("__metadata__ is a JSON {}, not an object", value.type_name());
      }
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) {
          return DataLoss("__metadata__ \"{}\" is {}, not a string", mkey, Snippet(mvalue));
        }
        header.metadata[mkey] = mvalue.get<std::string>();
      }
      continue;
    }
    KVS_ASSIGN_OR_RETURN(TensorInfo info, ParseTensorEntry(key, value, data_size));
    header.tensors.emplace(key, std::move(info));
  }
  KVS_RETURN_IF_ERROR(CheckNoOverlap(header.tensors));
  return header;
}

bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name.find("..") == std::string::npos &&
         name.find('\0') == std::string::npos;
}

// The shard file name for each tensor, from model.safetensors.index.json.
StatusOr<std::map<std::string, std::string>> ReadWeightMap(const std::string& index_path) {
  KVS_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(index_path));
  const std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
  auto root = ParseJsonStrict(text, index_path);
  if (!root.ok()) return root.status();
  const auto it = root->is_object() ? root->find("weight_map") : root->end();
  if (!root->is_object() || it == root->end() || !it->is_object()) {
    return DataLoss("{} has no \"weight_map\" object", index_path);
  }
  if (it->empty()) return DataLoss("{}: weight_map is empty", index_path);
  std::map<std::string, std::string> weight_map;
  for (const auto& [tensor, shard] : it->items()) {
    if (!shard.is_string()) {
      return DataLoss("{}: weight_map[\"{}\"] is {}, not a file name", index_path, tensor,
                      Snippet(shard));
    }
    const auto& name = shard.get_ref<const std::string&>();
    if (!IsPlainFileName(name)) {
      return DataLoss("{}: weight_map[\"{}\"] = \"{}\" is not a plain file name in the directory",
                      index_path, tensor, name);
    }
    weight_map[tensor] = name;
  }
  return weight_map;
}

Status WriteAll(std::FILE* f, const void* data, size_t bytes, const std::string& path) {
  if (bytes > 0 && std::fwrite(data, 1, bytes, f) != bytes) {
    return DataLoss("cannot write {}: {}", path, std::strerror(errno));
  }
  return Status::Ok();
}

Status WriteSafetensorsUnguarded(const std::string& path, const std::vector<TensorToWrite>& tensors,
                                 const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") {
      return InvalidArgument("cannot write {}: bad tensor name \"{}\"", path, t.name);
    }
    if (header.contains(t.name)) {
      return InvalidArgument("cannot write {}: tensor \"{}\" given twice", path, t.name);
    }
    if (t.shape.size() > kMaxTensorRank) {
      return InvalidArgument("cannot write {}: tensor \"{}\" has rank {} > {}", path, t.name,
                             t.shape.size(), kMaxTensorRank);
    }
    uint64_t bytes = DTypeSize(t.dtype);
    for (const int64_t dim : t.shape) {
      if (dim < 0 || __builtin_mul_overflow(bytes, static_cast<uint64_t>(dim), &bytes)) {
        return InvalidArgument("cannot write {}: tensor \"{}\" has bad shape {}", path, t.name,
                               ShapeString(t.shape));
      }
    }
    if (bytes > 0 && t.data == nullptr) {
      return InvalidArgument("cannot write {}: tensor \"{}\" has no data", path, t.name);
    }
    header[t.name] = {{"dtype", DTypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", json::array({offset, offset + bytes})}};
    sizes.push_back(bytes);
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t n = text.size();

  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return DataLoss("cannot create {}: {}", tmp, std::strerror(errno));
  Status status = WriteAll(f, &n, 8, tmp);
  if (status.ok()) status = WriteAll(f, text.data(), text.size(), tmp);
  for (size_t i = 0; i < tensors.size() && status.ok(); ++i) {
    status = WriteAll(f, tensors[i].data, sizes[i], tmp);
  }
  if (std::fclose(f) != 0 && status.ok()) {
    status = DataLoss("cannot write {}: {}", tmp, std::strerror(errno));
  }
  if (status.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    status = DataLoss("cannot rename {} to {}: {}", tmp, path, std::strerror(errno));
  }
  if (!status.ok()) std::remove(tmp.c_str());
  return status;
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (const int64_t dim : shape) n *= dim;
  return n;
}

StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* file, size_t size) {
  try {
    return ParseHeaderUnguarded(file, size);
  } catch (const std::exception& e) {
    return DataLoss("cannot parse safetensors header: {}", e.what());
  }
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  KVS_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  auto header = ParseSafetensorsHeader(file.data(), file.size());
  if (!header.ok()) return header.status().WithContext(path);
  return std::unique_ptr<SafetensorsFile>(
      new SafetensorsFile(std::move(file), std::move(header).value()));
}

const uint8_t* SafetensorsFile::TensorData(const TensorInfo& info) const {
  return file_.data() + header_.data_offset + info.begin;
}

namespace {

// The GGUF name of a Hugging Face Llama tensor name, or "" when it has none.
std::string GgufTensorName(const std::string& hf) {
  static const std::pair<const char*, const char*> kWhole[] = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"}};
  for (const auto& [from, to] : kWhole) {
    if (hf == from) return to;
  }
  static const std::pair<const char*, const char*> kLayer[] = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"}};
  const std::string prefix = "model.layers.";
  if (hf.compare(0, prefix.size(), prefix) != 0) return "";
  const size_t dot = hf.find('.', prefix.size());
  if (dot == std::string::npos) return "";
  const std::string layer = hf.substr(prefix.size(), dot - prefix.size());
  const std::string rest = hf.substr(dot + 1);
  for (const auto& [from, to] : kLayer) {
    if (rest == from) return "blk." + layer + "." + to;
  }
  return "";
}

}  // namespace

Checkpoint::Checkpoint(std::string dir) : dir_(std::move(dir)) {}
Checkpoint::~Checkpoint() = default;

StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& model_dir) {
  if (std::optional<std::string> gguf = GgufModelPath(model_dir)) {
    std::unique_ptr<Checkpoint> ckpt(new Checkpoint(*gguf));
    KVS_ASSIGN_OR_RETURN(ckpt->gguf_, GgufFile::Open(*gguf));
    KVS_ASSIGN_OR_RETURN(const ModelConfig c, ModelConfigFromGguf(*ckpt->gguf_));
    ckpt->gguf_q_heads_ = c.n_heads;
    ckpt->gguf_kv_heads_ = c.n_kv_heads;
    return ckpt;
  }
  try {
    std::error_code ec;
    const fs::path dir(model_dir);
    if (!fs::is_directory(dir, ec)) {
      return NotFound("model directory {} does not exist or is not a directory", model_dir);
    }
    std::unique_ptr<Checkpoint> ckpt(new Checkpoint(model_dir));
    const fs::path index_path = dir / "model.safetensors.index.json";
    const fs::path single_path = dir / "model.safetensors";
    if (fs::exists(index_path, ec)) {
      KVS_ASSIGN_OR_RETURN(auto weight_map, ReadWeightMap(index_path.string()));
      std::set<std::string> shards;
      for (const auto& [tensor, shard] : weight_map) shards.insert(shard);
      for (const std::string& shard : shards) {
        KVS_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open((dir / shard).string()));
        KVS_RETURN_IF_ERROR(ckpt->AddFile(std::move(file)));
      }
      for (const auto& [tensor, shard] : weight_map) {
        const auto it = ckpt->tensors_.find(tensor);
        const std::string listed = (dir / shard).string();
        if (it == ckpt->tensors_.end()) {
          return DataLoss("{} lists tensor \"{}\" in {}, which does not contain it",
                          index_path.string(), tensor, listed);
        }
        if (it->second.file->path() != listed) {
          return DataLoss("{} lists tensor \"{}\" in {}, but it is in {}", index_path.string(),
                          tensor, listed, it->second.file->path());
        }
      }
    } else if (fs::exists(single_path, ec)) {
      KVS_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single_path.string()));
      KVS_RETURN_IF_ERROR(ckpt->AddFile(std::move(file)));
    } else {
      return NotFound("no model.safetensors or model.safetensors.index.json in {}", model_dir);
    }
    return ckpt;
  } catch (const std::exception& e) {
    return Internal("cannot open checkpoint {}: {}", model_dir, e.what());
  }
}

Status Checkpoint::AddFile(std::unique_ptr<SafetensorsFile> file) {
  for (const auto& [name, info] : file->header().tensors) {
    const auto [it, inserted] = tensors_.emplace(name, Entry{file.get(), &info});
    if (!inserted) {
      return DataLoss("tensor \"{}\" appears in both {} and {}", name, it->second.file->path(),
                      file->path());
    }
  }
  files_.push_back(std::move(file));
  return Status::Ok();
}

StatusOr<Checkpoint::Entry> Checkpoint::Lookup(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) return NotFound("tensor {} is missing from {}", name, dir_);
  return it->second;
}

StatusOr<const TensorInfo*> Checkpoint::Find(const std::string& name) const {
  KVS_ASSIGN_OR_RETURN(Entry entry, Lookup(name));
  return entry.info;
}

bool Checkpoint::Has(const std::string& name) const {
  if (gguf_) return gguf_->Tensor(GgufTensorName(name)) != nullptr;
  return tensors_.count(name) > 0;
}

StatusOr<std::span<const uint8_t>> Checkpoint::TensorBytes(const std::string& name) const {
  if (gguf_) {
    return FailedPrecondition(
        "{}: GGUF models run on the CPU backend (--device cpu); the CUDA backend reads "
        "safetensors",
        dir_);
  }
  KVS_ASSIGN_OR_RETURN(Entry entry, Lookup(name));
  return std::span<const uint8_t>(entry.file->TensorData(*entry.info),
                                  entry.info->end - entry.info->begin);
}

StatusOr<DType> Checkpoint::StoredDType(const std::string& name) const {
  if (gguf_) {
    const std::string gname = GgufTensorName(name);
    const GgufTensor* t = gname.empty() ? nullptr : gguf_->Tensor(gname);
    if (t == nullptr) return NotFound("tensor {} is missing from {}", name, dir_);
    if (t->type == static_cast<uint32_t>(GgmlType::kF16)) return DType::kF16;
    if (t->type == static_cast<uint32_t>(GgmlType::kBF16)) return DType::kBF16;
    return DType::kF32;
  }
  KVS_ASSIGN_OR_RETURN(Entry entry, Lookup(name));
  return entry.info->dtype;
}

Status Checkpoint::ReadSlice(const std::string& name, const std::vector<int64_t>& shape,
                             int64_t row0, int64_t row1, int64_t col0, int64_t col1, DType dtype,
                             void* out) const {
  if (gguf_) return ReadGgufSlice(name, shape, row0, row1, col0, col1, dtype, out);
  KVS_ASSIGN_OR_RETURN(Entry entry, Lookup(name));
  const TensorInfo& info = *entry.info;
  if (info.shape != shape) {
    return DataLoss("tensor {} in {}: expected shape {}, found {}", name, entry.file->path(),
                    ShapeString(shape), ShapeString(info.shape));
  }
  const int64_t rows = shape.empty() ? 1 : shape[0];
  int64_t cols = 1;
  for (size_t i = 1; i < shape.size(); ++i) cols *= shape[i];
  if (row0 < 0 || row0 > row1 || row1 > rows || col0 < 0 || col0 > col1 || col1 > cols) {
    return OutOfRange("tensor {}: rows [{}, {}) and columns [{}, {}) are outside its [{}, {}] view",
                      name, row0, row1, col0, col1, rows, cols);
  }
  const size_t esize = DTypeSize(info.dtype), osize = DTypeSize(dtype);
  const uint8_t* base = entry.file->TensorData(info);
  const int64_t width = col1 - col0;
  auto* dst = static_cast<uint8_t*>(out);
  std::vector<float> row(dtype == info.dtype || dtype == DType::kF32 ? 0 : width);
  for (int64_t r = row0; r < row1; ++r) {
    const uint8_t* src = base + static_cast<size_t>(r * cols + col0) * esize;
    uint8_t* o = dst + static_cast<size_t>((r - row0) * width) * osize;
    if (dtype == info.dtype) {
      std::memcpy(o, src, static_cast<size_t>(width) * esize);
    } else if (dtype == DType::kF32) {
      ConvertToF32(info.dtype, src, reinterpret_cast<float*>(o), static_cast<size_t>(width));
    } else {
      ConvertToF32(info.dtype, src, row.data(), static_cast<size_t>(width));
      ConvertFromF32(dtype, row.data(), o, static_cast<size_t>(width));
    }
  }
  return Status::Ok();
}

Status Checkpoint::ReadGgufSlice(const std::string& name, const std::vector<int64_t>& shape,
                                 int64_t row0, int64_t row1, int64_t col0, int64_t col1,
                                 DType dtype, void* out) const {
  const std::string gname = GgufTensorName(name);
  const GgufTensor* t = gname.empty() ? nullptr : gguf_->Tensor(gname);
  if (t == nullptr) {
    return NotFound("tensor {} ({} in GGUF) is missing from {}", name,
                    gname.empty() ? "no name" : gname, dir_);
  }
  std::vector<int64_t> hf_shape(t->ne.rbegin(), t->ne.rend());
  if (hf_shape != shape) {
    return DataLoss("tensor {} in {}: expected shape {}, found {} (GGUF ne reversed)", gname, dir_,
                    ShapeString(shape), ShapeString(hf_shape));
  }
  const std::optional<GgmlTypeInfo> type = GgmlTypeInfoOf(t->type);
  if (!type || !type->dequantizable) {
    return InvalidArgument(
        "tensor {} in {} has type {}, which kvshard does not read (F32, F16, BF16, Q8_0, Q4_0, "
        "Q4_1, Q4_K, Q6_K)",
        gname, dir_, type ? type->name : "unknown");
  }
  if (shape.size() == 1) {  // [n] viewed as [n, 1], as for safetensors: one GGUF row of n
    const int64_t n = shape[0];
    if (row0 < 0 || row0 > row1 || row1 > n || col0 != 0 || col1 != 1) {
      return OutOfRange("tensor {}: rows [{}, {}) outside its {} values", name, row0, row1, n);
    }
    std::vector<float> all(n);
    dequantize_row(t->type, gguf_->TensorData(*t), all.data(), n);
    ConvertFromF32(dtype, all.data() + row0, out, static_cast<size_t>(row1 - row0));
    return Status::Ok();
  }
  if (shape.size() != 2)
    return DataLoss("tensor {}: {} dimensions, 1 or 2 are read", gname, shape.size());
  const int64_t rows = shape[0], cols = shape[1];
  if (row0 < 0 || row0 > row1 || row1 > rows || col0 < 0 || col0 > col1 || col1 > cols) {
    return OutOfRange("tensor {}: rows [{}, {}) and columns [{}, {}) are outside its [{}, {}] view",
                      name, row0, row1, col0, col1, rows, cols);
  }
  // llama.cpp stores Q and K rows of each head as interleaved RoPE pairs (2i, 2i + 1); kvshard's
  // rotate-half order has them at i and i + head_dim / 2.
  int64_t heads = 0;
  if (gname.ends_with(".attn_q.weight")) heads = gguf_q_heads_;
  if (gname.ends_with(".attn_k.weight")) heads = gguf_kv_heads_;
  const int64_t head_dim = heads > 0 ? rows / heads : 0;
  const int64_t row_bytes = cols / type->block_elems * type->block_bytes;
  std::vector<float> row(cols);
  for (int64_t r = row0; r < row1; ++r) {
    int64_t src = r;
    if (heads > 0) {
      const int64_t h = r / head_dim, within = r % head_dim, half = head_dim / 2;
      src = h * head_dim + 2 * (within % half) + within / half;
    }
    dequantize_row(t->type, gguf_->TensorData(*t) + src * row_bytes, row.data(), cols);
    ConvertFromF32(dtype, row.data() + col0,
                   static_cast<uint8_t*>(out) + (r - row0) * (col1 - col0) * DTypeSize(dtype),
                   static_cast<size_t>(col1 - col0));
  }
  return Status::Ok();
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, entry] : tensors_) names.push_back(name);
  return names;
}

Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  try {
    return WriteSafetensorsUnguarded(path, tensors, metadata);
  } catch (const std::exception& e) {
    return InvalidArgument("cannot write {}: {}", path, e.what());
  }
}

}  // namespace kvshard
