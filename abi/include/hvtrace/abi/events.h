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

struct Cr3WriteEvent {
  EventHeader hdr;
  std::uint64_t old_cr3;
  std::uint64_t new_cr3;
  std::uint64_t rip;               // of the mov-to-CR3 instruction
  std::uint64_t cr3_writes;        // independent inline count of mov-to-CR3 executed on this vCPU
};
static_assert(sizeof(Cr3WriteEvent) == 72);

struct SyscallEntryEvent {
  EventHeader hdr;
  std::uint64_t nr;                // rax
  std::uint64_t args[6];           // rdi, rsi, rdx, r10, r8, r9
  std::uint64_t cr3;
  std::uint64_t user_rip;          // rcx at entry: the instruction after `syscall`
  std::uint64_t user_rsp;          // still the user stack at the entry point
  std::uint64_t user_syscalls;     // independent inline count of user `syscall` executed on this vCPU
  std::uint32_t n_captures;
  std::uint32_t reserved;
};
static_assert(sizeof(SyscallEntryEvent) == 136);

enum class ExitVia : std::uint16_t { kSysret = 1, kIret = 2 };

struct SyscallExitEvent {
  EventHeader hdr;
  std::int64_t ret;                // rax
  std::int64_t nr;                 // of the paired entry, -1 if the monitor did not see it
  std::uint64_t cr3;
  std::uint64_t user_rip;          // where user mode resumes
  std::uint64_t user_rsp;
  std::uint64_t entry_seq;         // seq of the paired entry (same ring), 0 if unpaired
  std::uint16_t via;               // ExitVia
  std::uint16_t reserved;
  std::uint32_t n_captures;
};
static_assert(sizeof(SyscallExitEvent) == 96);

struct BreakpointEvent {
  EventHeader hdr;
  std::uint64_t va;
  std::uint64_t cr3;
  std::uint64_t rsp;
  std::uint64_t regs[7];           // rdi, rsi, rdx, rcx, r8, r9, rax
};
static_assert(sizeof(BreakpointEvent) == 120);

enum class CaptureKind : std::uint8_t {
  kString = 1,    // NUL-terminated string; data excludes the NUL
  kBuffer = 2,    // byte buffer; true_len is the syscall's length (count, or the return value)
  kArgv = 3,      // string array; data = the strings each followed by NUL; true_len = argc seen
};
inline constexpr std::uint16_t kCaptureTruncated = 1u << 0;   // data_len < true_len
inline constexpr std::uint16_t kCaptureFault = 1u << 1;       // guest memory unreadable at some point
inline constexpr std::uint16_t kCaptureLenUnknown = 1u << 2;  // string longer than the scan limit

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

}  // namespace hvtrace::abi
