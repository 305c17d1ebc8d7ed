// The doors into the kernel, as pure functions unit-tested without QEMU: how a kernel entry point
// found after a user door instruction is verified (a fault raised by the door instruction enters
// the kernel too, through an exception handler, and must not be learned as the door), and which
// registers hold the number and the arguments at each door's entry point (entry_64.S and
// entry_64_compat.S: the first instruction of each entry runs with the user's registers).
#pragma once

#include "hvtrace/abi/events.h"
#include "x86.hpp"

#include <atomic>
#include <cstdint>
#include <optional>

namespace hvtrace::monitor {

constexpr bool is_user_va(std::uint64_t va) { return va < 0x0000'8000'0000'0000ULL; }

// What the detection callback sees at the first kernel instruction after a user door instruction.
struct DetectInput {
  DoorInsn insn = DoorInsn::kNone;  // which door instruction ran last in user mode on this vCPU
  std::uint64_t door_rip = 0;       // its address
  std::uint64_t rsp = 0, rcx = 0;   // registers at the kernel instruction
  std::uint64_t stack[2] = {};      // the two words at rsp (an exception frame's first words)
  bool stack_ok = false;            // they could be read
  bool syscall64_known = false;     // the 64-bit `syscall` entry point is known already
};

// The door this kernel entry point belongs to, or nullopt if the kernel was entered another way
// (an exception raised by the door instruction, such as #UD or #GP). Exact by hardware semantics:
//  - `syscall` does not switch stacks and puts the next RIP in RCX; an exception switches to a
//    kernel stack. The first `syscall` entry learned is the 64-bit one (the guest's init, a 64-bit
//    program, enters the kernel long before any other process exists); the other is the compat one,
//    and a compat `syscall` can only run below 4 GiB.
//  - `int $0x80` pushes a frame whose RIP is the next instruction (a fault's frame holds the
//    faulting one) and whose CS is a user selector.
//  - `sysenter` pushes nothing; a fault pushes a frame whose RIP (after the error code for #GP) is
//    the faulting instruction.
inline std::optional<abi::Door> classify_entry(const DetectInput& in) {
  switch (in.insn) {
    case DoorInsn::kSyscall:
      if (!is_user_va(in.rsp) || in.rcx != in.door_rip + 2) return std::nullopt;
      if (!in.syscall64_known) return abi::Door::kSyscall64;
      if (in.door_rip + 2 > 0xffff'ffffULL) return std::nullopt;
      return abi::Door::kSyscallCompat;
    case DoorInsn::kInt80:
      if (is_user_va(in.rsp) || !in.stack_ok || in.stack[0] != in.door_rip + 2 || (in.stack[1] & 3) != 3)
        return std::nullopt;
      return abi::Door::kInt80;
    case DoorInsn::kSysenter:
      if (is_user_va(in.rsp)) return std::nullopt;
      if (in.stack_ok && (in.stack[0] == in.door_rip || in.stack[1] == in.door_rip)) return std::nullopt;
      return abi::Door::kSysenter;
    case DoorInsn::kNone:
      break;
  }
  return std::nullopt;
}

// Where a new door's entry point is looked for. Every door's kernel entry point lies in the
// kernel's entry text (.entry.text: entry_SYSCALL_64, entry_SYSCALL_compat, entry_SYSENTER_compat
// and the IDT stub of `int $0x80`), which x86-64 Linux built with page-table isolation (Debian's
// kernels) aligns to a 2 MiB page of its own, mapped in user page tables too. So once the 64-bit
// entry point is known, only kernel blocks in its 2 MiB page need the detection check: a few per
// system call or interrupt, where a check at every kernel block start runs hundreds of times per
// call. Until the 64-bit entry is known, and in `everywhere` mode, every kernel block is checked.
inline constexpr std::uint64_t kEntryTextWindow = 2ULL << 20;

constexpr bool detect_at(std::uint64_t tb_va, std::uint64_t syscall64_va, bool everywhere) {
  if (everywhere || syscall64_va == 0) return true;
  return (tb_va & ~(kEntryTextWindow - 1)) == (syscall64_va & ~(kEntryTextWindow - 1));
}

// The safety net for a kernel laid out otherwise: a door instruction whose entry was not seen by
// the time the vCPU returns to user mode (the `detect` mark still set at sysret/iret) entered
// the kernel outside the window. That call is lost (counted), and detection moves to every kernel
// block until a door is learned; after kStickyMisses such misses it stays there for good, so a
// guest cannot make the monitor flush its code cache without bound.
inline constexpr unsigned kStickyMisses = 4;

// Whether detection should run everywhere after a door was learned, given the misses so far.
constexpr bool everywhere_after_learning(bool option_everywhere, unsigned misses) {
  return option_everywhere || misses >= kStickyMisses;
}

// The user's registers at a door's kernel entry point.
struct EntryRegs {
  std::uint64_t rax = 0, rbx = 0, rcx = 0, rdx = 0, rsi = 0, rdi = 0, rbp = 0, rsp = 0, r8 = 0, r9 = 0, r10 = 0;
  std::uint64_t user_word = 0;      // compat syscall: the 32-bit word at the user esp; sysenter: at ebp
  std::uint64_t frame_rip = 0, frame_rsp = 0;  // int $0x80: the interrupt frame's RIP and RSP
};

struct EntryDecode {
  abi::SyscallAbi abi = abi::SyscallAbi::kX86_64;
  std::uint64_t nr = 0;
  std::uint64_t args[6] = {};
  std::uint64_t user_rip = 0, user_rsp = 0;
};

using abi::kX32SyscallBit;

// Where the user stack word a door needs lives (0: none): compat syscall [esp], sysenter [ebp].
constexpr std::uint64_t user_word_address(abi::Door d, const EntryRegs& r) {
  return d == abi::Door::kSyscallCompat ? (r.rsp & 0xffff'ffffULL)
         : d == abi::Door::kSysenter    ? (r.rbp & 0xffff'ffffULL)
                                        : 0;
}

// The table a 64-bit `syscall` indexes, from rax alone: x32 calls set kX32SyscallBit.
constexpr abi::SyscallAbi syscall64_abi(std::uint64_t rax) {
  return (rax & kX32SyscallBit) != 0 && (rax >> 32) == 0 ? abi::SyscallAbi::kX32 : abi::SyscallAbi::kX86_64;
}

constexpr EntryDecode decode_entry(abi::Door d, const EntryRegs& r) {
  constexpr std::uint64_t m32 = 0xffff'ffffULL;
  EntryDecode e;
  switch (d) {
    case abi::Door::kSyscall64: {
      e.nr = r.rax;
      e.abi = syscall64_abi(r.rax);
      const std::uint64_t a[6] = {r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9};
      for (int i = 0; i < 6; ++i) e.args[i] = a[i];
      e.user_rip = r.rcx;
      e.user_rsp = r.rsp;
      return e;
    }
    case abi::Door::kInt80: {
      e.abi = abi::SyscallAbi::kI386;
      e.nr = r.rax & m32;
      const std::uint64_t a[6] = {r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp};
      for (int i = 0; i < 6; ++i) e.args[i] = a[i] & m32;
      e.user_rip = r.frame_rip;
      e.user_rsp = r.frame_rsp;
      return e;
    }
    case abi::Door::kSyscallCompat: {
      e.abi = abi::SyscallAbi::kI386;
      e.nr = r.rax & m32;
      const std::uint64_t a[6] = {r.rbx, r.rbp, r.rdx, r.rsi, r.rdi, r.user_word};
      for (int i = 0; i < 6; ++i) e.args[i] = a[i] & m32;
      e.user_rip = r.rcx & m32;
      e.user_rsp = r.rsp & m32;
      return e;
    }
    case abi::Door::kSysenter: {
      e.abi = abi::SyscallAbi::kI386;
      e.nr = r.rax & m32;
      const std::uint64_t a[6] = {r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.user_word};
      for (int i = 0; i < 6; ++i) e.args[i] = a[i] & m32;
      e.user_rip = 0;                 // sysenter keeps no return address; the kernel returns to the vDSO
      e.user_rsp = r.rbp & m32;       // the kernel's pt_regs->sp (the vDSO put esp in ebp)
      return e;
    }
    case abi::Door::kCount:
      break;
  }
  return e;
}

// An entry whose return to user mode has not been seen, and the pairing rule: the same address
// space and the same user stack pointer (a thread's user RSP is unchanged across its syscall).
struct OpenCall {
  std::uint64_t dtb = 0, rsp = 0, nr = 0, seq = 0;
  std::uint64_t args[6] = {};
  abi::SyscallAbi abi = abi::SyscallAbi::kX86_64;
  abi::Door door = abi::Door::kSyscall64;
  // Strings that could not be read at entry (their page not yet faulted in: the kernel brings it in
  // while it reads the argument), as argument bits: copied again at the exit.
  std::uint8_t refetch = 0;
  std::uint64_t rip = 0;   // where it returns (after the door instruction; 0: not known, sysenter)
};

// Every door instruction (syscall, int $0x80, sysenter) is 2 bytes: a call the kernel restarts
// resumes at its door instruction again.
constexpr bool resumes_at_door(const OpenCall& c, std::uint64_t ip) { return c.rip != 0 && ip + 2 == c.rip; }

// exit and exit_group never return to user mode: their entries are not kept (each would hold a
// slot until evicted, and a full table evicts the entries of calls still in progress).
constexpr bool never_returns(abi::SyscallAbi a, std::uint64_t nr) {
  return abi::is_exit_call(a, nr) || abi::is_exit_group_call(a, nr);
}

// execve and execveat return, when they succeed, into another address space on another stack, so
// their entries never pair: a full table evicts these first.
constexpr bool leaves_address_space(abi::SyscallAbi a, std::uint64_t nr) { return abi::is_exec_call(a, nr); }

// rt_sigreturn (and i386 sigreturn) return to the context the signal interrupted, on the stack it
// was using: not to the handler's stack they were called on. That stack pointer is saved in the
// signal frame the kernel reads (regs->sp is the user stack pointer at entry, pretcode popped):
//   x86-64 rt_sigreturn: rt_sigframe at sp-8, uc at +8, uc_mcontext at +40, sigcontext.sp at +120;
//   i386 rt_sigreturn: rt_sigframe_ia32 at sp-4, uc at +144, uc_mcontext at +20, sigcontext_32.sp
//   at +28; i386 sigreturn: sigframe_ia32 at sp-8, sc at +8, sp at +28.
// The entry is kept under that saved pointer, so the return pairs with it (and replaces the
// interrupted call's stale entry of the same thread). x32's frame is not decoded (nullopt: its
// entry is kept as any other). The guest controls the frame: a lie only mispairs its own call.
struct SavedStack {
  std::uint32_t offset = 0, size = 0;   // from the user stack pointer at entry; bytes
};
constexpr std::optional<SavedStack> sigreturn_saved_stack(abi::SyscallAbi a, std::uint64_t nr) {
  if (a == abi::SyscallAbi::kX86_64 && nr == 15) return SavedStack{160, 8};
  if (a == abi::SyscallAbi::kI386 && nr == 173) return SavedStack{188, 4};
  if (a == abi::SyscallAbi::kI386 && nr == 119) return SavedStack{28, 4};
  return std::nullopt;
}

// A return to user mode into a signal handler: the kernel built a signal frame at the user stack
// pointer and set the handler's registers to point into it (x86-64 rt frame: rdi = signal, rax = 0,
// rdx = &frame->uc = sp + 8; i386 rt frame: eax = signal, edx = &frame->info = sp + 16, ecx =
// &frame->uc = sp + 144; i386 old frame: eax = signal, edx = ecx = 0). The context the thread
// resumes after the handler is saved in the frame (layouts as for sigreturn_saved_stack, from the
// frame's start): its stack pointer, instruction pointer and rax, each `size` bytes. nullopt when
// the registers are not a handler's (an interrupt or exception returning, x32). The registers and
// frame are the guest's: a lie at most pairs one of that address space's own open calls wrongly.
struct SignalFrame {
  std::uint32_t signo = 0, sp = 0, ip = 0, ax = 0, size = 0;
};
inline constexpr std::uint32_t kSignalFrameSpan = 32;   // the three fields lie within this many bytes
constexpr std::optional<SignalFrame> signal_frame(bool compat, std::uint64_t sp, std::uint64_t rax, std::uint64_t rcx,
                                                  std::uint64_t rdx, std::uint64_t rdi) {
  constexpr std::uint64_t kMaxSignal = 64, m32 = 0xffff'ffffULL;
  if (!compat) {
    if (rdi == 0 || rdi > kMaxSignal || rax != 0 || rdx != sp + 8) return std::nullopt;
    return SignalFrame{static_cast<std::uint32_t>(rdi), 168, 176, 152, 8};
  }
  const std::uint64_t sig = rax & m32, ecx = rcx & m32, edx = rdx & m32;
  if (sig == 0 || sig > kMaxSignal) return std::nullopt;
  if (ecx == ((sp + 144) & m32) && edx == ((sp + 16) & m32)) return SignalFrame{static_cast<std::uint32_t>(sig), 192, 220, 208, 4};
  if (ecx == 0 && edx == 0) return SignalFrame{static_cast<std::uint32_t>(sig), 36, 64, 52, 4};
  return std::nullopt;
}

// The key a slot can be scanned by without its lock: never 0 for a used slot.
constexpr std::uint64_t open_tag(std::uint64_t dtb, std::uint64_t rsp) {
  return (dtb ^ (rsp * 0x9e37'79b9'7f4a'7c15ULL)) | 1;
}

// One vCPU's open entries. Only the owning vCPU adds (put); any vCPU removes (take), and the control
// thread drops entries of address spaces the filter stopped passing (drop_unless): a thread that
// blocked in a call on one vCPU may return to user mode on another, which then looks in every
// vCPU's table after its own. Ordering: every access to a slot's call and `used` holds the slot's
// try-lock (acquire on taking it, release on letting go). A vCPU that finds a slot held moves on
// and never waits; that loses nothing, since the holder is either the owner recording an entry
// of the thread running on it, or a vCPU taking the entry of the thread running on *it*, and a
// thread runs on one vCPU at a time, so the slot held is never the one the other vCPU wants (or
// the control thread, holding only slots of address spaces the filter no longer passes, whose
// exits it drops anyway).
// `tag` (open_tag of the call, 0 when free) is written under the lock and read relaxed by scans,
// only as a hint: a match is always checked again under the lock.
template <unsigned N>
class OpenEntries {
 public:
  // Record an entry: it replaces a stale entry of the same thread (its exit never seen), else takes
  // a free slot, else an exec's entry (stale once the exec succeeded), else the next slot round
  // robin (that slot's thread, if its call is still in progress, then returns unpaired: *evicted
  // is set). False only if every slot it tried was held by another vCPU at that instant (the exit
  // comes unpaired).
  bool put(const OpenCall& c, bool* evicted = nullptr) {
    const std::uint64_t t = open_tag(c.dtb, c.rsp);
    Slot* s = nullptr;
    for (auto& x : slot_)
      if (x.tag.load(std::memory_order_relaxed) == t && lock(x)) {
        if (x.used && x.call.dtb == c.dtb && x.call.rsp == c.rsp) {
          s = &x;
          break;
        }
        unlock(x);
      }
    if (!s)
      for (auto& x : slot_)
        if (x.tag.load(std::memory_order_relaxed) == 0 && lock(x)) {
          if (!x.used) {
            s = &x;
            break;
          }
          unlock(x);
        }
    if (!s)
      for (auto& x : slot_)
        if (x.exec.load(std::memory_order_relaxed) && lock(x)) {
          if (x.used && leaves_address_space(x.call.abi, x.call.nr)) {
            s = &x;
            break;
          }
          unlock(x);
        }
    for (unsigned k = 0; !s && k < N; ++k)
      if (Slot& x = slot_[next_++ % N]; lock(x)) {
        s = &x;
        if (x.used && evicted) *evicted = true;
      }
    if (!s) return false;
    s->call = c;
    s->used = true;
    s->exec.store(leaves_address_space(c.abi, c.nr), std::memory_order_relaxed);
    s->tag.store(t, std::memory_order_relaxed);
    s->dtb.store(c.dtb, std::memory_order_seq_cst);   // P of arming.hpp
    unlock(*s);
    return true;
  }
  // Whether an entry of address space `dtb` is open here (S of arming.hpp: a hint read without the
  // slots' locks; a slot being filled or emptied may be seen either way).
  [[nodiscard]] bool holds(std::uint64_t dtb) const {
    for (const auto& x : slot_)
      if (x.dtb.load(std::memory_order_seq_cst) == dtb) return true;
    return false;
  }
  // Remove and return the entry of the thread (dtb, rsp), if this table holds it.
  std::optional<OpenCall> take(std::uint64_t dtb, std::uint64_t rsp) {
    const std::uint64_t t = open_tag(dtb, rsp);
    for (auto& x : slot_)
      if (x.tag.load(std::memory_order_relaxed) == t && lock(x)) {
        if (x.used && x.call.dtb == dtb && x.call.rsp == rsp) {
          const OpenCall c = x.call;
          clear(x);
          unlock(x);
          return c;
        }
        unlock(x);
      }
    return std::nullopt;
  }

  // Drop the entries of the address spaces `keep` rejects: the control thread, after the filter
  // stopped passing them (a process gone or no longer traced), so the entries its calls never
  // returned from do not fill the table. Only slots whose hint already says so are locked: a vCPU
  // that finds one held while it takes that entry returns a call whose exit the filter drops anyway.
  // A slot held at that instant is skipped (the next change drops it). Returns how many it dropped.
  template <typename Keep>
  unsigned drop_unless(Keep&& keep) {
    unsigned n = 0;
    for (auto& x : slot_) {
      const std::uint64_t d = x.dtb.load(std::memory_order_seq_cst);
      if (d == 0 || keep(d) || !lock(x)) continue;
      if (x.used && !keep(x.call.dtb)) {
        clear(x);
        ++n;
      }
      unlock(x);
    }
    return n;
  }
 private:
  struct Slot {
    OpenCall call;
    bool used = false;
    std::atomic<std::uint64_t> tag{0};
    std::atomic<bool> exec{false};   // hint like tag: the call is an exec (checked again under the lock)
    std::atomic<std::uint64_t> dtb{0};   // hint: the call's address space, 0 when free (holds())
    std::atomic<bool> held{false};
  };
  static bool lock(Slot& x) {
    return !x.held.load(std::memory_order_relaxed) && !x.held.exchange(true, std::memory_order_acquire);
  }
  static void unlock(Slot& x) { x.held.store(false, std::memory_order_release); }
  static void clear(Slot& x) {   // under the slot's lock
    x.used = false;
    x.exec.store(false, std::memory_order_relaxed);
    x.tag.store(0, std::memory_order_relaxed);
    x.dtb.store(0, std::memory_order_relaxed);
  }

  Slot slot_[N];
  unsigned next_ = 0;   // owner only
};

}  // namespace hvtrace::monitor
