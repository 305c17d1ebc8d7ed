// The syscall tables and the decoder against strace's own output for the same calls (the
// expected lines are what strace 6 prints; the ones marked "host strace" were checked by running
// strace on this machine).
#include "syscalls/syscalls.hpp"

#include <gtest/gtest.h>



using namespace hvtrace;
using namespace hvtrace::syscalls;
using hvtrace::abi::SyscallAbi;
using K = hvtrace::abi::CaptureKind;

namespace {

events::Capture cap(unsigned arg, K kind, std::string data, std::uint64_t true_len, std::uint16_t flags = 0) {
  events::Capture c;
  c.arg = arg;
  c.kind = kind;
  c.data = std::move(data);
  c.true_len = true_len;
  c.flags = flags;
  return c;
}
events::Capture str(unsigned arg, std::string s) {
  const auto n = s.size();
  return cap(arg, K::kString, std::move(s), n);
}

Call call(std::string_view name, std::initializer_list<std::uint64_t> args, std::optional<std::int64_t> ret,
          SyscallAbi a = SyscallAbi::kX86_64) {
  Call c;
  c.abi = a;
  c.nr = Table::get(a).by_name(name).value();
  unsigned i = 0;
  for (auto v : args) c.args[i++] = v;
  c.ret = ret;
  return c;
}

std::string line(const Call& c, std::uint32_t limit = 32) { return to_text(format_call(c, FormatOptions{limit})); }
// strace's line body with the column padding removed (the padding has its own test).
std::string body(const Call& c, std::uint32_t limit = 32) {
  const Formatted f = format_call(c, FormatOptions{limit});
  std::string s = f.name + "(";
  for (std::size_t i = 0; i < f.args.size(); ++i) s += (i ? ", " : "") + f.args[i];
  return s + ") = " + f.ret;
}

constexpr std::uint64_t kFdCwd = static_cast<std::uint64_t>(-100);
constexpr std::int64_t kENOENT = -2;

}  // namespace

TEST(SyscallTable, LooksUpBothWaysInBothAbis) {
  const Table& x = Table::get(SyscallAbi::kX86_64);
  const Table& i = Table::get(SyscallAbi::kI386);
  EXPECT_EQ(x.by_nr(0)->name, "read");
  EXPECT_EQ(x.by_nr(59)->name, "execve");
  EXPECT_EQ(x.by_nr(257)->name, "openat");
  EXPECT_EQ(x.by_nr(435)->name, "clone3");
  EXPECT_EQ(x.by_nr(462)->name, "mseal");
  EXPECT_EQ(x.by_name("openat"), 257U);
  EXPECT_EQ(x.by_name("execveat"), 322U);
  EXPECT_EQ(i.by_nr(11)->name, "execve");
  EXPECT_EQ(i.by_nr(140)->name, "_llseek");
  EXPECT_EQ(i.by_nr(192)->name, "mmap2");
  EXPECT_EQ(i.by_nr(102)->name, "socketcall");
  EXPECT_EQ(i.by_nr(300)->name, "fstatat64");
  EXPECT_EQ(i.by_nr(195)->name, "stat64");
  EXPECT_EQ(i.by_name("openat"), 295U);
  EXPECT_EQ(i.by_name("clone3"), 435U);
  EXPECT_FALSE(x.by_name("mmap2").has_value());
  EXPECT_FALSE(i.by_name("arch_prctl") == x.by_name("arch_prctl"));
  EXPECT_EQ(x.by_nr(400), nullptr);   // hole between uretprobe and the common numbers
  EXPECT_EQ(x.by_nr(1ULL << 40), nullptr);
  EXPECT_EQ(x.by_nr(~0ULL), nullptr);
  EXPECT_GE(x.size(), 463U);
  EXPECT_GE(i.size(), 463U);
  // Every row's number finds the row again, and names are unique within an ABI.
  for (const Table* t : {&x, &i})
    for (const auto& e : t->entries()) {
      EXPECT_EQ(t->by_nr(e.nr), &e.info);
      EXPECT_EQ(t->by_name(e.info.name), e.nr);
      EXPECT_LE(e.info.nargs, 6);
    }
}

TEST(SyscallTable, X32SharesX86_64RowsWithBit30) {
  const Table& t = Table::get(SyscallAbi::kX32);
  EXPECT_EQ(t.by_nr(0x40000000 | 1)->name, "write");
  EXPECT_EQ(t.by_nr(1), nullptr);
  EXPECT_EQ(t.by_name("write"), 0x40000001U);
}

TEST(SyscallTable, ClassesAreStraces) {
  const Table& x = Table::get(SyscallAbi::kX86_64);
  EXPECT_EQ(x.by_nr(257)->classes, kDesc | kFile);
  EXPECT_EQ(x.by_nr(9)->classes, kDesc | kMemory);
  EXPECT_EQ(x.by_nr(42)->classes, kNetwork);
  EXPECT_EQ(x.by_nr(62)->classes, kSignal | kProcess);            // kill
  EXPECT_EQ(x.by_nr(59)->classes, kFile | kProcess);            // execve
  EXPECT_EQ(x.by_nr(29)->classes, kIpc);                          // shmget
  EXPECT_EQ(x.by_nr(39)->classes, 0U);                            // getpid
}

TEST(TraceSet, NamesClassesNegationAndErrors) {
  auto s = parse_trace_set("open,openat,%network");
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_TRUE(s->contains(SyscallAbi::kX86_64, 2));
  EXPECT_TRUE(s->contains(SyscallAbi::kX86_64, 257));
  EXPECT_TRUE(s->contains(SyscallAbi::kX86_64, 42));     // connect
  EXPECT_FALSE(s->contains(SyscallAbi::kX86_64, 0));
  EXPECT_TRUE(s->contains(SyscallAbi::kI386, 5));        // i386 open
  EXPECT_TRUE(s->contains(SyscallAbi::kI386, 295));      // i386 openat
  EXPECT_TRUE(s->contains(SyscallAbi::kI386, 362));      // i386 connect (the direct call, not socketcall)
  EXPECT_TRUE(s->contains(SyscallAbi::kX32, 0x40000000 | 257));

  auto neg = parse_trace_set("!read,write");
  ASSERT_TRUE(neg.ok());
  EXPECT_FALSE(neg->contains(SyscallAbi::kX86_64, 0));
  EXPECT_FALSE(neg->contains(SyscallAbi::kX86_64, 1));
  EXPECT_TRUE(neg->contains(SyscallAbi::kX86_64, 2));

  auto file = parse_trace_set("%file");
  ASSERT_TRUE(file.ok());
  EXPECT_TRUE(file->contains(SyscallAbi::kX86_64, 4));    // stat
  EXPECT_FALSE(file->contains(SyscallAbi::kX86_64, 5));   // fstat takes an fd, not a path
  EXPECT_TRUE(parse_trace_set("%net")->contains(SyscallAbi::kX86_64, 41));
  EXPECT_TRUE(parse_trace_set("all")->contains(SyscallAbi::kI386, 0));
  EXPECT_FALSE(parse_trace_set("none")->contains(SyscallAbi::kX86_64, 0));
  EXPECT_TRUE(parse_trace_set("mmap2")->contains(SyscallAbi::kI386, 192));   // only in one ABI: fine

  auto bad = parse_trace_set("open,opne");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message, "unknown syscall or class 'opne' in -e trace=");
  EXPECT_FALSE(parse_trace_set("%files").ok());
  auto opt = parse_trace_set("?opne,read");
  ASSERT_TRUE(opt.ok());
  EXPECT_TRUE(opt->contains(SyscallAbi::kX86_64, 0));
}

TEST(StatusSet, FailedSuccessfulNegation) {
  auto f = parse_status_set("failed");
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->shows(true));
  EXPECT_FALSE(f->shows(false));
  auto s = parse_status_set("!failed");
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->shows(true));
  EXPECT_TRUE(s->shows(false));
  auto bad = parse_status_set("sucessful");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("'sucessful'"), std::string::npos);
}

TEST(Errno, NamesAndMessages) {
  EXPECT_EQ(errno_name(2), "ENOENT");
  EXPECT_EQ(errno_name(13), "EACCES");
  EXPECT_EQ(errno_message(2), "No such file or directory");
  EXPECT_EQ(errno_name(0), std::nullopt);
  EXPECT_EQ(errno_name(4000), std::nullopt);
  EXPECT_EQ(signal_name(2), "SIGINT");
  EXPECT_EQ(signal_name(17), "SIGCHLD");
  EXPECT_EQ(signal_name(32), "SIGRTMIN");
  EXPECT_EQ(signal_name(35), "SIGRT_3");
  EXPECT_EQ(signal_name(65), std::nullopt);
}

TEST(Format, OpenatAndOpen) {
  Call c = call("openat", {kFdCwd, 0x1000, 02000000}, 3);
  c.entry_caps.push_back(str(1, "/etc/passwd"));
  EXPECT_EQ(body(c), R"(openat(AT_FDCWD, "/etc/passwd", O_RDONLY|O_CLOEXEC) = 3)");
  Call o = call("open", {0x1000, 0}, kENOENT);
  o.entry_caps.push_back(str(0, "/nope"));
  EXPECT_EQ(body(o), R"(open("/nope", O_RDONLY) = -1 ENOENT (No such file or directory))");
  EXPECT_TRUE(format_call(o, {}).failed);
  Call w = call("openat", {kFdCwd, 0x1000, 01101, 0644}, 4);   // O_WRONLY|O_CREAT|O_TRUNC
  w.entry_caps.push_back(str(1, "out.txt"));
  EXPECT_EQ(body(w), R"(openat(AT_FDCWD, "out.txt", O_WRONLY|O_CREAT|O_TRUNC, 0644) = 4)");
  Call u = call("openat", {5, 0x1000, 0x80000000}, 3);   // no capture: the pointer in hex
  EXPECT_EQ(body(u), "openat(5, 0x1000, O_RDONLY|0x80000000) = 3");
}

TEST(Format, ReadAndWriteBuffers) {
  Call r = call("read", {3, 0x7ffd1000, 4096}, 1234);
  const std::string passwd = "root:x:0:0:root:/root:/bin/bash\nbin:x:1:1::/:/sbin/nologin\n";
  r.exit_caps.push_back(cap(1, K::kBuffer, passwd, 1234, hvtrace::abi::kCaptureTruncated));
  EXPECT_EQ(body(r), R"(read(3, "root:x:0:0:root:/root:/bin/bash\n"..., 4096) = 1234)");
  Call w = call("write", {1, 0x5000, 3}, 3);
  w.entry_caps.push_back(cap(1, K::kBuffer, "hi\n", 3));
  EXPECT_EQ(body(w), R"(write(1, "hi\n", 3) = 3)");
  // Failed read: the buffer holds nothing, strace prints the pointer.
  Call e = call("read", {3, 0x7ffd1000, 10}, -9);
  EXPECT_EQ(body(e), "read(3, 0x7ffd1000, 10) = -1 EBADF (Bad file descriptor)");
  Call z = call("read", {0, 0x7ffd1000, 10}, 0);
  z.exit_caps.push_back(cap(1, K::kBuffer, "", 0));
  EXPECT_EQ(body(z), R"(read(0, "", 10) = 0)");
  // Capture cut by the monitor below -s: "..." after the bytes it has.
  Call t = call("write", {1, 0x5000, 100}, 100);
  t.entry_caps.push_back(cap(1, K::kBuffer, "abc", 100, hvtrace::abi::kCaptureTruncated));
  EXPECT_EQ(body(t), R"(write(1, "abc"..., 100) = 100)");
  Call s = call("write", {1, 0x5000, 100}, 100);
  s.entry_caps.push_back(cap(1, K::kBuffer, std::string(100, 'x'), 100));
  EXPECT_EQ(body(s, 4), R"(write(1, "xxxx"..., 100) = 100)");
}

TEST(Format, EscapesAsStrace) {
  Call w = call("write", {1, 0x5000, 12}, 12);
  w.entry_caps.push_back(cap(1, K::kBuffer, std::string("a\"b\\\t\r\0" "1\0x\x7f\xe9", 12), 12));
  // NUL before a digit takes three octal digits, elsewhere the shortest form (host strace).
  EXPECT_EQ(body(w), R"(write(1, "a\"b\\\t\r\0001\0x\177\351", 12) = 12)");
  Call v = call("write", {1, 0x5000, 3}, 3);
  v.entry_caps.push_back(cap(1, K::kBuffer, std::string("\x1b[m", 3), 3));
  EXPECT_EQ(body(v), R"(write(1, "\33[m", 3) = 3)");
}

TEST(Format, Execve) {
  Call c = call("execve", {0x1000, 0x2000, 0x7ffd3000}, 0);
  c.entry_caps.push_back(str(0, "/bin/ls"));
  c.entry_caps.push_back(cap(1, K::kArgv, std::string("ls\0-l\0", 6), 2));
  c.entry_caps.push_back(cap(2, K::kArgv, "", 5));
  EXPECT_EQ(body(c), R"(execve("/bin/ls", ["ls", "-l"], 0x7ffd3000 /* 5 vars */) = 0)");
  // No envp count: only the pointer. argv with more entries than captured: "...".
  Call d = call("execve", {0x1000, 0x2000, 0x7ffd3000}, 0);
  d.entry_caps.push_back(str(0, "/bin/sh"));
  d.entry_caps.push_back(cap(1, K::kArgv, std::string("sh\0-c\0", 6), 3, hvtrace::abi::kCaptureTruncated));
  EXPECT_EQ(body(d), R"(execve("/bin/sh", ["sh", "-c", ...], 0x7ffd3000) = 0)");
  Call e = call("execve", {0x1000, 0x2000, 0}, -2);
  e.entry_caps.push_back(str(0, "/x"));
  EXPECT_EQ(body(e), R"(execve("/x", 0x2000, NULL) = -1 ENOENT (No such file or directory))");
}

TEST(Format, MemoryCalls) {
  EXPECT_EQ(body(call("mmap", {0, 8192, 3, 0x22, ~0ULL, 0}, 0x7f12a000)),
            "mmap(NULL, 8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f12a000");
  EXPECT_EQ(body(call("mmap", {0x7f0000001000, 4096, 5, 0x812, 3, 0x2000}, 0x7f0000001000)),
            "mmap(0x7f0000001000, 4096, PROT_READ|PROT_EXEC, MAP_PRIVATE|MAP_FIXED|MAP_DENYWRITE, 3, 0x2000) = 0x7f0000001000");
  EXPECT_EQ(body(call("mprotect", {0x7f0000001000, 4096, 0}, 0)), "mprotect(0x7f0000001000, 4096, PROT_NONE) = 0");
  EXPECT_EQ(body(call("brk", {0}, 0x55d000)), "brk(NULL) = 0x55d000");
  EXPECT_EQ(body(call("munmap", {0x7f0000001000, 4096}, 0)), "munmap(0x7f0000001000, 4096) = 0");
  EXPECT_EQ(body(call("mmap", {0, 4096, 3, 0x22, ~0ULL, 0}, -12)),
            "mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = -1 ENOMEM (Cannot allocate memory)");
  // i386 mmap2 counts the offset in pages; 32-bit values.
  EXPECT_EQ(body(call("mmap2", {0, 4096, 1, 2, 3, 2}, 0xf7f00000, SyscallAbi::kI386)),
            "mmap2(NULL, 4096, PROT_READ, MAP_PRIVATE, 3, 0x2000) = 0xf7f00000");
}

TEST(Format, ProcessCalls) {
  EXPECT_EQ(body(call("clone", {0x1200011, 0, 0, 0x7f00aa000a10, 0}, 42)),
            "clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f00aa000a10) = 42");
  // Thread creation (glibc's pthread_create): tls comes before child_tidptr, as strace orders them.
  EXPECT_EQ(body(call("clone", {0x3d0f00, 0x7f00aa000000, 0x7f00aa000a10, 0x7f00aa000a10, 0x7f00aa000740}, 43)),
            "clone(child_stack=0x7f00aa000000, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|"
            "CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, parent_tid=0x7f00aa000a10, "
            "tls=0x7f00aa000740, child_tidptr=0x7f00aa000a10) = 43");
  EXPECT_EQ(body(call("clone", {0, 0, 0, 0, 0}, 44)), "clone(child_stack=NULL, flags=0) = 44");
  EXPECT_EQ(body(call("wait4", {~0ULL, 0x7ffd0000, 3, 0}, 42)), "wait4(-1, 0x7ffd0000, WNOHANG|WUNTRACED, NULL) = 42");
  EXPECT_EQ(body(call("wait4", {~0ULL, 0x7ffd0000, 0, 0}, -10)),
            "wait4(-1, 0x7ffd0000, 0, NULL) = -1 ECHILD (No child processes)");
  // The status the kernel wrote (copied at exit), decoded the way strace shows it.
  const auto waited = [](std::uint32_t status, std::int64_t ret = 42) {
    Call w = call("wait4", {~0ULL, 0x7ffd0000, 0, 0}, ret);
    w.exit_caps.push_back(cap(1, K::kBuffer, std::string(reinterpret_cast<const char*>(&status), 4), 4));
    return body(w);
  };
  EXPECT_EQ(waited(0x0300), "wait4(-1, [{WIFEXITED(s) && WEXITSTATUS(s) == 3}], 0, NULL) = 42");
  EXPECT_EQ(waited(9), "wait4(-1, [{WIFSIGNALED(s) && WTERMSIG(s) == SIGKILL}], 0, NULL) = 42");
  EXPECT_EQ(waited(0x8b), "wait4(-1, [{WIFSIGNALED(s) && WTERMSIG(s) == SIGSEGV && WCOREDUMP(s)}], 0, NULL) = 42");
  EXPECT_EQ(waited(0x137f), "wait4(-1, [{WIFSTOPPED(s) && WSTOPSIG(s) == SIGSTOP}], 0, NULL) = 42");
  EXPECT_EQ(waited(0xffff), "wait4(-1, [{WIFCONTINUED(s)}], 0, NULL) = 42");
  // WNOHANG with no child ready: nothing was written, the pointer is shown.
  EXPECT_EQ(waited(0, 0), "wait4(-1, 0x7ffd0000, 0, NULL) = 0");
  Call wp = call("waitpid", {200, 0xffd0000, 0}, 200, SyscallAbi::kI386);   // i386: the same status word
  const std::uint32_t exited0 = 0;
  wp.exit_caps.push_back(cap(1, K::kBuffer, std::string(reinterpret_cast<const char*>(&exited0), 4), 4));
  EXPECT_EQ(body(wp), "waitpid(200, [{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0) = 200");
  Call x = call("exit_group", {0}, std::nullopt);
  EXPECT_EQ(body(x), "exit_group(0) = ?");
  EXPECT_EQ(body(call("getpid", {}, 77)), "getpid() = 77");
  EXPECT_EQ(body(call("kill", {42, 15}, 0)), "kill(42, SIGTERM) = 0");
  EXPECT_EQ(body(call("tgkill", {42, 43, 9}, 0)), "tgkill(42, 43, SIGKILL) = 0");
  EXPECT_EQ(body(call("rt_sigprocmask", {0, 0x7ffd0000, 0, 8}, 0)), "rt_sigprocmask(SIG_BLOCK, 0x7ffd0000, NULL, 8) = 0");
  EXPECT_EQ(body(call("rt_sigaction", {2, 0x7ffd0000, 0, 8}, 0)), "rt_sigaction(SIGINT, 0x7ffd0000, NULL, 8) = 0");
  EXPECT_EQ(body(call("setresuid", {~0ULL, 1000, ~0ULL}, 0)), "setresuid(-1, 1000, -1) = 0");
  EXPECT_EQ(body(call("setuid", {0xffff}, 0, SyscallAbi::kI386)), "setuid(-1) = 0");   // 16-bit on i386
  EXPECT_EQ(body(call("prctl", {1, 9}, 0)), "prctl(PR_SET_PDEATHSIG, SIGKILL) = 0");
  EXPECT_EQ(body(call("arch_prctl", {0x1002, 0x7f0000000740}, 0)), "arch_prctl(ARCH_SET_FS, 0x7f0000000740) = 0");
}

TEST(Format, DescriptorCalls) {
  EXPECT_EQ(body(call("close", {3}, 0)), "close(3) = 0");
  EXPECT_EQ(body(call("dup2", {3, 1}, 1)), "dup2(3, 1) = 1");
  EXPECT_EQ(body(call("pipe2", {0x7ffd0000, 02000000}, 0)), "pipe2(0x7ffd0000, O_CLOEXEC) = 0");
  Call pp = call("pipe2", {0x7ffd0000, 02000000}, 0);
  pp.exit_caps.push_back(cap(0, K::kBuffer, std::string("\x03\0\0\0\x04\0\0\0", 8), 8));
  EXPECT_EQ(body(pp), "pipe2([3, 4], O_CLOEXEC) = 0");
  Call p1 = call("pipe", {0x7ffd0000}, 0);
  p1.exit_caps.push_back(cap(0, K::kBuffer, std::string("\x05\0\0\0\x06\0\0\0", 8), 8));
  EXPECT_EQ(body(p1), "pipe([5, 6]) = 0");
  EXPECT_EQ(body(call("fcntl", {3, 2, 1}, 0)), "fcntl(3, F_SETFD, FD_CLOEXEC) = 0");
  EXPECT_EQ(body(call("fcntl", {3, 1}, 1)), "fcntl(3, F_GETFD) = 0x1 (flags FD_CLOEXEC)");
  EXPECT_EQ(body(call("fcntl", {3, 3}, 2)), "fcntl(3, F_GETFL) = 0x2 (flags O_RDWR)");
  EXPECT_EQ(body(call("fcntl", {3, 4, 04002}, 0)), "fcntl(3, F_SETFL, O_RDWR|O_NONBLOCK) = 0");
  EXPECT_EQ(body(call("fcntl", {3, 1030, 10}, 10)), "fcntl(3, F_DUPFD_CLOEXEC, 10) = 10");
  EXPECT_EQ(body(call("lseek", {3, 0, 0}, 0)), "lseek(3, 0, SEEK_SET) = 0");
  EXPECT_EQ(body(call("lseek", {3, static_cast<std::uint64_t>(-4), 2}, 96)), "lseek(3, -4, SEEK_END) = 96");
  EXPECT_EQ(body(call("lseek", {3, 0, 9}, -22)), "lseek(3, 0, 0x9 /* SEEK_??? */) = -1 EINVAL (Invalid argument)");
  EXPECT_EQ(body(call("ioctl", {1, 0x5401, 0x7ffd0000}, -25)),
            "ioctl(1, TCGETS, 0x7ffd0000) = -1 ENOTTY (Inappropriate ioctl for device)");
  EXPECT_EQ(body(call("ioctl", {1, 0x5413, 0x7ffd0000}, 0)), "ioctl(1, TIOCGWINSZ, 0x7ffd0000) = 0");
  EXPECT_EQ(body(call("ioctl", {0, 0x540e, 0}, 0)), "ioctl(0, TIOCSCTTY, 0) = 0");
  EXPECT_EQ(body(call("ioctl", {3, 0x5451}, 0)), "ioctl(3, FIOCLEX) = 0");
  Call ws = call("ioctl", {3, 0x5414, 0x7ffd0000}, 0);
  ws.entry_caps.push_back(cap(2, K::kBuffer, std::string("\x18\x00\x50\x00\x00\x00\x00\x00", 8), 8));
  EXPECT_EQ(body(ws), "ioctl(3, TIOCSWINSZ, {ws_row=24, ws_col=80, ws_xpixel=0, ws_ypixel=0}) = 0");
  Call wf = call("ioctl", {3, 0x5414, 0x10}, 0);
  wf.entry_caps.push_back(cap(2, K::kBuffer, "", 8, hvtrace::abi::kCaptureFault));   // unreadable: the pointer
  EXPECT_EQ(body(wf), "ioctl(3, TIOCSWINSZ, 0x10) = 0");
  EXPECT_EQ(body(call("ioctl", {3, 0x80085499, 0x1000}, 0)), "ioctl(3, _IOC(_IOC_READ, 0x54, 0x99, 0x8), 0x1000) = 0");
  EXPECT_EQ(body(call("getdents64", {3, 0x5000, 32768}, 0)), "getdents64(3, 0x5000, 32768) = 0");
}

TEST(Format, FileCalls) {
  Call a = call("access", {0x1000, 6}, 0);
  a.entry_caps.push_back(str(0, "/etc/ld.so.preload"));
  EXPECT_EQ(body(a), R"(access("/etc/ld.so.preload", R_OK|W_OK) = 0)");
  Call f = call("access", {0x1000, 0}, kENOENT);
  f.entry_caps.push_back(str(0, "/x"));
  EXPECT_EQ(body(f), R"(access("/x", F_OK) = -1 ENOENT (No such file or directory))");
  Call n = call("newfstatat", {kFdCwd, 0x1000, 0x7ffd0000, 0x100}, 0);
  n.entry_caps.push_back(str(1, "/tmp"));
  EXPECT_EQ(body(n), R"(newfstatat(AT_FDCWD, "/tmp", 0x7ffd0000, AT_SYMLINK_NOFOLLOW) = 0)");
  Call sx = call("statx", {kFdCwd, 0x1000, 0, 0xfff, 0x7ffd0000}, 0);
  sx.entry_caps.push_back(str(1, "/"));
  EXPECT_EQ(body(sx), R"(statx(AT_FDCWD, "/", AT_STATX_SYNC_AS_STAT, STATX_ALL, 0x7ffd0000) = 0)");
  Call u = call("unlinkat", {kFdCwd, 0x1000, 0x200}, 0);
  u.entry_caps.push_back(str(1, "d"));
  EXPECT_EQ(body(u), R"(unlinkat(AT_FDCWD, "d", AT_REMOVEDIR) = 0)");
  Call m = call("mkdir", {0x1000, 0755}, -17);
  m.entry_caps.push_back(str(0, "/tmp"));
  EXPECT_EQ(body(m), R"(mkdir("/tmp", 0755) = -1 EEXIST (File exists))");
  Call rn = call("rename", {0x1000, 0x2000}, 0);
  rn.entry_caps.push_back(str(0, "a"));
  rn.entry_caps.push_back(str(1, "b"));
  EXPECT_EQ(body(rn), R"(rename("a", "b") = 0)");
  Call ch = call("chown", {0x1000, 0, ~0ULL & 0xffffffff}, 0);
  ch.entry_caps.push_back(str(0, "f"));
  EXPECT_EQ(body(ch), R"(chown("f", 0, -1) = 0)");
  Call g = call("getcwd", {0x1000, 4096}, 6);
  g.exit_caps.push_back(str(0, "/root"));
  EXPECT_EQ(body(g), R"(getcwd("/root", 4096) = 6)");
  Call rl = call("readlink", {0x1000, 0x2000, 4096}, 11);
  rl.entry_caps.push_back(str(0, "/proc/self/exe"));
  rl.exit_caps.push_back(cap(1, K::kBuffer, "/usr/bin/ls", 11));
  EXPECT_EQ(body(rl), R"(readlink("/proc/self/exe", "/usr/bin/ls", 4096) = 11)");
  EXPECT_EQ(body(call("chdir", {0x1000}, 0)), "chdir(0x1000) = 0");
  EXPECT_EQ(body(call("fchmod", {3, 0600}, 0)), "fchmod(3, 0600) = 0");
}

TEST(Format, Sockets) {
  EXPECT_EQ(body(call("socket", {2, 1 | 02000000, 6}, 3)), "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_TCP) = 3");
  EXPECT_EQ(body(call("socket", {1, 2, 0}, 3)), "socket(AF_UNIX, SOCK_DGRAM, 0) = 3");
  Call c = call("connect", {3, 0x1000, 16}, 0);
  c.entry_caps.push_back(cap(1, K::kBuffer, std::string("\x02\x00\x00\x50\x0a\x00\x02\x02\0\0\0\0\0\0\0\0", 16), 16));
  EXPECT_EQ(body(c), R"(connect(3, {sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("10.0.2.2")}, 16) = 0)");
  Call u = call("connect", {3, 0x1000, 110}, kENOENT);
  u.entry_caps.push_back(cap(1, K::kBuffer, std::string("\x01\x00/run/x.sock\0", 15), 15));
  EXPECT_EQ(body(u), R"(connect(3, {sa_family=AF_UNIX, sun_path="/run/x.sock"}, 110) = -1 ENOENT (No such file or directory))");
  std::string six(28, '\0');
  six[0] = 10;
  six[2] = 0x01;
  six[3] = static_cast<char>(0xbb);
  six[23] = 1;   // ::1
  Call b = call("bind", {3, 0x1000, 28}, 0);
  b.entry_caps.push_back(cap(1, K::kBuffer, six, 28));
  EXPECT_EQ(body(b), R"(bind(3, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0)");
  EXPECT_EQ(body(call("connect", {3, 0x1000, 16}, 0)), "connect(3, 0x1000, 16) = 0");
  EXPECT_EQ(body(call("accept4", {3, 0, 0, 02000000}, 4)), "accept4(3, NULL, NULL, SOCK_CLOEXEC) = 4");
  EXPECT_EQ(body(call("listen", {3, 128}, 0)), "listen(3, 128) = 0");
  // The monitor copies a fixed 110 bytes of accept's/getpeername's sockaddr (its length is behind
  // a pointer): the family says how much of it is the address.
  std::string peer(110, '\x7f');
  peer.replace(0, 16, std::string("\x02\x00\xa2\x3c\x0a\x00\x02\x02\0\0\0\0\0\0\0\0", 16));
  Call a4 = call("accept4", {3, 0x7ffc1000, 0x7ffc0ffc, 02000000}, 5);
  a4.exit_caps.push_back(cap(1, K::kBuffer, peer, 110));
  EXPECT_EQ(body(a4), R"(accept4(3, {sa_family=AF_INET, sin_port=htons(41532), sin_addr=inet_addr("10.0.2.2")}, 0x7ffc0ffc, SOCK_CLOEXEC) = 5)");
  Call gp = call("getpeername", {5, 0x7ffc1000, 0x7ffc0ffc}, 0);
  gp.exit_caps.push_back(cap(1, K::kBuffer, peer, 110));
  EXPECT_EQ(body(gp), R"(getpeername(5, {sa_family=AF_INET, sin_port=htons(41532), sin_addr=inet_addr("10.0.2.2")}, 0x7ffc0ffc) = 0)");
  Call gf = call("getsockname", {5, 0x7ffc1000, 0x7ffc0ffc}, -9);
  gf.exit_caps.push_back(cap(1, K::kBuffer, peer, 110));   // a failed call shows the pointer
  EXPECT_EQ(body(gf), "getsockname(5, 0x7ffc1000, 0x7ffc0ffc) = -1 EBADF (Bad file descriptor)");
  Call s = call("sendto", {3, 0x1000, 2, 0x4000, 0, 0}, 2);
  s.entry_caps.push_back(cap(1, K::kBuffer, "hi", 2));
  EXPECT_EQ(body(s), R"(sendto(3, "hi", 2, MSG_NOSIGNAL, NULL, 0) = 2)");
}

TEST(Format, UnknownAndGeneric) {
  Call g = call("getrandom", {0x7ffd0000, 8, 1}, 8);
  EXPECT_EQ(body(g), "getrandom(0x7ffd0000, 0x8, 0x1) = 8");
  Call u;
  u.nr = 999;
  u.args[0] = 1;
  u.ret = -38;
  EXPECT_EQ(body(u), "syscall_0x3e7(0x1, 0, 0, 0, 0, 0) = -1 ENOSYS (Function not implemented)");
}

TEST(Format, Returns) {
  EXPECT_EQ(format_return(call("read", {0, 0, 1}, -512)), "? ERESTARTSYS (To be restarted if SA_RESTART is set)");
  EXPECT_EQ(format_return(call("read", {0, 0, 1}, -4096)), "-4096");
  EXPECT_EQ(format_return(call("read", {0, 0, 1}, -600)), "-1 (errno 600)");
  // i386: the return is the low 32 bits, sign-extended.
  EXPECT_EQ(format_return(call("read", {0, 0, 1}, 0xfffffffe, SyscallAbi::kI386)),
            "-1 ENOENT (No such file or directory)");
  EXPECT_EQ(format_return(call("read", {0, 0, 1}, std::nullopt)), "?");
}

TEST(Format, LinePaddingAndUnfinishedBody) {
  EXPECT_EQ(line(call("close", {3}, 0)), "close(3)                                = 0");   // host strace
  Call o = call("openat", {kFdCwd, 0x1000, 02000000}, 3);
  o.entry_caps.push_back(str(1, "/etc/ld.so.cache"));
  EXPECT_EQ(line(o), R"(openat(AT_FDCWD, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3)");
  EXPECT_EQ(to_text(format_call(call("close", {3}, 0), {}), 35), "close(3) = 0");
  Call r = call("read", {0, 0x1000, 1}, std::nullopt);
  EXPECT_EQ(format_args(r, {}), "(0, 0x1000, 1)");
}

TEST(Format, HostileCapturesNeverOverrun) {
  // true_len smaller than data: only true_len bytes.
  Call w = call("write", {1, 0x5000, 100}, 100);
  w.entry_caps.push_back(cap(1, K::kBuffer, "abcdef", 2));
  EXPECT_EQ(body(w), R"(write(1, "ab", 100) = 100)");
  // huge true_len, tiny data, huge string limit.
  Call h = call("write", {1, 0x5000, 100}, 100);
  h.entry_caps.push_back(cap(1, K::kBuffer, "ab", ~0ULL));
  EXPECT_EQ(body(h, ~0U), R"(write(1, "ab"..., 100) = 100)");
  // argv that claims a million entries and holds an unterminated string.
  Call e = call("execve", {0x1000, 0x2000, 0x3000}, 0);
  e.entry_caps.push_back(cap(0, K::kString, std::string("/bin/x\0junk", 11), 6));
  e.entry_caps.push_back(cap(1, K::kArgv, std::string("a\0bcd", 5), 1000000));
  e.entry_caps.push_back(cap(7, K::kString, "ignored", 7));   // arg index out of range
  EXPECT_EQ(body(e), R"(execve("/bin/x", ["a", "bcd"..., ...], 0x3000) = 0)");
  // argv count smaller than the strings present: only count entries.
  Call f = call("execve", {0x1000, 0x2000, 0x3000}, 0);
  f.entry_caps.push_back(cap(1, K::kArgv, std::string("a\0b\0c\0", 6), 1));
  EXPECT_EQ(body(f), R"(execve(0x1000, ["a"], 0x3000) = 0)");
  // A short sockaddr prints as a pointer; a string capture with no NUL and a lying length.
  Call c = call("connect", {3, 0x1000, 16}, 0);
  c.entry_caps.push_back(cap(1, K::kBuffer, "\x02", 16));
  EXPECT_EQ(body(c), "connect(3, 0x1000, 16) = 0");
  Call s = call("unlink", {0x1000}, 0);
  s.entry_caps.push_back(cap(0, K::kString, "abc", 1, hvtrace::abi::kCaptureLenUnknown));
  EXPECT_EQ(body(s), R"(unlink("abc"...) = 0)");
}

