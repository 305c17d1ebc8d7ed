// Event records the monitor writes into the rings (ring.h). Each starts with EventHeader; syscall
// records are followed by `n_captures` Capture blocks, each followed by its data padded to 8 bytes.
// Captures are the monitor's pre-processing: bytes copied from guest memory while they exist
// (paths, execve's filename and argv, write's buffer at entry, read's buffer at exit), bounded by
// the snap length in force; `true_len` says how long the original was.
// A DTB is a CR3 value with the PCID bits (0-11), bit 12 (PTI user/kernel half) and bit 63 masked.
#pragma once

#include "hvtrace/abi/ring.h"

#include <cstddef>
#include <cstdint>

namespace hvtrace::abi {

inline constexpr std::uint64_t kDtbMask = 0x7fff'ffff'ffff'e000ULL;
constexpr std::uint64_t dtb_of_cr3(std::uint64_t cr3) { return cr3 & kDtbMask; }

inline constexpr std::uint32_t kDefaultSnapLen = 256;
inline constexpr std::uint32_t kMaxSnapLen = 64 * 1024;
inline constexpr std::uint32_t kMaxCaptures = 4;        // per event
inline constexpr std::uint32_t kMaxArgv = 64;           // argv entries copied
inline constexpr std::uint32_t kMaxArgvCounted = 4096;  // argv/envp entries counted (true_len); more: kCaptureLenUnknown

// The system-call ABI an entry used (which table its number indexes, which registers hold its
// arguments). x86-64: rax; rdi, rsi, rdx, r10, r8, r9. i386 (int $0x80 from any mode): eax; ebx,
// ecx, edx, esi, edi, ebp. i386 through the fast doors (compat `syscall`, `sysenter`, as the 32-bit
// vDSO enters): eax; ebx, ebp (compat syscall) or ecx (sysenter), edx, esi, edi, and the sixth
// argument at the user stack pointer. x32: x86-64 registers, numbers with bit 30 set.
enum class SyscallAbi : std::uint8_t { kX86_64 = 0, kI386 = 1, kX32 = 2, kCount = 3 };
inline constexpr std::uint64_t kX32SyscallBit = 0x4000'0000;

// The calls whose entry never pairs with a return on the same stack, by ABI (x32 numbers carry
// kX32SyscallBit; x32's execve and execveat are its own 520 and 545): exit and exit_group never
// return; a successful execve/execveat returns into another address space. One definition for the
// monitor (which of its open entries to keep) and the library (how the tracer completes calls).
constexpr bool is_exit_call(SyscallAbi a, std::uint64_t nr) {
  return a == SyscallAbi::kI386 ? nr == 1 : nr == (a == SyscallAbi::kX32 ? kX32SyscallBit | 60 : 60);
}
constexpr bool is_exit_group_call(SyscallAbi a, std::uint64_t nr) {
  return a == SyscallAbi::kI386 ? nr == 252 : nr == (a == SyscallAbi::kX32 ? kX32SyscallBit | 231 : 231);
}
constexpr bool is_exec_call(SyscallAbi a, std::uint64_t nr) {
  switch (a) {
    case SyscallAbi::kX86_64: return nr == 59 || nr == 322;
    case SyscallAbi::kX32: return nr == (kX32SyscallBit | 520) || nr == (kX32SyscallBit | 545);
    case SyscallAbi::kI386: return nr == 11 || nr == 358;
    case SyscallAbi::kCount: break;
  }
  return false;
}

// The door an entry came through (each trapped at its own kernel entry point).
enum class Door : std::uint8_t {
  kSyscall64 = 0,      // `syscall` from 64-bit code (LSTAR, entry_SYSCALL_64)
  kInt80 = 1,          // `int $0x80` from 64- or 32-bit code (IDT vector 0x80)
  kSysenter = 2,       // `sysenter` from 32-bit code (entry_SYSENTER_compat)
  kSyscallCompat = 3,  // `syscall` from 32-bit code (CSTAR, entry_SYSCALL_compat)
  kCount = 4,
};

struct EventHeader {
  RecordHeader rec;
  std::uint64_t seq;          // per-ring, counts dropped events too: gaps are loss
  std::uint64_t time_ns;      // host CLOCK_MONOTONIC when the vCPU hit the event
  std::uint64_t insns;        // guest time: instructions this vCPU executed, counted per TB at the
                              // TB's start, so it includes the rest of the event's TB
                              // (plugin argument icount=on; 0 otherwise)
  std::uint32_t vcpu;
  std::uint32_t generation;   // filter generation that let this event through
};
static_assert(sizeof(EventHeader) == 40);

// Who made an event, read by the monitor from the guest's own state at the event (the vCPU's
// current task through the kernel per-CPU base), once the monitoring side has told it where to look
// (CtlType::kSetIdentity); all zero before that, or when the reads fail.
struct TaskIdentity {
  std::uint64_t task;              // address of the current task_struct
  std::uint32_t pid;               // task->pid: the thread id
  std::uint32_t tgid;              // task->tgid: the process id
};
static_assert(sizeof(TaskIdentity) == 16);

struct Cr3WriteEvent {
  EventHeader hdr;
  std::uint64_t old_cr3;
  std::uint64_t new_cr3;
  std::uint64_t rip;               // of the mov-to-CR3 instruction
  std::uint64_t cr3_writes;        // independent inline count of mov-to-CR3 executed on this vCPU
  std::uint64_t kernel_gs_base;    // GS base (kernel mode: the per-CPU base)
  TaskIdentity who;                // the task running (during exec its mm is already the new one)
};
static_assert(sizeof(Cr3WriteEvent) == 96);

struct SyscallEntryEvent {
  EventHeader hdr;
  std::uint64_t nr;                // rax (eax for i386)
  std::uint64_t args[6];           // in the order of the ABI's arguments (see SyscallAbi), zero-extended
  std::uint64_t cr3;
  std::uint64_t user_rip;          // where user mode resumes (after the door instruction; for sysenter
                                   // the vDSO's landing pad is not known here: 0)
  std::uint64_t user_rsp;          // the user stack pointer at the door
  std::uint64_t user_syscalls;     // independent inline count of this door's user instruction on this
                                   // vCPU (`syscall` counts 64-bit and compat together)
  std::uint64_t kernel_gs_base;    // the vCPU's kernel per-CPU base (IA32_KERNEL_GS_BASE at the door)
  TaskIdentity who;
  std::uint32_t n_captures;
  std::uint8_t abi;                // SyscallAbi
  std::uint8_t door;               // Door
  std::uint16_t reserved;
};
static_assert(sizeof(SyscallEntryEvent) == 160);

// kSignal: the call returned into a signal handler the kernel had just set up (a signal pending
// as the call ended). Its result, and where the thread resumes after the handler, are those the
// kernel saved in the signal frame; a call the kernel will restart (the saved instruction pointer
// is its door instruction again) has ret -512 (ERESTARTSYS: the frame does not keep which restart).
enum class ExitVia : std::uint16_t { kSysret = 1, kIret = 2, kSysretl = 3, kSignal = 4 };

struct SyscallExitEvent {
  EventHeader hdr;
  std::int64_t ret;                // rax (sign-extended eax for i386); kSignal: as saved in the frame
  std::int64_t nr;                 // of the paired entry, -1 if the monitor did not see it
  std::uint64_t cr3;
  std::uint64_t user_rip;          // where user mode resumes (kSignal: after the handler)
  std::uint64_t user_rsp;
  std::uint64_t entry_seq;         // seq of the paired entry (same ring), 0 if unpaired
  std::uint64_t kernel_gs_base;    // the vCPU's kernel per-CPU base (IA32_KERNEL_GS_BASE after swapgs)
  TaskIdentity who;
  std::uint16_t via;               // ExitVia
  std::uint8_t abi;                // SyscallAbi of the paired entry (kX86_64 if unpaired)
  std::uint8_t door;               // Door of the paired entry
  std::uint32_t n_captures;
  std::uint32_t signo;             // kSignal: the handler's signal; else 0
  std::uint32_t reserved;
};
static_assert(sizeof(SyscallExitEvent) == 128);

// One per breakpoint in force at `va` whose scope holds the DTB (several breakpoints at one
// address: one event each, in table order). Registers as the instruction at `va` is about to run:
// at a function's first instruction, regs hold the System V arguments and ret_addr the return address.
inline constexpr std::uint8_t kBpRetAddrRead = 1u << 0;   // BreakpointEvent::flags: ret_addr is valid

struct BreakpointEvent {
  EventHeader hdr;
  std::uint64_t va;
  std::uint64_t cr3;
  std::uint64_t rsp;
  std::uint64_t regs[7];           // rdi, rsi, rdx, rcx, r8, r9, rax
  std::uint64_t ret_addr;          // the 8 bytes at [rsp] (0 and flag clear if unreadable)
  std::uint32_t id;                // AddBreakpointMsg::id (bp= arguments: kInitialBreakpointId + index)
  std::uint8_t kind;               // BreakpointKind
  std::uint8_t flags;              // kBpRetAddrRead
  std::uint16_t reserved;
};
static_assert(sizeof(BreakpointEvent) == 136);
static_assert(offsetof(BreakpointEvent, ret_addr) == 120 && offsetof(BreakpointEvent, id) == 128);
inline constexpr std::uint32_t kInitialBreakpointId = 0x8000'0000;   // id of the first bp= argument

enum class CaptureKind : std::uint8_t {
  kString = 1,    // NUL-terminated string; data excludes the NUL
  kBuffer = 2,    // byte buffer; true_len is the syscall's length (count, or the return value)
  kArgv = 3,      // string array; data = the strings each followed by NUL; true_len = argc seen
};
inline constexpr std::uint16_t kCaptureTruncated = 1u << 0;   // data_len < true_len
inline constexpr std::uint16_t kCaptureFault = 1u << 1;       // guest memory unreadable at some point
inline constexpr std::uint16_t kCaptureLenUnknown = 1u << 2;  // string longer than the scan limit
inline constexpr std::uint16_t kCaptureNotCopied = 1u << 3;   // read data of a DTB outside the read-data set
                                                              // (CtlType::kSetReadDataDtbs): data_len 0

struct Capture {
  std::uint8_t arg;          // argument index 0-5
  std::uint8_t kind;         // CaptureKind
  std::uint16_t flags;
  std::uint32_t data_len;    // bytes following this header (before padding)
  std::uint64_t true_len;
};
static_assert(sizeof(Capture) == 16);

constexpr std::uint32_t align_record(std::uint64_t n) {
  return static_cast<std::uint32_t>((n + kRecordAlign - 1) & ~std::uint64_t{kRecordAlign - 1});
}

// The largest record a syscall event can need at snap length `snap`: the biggest body, then at most
// kMaxCaptures captures of at most `snap` bytes each (argv: 4 x snap, at most kMaxSnapLen). The snap
// length is accepted only if this fits the rings' max_record, so no event is dropped as too big.
constexpr std::uint32_t argv_budget(std::uint32_t snap) { return snap * 4 < kMaxSnapLen ? snap * 4 : kMaxSnapLen; }
constexpr std::uint32_t max_event_bytes(std::uint32_t snap) {
  const std::uint32_t widest = argv_budget(snap) > snap ? argv_budget(snap) : snap;
  return 256 + kMaxCaptures * (static_cast<std::uint32_t>(sizeof(Capture)) + align_record(widest));
}

}  // namespace hvtrace::abi
