#include "shard/gguf.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>

namespace kvshard {
namespace {

static_assert(std::endian::native == std::endian::little, "GGUF is read as little-endian");

constexpr uint64_t kMaxCount = uint64_t{1} << 24;        // tensors, keys, array elements
constexpr uint64_t kMaxStringBytes = uint64_t{1} << 26;  // 64 MiB (a chat template is KBs)
constexpr uint32_t kMaxDims = 4;

enum ValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// Bytes of a scalar of `type`, 0 for strings, arrays and unknown ids.
size_t ScalarBytes(uint32_t type) {
  switch (type) {
    case kU8:
    case kI8:
    case kBool: return 1;
    case kU16:
    case kI16: return 2;
    case kU32:
    case kI32:
    case kF32: return 4;
    case kU64:
    case kI64:
    case kF64: return 8;
    default: return 0;
  }
}

// A cursor over the image that refuses to run past its end.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const std::string& name)
      : data_(data), size_(size), name_(name) {}
  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }

  template <typename T>
  Status Read(T* out, const char* what) {
    if (left() < sizeof(T)) {
      return DataLoss("{}: truncated at byte {} reading {} ({} bytes left)", name_, pos_, what,
                      left());
    }
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::Ok();
  }

  Status ReadString(std::string* out, const char* what) {
    uint64_t n = 0;
    KVS_RETURN_IF_ERROR(Read(&n, what));
    if (n > kMaxStringBytes || n > left()) {
      return DataLoss("{}: {} at byte {} claims {} bytes, {} are left", name_, what, pos_ - 8, n,
                      left());
    }
    out->assign(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return Status::Ok();
  }

  Status ReadScalar(uint32_t type, GgufValue* v, const char* what) {
    v->type = type;
    switch (type) {
      case kU8: return ReadAs<uint8_t>(&v->u, v, GgufValue::Kind::kUint, what);
      case kU16: return ReadAs<uint16_t>(&v->u, v, GgufValue::Kind::kUint, what);
      case kU32: return ReadAs<uint32_t>(&v->u, v, GgufValue::Kind::kUint, what);
      case kU64: return ReadAs<uint64_t>(&v->u, v, GgufValue::Kind::kUint, what);
      case kI8: return ReadAs<int8_t>(&v->i, v, GgufValue::Kind::kInt, what);
      case kI16: return ReadAs<int16_t>(&v->i, v, GgufValue::Kind::kInt, what);
      case kI32: return ReadAs<int32_t>(&v->i, v, GgufValue::Kind::kInt, what);
      case kI64: return ReadAs<int64_t>(&v->i, v, GgufValue::Kind::kInt, what);
      case kF32: return ReadAs<float>(&v->f, v, GgufValue::Kind::kFloat, what);
      case kF64: return ReadAs<double>(&v->f, v, GgufValue::Kind::kFloat, what);
      case kBool: {
        uint8_t b = 0;
        KVS_RETURN_IF_ERROR(Read(&b, what));
        if (b > 1) return DataLoss("{}: {} is a bool of value {}", name_, what, b);
        v->kind = GgufValue::Kind::kBool;
        v->b = b != 0;
        return Status::Ok();
      }
      case kString: v->kind = GgufValue::Kind::kString; return ReadString(&v->s, what);
      default: return DataLoss("{}: {} has unknown value type {}", name_, what, type);
    }
  }

 private:
  template <typename T, typename U>
  Status ReadAs(U* out, GgufValue* v, GgufValue::Kind kind, const char* what) {
    T x{};
    KVS_RETURN_IF_ERROR(Read(&x, what));
    *out = static_cast<U>(x);
    v->kind = kind;
    return Status::Ok();
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& name_;
};

Status ReadValue(Reader& r, const std::string& name, const std::string& key, GgufValue* v) {
  uint32_t type = 0;
  KVS_RETURN_IF_ERROR(r.Read(&type, "a value type"));
  if (type != kArray) return r.ReadScalar(type, v, "a metadata value");
  v->type = kArray;
  v->kind = GgufValue::Kind::kArray;
  uint32_t et = 0;
  uint64_t n = 0;
  KVS_RETURN_IF_ERROR(r.Read(&et, "an array type"));
  KVS_RETURN_IF_ERROR(r.Read(&n, "an array length"));
  v->element_type = et;
  if (et == kArray) return DataLoss("{}: {} is an array of arrays (not read)", name, key);
  const size_t scalar = ScalarBytes(et);
  if (et != kString && scalar == 0) {
    return DataLoss("{}: {} is an array of unknown type {}", name, key, et);
  }
  // Every string needs at least its 8-byte length; every scalar its bytes.
  const uint64_t min_bytes = et == kString ? 8 : scalar;
  if (n > kMaxCount || n > r.left() / min_bytes) {
    return DataLoss("{}: {} claims {} elements, more than the {} bytes left hold", name, key, n,
                    r.left());
  }
  for (uint64_t k = 0; k < n; ++k) {
    GgufValue e;
    KVS_RETURN_IF_ERROR(r.ReadScalar(et, &e, "an array element"));
    switch (e.kind) {
      case GgufValue::Kind::kString: v->strings.push_back(std::move(e.s)); break;
      case GgufValue::Kind::kUint: v->ints.push_back(static_cast<int64_t>(e.u)); break;
      case GgufValue::Kind::kInt: v->ints.push_back(e.i); break;
      case GgufValue::Kind::kBool: v->ints.push_back(e.b ? 1 : 0); break;
      case GgufValue::Kind::kFloat: v->floats.push_back(e.f); break;
      case GgufValue::Kind::kArray: break;
    }
  }
  return Status::Ok();
}

}  // namespace

std::optional<GgmlTypeInfo> GgmlTypeInfoOf(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32: return GgmlTypeInfo{"F32", 1, 4, true};
    case GgmlType::kF16: return GgmlTypeInfo{"F16", 1, 2, true};
    case GgmlType::kBF16: return GgmlTypeInfo{"BF16", 1, 2, true};
    case GgmlType::kQ4_0: return GgmlTypeInfo{"Q4_0", 32, 18, true};
    case GgmlType::kQ4_1: return GgmlTypeInfo{"Q4_1", 32, 20, true};
    case GgmlType::kQ5_0: return GgmlTypeInfo{"Q5_0", 32, 22, false};
    case GgmlType::kQ5_1: return GgmlTypeInfo{"Q5_1", 32, 24, false};
    case GgmlType::kQ8_0: return GgmlTypeInfo{"Q8_0", 32, 34, true};
    case GgmlType::kQ8_1: return GgmlTypeInfo{"Q8_1", 32, 36, false};
    case GgmlType::kQ2_K: return GgmlTypeInfo{"Q2_K", 256, 84, false};
    case GgmlType::kQ3_K: return GgmlTypeInfo{"Q3_K", 256, 110, false};
    case GgmlType::kQ4_K: return GgmlTypeInfo{"Q4_K", 256, 144, true};
    case GgmlType::kQ5_K: return GgmlTypeInfo{"Q5_K", 256, 176, false};
    case GgmlType::kQ6_K: return GgmlTypeInfo{"Q6_K", 256, 210, true};
    case GgmlType::kQ8_K: return GgmlTypeInfo{"Q8_K", 256, 292, false};
  }
  return std::nullopt;
}

int64_t GgufTensor::elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  KVS_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::Open(path));
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->file_.emplace(std::move(mapped));
  f->data_ = f->file_->data();
  f->size_ = f->file_->size();
  f->name_ = path;
  KVS_RETURN_IF_ERROR(f->ParseImage());
  return f;
}

StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(const uint8_t* data, size_t size,
                                                    const std::string& name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->data_ = data;
  f->size_ = size;
  f->name_ = name;
  KVS_RETURN_IF_ERROR(f->ParseImage());
  return f;
}

Status GgufFile::ParseImage() {
  Reader r(data_, size_, name_);
  uint32_t magic = 0;
  KVS_RETURN_IF_ERROR(r.Read(&magic, "the magic"));
  if (std::memcmp(&magic, "GGUF", 4) != 0) return DataLoss("{}: not a GGUF file (no magic)", name_);
  KVS_RETURN_IF_ERROR(r.Read(&version_, "the version"));
  if (version_ != 2 && version_ != 3) {
    return InvalidArgument("{}: GGUF version {}; versions 2 and 3 are read", name_, version_);
  }
  uint64_t n_tensors = 0, n_kv = 0;
  KVS_RETURN_IF_ERROR(r.Read(&n_tensors, "the tensor count"));
  KVS_RETURN_IF_ERROR(r.Read(&n_kv, "the key count"));
  // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor entry 8 + 4 + 4 + 8.
  if (n_kv > kMaxCount || n_kv > r.left() / 13) {
    return DataLoss("{}: {} metadata keys cannot fit in {} bytes", name_, n_kv, r.left());
  }
  if (n_tensors > kMaxCount || n_tensors > r.left() / 24) {
    return DataLoss("{}: {} tensors cannot fit in {} bytes", name_, n_tensors, r.left());
  }
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key;
    KVS_RETURN_IF_ERROR(r.ReadString(&key, "a metadata key"));
    GgufValue v;
    KVS_RETURN_IF_ERROR(ReadValue(r, name_, key, &v));
    if (!metadata_.emplace(key, std::move(v)).second) {
      return DataLoss("{}: metadata key {} appears twice", name_, key);
    }
  }
  uint64_t alignment = 32;
  if (const GgufValue* a = Find("general.alignment")) {
    if (a->kind != GgufValue::Kind::kUint || a->u == 0 || (a->u & (a->u - 1)) != 0 ||
        a->u > 65536) {
      return DataLoss("{}: general.alignment must be a power of two up to 65536", name_);
    }
    alignment = a->u;
  }
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    KVS_RETURN_IF_ERROR(r.ReadString(&t.name, "a tensor name"));
    uint32_t dims = 0;
    KVS_RETURN_IF_ERROR(r.Read(&dims, "a tensor's dimension count"));
    if (dims == 0 || dims > kMaxDims) {
      return DataLoss("{}: tensor {} has {} dimensions (1 to {} are read)", name_, t.name, dims,
                      kMaxDims);
    }
    uint64_t elements = 1;
    for (uint32_t d = 0; d < dims; ++d) {
      uint64_t ne = 0;
      KVS_RETURN_IF_ERROR(r.Read(&ne, "a tensor dimension"));
      if (ne == 0 || ne > (uint64_t{1} << 40) || elements > (uint64_t{1} << 40) / ne) {
        return DataLoss("{}: tensor {} has dimension {} of {} elements", name_, t.name, d, ne);
      }
      elements *= ne;
      t.ne.push_back(static_cast<int64_t>(ne));
    }
    KVS_RETURN_IF_ERROR(r.Read(&t.type, "a tensor type"));
    const std::optional<GgmlTypeInfo> info = GgmlTypeInfoOf(t.type);
    if (!info) return InvalidArgument("{}: tensor {} has unknown type {}", name_, t.name, t.type);
    if (t.ne[0] % info->block_elems != 0) {
      return DataLoss("{}: tensor {} rows of {} values are not whole {} blocks of {}", name_,
                      t.name, t.ne[0], info->name, info->block_elems);
    }
    t.bytes = elements / info->block_elems * info->block_bytes;
    KVS_RETURN_IF_ERROR(r.Read(&t.offset, "a tensor offset"));
    if (t.offset % alignment != 0) {
      return DataLoss("{}: tensor {} offset {} is not a multiple of the alignment {}", name_,
                      t.name, t.offset, alignment);
    }
    if (!by_name_.emplace(t.name, tensors_.size()).second) {
      return DataLoss("{}: tensor {} appears twice", name_, t.name);
    }
    tensors_.push_back(std::move(t));
  }
  const uint64_t data_start = (r.pos() + alignment - 1) / alignment * alignment;
  if (data_start > size_ && !tensors_.empty()) {
    return DataLoss("{}: truncated before the tensor data", name_);
  }
  // Tensor data within the file and not overlapping.
  std::vector<std::pair<uint64_t, size_t>> order;
  for (size_t k = 0; k < tensors_.size(); ++k) {
    GgufTensor& t = tensors_[k];
    if (t.offset > size_ - data_start || t.bytes > size_ - data_start - t.offset) {
      return DataLoss(
          "{}: tensor {} ({} bytes at data offset {}) runs past the end of the file "
          "({} bytes of data)",
          name_, t.name, t.bytes, t.offset, size_ - data_start);
    }
    t.offset += data_start;
    order.emplace_back(t.offset, k);
  }
  std::sort(order.begin(), order.end());
  for (size_t k = 1; k < order.size(); ++k) {
    const GgufTensor& prev = tensors_[order[k - 1].second];
    if (prev.offset + prev.bytes > order[k].first) {
      return DataLoss("{}: tensors {} and {} overlap", name_, prev.name,
                      tensors_[order[k].second].name);
    }
  }
  return Status::Ok();
}

std::optional<std::string> GgufModelPath(const std::string& model) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_regular_file(model, ec)) {
    if (model.size() > 5 && model.compare(model.size() - 5, 5, ".gguf") == 0) return model;
    return std::nullopt;
  }
  if (!fs::is_directory(model, ec) || fs::exists(fs::path(model) / "config.json", ec)) {
    return std::nullopt;
  }
  std::optional<std::string> found;
  for (const auto& e : fs::directory_iterator(model, ec)) {
    if (e.path().extension() == ".gguf" && e.is_regular_file(ec)) {
      if (found) return std::nullopt;  // two: ambiguous, let the caller say what is missing
      found = e.path().string();
    }
  }
  return found;
}

const GgufValue* GgufFile::Find(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

const GgufTensor* GgufFile::Tensor(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

StatusOr<std::string> GgufFile::String(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound("{}: no metadata key {}", name_, key);
  if (v->kind != GgufValue::Kind::kString) return DataLoss("{}: {} is not a string", name_, key);
  return v->s;
}

StatusOr<int64_t> GgufFile::Int(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound("{}: no metadata key {}", name_, key);
  if (v->kind == GgufValue::Kind::kInt) return v->i;
  if (v->kind == GgufValue::Kind::kUint && v->u <= static_cast<uint64_t>(INT64_MAX)) {
    return static_cast<int64_t>(v->u);
  }
  return DataLoss("{}: {} is not an integer", name_, key);
}

StatusOr<double> GgufFile::Float(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound("{}: no metadata key {}", name_, key);
  if (v->kind == GgufValue::Kind::kFloat) return v->f;
  if (v->kind == GgufValue::Kind::kInt) return static_cast<double>(v->i);
  if (v->kind == GgufValue::Kind::kUint) return static_cast<double>(v->u);
  return DataLoss("{}: {} is not a number", name_, key);
}

StatusOr<bool> GgufFile::Bool(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFound("{}: no metadata key {}", name_, key);
  if (v->kind != GgufValue::Kind::kBool) return DataLoss("{}: {} is not a bool", name_, key);
  return v->b;
}

}  // namespace kvshard
