// hvtrace ps: list a running guest's processes from outside, reading only its RAM file.
// Attaches by VM name (or to a RAM file / memory dump), finds the kernel with no configuration
// (cached profile, else kallsyms + BTF from memory), walks the task list and prints it like ps:
// a header and aligned columns for people, JSON Lines for machines, --tree for the parent tree,
// --explain for where every symbol and offset came from.
#include "commands.hpp"

#include "common/result.hpp"
#include "kernel/kernel.hpp"
#include "linux/processes.hpp"
#include "mem/phys_mem.hpp"
#include "vm/vm.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

namespace hvtrace::tools {
namespace {

struct PsOptions {
  std::string vm_name = "default";
  std::string ram_file, dump_file, profile_file;
  bool json = false, tree = false, explain = false, no_cache = false, args = false;
  std::vector<int> pids;           // -p: only these
  std::vector<std::string> names;  // -C: only these commands
};

std::string dtb_text(const linux_os::Process& p) { return p.dtb ? fmt::format("{:#x}", p.dtb->value) : "-"; }
// Like ps: the command line when asked for and readable, else the comm ([comm] for kernel threads).
struct Row {
  const linux_os::Process* p;
  std::optional<std::string> cmdline;
};
std::string comm_text(const Row& r) {
  if (r.cmdline && !r.cmdline->empty()) return *r.cmdline;
  return r.p->kernel_thread ? "[" + r.p->comm + "]" : r.p->comm;
}

void print_json(const Row& r) {
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
  // Guest strings are bytes, not UTF-8: replace what JSON cannot carry.
  fmt::print("{}\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void print_table(const std::vector<Row>& rows, bool tree) {
  // START: seconds after boot (task_struct.start_time is monotonic time since boot).
  fmt::print("{:>6} {:>6} {:>6} {:1} {:>10} {:>12} {}\n", "PID", "PPID", "UID", "S", "START", "DTB", "COMMAND");
  auto row = [](const Row& r, const std::string& prefix) {
    const linux_os::Process& p = *r.p;
    fmt::print("{:>6} {:>6} {:>6} {:1} {:>10} {:>12} {}{}\n", p.pid.value, p.ppid.value, p.uid, p.state,
               fmt::format("{:.2f}s", static_cast<double>(p.start_time_ns) / 1e9), dtb_text(p), prefix, comm_text(r));
  };
  if (!tree) {
    for (const auto& r : rows) row(r, "");
    return;
  }
  std::multimap<int, const Row*> children;
  std::map<int, const Row*> by_pid;
  for (const auto& r : rows) by_pid[r.p->pid.value] = &r;
  for (const auto& r : rows) children.emplace(r.p->ppid.value, &r);
  // Roots: processes whose parent is not listed (pid 0 is not a process). Depth-bounded, and
  // every process printed once, so a hostile parent cycle cannot loop.
  std::map<int, bool> printed;
  auto walk = [&](auto&& self, const Row& r, int depth) -> void {
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

void print_explain(const kernel::Kernel& k) {
  const auto& l = k.layout();
  const auto& p = k.profile();
  fmt::print("# kernel: {}\n", p.banner.empty() ? "(banner unknown)" : p.banner);
  fmt::print("# profile: {} ({})\n", p.key(), k.how());
  fmt::print("# _text: virtual {:#x} (slide {:+#x}), physical {:#x} (slide {:+#x})\n", l.text_va.value, l.virt_slide,
             l.text_pa.value, l.phys_slide);
  fmt::print("# paging: {} (init_top_pgt at physical {:#x}; mode found by walking _text through it)\n",
             arch::name(l.paging), l.kernel_dtb.value);
  fmt::print("# page_offset_base: {:#x} (read from the kernel variable of that name)\n", l.page_offset_base);
  for (const auto& [name, sym] : p.symbols) {
    auto it = p.sources.find("symbol " + name);
    const auto at = k.symbol(name);
    fmt::print("# symbol {} = {:#x}{}: {}\n", name, at ? at->value : 0, sym.absolute ? " (per-CPU/absolute)" : "",
               it != p.sources.end() ? it->second : "?");
  }
  for (const auto& [name, f] : p.fields) {
    auto it = p.sources.find("field " + name);
    fmt::print("# offset {} = {:#x} (size {}): {}\n", name, f.offset, f.size, it != p.sources.end() ? it->second : "?");
  }
}

void run_ps(const PsOptions& o) {
  std::unique_ptr<mem::FileMem> ram;
  if (!o.dump_file.empty()) {
    ram = value_or_throw(mem::open_dump_file(o.dump_file));
  } else {
    std::string path = o.ram_file;
    if (path.empty()) {
      auto rec = vm::find_vm(o.vm_name);
      if (!rec) throw UserError(rec.error().message);
      path = rec->ram_path.string();
    }
    ram = value_or_throw(mem::open_ram_file(path));
  }
  kernel::AttachOptions ao;
  ao.use_cache = !o.no_cache;
  if (!o.profile_file.empty()) ao.profile_file = o.profile_file;
  auto k = kernel::Kernel::attach(*ram, ao);
  if (!k) throw UserError(fmt::format("finding the kernel in {}: {}", ram->describe(), k.error().message));
  auto lx = value_or_throw(linux_os::Linux::attach(**k));
  auto ps = lx.processes();
  if (!ps) throw UserError(fmt::format("listing processes in {}: {}", ram->describe(), ps.error().message));
  if (!o.pids.empty() || !o.names.empty()) {
    std::erase_if(*ps, [&](const linux_os::Process& p) {
      return std::find(o.pids.begin(), o.pids.end(), p.pid.value) == o.pids.end() &&
             std::find(o.names.begin(), o.names.end(), p.comm) == o.names.end();
    });
  }
  std::vector<Row> rows;
  for (const auto& p : *ps) {
    Row r{&p, std::nullopt};
    if (o.args) {
      // An unreadable command line (pages not present) is not an error for ps: show the comm.
      auto c = lx.cmdline(p);
      r.cmdline = c ? std::move(*c) : std::string();
    }
    rows.push_back(std::move(r));
  }
  try {
    if (o.explain) print_explain(**k);
    if (o.json) {
      for (const auto& r : rows) print_json(r);
      return;
    }
    print_table(rows, o.tree);
  } catch (const std::system_error& e) {
    // `hvtrace ps | head`: the reader left; stop quietly like ps does.
    if (e.code() != std::errc::broken_pipe) throw;
  }
}

}  // namespace

void add_ps_command(CLI::App& app) {
  auto opts = std::make_shared<PsOptions>();
  auto* ps = app.add_subcommand("ps", "List a running guest's processes from its memory (no agent in the guest)");
  ps->add_option("--vm,--name", opts->vm_name, "VM name")->capture_default_str();
  ps->add_option("--ram", opts->ram_file, "read this guest RAM file instead of a named VM's");
  ps->add_option("--dump", opts->dump_file, "read a saved raw memory dump (offset == guest physical address)");
  ps->add_option("--profile", opts->profile_file, "kernel profile: hvtrace JSON, Volatility 3 ISF JSON or System.map");
  ps->add_flag("--no-cache", opts->no_cache, "ignore cached profiles and discover the kernel from memory");
  ps->add_option("-p,--pid", opts->pids, "only these pids (repeatable)");
  ps->add_option("-C,--command", opts->names, "only processes with this command name (repeatable)");
  ps->add_flag("-f,--args", opts->args, "show full command lines (read from each process's own memory)");
  ps->add_flag("--json", opts->json, "JSON Lines: one object per process");
  ps->add_flag("--tree", opts->tree, "show the parent tree");
  ps->add_flag("--explain", opts->explain, "say where each symbol and structure offset came from");
  ps->callback([opts] { run_ps(*opts); });
}

}  // namespace hvtrace::tools
