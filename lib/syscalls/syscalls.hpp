// System-call tables and strace-grade decoding, for `hvtrace trace`. Pure functions over values:
// no guest, no I/O. The tables are compiled in (x86-64 and i386 numbering, names and classes as
// strace has them); a call is decoded from its numbers and the monitor's captures into the text
// strace would print for it.
// Invariants: every input is treated as hostile (captures may lie about their length, carry no
// NUL, name an argument > 5); decoding never reads outside a capture, never allocates more than
// a bound proportional to string_limit and the capture sizes, and never fails: what cannot be
// decoded prints as hex, as strace prints a pointer it could not read.
#pragma once

#include "common/result.hpp"
#include "events/event_reader.hpp"

#include "hvtrace/abi/events.h"

#include <array>
#include <bitset>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace hvtrace::syscalls {

// strace's TRACE_* classes (`-e trace=%file` ...).
enum Class : std::uint32_t {
  kFile = 1,
  kProcess = 2,
  kNetwork = 4,
  kDesc = 8,
  kMemory = 16,
  kSignal = 32,
  kIpc = 64,
};

// How a call's arguments are printed (format.cpp); kGeneric prints nargs hex values.
enum class Decoder : std::uint8_t {
  kGeneric, kHexRet, kNoArgs, kInt, kFd, kFdPtr, kPath, kPath2, kPathPtr, kPathMode, kAtPathMode,
  kFdMode, kRead, kWrite, kPread, kPwrite, kReadv, kWritev, kOpen, kOpenat, kCreat, kFstatat,
  kStatx, kAccess, kFaccessat, kFaccessat2, kGetdents, kLseek, kLlseek, kMmap, kMmap2, kMprotect,
  kMunmap, kBrk, kExecve, kExecveat, kClone, kClone3, kWait4, kWaitpid, kDup2, kDup3, kPipe,
  kPipe2, kFcntl, kGetcwd, kUnlinkat, kRenameat, kRenameat2, kLinkat, kSymlinkat, kFchmodat2,
  kReadlink, kReadlinkat, kChown, kChown16, kFchown, kFchown16, kFchownat, kKill, kTgkill,
  kRtSigaction, kRtSigprocmask, kIoctl, kSocket, kSockaddrIn, kAccept, kAccept4, kListen, kSendto,
  kRecvfrom, kMsg, kIds, kIds16, kPrctl, kArchPrctl,
};

struct SyscallInfo {
  std::string_view name;
  std::uint8_t nargs = 0;
  std::uint32_t classes = 0;   // Class bits
  Decoder decoder = Decoder::kGeneric;
};

// One ABI's table. x32 shares the x86-64 rows; its numbers carry bit 30 (nr_base()).
class Table {
 public:
  struct Entry {
    unsigned nr;
    SyscallInfo info;
  };
  static constexpr std::size_t kMaxNr = 512;   // every table's numbers are below this (+ nr_base)

  static const Table& get(abi::SyscallAbi abi);

  [[nodiscard]] const SyscallInfo* by_nr(std::uint64_t nr) const;   // nullptr if unknown
  [[nodiscard]] std::optional<unsigned> by_name(std::string_view name) const;   // with nr_base()
  // Numbers run from nr_base() to nr_base() + size() - 1; by_nr is nullptr for the holes.
  [[nodiscard]] std::size_t size() const { return size_; }
  [[nodiscard]] std::uint64_t nr_base() const { return base_; }
  [[nodiscard]] std::span<const Entry> entries() const { return entries_; }   // ascending nr
  [[nodiscard]] abi::SyscallAbi abi() const { return abi_; }

  Table(abi::SyscallAbi abi, std::span<const Entry> entries, std::uint64_t base);

 private:
  abi::SyscallAbi abi_;
  std::span<const Entry> entries_;
  std::uint64_t base_;
  std::size_t size_ = 0;
  std::array<const SyscallInfo*, kMaxNr> index_{};
};

// -e trace=SET, as strace parses it: names, %classes, all, none, `!` negating the whole set,
// `?name` ignoring a name no table knows. Numbers per ABI (x32 uses the x86-64 set).
struct TraceSet {
  std::array<std::bitset<Table::kMaxNr>, 2> nrs;   // [0] x86-64, [1] i386
  [[nodiscard]] bool contains(abi::SyscallAbi abi, std::uint64_t nr) const;
  TraceSet& operator|=(const TraceSet& o) {
    for (std::size_t a = 0; a < nrs.size(); ++a) nrs[a] |= o.nrs[a];
    return *this;
  }
};
[[nodiscard]] Result<TraceSet> parse_trace_set(std::string_view spec);

// -e status=SET: which completed calls to print.
struct StatusSet {
  bool successful = true, failed = true, unfinished = true, unavailable = true, detached = true;
  [[nodiscard]] bool shows(bool call_failed) const { return call_failed ? failed : successful; }
};
[[nodiscard]] Result<StatusSet> parse_status_set(std::string_view spec);

// One completed (or still running) call.
struct Call {
  abi::SyscallAbi abi = abi::SyscallAbi::kX86_64;
  std::uint64_t nr = 0;
  std::uint64_t args[6] = {};
  std::optional<std::int64_t> ret;          // nullopt: not returned (yet) / unknown
  std::vector<events::Capture> entry_caps;  // copied at entry (paths, write buffers, argv)
  std::vector<events::Capture> exit_caps;   // copied at exit (read buffers, outputs)
};

struct FormatOptions {
  std::uint32_t string_limit = 32;   // strace -s
};

struct Formatted {
  std::string name;
  std::vector<std::string> args;
  std::string ret;       // "3", "-1 ENOENT (No such file or directory)", "0x55d0...", "?"
  bool failed = false;   // returned -4095..-1
};

[[nodiscard]] Formatted format_call(const Call& call, const FormatOptions& opts);
// The "(...)" body only (parentheses included), for a line printed at entry.
[[nodiscard]] std::string format_args(const Call& call, const FormatOptions& opts);
// What follows "= ": "3", "-1 ENOENT (No such file or directory)", "? ERESTARTSYS (...)", "?".
[[nodiscard]] std::string format_return(const Call& call);
// The line body strace prints: `name(args)`, padded to column 40 (counted from start_col, the
// width of whatever prefix the caller prints first), then `= ret`.
[[nodiscard]] std::string to_text(const Formatted& f, std::size_t start_col = 0);

// The kernel's entry-point name of a call (sys_call_table's column, without "sys_"), where it
// differs from the name strace prints: "newstat" for x86-64 stat; for i386, the ia32 entry point
// without "__ia32_sys_"/"__ia32_compat_sys_"; where kernels named it differently, the names
// separated by '|' ("x86_stat64|ia32_stat64" for stat64). Otherwise strace_name.
[[nodiscard]] std::string_view kernel_entry_name(abi::SyscallAbi abi, std::uint64_t nr, std::string_view strace_name);

[[nodiscard]] std::optional<std::string_view> errno_name(int err);
[[nodiscard]] std::optional<std::string_view> errno_message(int err);   // C library's strerror text
[[nodiscard]] std::optional<std::string_view> signal_name(int sig);    // "SIGINT", "SIGRT_3"
[[nodiscard]] std::string signal_text(int sig);                        // its name, or the number as strace prints it

// The first capture of argument `arg` of that kind, or null.
[[nodiscard]] const events::Capture* find_capture(const std::vector<events::Capture>& caps, unsigned arg,
                                                  abi::CaptureKind kind);

// A wait status (wait4's *wstatus) as the W* macros read it.
struct WaitStatus {
  enum class Kind { kExited, kSignaled, kStopped, kContinued } kind = Kind::kExited;
  int value = 0;       // exit code, terminating or stopping signal
  bool core = false;   // kSignaled: WCOREDUMP
  std::uint32_t high = 0;   // kStopped: s >> 16 (the ptrace event)
  [[nodiscard]] bool dead() const { return kind == Kind::kExited || kind == Kind::kSignaled; }
};
[[nodiscard]] WaitStatus decode_wait_status(std::uint32_t s);

// What a completed wait4/waitpid that returned a child's pid says about that child, from its
// status capture (argument 1, copied at exit) and its options (wait4's argument 2, waitpid's 2):
// whether the child is gone (reaped dead: exited or killed), and how, when the status was copied.
// A child reaped stopped or continued (WUNTRACED, WCONTINUED) is alive. Without a copied status,
// a wait that could not report a stop or a continue reaped a dead child.
struct Reaped {
  bool dead = false;
  std::optional<WaitStatus> status;
};
[[nodiscard]] Reaped reaped_child(const std::vector<events::Capture>& exit_caps, std::uint64_t options);

}  // namespace hvtrace::syscalls
