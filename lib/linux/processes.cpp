// The Linux model over a discovered Kernel; see processes.hpp for the invariants.
#include "linux/processes.hpp"

#include "linux/field_at.hpp"

#include <algorithm>
#include <cstring>
#include <unordered_set>

namespace hvtrace::linux_os {
namespace {

constexpr std::uint32_t kPfKthread = 0x00200000;
constexpr int kWalkAttempts = 3;  // the live guest may change the list under us

}  // namespace

char state_letter(std::uint32_t state, std::uint32_t exit_state) {
  static constexpr char kLetters[] = "RSDTtXZPI";
  std::uint32_t s = (state | exit_state) & 0x7f;  // TASK_REPORT
  if (state == 0x402) s = 0x80;                   // TASK_IDLE -> TASK_REPORT_IDLE
  if (state == 0x1000) s = 0x2;                   // TASK_RTLOCK_WAIT -> D
  unsigned idx = 0;
  while (s != 0) {  // fls()
    ++idx;
    s >>= 1;
  }
  return idx < sizeof(kLetters) - 1 ? kLetters[idx] : '?';
}

Result<TaskLayout> TaskLayout::from(const kernel::Kernel& k) {
  TaskLayout l{};
  auto get = [&](const char* name, std::uint64_t& out, std::uint64_t* size = nullptr) -> Result<void> {
    auto f = k.require_field(name);
    if (!f) return std::move(f).error();
    out = f->offset;
    if (size != nullptr) *size = f->size;
    return {};
  };
  HVTRACE_TRY(get("task_struct.tasks", l.tasks));
  HVTRACE_TRY(get("task_struct.pid", l.pid));
  HVTRACE_TRY(get("task_struct.tgid", l.tgid));
  HVTRACE_TRY(get("task_struct.comm", l.comm, &l.comm_size));
  HVTRACE_TRY(get("task_struct.mm", l.mm));
  HVTRACE_TRY(get("task_struct.real_parent", l.real_parent));
  HVTRACE_TRY(get("task_struct.real_cred", l.real_cred));
  HVTRACE_TRY(get("task_struct.start_time", l.start_time));
  HVTRACE_TRY(get("task_struct.__state", l.state));
  HVTRACE_TRY(get("task_struct.exit_state", l.exit_state));
  HVTRACE_TRY(get("task_struct.flags", l.flags));
  HVTRACE_TRY(get("mm_struct.pgd", l.mm_pgd));
  HVTRACE_TRY(get("cred.uid", l.cred_uid));
  HVTRACE_TRY(get("cred.gid", l.cred_gid));
  HVTRACE_TRY(get("cred.euid", l.cred_euid));
  if (auto f = k.profile().field("pcpu_hot.current_task")) l.pcpu_hot_current_task = f->offset;
  if (auto f = k.profile().field("mm_struct.arg_start")) l.mm_arg_start = f->offset;
  if (auto f = k.profile().field("mm_struct.arg_end")) l.mm_arg_end = f->offset;
  if (auto f = k.profile().field("linux_binprm.mm"); f && f->offset < 4096) l.binprm_mm = f->offset;
  if (l.comm_size == 0 || l.comm_size > 64) l.comm_size = 16;
  const std::uint64_t limit = 1U << 16;  // task_struct is ~10 KiB; anything far beyond is a corrupt profile
  for (std::uint64_t off : {l.tasks, l.pid, l.tgid, l.comm, l.mm, l.real_parent, l.real_cred, l.start_time, l.state,
                            l.exit_state, l.flags, l.mm_pgd, l.cred_uid, l.cred_gid, l.cred_euid})
    if (off > limit) return make_error("profile offset {:#x} is implausible", off);
  return l;
}

Result<Linux> Linux::attach(const kernel::Kernel& kernel) {
  auto layout = TaskLayout::from(kernel);
  if (!layout) return std::move(layout).error();
  auto init = kernel.require_symbol("init_task");
  if (!init) return std::move(init).error();
  // 6.1 keeps the current task in a per-CPU variable of its own; 6.2+ in pcpu_hot.current_task.
  std::uint64_t cur = 0;
  if (auto c = kernel.symbol("current_task")) cur = c->value;
  else if (auto h = kernel.symbol("pcpu_hot"); h && layout->pcpu_hot_current_task) cur = h->value + *layout->pcpu_hot_current_task;
  return Linux(kernel, *layout, *init, cur);
}

Result<Process> Linux::read_task(GVA task) const {
  const TaskLayout& l = layout_;
  if ((task.value >> 63) == 0 || !arch::is_canonical(task, kernel_->layout().paging)) return make_error("task pointer {:#x} is not a kernel address", task.value);
  const std::uint64_t span = std::max({l.tasks + 16, l.pid + 4, l.tgid + 4, l.comm + l.comm_size, l.mm + 8,
                                       l.real_parent + 8, l.real_cred + 8, l.start_time + 8, l.state + 4,
                                       l.exit_state + 4, l.flags + 4});
  std::vector<std::byte> buf(span);
  HVTRACE_TRY(kernel_->read(task, buf).with_context(fmt::format("reading task_struct at {:#x}", task.value)));
  Process p;
  p.task = task;
  p.pid = Pid{field_at<std::int32_t>(buf, l.pid)};
  p.tgid = Pid{field_at<std::int32_t>(buf, l.tgid)};
  std::string comm(l.comm_size, '\0');
  std::memcpy(comm.data(), buf.data() + l.comm, l.comm_size);
  p.comm = comm.substr(0, strnlen(comm.data(), l.comm_size));
  const auto flags = field_at<std::uint32_t>(buf, l.flags);
  p.kernel_thread = (flags & kPfKthread) != 0;
  p.state = state_letter(field_at<std::uint32_t>(buf, l.state), field_at<std::uint32_t>(buf, l.exit_state));
  p.start_time_ns = field_at<std::uint64_t>(buf, l.start_time);

  const GVA parent{field_at<std::uint64_t>(buf, l.real_parent)};
  if (parent.value != 0 && parent != task) {
    auto ppid = kernel_->read_as<std::int32_t>(GVA{parent.value + l.tgid});
    if (!ppid) return std::move(ppid).with_context(fmt::format("reading parent of task {:#x} (pid {})", task.value, p.pid.value)).error();
    p.ppid = Pid{*ppid};
  }
  if (p.pid.value == 0) p.ppid = Pid{0};
  const GVA cred{field_at<std::uint64_t>(buf, l.real_cred)};
  if (cred.value != 0) {
    const std::uint64_t lo = std::min({l.cred_uid, l.cred_gid, l.cred_euid});
    const std::uint64_t hi = std::max({l.cred_uid, l.cred_gid, l.cred_euid}) + 4;
    std::vector<std::byte> c(hi - lo);
    HVTRACE_TRY(kernel_->read(GVA{cred.value + lo}, c).with_context(fmt::format("reading cred of pid {} at {:#x}", p.pid.value, cred.value)));
    p.uid = field_at<std::uint32_t>(c, l.cred_uid - lo);
    p.gid = field_at<std::uint32_t>(c, l.cred_gid - lo);
    p.euid = field_at<std::uint32_t>(c, l.cred_euid - lo);
  }
  const GVA mm{field_at<std::uint64_t>(buf, l.mm)};
  p.mm = mm;
  if (mm.value != 0) {
    auto dtb = mm_dtb(mm);
    if (!dtb) return std::move(dtb).with_context(fmt::format("the address space of pid {}", p.pid.value)).error();
    p.dtb = *dtb;
  }
  return p;
}

Result<Dtb> Linux::mm_dtb(GVA mm) const {
  auto pgd = kernel_->read_as<std::uint64_t>(GVA{mm.value + layout_.mm_pgd});
  if (!pgd) return std::move(pgd).with_context(fmt::format("reading mm_struct.pgd at {:#x}", mm.value)).error();
  auto pa = kernel_->to_phys(GVA{*pgd});
  if (!pa) return std::move(pa).with_context(fmt::format("translating pgd {:#x} of mm {:#x}", *pgd, mm.value)).error();
  return dtb_of(Cr3{pa->value});  // as the CR3 the monitor sees, PTI bit masked
}

Result<Dtb> Linux::exec_dtb(GVA bprm) const {
  if (!layout_.binprm_mm) return make_error("the kernel's BTF has no linux_binprm.mm");
  auto mm = kernel_->read_as<std::uint64_t>(GVA{bprm.value + *layout_.binprm_mm});
  if (!mm) return std::move(mm).with_context(fmt::format("reading linux_binprm.mm at {:#x}", bprm.value)).error();
  if ((*mm >> 63) == 0) return make_error("linux_binprm.mm {:#x} is not a kernel address", *mm);
  return mm_dtb(GVA{*mm});
}

Result<std::vector<Process>> Linux::processes(const WalkLimits& limits) const {
  Error last{};
  for (int attempt = 0; attempt < kWalkAttempts; ++attempt) {
    if (attempt > 0) kernel_->invalidate();
    const GVA head{init_task_.value + layout_.tasks};
    std::vector<Process> out;
    std::unordered_set<std::uint64_t> seen;
    auto next = kernel_->read_as<std::uint64_t>(head);
    bool failed = false;
    while (next && *next != head.value) {
      if (out.size() >= limits.max_tasks) {
        last = make_error("task list has more than {} entries without returning to init_task", limits.max_tasks);
        failed = true;
        break;
      }
      const GVA task{*next - layout_.tasks};
      if (!seen.insert(task.value).second) {
        last = make_error("task list loops at task {:#x} after {} tasks without returning to init_task", task.value,
                          out.size());
        failed = true;
        break;
      }
      auto p = read_task(task);
      if (!p) {
        last = std::move(p).with_context(fmt::format("walking the task list (entry {})", out.size())).error();
        failed = true;
        break;
      }
      out.push_back(std::move(*p));
      next = kernel_->read_as<std::uint64_t>(GVA{*next});
    }
    if (!failed && !next) {
      last = std::move(next).with_context("walking the task list").error();
      failed = true;
    }
    if (!failed) return out;
  }
  return last;
}

Result<std::optional<Process>> Linux::find_pid(Pid pid) const {
  auto all = processes();
  if (!all) return std::move(all).error();
  for (auto& p : *all)
    if (p.pid == pid) return std::optional<Process>(std::move(p));
  return std::optional<Process>();
}

Result<std::vector<Process>> Linux::find_name(std::string_view comm) const {
  auto all = processes();
  if (!all) return std::move(all).error();
  std::vector<Process> out;
  for (auto& p : *all)
    if (p.comm == comm) out.push_back(std::move(p));
  return out;
}

Result<std::string> Linux::cmdline(const Process& p, std::size_t max_bytes) const {
  if (p.mm.value == 0 || !p.dtb) return std::string();
  if (!layout_.mm_arg_start || !layout_.mm_arg_end) return make_error("profile has no mm_struct.arg_start/arg_end");
  auto start = kernel_->read_as<std::uint64_t>(GVA{p.mm.value + *layout_.mm_arg_start});
  auto end = kernel_->read_as<std::uint64_t>(GVA{p.mm.value + *layout_.mm_arg_end});
  if (!start || !end) return make_error("reading the argument bounds of pid {}", p.pid.value);
  if (*end < *start) return make_error("pid {} has inverted argument bounds {:#x}..{:#x}", p.pid.value, *start, *end);
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(*end - *start, max_bytes));
  std::string s(n, '\0');
  arch::AddressSpace as(kernel_->memory(), *p.dtb, kernel_->layout().paging);
  HVTRACE_TRY(as.read(GVA{*start}, std::as_writable_bytes(std::span(s.data(), n)))
                  .with_context(fmt::format("reading the command line of pid {}", p.pid.value)));
  while (!s.empty() && s.back() == '\0') s.pop_back();
  std::replace(s.begin(), s.end(), '\0', ' ');
  return s;
}

Result<std::optional<Process>> Linux::process_by_dtb(Dtb dtb) const {
  auto all = processes();
  if (!all) return std::move(all).error();
  for (auto& p : *all)
    if (p.dtb && *p.dtb == dtb_of(Cr3{dtb.value})) return std::optional<Process>(std::move(p));
  return std::optional<Process>();
}

Result<Process> Linux::current_task(GVA kernel_gs_base) const {
  if (current_task_off_ == 0) return make_error("kernel has neither current_task nor pcpu_hot.current_task");
  auto cur = kernel_->read_as<std::uint64_t>(GVA{kernel_gs_base.value + current_task_off_});
  if (!cur) return std::move(cur).with_context(fmt::format("reading the current task at gs_base {:#x} + {:#x}", kernel_gs_base.value, current_task_off_)).error();
  return read_task(GVA{*cur});
}

Result<GVA> Linux::per_cpu_base(unsigned cpu) const {
  auto arr = kernel_->require_symbol("__per_cpu_offset");
  if (!arr) return std::move(arr).error();
  if (cpu >= 8192) return make_error("cpu {} out of range", cpu);
  auto v = kernel_->read_as<std::uint64_t>(GVA{arr->value + 8ULL * cpu});
  if (!v) return std::move(v).error();
  return GVA{*v};
}

Result<void> ProcessIndex::refresh() {
  auto ps = lx_->processes();
  if (!ps) return std::move(ps).error();
  procs_ = std::move(*ps);
  by_pid_.clear();
  by_dtb_.clear();
  for (std::size_t i = 0; i < procs_.size(); ++i) {
    by_pid_[procs_[i].pid.value] = i;
    if (procs_[i].dtb) by_dtb_[procs_[i].dtb->value] = i;
  }
  ++refreshes_;
  return {};
}

const Process* ProcessIndex::by_pid(Pid pid) const {
  auto it = by_pid_.find(pid.value);
  return it == by_pid_.end() ? nullptr : &procs_[it->second];
}

const Process* ProcessIndex::by_dtb(Dtb dtb) const {
  auto it = by_dtb_.find(dtb_of(Cr3{dtb.value}).value);
  return it == by_dtb_.end() ? nullptr : &procs_[it->second];
}

Result<const Process*> ProcessIndex::resolve(Dtb dtb) {
  if (const Process* p = by_dtb(dtb)) return p;
  HVTRACE_TRY(refresh());
  return by_dtb(dtb);
}

}  // namespace hvtrace::linux_os
