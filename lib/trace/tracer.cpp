#include "trace/tracer.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <chrono>
#include <ctime>

namespace hvtrace::trace {
namespace {

using abi::SyscallAbi;

constexpr std::uint64_t kX64Clone = 56, kX64Fork = 57, kX64Vfork = 58, kX64Clone3 = 435, kX64Execve = 59,
                        kX64Execveat = 322;
constexpr std::uint64_t kI386Fork = 2, kI386Clone = 120, kI386Vfork = 190, kI386Clone3 = 435;
constexpr std::uint64_t kX64Wait4 = 61, kI386Waitpid = 7, kI386Wait4 = 114;

std::uint64_t base_nr(SyscallAbi a, std::uint64_t nr) { return a == SyscallAbi::kX32 ? nr & ~abi::kX32SyscallBit : nr; }

}  // namespace

std::int64_t realtime_offset() {
  timespec rt{}, mono{};
  clock_gettime(CLOCK_REALTIME, &rt);
  clock_gettime(CLOCK_MONOTONIC, &mono);
  return (rt.tv_sec - mono.tv_sec) * 1'000'000'000LL + (rt.tv_nsec - mono.tv_nsec);
}

std::string exec_comm(std::string_view path) {
  const auto slash = path.rfind('/');
  const std::string_view base = slash == std::string_view::npos ? path : path.substr(slash + 1);
  return std::string(base.substr(0, 15));   // TASK_COMM_LEN - 1
}

bool is_clone_family(SyscallAbi a, std::uint64_t nr) {
  nr = base_nr(a, nr);
  if (a == SyscallAbi::kI386) return nr == kI386Fork || nr == kI386Clone || nr == kI386Vfork || nr == kI386Clone3;
  return nr == kX64Clone || nr == kX64Fork || nr == kX64Vfork || nr == kX64Clone3;
}
bool is_execve(SyscallAbi a, std::uint64_t nr) { return abi::is_exec_call(a, nr); }
// The calls that reap a child and return its pid and wait status (waitid returns 0, not the pid).
bool is_reap(SyscallAbi a, std::uint64_t nr) {
  nr = base_nr(a, nr);
  return a == SyscallAbi::kI386 ? nr == kI386Waitpid || nr == kI386Wait4 : nr == kX64Wait4;
}
bool is_exit_group(SyscallAbi a, std::uint64_t nr) { return abi::is_exit_group_call(a, nr); }
bool is_exit(SyscallAbi a, std::uint64_t nr) { return abi::is_exit_call(a, nr); }

namespace {
ProcInfo proc_info(const linux_os::Process& p) {
  return ProcInfo{static_cast<std::uint32_t>(p.tgid.value), p.dtb ? std::optional<std::uint64_t>(p.dtb->value) : std::nullopt, p.comm};
}
}  // namespace

Result<std::optional<ProcInfo>> LiveGuest::pid(std::uint32_t pid) {
  auto p = lx_->find_pid(Pid{static_cast<std::int32_t>(pid)});
  if (!p) return p.error();
  if (!*p) return std::optional<ProcInfo>();
  return std::optional<ProcInfo>(proc_info(**p));
}

Result<std::vector<ProcInfo>> LiveGuest::name(const std::string& comm) {
  auto ps = lx_->find_name(comm);
  if (!ps) return ps.error();
  std::vector<ProcInfo> v;
  for (const auto& p : *ps) v.push_back(proc_info(p));
  return v;
}

std::optional<TaskInfo> LiveGuest::task(std::uint64_t task_addr) {
  auto p = lx_->read_task(GVA{task_addr});
  if (!p) return std::nullopt;
  return TaskInfo{p->dtb ? std::optional<std::uint64_t>(p->dtb->value) : std::nullopt, p->comm,
                  static_cast<std::uint32_t>(p->tgid.value), static_cast<std::uint32_t>(p->ppid.value)};
}

std::optional<std::uint64_t> LiveGuest::symbol(const std::string& name) {
  if (auto s = lx_->kernel().symbol(name)) return s->value;
  // A cached profile keeps only the symbols discovery needs: decode the guest's kallsyms (once).
  if (!all_symbols_) {
    auto all = lx_->kernel().all_symbols();
    all_symbols_.emplace();
    if (all)
      for (const auto& s : *all) all_symbols_->emplace(s.name, s.addr.value);
  }
  if (auto it = all_symbols_->find(name); it != all_symbols_->end()) return it->second;
  return std::nullopt;
}

std::optional<ExecInfo> LiveGuest::exec(unsigned cpu, std::uint64_t bprm) {
  auto base = lx_->per_cpu_base(cpu);
  if (!base) return std::nullopt;
  auto task = lx_->current_task(*base);
  if (!task) return std::nullopt;
  auto dtb = lx_->exec_dtb(GVA{bprm});
  if (!dtb) return std::nullopt;
  return ExecInfo{static_cast<std::uint32_t>(task->tgid.value), task->task.value, task->dtb ? task->dtb->value : 0, dtb->value};
}

bool LiveGuest::can_follow_exec() { return lx_->task_layout().binprm_mm.has_value() && lx_->current_task_offset() != 0; }

IdentityOffsets LiveGuest::identity() {
  const auto& tl = lx_->task_layout();
  return IdentityOffsets{lx_->current_task_offset(), static_cast<std::uint32_t>(tl.pid), static_cast<std::uint32_t>(tl.tgid)};
}

namespace {
Result<void> done_or(Result<std::uint32_t> r) {
  if (!r) return r.error();
  return {};
}
}  // namespace

Result<void> ControlSink::add_breakpoint(const events::BreakpointSpec& b) {
  auto r = done_or(ctl_->add_breakpoint(b));
  if (r && reader_ != nullptr) bp_need_ = reader_->bp_serial();
  return r;
}
bool ControlSink::breakpoints_in_force() { return reader_ == nullptr || reader_->bp_in_force() >= bp_need_; }
Result<void> ControlSink::remove_breakpoint(std::uint32_t id) { return done_or(ctl_->remove_breakpoint(id)); }

Result<void> ControlSink::set_identity(const IdentityOffsets& id) {
  return done_or(ctl_->set_identity(id.current_task, id.pid, id.tgid));
}
Result<void> ControlSink::set_snap_len(std::uint32_t bytes) { return done_or(ctl_->set_snap_len(bytes)); }
Result<void> ControlSink::set_syscalls(const std::optional<std::vector<unsigned>>& nrs, abi::SyscallAbi table) {
  return done_or(ctl_->set_syscalls(nrs, table));
}
Result<void> ControlSink::set_sync_syscalls(const std::vector<unsigned>& nrs, abi::SyscallAbi table) {
  return done_or(ctl_->set_sync_syscalls(nrs, table));
}
Result<void> ControlSink::set_all_dtbs() { return done_or(ctl_->set_all_dtbs()); }
Result<void> ControlSink::set_dtbs(const std::vector<Dtb>& dtbs) { return done_or(ctl_->set_dtbs(dtbs)); }
Result<void> ControlSink::set_read_data_dtbs(const std::optional<std::vector<Dtb>>& dtbs) {
  return done_or(ctl_->set_read_data_dtbs(dtbs));
}
Result<void> ControlSink::set_arg_rules(const std::vector<abi::ArgRule>& rules) { return done_or(ctl_->set_arg_rules(rules)); }
Result<void> ControlSink::set_actions(const events::Actions& a) { return done_or(ctl_->set_actions(a)); }

Tracer::Tracer(GuestQueries& guest, FilterSink& filter, TraceConfig cfg, LineSink out)
    : guest_(&guest), filter_(&filter), cfg_(std::move(cfg)), out_(std::move(out)), realtime_offset_ns_(realtime_offset()) {}

Result<void> Tracer::trace_pid(std::uint32_t pid) {
  auto p = guest_->pid(pid);
  if (!p) return std::move(p).with_context(fmt::format("looking up pid {}", pid)).error();
  if (!*p) return make_error("no process with pid {} in the guest", pid);
  if (!(*p)->dtb) return make_error("pid {} ({}) is a kernel thread: it makes no system calls to trace", pid, (*p)->comm);
  procs_[pid] = Traced{pid, *(*p)->dtb, false, false, reads_data((*p)->comm)};
  return {};
}

bool Tracer::reads_data(const std::string& comm) const {
  return cfg_.read_data_comms.empty() || cfg_.read_data_comms.count(comm) != 0;
}

Result<void> Tracer::trace_comm(const std::string& comm) {
  // Later execs are matched against these names too (a replay's targets come from the recording).
  if (std::find(cfg_.comms.begin(), cfg_.comms.end(), comm) == cfg_.comms.end()) cfg_.comms.push_back(comm);
  auto ps = guest_->name(comm);
  if (!ps) return std::move(ps).with_context(fmt::format("looking up processes named '{}'", comm)).error();
  for (const auto& p : *ps)
    if (p.dtb) procs_[p.tgid] = Traced{p.tgid, *p.dtb, false, false};
  return {};
}

void Tracer::start_at_exec(std::uint32_t pid) {
  auto it = procs_.find(pid);
  if (it != procs_.end()) it->second.waiting_exec = true;
}

namespace {
// A synchronous kernel breakpoint at `va`, in every address space (kKernel) or only in those of the
// DTB filter (kKernelTraced), replacing one with that id left by a tracer that died.
Result<void> set_sync_breakpoint(FilterSink& filter, std::uint32_t id, std::uint64_t va,
                                 abi::BreakpointKind kind = abi::BreakpointKind::kKernel) {
  (void)filter.remove_breakpoint(id);
  events::BreakpointSpec b;
  b.id = id;
  b.va = va;
  b.kind = kind;
  b.action = abi::Action::kSync;
  return filter.add_breakpoint(b);
}
}  // namespace

bool Tracer::wanted(SyscallAbi a, std::uint64_t nr) const { return !cfg_.trace_set || cfg_.trace_set->contains(a, nr); }

// Everything the monitor must deliver beyond the user's set: what following processes needs.
Result<void> Tracer::apply() {
  if (const auto id = guest_->identity(); id.current_task != 0)
    if (auto r = filter_->set_identity(id); !r)
      return std::move(r).with_context("telling the monitor where the current task is").error();
  if (auto r = filter_->set_snap_len(cfg_.snap_len); !r) return std::move(r).with_context("setting the snap length").error();
  // --comm: new processes of the name are found at exec by a kernel breakpoint (below); only a
  // kernel without its symbol makes --comm wide (every process delivered, the name picked here).
  std::optional<std::uint64_t> exec_va;
  if (!cfg_.comms.empty() && !all_ && cfg_.method != 2) exec_va = guest_->symbol(kExecBreakpointSymbol);
  comm_wide_ = !cfg_.comms.empty() && !all_ && cfg_.method != 2 && !exec_va;
  const bool wide = all_ || comm_wide_ || cfg_.method == 2;
  wide_ = wide;
  for (const auto table : {SyscallAbi::kX86_64, SyscallAbi::kI386}) {
    std::optional<std::vector<unsigned>> nrs;
    if (cfg_.trace_set && cfg_.method != 2) {
      nrs.emplace();
      const unsigned t = table == SyscallAbi::kI386 ? 1 : 0;
      for (unsigned nr = 0; nr < syscalls::Table::kMaxNr && nr < abi::kSyscallBits; ++nr)
        if (cfg_.trace_set->nrs[t].test(nr) || is_clone_family(table, nr) || is_execve(table, nr) ||
            is_exit_group(table, nr) || is_exit(table, nr) || is_reap(table, nr))
          nrs->push_back(nr);
    }
    if (auto r = filter_->set_syscalls(nrs, table); !r) return std::move(r).with_context("setting the syscall set").error();
  }
  // -f: a synchronous kernel breakpoint where a new task becomes runnable (wake_up_new_task(p),
  // in the parent's context, before the child can run a single instruction) adds the child's
  // address space to the filter. It fires only in traced address spaces (the parent's), so the
  // rest of the guest forks unpaused. Kernels without the symbol fall back to synchronous clone
  // exits, where a child the scheduler runs first (6.12's EEVDF does) can lose its first calls.
  fork_bp_ = false;
  if (cfg_.follow && !wide)
    if (const auto va = guest_->symbol("wake_up_new_task")) {
      if (auto r = set_sync_breakpoint(*filter_, kForkBreakpointId, *va, abi::BreakpointKind::kKernelTraced); !r)
        return std::move(r).with_context("setting the fork breakpoint").error();
      fork_bp_ = true;
    }
  // Method 5 follows a traced process's exec at begin_new_exec(bprm), in the old address space
  // before the new mm is installed: the new one (bprm->mm) joins the filter while that vCPU waits.
  // One pause per exec of a traced process, instead of a synchronous CR3 event at each switch away
  // from one (an exec's switch looks like any other to the monitor). Methods 3 and 4 keep the
  // paper's CR3 events; so does a kernel whose BTF lacks linux_binprm.mm.
  exec_follow_bp_ = false;
  if (cfg_.method == 5 && !wide && guest_->can_follow_exec())
    if (const auto va = guest_->symbol(kExecFollowSymbol)) {
      if (auto r = set_sync_breakpoint(*filter_, kExecFollowBreakpointId, *va, abi::BreakpointKind::kKernelTraced); !r)
        return std::move(r).with_context("setting the exec breakpoint").error();
      exec_follow_bp_ = true;
    }
  // --comm: setup_new_exec(bprm) runs in the exec'ing task after begin_new_exec installed the new
  // mm (CR3 is already the new page-table root) and set the comm to the executed file's basename,
  // before the new program runs: a process whose new comm matches joins the filter while this
  // vCPU waits, so its first call after the exec passes (see on_exec_breakpoint).
  if (exec_va) {
    if (auto r = set_sync_breakpoint(*filter_, kExecBreakpointId, *exec_va); !r)
      return std::move(r).with_context("setting the exec breakpoint").error();
    exec_bp_ = true;
  }
  // A breakpoint fires once the code at its address is translated again, after a flush the
  // monitor queues at some vCPU's next syscall or CR3 write: until then the synchronous clone exits
  // and CR3 events stand in for the fork and exec breakpoints (both act alike on the same exec or
  // fork), and handle() drops them when the monitor says the breakpoints are in force.
  bp_fallback_ = (fork_bp_ || exec_follow_bp_) && !filter_->breakpoints_in_force();
  if (auto r = set_sync_set(); !r) return r;
  const events::Actions a = actions();
  // Both replace what a consumer before this one left (a session killed mid-way).
  if (auto r = filter_->set_arg_rules(cfg_.arg_rules); !r) return std::move(r).with_context("setting the argument rules").error();
  if (wide || cfg_.read_data_comms.empty())
    if (auto r = filter_->set_read_data_dtbs(std::nullopt); !r) return std::move(r).with_context("resetting the read-data set").error();
  if (wide) {
    if (auto r = filter_->set_all_dtbs(); !r) return std::move(r).with_context("setting the DTB filter").error();
  } else if (auto r = push_dtbs(); !r) {
    return r;
  }
  if (auto r = filter_->set_actions(a); !r) return std::move(r).with_context("setting the actions").error();
  return {};
}

// The clone family's exits pause the guest only where no fork breakpoint (in force) adds children.
Result<void> Tracer::set_sync_set() {
  for (const auto table : {SyscallAbi::kX86_64, SyscallAbi::kI386}) {
    std::vector<unsigned> sync;
    if (cfg_.follow && (!fork_bp_ || bp_fallback_))
      for (unsigned nr = 0; nr < abi::kSyscallBits; ++nr)
        if (is_clone_family(table, nr)) sync.push_back(nr);
    if (auto r = filter_->set_sync_syscalls(sync, table); !r) return std::move(r).with_context("setting the sync set").error();
  }
  return {};
}

events::Actions Tracer::actions() const {
  events::Actions a;
  const abi::Action sc = cfg_.method == 5 ? abi::Action::kAsync : abi::Action::kSync;
  a.syscall_entry = sc;
  a.syscall_exit = sc;
  a.cr3 = wide_ || (exec_follow_bp_ && !bp_fallback_) ? abi::Action::kDrop : abi::Action::kSync;
  a.cr3_unfiltered = cfg_.method == 3;
  // on_cr3 acts only on an exec's switch to its new mm (and a vfork child's, from its parent's):
  // a write whose old DTB is traced. Method 5 asks for those only, so a switch into a traced
  // process from another costs no synchronous pause; method 4 keeps the paper's pre-filter (every
  // write touching the set) for Table 1.
  a.cr3_leaving_only = cfg_.method == 5;
  if (cfg_.method == 3) a.cr3 = abi::Action::kSync;
  return a;
}

// The fork and exec breakpoints now fire: their stand-ins stop pausing the guest.
Result<void> Tracer::leave_bp_fallback() {
  bp_fallback_ = false;
  if (auto r = set_sync_set(); !r) return r;
  if (auto r = filter_->set_actions(actions()); !r) return std::move(r).with_context("setting the actions").error();
  return {};
}

Result<void> Tracer::push_dtbs() {
  if (wide_) return {};
  std::set<std::uint64_t> want;
  for (const auto& [tgid, t] : procs_)
    if (!t.exited && t.dtb != 0) want.insert(t.dtb);
  if (want.size() > abi::kMaxDtbs)
    return make_error("{} traced address spaces; the monitor's filter takes at most {}", want.size(), abi::kMaxDtbs);
  if (!pushed_dtbs_ || want != *pushed_dtbs_) {   // the first set goes out even if empty
    std::vector<Dtb> v;
    for (auto d : want) v.push_back(Dtb{d});
    if (auto r = filter_->set_dtbs(v); !r) return std::move(r).with_context("updating the DTB filter").error();
    pushed_dtbs_ = std::move(want);
  }
  if (cfg_.read_data_comms.empty()) return {};
  std::set<std::uint64_t> data;
  for (const auto& [tgid, t] : procs_)
    if (!t.exited && t.dtb != 0 && t.read_data) data.insert(t.dtb);
  if (pushed_read_data_ && data == *pushed_read_data_) return {};
  std::vector<Dtb> v;
  for (auto d : data) v.push_back(Dtb{d});
  if (auto r = filter_->set_read_data_dtbs(v); !r) return std::move(r).with_context("updating the read-data set").error();
  pushed_read_data_ = std::move(data);
  return {};
}

// A live traced process whose address space is `dtb` (a vfork child shares its parent's).
const Tracer::Traced* Tracer::owner_of(std::uint64_t dtb) const {
  for (const auto& [tgid, p] : procs_)
    if (!p.exited && p.dtb == dtb) return &p;
  return nullptr;
}

Tracer::Traced* Tracer::traced(std::uint32_t tgid) {
  auto it = procs_.find(tgid);
  if (it != procs_.end() && !it->second.exited) return &it->second;
  return nullptr;
}

std::string Tracer::comm_of(const abi::TaskIdentity& who) {
  if (who.task == 0) return "?";
  // A task_struct's memory is reused by later tasks: an entry holds for the pid it was read for.
  auto it = comm_cache_.find(who.task);
  if (it != comm_cache_.end() && it->second.first == who.pid) return it->second.second;
  auto p = guest_->task(who.task);
  std::string c = p ? p->comm : std::string("?");
  if (comm_cache_.size() > 4096) comm_cache_.clear();   // bounded: tasks come and go
  comm_cache_[who.task] = {who.pid, c};
  return c;
}

Result<void> Tracer::handle(const events::Event& e) {
  if (bp_fallback_ && filter_->breakpoints_in_force())
    if (auto r = leave_bp_fallback(); !r) return r;
  ++stats_.events;
  if (e.sync()) ++stats_.sync_events;
  switch (e.type) {
    case abi::RecordType::kLost:
      stats_.lost += e.lost.lost;
      return {};
    case abi::RecordType::kSyscallEntry: ++stats_.entries; return on_entry(e);
    case abi::RecordType::kSyscallExit: ++stats_.exits; return on_exit(e);
    case abi::RecordType::kCr3Write: ++stats_.cr3; return on_cr3(e);
    case abi::RecordType::kBreakpoint: return on_breakpoint(e);
    default: return {};
  }
}

Result<void> Tracer::on_entry(const events::Event& e) {
  abi::TaskIdentity who = e.entry.who;
  const SyscallAbi sabi = e.syscall_abi();
  if (who.task == 0) {   // identity unavailable (e.g. PTI's user page tables): the DTB's process
    ++stats_.no_identity;
    for (const auto& [tgid, t] : procs_)
      if (!t.exited && t.dtb == e.dtb().value) who.tgid = who.pid = tgid;
    if (who.tgid == 0) return {};
  }
  Traced* t = traced(who.tgid);
  if (t == nullptr && all_) t = &(procs_[who.tgid] = Traced{who.tgid, e.dtb().value, false, false});
  if (t == nullptr && !cfg_.comms.empty() && is_execve(sabi, e.entry.nr)) {
    // --comm without the exec breakpoint (every process delivered, method 2, a replay of such a
    // recording): a program of that name starting (basename of execve's path).
    for (const auto& c : e.captures)
      if (c.kind == abi::CaptureKind::kString && c.arg == (e.entry.nr == kX64Execveat ? 1u : 0u)) {
        if (std::find(cfg_.comms.begin(), cfg_.comms.end(), exec_comm(c.data)) != cfg_.comms.end())
          t = &(procs_[who.tgid] = Traced{who.tgid, e.dtb().value, false, false});
      }
  }
  if (t == nullptr && cfg_.follow) {
    // A task in a traced address space (a vfork child before its exec, a thread we missed).
    for (auto& [tgid, p] : procs_)
      if (!p.exited && p.dtb == e.dtb().value) {
        t = &(procs_[who.tgid] = Traced{who.tgid, p.dtb, false, false});
        break;
      }
  }
  if (t == nullptr) {
    ++stats_.foreign;
    return {};
  }
  if (t->waiting_exec) {
    if (!is_execve(sabi, e.entry.nr) || who.pid != t->tgid) return {};
    t->waiting_exec = false;
  }
  if (!cfg_.follow && who.pid != who.tgid && !all_) {   // without -f only the thread-group leader, as strace
    ++stats_.foreign;
    return {};
  }
  tids_seen_.insert(who.pid);
  if (tids_seen_.size() > 1) multi_ = true;
  // A call of this thread still open: its exit was never delivered. A successful execve does not
  // return to the old program: the next call of the thread proves it succeeded.
  if (auto it = pending_.find(who.pid); it != pending_.end()) {
    Pending p = std::move(it->second);
    pending_.erase(it);
    const bool exec_ok = is_execve(p.call.abi, p.call.nr);
    complete(who.pid, std::move(p), exec_ok ? std::optional<std::int64_t>(0) : std::nullopt, {}, e.time_ns);
  }
  Pending p;
  p.call.abi = sabi;
  p.call.nr = e.entry.nr;
  std::copy(std::begin(e.entry.args), std::end(e.entry.args), p.call.args);
  p.call.entry_caps = e.captures;
  p.entry_ns = e.time_ns;
  p.pid = who.tgid;
  p.comm = comm_of(who);
  if (t->read_data && !reads_data(p.comm)) {   // it exec'd another program: its reads are not needed
    t->read_data = false;
    if (auto r = push_dtbs(); !r) return r;
  }
  if (is_exit_group(sabi, e.entry.nr) || is_exit(sabi, e.entry.nr)) {
    const bool group = is_exit_group(sabi, e.entry.nr);
    const auto code = static_cast<std::int32_t>(e.entry.args[0] & 0xff);
    complete(who.pid, std::move(p), std::nullopt, {}, e.time_ns);
    if (group || who.pid == who.tgid) {
      if (!cfg_.summary_only && !cfg_.json) {
        before_line(who.pid);
        out_(fmt::format("{}+++ exited with {} +++", prefix(who.pid, e.time_ns), code));
      }
      t->exited = true;
      if (auto r = push_dtbs(); !r) return r;
    }
    open_line_tid_.reset();
    return {};
  }
  if (entry_hook_) entry_hook_(entry_record(who.pid, p), p.call);
  const bool shown = wanted(p.call.abi, p.call.nr);
  pending_[who.pid] = std::move(p);
  if (shown) open_line_tid_ = who.pid;
  return {};
}

Result<void> Tracer::on_exit(const events::Event& e) {
  const std::uint32_t tid = e.exit.who.task ? e.exit.who.pid : 0;
  auto it = tid ? pending_.find(tid) : pending_.end();
  if (it == pending_.end()) {
    // Without identity, pair by the only open call in that address space.
    if (tid == 0)
      for (auto i = pending_.begin(); i != pending_.end(); ++i)
        if (procs_.count(i->second.pid) && procs_[i->second.pid].dtb == e.dtb().value) it = i;
    if (it == pending_.end()) return {};
  }
  const std::uint32_t key = it->first;
  Pending p = std::move(it->second);
  pending_.erase(it);
  const SyscallAbi a = p.call.abi;
  const std::uint64_t nr = p.call.nr;
  const std::uint32_t caller = p.pid;
  const std::uint64_t wait_options = p.call.args[2];
  const std::uint32_t signo = e.exit.via == static_cast<std::uint16_t>(abi::ExitVia::kSignal) ? e.exit.signo : 0;
  complete(key, std::move(p), e.exit.ret, e.captures, e.time_ns, signo);
  if (open_line_tid_ == key) open_line_tid_.reset();
  if (cfg_.follow && is_clone_family(a, nr) && e.exit.ret > 0)
    return add_child(static_cast<std::uint32_t>(e.exit.ret), e.exit.who.tgid);
  if (is_reap(a, nr) && e.exit.ret > 0 && e.exit.ret <= 0x7fff'ffff) {
    const auto r = syscalls::reaped_child(e.captures, wait_options);   // a stopped or continued child is alive
    if (r.dead) return reaped(static_cast<std::uint32_t>(e.exit.ret), caller, r.status, e.time_ns);
  }
  return {};
}

// A traced child reaped by its parent while it still counts as running: it died without an
// exit_group the monitor delivered (killed by a signal). It leaves the filter now: the page of its
// freed page-table root is soon another process's, whose calls must not pass as its. Its calls
// still open end as strace ends them (`= ?`), then its end, as strace prints it, where the wait
// status says (a status not copied: the end is not printed, only the calls).
Result<void> Tracer::reaped(std::uint32_t child, std::uint32_t parent, const std::optional<syscalls::WaitStatus>& status,
                            std::uint64_t ns) {
  Traced* t = traced(child);
  if (t == nullptr || child == parent) return {};
  t->exited = true;
  for (auto it = pending_.begin(); it != pending_.end();)   // completing a call adds none
    it = it->second.pid == child ? complete_open(it, std::nullopt, ns) : std::next(it);
  if (status && !cfg_.summary_only && !cfg_.json) {
    const std::string end =
        status->kind == syscalls::WaitStatus::Kind::kExited
            ? fmt::format("exited with {}", status->value)
            : fmt::format("killed by {}{}", syscalls::signal_text(status->value), status->core ? " (core dumped)" : "");
    before_line(child);
    out_(fmt::format("{}+++ {} +++", prefix(child, ns), end));
  }
  return push_dtbs();
}

// A call still open whose exit will not come (or is not needed): it completes now with `ret`.
std::map<std::uint32_t, Tracer::Pending>::iterator Tracer::complete_open(std::map<std::uint32_t, Pending>::iterator it,
                                                                          std::optional<std::int64_t> ret, std::uint64_t ns) {
  const std::uint32_t tid = it->first;
  Pending p = std::move(it->second);
  it = pending_.erase(it);
  complete(tid, std::move(p), ret, {}, ns);
  if (open_line_tid_ == tid) open_line_tid_.reset();
  return it;
}

// Runs while the parent's vCPU waits (the clone family's exits are sync): the child's address
// space joins the filter before the parent runs on. A thread shares its parent's.
Result<void> Tracer::add_child(std::uint32_t child, std::uint32_t parent) {
  // Traced already: the fork breakpoint added it before it first ran, and it may have exec'd since.
  // The exec breakpoint (begin_new_exec) gave it its new address space, which a child still inside
  // its exec (before exec_mmap) does not show yet: read here, the old one would replace it.
  if (traced(child) != nullptr) return {};
  auto p = guest_->pid(child);
  if (!p || !*p || !(*p)->dtb) return {};   // a thread (not a group leader) or gone already
  const Traced* up = traced(parent);
  procs_[child] = Traced{child, *(*p)->dtb, false, false, up ? up->read_data : reads_data((*p)->comm)};
  return push_dtbs();
}

// wake_up_new_task(struct task_struct *p): p is the new task (rdi), its mm already its own.
Result<void> Tracer::on_breakpoint(const events::Event& e) {
  if (e.bp.id == kExecBreakpointId) return on_exec_breakpoint(e);
  if (e.bp.id == kExecFollowBreakpointId) return on_exec_follow(e);
  if (e.bp.id != kForkBreakpointId || !cfg_.follow) return {};
  const auto child = guest_->task(e.bp.regs[0]);
  if (!child || !child->dtb || child->tgid == 0) return {};
  if (traced(child->tgid) != nullptr) return {};               // a thread of a traced process
  const Traced* parent = traced(child->ppid);
  if (parent == nullptr || parent->waiting_exec) return {};    // not a child of ours (yet)
  procs_[child->tgid] = Traced{child->tgid, *child->dtb, false, false, parent->read_data};
  auto pushed = push_dtbs();
  if (fork_hook_) fork_hook_(child->tgid, child->ppid, *child->dtb, child->comm);
  return pushed;
}

// setup_new_exec(bprm) in the exec'ing task, any process (the breakpoint is not DTB-scoped): CR3
// is the new mm's and the task's comm the new program's. The process of that comm whose address
// space is this CR3 is the one exec'ing (after de_thread it is its thread group's leader). Its
// execve entry came before it was traced and its return (iret to the new program) pairs with no
// entry, so the call is shown as strace shows a call it joined late: `<... execve resumed>) = 0`.
// Runs while the vCPU waits: everything the new program does passes the filter.
Result<void> Tracer::on_exec_breakpoint(const events::Event& e) {
  if (cfg_.comms.empty()) return {};
  const std::uint64_t dtb = abi::dtb_of_cr3(e.bp.cr3);
  for (const auto& c : cfg_.comms) {
    auto ps = guest_->name(c);
    if (!ps) continue;   // the task list could not be walked now: this exec is missed, not the trace
    for (const auto& p : *ps) {
      if (!p.dtb || *p.dtb != dtb || p.tgid == 0) continue;
      if (Traced* t = traced(p.tgid)) {   // traced already (its exec followed by the CR3 write)
        t->dtb = dtb;
        return push_dtbs();
      }
      procs_[p.tgid] = Traced{p.tgid, dtb, false, false};
      if (auto r = push_dtbs(); !r) return r;
      tids_seen_.insert(p.tgid);
      if (tids_seen_.size() > 1) multi_ = true;
      Pending exec;
      exec.call.abi = SyscallAbi::kX86_64;   // the door the old program came through is not known here
      exec.call.nr = kX64Execve;
      exec.entry_ns = e.time_ns;
      exec.pid = p.tgid;
      exec.comm = p.comm;
      exec.printed_unfinished = true;
      exec.entry_unseen = true;
      complete(p.tgid, std::move(exec), 0, {}, e.time_ns);
      return {};
    }
  }
  return {};
}

Result<void> Tracer::detach() {
  Result<void> out;
  if (fork_bp_) {
    fork_bp_ = false;
    out = filter_->remove_breakpoint(kForkBreakpointId);
  }
  if (exec_bp_) {
    exec_bp_ = false;
    if (auto r = filter_->remove_breakpoint(kExecBreakpointId); !r && out) out = r;
  }
  if (exec_follow_bp_) {
    exec_follow_bp_ = false;
    if (auto r = filter_->remove_breakpoint(kExecFollowBreakpointId); !r && out) out = r;
  }
  return out;
}

// begin_new_exec(bprm) in a traced address space (the monitor reports it nowhere else), while the
// vCPU waits: the exec'ing process moves to bprm->mm's address space before its new program runs.
// The task is the one running on that vCPU, checked against the CR3; a vfork child (sharing a
// traced parent's address space, not traced itself when the fork breakpoint is missing) joins.
Result<void> Tracer::on_exec_follow(const events::Event& e) {
  const std::uint64_t old_dtb = abi::dtb_of_cr3(e.bp.cr3);
  const auto x = guest_->exec(e.bp.hdr.vcpu, e.bp.regs[0]);
  if (!x || (x->task_dtb == old_dtb && (x->new_dtb == 0 || x->new_dtb == old_dtb))) {
    ++stats_.execs_unread;   // its new program's calls are not delivered: said in the summary
    return {};
  }
  // A kernel thread's exec (a usermode helper running on a borrowed address space), or a task
  // that is not the one running in this CR3 (a guest that lies): not a traced process's exec.
  if (x->task_dtb != old_dtb || x->tgid == 0) return {};
  Traced* t = traced(x->tgid);
  if (t == nullptr) {
    if (!cfg_.follow) return {};
    const Traced* owner = owner_of(old_dtb);
    if (owner == nullptr) return {};
    t = &(procs_[x->tgid] = Traced{x->tgid, x->new_dtb, false, false, owner->read_data});
  }
  comm_cache_.erase(x->task);
  ++stats_.execs_followed;
  t->dtb = x->new_dtb;
  auto pushed = push_dtbs();
  // Past begin_new_exec an exec no longer fails (a later error kills the process), and its return
  // into the new program pairs with no entry: its execve is complete now, not at the process's
  // next call in the set, which a program like `sleep` may not make before it ends.
  for (auto it = pending_.begin(); it != pending_.end(); ++it)
    if (it->second.pid == x->tgid && is_execve(it->second.call.abi, it->second.call.nr)) {
      complete_open(it, std::optional<std::int64_t>(0), e.time_ns);
      break;
    }
  return pushed;
}

// A CR3 write touching a traced address space, delivered sync. During exec the kernel switches to
// the new mm after making it the task's own, so "the running task's mm is the new CR3" tells an
// exec apart from a context switch (where the running task still owns the old one).
Result<void> Tracer::on_cr3(const events::Event& e) {
  const auto& who = e.cr3.who;
  if (who.task == 0) return {};
  const std::uint64_t old_dtb = abi::dtb_of_cr3(e.cr3.old_cr3), new_dtb = abi::dtb_of_cr3(e.cr3.new_cr3);
  if (old_dtb == new_dtb) return {};
  Traced* t = traced(who.tgid);
  const bool vfork_child = t == nullptr && cfg_.follow && owner_of(old_dtb) != nullptr;
  if (t == nullptr && !vfork_child) return {};
  auto task = guest_->task(who.task);
  if (!task || !task->dtb || *task->dtb != new_dtb) return {};   // a context switch
  comm_cache_.erase(who.task);
  if (t == nullptr) t = &(procs_[who.tgid] = Traced{who.tgid, new_dtb, false, false});
  t->dtb = new_dtb;
  return push_dtbs();
}

namespace {
// A string argument the monitor could not read at entry (its page was not yet present); the monitor
// copies it again at the exit, once the kernel has brought the page in.
bool awaits_refetch(const syscalls::Call& c) {
  return std::any_of(c.entry_caps.begin(), c.entry_caps.end(), [](const events::Capture& ec) {
    return ec.kind == abi::CaptureKind::kString && ec.data.empty() && (ec.flags & abi::kCaptureFault) != 0;
  });
}
}  // namespace

// A line for `tid` is about to be printed: a call of another thread still open is shown as
// <unfinished ...> first (strace's interleaving), so every line reads in the order things happened.
// A call whose string argument is only known at its exit is not split: it is printed whole when it
// returns, so its path is never shown as "" (strace reads it at entry, faulting the page in; the
// monitor must not touch guest memory, so it waits for the kernel to do that).
void Tracer::before_line(std::uint32_t tid) {
  if (open_line_tid_ && *open_line_tid_ != tid)
    if (auto it = pending_.find(*open_line_tid_);
        it != pending_.end() && !it->second.printed_unfinished && !awaits_refetch(it->second.call))
      print_unfinished(it->first, it->second);
  open_line_tid_.reset();
}

void Tracer::print_unfinished(std::uint32_t tid, Pending& p) {
  p.printed_unfinished = true;
  if (cfg_.summary_only || cfg_.json || !wanted(p.call.abi, p.call.nr)) return;
  const std::string name = syscalls::format_call(p.call, {cfg_.string_limit}).name;
  out_(fmt::format("{}{}{} <unfinished ...>", prefix(tid, p.entry_ns), name,
                   syscalls::format_args(p.call, {cfg_.string_limit})));
}

CallRecord Tracer::entry_record(std::uint32_t tid, const Pending& p) {
  CallRecord r;
  r.pid = p.pid;
  r.tid = tid;
  r.comm = p.comm;
  r.abi = p.call.abi;
  r.nr = p.call.nr;
  r.entry_ns = p.entry_ns;
  return r;
}

void Tracer::complete(std::uint32_t tid, Pending p, std::optional<std::int64_t> ret,
                      std::vector<events::Capture> exit_caps, std::uint64_t exit_ns, std::uint32_t signo) {
  const bool shown = wanted(p.call.abi, p.call.nr);
  if (!shown && !call_hook_) return;
  p.call.ret = ret;
  // A string the monitor could not read at entry (page not yet present) and copied again at exit.
  for (auto it = exit_caps.begin(); it != exit_caps.end();) {
    bool used = false;
    if (it->kind == abi::CaptureKind::kString)
      for (auto& ec : p.call.entry_caps)
        if (ec.arg == it->arg && ec.kind == abi::CaptureKind::kString && ec.data.empty() &&
            (ec.flags & abi::kCaptureFault) != 0) {
          ec = *it;
          used = true;
        }
    it = used ? exit_caps.erase(it) : it + 1;
  }
  p.call.exit_caps = std::move(exit_caps);
  CallRecord r = entry_record(tid, p);
  r.f = syscalls::format_call(p.call, {cfg_.string_limit});
  if (p.call.abi == SyscallAbi::kX86_64 && syscalls::Table::get(SyscallAbi::kX86_64).by_nr(p.call.nr) == nullptr)
    if (auto it = guest_names_.find(static_cast<std::uint32_t>(p.call.nr)); it != guest_names_.end()) r.f.name = it->second;
  r.ret = ret;
  r.exit_ns = exit_ns;
  r.resumed = p.printed_unfinished;
  r.signo = signo;
  if (p.entry_unseen) r.f.args.clear();   // not zeros: unknown
  if (call_hook_) call_hook_(r, p.call);   // every call, whatever -e trace= and status= show
  if (!shown) return;
  auto& c = counts_[r.f.name];
  ++c.calls;
  if (r.f.failed) ++c.errors;
  if (exit_ns > p.entry_ns) c.total_ns += exit_ns - p.entry_ns;
  if (!cfg_.status.shows(r.f.failed)) return;
  emit(r);
}

std::string Tracer::prefix(std::uint32_t tid, std::uint64_t ns) const {
  std::string s;
  if (cfg_.follow || multi_ || all_ || procs_.size() > 1) {
    std::uint32_t pid = tid;
    if (auto it = pending_.find(tid); it != pending_.end()) pid = it->second.pid;
    s = pid == tid ? fmt::format("[pid {:>5}] ", tid) : fmt::format("[pid {:>5}/{}] ", pid, tid);
  }
  const std::int64_t wall = static_cast<std::int64_t>(ns) + realtime_offset_ns_;
  const std::time_t secs = static_cast<std::time_t>(wall / 1'000'000'000);
  std::tm tm{};
  localtime_r(&secs, &tm);
  switch (cfg_.time) {
    case TimeFormat::kNone: break;
    case TimeFormat::kSeconds: s += fmt::format("{:02}:{:02}:{:02} ", tm.tm_hour, tm.tm_min, tm.tm_sec); break;
    case TimeFormat::kMicros:
      s += fmt::format("{:02}:{:02}:{:02}.{:06} ", tm.tm_hour, tm.tm_min, tm.tm_sec, (wall / 1000) % 1'000'000);
      break;
    case TimeFormat::kEpoch: s += fmt::format("{}.{:06} ", wall / 1'000'000'000, (wall / 1000) % 1'000'000); break;
  }
  return s;
}

void Tracer::emit(const CallRecord& r) {
  if (cfg_.summary_only) return;
  if (cfg_.json) {
    nlohmann::json j = {{"v", 1},
                        {"time_ns", static_cast<std::int64_t>(r.entry_ns) + realtime_offset_ns_},
                        {"pid", r.pid},
                        {"tid", r.tid},
                        {"comm", r.comm},
                        {"abi", events::abi_name(r.abi)},
                        {"nr", r.nr},
                        {"syscall", r.f.name},
                        {"args", r.f.args},
                        {"ret", r.ret ? nlohmann::json(*r.ret) : nlohmann::json(nullptr)},
                        {"ret_text", r.f.ret},
                        {"failed", r.f.failed}};
    if (r.f.failed && r.ret)
      if (auto n = syscalls::errno_name(static_cast<int>(-*r.ret))) j["errno"] = std::string(*n);
    if (r.exit_ns > r.entry_ns) j["duration_ns"] = r.exit_ns - r.entry_ns;
    if (r.signo != 0) j["signal"] = syscalls::signal_text(static_cast<int>(r.signo));
    out_(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return;
  }
  before_line(r.tid);
  std::string line = prefix(r.tid, r.entry_ns);
  if (r.resumed) {
    line += fmt::format("<... {} resumed>) = {}", r.f.name, r.f.ret);
  } else {
    line += syscalls::to_text(r.f, line.size());
  }
  if (r.abi == SyscallAbi::kI386) line += " [i386]";
  if (cfg_.show_duration && r.exit_ns > r.entry_ns)
    line += fmt::format(" <{}.{:06}>", (r.exit_ns - r.entry_ns) / 1'000'000'000, ((r.exit_ns - r.entry_ns) / 1000) % 1'000'000);
  out_(line);
  // As strace shows a signal delivered (without its siginfo): here, into a handler as the call returned.
  if (r.signo != 0) out_(fmt::format("{}--- {} ---", prefix(r.tid, r.exit_ns), syscalls::signal_text(static_cast<int>(r.signo))));
}

bool Tracer::done() const {
  if (all_ || procs_.empty()) return false;
  return std::all_of(procs_.begin(), procs_.end(), [](const auto& kv) { return kv.second.exited; });
}

void Tracer::finish(const std::vector<events::RingStats>& rings, const events::MonitorStats& before,
                    const events::MonitorStats& after) {
  for (auto& [tid, p] : pending_)
    if (!cfg_.summary_only && !cfg_.json && wanted(p.call.abi, p.call.nr) && !p.printed_unfinished)
      out_(fmt::format("{}{}{} <unfinished ...>", prefix(tid, p.entry_ns), syscalls::format_call(p.call, {cfg_.string_limit}).name,
                       syscalls::format_args(p.call, {cfg_.string_limit})));
  if (!cfg_.summary_only) return;
  std::vector<std::pair<std::string, SyscallCount>> rows(counts_.begin(), counts_.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    return a.second.total_ns != b.second.total_ns ? a.second.total_ns > b.second.total_ns : a.first < b.first;
  });
  std::uint64_t total_ns = 0, calls = 0, errors = 0;
  for (const auto& [n, c] : rows) {
    total_ns += c.total_ns;
    calls += c.calls;
    errors += c.errors;
  }
  out_(fmt::format("{:>6} {:>11} {:>11} {:>9} {:>9} {}", "% time", "seconds", "usecs/call", "calls", "errors", "syscall"));
  const std::string rule = "------ ----------- ----------- --------- --------- ----------------";
  out_(rule);
  for (const auto& [n, c] : rows)
    out_(fmt::format("{:>6.2f} {:>11.6f} {:>11} {:>9} {:>9} {}", total_ns ? 100.0 * static_cast<double>(c.total_ns) / static_cast<double>(total_ns) : 0.0,
                     static_cast<double>(c.total_ns) / 1e9, c.calls ? c.total_ns / 1000 / c.calls : 0, c.calls,
                     c.errors ? std::to_string(c.errors) : std::string(), n));
  out_(rule);
  out_(fmt::format("{:>6.2f} {:>11.6f} {:>11} {:>9} {:>9} total", 100.0, static_cast<double>(total_ns) / 1e9,
                   calls ? total_ns / 1000 / calls : 0, calls, errors ? std::to_string(errors) : std::string()));
  // What the monitor did for this trace.
  events::RingStats sum;
  for (const auto& s : rings) {
    sum.published += s.published;
    for (std::size_t i = 0; i < std::size(sum.drops); ++i) sum.drops[i] += s.drops[i];
    sum.sync_waits += s.sync_waits;
    sum.sync_timeouts += s.sync_timeouts;
    sum.sync_degraded += s.sync_degraded;
    sum.sync_wait_ns += s.sync_wait_ns;
    sum.open_evicted += s.open_evicted;
    sum.entries_missed += s.entries_missed;
  }
  const std::uint64_t trapped = (after.user_syscalls - before.user_syscalls) + (after.user_int80s - before.user_int80s) +
                                (after.user_sysenters - before.user_sysenters);
  out_("");
  out_("monitor (this trace):");
  out_(fmt::format("  {:<34} {:>10}", "syscall instructions executed", trapped));
  out_(fmt::format("  {:<34} {:>10}", "syscall entries delivered", stats_.entries));
  out_(fmt::format("  {:<34} {:>10}", "filtered out in the hypervisor", trapped > stats_.entries ? trapped - stats_.entries : 0));
  out_(fmt::format("  {:<34} {:>10}", "CR3 events delivered", stats_.cr3));
  out_(fmt::format("  {:<34} {:>10}", "execs followed at a breakpoint", stats_.execs_followed));
  out_(fmt::format("  {:<34} {:>10}", "events delivered, not traced", stats_.foreign));
  out_(fmt::format("  {:<34} {:>10}", "synchronous pauses", stats_.sync_events));
  out_(fmt::format("  {:<34} {:>10.3f}", "time paused for them (ms)", static_cast<double>(sum.sync_wait_ns) / 1e6));
  out_(fmt::format("  {:<34} {:>10}", "lost: ring full", sum.drops[0]));
  out_(fmt::format("  {:<34} {:>10}", "lost: record too big", sum.drops[1]));
  out_(fmt::format("  {:<34} {:>10}", "lost: no consumer", sum.drops[2]));
  out_(fmt::format("  {:<34} {:>10}", "lost: bad consumer tail", sum.drops[3]));
  out_(fmt::format("  {:<34} {:>10}", "sync waits timed out", sum.sync_timeouts));
  out_(fmt::format("  {:<34} {:>10}", "exits lost: open-call table full", sum.open_evicted));
  out_(fmt::format("  {:<34} {:>10}", "entries lost: door not yet learned", sum.entries_missed));
  out_(fmt::format("  {:<34} {:>10}", "execs lost: new mm unreadable", stats_.execs_unread));
}

}  // namespace hvtrace::trace
