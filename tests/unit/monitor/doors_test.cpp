// The monitor's door logic as pure functions: which kernel entries are learned as doors (a fault
// raised by a door instruction must not be), and where each door's number and arguments are.
#include "doors.hpp"
#include "x86.hpp"

#include <gtest/gtest.h>

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

TEST(Doors, ExitsPairWithTheirEntryByAddressSpaceAndStack) {
  OpenEntries<4> open;
  OpenEntry* a = open.claim(0x1000, 0x7000);
  *a = OpenEntry{0x1000, 0x7000, 1, 10, {}, abi::SyscallAbi::kX86_64, abi::Door::kSyscall64, true, 0};
  OpenEntry* b = open.claim(0x2000, 0x7000);
  *b = OpenEntry{0x2000, 0x7000, 4, 11, {}, abi::SyscallAbi::kI386, abi::Door::kInt80, true, 0};
  EXPECT_EQ(open.find(0x1000, 0x7000), a);
  EXPECT_EQ(open.find(0x2000, 0x7000)->abi, abi::SyscallAbi::kI386);
  EXPECT_EQ(open.find(0x1000, 0x7008), nullptr);   // another thread of the same process
  // The same thread entering again (its exit never seen) reuses its slot.
  EXPECT_EQ(open.claim(0x1000, 0x7000), a);
  a->used = false;
  EXPECT_EQ(open.find(0x1000, 0x7000), nullptr);
}

}  // namespace
}  // namespace hvtrace::monitor
