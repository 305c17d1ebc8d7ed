// The monitor's pure parts, without QEMU: instruction recognition, plugin-argument parsing and
// control-message validation (every rejected message leaves the configuration untouched), and
// the plugin's exported symbols (only QEMU's two entry points).
#include "config.hpp"
#include "syscall_captures.hpp"

#include <tuple>
#include "x86.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <set>
#include <sstream>

namespace hvtrace::monitor {
namespace {

TEST(X86, MovToCr3FromEveryRegister) {
  for (int reg = 0; reg < 16; ++reg) {
    std::uint8_t b[4];
    std::size_t n = 0;
    if (reg >= 8) b[n++] = 0x41;  // REX.B
    b[n++] = 0x0f;
    b[n++] = 0x22;
    b[n++] = static_cast<std::uint8_t>(0xc0 | (3 << 3) | (reg & 7));
    EXPECT_EQ(mov_to_cr3_source(b, n), reg);
  }
  const std::uint8_t mov_cr4[] = {0x0f, 0x22, 0xe0};         // mov %rax,%cr4
  const std::uint8_t mov_from_cr3[] = {0x0f, 0x20, 0xd8};    // mov %cr3,%rax
  const std::uint8_t rex_r[] = {0x44, 0x0f, 0x22, 0xd8};     // REX.R: cr11, not cr3
  const std::uint8_t mem_form[] = {0x0f, 0x22, 0x18};        // mod != 3
  EXPECT_EQ(mov_to_cr3_source(mov_cr4, 3), -1);
  EXPECT_EQ(mov_to_cr3_source(mov_from_cr3, 3), -1);
  EXPECT_EQ(mov_to_cr3_source(rex_r, 4), -1);
  EXPECT_EQ(mov_to_cr3_source(mem_form, 3), -1);
  EXPECT_EQ(mov_to_cr3_source(mov_cr4, 2), -1);
}

TEST(X86, SyscallSysretIret) {
  const std::uint8_t sc[] = {0x0f, 0x05}, sr[] = {0x48, 0x0f, 0x07}, sr32[] = {0x0f, 0x07}, ir[] = {0x48, 0xcf},
                     ir32[] = {0xcf};
  EXPECT_TRUE(is_syscall(sc, 2));
  EXPECT_TRUE(is_sysretq(sr, 3));
  EXPECT_FALSE(is_sysretq(sr32, 2));
  EXPECT_TRUE(is_iretq(ir, 2));
  EXPECT_FALSE(is_iretq(ir32, 1));
  EXPECT_TRUE(is_kernel_va(0xffffffff81000000ULL));
  EXPECT_FALSE(is_kernel_va(0x00007fffffffe000ULL));
}

TEST(CaptureTable, RowsAreUniqueAndArgumentsValid) {
  std::set<std::tuple<int, int, bool>> seen;
  for (const auto& r : kCaptureTable) {
    EXPECT_TRUE(seen.insert({r.table, r.nr, r.at_exit}).second) << int{r.table} << " " << r.nr;
    EXPECT_LE(r.table, 1);
    for (unsigned i = 0; i < r.n; ++i) {
      EXPECT_LT(r.c[i].arg, 6);
      EXPECT_TRUE(r.c[i].len_arg == -1 || r.c[i].len_arg == kFixedLen || (r.c[i].len_arg == kIovecLen && r.c[i].arg < 5) ||
                  (r.c[i].len_arg == kCountOnly && r.c[i].kind == abi::CaptureKind::kArgv) ||
                  (r.c[i].len_arg >= 0 && r.c[i].len_arg < 6))
          << r.nr;
      // A fixed length is a buffer's, bounded and non-zero.
      if (r.c[i].len_arg == kFixedLen) {
        EXPECT_EQ(r.c[i].kind, abi::CaptureKind::kBuffer) << r.nr;
        EXPECT_GT(r.c[i].fixed, 0) << r.nr;
        EXPECT_LE(r.c[i].fixed, 256) << r.nr;
      }
    }
  }
  // What `hvtrace session` needs (x86-64): the peer's sockaddr at accept/accept4/getpeername/
  // getsockname's exit, ioctl's argument at entry (TIOCSWINSZ), pipe/pipe2's fds at exit.
  for (const unsigned nr : {43u, 288u, 51u, 52u}) {
    const auto* row = find_captures(0, nr, true);
    ASSERT_NE(row, nullptr) << nr;
    EXPECT_EQ(row->c[0].arg, 1);
    EXPECT_EQ(row->c[0].len_arg, kFixedLen);
    EXPECT_GE(row->c[0].fixed, 28u);   // sockaddr_in6
  }
  // execve/execveat (both tables): the path, argv, and envp counted (strace's "/* N vars */").
  for (const auto& [table, nr, envp] : {std::tuple{0, 59u, 2}, std::tuple{0, 322u, 3}, std::tuple{1, 11u, 2}, std::tuple{1, 358u, 3}}) {
    const auto* row = find_captures(table, nr, false);
    ASSERT_NE(row, nullptr) << nr;
    ASSERT_EQ(row->n, 3) << nr;
    EXPECT_EQ(row->c[2].arg, envp) << nr;
    EXPECT_EQ(row->c[2].len_arg, kCountOnly) << nr;
  }
  ASSERT_NE(find_captures(0, 16, false), nullptr);
  EXPECT_EQ(find_captures(0, 16, false)->c[0].arg, 2);
  EXPECT_EQ(find_captures(0, 16, false)->c[0].fixed, 8u);   // struct winsize
  for (const unsigned nr : {22u, 293u}) {
    ASSERT_NE(find_captures(0, nr, true), nullptr) << nr;
    EXPECT_EQ(find_captures(0, nr, true)->c[0].arg, 0);
    EXPECT_EQ(find_captures(0, nr, true)->c[0].fixed, 8u);   // int[2]
  }
  EXPECT_NE(find_captures(0, 1, false), nullptr);   // write: buffer at entry
  EXPECT_NE(find_captures(0, 0, true), nullptr);    // read: buffer at exit
  EXPECT_EQ(find_captures(0, 0, false), nullptr);
  EXPECT_NE(find_captures(1, 4, false), nullptr);   // i386 write
  EXPECT_NE(find_captures(1, 11, false), nullptr);  // i386 execve
  EXPECT_EQ(find_captures(1, 1, false), nullptr);   // i386 exit: nothing to copy
  // What the kernel writes back through a pointer, i386 numbers like x86-64's: wait status
  // (waitpid 7, wait4 114 / x86-64 61), pipe fds (42, 331), and the socket calls' sockaddrs.
  for (const auto& [table, nr, arg, fixed] : {std::tuple{0u, 61u, 1, 4u}, std::tuple{1u, 7u, 1, 4u}, std::tuple{1u, 114u, 1, 4u},
                                              std::tuple{1u, 42u, 0, 8u}, std::tuple{1u, 331u, 0, 8u},
                                              std::tuple{1u, 364u, 1, 110u}, std::tuple{1u, 368u, 1, 110u}}) {
    const auto* row = find_captures(table, nr, true);
    ASSERT_NE(row, nullptr) << table << ":" << nr;
    EXPECT_EQ(row->c[0].arg, arg) << nr;
    EXPECT_EQ(row->c[0].len_arg, kFixedLen) << nr;
    EXPECT_EQ(row->c[0].fixed, fixed) << nr;
  }
  for (const unsigned nr : {361u, 362u}) {   // i386 bind, connect: sockaddr of addrlen bytes at entry
    ASSERT_NE(find_captures(1, nr, false), nullptr) << nr;
    EXPECT_EQ(find_captures(1, nr, false)->c[0].len_arg, 2) << nr;
  }
}

Options parse_ok(std::vector<const char*> args) {
  Options o;
  std::string why;
  EXPECT_TRUE(parse_options(static_cast<int>(args.size()), args.data(), &o, &why)) << why;
  return o;
}

std::string parse_err(std::vector<const char*> args) {
  Options o;
  std::string why;
  EXPECT_FALSE(parse_options(static_cast<int>(args.size()), args.data(), &o, &why));
  return why;
}

TEST(Options, DefaultsAndEveryKey) {
  Options o = parse_ok({"shm=/r/m.rings"});
  EXPECT_EQ(o.ring_bytes, abi::kDefaultRingBytes);
  EXPECT_EQ(o.initial.snap_len, 256u);
  EXPECT_EQ(o.initial.dtb_mode, abi::DtbMode::kAll);
  EXPECT_EQ(o.initial.action(EventClass::kCr3), Action::kDrop);
  o = parse_ok({"shm=/r/m", "ctl=/r/c", "ring_kib=2048", "entry=0xffffffff81a00000", "bp=0xffffffff81000010",
                "dtb=0x1234000", "dtb=0x2000", "syscalls=0:1:59", "cr3_action=sync", "entry_action=async",
                "exit_action=async", "bp_action=drop", "snaplen=65536", "sync_wait=spin", "sync_spin_us=5",
                "sync_timeout_ms=10"});
  EXPECT_EQ(o.ring_bytes, 2048u * 1024);
  EXPECT_EQ(o.entry_va, 0xffffffff81a00000ULL);
  ASSERT_EQ(o.initial.n_bps, 1u);   // a kernel breakpoint in every address space, action bp_action=
  EXPECT_EQ(o.initial.bps[0].va, 0xffffffff81000010ULL);
  EXPECT_EQ(o.initial.bps[0].id, abi::kInitialBreakpointId);
  EXPECT_EQ(o.initial.bps[0].kind, abi::BreakpointKind::kKernel);
  EXPECT_EQ(o.initial.bps[0].action, Action::kDrop);
  EXPECT_EQ(o.initial.bps[0].n_dtbs, 0u);
  EXPECT_EQ(o.initial.dtb_mode, abi::DtbMode::kSet);
  EXPECT_TRUE(o.initial.dtb_passes(0x1234000));
  EXPECT_FALSE(o.initial.dtb_passes(0x3000));
  EXPECT_TRUE(o.initial.syscall_passes(abi::SyscallAbi::kX86_64, 59));
  EXPECT_FALSE(o.initial.syscall_passes(abi::SyscallAbi::kX86_64, 2));
  EXPECT_FALSE(o.initial.syscall_passes(abi::SyscallAbi::kX86_64, 100000));
  EXPECT_TRUE(o.initial.syscall_passes(abi::SyscallAbi::kX32, 59 | 0x40000000));  // x32 shares the x86-64 set
  EXPECT_TRUE(o.initial.syscall_passes(abi::SyscallAbi::kI386, 4));                // i386 set untouched: all
  EXPECT_EQ(o.initial.action(EventClass::kCr3), Action::kSync);
  EXPECT_EQ(o.initial.snap_len, 65536u);
  EXPECT_EQ(o.sync_wait, abi::WaitMode::kSpin);
  EXPECT_EQ(o.sync_timeout_ns, 10'000'000u);
  EXPECT_FALSE(o.detect_everywhere);   // default: door detection in the entry-text window only
  EXPECT_FALSE(o.count_checks);
  o = parse_ok({"shm=/r/m", "detect=everywhere", "countchecks=on", "icount=on", "selftime=on", "cr3_unfiltered=on"});
  EXPECT_TRUE(o.detect_everywhere);
  EXPECT_TRUE(o.count_checks);
  EXPECT_TRUE(o.icount);
  EXPECT_TRUE(o.selftime);
  EXPECT_TRUE(o.initial.cr3_unfiltered);
  o = parse_ok({"shm=/r/m", "detect=everywhere", "detect=window", "countchecks=off"});   // the last one wins
  EXPECT_FALSE(o.detect_everywhere);
  EXPECT_FALSE(o.count_checks);
}

TEST(Options, BadArgumentsSayWhichAndWhy) {
  EXPECT_NE(parse_err({"shm=/a", "bogus=1"}).find("'bogus=1': unknown key"), std::string::npos);
  EXPECT_NE(parse_err({"noequals"}).find("not key=value"), std::string::npos);
  EXPECT_NE(parse_err({}).find("missing shm"), std::string::npos);
  EXPECT_NE(parse_err({"shm=rel"}).find("absolute path"), std::string::npos);
  EXPECT_NE(parse_err({"shm=/a", "ring_kib=100"}).find("power of two"), std::string::npos);
  EXPECT_NE(parse_err({"shm=/a", "ring_kib=32"}).find("power of two"), std::string::npos);
  EXPECT_NE(parse_err({"shm=/a", "snaplen=65537"}).find("0..65536"), std::string::npos);
  // Two captures of 64 KiB must fit a record: a snap length the rings cannot carry is refused,
  // instead of every event with such captures being dropped as too big.
  EXPECT_NE(parse_err({"shm=/a", "ring_kib=64", "snaplen=65536"}).find("larger ring"), std::string::npos);
  EXPECT_NE(parse_err({"shm=/a", "snaplen=-1"}).find("0..65536"), std::string::npos);
  EXPECT_NE(parse_err({"shm=/a", "snaplen=12abc"}).find("0..65536"), std::string::npos);
  EXPECT_NE(parse_err({"shm=/a", "dtb=0x1001"}).find("page-table base"), std::string::npos);
  EXPECT_NE(parse_err({"shm=/a", "entry=0x400000"}).find("kernel virtual address"), std::string::npos);
  EXPECT_NE(parse_err({"shm=/a", "syscalls=1:512"}).find("0..511"), std::string::npos);
  EXPECT_NE(parse_err({"shm=/a", "syscalls=1::2"}).find("0..511"), std::string::npos);
  EXPECT_NE(parse_err({"shm=/a", "exit_action=later"}).find("drop, async or sync"), std::string::npos);
  EXPECT_NE(parse_err({"shm=/a", "sync_timeout_ms=0"}).find("1..60000"), std::string::npos);
  EXPECT_NE(parse_err({"shm=/a", "detect=somewhere"}).find("window or everywhere"), std::string::npos);
  EXPECT_NE(parse_err({"shm=/a", "countchecks=yes"}).find("on or off"), std::string::npos);
  EXPECT_NE(parse_err({"shm=/a", "icount=1"}).find("on or off"), std::string::npos);
  std::vector<const char*> many = {"shm=/a"};
  for (int i = 0; i < 65; ++i) many.push_back("bp=0xffffffff81000000");
  EXPECT_NE(parse_err(many).find("at most 64"), std::string::npos);
}

template <typename M>
M message(abi::CtlType t) {
  M m{};
  reinterpret_cast<abi::CtlHeader&>(m) =
      abi::CtlHeader{abi::kCtlMagic, static_cast<std::uint16_t>(abi::kAbiVersion), static_cast<std::uint16_t>(t), sizeof(M), 1};
  return m;
}

template <typename M>
abi::CtlStatus apply(const M& m, const FilterConfig& cur, FilterConfig* next, std::size_t len = sizeof(M)) {
  abi::CtlType type{};
  std::string why;
  const auto st = apply_control(&m, len, cur, next, &type, &why);
  if (st != abi::CtlStatus::kOk) {
    EXPECT_FALSE(why.empty());
  }
  return st;
}

TEST(Control, TheDtbPreFilterForwardsSwitchesNotPtiFlips) {
  FilterConfig c;
  c.dtb_mode = abi::DtbMode::kSet;
  c.n_dtbs = 1;
  c.dtbs[0] = 0x7ffe000;
  // A switch to or from the monitored process passes; one between two others does not.
  EXPECT_TRUE(c.cr3_write_passes(0x10000, 0x7ffe000));
  EXPECT_TRUE(c.cr3_write_passes(0x7ffe000, 0x10000));
  EXPECT_FALSE(c.cr3_write_passes(0x10000, 0x20000));
  // PTI's kernel <-> user flip of the monitored process itself (cr3 0x7ffe000 <-> 0x7fff000, both
  // DTB 0x7ffe000) says nothing about who runs.
  EXPECT_EQ(abi::dtb_of_cr3(0x7fff000 | (1ULL << 63) | 0x801), 0x7ffe000u);
  EXPECT_FALSE(c.cr3_write_passes(abi::dtb_of_cr3(0x7ffe000), abi::dtb_of_cr3(0x7fff000 | 0x801)));
  // Asked for every write (method 3's ablation, or every DTB): all pass, flips included.
  c.cr3_unfiltered = true;
  EXPECT_TRUE(c.cr3_write_passes(0x7ffe000, 0x7ffe000));
  EXPECT_TRUE(c.cr3_write_passes(0x10000, 0x20000));
  c.cr3_unfiltered = false;
  c.dtb_mode = abi::DtbMode::kAll;
  EXPECT_TRUE(c.cr3_write_passes(0x7ffe000, 0x7ffe000));
}

// Leaving only (method 5's tracer: it acts on an exec's switch to its new mm): a write from a DTB
// of the set passes, to anywhere (an exec's new mm may be on a page-table page of the set whose
// process just exited); a switch into the set from outside does not. Set by SET_ACTIONS' flag.
TEST(Control, LeavingOnlyForwardsWritesFromTheSetNotIntoIt) {
  FilterConfig cur, c;
  cur.dtb_mode = abi::DtbMode::kSet;
  cur.n_dtbs = 2;
  cur.dtbs[0] = 0x7ffe000;
  cur.dtbs[1] = 0x5000;
  auto a = message<abi::SetActionsMsg>(abi::CtlType::kSetActions);
  a.actions[0] = 2;
  a.flags = abi::kActionCr3LeavingOnly;
  ASSERT_EQ(apply(a, cur, &c), abi::CtlStatus::kOk);
  EXPECT_TRUE(c.cr3_write_passes(0x7ffe000, 0x10000));   // leaving the set: a switch away or an exec
  EXPECT_TRUE(c.cr3_write_passes(0x7ffe000, 0x5000));    // from the set to another DTB in it
  EXPECT_FALSE(c.cr3_write_passes(0x10000, 0x7ffe000));  // entering it from outside
  EXPECT_FALSE(c.cr3_write_passes(0x10000, 0x20000));
  EXPECT_FALSE(c.cr3_write_passes(0x7ffe000, 0x7ffe000));
  c.dtb_mode = abi::DtbMode::kAll;                       // no set: every write, as before
  EXPECT_TRUE(c.cr3_write_passes(0x10000, 0x7ffe000));
  a.flags = 1u << 2;                                     // an unknown flag is refused
  FilterConfig bad;
  EXPECT_EQ(apply(a, cur, &bad), abi::CtlStatus::kBadValue);
}

TEST(Control, TheReadDataSetIsSeparateFromTheDtbFilter) {
  FilterConfig cur, next;
  EXPECT_TRUE(cur.read_data_passes(0x7ffe000));   // default: every DTB's read data is copied
  auto d = message<abi::SetDtbsMsg>(abi::CtlType::kSetReadDataDtbs);
  d.mode = 1;
  d.count = 1;
  d.dtbs[0] = 0x10000;
  ASSERT_EQ(apply(d, cur, &next), abi::CtlStatus::kOk);
  EXPECT_TRUE(next.read_data_passes(0x10000));
  EXPECT_FALSE(next.read_data_passes(0x7ffe000));
  EXPECT_TRUE(next.dtb_passes(0x7ffe000));         // the DTB filter is untouched
  d.dtbs[0] = 0x10001;                             // validated as SET_DTBS is
  FilterConfig bad;
  EXPECT_EQ(apply(d, next, &bad), abi::CtlStatus::kBadValue);
  d = message<abi::SetDtbsMsg>(abi::CtlType::kSetReadDataDtbs);   // mode all: back to every DTB
  FilterConfig n2;
  ASSERT_EQ(apply(d, next, &n2), abi::CtlStatus::kOk);
  EXPECT_TRUE(n2.read_data_passes(0x7ffe000));
}

// openat (x86-64 257) for writing only, read (i386 3) never, for the processes outside the
// read-data set; inside it, and for calls without a rule, nothing changes.
TEST(Control, ArgumentRulesHoldBackCallsOnlyOutsideTheReadDataSet) {
  FilterConfig cur, with_set, next;
  auto d = message<abi::SetDtbsMsg>(abi::CtlType::kSetReadDataDtbs);
  d.mode = 1;
  d.count = 1;
  d.dtbs[0] = 0x10000;
  ASSERT_EQ(apply(d, cur, &with_set), abi::CtlStatus::kOk);
  auto r = message<abi::SetArgRulesMsg>(abi::CtlType::kSetArgRules);
  r.count = 2;
  r.rules[0] = abi::ArgRule{257, 0, 2, 0, 0x643};
  r.rules[1] = abi::ArgRule{3, 1, 0, 0, 0};
  ASSERT_EQ(apply(r, with_set, &next), abi::CtlStatus::kOk);
  const std::uint64_t rdonly[6] = {0xffffff9c, 0x1000, 0x80000, 0, 0, 0};   // O_RDONLY | O_CLOEXEC
  const std::uint64_t creat[6] = {0xffffff9c, 0x1000, 0x241, 0644, 0, 0};  // O_WRONLY | O_CREAT | O_TRUNC
  const auto x64 = abi::SyscallAbi::kX86_64;
  const auto i386 = abi::SyscallAbi::kI386;
  EXPECT_FALSE(next.args_pass(x64, 257, rdonly, 0x7ffe000));
  EXPECT_TRUE(next.args_pass(x64, 257, creat, 0x7ffe000));
  EXPECT_TRUE(next.args_pass(x64, 257, rdonly, 0x10000));                  // the server's: everything
  EXPECT_FALSE(next.args_pass(abi::SyscallAbi::kX32, 257 | abi::kX32SyscallBit, rdonly, 0x7ffe000));
  EXPECT_FALSE(next.args_pass(i386, 3, creat, 0x7ffe000));                // mask 0: never
  // ... which the monitor decides before reading the arguments; a rule with a mask needs them.
  EXPECT_TRUE(next.never_passes(i386, 3, 0x7ffe000));
  EXPECT_FALSE(next.never_passes(i386, 3, 0x10000));                       // inside the read-data set
  EXPECT_FALSE(next.never_passes(x64, 257, 0x7ffe000));
  EXPECT_FALSE(next.never_passes(x64, 3, 0x7ffe000));                      // no rule
  EXPECT_TRUE(next.args_pass(x64, 3, rdonly, 0x7ffe000));                  // x86-64 close: no rule
  EXPECT_TRUE(next.args_pass(i386, 257, rdonly, 0x7ffe000));               // the rule is x86-64's
  EXPECT_FALSE(next.all_pass());   // an exit whose entry was not seen may be one held back
  EXPECT_TRUE(cur.args_pass(x64, 257, rdonly, 0x7ffe000));   // no rules: no change
  FilterConfig all_dtbs;           // the read-data set in mode all holds every process: no rule applies
  ASSERT_EQ(apply(r, cur, &all_dtbs), abi::CtlStatus::kOk);
  EXPECT_TRUE(all_dtbs.args_pass(x64, 257, rdonly, 0x7ffe000));
  FilterConfig cleared;            // count 0 removes them
  ASSERT_EQ(apply(message<abi::SetArgRulesMsg>(abi::CtlType::kSetArgRules), next, &cleared), abi::CtlStatus::kOk);
  EXPECT_TRUE(cleared.args_pass(x64, 257, rdonly, 0x7ffe000));
  EXPECT_TRUE(cleared.all_pass());
  // Refused, with nothing changed: too many, a number or argument out of range, two rules for
  // one call, a rule past the count, reserved bits.
  std::string why;
  const auto refused = [&](abi::SetArgRulesMsg m) {
    FilterConfig out;
    abi::CtlType type{};
    return apply_control(&m, sizeof m, next, &out, &type, &why) == abi::CtlStatus::kBadValue && !why.empty();
  };
  auto bad = r;
  bad.count = abi::kMaxArgRules + 1;
  EXPECT_TRUE(refused(bad));
  bad = r;
  bad.rules[0].nr = abi::kSyscallBits;
  EXPECT_TRUE(refused(bad));
  bad = r;
  bad.rules[1].arg = 6;
  EXPECT_TRUE(refused(bad));
  bad = r;
  bad.rules[1] = bad.rules[0];
  EXPECT_TRUE(refused(bad));
  EXPECT_NE(why.find("same call"), std::string::npos) << why;
  bad = r;
  bad.rules[5].mask = 1;
  EXPECT_TRUE(refused(bad));
  bad = r;
  bad.rules[0].abi = 2;
  EXPECT_TRUE(refused(bad));
  bad = r;
  bad.reserved = 1;
  EXPECT_TRUE(refused(bad));
}

TEST(Control, ValidChangesBumpTheGeneration) {
  FilterConfig cur, next;
  auto d = message<abi::SetDtbsMsg>(abi::CtlType::kSetDtbs);
  d.mode = 1;
  d.count = 2;
  d.dtbs[0] = 0x10000;
  d.dtbs[1] = 0x7ffe000;
  ASSERT_EQ(apply(d, cur, &next), abi::CtlStatus::kOk);
  EXPECT_EQ(next.generation, 1u);
  EXPECT_TRUE(next.dtb_passes(0x7ffe000));
  EXPECT_FALSE(next.dtb_passes(0x20000));
  auto a = message<abi::SetActionsMsg>(abi::CtlType::kSetActions);
  a.actions[0] = 2;
  a.actions[1] = 1;
  FilterConfig n2;
  ASSERT_EQ(apply(a, next, &n2), abi::CtlStatus::kOk);
  EXPECT_EQ(n2.generation, 2u);
  EXPECT_EQ(n2.action(EventClass::kCr3), Action::kSync);
  EXPECT_TRUE(n2.dtb_passes(0x7ffe000));  // the rest is carried over
  auto s = message<abi::SetSyscallsMsg>(abi::CtlType::kSetSyscalls);
  s.bitmap[0] = 1ULL << 59;
  ASSERT_EQ(apply(s, n2, &next), abi::CtlStatus::kOk);
  EXPECT_TRUE(next.syscall_passes(abi::SyscallAbi::kX86_64, 59));
  EXPECT_FALSE(next.syscall_passes(abi::SyscallAbi::kX86_64, 1));
  EXPECT_TRUE(next.syscall_passes(abi::SyscallAbi::kI386, 1));
  auto s32 = message<abi::SetSyscallsMsg>(abi::CtlType::kSetSyscalls);
  s32.abi = 1;
  s32.bitmap[0] = 1ULL << 4;
  FilterConfig n3;
  ASSERT_EQ(apply(s32, next, &n3), abi::CtlStatus::kOk);
  EXPECT_TRUE(n3.syscall_passes(abi::SyscallAbi::kI386, 4));
  EXPECT_FALSE(n3.syscall_passes(abi::SyscallAbi::kI386, 1));
  EXPECT_TRUE(n3.syscall_passes(abi::SyscallAbi::kX86_64, 59));   // the other table is kept
  EXPECT_FALSE(n3.all_pass());
  auto sn = message<abi::SetSnapLenMsg>(abi::CtlType::kSetSnapLen);
  sn.snap_len = 4096;
  ASSERT_EQ(apply(sn, next, &n2), abi::CtlStatus::kOk);
  EXPECT_EQ(n2.snap_len, 4096u);
}

TEST(Control, IdentityAndSyncSyscallsAreValidated) {
  FilterConfig cur, next;
  auto id = message<abi::SetIdentityMsg>(abi::CtlType::kSetIdentity);
  id.current_task_off = 0x21440;
  id.pid_off = 0x5b8;
  id.tgid_off = 0x5bc;
  ASSERT_EQ(apply(id, cur, &next), abi::CtlStatus::kOk);
  EXPECT_EQ(next.current_task_off, 0x21440u);
  EXPECT_EQ(next.tgid_off, 0x5bcu);
  auto bad = id;
  bad.pid_off = 0x5b9;                       // misaligned
  EXPECT_EQ(apply(bad, cur, &next), abi::CtlStatus::kBadValue);
  bad = id;
  bad.tgid_off = abi::kMaxTaskOffset;        // outside any task_struct
  EXPECT_EQ(apply(bad, cur, &next), abi::CtlStatus::kBadValue);
  bad = id;
  bad.current_task_off = abi::kMaxPerCpuOffset;
  EXPECT_EQ(apply(bad, cur, &next), abi::CtlStatus::kBadValue);

  auto sy = message<abi::SetSyscallsMsg>(abi::CtlType::kSetSyncSyscalls);
  sy.bitmap[0] = 1ULL << 56 | 1ULL << 57;    // clone, fork
  ASSERT_EQ(apply(sy, cur, &next), abi::CtlStatus::kOk);
  EXPECT_TRUE(next.exit_forced_sync(abi::SyscallAbi::kX86_64, 56));
  EXPECT_FALSE(next.exit_forced_sync(abi::SyscallAbi::kX86_64, 1));
  EXPECT_FALSE(next.exit_forced_sync(abi::SyscallAbi::kI386, 56));
  EXPECT_TRUE(next.syscall_passes(abi::SyscallAbi::kX86_64, 1)) << "the sync set does not filter";
  sy.all = 1;
  sy.bitmap[0] = 0;
  EXPECT_EQ(apply(sy, cur, &next), abi::CtlStatus::kBadValue);
}

TEST(Control, EveryMalformedMessageIsRejectedWithAReason) {
  FilterConfig cur, next;
  next.generation = 77;
  auto d = message<abi::SetDtbsMsg>(abi::CtlType::kSetDtbs);
  // Truncated, and too long.
  EXPECT_EQ(apply(d, cur, &next, sizeof d - 8), abi::CtlStatus::kBadSize);
  EXPECT_EQ(apply(d, cur, &next, 3), abi::CtlStatus::kBadSize);
  auto bad = d;
  bad.hdr.magic = 0;
  EXPECT_EQ(apply(bad, cur, &next), abi::CtlStatus::kBadMagic);
  bad = d;
  bad.hdr.version = abi::kAbiVersion + 1;
  EXPECT_EQ(apply(bad, cur, &next), abi::CtlStatus::kBadVersion);
  bad = d;
  bad.hdr.type = 99;
  EXPECT_EQ(apply(bad, cur, &next), abi::CtlStatus::kBadType);
  bad = d;
  bad.hdr.size = 16;
  EXPECT_EQ(apply(bad, cur, &next), abi::CtlStatus::kBadSize);
  bad = d;
  bad.mode = 2;
  EXPECT_EQ(apply(bad, cur, &next), abi::CtlStatus::kBadValue);
  bad = d;
  bad.mode = 1;
  bad.count = 65;
  EXPECT_EQ(apply(bad, cur, &next), abi::CtlStatus::kBadValue);
  bad.count = 1;
  bad.dtbs[0] = 0x1000;  // bit 12
  EXPECT_EQ(apply(bad, cur, &next), abi::CtlStatus::kBadValue);
  bad.dtbs[0] = 0x8000000000002000ULL;  // bit 63
  EXPECT_EQ(apply(bad, cur, &next), abi::CtlStatus::kBadValue);
  bad.dtbs[0] = 0x2000;
  bad.dtbs[5] = 0x4000;  // past count
  EXPECT_EQ(apply(bad, cur, &next), abi::CtlStatus::kBadValue);
  bad = d;
  bad.mode = 0;
  bad.count = 1;
  EXPECT_EQ(apply(bad, cur, &next), abi::CtlStatus::kBadValue);
  auto a = message<abi::SetActionsMsg>(abi::CtlType::kSetActions);
  a.actions[3] = 3;
  EXPECT_EQ(apply(a, cur, &next), abi::CtlStatus::kBadValue);
  auto s = message<abi::SetSyscallsMsg>(abi::CtlType::kSetSyscalls);
  s.all = 1;
  s.bitmap[7] = 1;
  EXPECT_EQ(apply(s, cur, &next), abi::CtlStatus::kBadValue);
  auto sn = message<abi::SetSnapLenMsg>(abi::CtlType::kSetSnapLen);
  sn.snap_len = abi::kMaxSnapLen + 1;
  EXPECT_EQ(apply(sn, cur, &next), abi::CtlStatus::kBadValue);
  sn.snap_len = abi::kMaxSnapLen;   // valid, but not for 64 KiB rings (max_record 16 KiB)
  std::string why;
  abi::CtlType type{};
  EXPECT_EQ(apply_control(&sn, sizeof sn, cur, &next, &type, &why, 16 * 1024), abi::CtlStatus::kBadValue);
  EXPECT_NE(why.find("larger ring"), std::string::npos) << why;
  s = message<abi::SetSyscallsMsg>(abi::CtlType::kSetSyscalls);
  s.abi = 2;   // only x86-64 (0) and i386 (1) have sets
  EXPECT_EQ(apply(s, cur, &next), abi::CtlStatus::kBadValue);
  EXPECT_EQ(next.generation, 77u) << "a rejected message wrote the next configuration";
}

TEST(Plugin, ExportsOnlyQemusEntryPoints) {
  FILE* f = popen("nm -D --defined-only " HVTRACE_MONITOR_PLUGIN, "r");
  ASSERT_NE(f, nullptr);
  std::set<std::string> names;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    std::istringstream in(line);
    std::string addr, kind, name;
    in >> addr >> kind >> name;
    if (!name.empty()) names.insert(name);
  }
  ASSERT_EQ(pclose(f), 0);
  EXPECT_EQ(names, (std::set<std::string>{"qemu_plugin_install", "qemu_plugin_version"}));
}

}  // namespace
}  // namespace hvtrace::monitor
