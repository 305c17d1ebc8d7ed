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
  std::string plugin_path;
  std::vector<std::string> plugin_args;
  unsigned boot_timeout_s = 180;
};

void add_vm_options(CLI::App& cmd, VmOptions& opts);
// Validate and complete the config (loads the guest image); throws UserError with a fix.
vm::VmConfig resolve_vm_options(VmOptions& opts);
// Progress printer for people: "[hvtrace] message" on stderr.
void print_progress(std::string_view message);

}  // namespace hvtrace::tools
