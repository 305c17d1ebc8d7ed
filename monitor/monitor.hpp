// The monitor's state: one heap object (QEMU runs our exit callback after static destructors, so
// nothing here may be a static object with a destructor). Per-vCPU values the generated code reads
// live in one scoreboard (VcpuBoard); the rest of the per-vCPU state is preallocated in Vcpu at
// vCPU init, so callbacks never allocate, lock, format or throw.
//
// Run-time filter changes never retranslate code. Every trap site is a *conditional* callback on a
// VcpuBoard field, and the callbacks (and the control thread) flip those fields:
//   - cr3_armed: mov-to-CR3 callback runs (needed to forward CR3 events or to track the DTB);
//   - entry_gate: each user `syscall` adds 1 inline; the entry callback runs when it equals 1 and
//     resets it to 0. "Closed" is kGateClosed, so additions never reach 1: a syscall of a process
//     outside the DTB set costs one inline add and no callback.
//   - exit_armed / bp_armed: 1 while the current DTB passes the filter.
// The filter itself (FilterConfig) is published by pointer from a small pool; a vCPU announces the
// pointer it reads in its hazard slot, and the control thread never rewrites a slot that is current
// or announced. The generation counter in each config orders the changes.
#pragma once

#include "config.hpp"

#include "hvtrace/abi/spsc.hpp"

#include <glib.h>
extern "C" {
#include <qemu-plugin.h>
}

#include <atomic>
#include <cstdint>
#include <thread>

namespace hvtrace::monitor {

inline constexpr std::uint64_t kGateClosed = 1ULL << 62;
inline constexpr unsigned kOpenEntries = 8;
inline constexpr unsigned kConfigPool = 8;
inline constexpr std::size_t kScratchBytes = 4 * (sizeof(abi::Capture) + abi::kMaxSnapLen + 8) + 4096;

struct VcpuBoard {
  std::uint64_t user_syscalls;   // independent counter: user `syscall` executed
  std::uint64_t cr3_writes;      // independent counter: mov-to-CR3 executed
  std::uint64_t entry_gate;
  std::uint64_t exit_armed;
  std::uint64_t cr3_armed;
  std::uint64_t bp_armed;
  std::uint64_t detect;          // 1 between a user `syscall` and the next kernel TB (entry detection)
  std::uint64_t insns;           // icount=on: guest instructions executed (inline add per TB)
};

// A syscall entered on this vCPU whose return to user mode has not been seen; keyed by (DTB, user RSP).
struct OpenEntry {
  std::uint64_t dtb = 0, rsp = 0, nr = 0, seq = 0;
  std::uint64_t args[6] = {};
  bool used = false;
};

struct Vcpu {
  bool ready = false;
  bool has_ring = false;
  abi::RingProducer prod;
  qemu_plugin_register* gpr[16] = {};
  qemu_plugin_register* cr3 = nullptr;
  GByteArray* regbuf = nullptr;
  GByteArray* membuf = nullptr;
  std::uint8_t* scratch = nullptr;
  OpenEntry open[kOpenEntries];
  unsigned next_open = 0;
  bool last_sync_timed_out = false;
  std::atomic<std::uint64_t> cur_dtb{0};
  std::atomic<const FilterConfig*> hazard{nullptr};
};

struct Monitor {
  Options opt;
  qemu_plugin_id_t id = 0;
  qemu_plugin_scoreboard* board = nullptr;
  qemu_plugin_u64 f_user_syscalls{}, f_cr3_writes{}, f_entry_gate{}, f_exit_armed{}, f_cr3_armed{}, f_bp_armed{},
      f_detect{}, f_insns{};
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

  std::atomic<std::uint64_t> entry_va{0};
  std::atomic<bool> reset_requested{false};
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
// plugin.cpp
void rearm_vcpu(Monitor& m, unsigned vcpu, const FilterConfig& cfg, std::uint64_t dtb);

}  // namespace hvtrace::monitor
