// hvtrace trace: strace for virtual machines. Attaches to a running VM's monitor and its RAM,
// traces the chosen processes (or CMD run in the guest over SSH) from outside the guest, and prints
// their system calls decoded as strace does — or JSON Lines, or a -c summary with the monitor's own
// counts. The engine is lib/trace; this file is the command line and the run loop.
#include "commands.hpp"
#include "guest_view.hpp"
#include "output.hpp"

#include "common/result.hpp"
#include "events/control_client.hpp"
#include "events/event_reader.hpp"
#include "kernel/profile.hpp"
#include "kernel/syscall_meta.hpp"
#include "mem/phys_mem.hpp"
#include "syscalls/syscalls.hpp"
#include "trace/recording.hpp"
#include "trace/tracer.hpp"
#include "vm/vm.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace hvtrace::tools {
namespace {

using namespace std::chrono_literals;

struct TraceOptions {
  std::string vm_name = "default";
  std::vector<std::uint32_t> pids;
  std::vector<std::string> comms;
  bool follow = false;
  std::vector<std::string> exprs;   // -e
  std::uint32_t string_limit = 32;
  std::string output;
  bool json = false, summary = false, duration_per_call = false;
  int timestamps = 0;               // -t count
  bool ttt = false;
  int method = 5;
  double duration = 0;
  std::vector<std::string> command;
  std::string write_file, read_file;   // -w / -r
  bool vm_given = false, method_given = false;
};

const char* kExamples = R"(
Examples:
  hvtrace trace -- ls -l /                   run ls in the guest and trace it, like strace ls -l /
  hvtrace trace -f -e trace=%file -- sh -c 'cat /etc/passwd | wc -l'
  hvtrace trace -p 153                       trace a running process (its threads with -f)
  hvtrace trace --comm sshd -f -o ssh.txt    trace every process named sshd, and their children
  hvtrace trace -c -- jansson-workload 1     count calls, and what the monitor did
  hvtrace trace --json -e trace=openat,read -- cat /etc/hostname
  hvtrace trace -w ls.rec -- ls /            record the events and the guest's answers, then
  hvtrace trace -r ls.rec -e trace=%file     decode them later, with no VM
Replay (-r): -e, -s, -o, --json, -c, -t, -T apply as in a live trace; -p, --comm and -f select
from what was recorded and cannot widen it (a process or child the live run did not trace has no
events in the file). Without -p/--comm the live run's targets are used.
Methods (--method, see docs/architecture.md): 5 (default) syscalls copied in the hypervisor and
delivered async; 4 the same, each syscall pausing the guest; 3 as 4 plus every CR3 write; 2 every
syscall of every process pausing the guest, filtered here.
)";

std::string token() {
  std::random_device rd;
  return fmt::format("{:08x}{:08x}", rd(), rd());
}

// The command line as the kernel has it (for the recording's header), bounded.
std::string own_command_line() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::string s(4096, '\0');
  f.read(s.data(), static_cast<std::streamsize>(s.size()));
  s.resize(static_cast<std::size_t>(std::max<std::streamsize>(f.gcount(), 0)));
  while (!s.empty() && s.back() == '\0') s.pop_back();
  std::replace(s.begin(), s.end(), '\0', ' ');
  return s;
}

trace::TraceConfig make_config(const TraceOptions& o) {
  trace::TraceConfig cfg;
  cfg.method = o.method;
  cfg.follow = o.follow;
  cfg.string_limit = o.string_limit;
  cfg.json = o.json;
  cfg.summary_only = o.summary;
  cfg.show_duration = o.duration_per_call;
  cfg.comms = o.comms;
  cfg.time = o.ttt ? trace::TimeFormat::kEpoch
             : o.timestamps >= 3 ? trace::TimeFormat::kEpoch
             : o.timestamps == 2 ? trace::TimeFormat::kMicros
             : o.timestamps == 1 ? trace::TimeFormat::kSeconds
                                 : trace::TimeFormat::kNone;
  for (const auto& e : o.exprs) {
    if (e.rfind("trace=", 0) == 0) {
      cfg.trace_set = value_or_throw(syscalls::parse_trace_set(e.substr(6)));
    } else if (e.rfind("status=", 0) == 0) {
      cfg.status = value_or_throw(syscalls::parse_status_set(e.substr(7)));
    } else if (e.find('=') == std::string::npos) {
      cfg.trace_set = value_or_throw(syscalls::parse_trace_set(e));   // -e open,read as strace takes it
    } else {
      throw UserError(fmt::format("-e {}: hvtrace knows trace= and status=", e));
    }
  }
  return cfg;
}

using OutFile = std::unique_ptr<std::FILE, int (*)(std::FILE*)>;

// -o FILE or stderr (as strace: the trace on stderr, CMD's own output on stdout).
std::FILE* open_output(const TraceOptions& o, OutFile& file) {
  if (o.output.empty()) return stderr;
  file.reset(std::fopen(o.output.c_str(), "w"));
  if (!file) throw UserError(fmt::format("-o {}: {}", o.output, std::strerror(errno)));
  return file.get();
}

void print_lost(const std::vector<events::RingStats>& rings, std::uint64_t tracer_lost) {
  std::uint64_t lost = 0;
  for (const auto& s : rings) lost += s.dropped();
  if (lost != 0 || tracer_lost != 0)
    fmt::print(stderr, "hvtrace: lost {} events (ring full {}, too big {}, bad tail {})\n", std::max(lost, tracer_lost),
               rings.empty() ? 0 : rings[0].drops[0], rings.empty() ? 0 : rings[0].drops[1],
               rings.empty() ? 0 : rings[0].drops[3]);
}

// -r FILE: the recorded events through the whole decoding stack, no VM.
void replay_trace(const TraceOptions& o, trace::TraceConfig cfg) {
  OutFile file(nullptr, &std::fclose);
  std::FILE* out = open_output(o, file);
  auto reader = value_or_throw(trace::RecordingReader::open(o.read_file));
  trace::Replayer replay(reader);
  if (!o.pids.empty() || !o.comms.empty()) {   // which processes the events show
    auto pass = value_or_throw(trace::RecordingReader::open(o.read_file));
    if (auto r = replay.guest().index(pass); !r)
      fmt::print(stderr, "hvtrace: note: {}: indexing stops there\n", r.error().message);
  }
  value_or_throw(replay.start());
  const auto recorded = replay.targets().value_or(trace::RecordedTargets{});
  if (!o.method_given) cfg.method = static_cast<int>(recorded.method);
  trace::NullSink sink;
  trace::Tracer tracer(replay.guest(), sink, cfg, [out](const std::string& line) { write_line(out, line); });
  tracer.set_realtime_offset(reader.header().realtime_offset_ns);
  tracer.set_guest_names(replay.guest_names());
  if (!o.pids.empty() || !o.comms.empty()) {
    for (auto pid : o.pids) value_or_throw(tracer.trace_pid(pid));
    for (const auto& c : o.comms) value_or_throw(tracer.trace_comm(c));
  } else {
    value_or_throw(trace::apply_targets(tracer, recorded));
  }
  value_or_throw(tracer.apply());
  Result<void> ran;
  const bool finished_writing = print_guarded(out, [&] { ran = replay.run(tracer); });
  const auto counters = replay.counters().value_or(trace::RecordedCounters{});
  if (finished_writing) (void)print_guarded(out, [&] { tracer.finish(counters.rings, counters.before, counters.after); });
  print_lost(counters.rings, tracer.stats().lost);
  if (!ran) throw UserError(ran.error().message);
  if (!replay.counters() && o.summary)
    fmt::print(stderr, "hvtrace: note: {} has no monitor counters (the live trace did not finish); the monitor's part of -c is zero\n",
               o.read_file);
}

void run_trace(const TraceOptions& o) {
  vm::install_termination_handlers();
  if (o.method < 2 || o.method > 5) throw UserError(fmt::format("--method {}: use 2, 3, 4 or 5", o.method));
  if (!o.command.empty() && (!o.pids.empty() || !o.comms.empty()))
    throw UserError("-- CMD starts a new process to trace; do not combine it with -p or --comm");
  if (o.json && o.summary) throw UserError("--json and -c are two different outputs; pick one");
  if (!o.read_file.empty()) {
    if (!o.write_file.empty()) throw UserError("-r replays a recording and -w writes one; pick one");
    if (!o.command.empty()) throw UserError("-r replays a recording: there is no command to run; drop -- CMD");
    if (o.vm_given || o.method_given)
      throw UserError(fmt::format("-r replays a recording with no VM; drop {}", o.vm_given ? "--vm" : "--method"));
  }
  trace::TraceConfig cfg = make_config(o);
  if (!o.read_file.empty()) return replay_trace(o, std::move(cfg));
  // Output first, so an unwritable -o fails before anything touches the guest.
  OutFile file(nullptr, &std::fclose);
  std::FILE* out = open_output(o, file);
  MonitoredGuest m = attach_monitored(o.vm_name);
  const vm::VmRecord& rec = m.rec;
  vm::VmWatch& watch = m.watch;
  GuestView& g = m.g;
  auto& reader = m.reader;
  events::ControlClient& ctl = m.ctl;
  // -w: every answer the guest gives the tracer goes into the recording next to the events.
  trace::LiveGuest live(*g.os);
  trace::ControlSink sink(ctl);
  sink.watch_breakpoints(*reader);
  std::unique_ptr<trace::RecordingWriter> writer;
  std::optional<trace::RecordingGuest> recording_guest;
  trace::GuestQueries* guest = &live;
  const std::int64_t realtime_offset = trace::realtime_offset();
  if (!o.write_file.empty()) {
    trace::RecordingHeader h;
    h.abi_version = abi::kAbiVersion;
    h.created_unix_s = static_cast<std::int64_t>(std::time(nullptr));
    h.realtime_offset_ns = realtime_offset;
    h.kernel_banner = g.kernel->profile().banner;
    h.kernel_build_id = g.kernel->profile().build_id;
    h.command_line = own_command_line();
    writer = value_or_throw(trace::RecordingWriter::create(o.write_file, h));
    recording_guest.emplace(live, *writer);
    guest = &*recording_guest;
  }
  trace::Tracer tracer(*guest, sink, cfg, [out](const std::string& line) { write_line(out, line); });
  tracer.set_realtime_offset(realtime_offset);
  // The guest's own syscall table (names for numbers the compiled-in table does not know), and
  // where it disagrees with the compiled-in one.
  if (auto gs = kernel::guest_syscalls(*g.kernel, kernel::default_profile_dir()); gs) {
    tracer.set_guest_names(gs->x64_table);
    if (writer) writer->guest_names(gs->x64_table);
    const auto diffs = kernel::compare_syscall_tables(
        *gs,
        [](unsigned nr) -> std::optional<std::string> {
          const auto* i = syscalls::Table::get(abi::SyscallAbi::kX86_64).by_nr(nr);
          if (i == nullptr) return std::nullopt;
          return std::string(syscalls::kernel_entry_name(abi::SyscallAbi::kX86_64, nr, i->name));
        },
        [](unsigned nr) -> std::optional<std::string> {
          const auto* i = syscalls::Table::get(abi::SyscallAbi::kI386).by_nr(nr);
          if (i == nullptr) return std::nullopt;
          return std::string(syscalls::kernel_entry_name(abi::SyscallAbi::kI386, nr, i->name));
        });
    // Numbers this kernel does not implement (ni_syscall, or newer than it) are expected; a
    // different name for the same number is worth a person's attention.
    std::vector<std::string> renamed;
    for (const auto& d : diffs)
      if (d.find("guest has none") == std::string::npos) renamed.push_back(d);
    if (!renamed.empty())
      fmt::print(stderr, "hvtrace: note: the guest's syscall table names {} number(s) differently from the compiled-in one, e.g. {}\n",
                 renamed.size(), renamed.front());
    if (std::getenv("HVTRACE_SYSCALL_DIFF"))
      for (const auto& d : diffs) fmt::print(stderr, "  {}\n", d);
  } else {
    fmt::print(stderr, "hvtrace: note: the guest's own syscall table could not be read ({}); using the compiled-in one\n",
               gs.error().message);
  }
  for (auto pid : o.pids) value_or_throw(tracer.trace_pid(pid));
  for (const auto& c : o.comms) value_or_throw(tracer.trace_comm(c));
  if (o.pids.empty() && o.comms.empty() && o.command.empty()) tracer.trace_all();

  // -- CMD: a shell in the guest announces itself in its command line, waits for a go file, then
  // execs CMD; tracing starts at that execve, so CMD is seen from its first system call.
  std::future<Result<int>> cmd_status;
  struct OnExit {
    std::function<void()> fn;
    explicit OnExit(std::function<void()> f) : fn(std::move(f)) {}
    ~OnExit() { fn(); }
    OnExit(const OnExit&) = delete;
    OnExit& operator=(const OnExit&) = delete;
  };
  bool go_sent = false;
  std::optional<OnExit> cancel_guard;   // destroyed before cmd_status, whose destructor waits for the shell
  std::string go_file;
  std::uint32_t shell_pid = 0;
  if (!o.command.empty()) {
    const std::string tok = token();
    go_file = "/tmp/.hvtrace-go-" + tok;
    const std::string remote = fmt::format(
        "while [ ! -e {0} ]; do [ -e {0}.cancel ] && rm -f {0}.cancel && exit 125; usleep 10000 2>/dev/null || sleep 1; "
        "done; rm -f {0}; exec {1}",
        go_file, vm::remote_command_line(o.command));
    const bool pass_stdin = isatty(STDIN_FILENO) == 0;
    cmd_status = std::async(std::launch::async, [rec, remote, pass_stdin] {
      return vm::ssh_run(rec, remote, std::chrono::hours{24}, pass_stdin);
    });
    // Whatever ends this command before CMD was let go (an error, a signal), the waiting shell in
    // the guest is told to give up, so neither it nor our wait for its SSH session lingers.
    cancel_guard.emplace([rec, go_file, &go_sent] {
      // The shell takes the cancel file within 10 ms; if it never started (our SSH client was cut
      // off first), the file is removed after 2 s so nothing is left in the guest.
      if (!go_sent)
        (void)vm::ssh_exec_cleanup(
            rec, fmt::format("touch {0}.cancel; i=0; while [ -e {0}.cancel ] && [ $i -lt 20 ]; do usleep 100000 2>/dev/null || sleep 1; "
                             "i=$((i+1)); done; rm -f {0}.cancel",
                             go_file),
            30s);
    });
    std::optional<std::uint32_t> shell;
    const auto give_up = std::chrono::steady_clock::now() + 30s;
    while (!shell && std::chrono::steady_clock::now() < give_up && !vm::termination_requested()) {
      if (cmd_status.wait_for(0s) == std::future_status::ready) break;
      // The waiting shell's command line names the go file; so does a child it forked for usleep
      // until that child execs, so take the candidate whose parent is not a candidate too.
      auto ps = g.os->processes();
      std::vector<const linux_os::Process*> cands;
      if (ps)
        for (const auto& p : *ps)
          if (p.dtb && (p.comm == "bash" || p.comm == "sh"))
            if (auto cl = g.os->cmdline(p); cl && cl->find(go_file) != std::string::npos && cl->find("while") != std::string::npos)
              cands.push_back(&p);
      for (const auto* c : cands)
        if (std::none_of(cands.begin(), cands.end(), [&](const auto* other) { return other->tgid.value == c->ppid.value; }))
          shell = static_cast<std::uint32_t>(c->tgid.value);
      if (!shell) std::this_thread::sleep_for(20ms);
    }
    if (!shell && vm::termination_requested()) throw Interrupted("interrupted while attaching: CMD was not started");
    if (!shell) {
      if (cmd_status.valid() && cmd_status.wait_for(0s) == std::future_status::ready) {
        auto r = cmd_status.get();
        if (!r) throw UserError(r.error().message);
      }
      throw UserError("the command's shell did not appear in the guest within 30 s");
    }
    shell_pid = *shell;
    value_or_throw(tracer.trace_pid(*shell));
    tracer.start_at_exec(*shell);
  }
  if (writer) {
    trace::RecordedTargets t;
    t.pids = o.pids;
    t.comms = o.comms;
    if (!o.command.empty()) t.start_at_exec = shell_pid;
    t.all = o.pids.empty() && o.comms.empty() && o.command.empty();
    t.follow = o.follow;
    t.method = static_cast<std::uint32_t>(o.method);
    writer->targets(t);
  }
  value_or_throw(tracer.apply());
  if (!o.comms.empty()) {
    if (tracer.comm_filtered_here())
      fmt::print(stderr,
                 "hvtrace: note: the guest kernel has no {} symbol: with --comm the monitor delivers every process's "
                 "calls and the names are picked here\n",
                 trace::kExecBreakpointSymbol);
    fmt::print(stderr, "hvtrace: tracing processes named {}: {} running now, new ones from their execve\n",
               fmt::join(o.comms, ", "), tracer.processes());
  }
  const auto before = value_or_throw(ctl.stats());
  std::vector<events::RingStats> rings_before;
  for (unsigned i = 0; i < reader->rings(); ++i) rings_before.push_back(reader->stats(i));
  // Start CMD while this thread already serves the rings (the waiting shell's CR3 switches are sync).
  std::future<Result<vm::ExecResult>> go;
  if (!go_file.empty()) {
    go = std::async(std::launch::async, [rec, go_file] { return vm::ssh_exec(rec, "touch " + go_file, 30s); });
    go_sent = true;
  }

  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(o.duration);
  bool vm_alive = true;
  std::optional<Result<void>> failure;
  std::optional<std::chrono::steady_clock::time_point> cmd_done_at;
  const bool finished_writing = print_guarded(out, [&] {
    while (!vm::termination_requested() && (o.duration == 0 || std::chrono::steady_clock::now() < end)) {
      vm_alive = watch.alive();
      auto got = reader->poll([&](const events::Event& e) {
        if (failure) return;
        if (writer) writer->event(e);
        if (auto r = tracer.handle(e); !r) failure = r;
      });
      const std::size_t k = value_or_throw(std::move(got));
      if (writer && writer->failed() && !failure) failure = Result<void>(make_error("{}", *writer->failed()));
      if (failure || !vm_alive) break;
      if (go.valid() && go.wait_for(0s) == std::future_status::ready) {
        auto r = go.get();
        if (!r || r->exit_status != 0)
          failure = Result<void>(make_error("could not start the command in the guest: {}", r ? r->err : r.error().message));
      }
      if (cmd_status.valid() && !cmd_done_at && cmd_status.wait_for(0s) == std::future_status::ready)
        cmd_done_at = std::chrono::steady_clock::now();
      // CMD finished: give the rings a moment to hand over its last events, then stop.
      if (cmd_done_at && k == 0 && std::chrono::steady_clock::now() - *cmd_done_at > 300ms) break;
      if (tracer.done() && k == 0) break;
      if (k == 0) {
        flush_output(out);
        reader->wait(20ms);
      }
    }
  });
  (void)tracer.detach();       // the fork and exec breakpoints
  bool interrupted_cmd = false;
  (void)ctl.set_actions({});   // the guest runs on unpaused and unwatched
  // Interrupted while CMD still runs: end it as a terminal's Ctrl-C would end `strace CMD`'s child
  // (an SSH session without a terminal does not pass the signal on).
  if (vm::termination_requested() && cmd_status.valid() && shell_pid != 0 &&
      cmd_status.wait_for(0s) != std::future_status::ready) {
    vm::clear_termination_request();   // lets this one SSH call run; a second Ctrl-C cuts it short
    interrupted_cmd = true;
    // TERM, then wait until it is gone (a loaded guest may take a while to run the dying process),
    // KILL after 2 s: hvtrace returns only once CMD no longer runs in the guest.
    (void)vm::ssh_exec(rec,
                       fmt::format("kill -TERM {0} 2>/dev/null; i=0; while kill -0 {0} 2>/dev/null && [ $i -lt 20 ]; do "
                                   "sleep 0.1; i=$((i+1)); done; kill -KILL {0} 2>/dev/null; true",
                                   shell_pid),
                       30s);
  }
  const auto after = ctl.stats();
  std::vector<events::RingStats> rings;
  for (unsigned i = 0; i < reader->rings(); ++i) {
    auto s = reader->stats(i);
    const auto& b = rings_before[i];
    for (std::size_t d = 0; d < std::size(s.drops); ++d) s.drops[d] -= b.drops[d];
    s.sync_waits -= b.sync_waits;
    s.sync_timeouts -= b.sync_timeouts;
    s.sync_degraded -= b.sync_degraded;
    s.sync_wait_ns -= b.sync_wait_ns;
    rings.push_back(s);
  }
  if (finished_writing) {
    (void)print_guarded(out, [&] { tracer.finish(rings, before, after ? *after : before); });
  }
  (void)ctl.detach();
  if (writer) {
    writer->counters(trace::RecordedCounters{rings, before, after ? *after : before});
    if (auto r = writer->close(); !r && !failure) failure = r;
  }
  print_lost(rings, tracer.stats().lost);
  if (failure && !*failure) throw UserError(failure->error().message);
  if (!vm_alive) throw UserError(watch.stopped_message() + " while tracing");
  if (cmd_status.valid()) {
    if (cmd_status.wait_for(vm::termination_requested() ? 0s : 10s) == std::future_status::ready) {
      auto r = cmd_status.get();
      if (!r) throw UserError(r.error().message);
      exit_code() = interrupted_cmd ? 128 + SIGINT : *r;   // as a shell reports a Ctrl-C'd command
    }
  }
}

}  // namespace

void add_trace_command(CLI::App& app) {
  auto o = std::make_shared<TraceOptions>();
  auto* cmd = app.add_subcommand("trace", "Trace the system calls of guest processes from the hypervisor, like strace");
  cmd->footer(std::string("\n  -- CMD ARGS...    run CMD in the guest over SSH and trace it from its first system call\n") + kExamples);
  auto* vm_opt = cmd->add_option("--vm", o->vm_name, "VM to trace (started with `hvtrace vm up --monitor`)")->capture_default_str();
  cmd->add_option("-p,--pid", o->pids, "trace this process (repeatable); with -f its children too");
  cmd->add_option("--comm", o->comms,
                  "trace processes of this name as ps shows it (the executed file's basename, at most 15 characters), "
                  "running or started later: those from their execve (repeatable)");
  cmd->add_flag("-f,--follow-forks", o->follow, "follow fork, vfork, clone and clone3 children and threads");
  cmd->add_option("-e", o->exprs, "trace=SET (names, %file %process %network %desc %memory %signal %ipc, !negation) or status=failed|successful");
  cmd->add_option("-s,--string-limit", o->string_limit, "print at most this many bytes of each string (strace -s)")
      ->capture_default_str()->check(CLI::Range(1, 65536));
  cmd->add_option("-o,--output", o->output, "write the trace to FILE instead of stderr");
  cmd->add_flag("--json", o->json, "one JSON object per completed call (schema in README)");
  cmd->add_flag("-c,--summary-only", o->summary, "count time, calls and errors per syscall, and the monitor's own counts");
  cmd->add_flag("-t", o->timestamps, "prefix lines with the time of day (-tt: with microseconds, -ttt: epoch seconds)");
  cmd->add_flag("--ttt", o->ttt, "epoch timestamps with microseconds (same as -ttt)");
  cmd->add_flag("-T", o->duration_per_call, "show the time spent in each call");
  auto* method_opt = cmd->add_option("--method", o->method, "monitoring method 2, 3, 4 or 5 (docs/architecture.md)")->capture_default_str();
  cmd->add_option("--duration", o->duration, "stop after this many seconds");
  cmd->add_option("-w,--write", o->write_file, "also record the events and the guest's answers to FILE, for -r");
  cmd->add_option("-r,--read", o->read_file,
                  "decode a recording made with -w instead of a VM (-p/--comm/-f select from what was recorded, they cannot widen it)");
  cmd->callback([o, vm_opt, method_opt] {
    o->vm_given = vm_opt->count() > 0;
    o->method_given = method_opt->count() > 0;
    o->command = trailing_command();
    run_trace(*o);
  });
}

}  // namespace hvtrace::tools
