// hvtrace: watch Linux VMs from the hypervisor. main only wires subcommands and the error policy:
// UserError (something the user must fix) and command-line usage errors -> one
// "hvtrace: error: ..." line + exit 2; anything unexpected -> exit 1. --help and --version print
// CLI11's text and exit 0.
#include "commands.hpp"

#include "common/result.hpp"
#include "vm/vm.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <csignal>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace hvtrace::tools {
std::vector<std::string>& trailing_command() {
  static std::vector<std::string> words;
  return words;
}
int& exit_code() {
  static int code = 0;
  return code;
}

namespace {

// CLI11's text for a usage error, reworded to name what was wrong and where help is:
// "unknown command 'frobnicate' (try hvtrace --help)".
std::string usage_error_message(const CLI::App& app, const CLI::ParseError& e) {
  // The innermost subcommand the parse reached, and every argument nobody claimed on the way.
  const CLI::App* at = &app;
  std::string path = "hvtrace";
  std::vector<std::string> unclaimed = app.remaining();
  while (!at->get_subcommands().empty()) {
    at = at->get_subcommands().front();
    path += " " + at->get_name();
    for (auto& a : at->remaining()) unclaimed.push_back(std::move(a));
  }
  const std::string help = fmt::format("(try {} --help)", path);
  const auto first_word = std::find_if(unclaimed.begin(), unclaimed.end(),
                                       [](const std::string& a) { return !a.empty() && a != "--"; });
  if (first_word != unclaimed.end()) {
    const std::string& a = *first_word;
    if (a.size() > 1 && a[0] == '-') return fmt::format("unknown option '{}' {}", a.substr(0, a.find('=')), help);
    if (!at->get_subcommands({}).empty()) return fmt::format("unknown command '{}' {}", a, help);
    return fmt::format("unexpected argument '{}' {}", a, help);
  }
  std::string what = e.what();
  std::replace(what.begin(), what.end(), '\n', ' ');
  if (e.get_name() == "RequiredError" && what.find("subcommand") != std::string::npos)
    return fmt::format("a command is required {}", help);
  // "--memory: 1 required UINT missing" -> "option --memory needs a value".
  if (e.get_name() == "ArgumentMismatch" && what.size() > 8 && what.ends_with(" missing") && what[0] == '-')
    return fmt::format("option {} needs a value {}", what.substr(0, what.find(':')), help);
  if (!what.empty()) what[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(what[0])));
  return fmt::format("{} {}", what, help);
}

}  // namespace
}  // namespace hvtrace::tools

int main(int argc, char** argv) {
  CLI::App app{"hvtrace: trace Linux guests from the hypervisor (QEMU TCG plugin + guest-memory introspection)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "hvtrace 0.1.0");
  hvtrace::tools::add_run_command(app);
  hvtrace::tools::add_vm_command(app);
  hvtrace::tools::add_ps_command(app);
  hvtrace::tools::add_events_command(app);
  hvtrace::tools::add_trace_command(app);
  hvtrace::tools::add_session_command(app);
  hvtrace::tools::add_bench_command(app);
  hvtrace::tools::add_farm_command(app);
  hvtrace::tools::add_collect_command(app);

  hvtrace::vm::install_termination_handlers();
  try {
    // `hvtrace trace ... -- CMD ARGS`: everything after the first "--" is the guest command, word
    // for word; CLI11 would still match CMD's own options (sh -c) against trace's flags.
    int parsed = argc;
    if (argc > 1 && std::string_view(argv[1]) == "trace")
      for (int i = 2; i < argc; ++i)
        if (std::string_view(argv[i]) == "--") {
          hvtrace::tools::trailing_command().assign(argv + i + 1, argv + argc);
          parsed = i;
          break;
        }
    app.parse(parsed, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);  // --help, --version
    fmt::print(stderr, "hvtrace: error: {}\n", hvtrace::tools::usage_error_message(app, e));
    return 2;
  } catch (const hvtrace::tools::Interrupted& e) {
    fmt::print(stderr, "hvtrace: {}\n", e.what());
    return 128 + SIGINT;
  } catch (const hvtrace::UserError& e) {
    // An error that a Ctrl-C caused (a wait cut short) is the Ctrl-C, as a shell reports it.
    if (hvtrace::vm::termination_requested()) {
      fmt::print(stderr, "hvtrace: interrupted ({})\n", e.what());
      return 128 + SIGINT;
    }
    fmt::print(stderr, "hvtrace: error: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "hvtrace: internal error: {}\n", e.what());
    return 1;
  }
  return hvtrace::tools::exit_code();
}
