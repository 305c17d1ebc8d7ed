// PhysMem backends: bounds, holes read as zero without growing the file, extents skip holes.
#include "mem/phys_mem.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <filesystem>

using namespace hvtrace;
using namespace hvtrace::mem;

namespace {

struct TempFile {
  std::filesystem::path path;
  explicit TempFile(std::uint64_t size) {
    // /dev/shm is tmpfs, like the VM's RAM file; fall back to /tmp.
    std::string tmpl = (std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp") + std::string("/hvtrace-memtest-XXXXXX");
    int fd = mkstemp(tmpl.data());
    EXPECT_GE(fd, 0);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
    close(fd);
    path = tmpl;
  }
  ~TempFile() { std::filesystem::remove(path); }
  void write_at(std::uint64_t off, const void* p, std::size_t n) const {
    int fd = ::open(path.c_str(), O_WRONLY);
    ASSERT_EQ(pwrite(fd, p, n, static_cast<off_t>(off)), static_cast<ssize_t>(n));
    close(fd);
  }
  [[nodiscard]] long blocks() const {
    struct stat st{};
    stat(path.c_str(), &st);
    return static_cast<long>(st.st_blocks);
  }
};

}  // namespace

TEST(FakeMem, UnwrittenPagesReadAsZeroAndWritesRoundTrip) {
  FakeMem m(1 << 20);
  EXPECT_EQ(*m.read_u64(GPA{0x1000}), 0u);
  ASSERT_TRUE(m.write_u64(GPA{0x1ffc}, 0x1122334455667788ULL));  // straddles two pages
  EXPECT_EQ(*m.read_u64(GPA{0x1ffc}), 0x1122334455667788ULL);
  EXPECT_EQ(m.pages_allocated(), 2u);
}

TEST(FakeMem, ReadsOutsideRamFailWithTheAddress) {
  FakeMem m(1 << 20);
  auto r = m.read_u64(GPA{(1 << 20) - 4});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("0xffffc"), std::string::npos) << r.error().message;
  EXPECT_FALSE(m.read_u64(GPA{~0ULL - 2}));  // no overflow wrap-around
}

TEST(FakeMem, ExtentsCoalesceAdjacentPagesAndSkipUntouched) {
  FakeMem m(1 << 20);
  ASSERT_TRUE(m.write_u64(GPA{0x3000}, 1));
  ASSERT_TRUE(m.write_u64(GPA{0x4000}, 2));
  ASSERT_TRUE(m.write_u64(GPA{0x9000}, 3));
  std::vector<std::pair<std::uint64_t, std::size_t>> seen;
  m.for_each_extent([&](const Extent& e) {
    seen.emplace_back(e.base.value, e.bytes.size());
    return true;
  });
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0], std::make_pair(std::uint64_t{0x3000}, std::size_t{0x2000}));
  EXPECT_EQ(seen[1], std::make_pair(std::uint64_t{0x9000}, std::size_t{0x1000}));
}

TEST(FileMem, ReadsDataAndHolesWithoutGrowingTheFile) {
  TempFile f(64 << 20);
  const std::uint64_t v = 0xdeadbeefcafef00dULL;
  f.write_at(0x200000, &v, sizeof v);
  const long before = f.blocks();
  auto m = open_ram_file(f.path);
  ASSERT_TRUE(m) << m.error().message;
  EXPECT_EQ((*m)->size(), 64u << 20);
  EXPECT_EQ(*(*m)->read_u64(GPA{0x200000}), v);
  // Read every hole page once, and scan all extents: nothing may be allocated.
  for (std::uint64_t pa = 0; pa < (64u << 20); pa += 4096 * 7) EXPECT_TRUE((*m)->read_u64(GPA{pa}));
  std::size_t extent_bytes = 0;
  (*m)->for_each_extent([&](const Extent& e) {
    for (auto b : e.bytes) extent_bytes += b != std::byte{0} ? 1 : 0;
    return true;
  });
  EXPECT_GT(extent_bytes, 0u);
  EXPECT_EQ(f.blocks(), before);
}

TEST(FileMem, SeesDataWrittenAfterOpenEvenInFormerHoles) {
  TempFile f(1 << 20);
  auto m = open_ram_file(f.path);
  ASSERT_TRUE(m);
  const std::uint64_t v = 42;
  f.write_at(0x5000, &v, sizeof v);
  EXPECT_EQ(*(*m)->read_u64(GPA{0x5000}), 42u);
  (*m)->refresh_extents();
  EXPECT_EQ(*(*m)->read_u64(GPA{0x5000}), 42u);
}

TEST(FileMem, OutOfRangeAndMissingFileAreErrors) {
  TempFile f(1 << 20);
  auto m = open_dump_file(f.path);
  ASSERT_TRUE(m);
  EXPECT_FALSE((*m)->read_u64(GPA{1 << 20}));
  auto missing = open_ram_file("/nonexistent/ram");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("/nonexistent/ram"), std::string::npos);
}
