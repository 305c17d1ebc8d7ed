// The monitor's bounded copies against a fake guest memory of mapped and unmapped pages: strings
// across page boundaries, cut at the snap length with their true length kept, faults mid-string,
// strings with no NUL within the scan limit, buffers with an unmapped tail, argv arrays that are
// too long or point to unmapped memory. Nothing is ever written past the bound.
#include "captures.hpp"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace hvtrace::monitor {
namespace {

struct FakeGuest {
  std::map<std::uint64_t, std::vector<std::uint8_t>> pages;  // page number -> 4 KiB
  void map(std::uint64_t va, std::size_t len, std::uint8_t fill = 'A') {
    for (std::uint64_t p = va / 4096; p <= (va + len - 1) / 4096; ++p) pages[p].assign(4096, fill);
  }
  void put(std::uint64_t va, const std::string& s, bool nul = true) {
    for (std::size_t i = 0; i < s.size() + (nul ? 1 : 0); ++i) pages.at((va + i) / 4096)[(va + i) % 4096] = i < s.size() ? static_cast<std::uint8_t>(s[i]) : 0;
  }
  void put_u64(std::uint64_t va, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) pages.at((va + i) / 4096)[(va + i) % 4096] = static_cast<std::uint8_t>(v >> (8 * i));
  }
  bool operator()(std::uint64_t va, void* dst, std::size_t len) const {
    auto* d = static_cast<std::uint8_t*>(dst);
    for (std::size_t i = 0; i < len; ++i) {
      auto it = pages.find((va + i) / 4096);
      if (it == pages.end()) return false;
      d[i] = it->second[(va + i) % 4096];
    }
    return true;
  }
};

// Output buffer with a guard zone that must stay untouched.
struct Out {
  explicit Out(std::size_t limit) : bound(limit), bytes(limit + 64, 0xcc) {}
  std::uint8_t* data() { return bytes.data(); }
  bool guard_intact() const {
    for (std::size_t i = bound; i < bytes.size(); ++i)
      if (bytes[i] != 0xcc) return false;
    return true;
  }
  std::string str(std::uint32_t n) const { return std::string(bytes.begin(), bytes.begin() + n); }
  std::size_t bound;
  std::vector<std::uint8_t> bytes;
};

TEST(Captures, StringAcrossAPageBoundary) {
  FakeGuest g;
  g.map(0x10000, 8192);
  g.put(0x10ffa, "/etc/passwd");
  Out out(256);
  abi::Capture c{};
  const auto n = copy_string(g, 0x10ffa, out.data(), 256, &c);
  EXPECT_EQ(out.str(n), "/etc/passwd");
  EXPECT_EQ(c.true_len, 11u);
  EXPECT_EQ(c.flags, 0);
  EXPECT_TRUE(out.guard_intact());
}

TEST(Captures, LongStringIsCutAtSnapWithItsTrueLength) {
  FakeGuest g;
  g.map(0x20000, 8192);
  g.put(0x20000, std::string(1000, 'x'));
  Out out(256);
  abi::Capture c{};
  const auto n = copy_string(g, 0x20000, out.data(), 256, &c);
  EXPECT_EQ(n, 256u);
  EXPECT_EQ(c.true_len, 1000u);
  EXPECT_TRUE(out.guard_intact());
}

TEST(Captures, FaultMidStringKeepsThePrefixAndSaysSo) {
  FakeGuest g;
  g.map(0x30000, 4096);              // the next page is unmapped
  g.put(0x30ff0, "0123456789abcdef", false);
  Out out(256);
  abi::Capture c{};
  const auto n = copy_string(g, 0x30ff0, out.data(), 256, &c);
  EXPECT_EQ(out.str(n), "0123456789abcdef");
  EXPECT_TRUE(c.flags & abi::kCaptureFault);
  EXPECT_TRUE(c.flags & abi::kCaptureLenUnknown);
  abi::Capture c2{};
  EXPECT_EQ(copy_string(g, 0, out.data(), 256, &c2), 0u);  // NULL pointer
  EXPECT_TRUE(c2.flags & abi::kCaptureFault);
  EXPECT_TRUE(out.guard_intact());
}

TEST(Captures, StringWithoutNulStopsAtTheScanLimit) {
  FakeGuest g;
  g.map(0x40000, 64 * 1024, 'z');    // 64 KiB of non-NUL bytes
  Out out(16);
  abi::Capture c{};
  const auto n = copy_string(g, 0x40000, out.data(), 16, &c);
  EXPECT_EQ(n, 16u);
  EXPECT_EQ(c.true_len, 4096u);      // scanned max(snap, 4096)
  EXPECT_TRUE(c.flags & abi::kCaptureLenUnknown);
  EXPECT_TRUE(out.guard_intact());
}

TEST(Captures, BufferWithUnmappedTail) {
  FakeGuest g;
  g.map(0x50000, 4096, 'b');
  Out out(8192);
  abi::Capture c{};
  const auto n = copy_buffer(g, 0x50f00, 1000, out.data(), 8192, &c);
  EXPECT_EQ(n, 256u);                // the readable prefix up to the page end
  EXPECT_EQ(c.true_len, 1000u);
  EXPECT_TRUE(c.flags & abi::kCaptureFault);
  Out small(100);
  abi::Capture c2{};
  EXPECT_EQ(copy_buffer(g, 0x50000, 4096, small.data(), 100, &c2), 100u);
  EXPECT_EQ(c2.true_len, 4096u);
  EXPECT_TRUE(small.guard_intact());
}

// writev's buffers gathered in order into one capture, bounded by snap; the true length is the sum.
TEST(Captures, IovecGathersTheBuffersInOrder) {
  FakeGuest g;
  g.map(0x10000, 4096, 0);
  g.map(0x20000, 4096, 'x');
  g.put(0x20000, "ls -l", false);
  g.put(0x20100, "\r", false);
  g.put_u64(0x10000, 0x20000);
  g.put_u64(0x10008, 5);
  g.put_u64(0x10010, 0x20100);
  g.put_u64(0x10018, 1);
  Out out(64);
  abi::Capture c{};
  auto n = copy_iovec(g, 0x10000, 2, out.data(), 64, &c);
  EXPECT_EQ(out.str(n), "ls -l\r");
  EXPECT_EQ(c.true_len, 6u);
  EXPECT_EQ(c.flags, 0);
  Out small(3);
  abi::Capture c2{};
  n = copy_iovec(g, 0x10000, 2, small.data(), 3, &c2);
  EXPECT_EQ(small.str(n), "ls ");
  EXPECT_EQ(c2.true_len, 6u);
  EXPECT_TRUE(small.guard_intact());
  // A hostile count and an unreadable array entry: bounded, flagged.
  abi::Capture c3{};
  n = copy_iovec(g, 0x10000, 1ULL << 40, out.data(), 64, &c3);
  EXPECT_NE(c3.flags & abi::kCaptureTruncated, 0);
  EXPECT_LE(n, 64u);
  abi::Capture c4{};
  EXPECT_EQ(copy_iovec(g, 0xdead0000, 2, out.data(), 64, &c4), 0u);
  EXPECT_NE(c4.flags & abi::kCaptureFault, 0);
  EXPECT_TRUE(out.guard_intact());
}

TEST(Captures, ArgvIsBoundedInEntriesAndBytes) {
  FakeGuest g;
  g.map(0x60000, 4096);              // argv array
  g.map(0x70000, 4096);              // strings
  g.put(0x70000, "tcc");
  g.put(0x70010, "-c");
  g.put(0x70020, std::string(300, 'f'));
  g.put_u64(0x60000, 0x70000);
  g.put_u64(0x60008, 0x70010);
  g.put_u64(0x60010, 0x70020);
  g.put_u64(0x60018, 0);
  Out out(4 * 64);
  abi::Capture c{};
  const auto n = copy_argv(g, 0x60000, out.data(), 64, &c);
  EXPECT_EQ(c.true_len, 3u);
  EXPECT_EQ(out.str(n), std::string("tcc\0-c\0", 7) + std::string(64, 'f') + std::string(1, '\0'));
  EXPECT_TRUE(c.flags & abi::kCaptureTruncated);
  EXPECT_TRUE(out.guard_intact());

  // 100 entries, all valid: every one counted (strace's argc), bytes bounded by 4x snap.
  for (int i = 0; i < 100; ++i) g.put_u64(0x60000 + 8 * i, 0x70020);
  g.put_u64(0x60000 + 8 * 100, 0);
  Out out2(4 * 64);
  abi::Capture c2{};
  const auto n2 = copy_argv(g, 0x60000, out2.data(), 64, &c2);
  EXPECT_LE(n2, 4u * 64);
  EXPECT_EQ(c2.true_len, 100u);
  EXPECT_TRUE(c2.flags & abi::kCaptureTruncated);
  EXPECT_FALSE(c2.flags & abi::kCaptureLenUnknown);
  EXPECT_TRUE(out2.guard_intact());

  // Count only (envp): nothing copied, every entry counted, no truncation claimed.
  abi::Capture ce{};
  EXPECT_EQ(copy_argv(g, 0x60000, out2.data(), 64, &ce, 8, true), 0u);
  EXPECT_EQ(ce.true_len, 100u);
  EXPECT_EQ(ce.flags, 0u);
  EXPECT_TRUE(out2.guard_intact());

  // An array with no end (every word a pointer): counted up to the bound, then marked unknown.
  constexpr std::uint64_t kEndless = 0x200000;
  g.map(kEndless, 8ull * (abi::kMaxArgvCounted + 8));
  for (std::uint32_t i = 0; i < abi::kMaxArgvCounted + 8; ++i) g.put_u64(kEndless + 8ull * i, 0x70020);
  abi::Capture cl{};
  EXPECT_EQ(copy_argv(g, kEndless, out2.data(), 64, &cl, 8, true), 0u);
  EXPECT_EQ(cl.true_len, abi::kMaxArgvCounted);
  EXPECT_TRUE(cl.flags & abi::kCaptureLenUnknown);

  // argv pointing to unmapped memory.
  abi::Capture c3{};
  EXPECT_EQ(copy_argv(g, 0x90000, out2.data(), 64, &c3), 0u);
  EXPECT_TRUE(c3.flags & abi::kCaptureFault);
}

}  // namespace
}  // namespace hvtrace::monitor
