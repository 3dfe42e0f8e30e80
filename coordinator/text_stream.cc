#include "coordinator/text_stream.h"

#include <algorithm>

namespace kvshard {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";

}  // namespace

int Utf8SequenceAt(std::string_view s, size_t i) {
  const auto c0 = static_cast<unsigned char>(s[i]);
  if (c0 < 0x80) return 1;
  int n;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c0 >= 0xC2 && c0 <= 0xDF) {
    n = 2;
  } else if (c0 >= 0xE0 && c0 <= 0xEF) {
    n = 3;
    if (c0 == 0xE0) lo = 0xA0;  // no overlongs
    if (c0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (c0 >= 0xF0 && c0 <= 0xF4) {
    n = 4;
    if (c0 == 0xF0) lo = 0x90;
    if (c0 == 0xF4) hi = 0x8F;  // <= U+10FFFF
  } else {
    return -1;
  }
  for (int k = 1; k < n; ++k) {
    if (i + k >= s.size()) return -k;
    const auto c = static_cast<unsigned char>(s[i + k]);
    if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF)) return -k;
  }
  return n;
}

std::string SanitizeUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const int n = Utf8SequenceAt(s, i);
    if (n > 0) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += kReplacement;
      i += -n;
    }
  }
  return out;
}

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const int n = Utf8SequenceAt(s, i);
    if (n <= 0) return false;
    i += n;
  }
  return true;
}

TextStream::TextStream(const Tokenizer* tokenizer, int32_t prev, std::vector<std::string> stops)
    : tokenizer_(tokenizer), prev_(prev), stops_(std::move(stops)) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

bool TextStream::Append(int32_t token) {
  if (finished_ || !tokenizer_) return false;
  raw_ += tokenizer_->DecodeToken(prev_, token);
  prev_ = token;
  // A stop string can only start in the held-back tail (see below), so search from there.
  size_t cut = std::string::npos;
  for (const std::string& stop : stops_) {
    const size_t from = raw_shown_;
    const size_t at = raw_.find(stop, from);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  if (cut != std::string::npos) {
    raw_.resize(cut);
    Finish();
    return true;
  }
  // Hold back a trailing partial character and the longest suffix that begins a stop string.
  size_t end = raw_.size();
  for (size_t back = 1; back <= 3 && back <= end - raw_shown_; ++back) {
    // A valid start cut off by the end: the ill-formed part reaches the end from a lead byte.
    const auto lead = static_cast<unsigned char>(raw_[end - back]);
    if (lead >= 0xC2 && lead <= 0xF4 &&
        Utf8SequenceAt(raw_, end - back) == -static_cast<int>(back)) {
      end -= back;
      break;
    }
  }
  size_t hold = 0;
  for (const std::string& stop : stops_) {
    for (size_t len = std::min(stop.size() - 1, raw_.size() - raw_shown_); len > hold; --len) {
      if (raw_.compare(raw_.size() - len, len, stop, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  Show(std::min(end, raw_.size() - hold));
  return false;
}

void TextStream::Finish() {
  if (finished_) return;
  Show(raw_.size());
  finished_ = true;
}

void TextStream::Show(size_t raw_end) {
  if (raw_end <= raw_shown_) return;
  shown_ += SanitizeUtf8(std::string_view(raw_).substr(raw_shown_, raw_end - raw_shown_));
  raw_shown_ = raw_end;
}

}  // namespace kvshard
