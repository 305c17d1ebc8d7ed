// hvtrace bench: the paper's Table 1 reproduced on hvtrace, and raced against what a user would
// pick instead (the guest's own strace, and VMI through QEMU's gdb stub).
//   table1  the jansson unzip+compile workload run by the login shell of an SSH session, the
//           shell's read/write/open/openat/close/execve monitored by each column in turn:
//           none, none2 (A/A), idle plugin, methods 2-5 through `hvtrace trace`, strace -f in the
//           guest, and a gdb-stub tracer (lib/bench/gdb_rsp.hpp). Interleaved rounds, rotated
//           order, warm-ups, bootstrap confidence intervals; writes results.json, table1.md and
//           table1.svg (gnuplot).
//   events  the cost of one delivered event, per kind, on a guest loop of getppid() calls.
//   scale   N guests running the workload at once, each untraced and traced (method 5).
//   session `hvtrace session` (issue 9) and its --publish (issue 11): a scripted SSH session that
//           runs the workload, unwatched, watched with --follow, and watched + published to a local
//           NATS JetStream; QEMU CPU ratios with bootstrap intervals, events lost, the watcher's own
//           --follow latency and RSS, and a long session's RSS over time (--minutes).
#include "commands.hpp"
#include "guest_view.hpp"
#include "session_watcher.hpp"
#include "vm_options.hpp"

#include "bench/gdb_rsp.hpp"
#include "bench/host.hpp"
#include "bench/report.hpp"
#include "bench/scale_report.hpp"
#include "bench/session_report.hpp"
#include "bench/stats.hpp"
#include "common/result.hpp"
#include "events/event_reader.hpp"
#include "hvtrace/abi/events.h"
#include "mem/phys_mem.hpp"
#include "publish/local_nats.hpp"
#include "vm/process.hpp"
#include "vm/vm.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <netinet/in.h>
#include <nlohmann/json.hpp>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifndef HVTRACE_SOURCE_DIR
#define HVTRACE_SOURCE_DIR ""
#endif

namespace hvtrace::tools {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

const std::vector<std::string> kAllColumns = {"none", "none2", "idle", "m2", "m3", "m4", "m5", "strace", "gdbstub"};

struct Table1Options {
  std::string out_dir = "bench-table1";
  unsigned rounds = 3;
  unsigned iterations = 10;
  std::string methods;             // comma list; empty: all columns
  std::string pti = "both";
  bool quick = false;
  bool warmup_each = true;         // an untimed run before every timed one (every run is a method switch)
  std::uint64_t gdbstub_max_hits = 0;   // 0: trace the whole run; else detach after this many hits (--quick)
  std::string image;
  unsigned boot_timeout_s = 180;
  std::vector<std::string> monitor_args;   // extra monitor plugin arguments (bench session --icount: icount=on)
};

// ---- small host-side helpers ------------------------------------------------------------------

double qemu_cpu_seconds(pid_t pid) { return bench::process_cpu_seconds(pid); }

std::string first_line_of(const std::string& path, const std::string& prefix) {
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);)
    if (line.rfind(prefix, 0) == 0) return line;
  return {};
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  std::size_t b = 0;
  while (b < s.size() && s[b] == ' ') ++b;
  return s.substr(b);
}

std::string duration_text(double s) {
  if (s < 0 || std::isnan(s)) return "?";
  const auto t = static_cast<long>(s + 0.5);
  return t >= 3600 ? fmt::format("{}h{:02}m", t / 3600, t / 60 % 60) : fmt::format("{}m{:02}s", t / 60, t % 60);
}

std::uint16_t free_tcp_port() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  std::uint16_t port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 && getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0)
    port = ntohs(sa.sin_port);
  close(fd);
  return port;
}

std::string self_exe() {
  std::error_code ec;
  std::string p = vm::fs::read_symlink("/proc/self/exe", ec).string();
  if (ec) return "hvtrace";
  // Rebuilt while the bench runs: the kernel names the old file "... (deleted)"; use the new one.
  if (p.ends_with(" (deleted)")) p.resize(p.size() - 10);
  return p;
}

// "jansson-workload: ok: 1 iteration(s), 9 files compiled each, 1.23 s"
std::optional<double> parse_workload_seconds(const std::string& out) {
  const auto p = out.find("jansson-workload: ok:");
  if (p == std::string::npos) return std::nullopt;
  const std::string line = out.substr(p, out.find('\n', p) - p);
  const auto s = line.rfind(", ");
  if (s == std::string::npos || !line.ends_with(" s")) return std::nullopt;
  try {
    return std::stod(line.substr(s + 2, line.size() - s - 4));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// The "total" line of a -c table (strace's or hvtrace's): % time, seconds, usecs/call, calls, errors, total.
std::optional<double> parse_total_calls(const std::string& text) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::istringstream w(line);
    std::vector<std::string> tok;
    for (std::string t; w >> t;) tok.push_back(t);
    if (tok.size() >= 5 && tok.back() == "total") {
      try {
        return std::stod(tok[3]);
      } catch (const std::exception&) {
        return std::nullopt;
      }
    }
  }
  return std::nullopt;
}

// "  CR3 events delivered               123" from hvtrace trace -c's monitor block.
std::optional<double> parse_monitor_line(const std::string& text, const std::string& label) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const auto p = line.find(label);
    if (p == std::string::npos || trim(line.substr(0, p)) != "") continue;
    try {
      return std::stod(trim(line.substr(p + label.size())));
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

// ---- the lab: one VM without the plugin (none, strace, gdb stub), one with the monitor ----------

struct Guest {
  std::unique_ptr<vm::Vm> vm;
  bool monitor = false;
  std::uint16_t gdb_port = 0;
  std::unique_ptr<events::EventReader> reader;   // monitor only: ring counters and the filter generation
  std::optional<GuestView> view;                 // attached on first use (gdb stub: symbols, DTBs)
  std::vector<bench::RspRegister> rsp_regs;      // the gdb stub's register layout, learnt once
};

Result<std::unique_ptr<Guest>> boot_guest(const std::string& name, bool monitor, bool pti_on, const Table1Options& o,
                                          const vm::GuestImage& image) {
  auto g = std::make_unique<Guest>();
  vm::VmConfig c;
  c.name = name;
  c.image = image;
  c.boot_timeout = std::chrono::seconds{o.boot_timeout_s};
  if (pti_on) c.kernel_args.push_back("pti=on");
  if (monitor) {
    const auto so = default_monitor_path();
    if (!vm::fs::is_regular_file(so))
      return make_error("monitor plugin {} not found (build it, or set HVTRACE_MONITOR)", so.string());
    c.plugin = vm::monitor_plugin(so, name, o.monitor_args);
  } else {
    g->gdb_port = free_tcp_port();
    if (g->gdb_port == 0) return make_error("no free TCP port for the gdb stub");
    c.extra_qemu_args = {"-gdb", fmt::format("tcp:127.0.0.1:{}", g->gdb_port)};
  }
  g->monitor = monitor;
  auto v = vm::Vm::start(c);
  if (!v) return std::move(v).error();
  g->vm = std::move(v).value();
  if (monitor) {
    auto r = events::EventReader::open(vm::monitor_files(name).rings, 10s);
    if (!r) return std::move(r).error();
    g->reader = std::move(r).value();
  }
  return g;
}

std::uint64_t published_events(const Guest& g) {
  if (!g.reader) return 0;
  std::uint64_t n = 0;
  for (unsigned i = 0; i < g.reader->rings(); ++i) n += g.reader->stats(i).published;
  return n;
}

// ---- one run ----------------------------------------------------------------------------------

const char* kDir = "/tmp/hvbench";

// What the traced shell runs, which of its calls are monitored, and how it reports its time.
struct Workload {
  std::string body;              // run by the shell itself once released
  std::string trace_set;         // hvtrace trace / strace: -e trace=...
  std::set<std::uint64_t> nrs;   // the same calls by x86-64 number (the gdb-stub tracer filters by itself)
  std::function<std::optional<double>(const std::string&)> guest_seconds;
};

// The paper's: the shell unpacks jansson and compiles it with tcc (sourced: the shell itself forks
// unzip and tcc), its read, write, open, openat, close and execve monitored.
Workload jansson_workload(unsigned iterations) {
  return {fmt::format("set -- {}; . /usr/local/bin/jansson-workload", iterations), "read,write,open,openat,close,execve",
          {0, 1, 2, 3, 257, 59}, parse_workload_seconds};
}

// `hvtrace bench events`: the shell becomes a loop of `calls` getppid() calls (compiled in the guest by tcc).
const char* kLoopSource = R"(#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char** argv) {
  long n = argc > 1 ? atol(argv[1]) : 1000;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; ++i) getppid();
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("hvb-loop: %ld calls in %.6f s\n", n, (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
  return 0;
}
)";
Workload getppid_loop(unsigned calls) {
  return {fmt::format("exec /usr/local/bin/hvb-loop {}", calls), "getppid", {110},
          [](const std::string& out) -> std::optional<double> {
            const auto p = out.find(" calls in ");
            if (p == std::string::npos) return std::nullopt;
            try {
              return std::stod(out.substr(p + 10));
            } catch (const std::exception&) {
              return std::nullopt;
            }
          }};
}

std::string workload_shell(const Workload& w) {
  // The SSH session's shell (root's login shell, bash) announces its pid, blocks on a FIFO until
  // the tracer is in place, then runs the workload.
  return fmt::format("echo $$ >{0}/pid; read go <{0}/go; {1}", kDir, w.body);
}

struct Running {
  std::future<Result<vm::ExecResult>> shell;
  std::uint32_t pid = 0;
};

Result<Running> start_shell(Guest& g, const Workload& w) {
  const auto rec = g.vm->record();
  auto prep = vm::ssh_exec(rec, fmt::format("rm -rf {0} && mkdir {0} && mkfifo {0}/go", kDir), 60s);
  if (!prep) return std::move(prep).error();
  if (prep->exit_status != 0) return make_error("preparing {} in the guest: {}", kDir, prep->err);
  Running r;
  const std::string cmd = workload_shell(w);
  r.shell = std::async(std::launch::async, [rec, cmd] { return vm::ssh_exec(rec, cmd, std::chrono::hours{6}); });
  const auto give_up = Clock::now() + 60s;
  while (Clock::now() < give_up && !vm::termination_requested()) {
    if (r.shell.wait_for(0s) == std::future_status::ready) {
      auto res = r.shell.get();
      return make_error("the workload shell ended before it started: {}", res ? res->out + res->err : res.error().message);
    }
    auto pid = vm::ssh_exec(rec, fmt::format("cat {}/pid 2>/dev/null", kDir), 30s);
    if (pid && pid->exit_status == 0 && !trim(pid->out).empty()) {
      try {
        r.pid = static_cast<std::uint32_t>(std::stoul(trim(pid->out)));
        return r;
      } catch (const std::exception&) {
      }
    }
    std::this_thread::sleep_for(100ms);
  }
  return make_error("the workload shell did not announce its pid within 60 s");
}

Result<void> release_shell(Guest& g) {
  auto go = vm::ssh_exec(g.vm->record(), fmt::format("echo go >{}/go", kDir), 60s);
  if (!go) return std::move(go).error();
  if (go->exit_status != 0) return make_error("could not start the workload: {}", go->err);
  return {};
}

// The gdb-stub tracer: a breakpoint at the kernel's 64-bit syscall entry; at every hit the
// registers (syscall number in rax) and CR3 come over the GDB remote protocol, the process filter
// (CR3's page-table base against the shell's) runs here, then one step over the breakpoint and on.
struct GdbTracer {
  std::atomic<bool> stop{false};
  std::atomic<bool> ready{false};
  std::set<std::uint64_t> nrs;  // the monitored calls
  std::uint64_t max_hits = 0;   // 0: no limit
  bool partial = false;         // detached at max_hits, before the workload ended
  std::uint64_t hits = 0, matched = 0, round_trips = 0;
  double paused_ms = 0;
  std::string error;
  std::thread t;

  void start(Guest& g, std::uint64_t entry_va, std::uint64_t shell_dtb) {
    t = std::thread([this, &g, entry_va, shell_dtb] {
      auto r = run(g, entry_va, shell_dtb);
      if (!r) error = r.error().message;
      ready = true;
    });
  }
  Result<void> run(Guest& g, std::uint64_t entry_va, std::uint64_t shell_dtb) {
    auto c = bench::RspClient::connect("127.0.0.1", g.gdb_port, 10s);
    if (!c) return std::move(c).error();
    auto& rsp = *c;
    HVTRACE_TRY(rsp.handshake());
    if (g.rsp_regs.empty()) {
      auto regs = rsp.target_registers();
      if (!regs) return std::move(regs).error();
      g.rsp_regs = std::move(regs).value();
    }
    const auto find = [&](const char* n) -> const bench::RspRegister* {
      for (const auto& r : g.rsp_regs)
        if (r.name == n) return &r;
      return nullptr;
    };
    const auto* rax = find("rax");
    const auto* cr3 = find("cr3");
    if (rax == nullptr || cr3 == nullptr) return make_error("the gdb stub's target description has no rax or cr3");
    HVTRACE_TRY(rsp.insert_breakpoint(entry_va));
    ready = true;
    Result<void> result;
    while (!stop.load()) {
      auto s = rsp.cont([this] { return !stop.load(); });
      if (!s) {
        result = std::move(s).error();
        break;
      }
      if (stop.load()) break;   // the stop we asked for (or a hit racing it: not counted)
      if (s->empty() || (s->front() != 'T' && s->front() != 'S')) {
        result = make_error("the gdb stub reported '{}'", s->substr(0, 16));
        break;
      }
      const auto t0 = Clock::now();
      ++hits;
      auto regs = rsp.read_registers();
      if (!regs) {
        result = std::move(regs).error();
        break;
      }
      auto nr = bench::rsp_le_hex(*regs, rax->offset, 8);
      std::optional<std::uint64_t> cr3v = bench::rsp_le_hex(*regs, cr3->offset, 8);
      if (!cr3v) {   // not in the g packet: ask for it alone
        auto v = rsp.read_register(cr3->regnum);
        if (!v) {
          result = std::move(v).error();
          break;
        }
        cr3v = *v;
      }
      if (nr && abi::dtb_of_cr3(*cr3v) == shell_dtb && nrs.count(*nr)) ++matched;
      // QEMU does not report a breakpoint while single-stepping: one step leaves it behind.
      auto st = rsp.step();
      if (!st) {
        result = std::move(st).error();
        break;
      }
      paused_ms += std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (max_hits != 0 && hits >= max_hits) {
        partial = true;
        break;
      }
    }
    round_trips = rsp.round_trips();
    // Leave the guest running and free of us, whatever happened above.
    (void)rsp.remove_breakpoint(entry_va);
    (void)rsp.detach();
    return result;
  }
  void finish() {
    stop = true;
    if (t.joinable()) t.join();
  }
};

json run_column(const std::string& col, Guest& g, const Workload& w, std::uint64_t gdb_max_hits) {
  json run = {{"column", col}, {"ok", false}};
  const auto rec = g.vm->record();
  auto shell = start_shell(g, w);
  if (!shell) {
    run["error"] = shell.error().message;
    return run;
  }
  run["shell_pid"] = shell->pid;
  const std::string set = "trace=" + w.trace_set;
  std::future<Result<vm::ProcessResult>> tracer;
  std::future<Result<vm::ExecResult>> strace;
  GdbTracer gdb;
  std::string trace_out;
  std::string failure;
  const auto wait_until = [](auto&& cond, std::chrono::seconds limit) {
    const auto end = Clock::now() + limit;
    while (Clock::now() < end && !vm::termination_requested()) {
      if (cond()) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  };

  if (col[0] == 'm') {
    // The real tool's code path: `hvtrace trace --method N -p <shell> -e trace=... -c`.
    trace_out = (vm::fs::path(rec.run_dir) / "bench-trace.txt").string();
    const std::vector<std::string> argv = {self_exe(), "trace", "--vm", rec.name, "--method", col.substr(1), "-p",
                                           std::to_string(shell->pid), "-e", set, "-c", "-o", trace_out};
    const std::uint32_t gen0 = g.reader->generation();
    tracer = std::async(std::launch::async, [argv] { return vm::run_process(argv, std::chrono::hours{6}); });
    // Ready when the tracer's filter is in force: the generation moved and then held still.
    std::uint32_t last = gen0;
    auto still_since = Clock::now();
    const bool ready = wait_until(
        [&] {
          if (tracer.wait_for(0s) == std::future_status::ready) return true;
          const std::uint32_t gen = g.reader->generation();
          if (gen != last) {
            last = gen;
            still_since = Clock::now();
          }
          return gen != gen0 && Clock::now() - still_since > 400ms;
        },
        60s);
    if (tracer.wait_for(0s) == std::future_status::ready) {
      auto r = tracer.get();
      failure = fmt::format("hvtrace trace ended before the workload: {}", r ? r->err : r.error().message);
    } else if (!ready) {
      failure = "hvtrace trace did not set its filter within 60 s";
    }
  } else if (col == "strace") {
    const std::string cmd = fmt::format("strace -f -c -o {0}/strace.out -e {1} -p {2} 2>{0}/strace.err", kDir, set, shell->pid);
    strace = std::async(std::launch::async, [rec, cmd] { return vm::ssh_exec(rec, cmd, std::chrono::hours{6}); });
    const bool ready = wait_until(
        [&] {
          if (strace.wait_for(0s) == std::future_status::ready) return true;
          auto r = vm::ssh_exec(rec, fmt::format("grep -c attached {}/strace.err 2>/dev/null", kDir), 30s);
          return r && trim(r->out) != "" && trim(r->out) != "0";
        },
        60s);
    if (!ready || strace.wait_for(0s) == std::future_status::ready) failure = "strace did not attach to the shell";
  } else if (col == "gdbstub") {
    try {
      if (!g.view) g.view.emplace(attach_guest(value_or_throw(mem::open_ram_file(rec.ram_path))));
      const auto entry = g.view->kernel->symbol("entry_SYSCALL_64");
      auto p = g.view->os->find_pid(Pid{static_cast<std::int32_t>(shell->pid)});
      if (!entry) failure = "entry_SYSCALL_64 is not in the guest's kallsyms";
      else if (!p || !*p || !(*p)->dtb) failure = fmt::format("the shell (pid {}) was not found in guest memory", shell->pid);
      else {
        run["shell_dtb"] = fmt::format("{:#x}", (*p)->dtb->value);
        run["breakpoint"] = fmt::format("entry_SYSCALL_64 = {:#x}", entry->value);
        gdb.max_hits = gdb_max_hits;
        gdb.nrs = w.nrs;
        gdb.start(g, entry->value, (*p)->dtb->value);
        (void)wait_until([&] { return gdb.ready.load(); }, 60s);
        if (!gdb.ready.load()) failure = "the gdb stub tracer did not get ready within 60 s";
        else if (!gdb.error.empty()) failure = gdb.error;
      }
    } catch (const std::exception& e) {
      failure = e.what();
    }
  }

  const std::uint64_t published0 = published_events(g);
  const pid_t qpid = rec.qemu_pid;
  const double cpu0 = qemu_cpu_seconds(qpid);
  const auto t0 = Clock::now();
  if (auto r = release_shell(g); !r && failure.empty()) failure = r.error().message;
  auto out = shell->shell.get();
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu = qemu_cpu_seconds(qpid) - cpu0;
  const std::uint64_t published = published_events(g) - published0;
  gdb.finish();

  run["wall_s"] = wall;
  run["qemu_cpu_s"] = cpu;
  if (!out) failure = failure.empty() ? out.error().message : failure;
  else if (out->exit_status != 0) failure = failure.empty() ? fmt::format("workload failed: {}{}", out->out, out->err) : failure;
  else if (auto s = w.guest_seconds(out->out)) run["guest_s"] = *s;
  else failure = failure.empty() ? fmt::format("no time in the workload's output: {}", out->out) : failure;

  if (col == "none" || col == "none2") {
    run["events_delivered"] = 0;   // no plugin, nobody watching
  } else if (col == "idle") {
    run["events_delivered"] = published;
  } else if (col[0] == 'm' && tracer.valid()) {
    if (tracer.wait_for(120s) != std::future_status::ready) {
      failure = failure.empty() ? "hvtrace trace did not end within 120 s of the shell's exit" : failure;
    } else {
      auto r = tracer.get();
      if (!r) failure = failure.empty() ? r.error().message : failure;
      else if (r->exit_code != 0) failure = failure.empty() ? fmt::format("hvtrace trace exited {}: {}", r->exit_code, trim(r->err)) : failure;
      const std::string text = read_text(trace_out);
      run["trace_summary"] = text;
      if (auto v = parse_total_calls(text)) run["monitored_calls"] = *v;
      if (auto v = parse_monitor_line(text, "CR3 events delivered")) run["cr3_events"] = *v;
      if (auto v = parse_monitor_line(text, "synchronous pauses")) run["sync_pauses"] = *v;
      if (auto v = parse_monitor_line(text, "time paused for them (ms)")) run["sync_pause_ms"] = *v;
      if (auto v = parse_monitor_line(text, "syscall entries delivered")) run["syscall_entries"] = *v;
      double lost = 0;
      for (const char* l : {"lost: ring full", "lost: record too big", "lost: no consumer", "lost: bad consumer tail"})
        lost += parse_monitor_line(text, l).value_or(0);
      run["lost"] = lost;
      run["events_delivered"] = published;
    }
  } else if (col == "strace" && strace.valid()) {
    if (strace.wait_for(120s) != std::future_status::ready) {
      failure = failure.empty() ? "strace did not end within 120 s of the shell's exit" : failure;
    } else {
      (void)strace.get();
      auto r = vm::ssh_exec(rec, fmt::format("cat {}/strace.out", kDir), 60s);
      if (r && r->exit_status == 0) {
        run["trace_summary"] = r->out;
        if (auto v = parse_total_calls(r->out)) run["monitored_calls"] = *v;
        else failure = failure.empty() ? "no total in strace -c's table" : failure;
      } else {
        failure = failure.empty() ? "could not read strace's table" : failure;
      }
      run["monitored_calls_scope"] = "the shell and its children (strace -f)";
    }
  } else if (col == "gdbstub") {
    if (!gdb.error.empty() && failure.empty()) failure = gdb.error;
    run["monitored_calls"] = gdb.matched;
    run["events_delivered"] = gdb.hits;
    run["cr3_events"] = 0;
    run["sync_pauses"] = gdb.hits;
    run["sync_pause_ms"] = gdb.paused_ms;
    run["rsp_round_trips"] = gdb.round_trips;
    if (gdb.partial) {
      run["partial"] = true;
      run["note"] = fmt::format("detached after {} breakpoint hits (--gdbstub-max-hits); counts and times cover only part of the run",
                                gdb.hits);
    }
    run["lost"] = 0;
  }
  if (failure.empty()) run["ok"] = true;
  else run["error"] = failure;
  return run;
}

// An untimed run of the workload, nobody watching: after every boot and before every timed run.
void warm_up(Guest& g, unsigned iterations) {
  (void)g.vm->exec(fmt::format("jansson-workload {}", iterations), std::chrono::seconds{3600});
}

// ---- machine and versions ---------------------------------------------------------------------

json machine_info() {
  json m;
  const std::string cpu = first_line_of("/proc/cpuinfo", "model name");
  m["cpu_model"] = cpu.empty() ? "?" : trim(cpu.substr(cpu.find(':') + 1));
  m["cpus"] = std::thread::hardware_concurrency();
  utsname u{};
  if (uname(&u) == 0) {
    m["host_kernel"] = std::string(u.release);
    m["hostname"] = std::string(u.nodename);
  }
  m["loadavg_start"] = trim(read_text("/proc/loadavg"));
  return m;
}

std::string qemu_version() {
  auto r = vm::run_process({"qemu-system-x86_64", "--version"}, 10s);
  if (!r || r->exit_code != 0) return "?";
  return trim(r->out.substr(0, r->out.find('\n')));
}

std::string hvtrace_version() {
  std::string v = "0.1.0";
  if (std::string(HVTRACE_SOURCE_DIR).empty()) return v;
  auto r = vm::run_process({"git", "-C", HVTRACE_SOURCE_DIR, "describe", "--always", "--dirty"}, 10s);
  if (r && r->exit_code == 0) v += " (" + trim(r->out) + ")";
  return v;
}

std::string now_text() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string command_line() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  while (!s.empty() && s.back() == '\0') s.pop_back();
  std::vector<std::string> words;
  std::string w;
  for (char c : s) {
    if (c == '\0') {
      words.push_back(w);
      w.clear();
    } else {
      w += c;
    }
  }
  words.push_back(w);
  if (!words.empty()) words[0] = "hvtrace";
  return vm::shell_quote_argv(words);
}

void write_file(const vm::fs::path& p, const std::string& text) {
  std::ofstream f(p);
  f << text;
  if (!f) throw UserError(fmt::format("cannot write {}", p.string()));
}

// One finished run's progress line; false (and the error) if it failed.
bool report_run(const std::string& who, const json& run) {
  if (!run.value("ok", false)) {
    fmt::print(stderr, "[bench]   {} FAILED: {}\n", who, run.value("error", "?"));
    return false;
  }
  fmt::print(stderr, "[bench]   {}: guest {:.2f} s, wall {:.2f} s, QEMU CPU {:.2f} s{}\n", who, run.value("guest_s", -1.0),
             run.value("wall_s", -1.0), run.value("qemu_cpu_s", -1.0),
             run.contains("monitored_calls") ? fmt::format(", monitored calls {}", run["monitored_calls"].dump()) : "");
  return true;
}

// The part of results.json every benchmark starts with.
json results_header(const std::string& schema, const std::string& guest_kernel) {
  json results;
  results["schema"] = schema;
  results["command"] = command_line();
  results["started"] = now_text();
  results["machine"] = machine_info();
  results["versions"] = {{"qemu", qemu_version()}, {"hvtrace", hvtrace_version()}, {"guest_kernel", guest_kernel}};
  return results;
}

void save_results(const vm::fs::path& dir, json& results) {
  results["finished"] = now_text();
  results["machine"]["loadavg_end"] = trim(read_text("/proc/loadavg"));
  write_file(dir / "results.json", results.dump(1) + "\n");
}

// The end of a benchmark: its report on stdout, inconsistent counts on stderr, and the exit status
// (130 after Ctrl-C, 1 if a run failed or a count is inconsistent).
void finish_report(const std::string& report, const std::vector<std::string>& problems, bool any_failed,
                   const std::string& written, Clock::time_point t_start) {
  fmt::print("{}", report);
  for (const auto& p : problems) fmt::print(stderr, "[bench] inconsistent: {}\n", p);
  fmt::print(stderr, "[bench] wrote {} in {}\n", written, duration_text(std::chrono::duration<double>(Clock::now() - t_start).count()));
  if (vm::termination_requested()) exit_code() = 130;
  else if (any_failed || !problems.empty()) exit_code() = 1;
}

// Writes table1.md, table1.dat, table1.gp and (with gnuplot) table1.svg next to results.json.
void write_report(const vm::fs::path& dir, const json& results) {
  const auto rep = bench::make_table1_report(results);
  write_file(dir / "table1.md", rep.markdown);
  write_file(dir / "table1.dat", rep.gnuplot_data);
  write_file(dir / "table1.gp", rep.gnuplot_script);
  auto r = vm::run_process({"sh", "-c", fmt::format("cd {} && gnuplot table1.gp", vm::shell_quote(dir.string()))}, 60s);
  if (!r || r->exit_code != 0)
    fmt::print(stderr, "[bench] note: no chart: gnuplot failed or is missing ({}); install gnuplot-nox (scripts/setup does)\n",
               r ? trim(r->err) : r.error().message);
}

// ---- table1 -----------------------------------------------------------------------------------

// A comma list of names from `known` (each kept once, in the order given; `alias` maps other
// spellings to a name), with `base` put first when missing: every ratio is taken against it.
std::vector<std::string> parse_name_list(const std::string& list, const std::vector<std::string>& known, const std::string& base,
                                         const std::string& option, const std::string& hint,
                                         const std::function<std::string(const std::string&)>& alias) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  for (std::string w; std::getline(ss, w, ',');) {
    w = alias(trim(w));
    if (w.empty()) continue;
    if (std::find(known.begin(), known.end(), w) == known.end())
      throw UserError(fmt::format("{}: unknown name '{}' (use {})", option, w, hint));
    if (std::find(out.begin(), out.end(), w) == out.end()) out.push_back(w);
  }
  if (out.empty()) throw UserError(fmt::format("{}: none given", option));
  if (std::find(out.begin(), out.end(), base) == out.end()) out.insert(out.begin(), base);
  return out;
}

std::vector<std::string> parse_columns(const std::string& list) {
  if (list.empty()) return kAllColumns;
  return parse_name_list(list, kAllColumns, "none", "--methods", "none,none2,idle,2,3,4,5,strace,gdbstub",
                         [](const std::string& w) { return w.size() == 1 && w[0] >= '2' && w[0] <= '5' ? "m" + w : w; });
}

void run_table1(Table1Options o) {
  vm::install_termination_handlers();
  if (o.quick) {
    o.rounds = 1;
    o.iterations = 1;
    o.pti = "off";
    o.warmup_each = false;
    // One gdb-stub hit costs ~15-25 ms here (QEMU's TCG retranslates after each resume), and one
    // iteration makes ~27,000 syscalls in the whole guest: the quick run samples the first hits.
    if (o.gdbstub_max_hits == 0) o.gdbstub_max_hits = 2000;
  }
  if (o.rounds == 0 || o.iterations == 0) throw UserError("--rounds and --iterations must be at least 1");
  std::vector<std::string> ptis;
  if (o.pti == "off" || o.pti == "on") ptis = {o.pti};
  else if (o.pti == "both") ptis = {"off", "on"};
  else throw UserError(fmt::format("--pti {}: use on, off or both", o.pti));
  const auto columns = parse_columns(o.methods);
  const auto img_dir = o.image.empty() ? vm::default_image_dir() : vm::image_dir(o.image);
  auto image = vm::load_image(img_dir);
  if (!image) throw UserError(fmt::format("{} (the default guest is built by `guest/build-image`)", image.error().message));
  const vm::fs::path dir = o.out_dir;
  std::error_code ec;
  vm::fs::create_directories(dir, ec);
  if (ec) throw UserError(fmt::format("-o {}: {}", o.out_dir, ec.message()));
  if (access(dir.c_str(), W_OK) != 0) throw UserError(fmt::format("-o {}: not writable", o.out_dir));
  const bool need_plain = std::any_of(columns.begin(), columns.end(), [](const std::string& c) {
    return c == "none" || c == "none2" || c == "strace" || c == "gdbstub";
  });
  const bool need_mon = std::any_of(columns.begin(), columns.end(), [](const std::string& c) { return c == "idle" || c[0] == 'm'; });

  json results = results_header("hvtrace-bench-table1/1", image->kernel_release);
  results["config"] = {{"rounds", o.rounds},     {"iterations", o.iterations}, {"columns", columns}, {"pti", ptis},
                       {"quick", o.quick},       {"warmup_each", o.warmup_each}, {"gdbstub_max_hits", o.gdbstub_max_hits},
                       {"note", "guest_s: the workload's own clock in the guest; wall_s: host time from releasing the shell to "
                                "the SSH session's end; qemu_cpu_s: utime+stime of QEMU over the same window"}};
  results["runs"] = json::array();
  const auto save = [&] { save_results(dir, results); };

  const std::size_t total_runs = ptis.size() * o.rounds * columns.size();
  std::size_t done_runs = 0;
  double run_seconds = 0;   // sum over finished runs (warm-ups included), for the estimate
  const auto t_start = Clock::now();
  const std::string tag = std::to_string(getpid() % 100000);
  bool any_failed = false;
  for (const auto& pti : ptis) {
    if (vm::termination_requested()) break;
    fmt::print(stderr, "[bench] pti={}: booting {}\n", pti,
               need_plain && need_mon ? "two guests (no plugin + gdb stub; monitor)" : "the guest");
    std::unique_ptr<Guest> plain, mon;
    if (need_plain) {
      auto g = boot_guest("hvb-plain-" + tag, false, pti == "on", o, *image);
      if (!g) throw UserError(fmt::format("booting the guest without plugin: {}", g.error().message));
      plain = std::move(g).value();
    }
    if (need_mon) {
      auto g = boot_guest("hvb-mon-" + tag, true, pti == "on", o, *image);
      if (!g) throw UserError(fmt::format("booting the guest with the monitor: {}", g.error().message));
      mon = std::move(g).value();
    }
    fmt::print(stderr, "[bench] pti={}: warm-up (untimed)\n", pti);
    if (plain) warm_up(*plain, 1);
    if (mon) warm_up(*mon, 1);
    for (unsigned round = 0; round < o.rounds && !vm::termination_requested(); ++round) {
      for (std::size_t k = 0; k < columns.size() && !vm::termination_requested(); ++k) {
        const std::string& col = columns[(k + round) % columns.size()];
        Guest& g = (col == "none" || col == "none2" || col == "strace" || col == "gdbstub") ? *plain : *mon;
        const double elapsed = std::chrono::duration<double>(Clock::now() - t_start).count();
        const double left = done_runs ? run_seconds / static_cast<double>(done_runs) * static_cast<double>(total_runs - done_runs) : -1;
        fmt::print(stderr, "[bench] pti={} round {}/{} run {}/{}: {:<8} (elapsed {}, ~{} left)\n", pti, round + 1, o.rounds,
                   done_runs + 1, total_runs, col, duration_text(elapsed), duration_text(left));
        const auto r0 = Clock::now();
        if (o.warmup_each) warm_up(g, 1);
        json run = run_column(col, g, jansson_workload(o.iterations), o.gdbstub_max_hits);
        run["pti"] = pti;
        run["round"] = round;
        run["order"] = k;
        run_seconds += std::chrono::duration<double>(Clock::now() - r0).count();
        ++done_runs;
        if (!report_run(col, run)) any_failed = true;
        results["runs"].push_back(std::move(run));
        save();
        if (!g.vm->running()) throw UserError(fmt::format("the guest's QEMU stopped ({})", g.vm->exit_reason()));
      }
    }
    fmt::print(stderr, "[bench] pti={}: shutting down\n", pti);
    if (plain) (void)plain->vm->shutdown();
    if (mon) {
      mon->reader.reset();
      (void)mon->vm->shutdown();
    }
  }
  save();
  write_report(dir, results);
  finish_report(read_text((dir / "table1.md").string()), bench::check_table1_counts(results), any_failed,
                fmt::format("{}/results.json, table1.md, table1.svg", dir.string()), t_start);
}

// ---- scale ------------------------------------------------------------------------------------

struct ScaleOptions {
  std::string out_dir = "bench-scale";
  std::string vms = "1,2,4";
  unsigned rounds = 3;
  unsigned iterations = 1;
  bool quick = false;
  unsigned boot_timeout_s = 300;
};

std::vector<unsigned> parse_vm_counts(const std::string& list) {
  std::vector<unsigned> out;
  std::stringstream in(list);
  std::string w;
  while (std::getline(in, w, ',')) {
    unsigned n = 0;
    try {
      std::size_t used = 0;
      n = static_cast<unsigned>(std::stoul(w, &used));
      if (used != w.size()) n = 0;
    } catch (const std::exception&) {
      n = 0;
    }
    if (n == 0 || n > 16) throw UserError(fmt::format("--vms {}: '{}' is not a guest count from 1 to 16", list, w));
    if (std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
  }
  if (out.empty()) throw UserError("--vms: give guest counts such as 1,2,4");
  std::sort(out.begin(), out.end());
  return out;
}

// The peak resident size of the `hvtrace trace` children while `running` holds, sampled.
class TracerRssSampler {
 public:
  TracerRssSampler() : thread_([this] {
      while (!stop_.load()) {   // (the host helpers never throw: processes come and go while sampled)
        for (const pid_t p : bench::child_processes(getpid(), "hvtrace")) {
          const unsigned long kib = bench::process_rss_kib(p);
          unsigned long seen = peak_.load();
          while (kib > seen && !peak_.compare_exchange_weak(seen, kib)) {
          }
        }
        std::this_thread::sleep_for(100ms);
      }
    }) {}
  ~TracerRssSampler() { finish(); }
  unsigned long finish() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
    return peak_.load();
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<unsigned long> peak_{0};
  std::thread thread_;
};

void run_scale(ScaleOptions o) {
  vm::install_termination_handlers();
  if (o.quick) {
    o.rounds = 1;
    o.iterations = 1;
    if (o.vms == "1,2,4") o.vms = "1,2";
  }
  if (o.rounds == 0 || o.iterations == 0) throw UserError("--rounds and --iterations must be at least 1");
  const auto counts = parse_vm_counts(o.vms);
  // Each guest needs its RAM (256 MiB) and QEMU's own memory (code cache up to a few hundred MiB).
  const unsigned long need_mib = counts.back() * 400ul;
  if (const std::string avail = first_line_of("/proc/meminfo", "MemAvailable:"); !avail.empty()) {
    const unsigned long have_mib = std::stoul(avail.substr(avail.find(':') + 1)) / 1024;
    if (have_mib < need_mib)
      throw UserError(fmt::format("--vms {}: {} guests need about {} MiB of memory, {} MiB are available", o.vms,
                                  counts.back(), need_mib, have_mib));
  }
  auto image = vm::load_image(vm::default_image_dir());
  if (!image) throw UserError(fmt::format("{} (the default guest is built by `guest/build-image`)", image.error().message));
  const vm::fs::path dir = o.out_dir;
  std::error_code ec;
  vm::fs::create_directories(dir, ec);
  if (ec) throw UserError(fmt::format("-o {}: {}", o.out_dir, ec.message()));
  if (access(dir.c_str(), W_OK) != 0) throw UserError(fmt::format("-o {}: not writable", o.out_dir));

  json results = results_header("hvtrace-bench-scale/1", image->kernel_release);
  results["config"] = {{"vms", counts}, {"rounds", o.rounds}, {"iterations", o.iterations}, {"quick", o.quick},
                       {"columns", {"idle", "m5"}},
                       {"note", "per run: one guest of a batch; idle: monitor loaded, nobody attached; m5: its shell traced by "
                                "hvtrace trace --method 5; tracer_peak_rss_kib: the largest hvtrace trace of the batch"}};
  results["runs"] = json::array();
  const auto save = [&] { save_results(dir, results); };
  Table1Options boot;
  boot.boot_timeout_s = o.boot_timeout_s;
  const std::string tag = std::to_string(getpid() % 100000);
  const auto t_start = Clock::now();
  bool any_failed = false;
  for (const unsigned n : counts) {
    if (vm::termination_requested()) break;
    fmt::print(stderr, "[bench] {} guest(s): booting (elapsed {})\n", n,
               duration_text(std::chrono::duration<double>(Clock::now() - t_start).count()));
    // One after the other, from this thread: QEMU dies with the thread that started it
    // (PR_SET_PDEATHSIG), so a booting thread must outlive its guest.
    std::vector<std::unique_ptr<Guest>> guests;
    for (unsigned i = 0; i < n && !vm::termination_requested(); ++i) {
      auto g = boot_guest(fmt::format("hvb-scale-{}-{}", tag, i), true, false, boot, *image);
      if (!g) throw UserError(fmt::format("booting guest {} of {}: {}", i + 1, n, g.error().message));
      guests.push_back(std::move(g).value());
    }
    if (guests.size() != n) break;
    fmt::print(stderr, "[bench] {} guest(s): warm-up (untimed)\n", n);
    {
      std::vector<std::future<void>> w;
      for (auto& g : guests) w.push_back(std::async(std::launch::async, [&g, &o] { warm_up(*g, o.iterations); }));
    }
    for (unsigned round = 0; round < o.rounds && !vm::termination_requested(); ++round) {
      for (unsigned k = 0; k < 2 && !vm::termination_requested(); ++k) {
        const std::string col = ((k + round) % 2 == 0) ? "idle" : "m5";
        fmt::print(stderr, "[bench] {} guest(s) round {}/{}: {} (elapsed {})\n", n, round + 1, o.rounds,
                   col == "m5" ? "each shell traced (method 5)" : "untraced",
                   duration_text(std::chrono::duration<double>(Clock::now() - t_start).count()));
        TracerRssSampler rss;
        std::vector<std::future<json>> batch;
        for (auto& g : guests)
          batch.push_back(std::async(std::launch::async, [&g, &col, &o] { return run_column(col, *g, jansson_workload(o.iterations), 0); }));
        std::vector<json> runs;
        for (auto& f : batch) runs.push_back(f.get());
        const unsigned long peak = rss.finish();
        for (unsigned i = 0; i < runs.size(); ++i) {
          json& run = runs[i];
          run["vms"] = n;
          run["guest"] = i;
          run["round"] = round;
          run["order"] = k;
          run["qemu_rss_kib"] = bench::process_rss_kib(guests[i]->vm->record().qemu_pid);
          if (col == "m5") run["tracer_peak_rss_kib"] = peak;
          if (!report_run(fmt::format("guest {}", i), run)) any_failed = true;
          results["runs"].push_back(std::move(run));
        }
        save();
        for (auto& g : guests)
          if (!g->vm->running()) throw UserError(fmt::format("a guest's QEMU stopped ({})", g->vm->exit_reason()));
      }
    }
    fmt::print(stderr, "[bench] {} guest(s): shutting down\n", n);
    for (auto& g : guests) {
      g->reader.reset();
      (void)g->vm->shutdown();
    }
  }
  save();
  const std::string md = bench::make_scale_report(results);
  write_file(dir / "scale.md", md);
  finish_report(md, bench::check_scale_counts(results), any_failed, fmt::format("{}/results.json and scale.md", dir.string()),
                t_start);
}

// ---- events -----------------------------------------------------------------------------------

struct EventsOptions {
  std::string out_dir = "bench-events";
  unsigned rounds = 3;
  unsigned calls = 20000;
  unsigned gdbstub_calls = 1000;
  std::string pti = "off";
  unsigned boot_timeout_s = 180;
};

Result<void> install_loop(Guest& g) {
  auto r = vm::ssh_exec(g.vm->record(),
                        fmt::format("cat >/tmp/hvb-loop.c <<'HVB_EOF'\n{}HVB_EOF\ntcc -o /usr/local/bin/hvb-loop /tmp/hvb-loop.c && "
                                    "/usr/local/bin/hvb-loop 10",
                                    kLoopSource),
                        120s);
  if (!r) return std::move(r).error();
  if (r->exit_status != 0) return make_error("compiling the getppid loop in the guest: {}{}", r->out, r->err);
  return {};
}

void run_events(const EventsOptions& o) {
  vm::install_termination_handlers();
  if (o.rounds == 0 || o.calls == 0 || o.gdbstub_calls == 0) throw UserError("--rounds, --calls and --gdbstub-calls must be at least 1");
  if (o.pti != "on" && o.pti != "off") throw UserError(fmt::format("--pti {}: use on or off", o.pti));
  auto image = vm::load_image(vm::default_image_dir());
  if (!image) throw UserError(fmt::format("{} (the default guest is built by `guest/build-image`)", image.error().message));
  const vm::fs::path dir = o.out_dir;
  std::error_code ec;
  vm::fs::create_directories(dir, ec);
  if (ec) throw UserError(fmt::format("-o {}: {}", o.out_dir, ec.message()));
  Table1Options boot;
  boot.boot_timeout_s = o.boot_timeout_s;
  const std::string tag = std::to_string(getpid() % 100000);
  fmt::print(stderr, "[bench] booting two guests (no plugin + gdb stub; monitor), pti={}\n", o.pti);
  auto plain = value_or_throw(boot_guest("hvb-ev-plain-" + tag, false, o.pti == "on", boot, *image));
  auto mon = value_or_throw(boot_guest("hvb-ev-mon-" + tag, true, o.pti == "on", boot, *image));
  value_or_throw(install_loop(*plain));
  value_or_throw(install_loop(*mon));
  // none/strace/gdbstub on the guest without plugin; idle/sync (method 4)/async (method 5) on the monitor's.
  const std::vector<std::string> kinds = {"none", "idle", "m4", "m5", "strace", "gdbstub"};
  json results = {{"schema", "hvtrace-bench-events/1"}, {"command", command_line()},        {"started", now_text()},
                  {"machine", machine_info()},          {"calls", o.calls},                 {"gdbstub_calls", o.gdbstub_calls},
                  {"pti", o.pti},                       {"rounds", o.rounds},               {"runs", json::array()}};
  const auto t0 = Clock::now();
  std::size_t done = 0;
  const std::size_t total = kinds.size() * o.rounds;
  for (unsigned round = 0; round < o.rounds && !vm::termination_requested(); ++round)
    for (std::size_t k = 0; k < kinds.size() && !vm::termination_requested(); ++k) {
      const std::string& kind = kinds[(k + round) % kinds.size()];
      Guest& g = (kind == "idle" || kind[0] == 'm') ? *mon : *plain;
      const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
      fmt::print(stderr, "[bench] round {}/{} run {}/{}: {:<8} (elapsed {}, ~{} left)\n", round + 1, o.rounds, done + 1, total, kind,
                 duration_text(elapsed), done ? duration_text(elapsed / static_cast<double>(done) * static_cast<double>(total - done)) : "?");
      json run = run_column(kind, g, getppid_loop(kind == "gdbstub" ? o.gdbstub_calls : o.calls), 0);
      run["round"] = round;
      run["calls"] = kind == "gdbstub" ? o.gdbstub_calls : o.calls;
      ++done;
      if (!run.value("ok", false)) fmt::print(stderr, "[bench]   {} FAILED: {}\n", kind, run.value("error", "?"));
      results["runs"].push_back(std::move(run));
    }
  mon->reader.reset();
  (void)plain->vm->shutdown();
  (void)mon->vm->shutdown();
  results["finished"] = now_text();
  results["machine"]["loadavg_end"] = trim(read_text("/proc/loadavg"));

  // Per round: the cost of one call / one delivered event against the round's baseline.
  const auto per_round = [&](const std::string& kind, const std::string& base, const char* key, bool per_event) {
    std::vector<double> v;
    for (unsigned r = 0; r < o.rounds; ++r) {
      const json *a = nullptr, *b = nullptr;
      for (const auto& x : results["runs"])
        if (x.value("round", 99u) == r && x.value("ok", false)) {
          if (x["column"] == kind) a = &x;
          if (x["column"] == base) b = &x;
        }
      if (!a || !b || !a->contains(key) || !b->contains(key)) continue;
      const double extra = (*a)[key].get<double>() - (*b)[key].get<double>();
      const double n = per_event ? a->value("events_delivered", 0.0) : a->value("calls", 0.0);
      if (n > 0) v.push_back(extra / n * 1e6);
    }
    return bench::summarize(v);
  };
  struct Row {
    const char* kind;
    const char* base;
    const char* key;
    const char* what;
  };
  const std::vector<Row> rows = {
      {"m4", "idle", "guest_s", "hvtrace synchronous event (method 4: entry and exit pause the guest)"},
      {"m5", "idle", "guest_s", "hvtrace asynchronous event (method 5)"},
      {"strace", "none", "guest_s", "in-guest strace -f stop (ptrace: entry and exit stops)"},
      {"gdbstub", "none", "wall_s", "gdb-stub breakpoint round trip (host wall: the guest clock stops with the VM)"},
  };
  std::string md = fmt::format("# hvtrace bench events\n\nA guest program makes a known number of getppid() calls ({} per run; {} under "
                               "the gdb stub); the same SSH login shell execs it after the tracer is attached. Cost = (time traced - "
                               "time of the baseline in the same round) / calls or / events delivered; median [min–max] of {} "
                               "round(s), pti={}. Baselines: `idle` (plugin loaded, nothing armed) for hvtrace, `none` for the "
                               "others.\n\nCommand: `{}`\n\n| event | µs per call | µs per delivered event | events per call |\n|---|---|---|---|\n",
                               o.calls, o.gdbstub_calls, o.rounds, o.pti, results.value("command", ""));
  json summary = json::object();
  for (const auto& r : rows) {
    const auto c = per_round(r.kind, r.base, r.key, false), e = per_round(r.kind, r.base, r.key, true);
    double events_per_call = std::nan("");
    for (const auto& x : results["runs"])
      if (x["column"] == r.kind && x.value("ok", false) && x.contains("events_delivered"))
        events_per_call = x["events_delivered"].get<double>() / x.value("calls", 1.0);
    const auto cell = [](const bench::Summary& s) {
      return s.n ? fmt::format("{:.2f} [{:.2f}–{:.2f}]", s.median, s.min, s.max) : std::string("–");
    };
    md += fmt::format("| {} | {} | {} | {} |\n", r.what, cell(c), cell(e),
                      std::isnan(events_per_call) ? "–" : fmt::format("{:.2f}", events_per_call));
    summary[r.kind] = {{"us_per_call", c.median}, {"us_per_event", e.median}, {"rounds", c.n}};
  }
  const double sync_ev = summary["m4"].value("us_per_event", 0.0), gdb_ev = summary["gdbstub"].value("us_per_event", 0.0);
  if (sync_ev > 0 && gdb_ev > 0)
    md += fmt::format("\nA gdb-stub round trip costs {:.0f}x a synchronous hvtrace event (issue 10's target: ≥ 100x).\n", gdb_ev / sync_ev);
  results["summary"] = summary;
  write_file(dir / "events.json", results.dump(1) + "\n");
  write_file(dir / "events.md", md);
  fmt::print("{}", md);
  fmt::print(stderr, "[bench] wrote {}/events.json and events.md\n", dir.string());
  if (vm::termination_requested()) exit_code() = 130;
}

// ---- session ----------------------------------------------------------------------------------

struct SessionBenchOptions {
  std::string out_dir = "bench-session";
  unsigned rounds = 5;
  unsigned iterations = 2;
  std::string arms = "idle,session,publish";
  bool icount = false;   // count the guest's instructions and time the monitor's callbacks per run (icount=on, selftime=on)
  double minutes = 0;   // the RSS run: one watched session of this length (0: none)
  std::string typing = "10-30";
  bool quick = false;
  unsigned boot_timeout_s = 180;
  std::string report_from;   // --report FILE: only rewrite session.md from an earlier results.json
  unsigned neighbour_us = 40;   // the neighbour arm's work per millisecond
};

// What every run of the session benchmark shares: the attacker, its scripts, the NATS server.
struct SessionBench {
  vm::fs::path work;                 // session folders, logs, spools (removed at the end)
  vm::fs::path attacker, passwords;
  vm::fs::path script;               // the measured session
  unsigned commands_typed = 0;       // its command lines (exit included)
  unsigned iterations = 1;
  std::string typing;
  std::string nats_url;
  unsigned neighbour_us = 40;
};

// The neighbour arm: a host thread beside the unwatched guest that does what a watcher does to
// the host without watching anything — every millisecond it wakes and, for `busy_us`, writes
// through 8 MiB of memory (the cache lines a watcher's reads of the rings and guest RAM and its
// output would take), then sleeps. It separates what watching costs QEMU through the monitor
// from what any busy process beside QEMU costs on a host with few cores.
class Neighbour {
 public:
  explicit Neighbour(unsigned busy_us) : busy_(std::chrono::microseconds(busy_us)), buf_(8u << 20, 1) {
    th_ = std::jthread([this](const std::stop_token& st) { run(st); });
  }
  // Stops the thread; its CPU seconds.
  double stop() {
    th_.request_stop();
    th_.join();
    return cpu_s_;
  }

 private:
  void run(const std::stop_token& st) {
    std::size_t i = 0;
    while (!st.stop_requested()) {
      const auto t0 = std::chrono::steady_clock::now();
      while (std::chrono::steady_clock::now() - t0 < busy_)
        for (int k = 0; k < 256; ++k) {
          buf_[i] = static_cast<unsigned char>(buf_[i] + 1);
          i = (i + 4160) % buf_.size();
        }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    cpu_s_ = static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
  }
  std::chrono::microseconds busy_;
  std::vector<unsigned char> buf_;
  double cpu_s_ = 0;
  std::jthread th_;
};

// The measured session: a few ordinary commands around the workload, typed at a prompt.
const std::vector<std::string> kSessionLines = {"uname -a", "ls /", "jansson-workload {{N}}", "cat /etc/os-release", "exit"};

// The scripted attacker logs in through a pseudo-terminal (`ssh -tt`) and types `script`.
Result<vm::ProcessResult> run_attacker(const SessionBench& b, const vm::VmRecord& rec, const vm::fs::path& script,
                                       const vm::fs::path& screen, const std::vector<std::string>& sets, double timeout_s) {
  std::vector<std::string> argv = {"python3", b.attacker.string(), "--port", std::to_string(rec.ssh_port), "--password-file",
                                   b.passwords.string(), "--delay", b.typing, "--timeout", fmt::format("{:.0f}", timeout_s),
                                   "--screen", screen.string(), "-q"};
  for (const auto& s : sets) {
    argv.push_back("--set");
    argv.push_back(s);
  }
  argv.push_back(script.string());
  return vm::run_process(argv, std::chrono::seconds{static_cast<long>(timeout_s) + 120}, 1u << 20);
}

// `hvtrace session`'s closing summary into run fields (see tools/cmd_session.cpp).
void parse_session_summary(const std::string& out, json& run) {
  std::smatch m;
  const auto find = [&](const char* re) { return std::regex_search(out, m, std::regex(re)); };
  if (find(R"(sessions: (\d+) \((\d+) commands, (\d+) lines typed into programs, (\d+) login attempts\))")) {
    run["sessions"] = std::stoull(m[1]);
    run["commands"] = std::stoull(m[2]);
    run["program_inputs"] = std::stoull(m[3]);
    run["login_attempts"] = std::stoull(m[4]);
  }
  if (find(R"(watching cost: (\d+) events delivered .*?; (\d+) synchronous pauses)")) {
    run["events_delivered"] = std::stoull(m[1]);
    run["sync_pauses"] = std::stoull(m[2]);
  }
  if (find(R"(([0-9.]+) MiB through the rings)")) run["ring_mib"] = std::stod(m[1]);
  if (find(R"(lost events: (\d+) .*sync waits timed out: (\d+))")) {
    run["lost"] = std::stoull(m[1]);
    run["sync_timeouts"] = std::stoull(m[2]);
  }
  if (find(R"(--follow latency[^:]*: median ([0-9.]+) ms, max ([0-9.]+) ms over (\d+) command)")) {
    run["follow_median_ms"] = std::stod(m[1]);
    run["follow_max_ms"] = std::stod(m[2]);
    run["follow_count"] = std::stoull(m[3]);
  } else if (out.find("--follow latency") != std::string::npos) {
    run["follow_count"] = 0;
  }
  if (find(R"(published: (\d+) events \+ (\d+) file chunks; (\d+) acked .*dropped (\d+); left in the spool: (\d+))")) {
    run["published"] = std::stoull(m[1]) + std::stoull(m[2]);
    run["acked"] = std::stoull(m[3]);
    run["publish_dropped"] = std::stoull(m[4]);
    run["spool_left"] = std::stoull(m[5]);
  }
  if (find(R"((\d+) bytes not kept)")) run["bytes_not_kept"] = std::stoull(m[1]);
  run["watcher_summary"] = out;
}

std::vector<std::string> watcher_args(const std::string& arm, const SessionBench& b, const vm::fs::path& wdir) {
  std::vector<std::string> extra = {"--follow"};
  if (arm == "publish") extra.insert(extra.end(), {"--publish", b.nats_url, "--spool", (wdir / "spool").string()});
  return extra;
}

// Stops the watcher (SIGINT: it closes and flushes every session) and reads what it reported.
void finish_watcher(SessionWatcher& w, json& run, std::string& failure) {
  std::this_thread::sleep_for(1s);   // the logout's last events
  if (!w.stop(90s)) {
    failure = failure.empty() ? "hvtrace session did not stop within 90 s of SIGINT" : failure;
    return;
  }
  if (!WIFEXITED(w.status()) || WEXITSTATUS(w.status()) != 0)
    failure = failure.empty() ? fmt::format("hvtrace session {}: {}", vm::describe_wait_status(w.status()), trim(w.log())) : failure;
  run["watcher_cpu_s"] = w.cpu_seconds();
  run["watcher_peak_rss_kib"] = w.max_rss_kib();
  parse_session_summary(w.output(), run);
}

// One arm of one round: the scripted session, watched or not.
json run_session_arm(const std::string& arm, Guest& g, const SessionBench& b, unsigned round) {
  json run = {{"arm", arm}, {"round", round}, {"ok", false}};
  const auto rec = g.vm->record();
  const vm::fs::path wdir = b.work / fmt::format("round{}-{}", round + 1, arm);
  std::error_code ec;
  vm::fs::create_directories(wdir, ec);
  std::unique_ptr<SessionWatcher> w;
  if (arm == "session" || arm == "publish") {
    w = std::make_unique<SessionWatcher>(rec.name, wdir / "sessions", wdir / "watcher.out", wdir / "watcher.log", watcher_args(arm, b, wdir));
    if (!w->wait_ready(180s)) {
      run["error"] = fmt::format("hvtrace session did not start watching: {}", trim(w->log()));
      return run;
    }
  }
  std::optional<Neighbour> neighbour;
  if (arm == "neighbour") neighbour.emplace(b.neighbour_us);
  const double cpu0 = qemu_cpu_seconds(rec.qemu_pid);
  const double watcher_cpu0 = w ? bench::process_cpu_seconds(w->pid()) : 0;
  const std::uint64_t insns0 = g.reader ? g.reader->guest_insns() : 0;
  // selftime=on: host time inside the monitor's callbacks, and of it the time the vCPU waited for
  // the watcher's ack of synchronous events (the guest paused; QEMU's thread asleep after 20 µs).
  struct CallbackTotals {
    std::uint64_t ns = 0, wait_ns = 0, calls = 0;
  };
  const auto callback_ns = [&g] {
    CallbackTotals t;
    for (unsigned i = 0; g.reader && i < g.reader->rings(); ++i) {
      const auto st = g.reader->stats(i);
      t.ns += st.cb_ns;
      t.wait_ns += st.sync_wait_ns;
      t.calls += st.cb_calls;
    }
    return t;
  };
  const auto cb0 = callback_ns();
  const auto t0 = Clock::now();
  auto a = run_attacker(b, rec, b.script, wdir / "screen.txt", {fmt::format("N={}", b.iterations)}, 600);
  run["wall_s"] = std::chrono::duration<double>(Clock::now() - t0).count();
  run["qemu_cpu_s"] = qemu_cpu_seconds(rec.qemu_pid) - cpu0;
  if (w) run["watcher_window_cpu_s"] = bench::process_cpu_seconds(w->pid()) - watcher_cpu0;
  if (neighbour) run["neighbour_cpu_s"] = neighbour->stop();
  if (const std::uint64_t insns1 = g.reader ? g.reader->guest_insns() : 0; insns1 > insns0)
    run["guest_insns"] = static_cast<double>(insns1 - insns0);   // --icount (a count: no host noise)
  if (const auto cb1 = callback_ns(); cb1.ns > cb0.ns) {
    const double wait_s = static_cast<double>(cb1.wait_ns - cb0.wait_ns) / 1e9;
    run["sync_wait_s"] = wait_s;
    run["monitor_callback_s"] = std::max(0.0, static_cast<double>(cb1.ns - cb0.ns) / 1e9 - wait_s);
    run["monitor_callbacks"] = static_cast<double>(cb1.calls - cb0.calls);   // a count: no host noise
  }
  std::string failure;
  if (!a) failure = fmt::format("the attacker did not finish: {}", a.error().message);
  else if (a->exit_code != 0) failure = fmt::format("the attacker exited with {}: {}", a->exit_code, trim(a->err));
  std::string screen = read_text((wdir / "screen.txt").string());
  screen.erase(std::remove(screen.begin(), screen.end(), '\r'), screen.end());
  if (auto s = parse_workload_seconds(screen)) run["guest_s"] = *s;
  else if (failure.empty()) failure = "no jansson-workload time on the client's screen";
  if (w) finish_watcher(*w, run, failure);
  if (failure.empty()) run["ok"] = true;
  else run["error"] = failure;
  return run;
}

// The RSS run: one watched session of `minutes` with continuous terminal output and commands
// executed all along; the watcher's VmRSS and RssAnon sampled every second into rss.tsv.
json run_rss_session(Guest& g, const SessionBench& b, double minutes, const vm::fs::path& out_dir) {
  json run = {{"minutes", minutes}, {"ok", false}};
  const auto rec = g.vm->record();
  const vm::fs::path wdir = b.work / "rss";
  std::error_code ec;
  vm::fs::create_directories(wdir, ec);
  const vm::fs::path script = wdir / "rss.session";
  write_file(script,
             "end=$(( $(date +%s) + {{SECS}} ))\n"
             "while [ $(date +%s) -lt $end ]; do ls -laR /usr/include; cat /etc/passwd; jansson-workload 1; done\n"
             "uname -a\n"
             "exit\n");
  const double secs = minutes * 60;
  SessionWatcher w(rec.name, wdir / "sessions", wdir / "watcher.out", wdir / "watcher.log", {"--follow"});
  if (!w.wait_ready(180s)) {
    run["error"] = fmt::format("hvtrace session did not start watching: {}", trim(w.log()));
    return run;
  }
  const auto t0 = Clock::now();
  auto attacker = std::async(std::launch::async, [&] {
    return run_attacker(b, rec, script, wdir / "screen.txt", {fmt::format("SECS={:.0f}", secs)}, secs + 600);
  });
  // VmRSS counts the guest RAM and ring pages the watcher has touched (shared, bounded by the guest's
  // size); RssAnon is its own heap and stacks, where a leak would show.
  static const std::vector<std::string> kFields = {"VmRSS", "RssAnon", "RssFile", "RssShmem"};
  std::ofstream tsv(out_dir / "rss.tsv");
  tsv << "# seconds since the session started, then the watcher's (hvtrace session --follow) /proc/PID/status in KiB:";
  for (const auto& f : kFields) tsv << "\t" << f;
  tsv << "\n";
  std::vector<std::pair<long, std::vector<unsigned long>>> samples;
  while (attacker.wait_for(1s) != std::future_status::ready) {
    const long t = std::lround(std::chrono::duration<double>(Clock::now() - t0).count());
    std::vector<unsigned long> v;
    for (const auto& f : kFields) v.push_back(bench::process_status_kib(w.pid(), f));
    if (v[0] == 0) continue;
    tsv << t;
    for (const auto x : v) tsv << "\t" << x;
    tsv << "\n" << std::flush;
    samples.emplace_back(t, std::move(v));
  }
  auto a = attacker.get();
  run["wall_s"] = std::chrono::duration<double>(Clock::now() - t0).count();
  std::string failure;
  if (!a) failure = fmt::format("the attacker did not finish: {}", a.error().message);
  else if (a->exit_code != 0) failure = fmt::format("the attacker exited with {}: {}", a->exit_code, trim(a->err));
  for (const auto& [i, key] : {std::pair<std::size_t, const char*>{0, "rss"}, {1, "anon"}}) {
    unsigned long at10 = 0, mx = 0, end = 0;
    for (const auto& [t, v] : samples) {
      if (at10 == 0 && t >= 10) at10 = v[i];
      mx = std::max(mx, v[i]);
      end = v[i];
    }
    run[fmt::format("{}_10s_kib", key)] = at10;
    run[fmt::format("{}_max_kib", key)] = mx;
    run[fmt::format("{}_end_kib", key)] = end;
  }
  run["samples"] = samples.size();
  if (samples.size() < 10 && failure.empty()) failure = "fewer than 10 RSS samples";
  run["output_bytes"] = vm::fs::file_size(wdir / "screen.txt", ec);
  finish_watcher(w, run, failure);
  if (failure.empty()) run["ok"] = true;
  else run["error"] = failure;
  return run;
}

std::vector<std::string> parse_arms(const std::string& list) {
  return parse_name_list(list, {"none", "idle", "neighbour", "session", "publish"}, "idle", "--arms",
                         "none,idle,neighbour,session,publish",
                         [](const std::string& w) { return w == "session+publish" ? std::string("publish") : w; });
}

void run_session_bench(SessionBenchOptions o) {
  vm::install_termination_handlers();
  if (!o.report_from.empty()) {   // the report again, from the raw runs alone
    json results;
    try {
      results = json::parse(read_text(o.report_from));
    } catch (const std::exception& e) {
      throw UserError(fmt::format("--report {}: {}", o.report_from, e.what()));
    }
    const std::string md = bench::make_session_report(results);
    write_file(vm::fs::path(o.out_dir) / "session.md", md);
    finish_report(md, bench::check_session_counts(results), false, (vm::fs::path(o.out_dir) / "session.md").string(), Clock::now());
    return;
  }
  if (o.quick) {
    o.rounds = 1;
    o.iterations = 1;
    if (o.minutes == 0) o.minutes = 0.5;
  }
  if (o.minutes < 0) throw UserError("--minutes: a duration in minutes (0: no RSS run)");
  if ((o.rounds == 0 && o.minutes == 0) || o.iterations == 0)
    throw UserError("--iterations must be at least 1, and --rounds too unless --minutes asks for the RSS run alone");
  const auto arms = parse_arms(o.arms);
  auto image = vm::load_image(vm::default_image_dir());
  if (!image) throw UserError(fmt::format("{} (the default guest is built by `guest/build-image`)", image.error().message));
  SessionBench b;
  b.attacker = source_dir() / "scripts" / "attacker";
  if (!vm::fs::is_regular_file(b.attacker))
    throw UserError(fmt::format("the scripted attacker {} is missing (set HVTRACE_SOURCE_DIR to the repository)", b.attacker.string()));
  b.passwords = image->dir / "passwords";
  b.iterations = o.iterations;
  b.typing = o.typing;
  b.neighbour_us = o.neighbour_us;
  const vm::fs::path dir = o.out_dir;
  std::error_code ec;
  vm::fs::create_directories(dir, ec);
  if (ec) throw UserError(fmt::format("-o {}: {}", o.out_dir, ec.message()));
  const std::string tag = std::to_string(getpid() % 100000);
  b.work = vm::fs::temp_directory_path() / fmt::format("hvtrace-bench-session-{}", tag);
  vm::fs::remove_all(b.work, ec);
  vm::fs::create_directories(b.work, ec);
  if (ec) throw UserError(fmt::format("{}: {}", b.work.string(), ec.message()));
  struct RemovedAtExit {   // on every way out (errors too); declared before the NATS server that writes in it
    vm::fs::path dir;
    ~RemovedAtExit() {
      std::error_code e;
      vm::fs::remove_all(dir, e);
    }
  } work_cleanup{b.work};
  b.script = b.work / "bench.session";
  {
    std::string text;
    for (const auto& l : kSessionLines) text += l + "\n";
    write_file(b.script, text);
    b.commands_typed = static_cast<unsigned>(kSessionLines.size());
  }
  std::unique_ptr<publish::LocalNats> nats;
  if (std::find(arms.begin(), arms.end(), "publish") != arms.end()) {
    vm::fs::create_directories(b.work / "nats", ec);
    nats = std::make_unique<publish::LocalNats>(b.work / "nats", 1, "bsess", true);
    try {
      nats->start();
    } catch (const std::exception& e) {
      throw UserError(fmt::format("starting nats-server: {}", e.what()));
    }
    b.nats_url = nats->urls();
    fmt::print(stderr, "[bench] nats-server with JetStream on {}\n", b.nats_url);
  }

  json results = results_header("hvtrace-bench-session/1", image->kernel_release);
  results["config"] = {{"rounds", o.rounds},           {"iterations", o.iterations}, {"arms", arms}, {"icount", o.icount},
                       {"quick", o.quick},             {"minutes", o.minutes},       {"typing", o.typing},
                       {"commands_typed", b.commands_typed}, {"session_lines", kSessionLines}, {"neighbour_us", o.neighbour_us},
                       {"note", "qemu_cpu_s: utime+stime of QEMU from the attacker's start to its exit; guest_s: the workload's own "
                                "clock; wall_s: the client's session on the host; idle: the monitor loaded, no watcher; "
                                "follow_*: hvtrace session's own --follow latency (Enter key's write in the guest -> line printed)"}};
  results["runs"] = json::array();
  const auto save = [&] { save_results(dir, results); };
  Table1Options boot;
  boot.boot_timeout_s = o.boot_timeout_s;
  if (o.icount) boot.monitor_args = {"icount=on", "selftime=on"};
  const auto t_start = Clock::now();
  fmt::print(stderr, "[bench] booting the guest with the monitor{}\n",
             std::find(arms.begin(), arms.end(), "none") != arms.end() ? " and one without plugin" : "");
  auto mon = value_or_throw(boot_guest("bsess-" + tag, true, false, boot, *image));
  std::unique_ptr<Guest> plain;
  if (std::find(arms.begin(), arms.end(), "none") != arms.end())
    plain = value_or_throw(boot_guest("bsess-plain-" + tag, false, false, boot, *image));
  fmt::print(stderr, "[bench] warm-up (untimed): the workload and one unwatched session per guest\n");
  for (Guest* g : {mon.get(), plain.get()}) {
    if (g == nullptr) continue;
    warm_up(*g, o.iterations);
    (void)run_session_arm("warmup", *g, b, 0);
  }
  bool any_failed = false;
  const std::size_t total = o.rounds * arms.size();
  std::size_t done = 0;
  for (unsigned round = 0; round < o.rounds && !vm::termination_requested(); ++round)
    for (std::size_t k = 0; k < arms.size() && !vm::termination_requested(); ++k) {
      const std::string& arm = arms[(k + round) % arms.size()];
      Guest& g = arm == "none" ? *plain : *mon;
      const double elapsed = std::chrono::duration<double>(Clock::now() - t_start).count();
      fmt::print(stderr, "[bench] round {}/{} run {}/{}: {} (elapsed {})\n", round + 1, o.rounds, done + 1, total, arm,
                 duration_text(elapsed));
      json run = run_session_arm(arm, g, b, round);
      run["order"] = k;
      ++done;
      if (!report_run(arm, run)) any_failed = true;
      else if (run.contains("follow_count"))
        fmt::print(stderr, "[bench]   watcher: {} session(s), {} command(s), {} lost, --follow latency median {} ms max {} ms, peak RSS {} KiB\n",
                   run.value("sessions", 0), run.value("commands", 0), run.value("lost", 0), run.value("follow_median_ms", -1.0),
                   run.value("follow_max_ms", -1.0), run.value("watcher_peak_rss_kib", 0));
      results["runs"].push_back(std::move(run));
      save();
      if (!g.vm->running()) throw UserError(fmt::format("the guest's QEMU stopped ({})", g.vm->exit_reason()));
    }
  if (o.minutes > 0 && !vm::termination_requested()) {
    fmt::print(stderr, "[bench] RSS run: one watched session of {:.1f} min with continuous output (elapsed {})\n", o.minutes,
               duration_text(std::chrono::duration<double>(Clock::now() - t_start).count()));
    results["rss_run"] = run_rss_session(*mon, b, o.minutes, dir);
    const auto& rr = results["rss_run"];
    if (!rr.value("ok", false)) fmt::print(stderr, "[bench]   RSS run FAILED: {}\n", rr.value("error", "?"));
    else
      fmt::print(stderr, "[bench]   RSS run: VmRSS {} KiB at 10 s, {} KiB at the end, max {} KiB; RssAnon {} / {} / {} KiB; {} lost\n",
                 rr.value("rss_10s_kib", 0), rr.value("rss_end_kib", 0), rr.value("rss_max_kib", 0), rr.value("anon_10s_kib", 0),
                 rr.value("anon_end_kib", 0), rr.value("anon_max_kib", 0), rr.value("lost", 0));
    save();
  }
  fmt::print(stderr, "[bench] shutting down\n");
  mon->reader.reset();
  (void)mon->vm->shutdown();
  if (plain) (void)plain->vm->shutdown();
  nats.reset();
  save();
  const std::string md = bench::make_session_report(results);
  write_file(dir / "session.md", md);
  finish_report(md, bench::check_session_counts(results), any_failed, fmt::format("{}/results.json and session.md", dir.string()),
                t_start);
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks: the paper's Table 1 raced against strace and a gdb-stub tracer");
  bench->require_subcommand(1);
  auto o = std::make_shared<Table1Options>();
  auto* t1 = bench->add_subcommand("table1", "The paper's Table 1: the jansson workload under each monitoring method");
  t1->add_option("-o,--output-dir", o->out_dir, "directory for results.json, table1.md and table1.svg")->capture_default_str();
  t1->add_option("--rounds", o->rounds, "interleaved rounds (each column once per round, order rotated)")->capture_default_str();
  t1->add_option("--iterations", o->iterations, "workload iterations per run (the paper: 10)")->capture_default_str();
  t1->add_option("--methods", o->methods, "columns: none,none2,idle,2,3,4,5,strace,gdbstub (default: all)");
  t1->add_option("--pti", o->pti, "boot the guest with pti=on, off, or both settings one after the other")->capture_default_str();
  t1->add_flag("--quick", o->quick, "one iteration, one round, pti off, no per-run warm-up (the test suite's run)");
  t1->add_flag("!--no-warmup-each", o->warmup_each, "warm up only after each boot, not before every run");
  t1->add_option("--gdbstub-max-hits", o->gdbstub_max_hits,
                 "detach the gdb-stub tracer after this many breakpoint hits (0: never; --quick: 2000)");
  t1->add_option("--image", o->image, "guest image (default: the default guest)");
  t1->add_option("--boot-timeout", o->boot_timeout_s, "seconds to wait for each guest's SSH")->capture_default_str();
  t1->callback([o] { run_table1(*o); });

  auto e = std::make_shared<EventsOptions>();
  auto* ev = bench->add_subcommand("events", "The cost of one delivered event: hvtrace sync and async, strace, gdb stub");
  ev->add_option("-o,--output-dir", e->out_dir, "directory for events.json and events.md")->capture_default_str();
  ev->add_option("--rounds", e->rounds, "interleaved rounds")->capture_default_str();
  ev->add_option("--calls", e->calls, "getppid() calls per run")->capture_default_str();
  ev->add_option("--gdbstub-calls", e->gdbstub_calls, "getppid() calls under the gdb stub (each hit costs milliseconds)")
      ->capture_default_str();
  ev->add_option("--pti", e->pti, "boot the guests with pti=on or off")->capture_default_str();
  ev->add_option("--boot-timeout", e->boot_timeout_s, "seconds to wait for each guest's SSH")->capture_default_str();
  ev->callback([e] { run_events(*e); });

  auto sc = std::make_shared<ScaleOptions>();
  auto* scale = bench->add_subcommand("scale", "N guests running the workload at once, each traced (method 5) and untraced");
  scale->add_option("-o,--output-dir", sc->out_dir, "directory for results.json and scale.md")->capture_default_str();
  scale->add_option("--vms", sc->vms, "guest counts, one batch each")->capture_default_str();
  scale->add_option("--rounds", sc->rounds, "interleaved rounds (untraced and traced once each, order alternating)")->capture_default_str();
  scale->add_option("--iterations", sc->iterations, "workload iterations per run")->capture_default_str();
  scale->add_flag("--quick", sc->quick, "one round of one iteration, guest counts 1,2 unless --vms is given");
  scale->add_option("--boot-timeout", sc->boot_timeout_s, "seconds to wait for each guest's SSH")->capture_default_str();
  scale->callback([sc] { run_scale(*sc); });

  auto ss = std::make_shared<SessionBenchOptions>();
  auto* sess = bench->add_subcommand("session", "What watching an SSH session costs: hvtrace session (and --publish) against the "
                                                "unwatched session, --follow latency, the watcher's RSS over a long session");
  sess->add_option("-o,--output-dir", ss->out_dir, "directory for results.json, session.md and rss.tsv")->capture_default_str();
  sess->add_option("--rounds", ss->rounds, "interleaved rounds (each arm once per round, order rotated; 0 with --minutes: the RSS run alone)")
      ->capture_default_str();
  sess->add_option("--iterations", ss->iterations, "jansson-workload iterations typed in each session")->capture_default_str();
  sess->add_option("--arms", ss->arms, "arms: idle (unwatched), session, publish (session + --publish), none (2nd guest, no plugin), "
                                       "neighbour (unwatched, with a busy host thread beside it: see --neighbour-us)")
      ->capture_default_str();
  sess->add_option("--neighbour-us", ss->neighbour_us, "the neighbour arm's thread: microseconds of memory writes every "
                                                       "millisecond (40: about a watcher's CPU during the session)")
      ->capture_default_str()->check(CLI::Range(1u, 900u));
  sess->add_option("--minutes", ss->minutes, "then one watched session of this many minutes with continuous output: the "
                                             "watcher's RSS every second (0: skip; --quick: 0.5)")->capture_default_str();
  sess->add_option("--typing", ss->typing, "milliseconds per key, MIN-MAX (scripts/attacker --delay)")->capture_default_str()->check(typing_error);
  sess->add_flag("--icount", ss->icount, "also count the guest instructions of every run and time the monitor's callbacks "
                                       "(its icount=on and selftime=on, in every arm alike): whether watching makes the "
                                       "guest execute more, and what the monitor itself spends");
  sess->add_flag("--quick", ss->quick, "one round of one iteration and a 30-s RSS run (the test suite's run)");
  sess->add_option("--boot-timeout", ss->boot_timeout_s, "seconds to wait for the guest's SSH")->capture_default_str();
  sess->add_option("--report", ss->report_from, "run nothing: write session.md (in -o DIR) again from this results.json");
  sess->callback([ss] { run_session_bench(*ss); });
}

}  // namespace hvtrace::tools
