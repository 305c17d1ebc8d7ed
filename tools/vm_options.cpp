#include "vm_options.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdio>
#include <cstdlib>

namespace hvtrace::tools {

void add_vm_options(CLI::App& cmd, VmOptions& o) {
  cmd.add_option("--name", o.config.name, "VM name (several VMs can run side by side)")->capture_default_str();
  cmd.add_option("--smp", o.config.smp, "number of vCPUs")->check(CLI::Range(1u, 8u))->capture_default_str();
  cmd.add_option("--memory", o.config.memory_mib, "guest RAM in MiB")->check(CLI::Range(128u, 3072u))->capture_default_str();
  cmd.add_option("--cpu", o.config.cpu, "QEMU CPU model ('max' gives 5-level paging)")->capture_default_str();
  cmd.add_option("--ssh-port", o.config.ssh_port, "host port on 127.0.0.1 forwarded to the guest's SSH (0: any free port)")
      ->capture_default_str();
  cmd.add_option("--image", o.image_dir,
                 "guest image: a name in the setup cache (default, bpo: guest/build-image --image NAME) or a directory");
  cmd.add_option("--append", o.config.kernel_args, "extra kernel command-line argument (repeatable), e.g. pti=on");
  cmd.add_flag("--monitor", o.monitor,
               "load the hvtrace monitor; its rings (mon.rings) and control socket (mon.ctl) go in the run directory");
  cmd.add_option("--plugin", o.plugin_path, "QEMU TCG plugin to load (with --monitor: another build of the monitor)");
  cmd.add_option("--plugin-arg", o.plugin_args, "plugin argument key=value (repeatable)");
  cmd.add_option("--guestfwd", o.guest_forwards,
                 "let the guest reach a server on this host's loopback: tcp:GUEST_ADDR:PORT-127.0.0.1:HOST_PORT, e.g. "
                 "tcp:10.0.2.100:80-127.0.0.1:8080 (repeatable). Without it the guest reaches nothing outside")
      ->type_name("SPEC");
  cmd.add_option("--boot-timeout", o.boot_timeout_s, "seconds to wait for the guest's SSH")->capture_default_str();
}

vm::VmConfig resolve_vm_options(VmOptions& o) {
  value_or_throw(vm::validate_name(o.config.name));
  for (const auto& spec : o.guest_forwards) {
    auto f = vm::parse_guest_forward(spec);
    if (!f) throw UserError(f.error().message);
    o.config.guest_forwards.push_back(std::move(f).value());
  }
  if (!o.config.guest_forwards.empty()) {
    // QEMU runs this same binary as the per-connection relay (`hvtrace vm relay`).
    std::error_code ec;
    o.config.relay_program = vm::fs::read_symlink("/proc/self/exe", ec);
    if (ec) throw UserError(fmt::format("cannot find this program's path for --guestfwd: {}", ec.message()));
  }
  const auto dir = o.image_dir.empty() ? vm::default_image_dir() : vm::image_dir(o.image_dir);
  auto img = vm::load_image(dir);
  if (!img) {
    throw UserError(o.image_dir.empty()
                        ? fmt::format("{}\n(the default guest is built by `guest/build-image`; the README's "
                                      "first command does it)",
                                      img.error().message)
                        : img.error().message);
  }
  o.config.image = std::move(img).value();
  if (o.monitor) {
    const vm::fs::path so = o.plugin_path.empty() ? default_monitor_path() : vm::fs::path(o.plugin_path);
    if (!vm::fs::is_regular_file(so))
      throw UserError(fmt::format("monitor plugin {} not found (build it: cmake --build --preset release; or set "
                                  "HVTRACE_MONITOR)",
                                  so.string()));
    o.config.plugin = vm::monitor_plugin(so, o.config.name, o.plugin_args);
  } else if (!o.plugin_path.empty()) {
    o.config.plugin = vm::PluginSpec{o.plugin_path, o.plugin_args};
  } else if (!o.plugin_args.empty()) {
    throw UserError("--plugin-arg given without --plugin or --monitor");
  }
  o.config.boot_timeout = std::chrono::seconds{o.boot_timeout_s};
  return o.config;
}

vm::fs::path default_monitor_path() {
  if (const char* env = std::getenv("HVTRACE_MONITOR"); env != nullptr && *env != '\0') return env;
  std::error_code ec;
  const auto exe = vm::fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "libhvtrace-monitor.so";
  // Build tree: <build>/tools/hvtrace and <build>/monitor/libhvtrace-monitor.so.
  return exe.parent_path().parent_path() / "monitor" / "libhvtrace-monitor.so";
}

void print_progress(std::string_view message) { fmt::print(stderr, "[hvtrace] {}\n", message); }

}  // namespace hvtrace::tools
