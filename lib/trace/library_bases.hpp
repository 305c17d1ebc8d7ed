// Where traced processes loaded the shared libraries we care about, learnt from their own system
// calls, with no symbols and no look at the guest's VMA lists: the loader opens the library
// (open/openat of a path ending in e.g. "libcrypt.so.1" returning fd N), then maps it; the first
// mmap(..., fd N, offset 0) returns the load base (where the ELF header is). close(N) ends the
// fd's candidacy, munmap of the base forgets the library, a successful execve forgets everything
// of the process, a fork child inherits its parent's (same mappings). Pure: fed completed calls.
#pragma once

#include "syscalls/syscalls.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace hvtrace::trace {

class LibraryBases {
 public:
  // names: library file names to watch ("libc.so.6"); a path matches when its last component is
  // one of them. max_procs bounds what a fork storm can make this hold.
  explicit LibraryBases(std::vector<std::string> names, std::size_t max_procs = 4096);

  struct Change {
    enum class Kind { kLoaded, kUnloaded } kind;
    std::uint32_t pid = 0;
    std::string lib;
    std::uint64_t base = 0;
  };
  // One completed call of process `pid` (its thread group): what it changed.
  std::vector<Change> on_call(std::uint32_t pid, const syscalls::Call& c);
  // A library found another way (its ELF header in the process's memory, for a process that
  // loaded it before anyone watched). Nothing when already known at that base.
  std::vector<Change> set_loaded(std::uint32_t pid, const std::string& lib, std::uint64_t base);
  // The calls on_call reads (x86-64: open, openat, close, mmap, munmap, execve, the clone family;
  // exit_group of both ABIs): what a caller that asks the monitor for a narrow set adds to it.
  [[nodiscard]] static syscalls::TraceSet syscall_set();
  // A fork seen before its return (the fork breakpoint, while the parent waits): the child has its
  // parent's libraries at the same bases. The parent's clone return, seen later, then changes
  // nothing (by then the child may have exec'd). Empty when the parent has none.
  std::vector<Change> fork(std::uint32_t parent, std::uint32_t child);
  // The process is gone: every library of it is unloaded.
  std::vector<Change> forget(std::uint32_t pid);

  [[nodiscard]] std::optional<std::uint64_t> base(std::uint32_t pid, const std::string& lib) const;
  [[nodiscard]] const std::map<std::string, std::uint64_t>* bases(std::uint32_t pid) const;

 private:
  struct Proc {
    std::map<std::int64_t, std::string> fds;       // fd -> library, opened, not yet mapped
    std::map<std::string, std::uint64_t> loaded;   // library -> base
  };
  [[nodiscard]] std::optional<std::string> watched(const std::string& path) const;
  std::vector<Change> inherit(std::uint32_t parent, std::uint32_t child);
  std::vector<std::string> names_;
  std::size_t max_procs_;
  std::map<std::uint32_t, Proc> procs_;
  std::set<std::uint32_t> forked_;   // children fork() announced whose parent's clone return is still to come
};

}  // namespace hvtrace::trace
