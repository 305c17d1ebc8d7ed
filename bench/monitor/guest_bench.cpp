// The paper's Table 1 on the real guest, plus the overhead targets: the jansson
// unzip+compile workload under QEMU with no plugin, with the monitor loaded but idle, and with
// the monitoring methods of docs/architecture.md ("Monitoring methods") — the same monitor, ring
// and application, only the filter's place and the delivery mode differ:
//   m2  all syscalls of all processes, sync; the application filters by DTB
//   m3  every CR3 write sync (application-side filter) + the target's syscalls sync
//   m4  CR3 writes pre-filtered in the monitor (old or new DTB in the set), sync + target's syscalls sync
//   m5  process-bound, filtered and pre-processed in the monitor, async (nothing pauses the guest)
//   all every syscall and CR3 write of every process, async (gives the per-event cost)
// The target is the shell that runs the workload (as the paper traces the SSH session's bash):
// it announces itself with a marker write, the bench learns its DTB from that event during a 1 s
// sleep, then applies the method. Methods run interleaved within one boot; "none" needs its own
// boot, so boots alternate (none, plugin, none, plugin...). Guest time is the workload's own
// measurement; QEMU CPU time is utime+stime of the QEMU process across the run.
//
// usage: monitor_guest_bench [--reps K] [--boots B] [--iterations N] [--methods idle,m5,...]
//                            [--baseline-plugin-args count=on]  (diagnosis: plugin in the "none" boots too;
//                                                               any other arguments load the full monitor there,
//                                                               idle, e.g. detect=everywhere,countchecks=on)
//                            [--plugin-args countchecks=on]     (more arguments for the plugin boots)
//                            [--skip-baseline 1]                (plugin boots only: long RSS runs)
//                            [--tb-size MiB]                    (bound TCG's code buffer so RSS can plateau)
#include "bench/host.hpp"
#include "events/control_client.hpp"
#include "events/event_reader.hpp"
#include "vm/vm.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

using namespace hvtrace;
using namespace std::chrono_literals;
using abi::Action;

namespace {

struct Sample {
  double guest_s = 0, cpu_s = 0, wall_s = 0;
  std::uint64_t events = 0, target_events = 0, lost = 0, sync_timeouts = 0;
  double ns_per_callback = 0;   // monitor self-timing: host time inside one trap callback
  std::uint64_t callbacks = 0;  // trap callbacks the monitor ran during the workload (a count: no noise)
  // countchecks=on: conditional checks the generated code executed, and kernel blocks executed
  // (counts, not timings: what a check costs is paid this many times).
  std::uint64_t checks = 0, kernel_blocks = 0;
};

double qemu_cpu_seconds(pid_t pid) { return bench::process_cpu_seconds(pid); }

// RssAnon: QEMU's heap, TB cache and the monitor's own allocations (guest RAM and the rings are
// shared-memory files and count as RssShmem instead).
long qemu_rss_kib(pid_t pid, const char* field = "RssAnon:") {
  std::ifstream f(fmt::format("/proc/{}/status", pid));
  std::string line;
  const std::size_t n = std::strlen(field);
  while (std::getline(f, line))
    if (line.compare(0, n, field) == 0) return std::stol(line.substr(n));
  return -1;
}

double parse_guest_seconds(const std::string& out) {
  const auto p = out.find("jansson-workload: ok:");
  if (p == std::string::npos) return -1;
  const auto s = out.rfind(", ", out.find(" s\n", p));
  return s == std::string::npos ? -1 : std::stod(out.substr(s + 2));
}

std::string workload_cmd(unsigned iterations) {
  return fmt::format("sh -c 'echo hvtrace-bench-go >/dev/null; sleep 1; set -- {}; . /usr/local/bin/jansson-workload'",
                     iterations);
}

// Drains the rings; remembers the DTB announced by the marker write; counts events.
struct Consumer {
  events::EventReader* reader = nullptr;
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> marker_dtb{0}, events{0}, target_events{0}, lost{0};
  std::thread t;
  void start() {
    t = std::thread([this] {
      while (!stop.load()) {
        auto n = reader->poll([this](const events::Event& e) {
          if (e.type == abi::RecordType::kLost) {
            lost += e.lost.lost;
            return;
          }
          ++events;
          const auto dtb = e.dtb().value;
          const auto target = marker_dtb.load(std::memory_order_relaxed);
          if (target != 0 && (dtb == target || (e.type == abi::RecordType::kCr3Write &&
                                                abi::dtb_of_cr3(e.cr3.old_cr3) == target)))
            ++target_events;
          if (target == 0 && e.type == abi::RecordType::kSyscallEntry && e.entry.nr == 1 && !e.captures.empty() &&
              e.captures[0].data == "hvtrace-bench-go\n")
            marker_dtb.store(dtb);
        });
        if (!n) {
          fmt::print(stderr, "reader: {}\n", n.error().message);
          return;
        }
        if (*n == 0) reader->wait(5ms);
      }
    });
  }
  void join() {
    stop = true;
    if (t.joinable()) t.join();
  }
};

struct Method {
  std::string name;
  bool process_bound;      // DTB set = {target}
  events::Actions actions;
};

const std::vector<Method> kMethods = {
    {"idle", false, {}},
    {"m2", false, {Action::kDrop, Action::kSync, Action::kSync, Action::kDrop, false}},
    {"m3", true, {Action::kSync, Action::kSync, Action::kSync, Action::kDrop, true}},
    {"m4", true, {Action::kSync, Action::kSync, Action::kSync, Action::kDrop, false}},
    {"m5", true, {Action::kAsync, Action::kAsync, Action::kAsync, Action::kDrop, false}},
    {"all", false, {Action::kAsync, Action::kAsync, Action::kAsync, Action::kDrop, false}},
};

Result<Sample> run_once(vm::Vm& v, unsigned iterations, const Method* m, events::ControlClient* ctl,
                        Consumer* consumer, events::EventReader* reader) {
  Sample s;
  if (m) {
    // Discovery: forward only write(2) entries of everybody until the marker shows up.
    consumer->marker_dtb = 0;
    HVTRACE_TRY(ctl->set_all_dtbs());
    HVTRACE_TRY(ctl->set_syscalls(std::vector<unsigned>{1}));
    HVTRACE_TRY(ctl->set_actions({Action::kDrop, Action::kAsync, Action::kDrop, Action::kDrop, false}));
  }
  std::uint64_t timeouts0 = 0, calls0 = 0, ns0 = 0;
  const std::uint64_t checks0 = reader ? reader->cond_checks() : 0, blocks0 = reader ? reader->kernel_blocks() : 0;
  if (reader)
    for (unsigned i = 0; i < reader->rings(); ++i) {
      const auto st = reader->stats(i);
      timeouts0 += st.sync_timeouts;
      calls0 += st.cb_calls;
      ns0 += st.cb_ns;
    }
  const pid_t qpid = v.record().qemu_pid;
  const double cpu0 = qemu_cpu_seconds(qpid);
  const auto t0 = std::chrono::steady_clock::now();
  Result<vm::ExecResult> out = make_error("not run");
  std::thread runner([&] { out = v.exec(workload_cmd(iterations), 1800s); });
  if (m) {
    const auto deadline = std::chrono::steady_clock::now() + 900ms;
    while (consumer->marker_dtb.load() == 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(2ms);
    const std::uint64_t dtb = consumer->marker_dtb.load();
    bool ok = dtb != 0;
    if (ok) {
      ok = ctl->set_actions({}).ok() && ctl->set_syscalls(std::nullopt).ok() &&
           (m->process_bound ? ctl->set_dtbs({Dtb{dtb}}).ok() : ctl->set_all_dtbs().ok());
      consumer->events = 0;
      consumer->target_events = 0;
      consumer->lost = 0;
      ok = ok && ctl->set_actions(m->actions).ok();
    }
    if (!ok) fmt::print(stderr, "  {}: target not found in time; run not traced as intended\n", m->name);
  }
  runner.join();
  s.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  s.cpu_s = qemu_cpu_seconds(qpid) - cpu0;
  if (!out) return out.error();
  if (out->exit_status != 0) return make_error("workload failed: {}{}", out->out, out->err);
  s.guest_s = parse_guest_seconds(out->out);
  if (reader) {
    std::this_thread::sleep_for(120ms);   // the monitor copies the counts every 50 ms
    s.checks = reader->cond_checks() - checks0;
    s.kernel_blocks = reader->kernel_blocks() - blocks0;
  }
  if (m) {
    HVTRACE_TRY(ctl->set_actions({}));
    std::this_thread::sleep_for(50ms);
    s.events = consumer->events;
    s.target_events = consumer->target_events;
    s.lost = consumer->lost;
    std::uint64_t calls = 0, ns = 0;
    for (unsigned i = 0; i < reader->rings(); ++i) {
      const auto st = reader->stats(i);
      s.sync_timeouts += st.sync_timeouts;
      calls += st.cb_calls;
      ns += st.cb_ns;
    }
    s.sync_timeouts -= timeouts0;
    // Sync callbacks include the wait for the application's answer.
    s.callbacks = calls - calls0;
    if (calls > calls0) s.ns_per_callback = static_cast<double>(ns - ns0) / static_cast<double>(calls - calls0);
  }
  return s;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  unsigned reps = 3, boots = 2, iterations = 1;
  bool skip_baseline = false;                     // --skip-baseline: plugin boots only (long RSS runs)
  unsigned tb_size_mib = 0;                       // --tb-size: bound TCG's code buffer so RSS can plateau
  std::vector<std::string> baseline_plugin_args;  // --baseline-plugin-args a=b,c=d: load the plugin in the "none" boots
                                                  // too (e.g. count=on) to split QEMU's plugin overhead from ours
  std::vector<std::string> plugin_args = {"selftime=on"};   // --plugin-args: more for the plugin boots
  std::vector<std::string> methods = {"idle", "m5", "all", "m4", "m3", "m2"};
  const auto split = [](const std::string& v, std::vector<std::string>* out) {
    std::stringstream ss(v);
    for (std::string a; std::getline(ss, a, ',');) out->push_back(a);
  };
  for (int i = 1; i < argc; i += 2) {
    std::string k = argv[i];
    const std::string val = i + 1 < argc ? argv[i + 1] : "";
    if (val.empty()) k.clear();   // a flag without its value (or --help): the usage, exit 2
    if (k == "--reps") reps = static_cast<unsigned>(std::stoul(val));
    else if (k == "--boots") boots = static_cast<unsigned>(std::stoul(val));
    else if (k == "--iterations") iterations = static_cast<unsigned>(std::stoul(val));
    else if (k == "--skip-baseline") skip_baseline = val == "1" || val == "yes";
    else if (k == "--tb-size") tb_size_mib = static_cast<unsigned>(std::stoul(val));
    else if (k == "--baseline-plugin-args") split(val, &baseline_plugin_args);
    else if (k == "--plugin-args") split(val, &plugin_args);
    else if (k == "--methods") {
      methods.clear();
      split(val, &methods);
    } else {
      fmt::print(stderr,
                 "usage: {} [--reps K] [--boots B] [--iterations N] [--methods idle,m2,m3,m4,m5,all]"
                 " [--baseline-plugin-args k=v,...] [--plugin-args k=v,...] [--skip-baseline 1] [--tb-size MiB]\n",
                 argv[0]);
      return 2;
    }
  }
  vm::install_termination_handlers();
  auto img = vm::load_image(vm::default_image_dir());
  if (!img) {
    fmt::print(stderr, "guest image: {}\n", img.error().message);
    return 1;
  }
  std::map<std::string, std::vector<Sample>> samples;
  long rss_first = -1, rss_last = -1;
  for (unsigned b = 0; b < boots && !vm::termination_requested(); ++b) {
    for (const bool with_plugin : {false, true}) {
      if (!with_plugin && skip_baseline) continue;
      vm::VmConfig c;
      c.name = "bench-mon";
      c.image = *img;
      c.tcg_tb_size_mib = tb_size_mib;
      const auto files = vm::monitor_files(c.name);
      // The baseline with the full monitor loaded (not count=on): open its rings for the counts.
      const bool baseline_monitor = !with_plugin && !baseline_plugin_args.empty() &&
                                    std::find(baseline_plugin_args.begin(), baseline_plugin_args.end(), "count=on") ==
                                        baseline_plugin_args.end();
      if (with_plugin) c.plugin = vm::monitor_plugin(HVTRACE_MONITOR_PLUGIN, c.name, plugin_args);
      else if (baseline_monitor) c.plugin = vm::monitor_plugin(HVTRACE_MONITOR_PLUGIN, c.name, baseline_plugin_args);
      else if (!baseline_plugin_args.empty()) c.plugin = vm::PluginSpec{HVTRACE_MONITOR_PLUGIN, baseline_plugin_args};
      auto v = vm::Vm::start(c);
      if (!v) {
        fmt::print(stderr, "boot: {}\n", v.error().message);
        return 1;
      }
      std::unique_ptr<events::EventReader> reader;
      std::optional<events::ControlClient> ctl;
      Consumer consumer;
      if (baseline_monitor) {
        auto r = events::EventReader::open(files.rings, 5s);
        if (!r) {
          fmt::print(stderr, "monitor rings: {}\n", r.error().message);
          return 1;
        }
        reader = std::move(r).value();
      }
      if (with_plugin) {
        auto r = events::EventReader::open(files.rings, 5s);
        auto cl = events::ControlClient::connect(files.control, 5s);
        if (!r || !cl || !cl->attach()) {
          fmt::print(stderr, "monitor channel: {}\n", !r ? r.error().message : !cl ? cl.error().message : "attach failed");
          return 1;
        }
        reader = std::move(r).value();
        ctl.emplace(std::move(cl).value());
        consumer.reader = reader.get();
        consumer.start();
      }
      (void)run_once(**v, iterations, nullptr, nullptr, nullptr, nullptr);  // warm-up: page cache, TB cache
      if (with_plugin && rss_first < 0) rss_first = qemu_rss_kib((*v)->record().qemu_pid);
      for (unsigned r = 0; r < reps && !vm::termination_requested(); ++r) {
        if (!with_plugin) {
          auto s = run_once(**v, iterations, nullptr, nullptr, nullptr, reader.get());
          if (!s) fmt::print(stderr, "none: {}\n", s.error().message);
          else samples["none"].push_back(*s);
          fmt::print(stderr, "  boot {} rep {} none  guest {:.2f} s cpu {:.2f} s RssAnon {} KiB\n", b, r,
                     s ? s->guest_s : -1, s ? s->cpu_s : -1, qemu_rss_kib((*v)->record().qemu_pid));
          continue;
        }
        for (const auto& name : methods) {
          auto it = std::find_if(kMethods.begin(), kMethods.end(), [&](const Method& m) { return m.name == name; });
          if (it == kMethods.end()) continue;
          auto s = run_once(**v, iterations, &*it, &*ctl, &consumer, reader.get());
          if (!s) fmt::print(stderr, "{}: {}\n", name, s.error().message);
          else samples[name].push_back(*s);
          fmt::print(stderr, "  boot {} rep {} {:<5} guest {:.2f} s cpu {:.2f} s events {} lost {} RssAnon {} KiB\n", b, r,
                     name, s ? s->guest_s : -1, s ? s->cpu_s : -1, s ? s->events : 0, s ? s->lost : 0,
                     qemu_rss_kib((*v)->record().qemu_pid));
        }
      }
      if (with_plugin) rss_last = qemu_rss_kib((*v)->record().qemu_pid);
      consumer.join();
      ctl.reset();
      (void)(*v)->shutdown();
    }
  }
  const double base_guest = median([&] { std::vector<double> x; for (auto& s : samples["none"]) x.push_back(s.guest_s); return x; }());
  const double base_cpu = median([&] { std::vector<double> x; for (auto& s : samples["none"]) x.push_back(s.cpu_s); return x; }());
  fmt::print("jansson-workload {} iteration(s), {} boot(s) x {} rep(s), medians\n", iterations, boots, reps);
  fmt::print("{:<6} {:>9} {:>7} {:>9} {:>7} {:>10} {:>10} {:>7} {:>9} {:>12} {:>10} {:>12} {:>12} {:>12}\n", "method",
             "guest_s", "ratio", "qemu_cpu_s", "ratio", "events", "target_ev", "lost", "sync_tmo", "us/event", "callbacks",
             "ns/callback", "checks", "kernel_tbs");
  const double idle_cpu = median([&] { std::vector<double> x; for (auto& s : samples["idle"]) x.push_back(s.cpu_s); return x; }());
  for (const std::string name : {"none", "idle", "m2", "m3", "m4", "m5", "all"}) {
    auto& v = samples[name];
    if (v.empty()) continue;
    std::vector<double> g, c, e, te, l, st, cb, nc, ck, kb;
    for (auto& s : v) {
      g.push_back(s.guest_s);
      c.push_back(s.cpu_s);
      e.push_back(static_cast<double>(s.events));
      te.push_back(static_cast<double>(s.target_events));
      l.push_back(static_cast<double>(s.lost));
      st.push_back(static_cast<double>(s.sync_timeouts));
      cb.push_back(s.ns_per_callback);
      nc.push_back(static_cast<double>(s.callbacks));
      ck.push_back(static_cast<double>(s.checks));
      kb.push_back(static_cast<double>(s.kernel_blocks));
    }
    // CPU difference per event is only meaningful when events dominate (tick resolution is 10 ms).
    const double per_event = median(e) >= 10'000 && idle_cpu > 0 ? (median(c) - idle_cpu) / median(e) * 1e6 : 0;
    fmt::print("{:<6} {:>9.3f} {:>7.3f} {:>10.3f} {:>7.3f} {:>10.0f} {:>10.0f} {:>7.0f} {:>9.0f} {:>12.2f} {:>10.0f} {:>12.0f} "
               "{:>12.0f} {:>12.0f}\n",
               name, median(g), median(g) / base_guest, median(c), median(c) / base_cpu, median(e), median(te),
               median(l), median(st), per_event, median(nc), median(cb), median(ck), median(kb));
  }
  fmt::print("QEMU RssAnon with the monitor: {} KiB after warm-up, {} KiB at the end of the last plugin boot\n",
             rss_first, rss_last);
  return 0;
}
