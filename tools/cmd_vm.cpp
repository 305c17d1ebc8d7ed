// `hvtrace vm up|exec|down|status|list`: the guest lab from the command line. `up` leaves the VM
// running under a detached supervisor; the others attach to it by name.
#include "commands.hpp"
#include "vm_options.hpp"

#include "vm/vm.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace hvtrace::tools {

namespace {

std::string join(const std::vector<std::string>& v, std::string_view sep) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : std::string(sep)) + x;
  return s;
}

void print_record_text(const vm::VmRecord& r) {
  const std::pair<const char*, std::string> rows[] = {
      {"name", r.name},
      {"state", "running"},
      {"qemu pid", std::to_string(r.qemu_pid)},
      {"owner pid", std::to_string(r.owner_pid)},
      {"vCPUs", std::to_string(r.smp)},
      {"memory", fmt::format("{} MiB", r.memory_mib)},
      {"cpu model", r.cpu},
      {"kernel", r.kernel_release},
      {"ssh", fmt::format("127.0.0.1:{}", r.ssh_port)},
      {"ram file", r.ram_path.string()},
      {"qmp socket", r.qmp_path.string()},
      {"serial log", r.serial_log.string()},
      {"boot time", fmt::format("{:.1f} s", r.boot_seconds)},
      {"plugin", r.plugin.empty() ? "-" : r.plugin},
      {"network", r.guest_forwards.empty() ? std::string("restricted: no way out")
                                           : "restricted; guestfwd " + join(r.guest_forwards, ", ")},
  };
  for (const auto& [k, v] : rows) fmt::print("{:<12} {}\n", k, v);
}

}  // namespace

void add_vm_command(CLI::App& app) {
  auto* vm = app.add_subcommand("vm", "Start, use and stop guests (QEMU TCG, guest RAM in a shared-memory file)");
  vm->require_subcommand(1);

  auto up_opts = std::make_shared<VmOptions>();
  auto* up = vm->add_subcommand("up", "Boot a guest and leave it running (returns when SSH answers)");
  add_vm_options(*up, *up_opts);
  up->callback([up_opts] {
    auto config = resolve_vm_options(*up_opts);
    const auto rec = value_or_throw(vm::start_detached(std::move(config), print_progress));
    fmt::print("VM '{}' is up: kernel {}, ssh 127.0.0.1:{}, RAM file {}, booted in {:.1f} s\n", rec.name,
               rec.kernel_release, rec.ssh_port, rec.ram_path.string(), rec.boot_seconds);
  });

  struct ExecOptions {
    std::string name = "default";
    std::vector<std::string> command;
    unsigned timeout_s = 600;
    bool interactive = false;
  };
  auto exec_opts = std::make_shared<ExecOptions>();
  auto* ex = vm->add_subcommand("exec", "Run a command in a running guest over SSH; exits with its status");
  ex->add_option("--name", exec_opts->name, "VM name")->capture_default_str();
  ex->add_option("--timeout", exec_opts->timeout_s, "seconds before the command is abandoned")->capture_default_str();
  ex->add_flag("-i,--interactive", exec_opts->interactive, "pass standard input to the command even from a terminal");
  ex->add_option("command", exec_opts->command,
                 "after --: a program and its arguments, passed word for word (no re-splitting or expansion); "
                 "or one argument, run as a shell command line")
      ->required();
  ex->footer(
      "Examples:\n"
      "  hvtrace vm exec -- sh -c 'exit 7'           argv as given: exits 7\n"
      "  hvtrace vm exec -- 'echo $HOME; uname -r'   one argument: the guest's shell runs it\n"
      "  echo data | hvtrace vm exec -- cat           a pipe or file on stdin reaches the command\n"
      "Standard input: a pipe or a file is passed to the command (as with ssh); a terminal is not,\n"
      "the command reads end-of-file (as with docker exec), unless -i is given. No terminal is\n"
      "allocated in the guest. Output streams through as the command writes it.");
  ex->callback([exec_opts] {
    const auto rec = value_or_throw(vm::find_vm(exec_opts->name));
    const bool pass_stdin = exec_opts->interactive || isatty(STDIN_FILENO) == 0;
    exit_code() = value_or_throw(vm::ssh_run(rec, vm::remote_command_line(exec_opts->command),
                                             std::chrono::seconds{exec_opts->timeout_s}, pass_stdin));
  });

  auto down_name = std::make_shared<std::string>("default");
  auto* down = vm->add_subcommand("down", "Shut a guest down cleanly and remove all its files");
  down->add_option("--name", *down_name, "VM name")->capture_default_str();
  down->callback([down_name] {
    const auto rec = value_or_throw(vm::find_vm(*down_name));
    print_progress(fmt::format("stopping VM '{}'", rec.name));
    value_or_throw(vm::stop_vm(rec));
    fmt::print("VM '{}' is down\n", rec.name);
  });

  auto st_name = std::make_shared<std::string>("default");
  auto st_json = std::make_shared<bool>(false);
  auto* st = vm->add_subcommand("status", "Show a running guest (exit 1 if it is not running)");
  st->add_option("--name", *st_name, "VM name")->capture_default_str();
  st->add_flag("--json", *st_json, "one JSON object (the vm.json record)");
  st->callback([st_name, st_json] {
    auto rec = vm::find_vm(*st_name);
    if (!rec) {
      fmt::print(stderr, "hvtrace: {}\n", rec.error().message);
      exit_code() = 1;
      return;
    }
    if (*st_json) {
      fmt::print("{}\n", vm::record_to_json(*rec));
    } else {
      print_record_text(*rec);
    }
  });

  // What QEMU runs for each connection the guest makes to a --guestfwd address (guestfwd.hpp):
  // stdin/stdout are that connection. Not for people; hidden from --help.
  struct RelayOptions {
    std::string host;
    std::uint16_t port = 0;
  };
  auto relay_opts = std::make_shared<RelayOptions>();
  auto* relay = vm->add_subcommand("relay", "");
  relay->group("");
  relay->add_option("host", relay_opts->host)->required();
  relay->add_option("port", relay_opts->port)->required();
  relay->callback([relay_opts] { exit_code() = vm::run_guest_forward_relay(relay_opts->host, relay_opts->port); });

  auto* ls = vm->add_subcommand("list", "List running guests");
  ls->callback([] {
    const auto vms = vm::list_vms();
    fmt::print("{:<16} {:>8} {:>6} {:>5} {:>7} {:<16} {}\n", "NAME", "QEMU-PID", "SSH", "VCPU", "MEM-MIB", "KERNEL",
               "RAM-FILE");
    for (const auto& r : vms)
      fmt::print("{:<16} {:>8} {:>6} {:>5} {:>7} {:<16} {}\n", r.name, r.qemu_pid, r.ssh_port, r.smp, r.memory_mib,
                 r.kernel_release, r.ram_path.string());
  });
}

}  // namespace hvtrace::tools
