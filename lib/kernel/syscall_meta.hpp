// The guest's own system-call table, read from its memory. A kernel built with
// CONFIG_FTRACE_SYSCALLS keeps one `struct syscall_metadata` per SYSCALL_DEFINE (kallsyms
// `__syscall_meta__<name>`): its name ("sys_openat"), its x86-64 number (-1 until
// init_ftrace_syscalls() fills it from sys_call_table at boot), and its argument types and names
// as written in the source. sys_call_table maps x86-64 numbers to `__x64_sys_<name>` wrappers;
// the i386 compat entry points exist only as `__ia32_sys_<name>` / `__ia32_compat_sys_<name>`
// symbols (x86 has no ia32_sys_call_table since 6.x). All of it is guest data: every count and
// string is bounded and a bad record is skipped with a reason, never trusted.
// The result is cached in the kernel profile (same build, same table), so a warm attach does not
// reread it.
#pragma once

#include "common/result.hpp"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace hvtrace::kernel {

class Kernel;

struct SyscallMeta {
  std::string name;  // without the "sys_" prefix: "openat"
  std::int32_t nr = -1;  // x86-64 number as the kernel filled it at boot; -1: not in sys_call_table
  std::vector<std::string> types, args;  // one per argument, nb_args of each
  friend bool operator==(const SyscallMeta&, const SyscallMeta&) = default;
};

struct GuestSyscalls {
  std::vector<SyscallMeta> meta;                   // from __syscall_meta__*, in kallsyms order
  std::map<std::uint32_t, std::string> x64_table;  // sys_call_table: nr -> name (__x64_sys_<name>; ni_syscall skipped)
  std::set<std::string> ia32_names;                // __ia32_sys_<name> and __ia32_compat_sys_<name>: <name>
  std::string source;                              // where this came from (memory + layout origin, or a cache)
  std::size_t rejected = 0;                        // records/entries skipped as implausible
  std::vector<std::string> problems;               // why, for the first few of them
  friend bool operator==(const GuestSyscalls&, const GuestSyscalls&) = default;
};

// Bounds on what the guest may make us read.
struct SyscallMetaLimits {
  static constexpr std::size_t kMaxRecords = 1024;    // __syscall_meta__ symbols
  static constexpr std::size_t kMaxArgs = 6;          // nb_args
  static constexpr std::size_t kMaxString = 64;       // name, each type and argument name
  static constexpr std::size_t kMaxTable = 512;       // sys_call_table entries
  static constexpr std::size_t kMaxIa32Names = 4096;
  static constexpr std::size_t kMaxProblems = 16;
};

// Read everything from guest memory (decodes kallsyms once). The layout of struct
// syscall_metadata comes from the profile's BTF fields, else from the BTF in guest memory, else
// the 6.1 layout. Fails only if the kernel has neither metadata nor sys_call_table.
[[nodiscard]] Result<GuestSyscalls> read_guest_syscalls(const Kernel& k);

// The profile's cached copy if it has one; otherwise read_guest_syscalls(), and with save_dir
// the result is added to the cached profile <save_dir>/<profile key>.json for the next attach.
[[nodiscard]] Result<GuestSyscalls> guest_syscalls(const Kernel& k, const std::optional<std::filesystem::path>& save_dir);

// Where the guest and a compiled-in table disagree, one human-readable line each, e.g.
// "x86-64 nr 334: guest has rseq, compiled-in has foo". x64_name_of(nr) gives the compiled-in
// kernel entry point name for nr without "sys_" (syscall_64.tbl's entry column: "newstat" for
// nr 4), nullopt for a hole. Also reports metadata whose boot-time number disagrees with the
// compiled-in table. i386_entry_of(nr) gives the compiled-in i386 entry point for nr (without
// "__ia32_sys_"/"__ia32_compat_sys_"; alternatives separated by '|'), nullopt for a hole: each one
// the guest has no such symbol
// for is reported as "i386 nr N: guest has none, compiled-in has X" (the guest keeps an __ia32_sys_
// stub of every syscall, so the other direction says nothing).
[[nodiscard]] std::vector<std::string> compare_syscall_tables(
    const GuestSyscalls& guest, const std::function<std::optional<std::string>(unsigned nr)>& x64_name_of,
    const std::function<std::optional<std::string>(unsigned nr)>& i386_entry_of);

}  // namespace hvtrace::kernel
