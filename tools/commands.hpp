// Every hvtrace subcommand adds itself to the CLI11 app through one function, listed in main.cpp.
// A subcommand that must exit with a specific status (e.g. `vm exec` passing on the guest
// command's status) sets exit_code().
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace hvtrace::tools {
int& exit_code();
// Thrown when a Ctrl-C (SIGINT/SIGTERM) ends a command before it did its job: one line, exit 130.
struct Interrupted : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The words after `--` on the command line of `hvtrace trace` (the guest command), split off before parsing.
std::vector<std::string>& trailing_command();
void add_vm_command(CLI::App& app);    // cmd_vm.cpp: vm up|exec|down|status|list
void add_run_command(CLI::App& app);   // cmd_run.cpp: the README's main job
void add_ps_command(CLI::App& app);    // cmd_ps.cpp: process list from guest memory
void add_events_command(CLI::App& app);
void add_trace_command(CLI::App& app);   // cmd_trace.cpp: strace for VMs  // cmd_events.cpp: the monitor's raw events as JSON Lines
void add_session_command(CLI::App& app);   // cmd_session.cpp: the honeypot view (SSH sessions)
void add_bench_command(CLI::App& app);   // cmd_bench.cpp: Table 1 and the per-event costs
void add_farm_command(CLI::App& app);    // cmd_farm.cpp: the honeypot fleet (farm up|status|down|bench-reset)
void add_collect_command(CLI::App& app);   // cmd_collect.cpp: published sessions (NATS JetStream) into DIR
}  // namespace hvtrace::tools
