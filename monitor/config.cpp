// Plugin arguments and control messages -> configuration. Runs at QEMU start and on the control
// thread only, never on a vCPU execution path, so it may allocate and format.
#include "config.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace hvtrace::monitor {
namespace {

bool parse_u64(std::string_view s, std::uint64_t* out) {
  if (s.empty() || s.size() > 20) return false;
  std::string tmp(s);
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(tmp.c_str(), &end, 0);
  if (errno != 0 || end != tmp.c_str() + tmp.size() || tmp[0] == '-' || tmp[0] == '+') return false;
  *out = v;
  return true;
}

bool parse_action(std::string_view s, Action* out) {
  if (s == "drop") *out = Action::kDrop;
  else if (s == "async") *out = Action::kAsync;
  else if (s == "sync") *out = Action::kSync;
  else return false;
  return true;
}

bool parse_syscalls(std::string_view s, FilterConfig* cfg, unsigned table) {
  if (s == "all") {
    cfg->all_syscalls[table] = true;
    std::memset(cfg->syscall_bitmap[table], 0, sizeof cfg->syscall_bitmap[table]);
    return true;
  }
  cfg->all_syscalls[table] = false;
  std::memset(cfg->syscall_bitmap[table], 0, sizeof cfg->syscall_bitmap[table]);
  while (!s.empty()) {
    const auto sep = s.find(':');
    std::uint64_t nr = 0;
    if (!parse_u64(s.substr(0, sep), &nr) || nr >= abi::kSyscallBits) return false;
    cfg->syscall_bitmap[table][nr / 64] |= 1ULL << (nr % 64);
    if (sep == std::string_view::npos) break;
    s.remove_prefix(sep + 1);
  }
  return true;
}

void set_why(std::string* why, std::string s) {
  if (why) *why = std::move(s);
}

std::string hex(std::uint64_t x) {
  char b[24];
  std::snprintf(b, sizeof b, "%#llx", static_cast<unsigned long long>(x));
  return b;
}

// Why an AddBreakpointMsg cannot be added to `cur` (empty: it can, *out is the entry).
std::string breakpoint_problem(const abi::AddBreakpointMsg& m, const FilterConfig& cur, Breakpoint* out) {
  const std::string who = "breakpoint " + std::to_string(m.id) + ": ";
  if (m.id == 0) return "breakpoint id 0 is not allowed (ids are 1..2^32-1)";
  constexpr std::uint64_t kUpper = 0xffff'8000'0000'0000ULL, kLowerEnd = 0x0000'8000'0000'0000ULL;
  if (m.va == 0) return who + "address 0";
  if (m.va >= kLowerEnd && m.va < kUpper) return who + "address " + hex(m.va) + " is not canonical";
  if (m.action > static_cast<std::uint8_t>(Action::kSync))
    return who + "action " + std::to_string(m.action) + " is not 0 (drop), 1 (async) or 2 (sync)";
  const auto kind = static_cast<abi::BreakpointKind>(m.kind);
  if (kind == abi::BreakpointKind::kKernel) {
    if (m.va < kUpper)
      return who + "kernel breakpoint at lower-half address " + hex(m.va) + " (kernel text is in the upper half)";
    if (m.n_dtbs > abi::kMaxBreakpointDtbs)
      return who + "a kernel breakpoint takes 0 (every address space) to 4 DTBs, not " + std::to_string(m.n_dtbs);
  } else if (kind == abi::BreakpointKind::kKernelTraced) {
    if (m.va < kUpper)
      return who + "kernel breakpoint at lower-half address " + hex(m.va) + " (kernel text is in the upper half)";
    if (m.n_dtbs != 0)
      return who + "a breakpoint scoped to the traced address spaces takes no DTBs (it follows the DTB filter), got " +
             std::to_string(m.n_dtbs);
  } else if (kind == abi::BreakpointKind::kUser) {
    if (m.va >= kUpper) return who + "user breakpoint at upper-half address " + hex(m.va);
    if (m.n_dtbs != 1)
      return who + "a user breakpoint needs exactly one DTB (a user address means nothing outside its address "
                   "space), got " + std::to_string(m.n_dtbs);
  } else {
    return who + "kind " + std::to_string(m.kind) + " is not 1 (kernel), 2 (user) or 3 (kernel, traced address spaces)";
  }
  for (std::uint32_t i = 0; i < abi::kMaxBreakpointDtbs; ++i) {
    if (i >= m.n_dtbs && m.dtbs[i] != 0) return who + "DTB entries past n_dtbs must be zero";
    if (i < m.n_dtbs && (m.dtbs[i] == 0 || (m.dtbs[i] & ~abi::kDtbMask) != 0))
      return who + "DTB " + hex(m.dtbs[i]) + " is not a page-table base (low 13 bits and bit 63 must be 0)";
  }
  Breakpoint b;
  b.va = m.va;
  b.id = m.id;
  b.kind = kind;
  b.action = static_cast<Action>(m.action);
  b.n_dtbs = m.n_dtbs;
  std::memcpy(b.dtbs, m.dtbs, sizeof b.dtbs);
  for (std::uint32_t i = 0; i < cur.n_bps; ++i) {
    const Breakpoint& o = cur.bps[i];
    if (o.id == m.id) return who + "id already in use (at " + hex(o.va) + ")";
    if (o.va == b.va && o.kind == b.kind && o.n_dtbs == b.n_dtbs && std::memcmp(o.dtbs, b.dtbs, sizeof b.dtbs) == 0)
      return who + "duplicate of breakpoint " + std::to_string(o.id) + " (same address and scope)";
  }
  if (cur.n_bps >= abi::kMaxBreakpoints)
    return who + "the table is full (" + std::to_string(abi::kMaxBreakpoints) + " breakpoints; remove one first)";
  *out = b;
  return {};
}

bool on_off(std::string_view v, bool* out) {
  if (v != "on" && v != "off") return false;
  *out = v == "on";
  return true;
}

}  // namespace

const char* options_usage() {
  return "arguments (key=value, comma-separated after the plugin path):\n"
         "  shm=PATH            event rings file to create (required, must not exist)\n"
         "  ctl=PATH            control socket to create (optional)\n"
         "  ring_kib=N          ring size per vCPU in KiB, power of two, 64..262144 (default 4096)\n"
         "  entry=auto|0xVA     64-bit syscall entry point (default auto: first kernel insn after a 64-bit syscall;\n"
         "                      every other door - int $0x80, sysenter, compat syscall - is detected the same way)\n"
         "  bp=0xVA             kernel breakpoint, every address space, action bp_action= (repeatable, up to\n"
         "                      64; ids 0x80000000, 0x80000001, ...; more are added at run time over ctl=)\n"
         "  dtb=0xDTB           initial DTB set member (repeatable, up to 64; default: all DTBs pass)\n"
         "  syscalls=all|N:N:.. x86-64 syscall numbers that pass (default all)\n"
         "  syscalls32=all|N:.. i386 syscall numbers that pass (default all)\n"
         "  cr3_action=ACT entry_action=ACT exit_action=ACT bp_action=ACT\n"
         "                      ACT is drop|async|sync per event class (default drop)\n"
         "  cr3_unfiltered=on|off  forward every CR3 write whatever the DTB set (ablation; default off)\n"
         "  snaplen=N           bytes copied per string/buffer, 0..65536 (default 256)\n"
         "  sync_wait=spin|block|adaptive, sync_spin_us=N (0..100000), sync_timeout_ms=N (1..60000)\n"
         "  count=on|off        only run the independent inline counters (benchmarks)\n"
         "  icount=on|off       count guest instructions per vCPU, stamped on every event (default off)\n"
         "  selftime=on|off     time every trap callback into the ring header (benchmarks)\n"
         "  detect=window|everywhere  where a new door's entry point is looked for: the 2 MiB of kernel\n"
         "                      entry text around the 64-bit one (default), or every kernel block (slower)\n"
         "  countchecks=on|off  count the conditional checks and kernel blocks executed (benchmarks)\n";
}

bool parse_options(int argc, const char* const* argv, Options* out, std::string* why) {
  Options o;
  for (int i = 0; i < argc; ++i) {
    const std::string_view a = argv[i] ? argv[i] : "";
    const auto eq = a.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      set_why(why, "argument '" + std::string(a) + "' is not key=value");
      return false;
    }
    const std::string_view k = a.substr(0, eq), v = a.substr(eq + 1);
    std::uint64_t n = 0;
    auto bad = [&](const char* what) {
      set_why(why, "argument '" + std::string(a) + "': " + what);
      return false;
    };
    if (k == "shm" || k == "ctl") {
      if (v.empty() || v.size() > 107 || v[0] != '/') return bad("needs an absolute path of at most 107 bytes");
      (k == "shm" ? o.shm_path : o.ctl_path) = std::string(v);
    } else if (k == "ring_kib") {
      if (!parse_u64(v, &n) || n < abi::kMinRingBytes / 1024 || n > abi::kMaxRingBytes / 1024 || (n & (n - 1)) != 0)
        return bad("needs a power of two between 64 and 262144");
      o.ring_bytes = static_cast<std::uint32_t>(n * 1024);
    } else if (k == "entry") {
      if (v == "auto") o.entry_va = 0;
      else if (!parse_u64(v, &n) || n < 0xffff'8000'0000'0000ULL) return bad("needs 'auto' or a kernel virtual address");
      else o.entry_va = n;
    } else if (k == "bp") {
      if (!parse_u64(v, &n) || n < 0xffff'8000'0000'0000ULL) return bad("needs a kernel virtual address");
      if (o.initial.n_bps >= abi::kMaxBreakpoints) return bad("too many breakpoints (at most 64)");
      Breakpoint& b = o.initial.bps[o.initial.n_bps];
      b.va = n;
      b.id = abi::kInitialBreakpointId + o.initial.n_bps++;
      b.kind = abi::BreakpointKind::kKernel;
    } else if (k == "dtb") {
      if (!parse_u64(v, &n) || n == 0 || (n & ~abi::kDtbMask) != 0) return bad("needs a page-table base (CR3 without PCID/bit 12/bit 63)");
      if (o.initial.n_dtbs >= abi::kMaxDtbs) return bad("too many DTBs (at most 64)");
      o.initial.dtb_mode = abi::DtbMode::kSet;
      o.initial.dtbs[o.initial.n_dtbs++] = n;
    } else if (k == "syscalls") {
      if (!parse_syscalls(v, &o.initial, 0)) return bad("needs 'all' or syscall numbers 0..511 separated by ':'");
    } else if (k == "syscalls32") {
      if (!parse_syscalls(v, &o.initial, 1)) return bad("needs 'all' or i386 syscall numbers 0..511 separated by ':'");
    } else if (k == "cr3_action" || k == "entry_action" || k == "exit_action" || k == "bp_action") {
      Action act{};
      if (!parse_action(v, &act)) return bad("needs drop, async or sync");
      const EventClass c = k == "cr3_action" ? EventClass::kCr3 : k == "entry_action" ? EventClass::kSyscallEntry
                           : k == "exit_action" ? EventClass::kSyscallExit : EventClass::kBreakpoint;
      o.initial.actions[static_cast<std::size_t>(c)] = act;
    } else if (k == "cr3_unfiltered") {
      if (!on_off(v, &o.initial.cr3_unfiltered)) return bad("needs on or off");
    } else if (k == "snaplen") {
      if (!parse_u64(v, &n) || n > abi::kMaxSnapLen) return bad("needs 0..65536");
      o.initial.snap_len = static_cast<std::uint32_t>(n);
    } else if (k == "sync_wait") {
      if (v == "spin") o.sync_wait = abi::WaitMode::kSpin;
      else if (v == "block") o.sync_wait = abi::WaitMode::kBlock;
      else if (v == "adaptive") o.sync_wait = abi::WaitMode::kAdaptive;
      else return bad("needs spin, block or adaptive");
    } else if (k == "sync_spin_us") {
      if (!parse_u64(v, &n) || n > 100'000) return bad("needs 0..100000");
      o.sync_spin_ns = n * 1000;
    } else if (k == "sync_timeout_ms") {
      if (!parse_u64(v, &n) || n < 1 || n > 60'000) return bad("needs 1..60000");
      o.sync_timeout_ns = n * 1'000'000;
    } else if (k == "icount") {
      if (!on_off(v, &o.icount)) return bad("needs on or off");
    } else if (k == "selftime") {
      if (!on_off(v, &o.selftime)) return bad("needs on or off");
    } else if (k == "count") {
      if (!on_off(v, &o.count_only)) return bad("needs on or off");
    } else if (k == "countchecks") {
      if (!on_off(v, &o.count_checks)) return bad("needs on or off");
    } else if (k == "detect") {
      if (v == "window") o.detect_everywhere = false;
      else if (v == "everywhere") o.detect_everywhere = true;
      else return bad("needs window or everywhere");
    } else {
      return bad("unknown key");
    }
  }
  for (std::uint32_t i = 0; i < o.initial.n_bps; ++i)   // bp_action= may come after the bp= arguments
    o.initial.bps[i].action = o.initial.action(EventClass::kBreakpoint);
  if (o.shm_path.empty() && !o.count_only) {
    set_why(why, "missing shm=PATH (the event rings file to create)");
    return false;
  }
  if (const std::string p = snap_len_problem(o.initial.snap_len, o.ring_bytes / 4); !p.empty()) {
    set_why(why, "snaplen: " + p);
    return false;
  }
  *out = std::move(o);
  return true;
}

std::string snap_len_problem(std::uint32_t snap, std::uint32_t max_record) {
  if (abi::max_event_bytes(snap) <= max_record) return {};
  return "snap length " + std::to_string(snap) + " needs records of " + std::to_string(abi::max_event_bytes(snap)) +
         " bytes; these rings take at most " + std::to_string(max_record) + " (use a larger ring)";
}

// Why a SetArgRulesMsg is refused (empty: accepted).
std::string arg_rules_problem(const abi::SetArgRulesMsg& m) {
  if (m.reserved != 0 || m.count > abi::kMaxArgRules)
    return "argument rules: count must be 0.." + std::to_string(abi::kMaxArgRules) + ", reserved 0";
  for (std::uint32_t i = 0; i < abi::kMaxArgRules; ++i) {
    const abi::ArgRule& r = m.rules[i];
    if (i >= m.count) {
      if (r.nr != 0 || r.abi != 0 || r.arg != 0 || r.reserved != 0 || r.mask != 0)
        return "argument rules: rule " + std::to_string(i) + " is past the count and must be all 0";
      continue;
    }
    if (r.nr >= abi::kSyscallBits || r.abi > 1 || r.arg > 5 || r.reserved != 0)
      return "argument rule " + std::to_string(i) + ": syscall number < " + std::to_string(abi::kSyscallBits) +
             ", abi 0 (x86-64) or 1 (i386), argument 0-5, reserved 0";
    for (std::uint32_t j = 0; j < i; ++j)
      if (m.rules[j].nr == r.nr && m.rules[j].abi == r.abi)
        return "argument rules " + std::to_string(j) + " and " + std::to_string(i) + " are for the same call";
  }
  return {};
}

abi::CtlStatus apply_control(const void* msg, std::size_t len, const FilterConfig& cur, FilterConfig* next,
                             abi::CtlType* type, std::string* why, std::uint32_t max_record) {
  using abi::CtlStatus;
  *type = abi::CtlType{};
  if (len < sizeof(abi::CtlHeader)) {
    set_why(why, "message shorter than its header");
    return CtlStatus::kBadSize;
  }
  abi::CtlHeader h;
  std::memcpy(&h, msg, sizeof h);
  if (h.magic != abi::kCtlMagic) {
    set_why(why, "bad magic");
    return CtlStatus::kBadMagic;
  }
  if (h.version != abi::kAbiVersion) {
    set_why(why, "ABI version " + std::to_string(h.version) + " not supported (monitor speaks " +
                     std::to_string(abi::kAbiVersion) + ")");
    return CtlStatus::kBadVersion;
  }
  *type = static_cast<abi::CtlType>(h.type);
  std::size_t want = 0;
  switch (*type) {
    case abi::CtlType::kAttach: want = sizeof(abi::AttachMsg); break;
    case abi::CtlType::kSetDtbs:
    case abi::CtlType::kSetReadDataDtbs: want = sizeof(abi::SetDtbsMsg); break;
    case abi::CtlType::kSetSyscalls:
    case abi::CtlType::kSetSyncSyscalls: want = sizeof(abi::SetSyscallsMsg); break;
    case abi::CtlType::kSetIdentity: want = sizeof(abi::SetIdentityMsg); break;
    case abi::CtlType::kSetActions: want = sizeof(abi::SetActionsMsg); break;
    case abi::CtlType::kSetSnapLen: want = sizeof(abi::SetSnapLenMsg); break;
    case abi::CtlType::kAddBreakpoint: want = sizeof(abi::AddBreakpointMsg); break;
    case abi::CtlType::kRemoveBreakpoint: want = sizeof(abi::RemoveBreakpointMsg); break;
    case abi::CtlType::kSetArgRules: want = sizeof(abi::SetArgRulesMsg); break;
    case abi::CtlType::kDetach:
    case abi::CtlType::kGetStats: want = sizeof(abi::CtlHeader); break;
    default:
      set_why(why, "unknown message type " + std::to_string(h.type));
      *type = abi::CtlType{};
      return CtlStatus::kBadType;
  }
  if (h.size != len || len != want) {
    set_why(why, "message of type " + std::to_string(h.type) + " must be " + std::to_string(want) +
                     " bytes (header says " + std::to_string(h.size) + ", got " + std::to_string(len) + ")");
    return CtlStatus::kBadSize;
  }
  FilterConfig n = cur;
  switch (*type) {
    case abi::CtlType::kSetDtbs:
    case abi::CtlType::kSetReadDataDtbs: {
      abi::SetDtbsMsg m;
      std::memcpy(&m, msg, sizeof m);
      if (m.mode > static_cast<std::uint32_t>(abi::DtbMode::kSet)) {
        set_why(why, "DTB mode must be 0 (all) or 1 (set)");
        return CtlStatus::kBadValue;
      }
      if (m.count > abi::kMaxDtbs || (m.mode == 0 && m.count != 0)) {
        set_why(why, "DTB count must be 0..64 (0 with mode all)");
        return CtlStatus::kBadValue;
      }
      for (std::uint32_t i = 0; i < abi::kMaxDtbs; ++i) {
        if (i >= m.count && m.dtbs[i] != 0) {
          set_why(why, "DTB entries past count must be zero");
          return CtlStatus::kBadValue;
        }
        if (i < m.count && (m.dtbs[i] == 0 || (m.dtbs[i] & ~abi::kDtbMask) != 0)) {
          set_why(why, "DTB " + std::to_string(i) + " is not a page-table base (low 13 bits and bit 63 must be 0)");
          return CtlStatus::kBadValue;
        }
      }
      if (*type == abi::CtlType::kSetReadDataDtbs) {
        n.read_data_mode = static_cast<abi::DtbMode>(m.mode);
        n.n_read_data_dtbs = m.count;
        std::memcpy(n.read_data_dtbs, m.dtbs, sizeof n.read_data_dtbs);
        break;
      }
      n.dtb_mode = static_cast<abi::DtbMode>(m.mode);
      n.n_dtbs = m.count;
      std::memcpy(n.dtbs, m.dtbs, sizeof n.dtbs);
      break;
    }
    case abi::CtlType::kSetSyscalls:
    case abi::CtlType::kSetSyncSyscalls: {
      abi::SetSyscallsMsg m;
      std::memcpy(&m, msg, sizeof m);
      bool any = false;
      for (auto w : m.bitmap) any |= w != 0;
      if (m.all > 1 || m.abi > 1 || (m.all == 1 && any)) {
        set_why(why, "syscall set: all must be 0 or 1, bitmap empty when all=1, abi 0 (x86-64) or 1 (i386)");
        return CtlStatus::kBadValue;
      }
      if (*type == abi::CtlType::kSetSyncSyscalls) {
        if (m.all != 0) {
          set_why(why, "sync syscall set: all must be 0 (list the numbers)");
          return CtlStatus::kBadValue;
        }
        std::memcpy(n.sync_bitmap[m.abi], m.bitmap, sizeof n.sync_bitmap[m.abi]);
        break;
      }
      n.all_syscalls[m.abi] = m.all == 1;
      std::memcpy(n.syscall_bitmap[m.abi], m.bitmap, sizeof n.syscall_bitmap[m.abi]);
      break;
    }
    case abi::CtlType::kSetIdentity: {
      abi::SetIdentityMsg m;
      std::memcpy(&m, msg, sizeof m);
      if (m.current_task_off >= abi::kMaxPerCpuOffset || m.pid_off >= abi::kMaxTaskOffset ||
          m.tgid_off >= abi::kMaxTaskOffset || m.pid_off % 4 != 0 || m.tgid_off % 4 != 0 || m.current_task_off % 8 != 0) {
        set_why(why, "identity offsets out of range or misaligned");
        return CtlStatus::kBadValue;
      }
      n.current_task_off = m.current_task_off;
      n.pid_off = m.pid_off;
      n.tgid_off = m.tgid_off;
      break;
    }
    case abi::CtlType::kSetActions: {
      abi::SetActionsMsg m;
      std::memcpy(&m, msg, sizeof m);
      for (std::size_t i = 0; i < static_cast<std::size_t>(EventClass::kCount); ++i) {
        if (m.actions[i] > static_cast<std::uint8_t>(Action::kSync)) {
          set_why(why, "action " + std::to_string(m.actions[i]) + " for class " + std::to_string(i) +
                           " is not 0 (drop), 1 (async) or 2 (sync)");
          return CtlStatus::kBadValue;
        }
      }
      if ((m.flags & ~(abi::kActionCr3Unfiltered | abi::kActionCr3LeavingOnly)) != 0) {
        set_why(why, "unknown action flags");
        return CtlStatus::kBadValue;
      }
      for (std::size_t i = 0; i < static_cast<std::size_t>(EventClass::kCount); ++i)
        n.actions[i] = static_cast<Action>(m.actions[i]);
      n.cr3_unfiltered = (m.flags & abi::kActionCr3Unfiltered) != 0;
      n.cr3_leaving_only = (m.flags & abi::kActionCr3LeavingOnly) != 0;
      break;
    }
    case abi::CtlType::kSetSnapLen: {
      abi::SetSnapLenMsg m;
      std::memcpy(&m, msg, sizeof m);
      if (m.snap_len > abi::kMaxSnapLen || m.reserved != 0) {
        set_why(why, "snap length must be 0..65536");
        return CtlStatus::kBadValue;
      }
      if (const std::string p = snap_len_problem(m.snap_len, max_record); !p.empty()) {
        set_why(why, p);
        return CtlStatus::kBadValue;
      }
      n.snap_len = m.snap_len;
      break;
    }
    case abi::CtlType::kAddBreakpoint: {
      abi::AddBreakpointMsg m;
      std::memcpy(&m, msg, sizeof m);
      Breakpoint b;
      if (const std::string p = breakpoint_problem(m, cur, &b); !p.empty()) {
        set_why(why, p);
        return CtlStatus::kBadValue;
      }
      n.bps[n.n_bps++] = b;
      break;
    }
    case abi::CtlType::kRemoveBreakpoint: {
      abi::RemoveBreakpointMsg m;
      std::memcpy(&m, msg, sizeof m);
      std::uint32_t at = n.n_bps;
      for (std::uint32_t i = 0; i < n.n_bps; ++i)
        if (n.bps[i].id == m.id) at = i;
      if (m.reserved != 0 || at == n.n_bps) {
        set_why(why, m.reserved != 0 ? "remove breakpoint: reserved field must be 0"
                                     : "no breakpoint with id " + std::to_string(m.id));
        return CtlStatus::kBadValue;
      }
      for (std::uint32_t i = at; i + 1 < n.n_bps; ++i) n.bps[i] = n.bps[i + 1];
      n.bps[--n.n_bps] = Breakpoint{};
      break;
    }
    case abi::CtlType::kSetArgRules: {
      abi::SetArgRulesMsg m;
      std::memcpy(&m, msg, sizeof m);
      if (const std::string p = arg_rules_problem(m); !p.empty()) {
        set_why(why, p);
        return CtlStatus::kBadValue;
      }
      n.n_arg_rules = m.count;
      std::memcpy(n.arg_rules, m.rules, sizeof n.arg_rules);
      break;
    }
    default:
      *next = cur;
      return CtlStatus::kOk;
  }
  n.generation = cur.generation + 1;
  *next = n;
  return CtlStatus::kOk;
}

}  // namespace hvtrace::monitor
