// Every hvtrace subcommand adds itself to the CLI11 app through one function, listed in main.cpp.
#pragma once

namespace CLI {
class App;
}

namespace hvtrace::tools {
void add_vm_command(CLI::App& app);    // cmd_vm.cpp: vm up|exec|down|status|list
void add_run_command(CLI::App& app);   // cmd_run.cpp: the README's main job
}  // namespace hvtrace::tools
