// The monitor's door logic as pure functions: which kernel entries are learned as doors (a fault
// raised by a door instruction must not be), and where each door's number and arguments are.
#include "doors.hpp"
#include "x86.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

namespace hvtrace::monitor {
namespace {

constexpr std::uint64_t kDoor = 0x401000, kUserSp = 0x7ffc'0000'1000, kKernSp = 0xffffc900'0001'3f58ULL;

TEST(Doors, InstructionsAreRecognised) {
  const std::uint8_t sc[] = {0x0f, 0x05}, i80[] = {0xcd, 0x80}, se[] = {0x0f, 0x34}, i3[] = {0xcd, 0x03};
  EXPECT_EQ(door_insn(sc, 2), DoorInsn::kSyscall);
  EXPECT_EQ(door_insn(i80, 2), DoorInsn::kInt80);
  EXPECT_EQ(door_insn(se, 2), DoorInsn::kSysenter);
  EXPECT_EQ(door_insn(i3, 2), DoorInsn::kNone);
  const std::uint8_t sysretl[] = {0x0f, 0x07};
  EXPECT_TRUE(is_sysretl(sysretl, 2));
}

TEST(Doors, SyscallEntryIsLearnedFirstAs64BitThenCompat) {
  DetectInput in{DoorInsn::kSyscall, kDoor, kUserSp, kDoor + 2, {}, false, false};
  EXPECT_EQ(classify_entry(in), abi::Door::kSyscall64);
  in.syscall64_known = true;
  EXPECT_EQ(classify_entry(in), abi::Door::kSyscallCompat);
  // Compat code runs below 4 GiB: a door above cannot be the compat one.
  in.door_rip = 0x7f00'0000'0000;
  in.rcx = in.door_rip + 2;
  EXPECT_EQ(classify_entry(in), std::nullopt);
}

TEST(Doors, AFaultRaisedByTheDoorInstructionIsNotLearned) {
  // #UD on `syscall`: the CPU switched to a kernel stack; RCX is whatever the attacker left there.
  DetectInput ud{DoorInsn::kSyscall, kDoor, kKernSp, kDoor + 2, {kDoor, 0x33}, true, false};
  EXPECT_EQ(classify_entry(ud), std::nullopt);
  // `syscall` whose RCX does not hold the next instruction.
  DetectInput wrong{DoorInsn::kSyscall, kDoor, kUserSp, 0x1234, {}, false, false};
  EXPECT_EQ(classify_entry(wrong), std::nullopt);
  // `int $0x80`: a #GP frame holds the error code, then the faulting RIP.
  DetectInput gp{DoorInsn::kInt80, kDoor, kKernSp, 0, {0x402, kDoor}, true, false};
  EXPECT_EQ(classify_entry(gp), std::nullopt);
  DetectInput i80{DoorInsn::kInt80, kDoor, kKernSp, 0, {kDoor + 2, 0x23}, true, false};
  EXPECT_EQ(classify_entry(i80), abi::Door::kInt80);
  i80.stack[1] = 0x10;   // a kernel CS in the frame: not from user mode
  EXPECT_EQ(classify_entry(i80), std::nullopt);
  // `sysenter` in 64-bit mode raises #UD: the frame's RIP is the sysenter itself.
  DetectInput se_ud{DoorInsn::kSysenter, kDoor, kKernSp, 0, {kDoor, 0x33}, true, false};
  EXPECT_EQ(classify_entry(se_ud), std::nullopt);
  DetectInput se_gp{DoorInsn::kSysenter, kDoor, kKernSp, 0, {0, kDoor}, true, false};
  EXPECT_EQ(classify_entry(se_gp), std::nullopt);
  DetectInput se{DoorInsn::kSysenter, kDoor, kKernSp, 0, {0xdead, 0xbeef}, true, false};
  EXPECT_EQ(classify_entry(se), abi::Door::kSysenter);
  DetectInput none{DoorInsn::kNone, kDoor, kKernSp, 0, {}, true, false};
  EXPECT_EQ(classify_entry(none), std::nullopt);
}

TEST(Doors, DetectionRunsInTheEntryTextWindowOnceThe64BitEntryIsKnown) {
  // Debian 6.1's layout: entry_SYSCALL_64 and the compat entries share one 2 MiB page.
  const std::uint64_t entry64 = 0xffffffff'82000040ULL;
  EXPECT_TRUE(detect_at(0xffffffff'820011c0ULL, entry64, false));    // entry_SYSCALL_compat
  EXPECT_TRUE(detect_at(0xffffffff'82000000ULL, entry64, false));    // first byte of the page
  EXPECT_TRUE(detect_at(0xffffffff'821fffffULL, entry64, false));    // last byte
  EXPECT_FALSE(detect_at(0xffffffff'81f00000ULL, entry64, false));   // do_syscall_64 in .text
  EXPECT_FALSE(detect_at(0xffffffff'82200000ULL, entry64, false));   // the next 2 MiB page
  // Until the 64-bit entry is learned (boot), and in everywhere mode, every kernel block.
  EXPECT_TRUE(detect_at(0xffffffff'81f00000ULL, 0, false));
  EXPECT_TRUE(detect_at(0xffffffff'81f00000ULL, entry64, true));
}

TEST(Doors, MissesMakeDetectionEverywhereForGoodAfterABound) {
  // A miss puts detection everywhere until the next door is learned; only kStickyMisses of them
  // (or the option) keep it there, so a guest cannot force a code flush per call forever.
  EXPECT_FALSE(everywhere_after_learning(false, 0));
  EXPECT_FALSE(everywhere_after_learning(false, kStickyMisses - 1));
  EXPECT_TRUE(everywhere_after_learning(false, kStickyMisses));
  EXPECT_TRUE(everywhere_after_learning(true, 0));
}

TEST(Doors, ArgumentsComeFromEachAbisRegisters) {
  EntryRegs r;
  r.rax = 4;                       // write
  r.rbx = 1;
  r.rcx = 0x8049000;
  r.rdx = 9;
  r.rsi = 0x44;
  r.rdi = 0x55;
  r.rbp = 0xffd0'0000;
  r.rsp = 0xffd0'0010;
  r.r8 = 8;
  r.r9 = 9;
  r.r10 = 10;
  r.user_word = 0x66;
  r.frame_rip = 0x8048002;
  r.frame_rsp = 0xffd0'0020;

  auto i80 = decode_entry(abi::Door::kInt80, r);
  EXPECT_EQ(i80.abi, abi::SyscallAbi::kI386);
  EXPECT_EQ(i80.nr, 4u);
  const std::uint64_t want80[6] = {1, 0x8049000, 9, 0x44, 0x55, 0xffd0'0000};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(i80.args[i], want80[i]) << i;
  EXPECT_EQ(i80.user_rip, 0x8048002u);
  EXPECT_EQ(i80.user_rsp, 0xffd0'0020u);

  // Compat syscall as the 32-bit vDSO enters: ebp holds the second argument, the sixth is at [esp].
  auto cs = decode_entry(abi::Door::kSyscallCompat, r);
  const std::uint64_t want_cs[6] = {1, 0xffd0'0000, 9, 0x44, 0x55, 0x66};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(cs.args[i], want_cs[i]) << i;
  EXPECT_EQ(user_word_address(abi::Door::kSyscallCompat, r), 0xffd0'0010u);
  EXPECT_EQ(cs.user_rsp, 0xffd0'0010u);

  // sysenter: ecx is the second argument, ebp the user stack (the sixth argument sits there).
  auto se = decode_entry(abi::Door::kSysenter, r);
  const std::uint64_t want_se[6] = {1, 0x8049000, 9, 0x44, 0x55, 0x66};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(se.args[i], want_se[i]) << i;
  EXPECT_EQ(user_word_address(abi::Door::kSysenter, r), 0xffd0'0000u);
  EXPECT_EQ(se.user_rsp, 0xffd0'0000u);

  // 32-bit values are zero-extended whatever the upper halves hold.
  r.rbx = 0xffff'ffff'0000'0001ULL;
  EXPECT_EQ(decode_entry(abi::Door::kInt80, r).args[0], 1u);

  r.rax = 1;
  auto s64 = decode_entry(abi::Door::kSyscall64, r);
  EXPECT_EQ(s64.abi, abi::SyscallAbi::kX86_64);
  const std::uint64_t want64[6] = {0x55, 0x44, 9, 10, 8, 9};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(s64.args[i], want64[i]) << i;
  EXPECT_EQ(s64.user_rip, 0x8049000u);
  r.rax = 0x4000'0001;
  EXPECT_EQ(decode_entry(abi::Door::kSyscall64, r).abi, abi::SyscallAbi::kX32);
}

OpenCall call(std::uint64_t dtb, std::uint64_t rsp, std::uint64_t nr, std::uint64_t seq) {
  OpenCall c{dtb, rsp, nr, seq, {}, abi::SyscallAbi::kX86_64, abi::Door::kSyscall64, 0};
  for (int i = 0; i < 6; ++i) c.args[i] = nr * 100 + static_cast<std::uint64_t>(i);
  return c;
}

TEST(Doors, ExitsPairWithTheirEntryByAddressSpaceAndStack) {
  OpenEntries<4> open;
  ASSERT_TRUE(open.put(call(0x1000, 0x7000, 1, 10)));
  auto b = call(0x2000, 0x7000, 4, 11);
  b.abi = abi::SyscallAbi::kI386;
  b.door = abi::Door::kInt80;
  ASSERT_TRUE(open.put(b));
  EXPECT_FALSE(open.take(0x1000, 0x7008));   // another thread of the same process
  const auto got_b = open.take(0x2000, 0x7000);
  ASSERT_TRUE(got_b);
  EXPECT_EQ(got_b->abi, abi::SyscallAbi::kI386);
  EXPECT_EQ(got_b->seq, 11u);
  EXPECT_FALSE(open.take(0x2000, 0x7000)) << "taken once";
  // The same thread entering again (its exit never seen) replaces its entry: one slot, the new call.
  ASSERT_TRUE(open.put(call(0x1000, 0x7000, 2, 12)));
  const auto a = open.take(0x1000, 0x7000);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->nr, 2u);
  EXPECT_FALSE(open.take(0x1000, 0x7000)) << "the stale entry was replaced, not kept beside";
}

TEST(Doors, AFullTableEvictsRoundRobinAndKeepsTheRest) {
  OpenEntries<4> open;
  for (std::uint64_t t = 0; t < 5; ++t) ASSERT_TRUE(open.put(call(0x1000, 0x7000 + 0x100 * t, t, t)));
  int left = 0;
  for (std::uint64_t t = 0; t < 5; ++t) left += open.take(0x1000, 0x7000 + 0x100 * t).has_value();
  EXPECT_EQ(left, 4);   // one evicted: its thread's exit comes unpaired
}

// A full table gives an exec's entry away first (a successful exec returns into another address
// space, so it never pairs), and says when it had to evict a call that may still be in progress.
TEST(Doors, AFullTableEvictsExecEntriesFirstAndReportsOtherEvictions) {
  OpenEntries<4> open;
  bool evicted = false;
  ASSERT_TRUE(open.put(call(0x1000, 0x7000, 0, 1), &evicted));      // read: blocked
  ASSERT_TRUE(open.put(call(0x2000, 0x7100, 59, 2), &evicted));     // execve: succeeded, never pairs
  ASSERT_TRUE(open.put(call(0x3000, 0x7200, 61, 3), &evicted));     // wait4: blocked
  auto i386_exec = call(0x4000, 0x7300, 11, 4);
  i386_exec.abi = abi::SyscallAbi::kI386;
  ASSERT_TRUE(open.put(i386_exec, &evicted));
  ASSERT_TRUE(open.put(call(0x5000, 0x7400, 1, 5), &evicted));      // full: an exec goes
  ASSERT_TRUE(open.put(call(0x6000, 0x7500, 1, 6), &evicted));      // full: the other exec goes
  EXPECT_FALSE(evicted) << "only exec entries were given away";
  EXPECT_TRUE(open.take(0x1000, 0x7000));
  EXPECT_TRUE(open.take(0x3000, 0x7200));
  ASSERT_TRUE(open.put(call(0x1000, 0x7000, 0, 7), &evicted));
  ASSERT_TRUE(open.put(call(0x3000, 0x7200, 61, 8), &evicted));
  EXPECT_FALSE(evicted);
  ASSERT_TRUE(open.put(call(0x7000, 0x7600, 1, 9), &evicted));      // full, no exec: a call in progress goes
  EXPECT_TRUE(evicted);
}

// A signal frame laid out as the kernel writes it (x86-64 rt_sigframe; i386 rt_sigframe_ia32 and
// sigframe_ia32), at `frame`, with the interrupted context's sp, ip and ax saved.
struct FakeFrame {
  std::uint8_t bytes[512] = {};
  template <typename T>
  void put(std::size_t off, T v) { std::memcpy(bytes + off, &v, sizeof v); }
};

TEST(Doors, ASigreturnPairsWhereItReturnsTheStackSavedInItsFrame) {
  // x86-64: rt_sigreturn enters with sp = frame + 8 (the handler's ret popped pretcode).
  FakeFrame f64;
  f64.put<std::uint64_t>(8 + 40 + 120, 0x7ffd'0000'1230);   // uc.uc_mcontext.sp
  const auto s64 = sigreturn_saved_stack(abi::SyscallAbi::kX86_64, 15);
  ASSERT_TRUE(s64);
  std::uint64_t got = 0;
  std::memcpy(&got, f64.bytes + 8 + s64->offset, s64->size);
  EXPECT_EQ(got, 0x7ffd'0000'1230u);
  // i386 rt_sigreturn: sp = frame + 4; sigreturn: sp = frame + 8.
  FakeFrame rt32, old32;
  rt32.put<std::uint32_t>(144 + 20 + 28, 0xffd0'1230);
  old32.put<std::uint32_t>(8 + 28, 0xffd0'4560);
  const auto srt = sigreturn_saved_stack(abi::SyscallAbi::kI386, 173), sold = sigreturn_saved_stack(abi::SyscallAbi::kI386, 119);
  ASSERT_TRUE(srt && sold);
  std::uint32_t g32 = 0;
  std::memcpy(&g32, rt32.bytes + 4 + srt->offset, srt->size);
  EXPECT_EQ(g32, 0xffd0'1230u);
  std::memcpy(&g32, old32.bytes + 8 + sold->offset, sold->size);
  EXPECT_EQ(g32, 0xffd0'4560u);
  EXPECT_FALSE(sigreturn_saved_stack(abi::SyscallAbi::kI386, 15)) << "i386 15 is chmod";
  EXPECT_FALSE(sigreturn_saved_stack(abi::SyscallAbi::kX86_64, 173));
}

// The frame fields of a handler's return: the signal, and the saved sp, ip and ax where the kernel
// lays them out, within the one read the monitor makes.
void expect_frame(const std::optional<SignalFrame>& f, std::uint32_t signo, std::uint32_t context, std::uint32_t size,
                  std::uint32_t sp, std::uint32_t ip, std::uint32_t ax) {
  ASSERT_TRUE(f);
  EXPECT_EQ(f->signo, signo);
  EXPECT_EQ(f->sp, context + sp);
  EXPECT_EQ(f->ip, context + ip);
  EXPECT_EQ(f->ax, context + ax);
  EXPECT_EQ(f->size, size);
  EXPECT_LE(std::max({f->sp, f->ip, f->ax}) + f->size - std::min({f->sp, f->ip, f->ax}), kSignalFrameSpan);
}

TEST(Doors, AReturnIntoASignalHandlerIsKnownByTheRegistersTheKernelSetForIt) {
  const std::uint64_t sp = 0x7ffd'0000'1000;
  // x86-64: rdi = signal, rax = 0, rdx = &frame->uc; sigcontext at frame + 8 + 40.
  expect_frame(signal_frame(false, sp, 0, 0x1234, sp + 8, 17), 17, 8 + 40, 8, 120, 128, 104);
  // An interrupt or a plain syscall return: the registers are the program's own.
  EXPECT_FALSE(signal_frame(false, sp, 0, 0, sp + 16, 17));
  EXPECT_FALSE(signal_frame(false, sp, 3, 0, sp + 8, 17)) << "rax is 0 in a handler";
  EXPECT_FALSE(signal_frame(false, sp, 0, 0, sp + 8, 0));
  EXPECT_FALSE(signal_frame(false, sp, 0, 0, sp + 8, 65));
  // i386 rt frame: eax = signal, edx = &frame->info, ecx = &frame->uc; sigcontext_32 at + 144 + 20.
  const std::uint64_t sp32 = 0xffd0'1000;
  expect_frame(signal_frame(true, sp32, 2, sp32 + 144, sp32 + 16, 0), 2, 144 + 20, 4, 28, 56, 44);
  // i386 old frame: eax = signal, edx = ecx = 0; sigcontext_32 at + 8.
  expect_frame(signal_frame(true, sp32, 10, 0, 0, 0), 10, 8, 4, 28, 56, 44);
  EXPECT_FALSE(signal_frame(true, sp32, 10, 5, 0, 0));
  // A call restarted after the handler resumes at its door instruction.
  OpenCall c = call(0x1000, 0x7000, 61, 1);
  c.rip = 0x401002;
  EXPECT_TRUE(resumes_at_door(c, 0x401000));
  EXPECT_FALSE(resumes_at_door(c, 0x401002));
  c.rip = 0;   // sysenter: not known
  EXPECT_FALSE(resumes_at_door(c, 0x401000 - 2));
}

// Entries of address spaces the filter stopped passing (a process killed in a blocking call, one
// no longer traced) leave the table at the filter change; the rest stay.
TEST(Doors, EntriesOfAddressSpacesNoLongerPassingAreDropped) {
  OpenEntries<4> open;
  ASSERT_TRUE(open.put(call(0x1000, 0x7000, 0, 1)));
  ASSERT_TRUE(open.put(call(0x2000, 0x7000, 61, 2)));
  ASSERT_TRUE(open.put(call(0x2000, 0x7100, 7, 3)));
  EXPECT_EQ(open.drop_unless([](std::uint64_t dtb) { return dtb == 0x1000; }), 2u);
  EXPECT_FALSE(open.holds(0x2000));
  EXPECT_TRUE(open.holds(0x1000));
  bool evicted = false;
  for (std::uint64_t t = 0; t < 3; ++t) ASSERT_TRUE(open.put(call(0x3000, 0x7000 + 0x100 * t, 0, 4 + t), &evicted));
  EXPECT_FALSE(evicted) << "the dropped slots are free again";
  EXPECT_TRUE(open.take(0x1000, 0x7000));
}

TEST(Doors, ExitAndExecCallsAreKnownInEveryAbi) {
  EXPECT_TRUE(never_returns(abi::SyscallAbi::kX86_64, 60));
  EXPECT_TRUE(never_returns(abi::SyscallAbi::kX86_64, 231));
  EXPECT_TRUE(never_returns(abi::SyscallAbi::kI386, 1));
  EXPECT_TRUE(never_returns(abi::SyscallAbi::kI386, 252));
  EXPECT_TRUE(never_returns(abi::SyscallAbi::kX32, kX32SyscallBit | 231));
  EXPECT_FALSE(never_returns(abi::SyscallAbi::kI386, 60));   // i386 60 is umask
  EXPECT_FALSE(never_returns(abi::SyscallAbi::kX86_64, 1));
  EXPECT_TRUE(leaves_address_space(abi::SyscallAbi::kX86_64, 59));
  EXPECT_TRUE(leaves_address_space(abi::SyscallAbi::kX86_64, 322));
  EXPECT_TRUE(leaves_address_space(abi::SyscallAbi::kI386, 11));
  EXPECT_TRUE(leaves_address_space(abi::SyscallAbi::kI386, 358));
  EXPECT_TRUE(leaves_address_space(abi::SyscallAbi::kX32, kX32SyscallBit | 520));
  EXPECT_FALSE(leaves_address_space(abi::SyscallAbi::kX32, kX32SyscallBit | 59));   // x32 execve is 520
  EXPECT_FALSE(leaves_address_space(abi::SyscallAbi::kI386, 59));
}

// Two vCPU threads, each recording its guest threads' entries in its own table while the other
// vCPU takes them (two calls in three blocked here and resumed there), so an owner's put runs
// beside the other vCPU's take in the same table, and a control thread drops the entries of an
// address space that is gone, beside both. Under ThreadSanitizer this checks the slots'
// ordering; everywhere, that every entry is taken exactly once and whole.
TEST(Doors, AnEntryIsTakenWholeAndOnceFromAnotherVcpusTable) {
  constexpr std::uint64_t kThreadsPerVcpu = 8, kRounds = 3000, kDead = 0x9000'0000;
  OpenEntries<32> table[2];
  std::atomic<std::uint64_t> put_rounds[2] = {0, 0};
  std::atomic<std::uint64_t> taken{0}, migrated{0}, torn{0}, missing{0}, full{0};
  const auto key = [](unsigned v, std::uint64_t r) {
    return std::pair<std::uint64_t, std::uint64_t>{0x1000 * (v + 1), 0x7000 + 0x10 * (r % kThreadsPerVcpu)};
  };
  const auto check = [&](const std::optional<OpenCall>& c, unsigned v, std::uint64_t r) {
    if (!c) {
      missing.fetch_add(1);
      return;
    }
    taken.fetch_add(1);
    const auto [dtb, rsp] = key(v, r);
    if (c->nr != r || c->seq != r || c->dtb != dtb || c->rsp != rsp || c->args[5] != r * 100 + 5) torn.fetch_add(1);
  };
  auto vcpu = [&](unsigned me) {
    const unsigned other = 1 - me;
    for (std::uint64_t r = 0; r < kRounds; ++r) {
      const auto [dtb, rsp] = key(me, r);
      if (!table[me].put(call(dtb, rsp, r, r))) full.fetch_add(1);
      // Now and then an entry of a process that dies in its call (never taken): the control
      // thread drops it beside the owner's puts and the other vCPU's takes.
      if (r % 150 == 0 && !table[me].put(call(kDead, 0x9000 + r, 0, r))) full.fetch_add(1);
      put_rounds[me].store(r + 1, std::memory_order_release);
      if (r % 3 == 0) check(table[me].take(dtb, rsp), me, r);   // returned where it entered
      // The other vCPU's call of this round that blocked there and resumes here.
      while (put_rounds[other].load(std::memory_order_acquire) <= r) std::this_thread::yield();
      if (r % 3 != 0) {
        const auto [odtb, orsp] = key(other, r);
        check(table[other].take(odtb, orsp), other, r);
        migrated.fetch_add(1);
      }
    }
  };
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> dropped{0};
  const auto alive = [](std::uint64_t dtb) { return dtb != kDead; };
  std::thread control([&] {
    while (!done.load(std::memory_order_acquire))
      for (auto& t : table) dropped.fetch_add(t.drop_unless(alive));
  });
  std::thread a(vcpu, 0u), b(vcpu, 1u);
  a.join();
  b.join();
  done.store(true, std::memory_order_release);
  control.join();
  for (auto& t : table) dropped.fetch_add(t.drop_unless(alive));
  EXPECT_EQ(dropped.load(), 2 * ((kRounds + 149) / 150)) << "every dead entry dropped once";
  for (auto& t : table) EXPECT_FALSE(t.holds(kDead));
  EXPECT_EQ(full.load(), 0u);
  EXPECT_EQ(torn.load(), 0u);
  EXPECT_EQ(missing.load(), 0u);
  EXPECT_EQ(taken.load(), 2 * kRounds);
  EXPECT_GT(migrated.load(), kRounds);
  for (unsigned v = 0; v < 2; ++v)
    for (std::uint64_t r = 0; r < kThreadsPerVcpu; ++r) {
      const auto [dtb, rsp] = key(v, r);
      EXPECT_FALSE(table[v].take(dtb, rsp)) << "left behind";
    }
}

}  // namespace
}  // namespace hvtrace::monitor
