// `hvtrace farm up|status|down|bench-reset`: a honeypot fleet on one host (docs/farm.md).
//
// `farm up` checks everything it can before anything starts (port range, ports free, memory, no
// farm or VM of that name), binds the public ports itself, then forks a detached supervisor that
// owns the VMs (vm::Vm, so QEMU dies with it) and reports progress through a pipe until every VM
// is ready. Per VM the supervisor runs one thread:
//
//   boot (monitor loaded) -> snapshot "clean" once -> loop {
//     start `hvtrace session --vm NAME --sessions 1 ...` (a child; waits until it watches)
//     ready: accept ONE connection on the public port and proxy it to the guest's loopback SSH
//            forward (other attackers wait in the listen backlog: nothing reaches the guest)
//     in_session until the connection closes; the watcher then ends (its session closed)
//     resetting: snapshot-load (QMP job) -> the guest is back at its clean boot state
//   }
//
// QEMU dying at any point replaces the VM (boot again, snapshot retaken) and is logged.
// State for `farm status` is <run_root>/farm.<name>/status.json, rewritten on every change; the
// event log is <output dir>/farm.jsonl (kept after `farm down`, like the sessions).
#include "commands.hpp"
#include "vm_options.hpp"

#include "bench/stats.hpp"
#include "farm/farm.hpp"
#include "farm/snapshot.hpp"
#include "vm/vm.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <thread>

namespace hvtrace::tools {

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

struct FarmOptions {
  unsigned vms = 2;
  std::string ports;
  std::string listen = "127.0.0.1";
  std::string sensor;
  std::string dir = "farm-sessions";
  std::string publish;
  std::string name = "farm";
  unsigned memory_mib = 256;
  unsigned boot_timeout_s = 180;
};

fs::path farm_dir(const std::string& name) { return vm::run_root() / ("farm." + name); }

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool pid_running(pid_t pid) {
  if (pid <= 0 || kill(pid, 0) != 0) return false;
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto p = s.rfind(')');
  return p == std::string::npos || p + 2 >= s.size() || s[p + 2] != 'Z';
}

// A running farm's status, or an error naming what to do.
Result<farm::FarmStatus> read_status(const std::string& name) {
  const fs::path dir = farm_dir(name);
  std::ifstream in(dir / "status.json");
  if (!in) return make_error("no farm '{}' is running (start one with `hvtrace farm up --vms N --ssh-ports A-B`)", name);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto st = farm::status_from_json(text);
  if (!st) return std::move(st).error();
  if (!pid_running(st->supervisor_pid)) {
    std::error_code ec;
    fs::remove_all(dir, ec);
    return make_error("no farm '{}' is running (its supervisor pid {} is gone; removed its stale state)", name,
                      st->supervisor_pid);
  }
  return st;
}

// Bind and listen on addr:port for the public side; the supervisor inherits the socket.
Result<int> listen_on(const std::string& addr, std::uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (inet_pton(AF_INET, addr.c_str(), &a.sin_addr) != 1)
    return make_error("--listen '{}': expected an IPv4 address such as 127.0.0.1 or 0.0.0.0", addr);
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error("socket: {}", strerror(errno));
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 16) != 0) {
    const int e = errno;
    close(fd);
    return make_error("port {}:{} is not available: {}; choose another --ssh-ports range", addr, port, strerror(e));
  }
  return fd;
}

int connect_loopback(std::uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// "203.0.113.9:51234" / "[2001:db8::1]:51234"
std::string peer_text(const sockaddr_storage& a) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (a.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(a);
    inet_ntop(AF_INET, &in.sin_addr, host, sizeof host);
    return fmt::format("{}:{}", host, ntohs(in.sin_port));
  }
  const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a);
  inet_ntop(AF_INET6, &in6.sin6_addr, host, sizeof host);
  return fmt::format("[{}]:{}", host, ntohs(in6.sin6_port));
}

bool write_all(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

// The supervisor: everything the detached process owns.
class Farm {
 public:
  Farm(FarmOptions o, std::vector<int> listen_fds, int report_fd)
      : o_(std::move(o)), listen_fds_(std::move(listen_fds)), report_fd_(report_fd), dir_(farm_dir(o_.name)) {
    status_.name = o_.name;
    status_.supervisor_pid = getpid();
    status_.listen = o_.listen;
    status_.output_dir = fs::absolute(o_.dir).string();
    status_.sensor = o_.sensor;
    status_.started_unix = unix_now();
    const auto first = farm::parse_port_range(o_.ports)->first;
    for (unsigned i = 0; i < o_.vms; ++i) {
      farm::VmStatus v;
      v.name = fmt::format("{}-{}", o_.name, i);
      v.port = static_cast<std::uint16_t>(first + i);
      status_.vms.push_back(v);
    }
    self_ = fs::read_symlink("/proc/self/exe");
    log_.open(fs::path(o_.dir) / "farm.jsonl", std::ios::app);
  }

  int run() {
    write_status();
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < o_.vms; ++i) threads.emplace_back([this, i] { slot(i); });
    // Until every VM is ready once (or one failed to boot), then tell `farm up`.
    {
      std::unique_lock lock(mu_);
      while (booted_ < o_.vms && first_error_.empty() && !vm::termination_requested())
        cv_.wait_for(lock, 200ms);
    }
    const bool ok = booted_ >= o_.vms && first_error_.empty() && !vm::termination_requested();
    report(ok ? 'R' : 'E', ok ? "" : (first_error_.empty() ? std::string("interrupted") : first_error_));
    close(report_fd_);
    report_fd_ = -1;
    if (!ok) stop_ = true;
    while (!stop_ && !vm::termination_requested()) std::this_thread::sleep_for(200ms);
    stop_ = true;
    log_event("", "farm_down", {});
    for (auto& t : threads) t.join();
    std::error_code ec;
    fs::remove_all(dir_, ec);
    return ok ? 0 : 1;
  }

 private:
  void report(char kind, std::string_view msg) {
    if (report_fd_ >= 0) vm::report_to_starter(report_fd_, kind, msg);
  }

  void write_status() {
    const fs::path tmp = dir_ / "status.json.tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << farm::to_json(status_).dump(2) << '\n';
    }
    std::error_code ec;
    fs::rename(tmp, dir_ / "status.json", ec);
  }

  // Change VM i's status under the lock and publish it.
  template <typename F>
  void update(unsigned i, F&& f) {
    std::lock_guard lock(mu_);
    f(status_.vms[i]);
    write_status();
  }

  void log_event(const std::string& vm, const std::string& event, nlohmann::json extra) {
    std::lock_guard lock(mu_);
    extra["time"] = unix_now();
    extra["event"] = event;
    if (!vm.empty()) extra["vm"] = vm;
    log_ << extra.dump() << '\n';
    log_.flush();
  }

  bool stopping() const { return stop_ || vm::termination_requested(); }

  // The per-VM watcher: `hvtrace session --sessions 1`, its output in the farm's run directory.
  pid_t start_watcher(const std::string& name) {
    std::vector<std::string> args = {self_.string(), "session", "--vm", name, "--sessions", "1", "-o", o_.dir,
                                     "--sensor", o_.sensor.empty() ? name : o_.sensor};
    // One spool per VM: the watchers of different VMs run at the same time.
    if (!o_.publish.empty())
      args.insert(args.end(), {"--publish", o_.publish, "--spool", (fs::path(o_.dir) / (".publish-spool-" + name)).string()});
    const fs::path log = dir_ / ("watcher-" + name + ".log");
    std::error_code ec;
    fs::remove(log, ec);  // the previous watcher's "watching" line must not count for this one
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid != 0) return pid;
    prctl(PR_SET_PDEATHSIG, SIGINT);
    if (getppid() != parent) _exit(1);
    const int out = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (out >= 0) {
      dup2(out, 1);
      dup2(out, 2);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }

  std::string watcher_log(const std::string& name) {
    std::ifstream in(dir_ / ("watcher-" + name + ".log"));
    return {(std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()};
  }

  // SIGINT (it flushes and closes its sessions), then SIGKILL; returns its exit status text.
  static void stop_watcher(pid_t& pid, std::chrono::milliseconds grace) {
    if (pid <= 0) return;
    const auto end = Clock::now() + grace;
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (Clock::now() > end) {
        kill(pid, SIGINT);
        if (Clock::now() > end + 10s) kill(pid, SIGKILL);
      }
      std::this_thread::sleep_for(50ms);
    }
    pid = 0;
  }

  // Adds the watcher's loss counters (its summary lines) to VM i. Returns the fields for its
  // session_end event: with --publish, the publisher's summary line (`publish`), the only record
  // of what was dropped or left in the spool (the next watcher's log replaces this one).
  nlohmann::json account_watcher(unsigned i, const std::string& name) {
    const std::string text = watcher_log(name);
    static const std::regex lost(R"(lost events: (\d+) .*sync waits timed out: (\d+))");
    static const std::regex published(R"(published: [^\n]*)");
    std::smatch m;
    if (std::regex_search(text, m, lost))
      update(i, [&](farm::VmStatus& v) {
        v.lost_events += std::stoull(m[1]);
        v.sync_timeouts += std::stoull(m[2]);
      });
    nlohmann::json extra = nlohmann::json::object();
    if (std::regex_search(text, m, published)) extra["publish"] = m.str();
    return extra;
  }

  // Boot VM i and take its snapshot; nullptr on failure (status says why).
  std::unique_ptr<vm::Vm> boot(unsigned i, const std::string& name) {
    update(i, [](farm::VmStatus& v) { v.state = farm::State::kBooting; });
    vm::VmConfig c;
    c.name = name;
    c.memory_mib = o_.memory_mib;
    c.boot_timeout = std::chrono::seconds{o_.boot_timeout_s};
    c.plugin = vm::monitor_plugin(default_monitor_path(), name);
    std::string error;
    auto img = vm::load_image(vm::default_image_dir());
    std::unique_ptr<vm::Vm> v;
    if (!img) {
      error = img.error().message;
    } else {
      c.image = *img;
      auto started = vm::Vm::start(std::move(c), [&](std::string_view m) { report('P', fmt::format("{}: {}", name, m)); });
      if (!started) {
        error = started.error().message;
      } else {
        v = std::move(started).value();
        auto prep = farm::snapshot_prepare(v->record());
        Result<double> saved = prep ? farm::snapshot_save(v->record()) : Result<double>(prep.error());
        if (!saved) {
          error = saved.error().message;
          v.reset();
        } else {
          report('P', fmt::format("{}: clean snapshot taken in {:.2f} s", name, *saved));
          log_event(name, "booted", {{"boot_s", v->record().boot_seconds}, {"snapshot_s", *saved}});
        }
      }
    }
    if (!v) {
      update(i, [&](farm::VmStatus& s) {
        s.state = farm::State::kFailed;
        s.error = error;
      });
      log_event(name, "failed", {{"error", error}});
      std::lock_guard lock(mu_);
      if (first_error_.empty() && booted_ < o_.vms) first_error_ = error;
      cv_.notify_all();
      return nullptr;
    }
    update(i, [&](farm::VmStatus& s) {
      s.qemu_pid = v->record().qemu_pid;
      s.error.clear();
    });
    return v;
  }

  void slot(unsigned i) {
    const std::string name = status_.vms[i].name;
    const int lfd = listen_fds_[i];
    bool counted = false;
    Clock::time_point session_ended{};   // epoch: no session ended since the last ready (GCC 12 misjudges an optional here)
    std::unique_ptr<vm::Vm> v;
    pid_t watcher = 0;
    while (!stopping()) {
      if (!v) {
        v = boot(i, name);
        if (!v) {
          if (!counted) return;  // a first boot that fails aborts `farm up`
          for (int s = 0; s < 100 && !stopping(); ++s) std::this_thread::sleep_for(100ms);  // retry later
          continue;
        }
      }
      // A watcher, attached before the port opens.
      watcher = start_watcher(name);
      bool attached = false;
      std::string why;
      for (const auto end = Clock::now() + 60s; !stopping() && Clock::now() < end;) {
        if (watcher_log(name).find("hvtrace: watching") != std::string::npos) {
          attached = true;
          break;
        }
        int st = 0;
        if (waitpid(watcher, &st, WNOHANG) == watcher) {
          watcher = 0;
          why = "the session watcher exited before it watched: " + watcher_log(name).substr(0, 2000);
          break;
        }
        if (!v->running()) break;
        std::this_thread::sleep_for(50ms);
      }
      if (stopping()) break;
      if (!v->running()) {
        replace(i, name, v, watcher);
        continue;
      }
      if (!attached) {
        stop_watcher(watcher, 0ms);
        update(i, [&](farm::VmStatus& s) { s.error = why.empty() ? "the session watcher did not attach within 60 s" : why; });
        log_event(name, "watcher_failed", {{"error", status_.vms[i].error}});
        std::this_thread::sleep_for(1s);
        continue;
      }
      update(i, [](farm::VmStatus& s) { s.state = farm::State::kReady; });
      if (session_ended != Clock::time_point{}) {
        // The figure that matters to the next attacker: session end -> port open on a clean guest.
        log_event(name, "ready", {{"since_session_end_s", std::chrono::duration<double>(Clock::now() - session_ended).count()}});
        session_ended = {};
      }
      if (!counted) {
        counted = true;
        std::lock_guard lock(mu_);
        ++booted_;
        cv_.notify_all();
        report('P', fmt::format("{}: ready on {}:{}", name, o_.listen, status_.vms[i].port));
      }
      // Ready: one attacker.
      int client = -1;
      std::string src;
      bool watcher_gone = false;
      while (!stopping() && v->running()) {
        pollfd p{lfd, POLLIN, 0};
        if (poll(&p, 1, 200) > 0) {
          sockaddr_storage peer{};
          socklen_t peer_len = sizeof peer;
          client = accept4(lfd, reinterpret_cast<sockaddr*>(&peer), &peer_len, SOCK_CLOEXEC);
          if (client >= 0) src = peer_text(peer);
          if (client >= 0) break;
        }
        int st = 0;
        if (waitpid(watcher, &st, WNOHANG) == watcher) {
          watcher = 0;
          watcher_gone = true;
          break;
        }
      }
      if (stopping()) {
        if (client >= 0) close(client);
        break;
      }
      if (!v->running()) {
        if (client >= 0) close(client);
        replace(i, name, v, watcher);
        continue;
      }
      if (watcher_gone) {
        log_event(name, "watcher_exited", {{"output", watcher_log(name).substr(0, 2000)}});
        continue;  // start another
      }
      update(i, [](farm::VmStatus& s) {
        s.state = farm::State::kInSession;
        ++s.sessions;
      });
      // The guest sees every attacker as QEMU's gateway (10.0.2.2): the real address is here.
      log_event(name, "session_start", {{"src", src}});
      proxy(client, v->record().ssh_port, *v);
      session_ended = Clock::now();  // the attacker's connection is closed
      if (!v->running()) {
        replace(i, name, v, watcher);
        continue;
      }
      // The watcher ends once its session closed; give it a bounded time, then SIGINT.
      stop_watcher(watcher, 15s);
      log_event(name, "session_end", account_watcher(i, name));
      if (stopping()) break;
      update(i, [](farm::VmStatus& s) { s.state = farm::State::kResetting; });
      auto took = farm::snapshot_load(v->record());
      if (!took) {
        if (!v->running()) {
          replace(i, name, v, watcher);
          continue;
        }
        // A reset that fails is a VM we cannot trust: replace it.
        log_event(name, "reset_failed", {{"error", took.error().message}});
        replace(i, name, v, watcher, took.error().message);
        continue;
      }
      update(i, [&](farm::VmStatus& s) {
        ++s.resets;
        s.last_reset_unix = unix_now();
        s.last_reset_s = *took;
      });
      log_event(name, "reset", {{"seconds", *took}});
    }
    stop_watcher(watcher, 5s);
    v.reset();  // QMP quit, SIGKILL if needed; removes the VM's run directory
  }

  // QEMU died (or cannot be trusted): record it and start over with a fresh boot.
  void replace(unsigned i, const std::string& name, std::unique_ptr<vm::Vm>& v, pid_t& watcher, std::string why = {}) {
    if (why.empty()) why = fmt::format("QEMU {}", v->running() ? "was stopped" : v->exit_reason());
    stop_watcher(watcher, 2s);
    v.reset();
    update(i, [&](farm::VmStatus& s) {
      ++s.replaced;
      s.error = "replaced: " + why;
      s.state = farm::State::kBooting;
    });
    log_event(name, "vm_replaced", {{"reason", why}});
  }

  // Relay one attacker's connection to the guest's loopback SSH forward until either side closes.
  void proxy(int client, std::uint16_t guest_port, vm::Vm& v) {
    const int guest = connect_loopback(guest_port);
    if (guest < 0) {
      close(client);
      return;
    }
    char buf[65536];
    bool open_c = true, open_g = true;
    while (open_c && open_g && !stopping()) {
      pollfd p[2] = {{client, POLLIN, 0}, {guest, POLLIN, 0}};
      const int n = poll(p, 2, 500);
      if (n == 0) {
        if (!v.running()) break;
        continue;
      }
      if (n < 0) continue;
      for (int k = 0; k < 2; ++k) {
        if (!(p[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        const int from = k == 0 ? client : guest, to = k == 0 ? guest : client;
        const ssize_t r = read(from, buf, sizeof buf);
        if (r <= 0 || !write_all(to, buf, static_cast<std::size_t>(r))) (k == 0 ? open_c : open_g) = false;
      }
    }
    close(client);
    close(guest);
  }

  FarmOptions o_;
  std::vector<int> listen_fds_;
  int report_fd_;
  fs::path dir_;
  fs::path self_;
  std::ofstream log_;
  std::mutex mu_;
  std::condition_variable cv_;
  farm::FarmStatus status_;
  unsigned booted_ = 0;
  std::string first_error_;
  std::atomic<bool> stop_{false};
};

void farm_up(FarmOptions o) {
  // Everything that can be wrong is checked before anything starts.
  const auto range = value_or_throw(farm::parse_port_range(o.ports));
  value_or_throw(farm::check_port_count(range, o.vms));
  value_or_throw(vm::validate_name(o.name));
  value_or_throw(vm::validate_name(fmt::format("{}-{}", o.name, o.vms - 1)));
  value_or_throw(farm::check_memory(o.vms, o.memory_mib, value_or_throw(farm::mem_available_kib())));
  if (!fs::is_regular_file(default_monitor_path()))
    throw UserError(fmt::format("monitor plugin {} not found (build it, or set HVTRACE_MONITOR)", default_monitor_path().string()));
  value_or_throw(vm::load_image(vm::default_image_dir()));
  if (auto st = read_status(o.name); st)
    throw UserError(fmt::format("a farm named '{}' is already up (supervisor pid {}); `hvtrace farm down --name {}` first", o.name,
                                st->supervisor_pid, o.name));
  for (unsigned i = 0; i < o.vms; ++i)
    if (auto r = vm::find_vm(fmt::format("{}-{}", o.name, i)); r)
      throw UserError(fmt::format("a VM named '{}' is already running; stop it or choose another --name", r->name));
  std::vector<int> fds;
  for (unsigned i = 0; i < o.vms; ++i) {
    auto fd = listen_on(o.listen, static_cast<std::uint16_t>(range.first + i));
    if (!fd) {
      for (int f : fds) close(f);
      throw UserError(fd.error().message);
    }
    fds.push_back(*fd);
  }
  std::error_code ec;
  fs::create_directories(o.dir, ec);
  if (ec) throw UserError(fmt::format("-o {}: {}", o.dir, ec.message()));
  o.dir = fs::absolute(o.dir).string();
  fs::create_directories(vm::run_root(), ec);
  const fs::path dir = farm_dir(o.name);
  fs::remove_all(dir, ec);  // stale (read_status found no live supervisor)
  if (mkdir(dir.c_str(), 0700) != 0) throw UserError(fmt::format("cannot create {}: {}", dir.string(), strerror(errno)));

  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) throw UserError(fmt::format("pipe: {}", strerror(errno)));
  const pid_t pid = fork();
  if (pid < 0) throw UserError(fmt::format("fork: {}", strerror(errno)));
  if (pid == 0) {
    close(pipefd[0]);
    setsid();
    const int devnull = open("/dev/null", O_RDWR);
    const int err = open((dir / "supervisor.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (devnull >= 0) {
      dup2(devnull, 0);
      dup2(devnull, 1);
    }
    if (err >= 0) dup2(err, 2);
    int code = 1;
    try {
      Farm f(o, fds, pipefd[1]);
      code = f.run();
    } catch (const std::exception& e) {
      vm::report_to_starter(pipefd[1], 'E', e.what());
      std::error_code ignore;
      fs::remove_all(dir, ignore);
    }
    _exit(code);
  }
  close(pipefd[1]);
  for (int f : fds) close(f);
  auto waited = vm::wait_for_supervisor(pipefd[0], pid, print_progress);
  close(pipefd[0]);
  if (!waited) {
    int status = 0;
    waitpid(pid, &status, 0);  // it stops its VMs and removes its directory
    throw UserError(fmt::format("farm '{}' did not start: {}", o.name, waited.error().message));
  }
  fmt::print("farm '{}' is up: {} VMs on {}:{}-{}, sessions in {} (supervisor pid {})\n", o.name, o.vms, o.listen, range.first,
             range.first + o.vms - 1, o.dir, pid);
}

void farm_down(const std::string& name) {
  const auto st = value_or_throw(read_status(name));
  print_progress(fmt::format("stopping farm '{}' (supervisor pid {})", name, st.supervisor_pid));
  kill(st.supervisor_pid, SIGTERM);
  const fs::path dir = farm_dir(name);
  const auto end = Clock::now() + 60s;
  while ((fs::exists(dir) || pid_running(st.supervisor_pid)) && Clock::now() < end) std::this_thread::sleep_for(100ms);
  if (pid_running(st.supervisor_pid)) {
    kill(st.supervisor_pid, SIGKILL);  // its QEMUs die with it (PR_SET_PDEATHSIG)
    std::error_code ec;
    fs::remove_all(dir, ec);
    for (const auto& v : st.vms) fs::remove_all(vm::run_root() / v.name, ec);
    throw UserError(fmt::format("farm '{}' did not stop within 60 s; killed its supervisor", name));
  }
  fmt::print("farm '{}' is down (sessions kept in {})\n", name, st.output_dir);
}

// The reset figure: one VM, its snapshot, then N × (dirty the guest, snapshot-load, time until SSH
// answers again and the dirt is gone).
void bench_reset(unsigned resets, bool quick) {
  if (quick) resets = 3;
  vm::VmConfig c;
  c.name = "farm-bench";
  c.plugin = vm::monitor_plugin(default_monitor_path(), c.name);
  c.image = value_or_throw(vm::load_image(vm::default_image_dir()));
  auto v = value_or_throw(vm::Vm::start(std::move(c), print_progress));
  const auto& r = v->record();
  value_or_throw(farm::snapshot_prepare(r));
  const double save = value_or_throw(farm::snapshot_save(r));
  std::vector<double> loads, answers;
  for (unsigned k = 0; k < resets && !vm::termination_requested(); ++k) {
    value_or_throw(vm::ssh_exec(r, "echo dirty > /root/dirty", 30s));
    const auto t0 = Clock::now();
    loads.push_back(value_or_throw(farm::snapshot_load(r)));
    auto e = value_or_throw(vm::ssh_exec(r, "test ! -e /root/dirty", 30s));
    answers.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    if (e.exit_status != 0) throw UserError("after snapshot-load the file written before the reset is still there");
    print_progress(fmt::format("reset {}: snapshot-load {:.2f} s, clean guest answers SSH after {:.2f} s", k + 1, loads.back(),
                               answers.back()));
  }
  if (loads.empty()) throw UserError("interrupted before the first reset");
  const auto l = bench::summarize(loads), a = bench::summarize(answers);
  fmt::print("snapshot-save (once after boot): {:.2f} s; boot to SSH: {:.1f} s\n", save, r.boot_seconds);
  fmt::print("reset over {} runs: snapshot-load median {:.2f} s (min {:.2f}, max {:.2f}); until a clean guest answers SSH: median "
             "{:.2f} s (min {:.2f}, max {:.2f})\n",
             l.n, l.median, l.min, l.max, a.median, a.min, a.max);
}

}  // namespace

void add_farm_command(CLI::App& app) {
  auto* farm_cmd = app.add_subcommand("farm", "A honeypot fleet: N watched guests, one SSH port each, reset after every attacker");
  farm_cmd->require_subcommand(1);

  auto o = std::make_shared<FarmOptions>();
  auto* up = farm_cmd->add_subcommand("up", "Boot N watched guests behind a port range; returns when all are ready");
  up->add_option("--vms", o->vms, "number of guests")->required();
  up->add_option("--ssh-ports", o->ports, "public ports FIRST-LAST, one per guest")->required();
  up->add_option("--listen", o->listen, "address the public ports listen on")->capture_default_str();
  up->add_option("--name", o->name, "farm name; the VMs are NAME-0..NAME-(N-1)")->capture_default_str();
  up->add_option("--sensor", o->sensor, "the `sensor` field of the session events (default: each VM's name)");
  up->add_option("-o,--output-dir", o->dir, "sessions (one folder each) and farm.jsonl go here")->capture_default_str();
  up->add_option("--publish", o->publish, "passed to each `hvtrace session`: nats://HOST:PORT");
  up->add_option("--memory", o->memory_mib, "guest RAM in MiB")->capture_default_str();
  up->add_option("--boot-timeout", o->boot_timeout_s, "seconds a guest may take to boot")->capture_default_str();
  up->callback([o] { farm_up(*o); });

  auto st_name = std::make_shared<std::string>("farm");
  auto st_json = std::make_shared<bool>(false);
  auto* st = farm_cmd->add_subcommand("status", "Each VM: port, state, sessions, resets, the monitor's losses");
  st->add_option("--name", *st_name, "farm name")->capture_default_str();
  st->add_flag("--json", *st_json, "one JSON object (schema in docs/farm.md)");
  st->callback([st_name, st_json] {
    const auto s = value_or_throw(read_status(*st_name));
    if (*st_json)
      fmt::print("{}\n", farm::to_json(s).dump());
    else
      fmt::print("{}", farm::format_table(s));
  });

  auto down_name = std::make_shared<std::string>("farm");
  auto* down = farm_cmd->add_subcommand("down", "Stop every VM and watcher; only the session records stay");
  down->add_option("--name", *down_name, "farm name")->capture_default_str();
  down->callback([down_name] { farm_down(*down_name); });

  auto resets = std::make_shared<unsigned>(10);
  auto quick = std::make_shared<bool>(false);
  auto* bench = farm_cmd->add_subcommand("bench-reset", "Measure the reset: snapshot-load and time until a clean guest answers SSH");
  bench->add_option("--resets", *resets, "number of resets")->capture_default_str();
  bench->add_flag("--quick", *quick, "3 resets");
  bench->callback([resets, quick] { bench_reset(*resets, *quick); });
}

}  // namespace hvtrace::tools
