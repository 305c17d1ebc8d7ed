// Instruction recognition at translation time: the few x86-64 encodings the monitor traps. Pure
// functions over the instruction bytes QEMU hands us, unit-tested without QEMU.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hvtrace::monitor {

// Guest virtual addresses in the upper canonical half are kernel code (Linux x86-64).
constexpr bool is_kernel_va(std::uint64_t va) { return va >= 0xffff'8000'0000'0000ULL; }

// GPR numbering of ModRM/REX: 0 rax, 1 rcx, 2 rdx, 3 rbx, 4 rsp, 5 rbp, 6 rsi, 7 rdi, 8-15 r8-r15.
inline constexpr const char* kGprNames[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                             "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};

// `mov %reg, %cr3`: [REX] 0F 22 /r with ModRM.mod == 3 and ModRM.reg == 3 (REX.R clear).
// Returns the source GPR number, or -1.
constexpr int mov_to_cr3_source(const std::uint8_t* b, std::size_t n) {
  std::size_t i = 0;
  std::uint8_t rex = 0;
  if (n > 0 && (b[0] & 0xf0) == 0x40) rex = b[i++];
  if (n < i + 3 || b[i] != 0x0f || b[i + 1] != 0x22) return -1;
  const std::uint8_t modrm = b[i + 2];
  if ((modrm >> 6) != 3 || ((modrm >> 3) & 7) != 3 || (rex & 0x4) != 0) return -1;
  return (modrm & 7) | ((rex & 0x1) ? 8 : 0);
}

constexpr bool is_syscall(const std::uint8_t* b, std::size_t n) { return n == 2 && b[0] == 0x0f && b[1] == 0x05; }
constexpr bool is_int80(const std::uint8_t* b, std::size_t n) { return n == 2 && b[0] == 0xcd && b[1] == 0x80; }
constexpr bool is_sysenter(const std::uint8_t* b, std::size_t n) { return n == 2 && b[0] == 0x0f && b[1] == 0x34; }
constexpr bool is_sysretq(const std::uint8_t* b, std::size_t n) { return n == 3 && b[0] == 0x48 && b[1] == 0x0f && b[2] == 0x07; }
constexpr bool is_sysretl(const std::uint8_t* b, std::size_t n) { return n == 2 && b[0] == 0x0f && b[1] == 0x07; }

// The user instruction that opens each door, as the detection value it stores (0 = none).
enum class DoorInsn : std::uint64_t { kNone = 0, kSyscall = 1, kInt80 = 2, kSysenter = 3 };
constexpr DoorInsn door_insn(const std::uint8_t* b, std::size_t n) {
  return is_syscall(b, n) ? DoorInsn::kSyscall : is_int80(b, n) ? DoorInsn::kInt80
                          : is_sysenter(b, n) ? DoorInsn::kSysenter : DoorInsn::kNone;
}
constexpr bool is_iretq(const std::uint8_t* b, std::size_t n) { return n == 2 && b[0] == 0x48 && b[1] == 0xcf; }

}  // namespace hvtrace::monitor
