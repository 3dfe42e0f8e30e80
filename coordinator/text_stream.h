// Incremental detokenization for streaming: token bytes arrive one token at a time, but a client
// may only be shown text that will not change: never half of a UTF-8 character, never the start
// of what may become a stop string. Shown text is always valid UTF-8 (invalid bytes become
// U+FFFD), because Thrift strings are UTF-8 and strict clients refuse anything else.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "coordinator/tokenizer.h"

namespace kvshard {

// The UTF-8 sequence at bytes[i] (i < size): its length when well-formed, else minus the length
// of its maximal ill-formed subpart (Unicode 3.9, table 3-7: no overlongs, surrogates or code
// points past U+10FFFF; a valid start cut off by the end is a subpart too).
int Utf8SequenceAt(std::string_view bytes, size_t i);
// Valid UTF-8 for `bytes`: each maximal ill-formed subpart becomes one U+FFFD, as Python's
// decode("utf-8", errors="replace") and the WHATWG decoder do.
std::string SanitizeUtf8(std::string_view bytes);
// True when `bytes` is entirely valid UTF-8 (no overlongs, surrogates or code points > U+10FFFF).
bool IsValidUtf8(std::string_view bytes);

class TextStream {
 public:
  // `prev` is the token before the first appended one (the prompt's last, for spacing rules).
  // A null `tokenizer` (a model without one: benchmarks, tests) makes a stream without text.
  TextStream(const Tokenizer* tokenizer, int32_t prev, std::vector<std::string> stops);

  // Adds one generated token. Returns true when a stop string is now complete; the text is then
  // cut just before it and the stream is finished.
  bool Append(int32_t token);
  // Makes everything final (held-back bytes are shown, a trailing partial character becomes
  // U+FFFD). Called once the request ends.
  void Finish();

  const std::string& shown() const { return shown_; }  // valid UTF-8, only ever grows
  bool finished() const { return finished_; }

 private:
  void Show(size_t raw_end);

  const Tokenizer* tokenizer_;
  int32_t prev_;
  std::vector<std::string> stops_;
  std::string raw_;       // the completion's bytes so far
  size_t raw_shown_ = 0;  // raw_[0, raw_shown_) is in shown_
  std::string shown_;
  bool finished_ = false;
};

}  // namespace kvshard
