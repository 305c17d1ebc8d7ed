// The monitoring side of the control channel ("the hypercall", abi/control.h): connect to the
// monitor's socket, attach as the consumer, change the in-hypervisor filter at run time. Each call
// sends one message and waits for its reply; a rejected message comes back as an Error carrying
// the monitor's reason. Closing the client (or dying) detaches: the monitor stops waiting on us.
#pragma once

#include "common/result.hpp"
#include "common/types.hpp"

#include "hvtrace/abi/control.h"
#include "hvtrace/abi/events.h"

#include <array>
#include <chrono>
#include <filesystem>
#include <optional>
#include <vector>

namespace hvtrace::events {

struct Actions {
  abi::Action cr3 = abi::Action::kDrop;
  abi::Action syscall_entry = abi::Action::kDrop;
  abi::Action syscall_exit = abi::Action::kDrop;
  abi::Action breakpoint = abi::Action::kDrop;
  bool cr3_unfiltered = false;   // every CR3 write, whatever the DTB set (the paper's method 3)
  bool cr3_leaving_only = false; // with a DTB set: only writes from a DTB of the set (abi::kActionCr3LeavingOnly)
};

struct MonitorStats {
  std::uint32_t generation = 0;
  std::uint64_t rejected_messages = 0;
  std::uint64_t user_syscalls = 0;   // independent inline counters, all vCPUs: `syscall` (any mode),
  std::uint64_t cr3_writes = 0;      //   mov-to-CR3, `int $0x80`, `sysenter`
  std::uint64_t user_int80s = 0;
  std::uint64_t user_sysenters = 0;
};

// A breakpoint for the monitor (abi::AddBreakpointMsg); the monitor validates it and says why not.
struct BreakpointSpec {
  std::uint32_t id = 0;          // != 0, chosen by the caller, unique among the breakpoints in force
  std::uint64_t va = 0;          // kernel: upper half (e.g. a kallsyms address); user: lower half
  abi::BreakpointKind kind = abi::BreakpointKind::kKernel;
  abi::Action action = abi::Action::kAsync;
  std::vector<Dtb> dtbs;         // kernel: empty = every address space, else at most 4; user: exactly one
};

class ControlClient {
 public:
  [[nodiscard]] static Result<ControlClient> connect(const std::filesystem::path& socket,
                                                     std::chrono::milliseconds wait = std::chrono::milliseconds{0});
  ControlClient(ControlClient&& o) noexcept : fd_(o.fd_), next_id_(o.next_id_) { o.fd_ = -1; }
  ControlClient& operator=(ControlClient&& o) noexcept;
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;
  ~ControlClient();

  // Each returns the filter generation in force afterwards.
  Result<std::uint32_t> attach();
  Result<std::uint32_t> set_all_dtbs();                          // no DTB filter
  Result<std::uint32_t> set_dtbs(const std::vector<Dtb>& dtbs);  // the paper's pre-filter
  // Whose read data (read, pread64, recvfrom at exit) the monitor copies; nullopt: every DTB's
  // (the default). The others' reads come with their length only (kCaptureNotCopied).
  Result<std::uint32_t> set_read_data_dtbs(const std::optional<std::vector<Dtb>>& dtbs);
  // Argument rules for the processes outside the read-data set (abi::ArgRule), replacing those in
  // force; empty: none. At most abi::kMaxArgRules, one per call.
  Result<std::uint32_t> set_arg_rules(const std::vector<abi::ArgRule>& rules);
  // The numbers that pass in one table (x86-64, which x32 shares, or i386); nullopt: all.
  Result<std::uint32_t> set_syscalls(const std::optional<std::vector<unsigned>>& nrs,
                                     abi::SyscallAbi table = abi::SyscallAbi::kX86_64);
  // Exits of these numbers are sync even with an async exit action.
  Result<std::uint32_t> set_sync_syscalls(const std::vector<unsigned>& nrs,
                                          abi::SyscallAbi table = abi::SyscallAbi::kX86_64);
  // Where the monitor reads each event's task identity (0 turns it off).
  Result<std::uint32_t> set_identity(std::uint64_t current_task_off, std::uint32_t pid_off, std::uint32_t tgid_off);
  Result<std::uint32_t> set_actions(const Actions& a);
  Result<std::uint32_t> set_snap_len(std::uint32_t bytes);
  // Breakpoints at run time: each change costs the guest one code-cache flush, not a cost per event.
  Result<std::uint32_t> add_breakpoint(const BreakpointSpec& bp);
  Result<std::uint32_t> remove_breakpoint(std::uint32_t id);
  Result<std::uint32_t> detach();
  Result<MonitorStats> stats();

  // Send arbitrary bytes as one message and return the reply as is (tests of the validation).
  Result<abi::Reply> send_raw(const void* msg, std::size_t len);

 private:
  explicit ControlClient(int fd) : fd_(fd) {}
  Result<abi::Reply> exchange(const void* msg, std::size_t len, std::optional<std::uint32_t> id);
  template <typename M>
  Result<std::uint32_t> request(M& msg, abi::CtlType type);
  Result<std::uint32_t> dtb_set(const std::vector<Dtb>& dtbs, abi::CtlType type);
  int fd_ = -1;
  std::uint32_t next_id_ = 1;
};

}  // namespace hvtrace::events
