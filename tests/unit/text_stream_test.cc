#include "coordinator/text_stream.h"

#include <gtest/gtest.h>

#include <map>

namespace kvshard {
namespace {

// Token i decodes to pieces[i]; no spacing rules.
class PieceTokenizer : public Tokenizer {
 public:
  explicit PieceTokenizer(std::vector<std::string> pieces) : pieces_(std::move(pieces)) {}
  std::vector<int32_t> Encode(std::string_view, bool) const override { return {}; }
  std::string DecodeToken(int32_t, int32_t token) const override { return pieces_.at(token); }
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }

 private:
  std::vector<std::string> pieces_;
};

TEST(Utf8, ValidatesAndSanitizes) {
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xFF"));
  EXPECT_FALSE(IsValidUtf8("\xC3"));              // truncated
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_EQ(SanitizeUtf8("a\xFF"
                         "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_TRUE(IsValidUtf8(SanitizeUtf8("\xC3\x28\xE2\x82")));
  // One U+FFFD per maximal ill-formed subpart, as Python's errors="replace": a truncated
  // sequence is one, a surrogate's three bytes are three, an overlong's two are two.
  EXPECT_EQ(SanitizeUtf8("\xE2\x82"), "\xEF\xBF\xBD");
  EXPECT_EQ(SanitizeUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(SanitizeUtf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(SanitizeUtf8("\xF0\x9F\x98x"), "\xEF\xBF\xBDx");
}

TEST(TextStream, HoldsBackAPartialCharacter) {
  // "é" arrives as two byte tokens; nothing is shown until it is whole.
  PieceTokenizer tok({"a", "\xC3", "\xA9", "b"});
  TextStream s(&tok, 0, {});
  s.Append(0);
  EXPECT_EQ(s.shown(), "a");
  s.Append(1);
  EXPECT_EQ(s.shown(), "a");
  s.Append(2);
  EXPECT_EQ(s.shown(), "a\xC3\xA9");
  s.Append(3);
  EXPECT_EQ(s.shown(),
            "a\xC3\xA9"
            "b");
}

TEST(TextStream, TrailingPartialCharacterBecomesReplacementAtTheEnd) {
  PieceTokenizer tok({"x", "\xE2\x82"});
  TextStream s(&tok, 0, {});
  s.Append(0);
  s.Append(1);
  EXPECT_EQ(s.shown(), "x");
  s.Finish();
  EXPECT_EQ(s.shown(), "x\xEF\xBF\xBD");  // one maximal ill-formed subpart
  EXPECT_TRUE(IsValidUtf8(s.shown()));
}

TEST(TextStream, StopStringAcrossTokensIsCutAndNeverShown) {
  PieceTokenizer tok({"Hello", " wor", "ld", "E", "ND", " more"});
  TextStream s(&tok, 0, {"END"});
  EXPECT_FALSE(s.Append(0));
  EXPECT_FALSE(s.Append(1));
  EXPECT_FALSE(s.Append(2));
  EXPECT_EQ(s.shown(), "Hello world");
  EXPECT_FALSE(s.Append(3));
  EXPECT_EQ(s.shown(), "Hello world") << "'E' may start the stop string: held back";
  EXPECT_TRUE(s.Append(4));
  EXPECT_TRUE(s.finished());
  EXPECT_EQ(s.shown(), "Hello world");
  EXPECT_FALSE(s.Append(5)) << "nothing after the end";
  EXPECT_EQ(s.shown(), "Hello world");
}

TEST(TextStream, HeldBackTextThatIsNotAStopIsShownLater) {
  PieceTokenizer tok({"ab", "E", "x"});
  TextStream s(&tok, 0, {"END"});
  s.Append(0);
  s.Append(1);
  EXPECT_EQ(s.shown(), "ab");
  s.Append(2);
  EXPECT_EQ(s.shown(), "abEx");
}

TEST(TextStream, StopInsideOneTokenCutsMidToken) {
  PieceTokenizer tok({"one\n\ntwo"});
  TextStream s(&tok, 0, {"\n\n"});
  EXPECT_TRUE(s.Append(0));
  EXPECT_EQ(s.shown(), "one");
}

}  // namespace
}  // namespace kvshard
