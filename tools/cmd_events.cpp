// hvtrace events: attach to a running VM's monitor (the plugin's rings file and control socket),
// set the in-hypervisor filter, and print every event as one JSON object per line — the raw view
// of what the monitor delivers, for debugging and for scripts. Loss is printed as it happens
// ({"type":"lost",...}) and totalled per vCPU on stderr at the end.
// By convention the monitor's files live in the VM's run directory as mon.rings and mon.ctl:
//   hvtrace vm up --name v --plugin .../libhvtrace-monitor.so
//       --plugin-arg shm=/dev/shm/hvtrace/v/mon.rings --plugin-arg ctl=/dev/shm/hvtrace/v/mon.ctl
//   hvtrace events --vm v --entry async --exit async -e 1,59 --count 100
#include "commands.hpp"
#include "output.hpp"

#include "common/result.hpp"
#include "events/control_client.hpp"
#include "events/event_reader.hpp"
#include "guest_view.hpp"
#include "mem/phys_mem.hpp"
#include "vm/vm.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hvtrace::tools {
namespace {

struct EventsOptions {
  std::string vm_name = "default";
  std::string shm, ctl;
  std::vector<std::string> dtbs;
  std::vector<unsigned> syscalls;
  std::string cr3 = "drop", entry = "async", exit = "async";
  std::uint32_t snaplen = abi::kDefaultSnapLen;
  std::uint64_t count = 0;       // 0: until interrupted
  double duration = 0;           // seconds, 0: until interrupted
  std::vector<std::string> breaks;   // --break: SYMBOL, 0xVA (kernel; @dtbs: only in --dtb's) or PID:0xVA (user)
  std::string bp_action = "async";
};

// One --break argument as the monitor takes it. Symbols and PIDs are resolved in guest memory
// (attached on first need).
struct BreakTarget {
  std::string where;
  std::optional<std::uint32_t> pid;   // user breakpoint in this process
  std::optional<std::uint64_t> va;
  std::string symbol;                 // kernel symbol (kallsyms)
  bool in_dtbs = false;               // kernel, only in the address spaces of the DTB filter (--dtb)
};

std::optional<std::uint64_t> parse_hex(std::string_view s) {
  if (s.size() <= 2 || s[0] != '0' || (s[1] != 'x' && s[1] != 'X')) return std::nullopt;
  std::uint64_t v = 0;
  const auto r = std::from_chars(s.data() + 2, s.data() + s.size(), v, 16);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

BreakTarget parse_break(const std::string& arg) {
  BreakTarget t;
  t.where = arg;
  constexpr std::string_view kInDtbs = "@dtbs";
  std::string w = arg;
  if (w.size() > kInDtbs.size() && w.ends_with(kInDtbs)) {
    w.resize(w.size() - kInDtbs.size());
    t.in_dtbs = true;
  }
  const auto colon = w.find(':');
  if (colon != std::string::npos) {
    if (t.in_dtbs)
      throw UserError(fmt::format("--break '{}': @dtbs scopes a kernel breakpoint; PID:0xADDRESS is already only that process's", arg));
    std::uint32_t pid = 0;
    const auto r = std::from_chars(w.data(), w.data() + colon, pid);
    t.va = parse_hex(std::string_view(w).substr(colon + 1));
    if (r.ec != std::errc() || r.ptr != w.data() + colon || pid == 0 || !t.va)
      throw UserError(fmt::format("--break '{}': a user breakpoint is PID:0xADDRESS (e.g. 153:0x7f3a12c4e2f0)", w));
    t.pid = pid;
    return t;
  }
  t.va = parse_hex(w);
  if (!t.va) {
    if (w.empty() || w.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.") != std::string::npos)
      throw UserError(fmt::format("--break '{}': give a kernel symbol (e.g. do_sys_openat2), 0xADDRESS, either with @dtbs "
                                  "(only in the --dtb address spaces), or PID:0xADDRESS",
                                  arg));
    t.symbol = w;
  }
  return t;
}

abi::Action action_of(const std::string& s) {
  if (s == "drop") return abi::Action::kDrop;
  if (s == "async") return abi::Action::kAsync;
  if (s == "sync") return abi::Action::kSync;
  throw UserError(fmt::format("action '{}': use drop, async or sync", s));
}

std::string hex(std::uint64_t v) { return fmt::format("{:#x}", v); }

// Guest bytes as strace prints them: printable ASCII as is, the rest as \n, \t or \xNN.
std::string escaped(const std::string& bytes) {
  std::string out;
  for (unsigned char ch : bytes) {
    if (ch == '\n') out += "\\n";
    else if (ch == '\t') out += "\\t";
    else if (ch == '\\') out += "\\\\";
    else if (ch >= 0x20 && ch < 0x7f) out += static_cast<char>(ch);
    else out += fmt::format("\\x{:02x}", ch);
  }
  return out;
}

nlohmann::json to_json(const events::Event& e) {
  nlohmann::json j = {{"vcpu", e.ring}, {"seq", e.seq}, {"time_ns", e.time_ns}, {"gen", e.generation}};
  if (e.insns != 0) j["insns"] = e.insns;
  if (e.sync()) j["sync"] = true;
  switch (e.type) {
    case abi::RecordType::kLost:
      j["type"] = "lost";
      j["lost"] = e.lost.lost;
      j["first_seq"] = e.lost.first_seq;
      j["last_seq"] = e.lost.last_seq;
      break;
    case abi::RecordType::kCr3Write:
      j["type"] = "cr3";
      j["old"] = hex(e.cr3.old_cr3);
      j["new"] = hex(e.cr3.new_cr3);
      j["rip"] = hex(e.cr3.rip);
      if (e.cr3.who.task) {
        j["pid"] = e.cr3.who.tgid;
        j["tid"] = e.cr3.who.pid;
      }
      break;
    case abi::RecordType::kSyscallEntry:
      j["type"] = "entry";
      j["nr"] = e.entry.nr;
      j["args"] = nlohmann::json::array();
      for (auto a : e.entry.args) j["args"].push_back(hex(a));
      j["dtb"] = hex(e.dtb().value);
      j["rip"] = hex(e.entry.user_rip);
      j["rsp"] = hex(e.entry.user_rsp);
      j["abi"] = events::abi_name(e.syscall_abi());
      j["door"] = events::door_name(e.door());
      j["kgs"] = hex(e.entry.kernel_gs_base);
      if (e.entry.who.task) {
        j["pid"] = e.entry.who.tgid;
        j["tid"] = e.entry.who.pid;
      }
      break;
    case abi::RecordType::kSyscallExit:
      j["type"] = "exit";
      j["nr"] = e.exit.nr;
      j["ret"] = e.exit.ret;
      j["dtb"] = hex(e.dtb().value);
      j["entry_seq"] = e.exit.entry_seq;
      j["via"] = e.exit.via == static_cast<std::uint16_t>(abi::ExitVia::kIret)      ? "iret"
                 : e.exit.via == static_cast<std::uint16_t>(abi::ExitVia::kSysretl) ? "sysretl"
                 : e.exit.via == static_cast<std::uint16_t>(abi::ExitVia::kSignal)  ? "signal"
                                                                                   : "sysret";
      if (e.exit.via == static_cast<std::uint16_t>(abi::ExitVia::kSignal)) j["signo"] = e.exit.signo;
      j["abi"] = events::abi_name(e.syscall_abi());
      j["door"] = events::door_name(e.door());
      if (e.exit.who.task) {
        j["pid"] = e.exit.who.tgid;
        j["tid"] = e.exit.who.pid;
      }
      break;
    case abi::RecordType::kBreakpoint:
      j["type"] = "bp";
      j["id"] = e.bp.id;
      j["va"] = hex(e.bp.va);
      j["dtb"] = hex(e.dtb().value);
      j["args"] = nlohmann::json::array();
      for (unsigned i = 0; i < 6; ++i) j["args"].push_back(hex(e.bp.regs[i]));
      j["rsp"] = hex(e.bp.rsp);
      if (e.bp.flags & abi::kBpRetAddrRead) j["ret_addr"] = hex(e.bp.ret_addr);
      else j["ret_addr"] = nullptr;
      break;
    default: j["type"] = "unknown"; break;
  }
  for (const auto& c : e.captures) {
    nlohmann::json cj = {{"arg", c.arg}, {"true_len", c.true_len}, {"truncated", c.truncated()}};
    if (c.kind == abi::CaptureKind::kArgv) {
      cj["argv"] = nlohmann::json::array();
      for (const auto& a : c.argv()) cj["argv"].push_back(escaped(a));
    } else {
      cj["data"] = escaped(c.data);
    }
    j["captures"].push_back(cj);
  }
  return j;
}

void run_events(const EventsOptions& o) {
  vm::install_termination_handlers();
  const auto files = vm::monitor_files(o.vm_name);
  std::optional<vm::VmWatch> watch;  // stop when the VM's QEMU goes away (not with --shm/--ctl alone)
  if (o.shm.empty() || o.ctl.empty()) {
    const auto rec = value_or_throw(vm::find_vm(o.vm_name));
    watch.emplace(rec);
    if (!vm::fs::exists(files.rings))
      throw UserError(fmt::format("VM '{}' runs without the hvtrace monitor; start it with `hvtrace vm up --name {} "
                                  "--monitor` (or give --shm and --ctl)",
                                  rec.name, rec.name));
  }
  const std::string shm = o.shm.empty() ? files.rings.string() : o.shm;
  const std::string ctlp = o.ctl.empty() ? files.control.string() : o.ctl;
  // Run-time breakpoints: resolved before anything changes in the monitor, validated by it (it
  // says why it refuses one), removed again however this command ends.
  std::vector<BreakTarget> breaks;
  for (const auto& w : o.breaks) breaks.push_back(parse_break(w));
  const abi::Action bp_action = action_of(o.bp_action);
  if (bp_action == abi::Action::kDrop) throw UserError("--bp-action drop: use async or sync");
  std::vector<events::BreakpointSpec> specs;
  {
    std::optional<GuestView> guest;
    for (auto& b : breaks) {
      if ((!b.symbol.empty() || b.pid) && !guest) {
        if (!watch) throw UserError("--break with a symbol or PID needs --vm (the guest's memory), not only --shm/--ctl");
        guest.emplace(attach_guest(value_or_throw(mem::open_ram_file(value_or_throw(vm::find_vm(o.vm_name)).ram_path))));
      }
      events::BreakpointSpec spec;
      spec.id = static_cast<std::uint32_t>(specs.size() + 1);
      spec.action = bp_action;
      if (!b.symbol.empty()) {
        if (const auto va = guest->kernel->symbol(b.symbol)) {
          b.va = va->value;
        } else {   // beyond the profile's symbols: the guest's whole kallsyms
          const auto all = value_or_throw(guest->kernel->all_symbols());
          const auto it = std::find_if(all.begin(), all.end(), [&](const kernel::Symbol& k) { return k.name == b.symbol; });
          if (it == all.end()) throw UserError(fmt::format("--break {}: no such symbol in the guest kernel's kallsyms", b.symbol));
          b.va = it->addr.value;
        }
      }
      spec.va = *b.va;
      if (b.in_dtbs) spec.kind = abi::BreakpointKind::kKernelTraced;   // follows the filter set below
      if (b.pid) {
        auto p = value_or_throw(guest->os->find_pid(Pid{static_cast<std::int32_t>(*b.pid)}));
        if (!p || !p->dtb) throw UserError(fmt::format("--break {}: no process with pid {} in the guest", b.where, *b.pid));
        spec.kind = abi::BreakpointKind::kUser;
        spec.dtbs = {*p->dtb};
      }
      specs.push_back(std::move(spec));
    }
  }
  auto reader = value_or_throw(events::EventReader::open(shm, std::chrono::seconds{5}));
  auto ctl = value_or_throw(events::ControlClient::connect(ctlp, std::chrono::seconds{5}));
  // Events still in the rings from before this attach belong to an earlier consumer's filter.
  const std::uint32_t attached_gen = value_or_throw(ctl.attach());
  std::uint64_t stale = 0;
  if (o.dtbs.empty()) {
    value_or_throw(ctl.set_all_dtbs());
  } else {
    std::vector<Dtb> d;
    for (const auto& s : o.dtbs) {
      std::uint64_t v = 0;
      const auto* end = s.data() + s.size();
      const bool hex = s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
      const auto r = std::from_chars(s.data() + (hex ? 2 : 0), end, v, hex ? 16 : 10);
      if (s.empty() || r.ec != std::errc() || r.ptr != end)
        throw UserError(fmt::format("--dtb '{}': expected a page-table base such as 0x2b62000 (hvtrace ps shows them)", s));
      d.push_back(Dtb{v});
    }
    value_or_throw(ctl.set_dtbs(d));
  }
  value_or_throw(ctl.set_syscalls(o.syscalls.empty() ? std::nullopt : std::optional(o.syscalls)));
  value_or_throw(ctl.set_snap_len(o.snaplen));
  value_or_throw(ctl.set_actions({action_of(o.cr3), action_of(o.entry), action_of(o.exit), abi::Action::kDrop}));
  std::map<std::uint32_t, std::string> bp_names;
  struct RemoveAll {
    events::ControlClient& ctl;
    std::map<std::uint32_t, std::string>& ids;
    ~RemoveAll() {
      for (const auto& [id, name] : ids) (void)ctl.remove_breakpoint(id);
    }
  } remove_all{ctl, bp_names};
  for (std::size_t i = 0; i < specs.size(); ++i) {
    if (auto r = ctl.add_breakpoint(specs[i]); !r) throw UserError(fmt::format("--break {}: {}", breaks[i].where, r.error().message));
    bp_names[specs[i].id] = breaks[i].where;
  }
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(o.duration);
  std::uint64_t n = 0;
  bool vm_alive = true;
  // When the reader of stdout leaves (`hvtrace events | head`), stop quietly but still detach.
  (void)print_guarded(stdout, [&] {
    while (!vm::termination_requested() && (o.count == 0 || n < o.count) &&
           (o.duration == 0 || std::chrono::steady_clock::now() < end)) {
      vm_alive = !watch || watch->alive();  // before the poll: the last poll drains what QEMU left
      const std::uint64_t stale_before = stale;
      auto got = reader->poll([&](const events::Event& e) {
        if (e.generation < attached_gen) {
          ++stale;
          return;
        }
        auto j = to_json(e);
        if (e.type == abi::RecordType::kBreakpoint)
          if (auto it = bp_names.find(e.bp.id); it != bp_names.end()) j["break"] = it->second;
        write_line(stdout, j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      }, o.count ? o.count - n : SIZE_MAX);
      const std::size_t k = value_or_throw(std::move(got));
      n += k - std::min<std::size_t>(k, stale - stale_before);
      if (!vm_alive) break;
      if (k == 0) {
        flush_output(stdout);  // idle: hand lines to the reader, and notice one that left
        reader->wait(std::chrono::milliseconds{20});
      }
    }
  });
  (void)ctl.set_actions({});
  (void)ctl.detach();
  for (unsigned i = 0; i < reader->rings(); ++i) {
    const auto s = reader->stats(i);
    if (s.dropped() != 0 || s.sync_timeouts != 0)
      fmt::print(stderr, "vCPU {}: lost {} events (ring full {}, too big {}), {} sync waits timed out\n", i,
                 s.dropped(), s.drops[0], s.drops[1], s.sync_timeouts);
  }
  if (stale != 0) fmt::print(stderr, "{} event(s) left in the rings by an earlier consumer were skipped\n", stale);
  if (!vm_alive) throw UserError(watch->stopped_message() + " while tracing");
}

}  // namespace

void add_events_command(CLI::App& app) {
  auto o = std::make_shared<EventsOptions>();
  auto* cmd = app.add_subcommand("events", "Print the monitor's raw events as JSON Lines (set the in-hypervisor filter first)");
  cmd->add_option("--vm", o->vm_name, "VM whose run directory holds mon.rings and mon.ctl")->capture_default_str();
  cmd->add_option("--shm", o->shm, "the monitor's rings file (default <run dir>/mon.rings)");
  cmd->add_option("--ctl", o->ctl, "the monitor's control socket (default <run dir>/mon.ctl)");
  cmd->add_option("--dtb", o->dtbs, "only these page-table bases (repeatable; default all)");
  cmd->add_option("-e,--syscalls", o->syscalls, "only these syscall numbers (comma-separated)")->delimiter(',');
  cmd->add_option("--cr3", o->cr3, "action for CR3 writes: drop|async|sync")->capture_default_str();
  cmd->add_option("--entry", o->entry, "action for syscall entries")->capture_default_str();
  cmd->add_option("--exit", o->exit, "action for syscall exits")->capture_default_str();
  cmd->add_option("-s,--snaplen", o->snaplen, "bytes copied per string/buffer (0..65536)")->capture_default_str();
  cmd->add_option("-c,--count", o->count, "stop after N events");
  cmd->add_option("--duration", o->duration, "stop after S seconds");
  cmd->add_option("--break", o->breaks,
                  "a run-time breakpoint (repeatable, up to 64): a kernel SYMBOL or 0xADDRESS (every process; "
                  "with a @dtbs suffix only in the address spaces --dtb gives), or "
                  "PID:0xADDRESS (user code of that process); its hits print as {\"type\":\"bp\",\"break\":...}");
  cmd->add_option("--bp-action", o->bp_action, "breakpoint delivery: async, or sync (the vCPU waits for hvtrace)")
      ->capture_default_str();
  cmd->callback([o] { run_events(*o); });
}

}  // namespace hvtrace::tools
