// Which trap sites of a vCPU run their callbacks: the "armed" flags of its scoreboard, a pure function
// of the filter in force and the vCPU's current DTB — plus the one rule that keeps them right while
// the control thread changes the filter and the vCPU switches address spaces at the same time.
//
// Every trap site with a filter is a conditional callback on one flag (== 1). A flag that is 1 when
// the filter would say 0 only costs a callback (which filters in software and narrows the flags); a
// flag that is 0 when the filter says 1 loses events. So the rule makes errors only in the cheap
// direction:
//   - the control thread never computes per-vCPU flags (it cannot know a vCPU's DTB): after
//     publishing a new config it *widens* every vCPU's flags to 1 (W);
//   - a vCPU *narrows* its own flags from the config it holds and the DTB it is entering (N), then
//     loads the current config pointer (L); if that is no longer the one it used, it widens again.
// All five accesses are seq_cst. If L read the old config, then N < L < publish < W in the single
// total order, so W's 1 comes last; if L read the new one, the vCPU widened itself. Either way, after
// a change every flag is >= what the new config needs until the vCPU narrows again with it.
// Besides the vCPU itself, only two writers touch these fields, and only upwards: the control
// thread (W) and, for the exit flag, a vCPU that has just recorded an entry (E below). The
// generated code only reads them. Tested under TSan in tests/unit/monitor/arming_test.cpp.
//
// Exits wait for entries. With a syscall filter an exit without an open entry is not delivered, so
// where CR3 writes are watched (a switch into an address space is seen) a vCPU arms its exit traps
// only while some vCPU's table of open calls holds an entry of the address space it runs: the
// filtered majority of a traced process's calls then cost one callback (the entry), not two. The
// rule, all accesses seq_cst:
//   - a vCPU narrowing (at a CR3 write, or after an exit) publishes the DTB it runs (R), stores its
//     flags with exit 0 (N), scans every vCPU's table for that DTB (S) and stores exit 1 if found;
//   - a vCPU recording an entry puts it in its table (P), then stores exit 1 on itself and on every
//     vCPU whose published DTB is the entry's (E).
// If S misses P, then R < N < S < P < E's read, so E sees the DTB (or a later one) and its 1 comes
// after N. A thread that blocked on one vCPU and returns on another is covered either way.
#pragma once

#include "config.hpp"

#include <atomic>
#include <cstdint>

namespace hvtrace::monitor {

struct ArmFlags {
  std::uint64_t entry = 1, exit = 1, cr3 = 1;
  friend bool operator==(const ArmFlags&, const ArmFlags&) = default;
};
inline constexpr ArmFlags kArmAll{1, 1, 1};

// What `cfg` needs on a vCPU running address space `dtb`.
inline ArmFlags arm_for(const FilterConfig& cfg, std::uint64_t dtb) {
  const bool passes = cfg.dtb_passes(dtb);
  ArmFlags f;
  f.entry = passes && cfg.action(EventClass::kSyscallEntry) != Action::kDrop;
  f.exit = passes && cfg.action(EventClass::kSyscallExit) != Action::kDrop;
  // CR3 writes are watched to forward them, or to follow the DTB the other flags depend on.
  f.cr3 = cfg.action(EventClass::kCr3) != Action::kDrop || cfg.dtb_mode == abi::DtbMode::kSet;
  return f;
}

// Whether `cfg` lets exit traps wait for entries (see above): exits are wanted, unpaired ones are
// not delivered, and CR3 writes are watched on every vCPU.
inline bool exits_wait_for_entries(const FilterConfig& cfg) {
  return cfg.action(EventClass::kSyscallExit) != Action::kDrop && !cfg.all_pass() && arm_for(cfg, 0).cr3 != 0;
}

// The vCPU side (N, S, L): `store` writes the three flags with seq_cst stores; `open_here()` scans
// the tables of open calls for `dtb` with seq_cst loads (called only when exits wait for entries;
// the caller has published `dtb` as the one it runs before calling this).
template <typename Store, typename OpenHere>
void narrow_flags(const FilterConfig& cfg, const std::atomic<const FilterConfig*>& current, std::uint64_t dtb,
                  Store&& store, OpenHere&& open_here) {
  ArmFlags f = arm_for(cfg, dtb);
  const bool wait = f.exit != 0 && exits_wait_for_entries(cfg);
  if (wait) f.exit = 0;
  store(f);
  if (wait && open_here()) {
    f.exit = 1;
    store(f);
  }
  if (current.load(std::memory_order_seq_cst) != &cfg) store(kArmAll);
}

// The control-thread side (publish, W), for each vCPU after current.store(next, seq_cst).
template <typename Store>
void widen_flags(Store&& store) {
  store(kArmAll);
}

}  // namespace hvtrace::monitor
