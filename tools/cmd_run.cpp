// `hvtrace run`: the README's main job. Today: boot the default guest, log in over SSH, run a
// command, list the guest's processes from its memory (no agent), print the command's output and
// the timings, shut down cleanly. The tracing issues extend this same command. The VM lives only as long as this process (RAII + PDEATHSIG).
#include "commands.hpp"
#include "guest_view.hpp"
#include "vm_options.hpp"

#include "vm/vm.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <chrono>
#include <cstdio>
#include <memory>

namespace hvtrace::tools {

void add_run_command(CLI::App& app) {
  struct Opts {
    VmOptions vm;
    std::string command = "uname -r; id; echo \"$(grep -c processor /proc/cpuinfo) vCPU, $(free -m | awk '/Mem:/{print $2}') MiB\"";
    unsigned timeout_s = 600;
  };
  auto o = std::make_shared<Opts>();
  o->vm.config.name = "run";
  auto* cmd = app.add_subcommand("run", "Boot a guest, run a command in it over SSH, report, shut down");
  add_vm_options(*cmd, o->vm);
  cmd->add_option("-c,--command", o->command, "shell command to run in the guest (as root)")->capture_default_str();
  cmd->add_option("--timeout", o->timeout_s, "seconds before the command is abandoned")->capture_default_str();
  cmd->callback([o] {
    using Clock = std::chrono::steady_clock;
    auto config = resolve_vm_options(o->vm);
    auto vm = value_or_throw(vm::Vm::start(std::move(config), print_progress));
    const auto& rec = vm->record();

    print_progress(fmt::format("running in the guest: {}", o->command));
    const auto t0 = Clock::now();
    const auto r = value_or_throw(vm->exec(o->command, std::chrono::seconds{o->timeout_s}));
    const double cmd_s = std::chrono::duration<double>(Clock::now() - t0).count();

    // The guest seen from outside: its processes read from its RAM file (no agent in the guest).
    print_progress("reading the guest's process list from its memory");
    const auto t2 = Clock::now();
    GuestView g = attach_guest(value_or_throw(mem::open_ram_file(rec.ram_path)));
    const auto procs = value_or_throw(g.os->processes());
    const double ps_s = std::chrono::duration<double>(Clock::now() - t2).count();

    print_progress("shutting down");
    const auto t1 = Clock::now();
    const auto down = vm->shutdown();
    const double down_s = std::chrono::duration<double>(Clock::now() - t1).count();

    fmt::print("--- output of `{}` ---\n", o->command);
    std::fwrite(r.out.data(), 1, r.out.size(), stdout);
    if (!r.err.empty()) {
      fmt::print("--- stderr ---\n");
      std::fwrite(r.err.data(), 1, r.err.size(), stdout);
    }
    std::vector<ProcessRow> rows;
    std::size_t kernel_threads = 0;
    for (const auto& p : procs) {
      if (p.kernel_thread) ++kernel_threads;
      else rows.push_back({&p, std::nullopt});
    }
    fmt::print("--- user processes, read from guest memory (+{} kernel threads) ---\n", kernel_threads);
    print_process_table(rows, true);
    fmt::print("---\n");
    fmt::print("{:<14} {}\n", "kernel", rec.kernel_release);
    fmt::print("{:<14} {}\n", "exit status", r.exit_status);
    fmt::print("{:<14} {:.2f} s\n", "boot to SSH", rec.boot_seconds);
    fmt::print("{:<14} {:.2f} s\n", "command", cmd_s);
    fmt::print("{:<14} {:.3f} s for {} processes (kernel: {})\n", "introspection", ps_s, procs.size(), g.kernel->how());
    fmt::print("{:<14} {:.2f} s ({})\n", "shutdown", down_s, down ? "clean poweroff" : down.error().message);
    exit_code() = r.exit_status != 0 ? r.exit_status : (down ? 0 : 1);
  });
}

}  // namespace hvtrace::tools
