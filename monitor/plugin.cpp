// libhvtrace-monitor.so: the paper's hypervisor extension as a QEMU 10 TCG plugin. It decides at
// translation time which guest instructions are trap sites (user `syscall`, the kernel's syscall
// entry point, `mov %reg,%cr3`, `sysretq`, `iretq`, breakpoint addresses) and attaches conditional
// callbacks whose conditions (VcpuBoard in monitor.hpp) the filter flips at run time. Callbacks
// read registers and guest memory, filter in the hypervisor (DTB set, syscall set, action), copy
// the ephemeral data (captures) and publish one record into this vCPU's ring; a sync action then
// waits for the consumer's ack, bounded by a timeout and by the consumer's presence.
// The C ABI edge is qemu_plugin_install and qemu_plugin_version, the only exported symbols.
#include "bp_sites.hpp"
#include "captures.hpp"
#include "monitor.hpp"
#include "syscall_captures.hpp"
#include "x86.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

void hvtrace_monitor_register_callbacks();

using namespace hvtrace::monitor;
namespace abi = hvtrace::abi;

extern "C" {
QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;
}

namespace hvtrace::monitor {

Monitor* g_mon = nullptr;

namespace {

enum Gpr : unsigned { RAX = 0, RCX = 1, RDX = 2, RBX = 3, RSP = 4, RBP = 5, RSI = 6, RDI = 7,
                      R8 = 8, R9 = 9, R10 = 10, R11 = 11 };

std::uint64_t read_reg(Vcpu& v, qemu_plugin_register* h) {
  if (h == nullptr) return 0;
  g_byte_array_set_size(v.regbuf, 0);
  const int n = qemu_plugin_read_register(h, v.regbuf);
  std::uint64_t x = 0;
  if (n > 0) std::memcpy(&x, v.regbuf->data, n < 8 ? static_cast<std::size_t>(n) : 8);
  return x;
}

bool read_mem(Vcpu& v, std::uint64_t va, void* dst, std::size_t len) {
  if (len == 0) return true;
  if (!qemu_plugin_read_memory_vaddr(va, v.membuf, len)) return false;
  std::memcpy(dst, v.membuf->data, len);
  return true;
}

// Hazard-pointer read of the config in force.
// Times one trap callback when selftime=on (two vDSO clock reads; nothing otherwise).
class SelfTimer {
 public:
  SelfTimer(Monitor& m, Vcpu& v) : h_(m.opt.selftime && v.has_ring ? v.prod.header() : nullptr) {
    if (h_) t0_ = abi::monotonic_ns();
  }
  ~SelfTimer() {
    if (!h_) return;
    const std::uint64_t dt = abi::monotonic_ns() - t0_;
    abi::aref(h_->cb_calls).store(h_->cb_calls + 1, std::memory_order_relaxed);
    abi::aref(h_->cb_ns).store(h_->cb_ns + dt, std::memory_order_relaxed);
  }
  SelfTimer(const SelfTimer&) = delete;
  SelfTimer& operator=(const SelfTimer&) = delete;

 private:
  abi::RingHeader* h_;
  std::uint64_t t0_ = 0;
};

const FilterConfig* acquire_cfg(Monitor& m, Vcpu& v) {
  for (;;) {
    const FilterConfig* c = m.current.load(std::memory_order_acquire);
    v.hazard.store(c, std::memory_order_seq_cst);
    if (m.current.load(std::memory_order_seq_cst) == c) return c;
  }
}
void release_cfg(Vcpu& v) { v.hazard.store(nullptr, std::memory_order_release); }

// Build the captures of one syscall into v.scratch; returns their total size, sets *count.
// read_data false: a buffer as long as the return value (what a read brought in) is not copied,
// only its length is given (kCaptureNotCopied).
std::uint32_t build_captures(Vcpu& v, const SyscallCaptures* spec, const std::uint64_t* args, std::int64_t ret,
                             std::uint32_t snap, abi::SyscallAbi sabi, std::uint32_t* count, bool read_data = true) {
  *count = 0;
  if (spec == nullptr || snap == 0) return 0;
  const auto rd = [&v](std::uint64_t va, void* dst, std::size_t len) { return read_mem(v, va, dst, len); };
  const std::uint32_t ptr_size = sabi == abi::SyscallAbi::kI386 ? 4 : 8;
  std::uint32_t off = 0;
  for (unsigned i = 0; i < spec->n; ++i) {
    const CaptureSpec& cs = spec->c[i];
    auto* c = reinterpret_cast<abi::Capture*>(v.scratch + off);
    *c = abi::Capture{cs.arg, static_cast<std::uint8_t>(cs.kind), 0, 0, 0};
    std::uint8_t* data = v.scratch + off + sizeof(abi::Capture);
    std::uint32_t n = 0;
    switch (cs.kind) {
      case abi::CaptureKind::kString: n = copy_string(rd, args[cs.arg], data, snap, c); break;
      case abi::CaptureKind::kArgv:
        if (args[cs.arg] == 0 && cs.len_arg == kCountOnly) continue;   // envp NULL: nothing to count
        n = copy_argv(rd, args[cs.arg], data, snap, c, ptr_size, cs.len_arg == kCountOnly);
        break;
      case abi::CaptureKind::kBuffer: {
        std::int64_t len = 0;
        if (cs.len_arg == kIovecLen) {   // writev: the buffers behind an iovec array, gathered
          if (args[cs.arg] == 0 || ptr_size != 8) continue;
          n = copy_iovec(rd, args[cs.arg], args[cs.arg + 1], data, snap, c);
          break;
        }
        if (cs.len_arg == kFixedLen) {   // a structure of known size; nothing when NULL or failed
          if (args[cs.arg] == 0 || ret < 0) continue;
          len = cs.fixed;
        } else {
          len = cs.len_arg < 0 ? ret : static_cast<std::int64_t>(args[cs.len_arg]);
        }
        if (len <= 0) continue;  // nothing transferred
        if (cs.len_arg == -1 && !read_data) {
          c->true_len = static_cast<std::uint64_t>(len);
          c->flags |= abi::kCaptureNotCopied;
          break;
        }
        n = copy_buffer(rd, args[cs.arg], static_cast<std::uint64_t>(len), data, snap, c);
        break;
      }
    }
    c->data_len = n;
    if (cs.kind != abi::CaptureKind::kArgv && c->true_len > n) c->flags |= abi::kCaptureTruncated;
    const std::uint32_t padded = abi::align_record(n);
    std::memset(data + n, 0, padded - n);
    off += static_cast<std::uint32_t>(sizeof(abi::Capture)) + padded;
    ++*count;
  }
  return off;
}

unsigned table_of(abi::SyscallAbi a) { return FilterConfig::table_of(a); }

// Publish `body` (+ `extra` bytes from scratch) as one record; waits for the ack when sync. A
// consumer that stays attached but stops acking costs kSyncDegradeAfter timeouts, then this vCPU
// sends its sync events async (flagged, counted) until the next attach.
void emit(Monitor& m, unsigned vcpu, Vcpu& v, const FilterConfig& cfg, Action act, abi::RecordType type,
          abi::EventHeader* body, std::uint32_t body_size, const std::uint8_t* extra, std::uint32_t extra_size,
          std::uint64_t* seq_out = nullptr) {
  const std::uint64_t seq = v.prod.take_seq();
  if (seq_out) *seq_out = seq;
  const std::uint32_t epoch = m.attach_epoch.load(std::memory_order_acquire);
  if (epoch != v.attach_epoch) {
    v.attach_epoch = epoch;
    v.sync_timeouts_in_row = 0;
  }
  bool sync = act == Action::kSync && abi::aref(m.consumer_gone).load(std::memory_order_acquire) == 0;
  const bool degraded = sync && v.sync_timeouts_in_row >= kSyncDegradeAfter;
  if (degraded) sync = false;
  const std::uint32_t size = abi::align_record(body_size + extra_size);
  auto* p = static_cast<std::uint8_t*>(v.prod.reserve(seq, size));
  if (p == nullptr) return;
  body->rec = abi::RecordHeader{static_cast<std::uint16_t>(type), 0, size};
  if (sync) body->rec.flags |= abi::kFlagSync;
  if (degraded) {
    body->rec.flags |= abi::kFlagSyncDegraded;
    auto* h = v.prod.header();
    abi::aref(h->sync_degraded).store(h->sync_degraded + 1, std::memory_order_relaxed);
  }
  if (v.last_sync_timed_out) body->rec.flags |= abi::kFlagSyncTimedOut;
  v.last_sync_timed_out = false;
  body->seq = seq;
  body->time_ns = abi::monotonic_ns();
  body->insns = m.opt.icount ? qemu_plugin_u64_get(m.f_insns, vcpu) : 0;
  body->vcpu = vcpu;
  body->generation = cfg.generation;
  std::memcpy(p, body, body_size);
  if (extra_size) std::memcpy(p + body_size, extra, extra_size);
  if (size > body_size + extra_size) std::memset(p + body_size + extra_size, 0, size - body_size - extra_size);
  v.prod.commit(sync);
  if (!sync) return;
  const bool acked = v.prod.wait_ack(seq, m.opt.sync_wait, m.opt.sync_spin_ns, m.opt.sync_timeout_ns, &m.consumer_gone);
  auto* h = v.prod.header();
  abi::aref(h->sync_wait_ns).store(h->sync_wait_ns + (abi::monotonic_ns() - body->time_ns), std::memory_order_relaxed);
  if (acked) {
    v.sync_timeouts_in_row = 0;
  } else {
    v.last_sync_timed_out = true;
    ++v.sync_timeouts_in_row;
  }
}

std::atomic_ref<std::uint64_t> board_field(qemu_plugin_u64 field, unsigned vcpu) {
  auto* p = static_cast<char*>(qemu_plugin_scoreboard_find(field.score, vcpu)) + field.offset;
  return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(p));
}

// Whether any vCPU's table holds an open entry of address space `dtb` (S of arming.hpp).
bool open_anywhere(const Monitor& m, std::uint64_t dtb) {
  for (unsigned w = 0; w < m.max_vcpus; ++w)
    if (m.vcpus[w].open.holds(dtb)) return true;
  return false;
}

// Narrow this vCPU's armed flags to what `cfg` needs for `dtb`, the address space it runs, exits
// included only while an entry there waits for one (arming.hpp).
void narrow(Monitor& m, unsigned vcpu, const FilterConfig& cfg, std::uint64_t dtb) {
  m.vcpus[vcpu].running_dtb.store(dtb, std::memory_order_seq_cst);   // R
  narrow_flags(cfg, m.current, dtb, [&](const ArmFlags& f) { store_flags(m, vcpu, f); },
               [&] { return open_anywhere(m, dtb); });
}

// An entry of `dtb` was just recorded on `vcpu` (P): arm exits on it and on every vCPU running the
// same address space (E of arming.hpp), where the call may return.
void arm_exits_for(Monitor& m, unsigned vcpu, std::uint64_t dtb) {
  for (unsigned w = 0; w < m.max_vcpus; ++w)
    if (w == vcpu || (m.vcpus[w].ready && m.vcpus[w].running_dtb.load(std::memory_order_seq_cst) == dtb))
      board_field(m.f_exit_armed, w).store(1, std::memory_order_seq_cst);
}

// The current task and its ids from the kernel per-CPU base (zero when off or unreadable: a read
// through the current CR3 fails, e.g., under PTI's user page tables).
abi::TaskIdentity read_identity(Vcpu& v, const FilterConfig& cfg, std::uint64_t kgs) {
  abi::TaskIdentity who{};
  if (cfg.current_task_off == 0 || !is_kernel_va(kgs)) return who;
  std::uint64_t task = 0;
  if (!read_mem(v, kgs + cfg.current_task_off, &task, sizeof task) || !is_kernel_va(task)) return who;
  std::uint32_t pid = 0, tgid = 0;
  if (!read_mem(v, task + cfg.pid_off, &pid, sizeof pid) || !read_mem(v, task + cfg.tgid_off, &tgid, sizeof tgid))
    return who;
  who.task = task;
  who.pid = pid;
  who.tgid = tgid;
  return who;
}

EntryRegs read_entry_regs(Vcpu& v, abi::Door door) {
  EntryRegs r;
  r.rax = read_reg(v, v.gpr[RAX]);
  r.rbx = read_reg(v, v.gpr[RBX]);
  r.rcx = read_reg(v, v.gpr[RCX]);
  r.rdx = read_reg(v, v.gpr[RDX]);
  r.rsi = read_reg(v, v.gpr[RSI]);
  r.rdi = read_reg(v, v.gpr[RDI]);
  r.rbp = read_reg(v, v.gpr[RBP]);
  r.rsp = read_reg(v, v.gpr[RSP]);
  if (door == abi::Door::kSyscall64) {
    r.r8 = read_reg(v, v.gpr[R8]);
    r.r9 = read_reg(v, v.gpr[R9]);
    r.r10 = read_reg(v, v.gpr[R10]);
  }
  if (const std::uint64_t at = user_word_address(door, r); at != 0) {
    std::uint32_t w = 0;
    if (read_mem(v, at, &w, sizeof w)) r.user_word = w;
  }
  if (door == abi::Door::kInt80) {
    std::uint64_t frame[4] = {};  // RIP, CS, RFLAGS, RSP pushed by the CPU
    if (read_mem(v, r.rsp, frame, sizeof frame)) {
      r.frame_rip = frame[0];
      r.frame_rsp = frame[3];
    }
  }
  return r;
}

// The open entry of the thread (dtb, rsp) in another vCPU's table than `vcpu`'s, removed.
std::optional<OpenCall> take_elsewhere(Monitor& m, unsigned vcpu, std::uint64_t dtb, std::uint64_t rsp) {
  for (unsigned w = 0; w < m.max_vcpus; ++w)
    if (w != vcpu)
      if (auto c = m.vcpus[w].open.take(dtb, rsp)) return c;
  return std::nullopt;
}

// The open entry of the thread (dtb, rsp), removed from this vCPU's table or, for a thread that
// blocked on another vCPU and resumed here, from that vCPU's.
std::optional<OpenCall> take_open(Monitor& m, unsigned vcpu, std::uint64_t dtb, std::uint64_t rsp) {
  if (auto c = m.vcpus[vcpu].open.take(dtb, rsp)) return c;
  return take_elsewhere(m, vcpu, dtb, rsp);
}

void on_entry_body(Monitor& m, unsigned vcpu, abi::Door door) {
  Vcpu& v = m.vcpus[vcpu];
  const std::uint64_t cr3 = read_reg(v, v.cr3);
  const std::uint64_t dtb = abi::dtb_of_cr3(cr3);
  const FilterConfig& cfg = *acquire_cfg(m, v);
  const Action act = cfg.action(EventClass::kSyscallEntry);
  if (act == Action::kDrop || !cfg.dtb_passes(dtb)) {
    narrow(m, vcpu, cfg, dtb);  // armed wider than needed (a filter change): stop paying for it
    release_cfg(v);
    return;
  }
  // Most calls of a traced process are outside the syscall set, or held back by a rule whatever
  // their arguments (a compile's reads): through the 64-bit door that is known from rax, and the
  // thread's stale open entry from rsp, without reading the other ten registers.
  if (door == abi::Door::kSyscall64) {
    const std::uint64_t rax = read_reg(v, v.gpr[RAX]);
    const abi::SyscallAbi sabi = syscall64_abi(rax);
    if (!cfg.syscall_passes(sabi, rax) || cfg.never_passes(sabi, rax, dtb)) {
      (void)take_open(m, vcpu, dtb, read_reg(v, v.gpr[RSP]));
      release_cfg(v);
      return;
    }
  }
  const EntryDecode d = decode_entry(door, read_entry_regs(v, door));
  if (!cfg.syscall_passes(d.abi, d.nr) || !cfg.args_pass(d.abi, d.nr, d.args, dtb)) {
    (void)take_open(m, vcpu, dtb, d.user_rsp);   // that thread moved on: its stale entry goes
    release_cfg(v);
    return;
  }
  const bool pair = cfg.action(EventClass::kSyscallExit) != Action::kDrop;
  OpenCall call{dtb, d.user_rsp, d.nr, 0, {}, d.abi, door, 0, d.user_rip};
  std::memcpy(call.args, d.args, sizeof d.args);
  abi::SyscallEntryEvent e{};
  e.nr = d.nr;
  std::memcpy(e.args, d.args, sizeof d.args);
  e.cr3 = cr3;
  e.user_rip = d.user_rip;
  e.user_rsp = d.user_rsp;
  e.user_syscalls = qemu_plugin_u64_get(door == abi::Door::kInt80      ? m.f_user_int80s
                                        : door == abi::Door::kSysenter ? m.f_user_sysenters
                                                                       : m.f_user_syscalls,
                                        vcpu);
  e.kernel_gs_base = read_reg(v, v.k_gs_base);
  e.who = read_identity(v, cfg, e.kernel_gs_base);
  e.abi = static_cast<std::uint8_t>(d.abi);
  e.door = static_cast<std::uint8_t>(door);
  const std::uint32_t extra =
      build_captures(v, find_captures(table_of(d.abi), d.nr, false), d.args, 0, cfg.snap_len, d.abi, &e.n_captures);
  if (pair) {   // strings whose first page was not present: try again when the call returns
    std::uint32_t off = 0;
    for (std::uint32_t i = 0; i < e.n_captures; ++i) {
      const auto* c = reinterpret_cast<const abi::Capture*>(v.scratch + off);
      if (c->kind == static_cast<std::uint8_t>(abi::CaptureKind::kString) && c->data_len == 0 &&
          (c->flags & abi::kCaptureFault) != 0 && c->arg < 8)
        call.refetch = static_cast<std::uint8_t>(call.refetch | (1u << c->arg));
      off += static_cast<std::uint32_t>(sizeof(abi::Capture)) + abi::align_record(c->data_len);
    }
  }
  emit(m, vcpu, v, cfg, act, abi::RecordType::kSyscallEntry, &e.hdr, sizeof e, v.scratch, extra, &call.seq);
  if (pair) {
    // Recorded after the event is out: the thread cannot return before this callback ends. A
    // stale entry of the same thread in another vCPU's table (an exit never seen there) goes
    // first, so a later return cannot pair with it.
    bool keep = !never_returns(d.abi, d.nr);
    if (const auto saved = sigreturn_saved_stack(d.abi, d.nr); saved && keep) {
      std::uint64_t sp = 0;   // little-endian: a 4-byte read fills the low half
      keep = read_mem(v, d.user_rsp + saved->offset, &sp, saved->size);
      if (keep) call.rsp = sp;   // it returns there (doors.hpp)
    }
    while (take_elsewhere(m, vcpu, dtb, call.rsp)) {   // bounded: each pass empties a slot
    }
    if (!keep) {
      // exit/exit_group: nothing to pair, and its stale entry goes too; a sigreturn whose frame
      // could not be read: its return (elsewhere) comes unpaired.
      (void)v.open.take(dtb, d.user_rsp);
    } else {
      bool evicted = false;
      // false: every slot held by other vCPUs that instant; its exit comes unpaired
      if (v.open.put(call, &evicted) && exits_wait_for_entries(cfg)) arm_exits_for(m, vcpu, dtb);
      if (evicted && v.has_ring) {
        auto* h = v.prod.header();
        abi::aref(h->open_evicted).store(h->open_evicted + 1, std::memory_order_relaxed);
      }
    }
  }
  release_cfg(v);
}

void on_entry(unsigned vcpu, void* udata) {
  Monitor& m = *g_mon;
  Vcpu& v = m.vcpus[vcpu];
  if (!v.ready || !v.has_ring) return;
  SelfTimer timer(m, v);
  on_entry_body(m, vcpu, static_cast<abi::Door>(reinterpret_cast<std::uintptr_t>(udata)));
}

// False if a reset is already in flight (nothing queued). Flushes the code cache only when called
// on a vCPU thread (QEMU flushes when current_cpu is set), so the control thread never calls it.
bool request_reset(Monitor& m) {
  if (m.reset_in_flight.exchange(true)) return false;
  // Whatever queues this flush, the code is translated again after it with every site stored
  // before now: the breakpoints of every table change so far take effect.
  m.flush_covers.store(m.bp_serial.load(std::memory_order_seq_cst), std::memory_order_seq_cst);
  qemu_plugin_reset(m.id, [](qemu_plugin_id_t) {
    Monitor& mon = *g_mon;
    if (mon.shm_hdr) abi::aref(mon.shm_hdr->bp_in_force).store(mon.flush_covers.load(), std::memory_order_release);
    mon.reset_in_flight.store(false);
    ::hvtrace_monitor_register_callbacks();
  });
  return true;
}

// Fires at a user door instruction (syscall, int $0x80, sysenter) or a mov to CR3 while this
// vCPU's reset_req is set — rare instructions every running guest executes often, where a check
// at every kernel TB start cost the idle plugin ~19% of QEMU CPU: the breakpoint table changed
// (serial bp_serial). Queue one flush that covers it, unless a flush queued after that change
// already does. The clear comes before the serial is read (both seq_cst, the control thread bumps
// the serial before it sets the flags), so a change is either seen here or leaves the flag set.
void on_reset_req(unsigned vcpu, void*) {
  Monitor& m = *g_mon;
  board_field(m.f_reset_req, vcpu).store(0, std::memory_order_seq_cst);
  const std::uint64_t want = m.bp_serial.load(std::memory_order_seq_cst);
  if (m.bp_flushed.load(std::memory_order_seq_cst) >= want) return;
  if (!request_reset(m)) {   // another flush in flight may predate the change: try again next time
    board_field(m.f_reset_req, vcpu).store(1, std::memory_order_seq_cst);
    return;
  }
  std::uint64_t seen = m.bp_flushed.load();
  while (seen < want && !m.bp_flushed.compare_exchange_weak(seen, want)) {
  }
}

// Fires at the start of a kernel TB that is not a known door entry while `detect` is set: the
// kernel was entered right after a user door instruction. If doors.hpp confirms it was the door,
// this TB's address is that door's entry point: handle this entry, and flush the code cache so the
// entry point gets its own callbacks (and clears `detect` inline from then on).
void on_detect(unsigned vcpu, void* udata) {
  Monitor& m = *g_mon;
  Vcpu& v = m.vcpus[vcpu];
  DetectInput in;
  in.insn = static_cast<DoorInsn>(qemu_plugin_u64_get(m.f_detect, vcpu));
  in.door_rip = qemu_plugin_u64_get(m.f_door_rip, vcpu);
  qemu_plugin_u64_set(m.f_detect, vcpu, 0);   // vCPU-owned field (inline stores run on this thread)
  if (!v.ready) return;
  const std::uint64_t va = reinterpret_cast<std::uintptr_t>(udata);
  in.rsp = read_reg(v, v.gpr[RSP]);
  in.rcx = read_reg(v, v.gpr[RCX]);
  in.stack_ok = !is_user_va(in.rsp) && read_mem(v, in.rsp, in.stack, sizeof in.stack);
  // A door already learned (its TBs not yet retranslated): classify by address.
  std::optional<abi::Door> door;
  for (unsigned d = 0; d < static_cast<unsigned>(abi::Door::kCount); ++d)
    if (m.door_va[d].load(std::memory_order_acquire) == va) door = static_cast<abi::Door>(d);
  if (!door) {
    in.syscall64_known = m.door_va[static_cast<unsigned>(abi::Door::kSyscall64)].load() != 0;
    door = classify_entry(in);
    if (!door) {
      m.detect_rejected.fetch_add(1, std::memory_order_relaxed);
      if (m.shm_hdr) abi::aref(m.shm_hdr->detect_rejected).fetch_add(1, std::memory_order_relaxed);
      return;
    }
    std::uint64_t expected = 0;
    if (!m.door_va[static_cast<unsigned>(*door)].compare_exchange_strong(expected, va)) return;  // another vCPU won
    // Back to the entry-text window (the flush below retranslates), unless misses made it sticky.
    m.detect_everywhere.store(everywhere_after_learning(m.opt.detect_everywhere, m.detect_misses.load()),
                              std::memory_order_seq_cst);
    if (m.shm_hdr) {
      abi::aref(m.shm_hdr->door_entry_va[static_cast<unsigned>(*door)]).store(va, std::memory_order_release);
      if (*door == abi::Door::kSyscall64) abi::aref(m.shm_hdr->syscall_entry_va).store(va, std::memory_order_release);
    }
  }
  if (v.has_ring && qemu_plugin_u64_get(m.f_entry_armed, vcpu) == 1) on_entry_body(m, vcpu, *door);
  (void)request_reset(m);   // in flight: that one re-registers with door_va already set
}

// Fires at a return to user mode (sysret, iret) while `detect` is still set: a user door
// instruction entered the kernel somewhere no detection check ran (outside the entry-text window,
// doors.hpp detect_at), so that call was not delivered. Count it, and look for entry points at
// every kernel TB start from now on (one flush) until a door is learned. No flush is lost to one
// already in flight: that one runs in an exclusive section after this callback and retranslates
// with detect_everywhere already set.
void on_unseen_entry(unsigned vcpu, void*) {
  Monitor& m = *g_mon;
  Vcpu& v = m.vcpus[vcpu];
  qemu_plugin_u64_set(m.f_detect, vcpu, 0);
  if (!v.ready) return;
  if (v.has_ring) {
    auto* h = v.prod.header();
    abi::aref(h->entries_missed).store(h->entries_missed + 1, std::memory_order_relaxed);
  }
  m.detect_misses.fetch_add(1, std::memory_order_relaxed);
  if (!m.detect_everywhere.exchange(true, std::memory_order_seq_cst)) (void)request_reset(m);
}

// A return to user mode into a signal handler (doors.hpp signal_frame) from a call open at the
// stack pointer saved in the frame: that call, its result and where it resumes, from the frame.
struct IntoHandler {
  OpenCall call;
  std::int64_t ret = 0;
  std::uint64_t rip = 0, rsp = 0;
  std::uint32_t signo = 0;
};
std::optional<IntoHandler> take_into_handler(Monitor& m, unsigned vcpu, Vcpu& v, std::uint64_t dtb, bool compat,
                                             std::uint64_t user_rsp) {
  const auto f = signal_frame(compat, user_rsp, read_reg(v, v.gpr[RAX]), read_reg(v, v.gpr[RCX]),
                              read_reg(v, v.gpr[RDX]), read_reg(v, v.gpr[RDI]));
  if (!f) return std::nullopt;
  // The three saved fields lie within 32 bytes of each other in every layout: one read.
  const std::uint32_t lo = std::min({f->sp, f->ip, f->ax});
  std::uint8_t span[kSignalFrameSpan];
  if (!read_mem(v, user_rsp + lo, span, sizeof span)) return std::nullopt;
  const auto field = [&](std::uint32_t off) {
    std::uint64_t x = 0;   // little-endian: a 4-byte field fills the low half
    std::memcpy(&x, span + (off - lo), f->size);
    return x;
  };
  const std::uint64_t sp = field(f->sp), ip = field(f->ip), ax = field(f->ax);
  auto o = take_open(m, vcpu, dtb, sp);
  if (!o) return std::nullopt;
  IntoHandler h{*o, f->size == 4 ? static_cast<std::int32_t>(ax) : static_cast<std::int64_t>(ax), ip, sp, f->signo};
  if (resumes_at_door(*o, ip)) h.ret = -512;   // restarted after the handler (ERESTARTSYS, events.h)
  return h;
}

void on_return_to_user(Monitor& m, unsigned vcpu, Vcpu& v, abi::ExitVia via, bool compat, std::uint64_t user_rip,
                       std::uint64_t user_rsp) {
  const std::uint64_t cr3 = read_reg(v, v.cr3);
  const std::uint64_t dtb = abi::dtb_of_cr3(cr3);
  std::optional<OpenCall> o = take_open(m, vcpu, dtb, user_rsp);
  std::optional<IntoHandler> handler;
  if (!o && (handler = take_into_handler(m, vcpu, v, dtb, compat, user_rsp))) {
    o = handler->call;
    via = abi::ExitVia::kSignal;
    user_rip = handler->rip;
    user_rsp = handler->rsp;
  }
  const FilterConfig& cfg = *acquire_cfg(m, v);
  const Action act = cfg.action(EventClass::kSyscallExit);
  // Exits armed where no entry waits any more (a filter change widened them, or this was the last
  // one): disarm them until the next entry of this address space (arming.hpp).
  const auto done = [&] {
    if (exits_wait_for_entries(cfg)) narrow(m, vcpu, cfg, dtb);
    release_cfg(v);
  };
  if (!o && via == abi::ExitVia::kIret) return done();  // an interrupt or exception returning
  if (act == Action::kDrop || !cfg.dtb_passes(dtb)) {
    narrow(m, vcpu, cfg, dtb);
    release_cfg(v);
    return;
  }
  if (o ? !cfg.syscall_passes(o->abi, o->nr) : !cfg.all_pass()) return done();
  abi::SyscallExitEvent e{};
  const std::uint64_t rax = read_reg(v, v.gpr[RAX]);
  const bool i386 = o && o->abi == abi::SyscallAbi::kI386;
  e.ret = i386 ? static_cast<std::int64_t>(static_cast<std::int32_t>(rax & 0xffff'ffffU)) : static_cast<std::int64_t>(rax);
  if (handler) {
    e.ret = handler->ret;
    e.signo = handler->signo;
  }
  e.nr = o ? static_cast<std::int64_t>(o->nr) : -1;
  e.cr3 = cr3;
  e.user_rip = user_rip;
  e.user_rsp = user_rsp;
  e.entry_seq = o ? o->seq : 0;
  e.kernel_gs_base = read_reg(v, v.k_gs_base);
  e.who = read_identity(v, cfg, e.kernel_gs_base);
  e.via = static_cast<std::uint16_t>(via);
  e.abi = static_cast<std::uint8_t>(o ? o->abi : abi::SyscallAbi::kX86_64);
  e.door = static_cast<std::uint8_t>(o ? o->door : abi::Door::kSyscall64);
  std::uint32_t extra = 0;
  if (o) {
    const SyscallCaptures* spec = find_captures(table_of(o->abi), o->nr, true);
    SyscallCaptures with_refetch{};
    if (o->refetch != 0) {   // the exit's own captures plus the entry strings to copy again
      if (spec) with_refetch = *spec;
      for (std::uint8_t a = 0; a < 6 && with_refetch.n < abi::kMaxCaptures; ++a)
        if (o->refetch & (1u << a)) with_refetch.c[with_refetch.n++] = CaptureSpec{a, abi::CaptureKind::kString, 0};
      spec = &with_refetch;
    }
    extra = build_captures(v, spec, o->args, e.ret, cfg.snap_len, o->abi, &e.n_captures, cfg.read_data_passes(dtb));
  }
  const Action exit_act = o && act == Action::kAsync && cfg.exit_forced_sync(o->abi, o->nr) ? Action::kSync : act;
  emit(m, vcpu, v, cfg, exit_act, abi::RecordType::kSyscallExit, &e.hdr, sizeof e, v.scratch, extra);
  done();
}

void on_sysret(unsigned vcpu, void* udata) {
  Monitor& m = *g_mon;
  Vcpu& v = m.vcpus[vcpu];
  if (!v.ready || !v.has_ring) return;
  SelfTimer timer(m, v);
  const auto via = static_cast<abi::ExitVia>(reinterpret_cast<std::uintptr_t>(udata));
  std::uint64_t rip = read_reg(v, v.gpr[RCX]);
  std::uint64_t rsp = read_reg(v, v.gpr[RSP]);
  if (via == abi::ExitVia::kSysretl) {
    rip &= 0xffff'ffffULL;
    rsp &= 0xffff'ffffULL;
  }
  on_return_to_user(m, vcpu, v, via, via == abi::ExitVia::kSysretl, rip, rsp);
}

void on_iret(unsigned vcpu, void*) {
  Monitor& m = *g_mon;
  Vcpu& v = m.vcpus[vcpu];
  if (!v.ready || !v.has_ring) return;
  SelfTimer timer(m, v);
  std::uint64_t frame[4];  // RIP, CS, RFLAGS, RSP
  if (!read_mem(v, read_reg(v, v.gpr[RSP]), frame, sizeof frame)) return;
  if ((frame[1] & 3) != 3) return;  // back to kernel mode: not the end of a syscall
  constexpr std::uint64_t kUser32Cs = 0x23;   // __USER32_CS: the iret resumes 32-bit code
  on_return_to_user(m, vcpu, v, abi::ExitVia::kIret, (frame[1] & 0xffff) == kUser32Cs, frame[0], frame[3]);
}

constexpr std::uint64_t encode_site(std::uint64_t va, unsigned low4) {
  return ((va & 0x0000'ffff'ffff'ffffULL) << 4) | low4;
}
constexpr std::uint64_t site_va(std::uint64_t u) { return (u >> 4) | 0xffff'0000'0000'0000ULL; }

void on_cr3_write(unsigned vcpu, void* udata) {
  Monitor& m = *g_mon;
  Vcpu& v = m.vcpus[vcpu];
  if (!v.ready || !v.has_ring) return;
  SelfTimer timer(m, v);
  const std::uint64_t u = reinterpret_cast<std::uintptr_t>(udata);
  const std::uint64_t old_cr3 = read_reg(v, v.cr3);
  const std::uint64_t new_cr3 = read_reg(v, v.gpr[u & 15]);
  const std::uint64_t new_dtb = abi::dtb_of_cr3(new_cr3);
  const FilterConfig& cfg = *acquire_cfg(m, v);
  narrow(m, vcpu, cfg, new_dtb);
  const Action act = cfg.action(EventClass::kCr3);
  if (act != Action::kDrop && cfg.cr3_write_passes(abi::dtb_of_cr3(old_cr3), new_dtb)) {
    abi::Cr3WriteEvent e{};
    e.old_cr3 = old_cr3;
    e.new_cr3 = new_cr3;
    e.rip = site_va(u);
    e.cr3_writes = qemu_plugin_u64_get(m.f_cr3_writes, vcpu);
    e.kernel_gs_base = read_reg(v, v.gs_base);
    e.who = read_identity(v, cfg, e.kernel_gs_base);
    emit(m, vcpu, v, cfg, act, abi::RecordType::kCr3Write, &e.hdr, sizeof e, nullptr, 0);
  }
  release_cfg(v);
}

// At an address with a breakpoint (udata = the address). The table decides, not the translation:
// a TB translated before a removal still calls here until the flush, and finds nothing to report.
void on_breakpoint(unsigned vcpu, void* udata) {
  Monitor& m = *g_mon;
  Vcpu& v = m.vcpus[vcpu];
  if (!v.ready || !v.has_ring) return;
  SelfTimer timer(m, v);
  const std::uint64_t va = reinterpret_cast<std::uintptr_t>(udata);
  const std::uint64_t cr3 = read_reg(v, v.cr3);
  const std::uint64_t dtb = abi::dtb_of_cr3(cr3);
  const FilterConfig& cfg = *acquire_cfg(m, v);
  abi::BreakpointEvent e{};
  bool have_regs = false;
  for (std::uint32_t i = 0; i < cfg.n_bps; ++i) {
    const Breakpoint& b = cfg.bps[i];
    if (b.va != va || b.action == Action::kDrop || !cfg.bp_fires_in(b, dtb)) continue;
    if (!have_regs) {
      have_regs = true;
      e.va = va;
      e.cr3 = cr3;
      e.rsp = read_reg(v, v.gpr[RSP]);
      const unsigned regs[7] = {RDI, RSI, RDX, RCX, R8, R9, RAX};
      for (unsigned r = 0; r < 7; ++r) e.regs[r] = read_reg(v, v.gpr[regs[r]]);
      if (read_mem(v, e.rsp, &e.ret_addr, sizeof e.ret_addr)) e.flags |= abi::kBpRetAddrRead;
    }
    e.id = b.id;
    e.kind = static_cast<std::uint8_t>(b.kind);
    emit(m, vcpu, v, cfg, b.action, abi::RecordType::kBreakpoint, &e.hdr, sizeof e, nullptr, 0);
  }
  release_cfg(v);
}

bool is_bp_site(const Monitor& m, std::uint64_t va) {
  const std::uint32_t n = m.n_bp_sites.load(std::memory_order_acquire);
  for (std::uint32_t i = 0; i < n && i < abi::kMaxBreakpoints; ++i)
    if (m.bp_site[i].load(std::memory_order_relaxed) == va) return true;
  return false;
}

// A conditional callback, counted (countchecks=on) where it is tested, so a benchmark can count
// what the generated code checks instead of timing it.
void cond_cb(Monitor& m, qemu_plugin_insn* insn, qemu_plugin_vcpu_udata_cb_t cb, qemu_plugin_cb_flags flags,
             qemu_plugin_cond c, qemu_plugin_u64 field, std::uint64_t imm, void* udata) {
  if (m.opt.count_checks)
    qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(insn, QEMU_PLUGIN_INLINE_ADD_U64, m.f_cond_checks, 1);
  qemu_plugin_register_vcpu_insn_exec_cond_cb(insn, cb, flags, c, field, imm, udata);
}

void on_tb_trans(qemu_plugin_id_t, qemu_plugin_tb* tb) {
  Monitor& m = *g_mon;
  const bool kernel = is_kernel_va(qemu_plugin_tb_vaddr(tb));
  const std::size_t n = qemu_plugin_tb_n_insns(tb);
  const bool counting = m.opt.count_only;
  std::uint64_t doors[static_cast<unsigned>(abi::Door::kCount)];
  for (unsigned d = 0; d < static_cast<unsigned>(abi::Door::kCount); ++d)
    doors[d] = m.door_va[d].load(std::memory_order_acquire);
  const bool detect_here =
      detect_at(qemu_plugin_tb_vaddr(tb), doors[static_cast<unsigned>(abi::Door::kSyscall64)],
                m.detect_everywhere.load(std::memory_order_seq_cst));
  if (m.opt.icount)
    qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64, m.f_insns, n);
  if (m.opt.count_checks && kernel)
    qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64, m.f_kernel_blocks, 1);
  for (std::size_t i = 0; i < n; ++i) {
    qemu_plugin_insn* insn = qemu_plugin_tb_get_insn(tb, i);
    std::uint8_t b[16];
    const std::size_t size = qemu_plugin_insn_size(insn);
    const std::size_t got = qemu_plugin_insn_data(insn, b, sizeof b);
    if (got != size) continue;
    const std::uint64_t va = qemu_plugin_insn_vaddr(insn);
    if (!counting && is_bp_site(m, va))
      qemu_plugin_register_vcpu_insn_exec_cb(insn, on_breakpoint, QEMU_PLUGIN_CB_R_REGS,
                                             reinterpret_cast<void*>(static_cast<std::uintptr_t>(va)));
    if (!kernel) {
      const DoorInsn door = door_insn(b, size);
      if (door == DoorInsn::kNone) continue;
      const qemu_plugin_u64 counter = door == DoorInsn::kSyscall ? m.f_user_syscalls
                                      : door == DoorInsn::kInt80 ? m.f_user_int80s
                                                                 : m.f_user_sysenters;
      qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(insn, QEMU_PLUGIN_INLINE_ADD_U64, counter, 1);
      if (counting) continue;
      qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(insn, QEMU_PLUGIN_INLINE_STORE_U64, m.f_detect,
                                                          static_cast<std::uint64_t>(door));
      qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(insn, QEMU_PLUGIN_INLINE_STORE_U64, m.f_door_rip, va);
      cond_cb(m, insn, on_reset_req, QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_COND_NE,
                                                  m.f_reset_req, 0, nullptr);
      continue;
    }
    const int src = mov_to_cr3_source(b, size);
    if (src >= 0) {
      qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(insn, QEMU_PLUGIN_INLINE_ADD_U64, m.f_cr3_writes, 1);
      if (!counting) {
        cond_cb(m, insn, on_cr3_write, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_COND_EQ,
                                                    m.f_cr3_armed, 1,
                                                    reinterpret_cast<void*>(encode_site(va, static_cast<unsigned>(src))));
        cond_cb(m, insn, on_reset_req, QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_COND_NE,
                                                    m.f_reset_req, 0, nullptr);
      }
    }
    if (counting) continue;
    bool is_door = false;
    for (unsigned d = 0; d < static_cast<unsigned>(abi::Door::kCount); ++d) {
      if (doors[d] == 0 || doors[d] != va) continue;
      is_door = true;
      // Clear detection first (callbacks and inline ops of an instruction run in registration order).
      qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(insn, QEMU_PLUGIN_INLINE_STORE_U64, m.f_detect, 0);
      cond_cb(m, insn, on_entry, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_COND_EQ,
                                                  m.f_entry_armed, 1, reinterpret_cast<void*>(std::uintptr_t{d}));
    }
    if (i == 0 && !is_door && detect_here)
      cond_cb(m, insn, on_detect, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_COND_NE, m.f_detect, 0,
              reinterpret_cast<void*>(va));
    if (is_sysretq(b, size) || is_sysretl(b, size) || is_iretq(b, size))
      cond_cb(m, insn, on_unseen_entry, QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_COND_NE, m.f_detect, 0, nullptr);
    if (is_sysretq(b, size) || is_sysretl(b, size))
      cond_cb(
          m, insn, on_sysret, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_COND_EQ, m.f_exit_armed, 1,
          reinterpret_cast<void*>(static_cast<std::uintptr_t>(is_sysretq(b, size) ? abi::ExitVia::kSysret
                                                                                    : abi::ExitVia::kSysretl)));
    if (is_iretq(b, size))
      cond_cb(m, insn, on_iret, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_COND_EQ, m.f_exit_armed, 1, nullptr);
  }
}

void on_vcpu_init(qemu_plugin_id_t, unsigned vcpu) {
  Monitor& m = *g_mon;
  if (vcpu >= m.max_vcpus) return;
  Vcpu& v = m.vcpus[vcpu];
  v.regbuf = g_byte_array_sized_new(64);
  v.membuf = g_byte_array_sized_new(abi::kMaxSnapLen + 4096);
  v.scratch = static_cast<std::uint8_t*>(std::calloc(1, kScratchBytes));
  GArray* regs = qemu_plugin_get_registers();
  for (guint i = 0; regs && i < regs->len; ++i) {
    const auto& d = g_array_index(regs, qemu_plugin_reg_descriptor, i);
    for (unsigned r = 0; r < 16; ++r)
      if (std::strcmp(d.name, kGprNames[r]) == 0) v.gpr[r] = d.handle;
    if (std::strcmp(d.name, "cr3") == 0) v.cr3 = d.handle;
    if (std::strcmp(d.name, "k_gs_base") == 0) v.k_gs_base = d.handle;
    if (std::strcmp(d.name, "gs_base") == 0) v.gs_base = d.handle;
  }
  if (regs) g_array_free(regs, TRUE);
  bool ok = v.cr3 != nullptr && v.scratch != nullptr;
  for (auto* h : v.gpr) ok = ok && h != nullptr;
  if (!ok) {
    std::fprintf(stderr, "hvtrace-monitor: vCPU %u: registers rax..r15/cr3 not exposed by QEMU; vCPU not traced\n", vcpu);
    return;
  }
  v.ready = true;
  const FilterConfig& cfg = *acquire_cfg(m, v);
  narrow(m, vcpu, cfg, abi::dtb_of_cr3(read_reg(v, v.cr3)));
  release_cfg(v);
}

void on_exit(qemu_plugin_id_t, void*) {
  Monitor& m = *g_mon;
  stop_control(m);
  if (m.shm) msync(m.shm, abi::kPageSize, MS_ASYNC);
  // Rings stay mapped and the file stays: a consumer may still drain it. QEMU exits right after.
}

}  // namespace

void store_flags(Monitor& m, unsigned vcpu, const ArmFlags& f) {
  const auto put = [&](qemu_plugin_u64 field, std::uint64_t val) {
    auto* p = static_cast<std::uint64_t*>(qemu_plugin_scoreboard_find(field.score, vcpu));
    std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(reinterpret_cast<char*>(p) + field.offset))
        .store(val, std::memory_order_seq_cst);
  };
  put(m.f_entry_armed, f.entry);
  put(m.f_exit_armed, f.exit);
  put(m.f_cr3_armed, f.cr3);
}

// The table in `now` is in force (published): give translation the addresses that have no
// callback yet, then have a vCPU flush the code cache (on_reset_req) so they are translated again
// with one. A removal, or an address that still has its callback from before, flushes nothing
// (bp_sites.hpp): a stale callback finds no breakpoint in the table. Nothing per event.
void breakpoints_changed(Monitor& m, const FilterConfig& now) {
  std::uint64_t want[abi::kMaxBreakpoints];
  std::uint32_t n_want = 0;
  for (std::uint32_t i = 0; i < now.n_bps && n_want < abi::kMaxBreakpoints; ++i)
    if (now.bps[i].action != Action::kDrop) want[n_want++] = now.bps[i].va;
  std::uint64_t sites[abi::kMaxBreakpoints];
  const std::uint32_t n_old = std::min<std::uint32_t>(m.n_bp_sites.load(), abi::kMaxBreakpoints);
  for (std::uint32_t i = 0; i < n_old; ++i) sites[i] = m.bp_site[i].load();
  std::uint32_t n = n_old;
  if (!update_bp_sites(sites, n, abi::kMaxBreakpoints, want, n_want)) return;
  for (std::uint32_t i = 0; i < n; ++i) m.bp_site[i].store(sites[i], std::memory_order_relaxed);
  m.n_bp_sites.store(n, std::memory_order_release);
  const std::uint64_t serial = m.bp_serial.fetch_add(1, std::memory_order_seq_cst) + 1;
  if (m.shm_hdr) abi::aref(m.shm_hdr->bp_serial).store(serial, std::memory_order_release);
  for (unsigned v = 0; v < m.max_vcpus; ++v)
    if (m.vcpus[v].ready) board_field(m.f_reset_req, v).store(1, std::memory_order_seq_cst);
}

}  // namespace hvtrace::monitor

void hvtrace_monitor_register_callbacks() {
  Monitor& m = *g_mon;
  qemu_plugin_register_vcpu_tb_trans_cb(m.id, on_tb_trans);
  qemu_plugin_register_vcpu_init_cb(m.id, on_vcpu_init);
  qemu_plugin_register_atexit_cb(m.id, on_exit, nullptr);
}

extern "C" QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t* info, int argc,
                                                      char** argv) {
  std::string why;
  if (info == nullptr || !info->system_emulation || std::strcmp(info->target_name, "x86_64") != 0) {
    std::fprintf(stderr, "hvtrace-monitor: needs qemu-system-x86_64 (full-system emulation)\n");
    return -1;
  }
  auto* m = new (std::nothrow) Monitor();
  if (m == nullptr) return -1;
  if (!parse_options(argc, argv, &m->opt, &why)) {
    std::fprintf(stderr, "hvtrace-monitor: %s\n%s", why.c_str(), options_usage());
    delete m;
    return -1;
  }
  m->id = id;
  m->max_vcpus = static_cast<unsigned>(info->system.max_vcpus);
  if (m->max_vcpus == 0 || m->max_vcpus > abi::kMaxVcpus) {
    std::fprintf(stderr, "hvtrace-monitor: %u vCPUs not supported (1..%u)\n", m->max_vcpus, abi::kMaxVcpus);
    delete m;
    return -1;
  }
  m->vcpus = new Vcpu[m->max_vcpus];
  m->pool[0] = m->opt.initial;
  m->current.store(&m->pool[0]);
  m->door_va[static_cast<unsigned>(abi::Door::kSyscall64)].store(m->opt.entry_va);
  m->detect_everywhere.store(m->opt.detect_everywhere);
  m->board = qemu_plugin_scoreboard_new(sizeof(VcpuBoard));
  m->f_user_syscalls = qemu_plugin_u64{m->board, offsetof(VcpuBoard, user_syscalls)};
  m->f_user_int80s = qemu_plugin_u64{m->board, offsetof(VcpuBoard, user_int80s)};
  m->f_user_sysenters = qemu_plugin_u64{m->board, offsetof(VcpuBoard, user_sysenters)};
  m->f_cr3_writes = qemu_plugin_u64{m->board, offsetof(VcpuBoard, cr3_writes)};
  m->f_entry_armed = qemu_plugin_u64{m->board, offsetof(VcpuBoard, entry_armed)};
  m->f_door_rip = qemu_plugin_u64{m->board, offsetof(VcpuBoard, door_rip)};
  m->f_exit_armed = qemu_plugin_u64{m->board, offsetof(VcpuBoard, exit_armed)};
  m->f_cr3_armed = qemu_plugin_u64{m->board, offsetof(VcpuBoard, cr3_armed)};
  m->f_reset_req = qemu_plugin_u64{m->board, offsetof(VcpuBoard, reset_req)};
  for (std::uint32_t i = 0; i < m->opt.initial.n_bps; ++i)   // bp= arguments: in force from the start
    if (m->opt.initial.bps[i].action != Action::kDrop) m->bp_site[m->n_bp_sites++].store(m->opt.initial.bps[i].va);
  m->f_detect = qemu_plugin_u64{m->board, offsetof(VcpuBoard, detect)};
  m->f_insns = qemu_plugin_u64{m->board, offsetof(VcpuBoard, insns)};
  m->f_cond_checks = qemu_plugin_u64{m->board, offsetof(VcpuBoard, cond_checks)};
  m->f_kernel_blocks = qemu_plugin_u64{m->board, offsetof(VcpuBoard, kernel_blocks)};
  g_mon = m;
  if (!m->opt.count_only) {
    if (!create_rings(*m, &why) || !start_control(*m, &why)) {
      std::fprintf(stderr, "hvtrace-monitor: %s\n", why.c_str());
      if (m->shm) unlink(m->opt.shm_path.c_str());
      return -1;  // QEMU uninstalls us; the Monitor object is leaked on purpose (QEMU exits)
    }
  }
  hvtrace_monitor_register_callbacks();
  return 0;
}
