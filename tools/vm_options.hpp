// The options every command that starts a VM shares (vm up, run, and later trace/bench), bound
// once to a VmConfig so each command spells them the same way.
#pragma once

#include "vm/vm.hpp"

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace hvtrace::tools {

struct VmOptions {
  vm::VmConfig config;
  std::string image_dir;                 // empty: the default guest
  bool monitor = false;                  // load the hvtrace monitor with its files in the run directory
  std::string plugin_path;
  std::vector<std::string> plugin_args;
  std::vector<std::string> guest_forwards;  // --guestfwd specs, checked by resolve_vm_options
  unsigned boot_timeout_s = 180;
};

void add_vm_options(CLI::App& cmd, VmOptions& opts);
// Validate and complete the config (loads the guest image); throws UserError with a fix.
vm::VmConfig resolve_vm_options(VmOptions& opts);
// The monitor plugin built next to this hvtrace binary (or $HVTRACE_MONITOR).
vm::fs::path default_monitor_path();
// Progress printer for people: "[hvtrace] message" on stderr.
void print_progress(std::string_view message);

}  // namespace hvtrace::tools
