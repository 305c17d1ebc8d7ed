// The control channel ("the hypercall"): a unix SOCK_SEQPACKET socket created by the monitor
// (owner-only); one message per packet, each answered by exactly one Reply. Only a peer with the
// monitor's uid (SO_PEERCRED) is served. Every message is validated (magic, version, type, exact
// size, value ranges); a bad one gets an error Reply and changes nothing. Each accepted change
// builds a complete new filter configuration and publishes it at once: the generation counter
// rises by one and events carry the generation that let them through.
#pragma once

#include "hvtrace/abi/ring.h"

#include <cstddef>
#include <cstdint>

namespace hvtrace::abi {

inline constexpr std::uint32_t kCtlMagic = 0x4c544348;   // "HCTL"
inline constexpr std::uint32_t kMaxDtbs = 64;
inline constexpr std::uint32_t kSyscallBits = 512;       // syscall numbers 0..511
inline constexpr std::uint32_t kMaxBreakpoints = 64;    // in force at once (bp= arguments included)
inline constexpr std::uint32_t kMaxBreakpointDtbs = 4;  // address spaces one breakpoint may be scoped to
inline constexpr std::uint32_t kMaxArgRules = 16;       // SetArgRulesMsg

enum class CtlType : std::uint16_t {
  kAttach = 1,        // AttachMsg -> Reply (status, generation); the consumer of the rings
  kSetDtbs = 2,       // SetDtbsMsg
  kSetSyscalls = 3,   // SetSyscallsMsg
  kSetActions = 4,    // SetActionsMsg
  kSetSnapLen = 5,    // SetSnapLenMsg
  kDetach = 6,        // CtlHeader only; sync waits end, sync actions degrade to async
  kGetStats = 7,      // CtlHeader only -> Reply with stats filled
  kSetIdentity = 8,   // SetIdentityMsg: where the current task and its ids are (events' `who`)
  kSetSyncSyscalls = 9,  // SetSyscallsMsg: exits of these numbers are sync whatever the exit action
                         // says (the monitoring side must act before the caller runs on, e.g. add
                         // a fork child's address space to the DTB set)
  kAddBreakpoint = 10,     // AddBreakpointMsg: a breakpoint with its own action and scope
  kRemoveBreakpoint = 11,  // RemoveBreakpointMsg
  kSetReadDataDtbs = 12,   // SetDtbsMsg: the data a call reads (read, pread64, recvfrom: the buffer
                           // at the exit, as long as the return value) is copied only for these
                           // DTBs; the others' such captures come with no bytes, flagged
                           // kCaptureNotCopied. Mode all (the default): every DTB's.
  kSetArgRules = 13,       // SetArgRulesMsg: calls that a process outside the read-data set makes
                           // pass only when an argument has one of a mask's bits (e.g. openat only
                           // for writing); replaces the rules in force, count 0 removes them
};

struct CtlHeader {
  std::uint32_t magic;      // kCtlMagic
  std::uint16_t version;    // kAbiVersion
  std::uint16_t type;       // CtlType
  std::uint32_t size;       // whole message
  std::uint32_t request_id; // echoed in the reply
};
static_assert(sizeof(CtlHeader) == 16);

struct AttachMsg {
  CtlHeader hdr;
  std::uint32_t client_pid;
  std::uint32_t reserved;
};
static_assert(sizeof(AttachMsg) == 24);

enum class DtbMode : std::uint32_t {
  kAll = 0,     // no DTB filter: every CR3 write and every syscall passes
  kSet = 1,     // the paper's pre-filter: only DTBs in the set
};

struct SetDtbsMsg {
  CtlHeader hdr;
  std::uint32_t mode;       // DtbMode
  std::uint32_t count;      // <= kMaxDtbs, 0 with kSet means "nothing passes"
  std::uint64_t dtbs[kMaxDtbs];  // masked with kDtbMask by the monitor; entries >= count must be 0
};
static_assert(sizeof(SetDtbsMsg) == 24 + 8 * kMaxDtbs);

// One argument rule (SetArgRulesMsg). An entry of call `nr` of table `abi` (0 x86-64, x32 with
// its bit cleared; 1 i386) by a process whose DTB is outside the read-data set (kSetReadDataDtbs;
// with that set in mode all, every process is inside and no rule applies) passes only when
// (args[arg] & mask) != 0; mask 0: never. A call dropped at entry is not paired, so its exit is
// dropped too. Rules narrow what the syscall set and the DTB set let through, never widen it.
struct ArgRule {
  std::uint16_t nr;         // < kSyscallBits
  std::uint8_t abi;         // 0 or 1, as SetSyscallsMsg::abi
  std::uint8_t arg;         // 0-5
  std::uint32_t reserved;   // 0
  std::uint64_t mask;
};
static_assert(sizeof(ArgRule) == 16);

struct SetArgRulesMsg {
  CtlHeader hdr;
  std::uint32_t count;      // <= kMaxArgRules; rules >= count must be all 0; at most one rule per (abi, nr)
  std::uint32_t reserved;   // 0
  ArgRule rules[kMaxArgRules];
};
static_assert(sizeof(SetArgRulesMsg) == 24 + 16 * kMaxArgRules);

struct SetSyscallsMsg {
  CtlHeader hdr;
  std::uint32_t all;        // 1: every number passes (bitmap ignored, must be 0)
  std::uint32_t abi;        // SyscallAbi whose set this is: 0 x86-64 (x32 too), 1 i386 (every 32-bit door)
  std::uint64_t bitmap[kSyscallBits / 64];
};
static_assert(sizeof(SetSyscallsMsg) == 24 + 64);

struct SetIdentityMsg {
  CtlHeader hdr;
  std::uint64_t current_task_off;  // per-CPU offset of the current task pointer (0: identity off)
  std::uint32_t pid_off;           // offsets in task_struct, < kMaxTaskOffset
  std::uint32_t tgid_off;
};
static_assert(sizeof(SetIdentityMsg) == 32);
inline constexpr std::uint32_t kMaxTaskOffset = 64 * 1024;
inline constexpr std::uint64_t kMaxPerCpuOffset = 16 * 1024 * 1024;

enum class Action : std::uint8_t { kDrop = 0, kAsync = 1, kSync = 2 };
enum class EventClass : std::uint8_t { kCr3 = 0, kSyscallEntry = 1, kSyscallExit = 2, kBreakpoint = 3, kCount = 4 };

// Breakpoints (kAddBreakpoint / kRemoveBreakpoint). Each change costs one flush of QEMU's code
// cache (the next translation of the address gets or loses its callback), nothing per event; a
// stale translation never reports a breakpoint that is no longer in force. A breakpoint has its own
// action and scope: neither the DTB set nor SetActionsMsg's breakpoint slot (ignored) applies.
// The monitor cannot check that a kernel address is the start of an instruction in kernel text (it
// has no symbols): it accepts any canonical upper-half address, and an address that is never the
// start of an executed instruction simply never fires.
enum class BreakpointKind : std::uint8_t {
  kKernel = 1,   // upper-half address; scope: every address space (n_dtbs 0) or 1..kMaxBreakpointDtbs DTBs
  kUser = 2,     // lower-half address; scope: exactly one DTB (the address means nothing elsewhere)
  kKernelTraced = 3,   // upper-half address; scope: the DTB filter in force (SET_DTBS; every address
                       // space under SET_ALL_DTBS), followed as it changes; n_dtbs 0
};

struct AddBreakpointMsg {
  CtlHeader hdr;
  std::uint32_t id;         // != 0, chosen by the consumer, unique among the breakpoints in force
  std::uint8_t kind;        // BreakpointKind
  std::uint8_t action;      // Action: drop (kept, never fires), async, sync (the vCPU waits for the ack)
  std::uint16_t n_dtbs;     // see BreakpointKind; entries >= n_dtbs must be 0
  std::uint64_t va;         // canonical, != 0, in the half that `kind` names
  std::uint64_t dtbs[kMaxBreakpointDtbs];   // page-table bases (kDtbMask)
};
static_assert(sizeof(AddBreakpointMsg) == 64);

struct RemoveBreakpointMsg {
  CtlHeader hdr;
  std::uint32_t id;         // of a breakpoint in force
  std::uint32_t reserved;   // 0
};
static_assert(sizeof(RemoveBreakpointMsg) == 24);

// SetActionsMsg::flags
inline constexpr std::uint32_t kActionCr3Unfiltered = 1u << 0;  // forward every CR3 write, ignoring the DTB set
                                                                // (the paper's method 3: the application filters)
inline constexpr std::uint32_t kActionCr3LeavingOnly = 1u << 1;  // with a DTB set: only writes whose old DTB is in
                                                                 // the set (a switch away, an exec loading its new
                                                                 // mm), not those entering it from outside
struct SetActionsMsg {
  CtlHeader hdr;
  std::uint8_t actions[static_cast<std::size_t>(EventClass::kCount)];   // Action per EventClass
  std::uint32_t flags;      // kActionCr3Unfiltered, kActionCr3LeavingOnly
};
static_assert(sizeof(SetActionsMsg) == 24);

struct SetSnapLenMsg {
  CtlHeader hdr;
  std::uint32_t snap_len;   // 0 (no captures) .. kMaxSnapLen
  std::uint32_t reserved;
};
static_assert(sizeof(SetSnapLenMsg) == 24);

enum class CtlStatus : std::int32_t {
  kOk = 0,
  kBadMagic = 1,
  kBadVersion = 2,
  kBadType = 3,
  kBadSize = 4,
  kBadValue = 5,
  kNotAttached = 6,
  kBusy = 7,            // another consumer is attached
};

struct Reply {
  CtlHeader hdr;            // type echoes the request's type
  std::int32_t status;      // CtlStatus
  std::uint32_t generation; // in force after this request
  char message[96];         // NUL-terminated reason for a person
  // kGetStats only (zero otherwise): totals over all rings
  std::uint64_t rejected_messages;
  std::uint64_t user_syscalls;   // independent inline counters, summed over vCPUs
  std::uint64_t cr3_writes;
  std::uint64_t user_int80s;     // `int $0x80` executed in user mode
  std::uint64_t user_sysenters;  // `sysenter` executed in user mode
  std::uint64_t reserved[3];
};
static_assert(sizeof(Reply) == 16 + 8 + 96 + 64);

inline constexpr std::uint32_t kMaxCtlMessage = sizeof(SetDtbsMsg);

}  // namespace hvtrace::abi
