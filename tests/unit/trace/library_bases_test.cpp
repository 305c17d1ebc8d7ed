// LibraryBases: load bases learnt from a process's own open/mmap/close/munmap/execve/fork calls,
// as glibc's loader makes them.
#include "trace/library_bases.hpp"

#include <gtest/gtest.h>

namespace hvtrace::trace {
namespace {

using K = abi::CaptureKind;

syscalls::Call call(std::uint64_t nr, std::initializer_list<std::uint64_t> args, std::int64_t ret, std::string path = {},
                    unsigned path_arg = 1) {
  syscalls::Call c;
  c.nr = nr;
  unsigned i = 0;
  for (auto a : args) c.args[i++] = a;
  c.ret = ret;
  if (!path.empty()) {
    events::Capture cp;
    cp.arg = static_cast<std::uint8_t>(path_arg);
    cp.kind = K::kString;
    cp.data = path;
    cp.true_len = path.size();
    c.entry_caps.push_back(cp);
  }
  return c;
}

constexpr std::uint64_t kAtFdcwd = static_cast<std::uint64_t>(-100);

TEST(LibraryBases, LearnsTheBaseFromTheFirstMmapOfTheOpenedFd) {
  LibraryBases lb({"libc.so.6", "libcrypt.so.1"});
  EXPECT_TRUE(lb.on_call(10, call(257, {kAtFdcwd, 0x1000, 0x80000}, 3, "/lib/x86_64-linux-gnu/libcrypt.so.1")).empty());
  EXPECT_TRUE(lb.on_call(10, call(9, {0, 0x1000, 1, 0x802, 4, 0}, 0x7f0000001000)).empty());   // another fd
  const auto ch = lb.on_call(10, call(9, {0, 0x25000, 1, 0x802, 3, 0}, 0x7f1234560000));
  ASSERT_EQ(ch.size(), 1u);
  EXPECT_EQ(ch[0].kind, LibraryBases::Change::Kind::kLoaded);
  EXPECT_EQ(ch[0].lib, "libcrypt.so.1");
  EXPECT_EQ(ch[0].base, 0x7f1234560000u);
  // The other segments (MAP_FIXED at an offset) change nothing.
  EXPECT_TRUE(lb.on_call(10, call(9, {0x7f1234562000, 0x1000, 5, 0x812, 3, 0x2000}, 0x7f1234562000)).empty());
  EXPECT_TRUE(lb.on_call(10, call(3, {3}, 0)).empty());
  EXPECT_EQ(lb.base(10, "libcrypt.so.1"), 0x7f1234560000u);
  EXPECT_FALSE(lb.base(10, "libc.so.6").has_value());
  EXPECT_FALSE(lb.base(11, "libcrypt.so.1").has_value());
}

TEST(LibraryBases, CloseFailedCallsAndOtherNamesDoNotCount) {
  LibraryBases lb({"libc.so.6"});
  (void)lb.on_call(10, call(257, {kAtFdcwd, 0x1000, 0}, 3, "/lib/libc.so.6"));
  (void)lb.on_call(10, call(3, {3}, 0));
  EXPECT_TRUE(lb.on_call(10, call(9, {0, 0x1000, 1, 2, 3, 0}, 0x7f0000000000)).empty());   // fd 3 is closed
  (void)lb.on_call(10, call(257, {kAtFdcwd, 0x1000, 0}, -2, "/lib/libc.so.6"));          // ENOENT
  (void)lb.on_call(10, call(257, {kAtFdcwd, 0x1000, 0}, 4, "/lib/libc.so.6.bak"));
  (void)lb.on_call(10, call(2, {0x1000, 0}, 5, "/usr/lib/libc.so.6", 0));                  // open(2)
  EXPECT_TRUE(lb.on_call(10, call(9, {0, 0x1000, 1, 2, 4, 0}, 0x7f0000000000)).empty());
  EXPECT_TRUE(lb.on_call(10, call(9, {0, 0x1000, 1, 2, 5, 0}, -12)).empty());              // ENOMEM
  EXPECT_EQ(lb.on_call(10, call(9, {0, 0x1000, 1, 2, 5, 0}, 0x7f0000002000)).size(), 1u);
}

TEST(LibraryBases, MunmapExecveExitForgetAndForkInherits) {
  LibraryBases lb({"libc.so.6"});
  (void)lb.on_call(10, call(257, {kAtFdcwd, 0x1000, 0}, 3, "/lib/libc.so.6"));
  (void)lb.on_call(10, call(9, {0, 0x1000, 1, 2, 3, 0}, 0x7f0000000000));
  const auto forked = lb.on_call(10, call(57, {}, 11));
  ASSERT_EQ(forked.size(), 1u);
  EXPECT_EQ(forked[0].pid, 11u);
  EXPECT_EQ(lb.base(11, "libc.so.6"), 0x7f0000000000u);
  EXPECT_TRUE(lb.on_call(10, call(56, {0x3d0f00, 0, 0, 0, 0}, 12)).empty());   // CLONE_THREAD: a thread
  const auto ex = lb.on_call(11, call(59, {0x1000, 0x2000, 0x3000}, 0));
  ASSERT_EQ(ex.size(), 1u);
  EXPECT_EQ(ex[0].kind, LibraryBases::Change::Kind::kUnloaded);
  EXPECT_FALSE(lb.base(11, "libc.so.6").has_value());
  const auto un = lb.on_call(10, call(11, {0x7f0000000000, 0x200000}, 0));
  ASSERT_EQ(un.size(), 1u);
  EXPECT_EQ(un[0].kind, LibraryBases::Change::Kind::kUnloaded);
  (void)lb.on_call(10, call(257, {kAtFdcwd, 0x1000, 0}, 3, "/lib/libc.so.6"));
  (void)lb.on_call(10, call(9, {0, 0x1000, 1, 2, 3, 0}, 0x7f0000000000));
  syscalls::Call eg;
  eg.nr = 231;   // exit_group: no return value
  EXPECT_EQ(lb.on_call(10, eg).size(), 1u);
  EXPECT_EQ(lb.bases(10), nullptr);
}

TEST(LibraryBases, ABaseFoundInMemoryIsInheritedLikeALearntOne) {
  LibraryBases lb({"libc.so.6"});
  EXPECT_EQ(lb.set_loaded(10, "libc.so.6", 0x7f0000000000).size(), 1u);
  EXPECT_TRUE(lb.set_loaded(10, "libc.so.6", 0x7f0000000000).empty());
  const auto forked = lb.on_call(10, call(57, {}, 11));
  ASSERT_EQ(forked.size(), 1u);
  EXPECT_EQ(lb.base(11, "libc.so.6"), 0x7f0000000000u);
}

// A fork seen at the fork breakpoint, before the parent's clone returns: the child inherits then,
// and the clone's return, seen later, changes nothing, not even for a child that has exec'd
// (and so forgotten its parent's libraries) in between.
TEST(LibraryBases, AForkAnnouncedBeforeItsReturnIsNotInheritedTwice) {
  LibraryBases lb({"libc.so.6"});
  (void)lb.set_loaded(10, "libc.so.6", 0x7f0000000000);
  const auto forked = lb.fork(10, 11);
  ASSERT_EQ(forked.size(), 1u);
  EXPECT_EQ(forked[0].kind, LibraryBases::Change::Kind::kLoaded);
  EXPECT_EQ(forked[0].pid, 11u);
  EXPECT_EQ(lb.base(11, "libc.so.6"), 0x7f0000000000u);
  EXPECT_EQ(lb.on_call(11, call(59, {0x1000, 0x2000, 0x3000}, 0)).size(), 1u);   // the child execs
  EXPECT_TRUE(lb.on_call(10, call(57, {}, 11)).empty());                           // then the fork returns
  EXPECT_FALSE(lb.base(11, "libc.so.6").has_value());
  // The next fork with no breakpoint seen inherits at its return, as before.
  EXPECT_EQ(lb.on_call(10, call(57, {}, 12)).size(), 1u);
  EXPECT_TRUE(lb.fork(99, 13).empty());   // a parent with no known library
}

// The calls on_call reads, for a caller that narrows the monitor's syscall set.
TEST(LibraryBases, SyscallSetHoldsEveryCallItReads) {
  const auto set = LibraryBases::syscall_set();
  constexpr auto x64 = abi::SyscallAbi::kX86_64;
  for (const std::uint64_t nr : {2, 3, 9, 11, 257, 56, 57, 58, 435, 59, 322, 231}) EXPECT_TRUE(set.contains(x64, nr)) << nr;
  EXPECT_TRUE(set.contains(abi::SyscallAbi::kI386, 252));   // exit_group
  EXPECT_FALSE(set.contains(x64, 0));    // read
  EXPECT_FALSE(set.contains(x64, 12));   // brk
  EXPECT_EQ(set.nrs[0].count(), 12u);
}

}  // namespace
}  // namespace hvtrace::trace
