// The monitor's configuration: what the plugin arguments set at start (Options) and what the
// control channel changes at run time (FilterConfig). Parsing and validation are pure functions so
// they are unit-tested without QEMU; a rejected argument or message changes nothing and yields a
// reason a person can act on.
#pragma once

#include "hvtrace/abi/control.h"
#include "hvtrace/abi/events.h"
#include "hvtrace/abi/spsc.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace hvtrace::monitor {

using abi::Action;
using abi::EventClass;

// One breakpoint in force (AddBreakpointMsg, validated).
struct Breakpoint {
  std::uint64_t va = 0;
  std::uint32_t id = 0;
  abi::BreakpointKind kind = abi::BreakpointKind::kKernel;
  Action action = Action::kDrop;
  std::uint16_t n_dtbs = 0;                   // 0: every address space (kernel only)
  std::uint64_t dtbs[abi::kMaxBreakpointDtbs] = {};

  [[nodiscard]] bool fires_in(std::uint64_t dtb) const {
    if (n_dtbs == 0) return true;
    for (std::uint16_t i = 0; i < n_dtbs; ++i)
      if (dtbs[i] == dtb) return true;
    return false;
  }
};

// The filter in force. Plain data, copied whole on every change and published at once.
struct FilterConfig {
  std::uint32_t generation = 0;
  abi::DtbMode dtb_mode = abi::DtbMode::kAll;
  std::uint32_t n_dtbs = 0;
  std::uint64_t dtbs[abi::kMaxDtbs] = {};
  // One syscall set per table: [0] x86-64 numbers (x32 calls use it with the x32 bit cleared),
  // [1] i386 numbers (int $0x80, sysenter, compat syscall).
  bool all_syscalls[2] = {true, true};
  std::uint64_t syscall_bitmap[2][abi::kSyscallBits / 64] = {};
  Action actions[static_cast<std::size_t>(EventClass::kCount)] = {Action::kDrop, Action::kDrop, Action::kDrop,
                                                                   Action::kDrop};
  std::uint32_t snap_len = abi::kDefaultSnapLen;
  // Exits of these numbers are sync even when the exit action is async (per table, like above).
  std::uint64_t sync_bitmap[2][abi::kSyscallBits / 64] = {};
  // Identity reads (SetIdentityMsg); current_task_off == 0: off.
  std::uint64_t current_task_off = 0;
  std::uint32_t pid_off = 0, tgid_off = 0;
  bool cr3_unfiltered = false;   // forward every CR3 write whatever the DTB set (ablation, method 3)
  bool cr3_leaving_only = false; // with a DTB set, only writes from a DTB of the set (kActionCr3LeavingOnly)
  // Breakpoints in force, in the order they were added (bp= arguments first).
  std::uint32_t n_bps = 0;
  Breakpoint bps[abi::kMaxBreakpoints] = {};
  // Whose read data is copied (kSetReadDataDtbs): every DTB's, or only these.
  abi::DtbMode read_data_mode = abi::DtbMode::kAll;
  std::uint32_t n_read_data_dtbs = 0;
  std::uint64_t read_data_dtbs[abi::kMaxDtbs] = {};
  // Argument rules (kSetArgRules) for the processes outside the read-data set.
  std::uint32_t n_arg_rules = 0;
  abi::ArgRule arg_rules[abi::kMaxArgRules] = {};

  [[nodiscard]] Action action(EventClass c) const { return actions[static_cast<std::size_t>(c)]; }
  [[nodiscard]] bool dtb_passes(std::uint64_t dtb) const { return in_set(dtb_mode, dtbs, n_dtbs, dtb); }
  // Whether breakpoint `b` reports a hit while `dtb` is the address space.
  [[nodiscard]] bool bp_fires_in(const Breakpoint& b, std::uint64_t dtb) const {
    return b.kind == abi::BreakpointKind::kKernelTraced ? dtb_passes(dtb) : b.fires_in(dtb);
  }
  [[nodiscard]] bool read_data_passes(std::uint64_t dtb) const {
    return in_set(read_data_mode, read_data_dtbs, n_read_data_dtbs, dtb);
  }
  [[nodiscard]] static bool in_set(abi::DtbMode mode, const std::uint64_t* set, std::uint32_t n, std::uint64_t dtb) {
    if (mode == abi::DtbMode::kAll) return true;
    for (std::uint32_t i = 0; i < n; ++i)
      if (set[i] == dtb) return true;
    return false;
  }
  // A CR3 write the DTB pre-filter forwards. Only a change of page-table base says who runs (a
  // switch, an exec): under PTI the kernel also writes CR3 at every kernel entry and exit to flip
  // between one process's kernel and user tables (the same base, bit 12 masked), and with PCID it
  // rewrites CR3 with another ASID. Those are dropped in DTB-set mode; kept when every write is
  // asked for (all DTBs, or cr3_unfiltered: method 3 filters in the application).
  [[nodiscard]] bool cr3_write_passes(std::uint64_t old_dtb, std::uint64_t new_dtb) const {
    if (dtb_mode == abi::DtbMode::kAll || cr3_unfiltered) return true;
    if (old_dtb == new_dtb) return false;
    // Leaving only: the new DTB may be in the set too (an exec's new mm on a page-table page just
    // freed by a traced process whose exit is not yet known to the consumer), so it is not asked.
    if (cr3_leaving_only) return dtb_passes(old_dtb);
    return dtb_passes(old_dtb) || dtb_passes(new_dtb);
  }
  [[nodiscard]] static unsigned table_of(abi::SyscallAbi a) { return a == abi::SyscallAbi::kI386 ? 1 : 0; }
  [[nodiscard]] bool syscall_passes(abi::SyscallAbi a, std::uint64_t nr) const {
    const unsigned t = table_of(a);
    if (all_syscalls[t]) return true;
    if (a == abi::SyscallAbi::kX32) nr &= ~kX32Bit;
    return nr < abi::kSyscallBits && (syscall_bitmap[t][nr / 64] >> (nr % 64) & 1) != 0;
  }
  [[nodiscard]] bool exit_forced_sync(abi::SyscallAbi a, std::uint64_t nr) const {
    if (a == abi::SyscallAbi::kX32) nr &= ~kX32Bit;
    return nr < abi::kSyscallBits && (sync_bitmap[table_of(a)][nr / 64] >> (nr % 64) & 1) != 0;
  }
  // The argument rules (abi.h ArgRule): false if a rule for this call holds it back. Only a call
  // with a rule looks at the read-data set.
  [[nodiscard]] bool args_pass(abi::SyscallAbi a, std::uint64_t nr, const std::uint64_t* args, std::uint64_t dtb) const {
    const abi::ArgRule* r = rule_for(a, nr);
    return r == nullptr || (args[r->arg] & r->mask) != 0 || read_data_passes(dtb);
  }
  // Whether a rule holds this call back whatever its arguments (mask 0, outside the read-data
  // set): decided before the arguments are read.
  [[nodiscard]] bool never_passes(abi::SyscallAbi a, std::uint64_t nr, std::uint64_t dtb) const {
    const abi::ArgRule* r = rule_for(a, nr);
    return r != nullptr && r->mask == 0 && !read_data_passes(dtb);
  }
  [[nodiscard]] const abi::ArgRule* rule_for(abi::SyscallAbi a, std::uint64_t nr) const {
    if (a == abi::SyscallAbi::kX32) nr &= ~kX32Bit;
    const unsigned t = table_of(a);
    for (std::uint32_t i = 0; i < n_arg_rules; ++i)
      if (arg_rules[i].nr == nr && arg_rules[i].abi == t) return &arg_rules[i];
    return nullptr;
  }
  // Unpaired exits (entry not seen): pass only when every number of both tables passes and no
  // argument rule may have held an entry back.
  [[nodiscard]] bool all_pass() const { return all_syscalls[0] && all_syscalls[1] && n_arg_rules == 0; }
  static constexpr std::uint64_t kX32Bit = abi::kX32SyscallBit;
};

// Everything fixed at QEMU start.
struct Options {
  std::string shm_path;                      // shm=PATH (required)
  std::string ctl_path;                      // ctl=PATH (optional: no run-time control without it)
  std::uint32_t ring_bytes = abi::kDefaultRingBytes;
  std::uint64_t entry_va = 0;                // entry=auto|0xVA (0: detect)
  abi::WaitMode sync_wait = abi::WaitMode::kAdaptive;
  std::uint64_t sync_spin_ns = 20'000;
  std::uint64_t sync_timeout_ns = 1'000'000'000;
  bool count_only = false;                   // count=on: only the independent inline counters
  bool icount = false;                       // icount=on: count guest instructions per vCPU (EventHeader::insns)
  bool selftime = false;                     // selftime=on: time every trap callback (RingHeader::cb_ns)
  bool detect_everywhere = false;            // detect=everywhere: door detection at every kernel TB start
                                             // (default window: the entry text only, doors.hpp detect_at)
  bool count_checks = false;                 // countchecks=on: count executed checks (ShmHeader::cond_checks)
  FilterConfig initial;                      // dtb=, syscalls=, cr3=/entry=/exit=/bp_action=, snaplen=,
                                             // bp= (kernel breakpoints, every address space, action bp_action=)
};

// Parse QEMU's "-plugin lib.so,key=value,..." arguments. On error returns false and sets *why.
bool parse_options(int argc, const char* const* argv, Options* out, std::string* why);

// The usage text printed with an argument error.
const char* options_usage();

// Validate one control message and derive the next configuration from `cur`. Returns kOk and fills
// *next (generation = cur.generation + 1) or an error status with *why; *type gets the message type
// (0 if unreadable). Attach/Detach/GetStats are validated here but change nothing (next = cur).
// `max_record` is the rings' largest record: a snap length whose worst event (abi::max_event_bytes)
// does not fit is rejected.
abi::CtlStatus apply_control(const void* msg, std::size_t len, const FilterConfig& cur, FilterConfig* next,
                             abi::CtlType* type, std::string* why, std::uint32_t max_record = 0xffff'ffffu);

// Why an argument-rules message is refused (empty if it is accepted).
std::string arg_rules_problem(const abi::SetArgRulesMsg& m);

// Why a snap length does not fit rings of `ring_bytes` (empty if it does).
std::string snap_len_problem(std::uint32_t snap, std::uint32_t max_record);

}  // namespace hvtrace::monitor
