// `hvtrace run`: the README's main job, the honeypot. Boot the default guest with the monitor,
// contained (restrict=on) except for one forward, 10.0.2.100:80 -> a small file server on our
// loopback serving the attacker's tools; start `hvtrace session` on it; let the scripted
// attacker (scripts/attacker: OpenSSH's ssh -tt through a pseudo-terminal, typing at human speed)
// log in and work; stop the watcher; print the session as reconstructed from outside (transcript,
// the .cast and .jsonl paths) and what watching cost; shut down cleanly.
// `hvtrace run -c CMD` is the lab's first job: boot, run CMD over SSH, list the processes from
// guest memory, report the timings. The VM lives only as long as this process (RAII + PDEATHSIG).
#include "commands.hpp"
#include "guest_view.hpp"
#include "session_watcher.hpp"
#include "vm_options.hpp"

#include "bench/host.hpp"

#include "vm/file_server.hpp"
#include "vm/process.hpp"
#include "vm/vm.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <thread>

namespace hvtrace::tools {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
namespace fs = vm::fs;

struct Opts {
  VmOptions vm;
  std::string command;  // -c: the lab job instead of the honeypot
  unsigned timeout_s = 600;
  std::string script;
  std::string attacker;
  std::string serve_dir;
  std::string out_dir;
  std::string typing = "20-100";
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void run_lab_job(Opts& o) {
  auto config = resolve_vm_options(o.vm);
  auto vm = value_or_throw(vm::Vm::start(std::move(config), print_progress));
  const auto& rec = vm->record();

  print_progress(fmt::format("running in the guest: {}", o.command));
  const auto t0 = Clock::now();
  const auto r = value_or_throw(vm->exec(o.command, std::chrono::seconds{o.timeout_s}));
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

  fmt::print("--- output of `{}` ---\n", o.command);
  std::fwrite(r.out.data(), 1, r.out.size(), stdout);
  if (!r.err.empty()) {
    fmt::print("--- stderr ---\n");
    std::fwrite(r.err.data(), 1, r.err.size(), stdout);
  }
  std::vector<ProcessRow> rows;
  std::size_t kernel_threads = 0;
  for (const auto& p : procs) {
    if (p.kernel_thread) ++kernel_threads;
    else rows.emplace_back().p = &p;
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
}

void run_honeypot(Opts& o) {
  // What the demo needs from the repository, found before anything starts.
  const fs::path src = source_dir();
  const fs::path attacker = !o.attacker.empty() ? fs::path(o.attacker) : src / "scripts" / "attacker";
  const fs::path script = !o.script.empty() ? fs::path(o.script) : src / "guest" / "attacker" / "default.session";
  const fs::path serve = !o.serve_dir.empty() ? fs::path(o.serve_dir) : script.parent_path();
  if (!fs::is_regular_file(attacker))
    throw UserError(fmt::format("the scripted attacker {} is missing (set HVTRACE_SOURCE_DIR to the repository or "
                                "give --attacker)",
                                attacker.string()));
  if (!fs::is_regular_file(script)) throw UserError(fmt::format("attacker script {} not found", script.string()));
  fs::path out = o.out_dir;
  if (out.empty()) {
    char stamp[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
    out = fs::path("hvtrace-sessions") / stamp;
  }
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) throw UserError(fmt::format("cannot create {}: {}", out.string(), ec.message()));
  out = fs::absolute(out);

  // The attacker's tool server, reachable from the guest only as http://10.0.2.100/.
  auto server = value_or_throw(vm::FileServer::start(serve));
  o.vm.monitor = true;
  o.vm.guest_forwards.push_back(fmt::format("tcp:10.0.2.100:80-127.0.0.1:{}", server->port()));
  auto config = resolve_vm_options(o.vm);
  const fs::path passwords = config.image.dir / "passwords";
  print_progress(fmt::format("serving {} to the guest as http://10.0.2.100/ (127.0.0.1:{}; nothing else is reachable "
                             "from the guest)",
                             serve.string(), server->port()));
  auto vm = value_or_throw(vm::Vm::start(std::move(config), print_progress));
  const auto& rec = vm->record();

  print_progress(fmt::format("starting `hvtrace session --vm {} -o {}`", rec.name, out.string()));
  SessionWatcher watcher(rec.name, out, rec.run_dir / "session.out", rec.run_dir / "session.log");
  if (!watcher.wait_ready(180s)) {
    const std::string log = watcher.log();
    throw UserError(fmt::format("hvtrace session did not start watching the guest:\n{}", log.empty() ? "(no output)" : log));
  }
  const double qemu_cpu0 = bench::process_cpu_seconds(rec.qemu_pid);
  const auto t0 = Clock::now();

  print_progress(fmt::format("the attacker logs in with `ssh -tt` through a pseudo-terminal and types {} ({}-ms keys)",
                             script.filename().string(), o.typing));
  const fs::path screen = out / "attacker-screen.txt";
  vm::ProcessIo io;
  io.tee_stderr = true;  // its progress lines
  auto a = vm::run_process({"python3", attacker.string(), "--port", std::to_string(rec.ssh_port), "--password-file",
                            passwords.string(), "--delay", o.typing, "--screen", screen.string(), "-q", script.string()},
                           std::chrono::seconds{o.timeout_s}, 1u << 20, io);
  const double session_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const double qemu_cpu = bench::process_cpu_seconds(rec.qemu_pid) - qemu_cpu0;

  std::this_thread::sleep_for(1s);  // the last events of the logout
  print_progress("stopping the session watcher (SIGINT: it flushes and closes every session)");
  const bool stopped = watcher.stop(60s);
  const std::string summary = watcher.output(), watcher_log = watcher.log();  // in the run directory
  print_progress("shutting down");
  const auto down = vm->shutdown();

  // The record, as reconstructed from outside.
  std::vector<fs::path> sessions;
  for (const auto& e : fs::directory_iterator(out, ec))
    if (e.is_directory() && fs::exists(e.path() / "transcript.txt")) sessions.push_back(e.path());
  // In the order they started (the transcript's "start <ISO time>" line sorts as text).
  auto started = [](const fs::path& s) {
    const std::string t = read_file(s / "transcript.txt");
    const auto at = t.find("\nstart ");
    return at == std::string::npos ? std::string() : t.substr(at, t.find('\n', at + 1) - at);
  };
  std::sort(sessions.begin(), sessions.end(),
            [&](const fs::path& x, const fs::path& y) { return started(x) < started(y); });
  for (const auto& s : sessions) {
    fmt::print("--- session {}: transcript, reconstructed from outside the guest ---\n", s.filename().string());
    const std::string t = read_file(s / "transcript.txt");
    std::fwrite(t.data(), 1, t.size(), stdout);
    if (!t.empty() && t.back() != '\n') fmt::print("\n");
  }
  fmt::print("---\n");
  for (const auto& s : sessions) {
    fmt::print("{:<14} {}   (asciinema play / asciinema cat)\n", "terminal", (s / "session.cast").string());
    fmt::print("{:<14} {}   (Cowrie-style JSON Lines)\n", "events", (s / "events.jsonl").string());
  }
  fmt::print("{:<14} {}\n", "client screen", screen.string());
  if (sessions.empty()) fmt::print("no session was recorded in {}\n", out.string());
  fmt::print("--- what watching cost (hvtrace session) ---\n");
  std::fwrite(summary.data(), 1, summary.size(), stdout);
  fmt::print("{:<14} {:.2f} s of QEMU CPU time during the {:.1f} s session (guest and monitor together); "
             "hvtrace session itself: {:.2f} s CPU\n",
             "CPU", qemu_cpu, session_s, watcher.cpu_seconds());
  fmt::print("{:<14} {:.2f} s\n", "boot to SSH", rec.boot_seconds);
  fmt::print("{:<14} {}\n", "shutdown", down ? "clean poweroff" : down.error().message);

  int code = 0;
  if (!a) {
    fmt::print(stderr, "hvtrace: error: the attacker did not finish: {}\n", a.error().message);
    code = 1;
  } else if (a->exit_code != 0) {
    fmt::print(stderr, "hvtrace: error: the attacker exited with {}\n", a->exit_code);
    code = 1;
  }
  if (!stopped || !WIFEXITED(watcher.status()) || WEXITSTATUS(watcher.status()) != 0) {
    fmt::print(stderr, "hvtrace: error: hvtrace session {}:\n{}\n",
               stopped ? vm::describe_wait_status(watcher.status()) : "did not stop within 60 s", watcher_log);
    code = 1;
  }
  exit_code() = code ? code : (down ? 0 : 1);
}

}  // namespace

void add_run_command(CLI::App& app) {
  auto o = std::make_shared<Opts>();
  o->vm.config.name = "run";
  auto* cmd = app.add_subcommand(
      "run", "The honeypot: boot a guest, watch it with `hvtrace session` while a scripted attacker logs in over "
             "SSH, print the reconstructed session and what it cost, shut down (-c CMD: run one command instead)");
  add_vm_options(*cmd, o->vm);
  cmd->add_option("--script", o->script, "attacker script (default: guest/attacker/default.session)");
  cmd->add_option("--attacker", o->attacker, "the scripted attacker program (default: scripts/attacker)");
  cmd->add_option("--serve", o->serve_dir,
                  "directory served to the guest as http://10.0.2.100/ (default: the script's directory)");
  cmd->add_option("-o,--output-dir", o->out_dir, "where the sessions go (default: hvtrace-sessions/<date-time>)");
  cmd->add_option("--typing", o->typing, "milliseconds per key, MIN-MAX")->capture_default_str()->check(typing_error);
  cmd->add_option("-c,--command", o->command,
                  "instead of the honeypot: run this shell command in the guest (as root), list the guest's processes "
                  "from its memory and report the timings");
  cmd->add_option("--timeout", o->timeout_s, "seconds before the command or the attacker is abandoned")
      ->capture_default_str();
  cmd->callback([o] {
    if (!o->command.empty()) run_lab_job(*o);
    else run_honeypot(*o);
  });
}

}  // namespace hvtrace::tools
