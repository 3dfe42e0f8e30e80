#include "common/byte_size.h"

#include <gtest/gtest.h>

namespace kvshard {
namespace {

TEST(ByteSize, ParsesBinaryAndDecimalUnits) {
  EXPECT_EQ(ParseByteSize("4096").value(), 4096);
  EXPECT_EQ(ParseByteSize("12B").value(), 12);
  EXPECT_EQ(ParseByteSize("2GiB").value(), int64_t{2} << 30);
  EXPECT_EQ(ParseByteSize("2g").value(), int64_t{2} << 30);
  EXPECT_EQ(ParseByteSize("512MiB").value(), int64_t{512} << 20);
  EXPECT_EQ(ParseByteSize("1.5 GiB").value(), int64_t{3} << 29);
  EXPECT_EQ(ParseByteSize("40KiB").value(), 40960);
  EXPECT_EQ(ParseByteSize("1GB").value(), 1000000000);
  EXPECT_EQ(ParseByteSize("3kB").value(), 3000);
  EXPECT_EQ(ParseByteSize("1TiB").value(), int64_t{1} << 40);
}

TEST(ByteSize, RefusesWhatIsNotASize) {
  for (const char* bad : {"", "GiB", "-1GiB", "1.2.3MiB", "4zz", ".", "1 GiBs"}) {
    const auto r = ParseByteSize(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_NE(r.status().message().find("is not a memory size"), std::string::npos)
          << r.status().message();
    }
  }
  EXPECT_NE(ParseByteSize("99999999999TiB").status().message().find("too large"),
            std::string::npos);
  EXPECT_EQ(FormatBytes(1536), "1.50 KiB");
  EXPECT_EQ(FormatBytes(3 << 29), "1.50 GiB");
  EXPECT_EQ(FormatBytes(12), "12 B");
}

}  // namespace
}  // namespace kvshard
