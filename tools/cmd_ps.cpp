// hvtrace ps: list a running guest's processes from outside, reading only its RAM file.
// Attaches by VM name (or to a RAM file / memory dump), finds the kernel with no configuration
// (cached profile, else kallsyms + BTF from memory), walks the task list and prints it like ps:
// a header and aligned columns for people, JSON Lines for machines, --tree for the parent tree,
// --explain for where every symbol and offset came from, --fds for each process's open files (lsof from outside).
#include "commands.hpp"
#include "guest_view.hpp"
#include "output.hpp"

#include "common/result.hpp"
#include "kernel/kernel.hpp"
#include "kernel/syscall_meta.hpp"
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
#include <vector>

namespace hvtrace::tools {
namespace {

struct PsOptions {
  std::string vm_name = "default";
  std::string ram_file, dump_file, profile_file;
  bool json = false, tree = false, explain = false, no_cache = false, args = false, fds = false;
  std::vector<int> pids;           // -p: only these
  std::vector<std::string> names;  // -C: only these commands
};

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
  // The guest's own syscall table; cached next to the profile ps attached with (not into a --profile file).
  const bool from_file = k.how().rfind("profile file", 0) == 0;
  auto sc = kernel::guest_syscalls(k, from_file ? std::nullopt : std::optional(kernel::default_profile_dir()));
  if (sc)
    fmt::print("# syscalls: {} metadata records, {} x86-64 table entries, {} i386 entry points{}: {}\n", sc->meta.size(),
               sc->x64_table.size(), sc->ia32_names.size(),
               sc->rejected != 0 ? fmt::format(" ({} implausible skipped)", sc->rejected) : "", sc->source);
  else
    fmt::print("# syscalls: not read: {}\n", sc.error().message);
}

void run_ps(const PsOptions& o) {
  std::unique_ptr<mem::FileMem> ram;
  if (!o.dump_file.empty()) {
    ram = value_or_throw(mem::open_dump_file(o.dump_file));
  } else {
    std::string path = o.ram_file;
    if (path.empty()) path = value_or_throw(vm::find_vm(o.vm_name)).ram_path.string();
    ram = value_or_throw(mem::open_ram_file(path));
  }
  kernel::AttachOptions ao;
  ao.use_cache = !o.no_cache;
  if (!o.profile_file.empty()) ao.profile_file = o.profile_file;
  GuestView g = attach_guest(std::move(ram), ao);
  const auto& lx = *g.os;
  auto ps = lx.processes();
  if (!ps) throw UserError(fmt::format("listing processes in {}: {}", g.ram->describe(), ps.error().message));
  if (!o.pids.empty() || !o.names.empty()) {
    std::erase_if(*ps, [&](const linux_os::Process& p) {
      return std::find(o.pids.begin(), o.pids.end(), p.pid.value) == o.pids.end() &&
             std::find(o.names.begin(), o.names.end(), p.comm) == o.names.end();
    });
  }
  std::vector<ProcessRow> rows;
  for (const auto& p : *ps) {
    ProcessRow r{&p, std::nullopt, std::nullopt};
    if (o.fds && !p.kernel_thread) r.files = linux_os::open_files(lx, p);
    if (o.args) {
      // An unreadable command line (pages not present) is not an error for ps: show the comm.
      auto c = lx.cmdline(p);
      r.cmdline = c ? std::move(*c) : std::string();
    }
    rows.push_back(std::move(r));
  }
  // `hvtrace ps | head`: when the reader leaves, stop quietly like ps does.
  (void)print_guarded(stdout, [&] {
    if (o.explain) print_explain(*g.kernel);
    if (o.json) {
      for (const auto& r : rows) print_process_json(r);
    } else {
      print_process_table(rows, o.tree);
      if (o.fds) print_process_files(rows);
    }
  });
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
  ps->add_flag("--fds", opts->fds,
               "show each process's open files, read from its fd table (pty master/slave, sockets with addresses, "
               "pipes, files); with --json a \"files\" array");
  ps->add_flag("--json", opts->json, "JSON Lines: one object per process");
  ps->add_flag("--tree", opts->tree, "show the parent tree");
  ps->add_flag("--explain", opts->explain, "say where each symbol and structure offset came from");
  ps->callback([opts] { run_ps(*opts); });
}

}  // namespace hvtrace::tools
