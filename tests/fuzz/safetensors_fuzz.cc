// Randomised fuzz of ParseSafetensorsHeader: mutates valid safetensors images (bit flips, byte
// changes, truncation, interesting numbers in the JSON and the length prefix, random JSON
// structures) and checks that every accepted header keeps its promises. Built with ASan/UBSan,
// so any read outside the image or undefined behaviour also stops it.
//
// Usage: safetensors_fuzz [seconds = 10] [seed = time] [max_iterations = 5000000]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "shard/dtype.h"
#include "shard/safetensors.h"
#include "tests/fuzz/fuzz_args.h"

namespace kvshard {
namespace {

using json = nlohmann::json;
using Image = std::string;  // the whole file

const char* const kInterestingNumbers[] = {"0",
                                           "1",
                                           "-1",
                                           "2",
                                           "7",
                                           "8",
                                           "255",
                                           "4096",
                                           "65536",
                                           "2147483647",
                                           "2147483648",
                                           "4294967295",
                                           "4294967296",
                                           "9223372036854775807",
                                           "9223372036854775808",
                                           "-9223372036854775808",
                                           "18446744073709551615",
                                           "18446744073709551616",
                                           "99999999999999999999999",
                                           "1e400",
                                           "-0",
                                           "1.5",
                                           "1e2",
                                           "0.0",
                                           "null",
                                           "true",
                                           "\"8\"",
                                           "[]",
                                           "{}"};
const uint64_t kInterestingLengths[] = {0,
                                        1,
                                        2,
                                        7,
                                        8,
                                        uint64_t{100} << 20,
                                        (uint64_t{100} << 20) + 1,
                                        uint64_t{1} << 32,
                                        uint64_t{1} << 62,
                                        uint64_t{1} << 63,
                                        ~uint64_t{0},
                                        ~uint64_t{0} - 7};
const char* const kDtypeNames[] = {"F32", "F16", "BF16", "F64", "I8", "", "f32", "BF16 ", "bf16"};

class Fuzzer {
 public:
  explicit Fuzzer(uint64_t seed) : rng_(seed) {}

  uint64_t Below(uint64_t n) { return n == 0 ? 0 : rng_() % n; }
  bool OneIn(uint64_t n) { return Below(n) == 0; }

  static Image Assemble(const std::string& header, const std::string& data) {
    Image image(8, '\0');
    const uint64_t n = header.size();
    std::memcpy(image.data(), &n, 8);
    return image + header + data;
  }

  // A valid image with a few random tensors (all dtypes, ranks 0-4, gaps, empty tensors).
  Image ValidImage(json* out_header = nullptr) {
    json header = json::object();
    if (OneIn(3)) header["__metadata__"] = {{"format", "pt"}, {"k" + std::to_string(Below(9)), ""}};
    uint64_t offset = 0;
    const int count = static_cast<int>(Below(7));
    for (int i = 0; i < count; ++i) {
      const DType dtype = static_cast<DType>(Below(3));
      std::vector<int64_t> shape(Below(5));
      uint64_t numel = 1;
      for (auto& dim : shape) {
        dim = static_cast<int64_t>(OneIn(10) ? 0 : 1 + Below(6));
        numel *= static_cast<uint64_t>(dim);
      }
      if (OneIn(4)) offset += Below(9);  // a gap
      const uint64_t bytes = numel * DTypeSize(dtype);
      header["t" + std::to_string(i) + (OneIn(5) ? ".weight" : "")] = {
          {"dtype", DTypeName(dtype)},
          {"shape", shape},
          {"data_offsets", json::array({offset, offset + bytes})}};
      offset += bytes;
    }
    std::string text = header.dump();
    if (OneIn(2)) text.append((8 - text.size() % 8) % 8, ' ');
    std::string data(offset + (OneIn(4) ? Below(16) : 0), '\0');
    for (char& c : data) c = static_cast<char>(Below(256));
    if (out_header != nullptr) *out_header = header;
    return Assemble(text, data);
  }

  json RandomJson(int depth) {
    switch (Below(depth <= 0 ? 5 : 8)) {
      case 0: return nullptr;
      case 1: return OneIn(2);
      case 2: return InterestingJson();
      case 3: return static_cast<int64_t>(rng_()) >> Below(64);
      case 4: return RandomString();
      case 5: {
        json a = json::array();
        for (uint64_t i = Below(5); i > 0; --i) a.push_back(RandomJson(depth - 1));
        return a;
      }
      default: {
        json o = json::object();
        for (uint64_t i = Below(5); i > 0; --i) o[RandomKey()] = RandomJson(depth - 1);
        return o;
      }
    }
  }

  // One of kInterestingNumbers as a JSON value; those JSON cannot hold (1e400) become a double.
  json InterestingJson() {
    json j = json::parse(kInterestingNumbers[Below(std::size(kInterestingNumbers))], nullptr,
                         /*allow_exceptions=*/false);
    return j.is_discarded() ? json(1e308) : j;
  }

  std::string RandomString() {
    static const char* const kStrings[] = {"F32",      "BF16",    "F16",          "__metadata__",
                                           "dtype",    "shape",   "data_offsets", "",
                                           "\xc3\xa9", "a\u00e9b"};
    if (OneIn(2)) return kStrings[Below(std::size(kStrings))];
    std::string s(Below(8), 'x');
    for (char& c : s) c = static_cast<char>(0x20 + Below(0x5f));
    return s;
  }

  std::string RandomKey() {
    static const char* const kKeys[] = {"dtype",        "shape", "data_offsets",
                                        "__metadata__", "t0",    "t1"};
    return OneIn(2) ? std::string(kKeys[Below(std::size(kKeys))]) : RandomString();
  }

  // Structure-aware: edit a valid header's JSON, then re-serialise with a correct length prefix.
  Image MutateJson() {
    json header;
    Image base = ValidImage(&header);
    const std::string data = base.substr(8 + ReadLength(base));
    if (header.empty() || OneIn(8)) {
      header = OneIn(2) ? RandomJson(4) : json::object({{RandomKey(), RandomJson(3)}});
      return Assemble(header.dump(), data);
    }
    for (int edits = 1 + static_cast<int>(Below(3)); edits > 0; --edits) {
      auto it = header.begin();
      std::advance(it, Below(header.size()));
      json& entry = *it;
      if (!entry.is_object() || it.key() == "__metadata__") {
        entry = OneIn(2) ? RandomJson(2) : json::object({{RandomString(), RandomJson(1)}});
        continue;
      }
      switch (Below(11)) {
        case 0: entry["dtype"] = kDtypeNames[Below(std::size(kDtypeNames))]; break;
        case 1: entry["shape"] = RandomJson(2); break;
        case 2: entry["data_offsets"] = RandomJson(2); break;
        case 3: entry.erase(RandomKey()); break;
        case 4: {  // copy another tensor's span, or all of it: overlaps unless empty
          auto other = header.begin();
          std::advance(other, Below(header.size()));
          if (other->is_object() && OneIn(2)) {
            entry = *other;
          } else if (other->is_object() && other->contains("data_offsets")) {
            entry["data_offsets"] = (*other)["data_offsets"];
          }
          break;
        }
        case 5:
          if (entry.contains("shape") && entry["shape"].is_array() && !entry["shape"].empty()) {
            entry["shape"][Below(entry["shape"].size())] = InterestingJson();
          }
          break;
        case 6: {  // nudge one offset, or slide the whole span onto a neighbour
          json& offsets = entry["data_offsets"];
          if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
              !offsets[1].is_number_unsigned()) {
            break;
          }
          const uint64_t delta = Below(17) - 8;
          if (OneIn(2)) {
            offsets[0] = offsets[0].get<uint64_t>() + delta;
            offsets[1] = offsets[1].get<uint64_t>() + delta;
          } else {
            const size_t i = Below(2);
            offsets[i] = offsets[i].get<uint64_t>() + delta;
          }
          break;
        }
        case 7: {  // high rank
          json shape = json::array();
          for (uint64_t i = 7 + Below(4); i > 0; --i) shape.push_back(1);
          entry["shape"] = shape;
          break;
        }
        case 8: {  // huge dims whose product overflows, maybe next to a zero
          static const uint64_t kHuge[] = {0,
                                           1,
                                           2,
                                           uint64_t{1} << 31,
                                           uint64_t{1} << 32,
                                           uint64_t{1} << 62,
                                           (uint64_t{1} << 63) - 1};
          json shape = json::array();
          for (uint64_t i = 1 + Below(4); i > 0; --i)
            shape.push_back(kHuge[Below(std::size(kHuge))]);
          entry["shape"] = shape;
          break;
        }
        default: entry[RandomKey()] = RandomJson(2); break;
      }
    }
    return Assemble(header.dump(), data);
  }

  static uint64_t ReadLength(const Image& image) {
    uint64_t n = 0;
    if (image.size() >= 8) std::memcpy(&n, image.data(), 8);
    return n;
  }

  // Byte-level mutations of an image (which may already be mutated).
  void MutateBytes(Image& image) {
    if (image.empty()) image.assign(1, '\0');
    switch (Below(7)) {
      case 0:  // bit flips
        for (uint64_t i = 1 + Below(8); i > 0; --i) {
          image[Below(image.size())] ^= static_cast<char>(1u << Below(8));
        }
        break;
      case 1:  // byte changes, biased to JSON syntax
        for (uint64_t i = 1 + Below(4); i > 0; --i) {
          static const char kSyntax[] = "{}[]\",:-0123456789e. \\";
          image[Below(image.size())] =
              OneIn(2) ? kSyntax[Below(sizeof(kSyntax) - 1)] : static_cast<char>(Below(256));
        }
        break;
      case 2: image.resize(Below(image.size() + 1)); break;  // truncation
      case 3: image.append(Below(64), static_cast<char>(Below(256))); break;
      case 4: {  // an interesting length prefix
        uint64_t n = OneIn(3) ? ReadLength(image) + Below(17) - 8
                              : kInterestingLengths[Below(std::size(kInterestingLengths))];
        if (OneIn(4) && image.size() >= 8) n = image.size() - 8 + Below(3) - 1;
        if (image.size() < 8) image.resize(8);
        std::memcpy(image.data(), &n, 8);
        break;
      }
      case 5: SpliceNumber(image); break;
      default: {  // delete or duplicate a span
        const size_t at = Below(image.size());
        const size_t len = Below(std::min<size_t>(16, image.size() - at) + 1);
        if (OneIn(2)) {
          image.erase(at, len);
        } else {
          image.insert(at, image.substr(at, len));
        }
      }
    }
  }

  // Replaces a run of digits in the header with an interesting number, keeping the prefix right.
  void SpliceNumber(Image& image) {
    const uint64_t n = ReadLength(image);
    if (image.size() < 8 || n > image.size() - 8) return;
    std::string header = image.substr(8, n);
    std::vector<size_t> starts;
    for (size_t i = 0; i < header.size(); ++i) {
      if (isdigit(static_cast<unsigned char>(header[i])) &&
          (i == 0 || !isdigit(static_cast<unsigned char>(header[i - 1])))) {
        starts.push_back(i);
      }
    }
    if (starts.empty()) return;
    const size_t at = starts[Below(starts.size())];
    size_t end = at;
    while (end < header.size() && isdigit(static_cast<unsigned char>(header[end]))) ++end;
    header.replace(at, end - at, kInterestingNumbers[Below(std::size(kInterestingNumbers))]);
    image = Assemble(header, image.substr(8 + n));
  }

 private:
  std::mt19937_64 rng_;
};

[[noreturn]] void Fail(const Image& image, const std::string& why) {
  std::fprintf(stderr, "safetensors_fuzz: INVARIANT VIOLATED: %s\nimage (%zu bytes): ", why.c_str(),
               image.size());
  for (size_t i = 0; i < image.size() && i < 2048; ++i) {
    const unsigned char c = static_cast<unsigned char>(image[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      std::fputc(c, stderr);
    } else {
      std::fprintf(stderr, "\\x%02x", c);
    }
  }
  std::fputc('\n', stderr);
  std::abort();
}

void CheckAccepted(const Image& image, const uint8_t* file, const SafetensorsHeader& h) {
  const uint64_t n = Fuzzer::ReadLength(image);
  if (image.size() < 8 || n > kMaxSafetensorsHeaderBytes) Fail(image, "accepted a bad length");
  if (h.data_offset != 8 + n || h.data_offset > image.size()) Fail(image, "bad data_offset");
  const uint64_t data_size = image.size() - h.data_offset;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& [name, t] : h.tensors) {
    if (name != t.name || name.empty() || name == "__metadata__") Fail(image, "bad name " + name);
    if (t.shape.size() > kMaxTensorRank) Fail(image, name + ": rank too high");
    uint64_t numel = 1;
    for (const int64_t dim : t.shape) {
      if (dim < 0) Fail(image, name + ": negative dim");
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dim), &numel)) {
        Fail(image, name + ": numel overflows");
      }
    }
    if (static_cast<int64_t>(numel) != t.numel() || t.numel() < 0) Fail(image, name + ": numel");
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(numel, DTypeSize(t.dtype), &bytes)) Fail(image, name + ": bytes");
    if (t.begin > t.end || t.end > data_size) Fail(image, name + ": span outside data section");
    if (t.end - t.begin != bytes) Fail(image, name + ": span != numel * dtype size");
    if (bytes > 0) spans.emplace_back(t.begin, t.end);
    // Touch the tensor's first and last elements: ASan stops us if they lie outside the image.
    if (numel > 0) {
      const uint8_t* data = file + h.data_offset + t.begin;
      float out[64];
      ConvertToF32(t.dtype, data, out, std::min<uint64_t>(numel, 64));
      ConvertToF32(t.dtype, data + (numel - 1) * DTypeSize(t.dtype), out, 1);
    }
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].first < spans[i - 1].second) Fail(image, "tensors overlap");
  }
}

}  // namespace
}  // namespace kvshard

int main(int argc, char** argv) {
  using namespace kvshard;
  const FuzzArgs args(argc, argv, "safetensors_fuzz", 5000000);
  Fuzzer fuzzer(args.seed);
  uint64_t iterations = 0, accepted = 0, valid_checked = 0;
  while (!args.Done(iterations)) {
    ++iterations;
    Image image;
    bool must_accept = false;
    switch (fuzzer.Below(4)) {
      case 0:
        image = fuzzer.ValidImage();
        must_accept = fuzzer.OneIn(2);
        break;
      case 1: image = fuzzer.MutateJson(); break;
      default: image = fuzzer.OneIn(2) ? fuzzer.ValidImage() : fuzzer.MutateJson(); break;
    }
    if (!must_accept) {
      for (uint64_t m = 1 + fuzzer.Below(3); m > 0; --m) fuzzer.MutateBytes(image);
    }
    // An exactly sized heap copy, so that ASan sees any read past the end.
    std::unique_ptr<uint8_t[]> bytes(new uint8_t[image.size() + (image.empty() ? 1 : 0)]);
    std::memcpy(bytes.get(), image.data(), image.size());
    const auto parsed = ParseSafetensorsHeader(image.empty() ? nullptr : bytes.get(), image.size());
    if (parsed.ok()) {
      ++accepted;
      CheckAccepted(image, bytes.get(), parsed.value());
    } else {
      if (parsed.status().code() != StatusCode::kDataLoss || parsed.status().message().empty()) {
        Fail(image, "rejected with " + parsed.status().ToString());
      }
      if (must_accept) Fail(image, "rejected a valid image: " + parsed.status().ToString());
    }
    if (must_accept) ++valid_checked;
  }
  const double elapsed = args.elapsed();
  std::printf(
      "safetensors_fuzz: %llu iterations in %.1f s (%llu accepted and checked, %llu of them "
      "unmutated valid images), no invariant violated\n",
      static_cast<unsigned long long>(iterations), elapsed,
      static_cast<unsigned long long>(accepted), static_cast<unsigned long long>(valid_checked));
  return 0;
}
