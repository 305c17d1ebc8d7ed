// The monitor's state: one heap object (QEMU runs our exit callback after static destructors, so
// nothing here may be a static object with a destructor). Per-vCPU values the generated code reads
// live in one scoreboard (VcpuBoard); the rest of the per-vCPU state is preallocated in Vcpu at
// vCPU init, so callbacks never allocate, lock, format or throw.
//
// Run-time filter changes never retranslate code. Every trap site is a *conditional* callback on a
// VcpuBoard field (arming.hpp says who writes the armed flags and why they can only err towards
// running a callback):
//   - entry_armed / exit_armed: 1 while the current DTB passes the filter;
//   - cr3_armed: mov-to-CR3 callback runs (needed to forward CR3 events or to follow the DTB);
//   - detect: the user door instruction last executed (DoorInsn) and door_rip its address, both
//     inline stores; the first instruction of each known door entry clears detect inline, and every
//     other kernel TB start in the entry text (doors.hpp detect_at: the 2 MiB page of the 64-bit
//     entry, or every kernel TB until that one is known) has a callback on detect != 0 that learns
//     a new door's entry point (doors.hpp verifies it was the door, not a fault). Every return to
//     user mode (sysret, iret) has a callback on detect != 0 too: a door entered outside the
//     window, counted as missed, and detection moves to every kernel TB (on_unseen_entry). No
//     field counts up and waits to be reset, so no instruction sequence can leave a vCPU's entries
//     undelivered.
//   - reset_req: set by the control thread after a breakpoint was added at an address with no
//     callback yet; every user door instruction and every mov to CR3 has a callback on
//     reset_req != 0 that asks QEMU, from the vCPU thread, for the code cache flush
//     (qemu_plugin_reset flushes only when called on a vCPU thread). Not at every kernel TB start:
//     that check cost the idle plugin ~19% of QEMU CPU. A change thus takes effect at the guest's
//     next system call or address-space switch (a guest that makes neither runs on unchanged). Breakpoints themselves are unconditional callbacks at their addresses,
//     registered at translation from bp_site (the addresses in force and, until the list is
//     rebuilt, removed ones: bp_sites.hpp); the callback checks the table (FilterConfig::bps).
// The filter itself (FilterConfig) is published by pointer from a pool with a slot per vCPU plus
// two, so the control thread always finds a slot that is neither current nor announced in a vCPU's
// hazard slot. The generation counter in each config orders the changes.
#pragma once

#include "arming.hpp"
#include "config.hpp"
#include "doors.hpp"

#include "hvtrace/abi/spsc.hpp"

#include <glib.h>
extern "C" {
#include <qemu-plugin.h>
}

#include <atomic>
#include <cstdint>
#include <thread>

namespace hvtrace::monitor {

inline constexpr unsigned kOpenEntries = 32;   // threads blocked in a syscall each hold one
inline constexpr unsigned kConfigPool = abi::kMaxVcpus + 2;   // every vCPU's hazard + current + one free
inline constexpr unsigned kSyncDegradeAfter = 3;              // consecutive sync timeouts before async
inline constexpr std::size_t kScratchBytes = 4 * (sizeof(abi::Capture) + abi::kMaxSnapLen + 8) + 4096;

struct VcpuBoard {
  std::uint64_t user_syscalls;   // independent counters: user `syscall` (any mode), `int $0x80`,
  std::uint64_t user_int80s;     //   `sysenter` executed
  std::uint64_t user_sysenters;
  std::uint64_t cr3_writes;      // independent counter: mov-to-CR3 executed
  std::uint64_t entry_armed;
  std::uint64_t exit_armed;
  std::uint64_t cr3_armed;
  std::uint64_t reset_req;       // 1: a breakpoint address needs a callback, flush the code cache (plugin.cpp)
  std::uint64_t detect;          // DoorInsn of the last user door instruction; cleared at a known entry
  std::uint64_t door_rip;        // its address
  std::uint64_t insns;           // icount=on: guest instructions executed (inline add per TB)
  std::uint64_t cond_checks;     // countchecks=on: conditional checks executed (inline add per check site)
  std::uint64_t kernel_blocks;   // countchecks=on: kernel TBs executed (inline add per kernel TB)
};

struct Vcpu {
  std::atomic<bool> ready{false};   // read by the control thread (widening)
  bool has_ring = false;
  abi::RingProducer prod;
  qemu_plugin_register* gpr[16] = {};
  qemu_plugin_register* cr3 = nullptr;
  qemu_plugin_register* k_gs_base = nullptr;
  qemu_plugin_register* gs_base = nullptr;
  GByteArray* regbuf = nullptr;
  GByteArray* membuf = nullptr;
  std::uint8_t* scratch = nullptr;
  OpenEntries<kOpenEntries> open;
  // The DTB this vCPU last narrowed its flags for (R of arming.hpp): the one it runs while CR3
  // writes are watched. Read by other vCPUs recording an entry of the same address space.
  std::atomic<std::uint64_t> running_dtb{~0ULL};
  bool last_sync_timed_out = false;
  unsigned sync_timeouts_in_row = 0;   // kSyncDegradeAfter in a row: sync events go async
  std::uint32_t attach_epoch = 0;      // Monitor::attach_epoch when the count was last reset
  std::atomic<const FilterConfig*> hazard{nullptr};
};

struct Monitor {
  Options opt;
  qemu_plugin_id_t id = 0;
  qemu_plugin_scoreboard* board = nullptr;
  qemu_plugin_u64 f_user_syscalls{}, f_user_int80s{}, f_user_sysenters{}, f_cr3_writes{}, f_entry_armed{},
      f_exit_armed{}, f_cr3_armed{}, f_reset_req{}, f_detect{}, f_door_rip{}, f_insns{}, f_cond_checks{},
      f_kernel_blocks{};
  unsigned max_vcpus = 0;
  Vcpu* vcpus = nullptr;

  // Shared-memory rings.
  int shm_fd = -1;
  std::uint8_t* shm = nullptr;
  std::size_t shm_size = 0;
  abi::ShmHeader* shm_hdr = nullptr;

  // Filter configuration pool.
  FilterConfig pool[kConfigPool];
  std::atomic<const FilterConfig*> current{nullptr};

  std::atomic<std::uint64_t> door_va[static_cast<unsigned>(abi::Door::kCount)] = {};  // 0 until learned
  std::atomic<bool> reset_in_flight{false};
  // Breakpoint addresses for translation (a superset of the table's non-drop addresses:
  // bp_sites.hpp; translation has no hazard slot). Changed by the control thread only, each
  // change followed by a flush.
  std::atomic<std::uint64_t> bp_site[abi::kMaxBreakpoints] = {};
  std::atomic<std::uint32_t> n_bp_sites{0};
  std::atomic<std::uint64_t> bp_serial{0};   // table changes so far
  std::atomic<std::uint64_t> bp_flushed{0};  // table changes a queued flush covers
  std::atomic<std::uint64_t> flush_covers{0};  // bp_serial when the flush in flight was queued
  std::atomic<std::uint64_t> detect_rejected{0};
  // Translation reads it: door detection at every kernel TB start instead of the entry-text window
  // (doors.hpp detect_at). Set by a miss (on_unseen_entry), cleared when a door is learned unless
  // the option or kStickyMisses say otherwise; each change is followed by a flush.
  std::atomic<bool> detect_everywhere{false};
  std::atomic<unsigned> detect_misses{0};
  std::atomic<std::uint32_t> attach_epoch{0};
  std::uint32_t consumer_gone = 1;        // abort flag for sync waits (u32 for atomic_ref)
  std::atomic<bool> attached{false};

  // Control channel.
  int listen_fd = -1;
  int stop_pipe[2] = {-1, -1};
  std::thread control;
  std::atomic<std::uint64_t> rejected{0};
};

extern Monitor* g_mon;

// channel.cpp
bool create_rings(Monitor& m, std::string* why);
bool start_control(Monitor& m, std::string* why);
void stop_control(Monitor& m);
void publish_config(Monitor& m, const FilterConfig& next);   // control thread / install only
void drop_open_calls_filtered(Monitor& m, const FilterConfig& now);   // control thread, after publish_config
// plugin.cpp
void store_flags(Monitor& m, unsigned vcpu, const ArmFlags& f);   // seq_cst, see arming.hpp
void breakpoints_changed(Monitor& m, const FilterConfig& now);    // control thread, after publish_config

}  // namespace hvtrace::monitor
