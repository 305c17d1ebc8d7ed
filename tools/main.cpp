// hvtrace: watch Linux VMs from the hypervisor. main only wires subcommands and the error policy:
// UserError (something the user must fix) -> message + exit 2; anything unexpected -> exit 1.
#include "commands.hpp"

#include "common/result.hpp"
#include "vm/vm.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdio>
#include <exception>

namespace hvtrace::tools {
int& exit_code() {
  static int code = 0;
  return code;
}
}  // namespace hvtrace::tools

int main(int argc, char** argv) {
  CLI::App app{"hvtrace: trace Linux guests from the hypervisor (QEMU TCG plugin + guest-memory introspection)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "hvtrace 0.1.0");
  hvtrace::tools::add_run_command(app);
  hvtrace::tools::add_vm_command(app);
  hvtrace::tools::add_ps_command(app);
  hvtrace::tools::add_events_command(app);

  hvtrace::vm::install_termination_handlers();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const hvtrace::UserError& e) {
    fmt::print(stderr, "hvtrace: error: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "hvtrace: internal error: {}\n", e.what());
    return 1;
  }
  return hvtrace::tools::exit_code();
}
