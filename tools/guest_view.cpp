#include "guest_view.hpp"

#include "common/result.hpp"

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <map>

namespace hvtrace::tools {

GuestView attach_guest(std::unique_ptr<mem::FileMem> ram, const kernel::AttachOptions& options) {
  GuestView g;
  g.ram = std::move(ram);
  auto k = kernel::Kernel::attach(*g.ram, options);
  if (!k) throw UserError(fmt::format("finding the kernel in {}: {}", g.ram->describe(), k.error().message));
  g.kernel = std::move(k).value();
  g.os.emplace(value_or_throw(linux_os::Linux::attach(*g.kernel)));
  return g;
}

MonitoredGuest attach_monitored(const std::string& vm_name) {
  using namespace std::chrono_literals;
  auto rec = value_or_throw(vm::find_vm(vm_name));
  const auto files = vm::monitor_files(vm_name);
  if (!vm::fs::exists(files.rings))
    throw UserError(fmt::format("VM '{}' runs without the hvtrace monitor; start it with `hvtrace vm up --name {} --monitor`",
                                rec.name, rec.name));
  vm::VmWatch watch(rec);
  GuestView g = attach_guest(value_or_throw(mem::open_ram_file(rec.ram_path)));
  auto reader = value_or_throw(events::EventReader::open(files.rings, 5s));
  auto ctl = value_or_throw(events::ControlClient::connect(files.control, 5s));
  value_or_throw(ctl.attach());
  return MonitoredGuest{std::move(rec), std::move(watch), std::move(g), std::move(reader), std::move(ctl)};
}

namespace {

std::string dtb_text(const linux_os::Process& p) { return p.dtb ? fmt::format("{:#x}", p.dtb->value) : "-"; }
// Like ps: the command line when asked for and readable, else the comm ([comm] for kernel threads).
std::string comm_text(const ProcessRow& r) {
  if (r.cmdline && !r.cmdline->empty()) return *r.cmdline;
  return r.p->kernel_thread ? "[" + r.p->comm + "]" : r.p->comm;
}

}  // namespace

void print_process_json(const ProcessRow& r) {
  const linux_os::Process& p = *r.p;
  nlohmann::json j = {{"pid", p.pid.value},
                      {"tgid", p.tgid.value},
                      {"ppid", p.ppid.value},
                      {"uid", p.uid},
                      {"euid", p.euid},
                      {"gid", p.gid},
                      {"comm", p.comm},
                      {"state", std::string(1, p.state)},
                      {"start_time_ns", p.start_time_ns},
                      {"kernel_thread", p.kernel_thread},
                      {"dtb", p.dtb ? nlohmann::json(fmt::format("{:#x}", p.dtb->value)) : nlohmann::json(nullptr)},
                      {"task", fmt::format("{:#x}", p.task.value)}};
  if (r.cmdline) j["cmdline"] = *r.cmdline;
  if (r.files && !*r.files) j["files_error"] = r.files->error().message;
  if (r.files && *r.files) {
    nlohmann::json fs = nlohmann::json::array();
    for (const auto& f : (*r.files)->files) {
      nlohmann::json o = {{"fd", f.fd}, {"kind", linux_os::kind_name(f.kind)}, {"what", linux_os::describe(f)}};
      if (f.kind != linux_os::FileKind::kUnreadable) {
        o["mode"] = fmt::format("{:o}", f.mode);
        o["inode"] = fmt::format("{:#x}", f.inode.value);
      }
      if (f.kind == linux_os::FileKind::kPtyMaster || f.kind == linux_os::FileKind::kPtySlave || f.kind == linux_os::FileKind::kCharDev)
        o["rdev"] = fmt::format("{}:{}", f.major, f.minor);
      if (f.kind == linux_os::FileKind::kPipe) o["access"] = std::string(f.readable ? "r" : "") + (f.writable ? "w" : "");
      if (f.socket) {
        nlohmann::json so = {{"family", f.socket->family}, {"type", f.socket->type}, {"state", f.socket->state}};
        if (f.socket->local) so["local"] = {{"ip", f.socket->local->ip}, {"port", f.socket->local->port}};
        if (f.socket->peer) so["peer"] = {{"ip", f.socket->peer->ip}, {"port", f.socket->peer->port}};
        if (!f.socket->error.empty()) so["error"] = f.socket->error;
        o["socket"] = std::move(so);
      }
      if (!f.error.empty()) o["error"] = f.error;
      fs.push_back(std::move(o));
    }
    j["files"] = std::move(fs);
    if ((*r.files)->cut) j["files_cut"] = true;
  }
  // Guest strings are bytes, not UTF-8: replace what JSON cannot carry.
  fmt::print("{}\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void print_process_files(const std::vector<ProcessRow>& rows) {
  for (const auto& r : rows) {
    if (!r.files) continue;
    fmt::print("\n# open files of pid {} ({})\n", r.p->pid.value, r.p->comm);
    if (!*r.files) {
      fmt::print("#   not read: {}\n", r.files->error().message);
      continue;
    }
    for (const auto& f : (*r.files)->files) fmt::print("{:>6} {}\n", f.fd, linux_os::describe(f));
    if ((*r.files)->cut) fmt::print("#   (more fds not shown: max_fds {} beyond what is looked at)\n", (*r.files)->max_fds);
  }
}

void print_process_table(const std::vector<ProcessRow>& rows, bool tree) {
  // START: seconds after boot (task_struct.start_time is monotonic time since boot).
  fmt::print("{:>6} {:>6} {:>6} {:1} {:>10} {:>12} {}\n", "PID", "PPID", "UID", "S", "START", "DTB", "COMMAND");
  auto row = [](const ProcessRow& r, const std::string& prefix) {
    const linux_os::Process& p = *r.p;
    fmt::print("{:>6} {:>6} {:>6} {:1} {:>10} {:>12} {}{}\n", p.pid.value, p.ppid.value, p.uid, p.state,
               fmt::format("{:.2f}s", static_cast<double>(p.start_time_ns) / 1e9), dtb_text(p), prefix, comm_text(r));
  };
  if (!tree) {
    for (const auto& r : rows) row(r, "");
    return;
  }
  std::multimap<int, const ProcessRow*> children;
  std::map<int, const ProcessRow*> by_pid;
  for (const auto& r : rows) by_pid[r.p->pid.value] = &r;
  for (const auto& r : rows) children.emplace(r.p->ppid.value, &r);
  // Roots: processes whose parent is not listed (pid 0 is not a process). Depth-bounded, and
  // every process printed once, so a hostile parent cycle cannot loop.
  std::map<int, bool> printed;
  auto walk = [&](auto&& self, const ProcessRow& r, int depth) -> void {
    const linux_os::Process& p = *r.p;
    if (printed[p.pid.value] || depth > 64) return;
    printed[p.pid.value] = true;
    row(r, depth == 0 ? "" : std::string(static_cast<std::size_t>(2 * depth - 2), ' ') + "\\_ ");
    auto [b, e] = children.equal_range(p.pid.value);
    for (auto it = b; it != e; ++it)
      if (it->second->p->pid != p.pid) self(self, *it->second, depth + 1);
  };
  for (const auto& r : rows)
    if (by_pid.count(r.p->ppid.value) == 0 || r.p->ppid == r.p->pid) walk(walk, r, 0);
  for (const auto& r : rows) walk(walk, r, 0);  // members of a parent cycle, if any
}


}  // namespace hvtrace::tools
