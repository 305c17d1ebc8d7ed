// The compiled-in tables (table_*.inc, one row per call), their indexes, errno and signal names,
// and strace's -e trace= / -e status= set syntax.
#include "syscalls/syscalls.hpp"

#include <algorithm>
#include <cstring>
#include <mutex>

namespace hvtrace::syscalls {
namespace {

using D = Decoder;

constexpr Table::Entry kX86_64[] = {
#include "syscalls/table_x86_64.inc"
};
constexpr Table::Entry kI386[] = {
#include "syscalls/table_i386.inc"
};

struct ErrnoRow {
  int nr;
  std::string_view name;
  std::string_view message;
};
constexpr ErrnoRow kErrnos[] = {
#include "syscalls/errno_table.inc"
};

constexpr std::string_view kSignals[] = {
    "0",       "SIGHUP",  "SIGINT",    "SIGQUIT", "SIGILL",    "SIGTRAP", "SIGABRT",   "SIGBUS",
    "SIGFPE",  "SIGKILL", "SIGUSR1",   "SIGSEGV", "SIGUSR2",   "SIGPIPE", "SIGALRM",   "SIGTERM",
    "SIGSTKFLT", "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP",   "SIGTTIN", "SIGTTOU",   "SIGURG",
    "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH",  "SIGIO",   "SIGPWR",    "SIGSYS",
};
constexpr int kSigRtMin = 32;
constexpr int kSigMax = 64;   // _NSIG - 1

constexpr std::uint64_t kX32Base = 0x40000000;

}  // namespace

Table::Table(abi::SyscallAbi abi, std::span<const Entry> entries, std::uint64_t base)
    : abi_(abi), entries_(entries), base_(base) {
  for (const auto& e : entries_) {
    if (e.nr >= kMaxNr) continue;
    index_[e.nr] = &e.info;
    size_ = std::max<std::size_t>(size_, e.nr + 1U);
  }
}

const Table& Table::get(abi::SyscallAbi abi) {
  static const Table x86_64(abi::SyscallAbi::kX86_64, kX86_64, 0);
  static const Table i386(abi::SyscallAbi::kI386, kI386, 0);
  static const Table x32(abi::SyscallAbi::kX32, kX86_64, kX32Base);
  switch (abi) {
    case abi::SyscallAbi::kI386: return i386;
    case abi::SyscallAbi::kX32: return x32;
    default: return x86_64;
  }
}

const SyscallInfo* Table::by_nr(std::uint64_t nr) const {
  if (nr < base_ || nr - base_ >= kMaxNr) return nullptr;
  return index_[nr - base_];
}

std::optional<unsigned> Table::by_name(std::string_view name) const {
  for (const auto& e : entries_)
    if (e.info.name == name) return static_cast<unsigned>(e.nr + base_);
  return std::nullopt;
}

bool TraceSet::contains(abi::SyscallAbi abi, std::uint64_t nr) const {
  const Table& t = Table::get(abi);
  if (nr < t.nr_base() || nr - t.nr_base() >= Table::kMaxNr) return false;
  return nrs[abi == abi::SyscallAbi::kI386 ? 1 : 0].test(nr - t.nr_base());
}

namespace {

std::optional<std::uint32_t> class_by_name(std::string_view w) {
  struct C {
    std::string_view name;
    std::uint32_t bits;
  };
  static constexpr C kClasses[] = {
      {"%file", kFile},       {"file", kFile},       {"%process", kProcess}, {"process", kProcess},
      {"%network", kNetwork}, {"%net", kNetwork},    {"network", kNetwork},  {"%desc", kDesc},
      {"desc", kDesc},        {"%memory", kMemory},  {"memory", kMemory},    {"%signal", kSignal},
      {"signal", kSignal},    {"%ipc", kIpc},        {"ipc", kIpc},
  };
  for (const auto& c : kClasses)
    if (c.name == w) return c.bits;
  return std::nullopt;
}

// Split on commas; empty words are skipped as strace skips them.
template <typename Fn>
Result<void> for_each_word(std::string_view spec, Fn&& fn) {
  while (!spec.empty()) {
    const auto comma = spec.find(',');
    const std::string_view w = spec.substr(0, comma);
    spec = comma == std::string_view::npos ? std::string_view{} : spec.substr(comma + 1);
    if (w.empty()) continue;
    HVTRACE_TRY(fn(w));
  }
  return {};
}

}  // namespace

Result<TraceSet> parse_trace_set(std::string_view spec) {
  bool negate = false;
  if (!spec.empty() && spec.front() == '!') {
    negate = true;
    spec.remove_prefix(1);
  }
  TraceSet set;
  constexpr abi::SyscallAbi kAbis[2] = {abi::SyscallAbi::kX86_64, abi::SyscallAbi::kI386};
  auto r = for_each_word(spec, [&](std::string_view w) -> Result<void> {
    if (w == "all") {
      for (int a = 0; a < 2; ++a)
        for (const auto& e : Table::get(kAbis[a]).entries()) set.nrs[static_cast<std::size_t>(a)].set(e.nr);
      return {};
    }
    if (w == "none") return {};
    if (auto cls = class_by_name(w)) {
      for (int a = 0; a < 2; ++a)
        for (const auto& e : Table::get(kAbis[a]).entries())
          if ((e.info.classes & *cls) != 0) set.nrs[static_cast<std::size_t>(a)].set(e.nr);
      return {};
    }
    const bool optional = w.front() == '?';
    const std::string_view name = optional ? w.substr(1) : w;
    bool found = false;
    for (int a = 0; a < 2; ++a) {
      if (auto nr = Table::get(kAbis[a]).by_name(name)) {
        set.nrs[static_cast<std::size_t>(a)].set(*nr);
        found = true;
      }
    }
    if (!found && !optional) return make_error("unknown syscall or class '{}' in -e trace=", w);
    return {};
  });
  if (!r) return Error{r.error().message};
  if (negate)
    for (int a = 0; a < 2; ++a) {
      auto& bits = set.nrs[static_cast<std::size_t>(a)];
      bits.flip();
    }
  return set;
}

Result<StatusSet> parse_status_set(std::string_view spec) {
  bool negate = false;
  if (!spec.empty() && spec.front() == '!') {
    negate = true;
    spec.remove_prefix(1);
  }
  StatusSet s{false, false, false, false, false};
  auto r = for_each_word(spec, [&](std::string_view w) -> Result<void> {
    if (w == "all") s = StatusSet{};
    else if (w == "none") {}
    else if (w == "successful") s.successful = true;
    else if (w == "failed") s.failed = true;
    else if (w == "unfinished") s.unfinished = true;
    else if (w == "unavailable") s.unavailable = true;
    else if (w == "detached") s.detached = true;
    else return make_error("unknown status '{}' in -e status=", w);
    return {};
  });
  if (!r) return Error{r.error().message};
  if (negate) {
    s.successful = !s.successful;
    s.failed = !s.failed;
    s.unfinished = !s.unfinished;
    s.unavailable = !s.unavailable;
    s.detached = !s.detached;
  }
  return s;
}

std::optional<std::string_view> errno_name(int err) {
  for (const auto& e : kErrnos)
    if (e.nr == err) return e.name;
  return std::nullopt;
}

std::optional<std::string_view> errno_message(int err) {
  for (const auto& e : kErrnos)
    if (e.nr == err) return e.message;
  return std::nullopt;
}

std::optional<std::string_view> signal_name(int sig) {
  if (sig <= 0 || sig > kSigMax) return std::nullopt;
  if (sig < kSigRtMin) return kSignals[sig];
  static const std::array<std::string, kSigMax - kSigRtMin + 1> rt = [] {
    std::array<std::string, kSigMax - kSigRtMin + 1> a;
    a[0] = "SIGRTMIN";
    for (std::size_t i = 1; i < a.size(); ++i) a[i] = fmt::format("SIGRT_{}", i);
    return a;
  }();
  return rt[static_cast<std::size_t>(sig - kSigRtMin)];
}

std::string signal_text(int sig) {
  if (auto n = signal_name(sig)) return std::string(*n);
  return std::to_string(sig);
}

const events::Capture* find_capture(const std::vector<events::Capture>& caps, unsigned arg, abi::CaptureKind kind) {
  for (const auto& c : caps)
    if (c.arg == arg && c.kind == kind) return &c;
  return nullptr;
}

WaitStatus decode_wait_status(std::uint32_t s) {
  WaitStatus w;
  if (s == 0xffff) {
    w.kind = WaitStatus::Kind::kContinued;
  } else if ((s & 0xff) == 0x7f) {
    w.kind = WaitStatus::Kind::kStopped;
    w.value = static_cast<int>((s >> 8) & 0xff);
    w.high = s >> 16;
  } else if ((s & 0x7f) == 0) {
    w.kind = WaitStatus::Kind::kExited;
    w.value = static_cast<int>((s >> 8) & 0xff);
  } else {
    w.kind = WaitStatus::Kind::kSignaled;
    w.value = static_cast<int>(s & 0x7f);
    w.core = (s & 0x80) != 0;
  }
  return w;
}

Reaped reaped_child(const std::vector<events::Capture>& exit_caps, std::uint64_t options) {
  Reaped r;
  if (const auto* c = find_capture(exit_caps, 1, abi::CaptureKind::kBuffer);
      c != nullptr && c->data.size() == 4 && (c->flags & abi::kCaptureFault) == 0) {
    std::uint32_t v = 0;
    std::memcpy(&v, c->data.data(), sizeof v);
    r.status = decode_wait_status(v);
  }
  constexpr std::uint64_t kWuntraced = 2, kWcontinued = 8;
  r.dead = r.status ? r.status->dead() : (options & (kWuntraced | kWcontinued)) == 0;
  return r;
}

std::string_view kernel_entry_name(abi::SyscallAbi abi, std::uint64_t nr, std::string_view strace_name) {
  (void)nr;
  if (abi == abi::SyscallAbi::kI386) {
    // syscall_32.tbl's compat entry column (__ia32_sys_<x> / __ia32_compat_sys_<x>) where <x> is
    // not the call's name: 16-bit uid calls, time32 variants, x86-specific compat wrappers (named
    // ia32_* up to 6.x, x86_* later: both given, separated by '|').
    static constexpr std::pair<std::string_view, std::string_view> kI386Entries[] = {
      {"time", "time32"},
      {"lchown", "lchown16"},
      {"oldstat", "stat"},
      {"umount", "oldumount"},
      {"setuid", "setuid16"},
      {"getuid", "getuid16"},
      {"stime", "stime32"},
      {"oldfstat", "fstat"},
      {"utime", "utime32"},
      {"setgid", "setgid16"},
      {"getgid", "getgid16"},
      {"geteuid", "geteuid16"},
      {"getegid", "getegid16"},
      {"umount2", "umount"},
      {"fcntl", "fcntl64"},
      {"oldolduname", "olduname"},
      {"setreuid", "setreuid16"},
      {"setregid", "setregid16"},
      {"getrlimit", "old_getrlimit"},
      {"getgroups", "getgroups16"},
      {"setgroups", "setgroups16"},
      {"select", "old_select"},
      {"oldlstat", "lstat"},
      {"readdir", "old_readdir"},
      {"mmap", "x86_mmap|ia32_mmap"},
      {"fchown", "fchown16"},
      {"stat", "newstat"},
      {"lstat", "newlstat"},
      {"fstat", "newfstat"},
      {"olduname", "uname"},
      {"clone", "x86_clone|ia32_clone"},
      {"uname", "newuname"},
      {"adjtimex", "adjtimex_time32"},
      {"quotactl", "quotactl32|quotactl"},
      {"setfsuid", "setfsuid16"},
      {"setfsgid", "setfsgid16"},
      {"_llseek", "llseek"},
      {"_newselect", "select"},
      {"_sysctl", "sysctl"},
      {"sched_rr_get_interval", "sched_rr_get_interval_time32"},
      {"nanosleep", "nanosleep_time32"},
      {"setresuid", "setresuid16"},
      {"getresuid", "getresuid16"},
      {"setresgid", "setresgid16"},
      {"getresgid", "getresgid16"},
      {"rt_sigtimedwait", "rt_sigtimedwait_time32"},
      {"pread64", "x86_pread|ia32_pread64"},
      {"pwrite64", "x86_pwrite|ia32_pwrite64"},
      {"chown", "chown16"},
      {"ugetrlimit", "getrlimit"},
      {"mmap2", "mmap_pgoff"},
      {"truncate64", "x86_truncate64|ia32_truncate64"},
      {"ftruncate64", "x86_ftruncate64|ia32_ftruncate64"},
      {"stat64", "x86_stat64|ia32_stat64"},
      {"lstat64", "x86_lstat64|ia32_lstat64"},
      {"fstat64", "x86_fstat64|ia32_fstat64"},
      {"lchown32", "lchown"},
      {"getuid32", "getuid"},
      {"getgid32", "getgid"},
      {"geteuid32", "geteuid"},
      {"getegid32", "getegid"},
      {"setreuid32", "setreuid"},
      {"setregid32", "setregid"},
      {"getgroups32", "getgroups"},
      {"setgroups32", "setgroups"},
      {"fchown32", "fchown"},
      {"setresuid32", "setresuid"},
      {"getresuid32", "getresuid"},
      {"setresgid32", "setresgid"},
      {"getresgid32", "getresgid"},
      {"chown32", "chown"},
      {"setuid32", "setuid"},
      {"setgid32", "setgid"},
      {"setfsuid32", "setfsuid"},
      {"setfsgid32", "setfsgid"},
      {"readahead", "x86_readahead|ia32_readahead"},
      {"futex", "futex_time32"},
      {"io_getevents", "io_getevents_time32"},
      {"fadvise64", "x86_fadvise64|ia32_fadvise64"},
      {"timer_settime", "timer_settime32"},
      {"timer_gettime", "timer_gettime32"},
      {"clock_settime", "clock_settime32"},
      {"clock_gettime", "clock_gettime32"},
      {"clock_getres", "clock_getres_time32"},
      {"clock_nanosleep", "clock_nanosleep_time32"},
      {"utimes", "utimes_time32"},
      {"fadvise64_64", "x86_fadvise64_64|ia32_fadvise64_64"},
      {"mq_timedsend", "mq_timedsend_time32"},
      {"mq_timedreceive", "mq_timedreceive_time32"},
      {"futimesat", "futimesat_time32"},
      {"fstatat64", "x86_fstatat|ia32_fstatat64"},
      {"pselect6", "pselect6_time32"},
      {"ppoll", "ppoll_time32"},
      {"sync_file_range", "x86_sync_file_range|ia32_sync_file_range"},
      {"utimensat", "utimensat_time32"},
      {"fallocate", "x86_fallocate|ia32_fallocate"},
      {"timerfd_settime", "timerfd_settime32"},
      {"timerfd_gettime", "timerfd_gettime32"},
      {"recvmmsg", "recvmmsg_time32"},
      {"clock_adjtime", "clock_adjtime32"},
      {"clock_gettime64", "clock_gettime"},
      {"clock_settime64", "clock_settime"},
      {"clock_adjtime64", "clock_adjtime"},
      {"clock_getres_time64", "clock_getres"},
      {"clock_nanosleep_time64", "clock_nanosleep"},
      {"timer_gettime64", "timer_gettime"},
      {"timer_settime64", "timer_settime"},
      {"timerfd_gettime64", "timerfd_gettime"},
      {"timerfd_settime64", "timerfd_settime"},
      {"utimensat_time64", "utimensat"},
      {"io_pgetevents_time64", "io_pgetevents"},
      {"mq_timedsend_time64", "mq_timedsend"},
      {"mq_timedreceive_time64", "mq_timedreceive"},
      {"semtimedop_time64", "semtimedop"},
      {"futex_time64", "futex"},
      {"sched_rr_get_interval_time64", "sched_rr_get_interval"},
    };
    for (const auto& [user, kernel] : kI386Entries)
      if (strace_name == user) return kernel;
    return strace_name;
  }
  if (abi != abi::SyscallAbi::kX86_64 && abi != abi::SyscallAbi::kX32) return strace_name;
  // syscall_64.tbl names its entry points after the kernel functions; strace after the call.
  static constexpr std::pair<std::string_view, std::string_view> kAliases[] = {
      {"stat", "newstat"}, {"fstat", "newfstat"}, {"lstat", "newlstat"}, {"uname", "newuname"}, {"umount2", "umount"},
      {"sendfile", "sendfile64"},
  };
  for (const auto& [user, kernel] : kAliases)
    if (strace_name == user) return kernel;
  return strace_name;
}

}  // namespace hvtrace::syscalls
