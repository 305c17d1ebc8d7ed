// The VM lab: QEMU TCG launch, readiness, SSH, QMP, shutdown and cleanup. Invariants:
//  - everything a VM owns lives in run_root()/<name>/ (mode 0700), removed on every exit path;
//  - QEMU is started with PR_SET_PDEATHSIG=SIGKILL, so it dies with the process owning the Vm;
//  - a run directory whose owner is dead is stale and is removed by the next find_vm/start.
#include "vm/vm.hpp"

#include "vm/process.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

namespace hvtrace::vm {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::string_view kReadyLine = "hvtrace-guest: ready";
constexpr const char* kQemu = "qemu-system-x86_64";

std::atomic<bool> g_terminate{false};

void on_termination_signal(int) { g_terminate.store(true, std::memory_order_relaxed); }

std::string env_or(const char* name, std::string_view fallback) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? std::string(v) : std::string(fallback);
}

Result<std::string> read_text(const fs::path& p, std::size_t max = 1u << 20) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return make_error("cannot read {}: {}", p.string(), strerror(errno));
  std::string s(max, '\0');
  in.read(s.data(), static_cast<std::streamsize>(max));
  s.resize(static_cast<std::size_t>(in.gcount()));
  return s;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// The last `lines` lines of a log file, for boot-failure messages.
std::string tail_of(const fs::path& p, std::size_t lines) {
  std::error_code ec;
  const auto size = fs::file_size(p, ec);
  if (ec) return "(no output)";
  std::ifstream in(p, std::ios::binary);
  const std::uintmax_t window = 16384;
  if (size > window) in.seekg(static_cast<std::streamoff>(size - window));
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (s.empty()) return "(no output)";
  std::size_t pos = s.size();
  for (std::size_t n = 0; n <= lines && pos != std::string::npos && pos > 0; ++n) pos = s.rfind('\n', pos - 1);
  std::string t = trim(pos == std::string::npos ? s : s.substr(pos + 1));
  return t.empty() ? "(no output)" : t;
}

// Alive and not a zombie: an exited supervisor whose parent is gone may never be reaped here.
bool pid_alive(pid_t pid) {
  if (pid <= 0 || (kill(pid, 0) != 0 && errno != EPERM)) return false;
  auto stat = read_text(fmt::format("/proc/{}/stat", pid), 512);
  if (!stat) return true;
  const auto close_paren = stat->rfind(')');
  return close_paren == std::string::npos || close_paren + 2 >= stat->size() || (*stat)[close_paren + 2] != 'Z';
}

// The process's start time (clock ticks since boot, field 22 of /proc/<pid>/stat): with the pid,
// it names one process for good. Empty if there is no such process.
std::string process_start_time(pid_t pid) {
  auto stat = read_text(fmt::format("/proc/{}/stat", pid), 1024);
  if (!stat) return {};
  std::istringstream fields(stat->substr(std::min(stat->size(), stat->rfind(')') + 2)));
  std::string f;
  for (int i = 3; i <= 22 && (fields >> f); ++i) {  // fields after "pid (comm)" start at 3 (state)
  }
  return f;
}

// Only ever signal a process that is still the QEMU we started (pids are reused).
bool is_qemu(pid_t pid) {
  auto comm = read_text(fmt::format("/proc/{}/comm", pid), 64);
  return comm && comm->rfind("qemu-system", 0) == 0;
}

// QEMU user networking, contained: restrict=on isolates the guest (no packet to the host or
// beyond); hostfwd (SSH in) and guestfwd (the explicit ways out) still work. Each guestfwd runs
// the relay per connection (QEMU's tcp: chardev form serves one connection only: guestfwd.hpp).
std::string netdev_spec(const VmConfig& c, std::uint16_t ssh_port) {
  std::string s = fmt::format("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{}-:22", ssh_port);
  for (const auto& f : c.guest_forwards)
    s += fmt::format(",guestfwd=tcp:{}:{}-cmd:{} vm relay {} {}", f.guest_addr, f.guest_port,
                     c.relay_program.string(), f.host_addr, f.host_port);
  return s;
}

nlohmann::json to_json(const VmRecord& r) {
  return {{"name", r.name},           {"owner_pid", r.owner_pid},   {"qemu_pid", r.qemu_pid},
          {"ssh_port", r.ssh_port},   {"smp", r.smp},               {"memory_mib", r.memory_mib},
          {"cpu", r.cpu},             {"run_dir", r.run_dir},       {"ram_path", r.ram_path},
          {"qmp_path", r.qmp_path},   {"serial_log", r.serial_log}, {"ssh_key", r.ssh_key},
          {"kernel_release", r.kernel_release}, {"boot_seconds", r.boot_seconds}, {"plugin", r.plugin},
          {"guest_forwards", r.guest_forwards}};
}

Result<VmRecord> from_json(const std::string& text) {
  try {
    const auto j = nlohmann::json::parse(text);
    VmRecord r;
    r.name = j.at("name").get<std::string>();
    r.owner_pid = j.at("owner_pid").get<pid_t>();
    r.qemu_pid = j.at("qemu_pid").get<pid_t>();
    r.ssh_port = j.at("ssh_port").get<std::uint16_t>();
    r.smp = j.at("smp").get<unsigned>();
    r.memory_mib = j.at("memory_mib").get<unsigned>();
    r.cpu = j.at("cpu").get<std::string>();
    r.run_dir = j.at("run_dir").get<std::string>();
    r.ram_path = j.at("ram_path").get<std::string>();
    r.qmp_path = j.at("qmp_path").get<std::string>();
    r.serial_log = j.at("serial_log").get<std::string>();
    r.ssh_key = j.at("ssh_key").get<std::string>();
    r.kernel_release = j.at("kernel_release").get<std::string>();
    r.boot_seconds = j.at("boot_seconds").get<double>();
    r.plugin = j.at("plugin").get<std::string>();
    r.guest_forwards = j.value("guest_forwards", std::vector<std::string>{});  // absent in older records
    return r;
  } catch (const std::exception& e) {
    return make_error("malformed VM record: {}", e.what());
  }
}

Result<void> write_record(const VmRecord& r) {
  const fs::path tmp = r.run_dir / "vm.json.tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << to_json(r).dump(2) << '\n';
    if (!out) return make_error("cannot write {}", tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, r.run_dir / "vm.json", ec);
  if (ec) return make_error("cannot rename {}: {}", tmp.string(), ec.message());
  return {};
}

Result<std::uint16_t> pick_port(std::uint16_t wanted) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error("socket: {}", strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(wanted);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    const int e = errno;
    close(fd);
    return make_error("cannot bind 127.0.0.1:{} for SSH forwarding: {}", wanted, strerror(e));
  }
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

Result<void> check_qemu() {
  static bool checked = false;
  if (checked) return {};
  auto r = run_process({kQemu, "--version"}, 10s);
  if (!r) return make_error("{} not found or not runnable ({}); run scripts/setup", kQemu, r.error().message);
  if (r->exit_code != 0) return make_error("{} --version failed: {}", kQemu, trim(r->err));
  const std::string_view want = "QEMU emulator version 10.";
  if (r->out.find(want) == std::string::npos)
    return make_error("hvtrace needs QEMU 10.x (bookworm-backports), found: {}; run scripts/setup",
                      trim(r->out.substr(0, r->out.find('\n'))));
  checked = true;
  return {};
}

void remove_dir(const fs::path& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
}

// A run directory whose owner is gone: kill a leftover QEMU and remove the directory.
void reap_stale(const VmRecord& r) {
  if (pid_alive(r.qemu_pid) && is_qemu(r.qemu_pid)) kill(r.qemu_pid, SIGKILL);
  remove_dir(r.run_dir);
}

std::vector<std::string> ssh_argv(const VmRecord& vm, std::string_view command, std::string_view user) {
  return {"ssh",
          "-i", vm.ssh_key.string(),
          "-p", std::to_string(vm.ssh_port),
          "-o", "StrictHostKeyChecking=no",
          "-o", "UserKnownHostsFile=/dev/null",
          "-o", "GlobalKnownHostsFile=/dev/null",
          "-o", "BatchMode=yes",
          "-o", "IdentitiesOnly=yes",
          "-o", "LogLevel=ERROR",
          "-o", "ConnectTimeout=10",
          "-o", "ServerAliveInterval=5",
          "-o", "ServerAliveCountMax=6",
          "-F", "/dev/null",
          fmt::format("{}@127.0.0.1", user),
          "--",
          std::string(command)};
}


}  // namespace

void install_termination_handlers() {
  struct sigaction sa{};
  sa.sa_handler = on_termination_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: blocking calls return EINTR so waits notice promptly
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

bool termination_requested() { return g_terminate.load(std::memory_order_relaxed); }

void clear_termination_request() { g_terminate.store(false, std::memory_order_relaxed); }

fs::path run_root() { return env_or("HVTRACE_RUN_DIR", "/dev/shm/hvtrace"); }

MonitorFiles monitor_files(std::string_view name) {
  const fs::path dir = run_root() / std::string(name);
  return {dir / "mon.rings", dir / "mon.ctl"};
}

PluginSpec monitor_plugin(const fs::path& so, std::string_view name, std::vector<std::string> extra_args) {
  const auto files = monitor_files(name);
  std::vector<std::string> args = {"shm=" + files.rings.string(), "ctl=" + files.control.string()};
  args.insert(args.end(), std::make_move_iterator(extra_args.begin()), std::make_move_iterator(extra_args.end()));
  return {so, std::move(args)};
}

fs::path default_image_dir() { return image_dir("default"); }

fs::path image_dir(std::string_view name_or_dir) {
  const bool bare = !name_or_dir.empty() && name_or_dir != "." && name_or_dir != ".." &&
                    name_or_dir.find('/') == std::string_view::npos;
  if (!bare) return fs::path(name_or_dir);
  return fs::path(env_or("HVTRACE_CACHE", "/var/cache/hvtrace")) / "guest" / fs::path(name_or_dir);
}

Result<void> validate_name(std::string_view name) {
  const bool ok = !name.empty() && name.size() <= 32 && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  });
  if (!ok) return make_error("invalid VM name '{}': use 1-32 characters from [A-Za-z0-9_-]", name);
  return {};
}

Result<GuestImage> load_image(const fs::path& dir) {
  GuestImage img;
  img.dir = dir;
  img.kernel = dir / "vmlinuz";
  img.initrd = dir / "initrd.img";
  img.ssh_key = dir / "id_ed25519";
  img.manifest = dir / "manifest.txt";
  for (const auto& p : {img.kernel, img.initrd, img.ssh_key, img.manifest}) {
    if (!fs::is_regular_file(p))
      return make_error("guest image incomplete: {} is missing (build it with guest/build-image)", p.string());
  }
  auto rel = read_text(dir / "kernel-release", 256);
  if (!rel) return make_error("guest image incomplete: {} (build it with guest/build-image)", rel.error().message);
  img.kernel_release = trim(*rel);
  auto cmd = read_text(dir / "cmdline", 4096);
  if (!cmd) return make_error("guest image incomplete: {} (build it with guest/build-image)", cmd.error().message);
  img.cmdline = trim(*cmd);
  return img;
}

Result<std::unique_ptr<Vm>> Vm::start(VmConfig config, const Progress& progress) {
  auto say = [&](std::string_view m) {
    if (progress) progress(m);
  };
  HVTRACE_TRY(validate_name(config.name));
  if (config.smp < 1 || config.smp > 8) return make_error("--smp must be 1..8, got {}", config.smp);
  if (config.memory_mib < 128 || config.memory_mib > 3072)
    return make_error("--memory must be 128..3072 MiB (below the PCI hole), got {}", config.memory_mib);
  if (config.image.kernel.empty()) {
    auto img = load_image(default_image_dir());
    if (!img) return std::move(img).error();
    config.image = std::move(img).value();
  }
  for (const auto& f : config.guest_forwards) {
    HVTRACE_TRY(validate_guest_forward(f));
    if (config.relay_program.empty() || !fs::is_regular_file(config.relay_program))
      return make_error("a guest forward needs the hvtrace binary as its relay (VmConfig::relay_program: '{}')",
                        config.relay_program.string());
    if (config.relay_program.string().find_first_of(",'\"\\ ") != std::string::npos)
      return make_error("the relay program's path {} has a comma, quote or space; QEMU's -netdev cannot carry it",
                        config.relay_program.string());
  }
  if (config.plugin && !fs::is_regular_file(config.plugin->path))
    return make_error("monitor plugin {} not found", config.plugin->path.string());
  HVTRACE_TRY(check_qemu());

  const fs::path root = run_root();
  const fs::path dir = root / config.name;
  std::error_code ec;
  fs::create_directories(root, ec);
  // mkdir is the lock on the name. A directory that exists belongs to a running VM (vm.json with a
  // live owner), to a VM being started (an "owner" file naming a live pid), or to a dead owner.
  if (mkdir(dir.c_str(), 0700) != 0) {
    if (errno != EEXIST) return make_error("cannot create run directory {}: {}", dir.string(), strerror(errno));
    auto existing = find_vm(config.name);  // removes the directory if the record's owner is gone
    if (existing) {
      return make_error("a VM named '{}' is already running (owner pid {}, ssh port {}); stop it with "
                        "`hvtrace vm down --name {}` or pick another --name",
                        config.name, existing->owner_pid, existing->ssh_port, config.name);
    }
    if (auto owner = read_text(dir / "owner", 32); owner) {
      const pid_t pid = static_cast<pid_t>(std::atol(owner->c_str()));
      if (pid_alive(pid))
        return make_error("a VM named '{}' is being started by pid {}; pick another --name", config.name, pid);
    }
    remove_dir(dir);  // left by a start that was killed mid-way
    if (mkdir(dir.c_str(), 0700) != 0)
      return make_error("cannot create run directory {}: {}", dir.string(), strerror(errno));
  }
  {
    std::ofstream(dir / "owner") << getpid() << '\n';
  }

  auto vm = std::unique_ptr<Vm>(new Vm());
  vm->config_ = config;
  VmRecord& r = vm->record_;
  r.name = config.name;
  r.owner_pid = getpid();
  r.smp = config.smp;
  r.memory_mib = config.memory_mib;
  r.cpu = config.cpu;
  r.run_dir = dir;
  r.ram_path = dir / "ram";
  r.qmp_path = dir / "qmp.sock";
  r.serial_log = dir / "serial.log";
  r.ssh_key = config.image.ssh_key;
  r.kernel_release = config.image.kernel_release;
  for (const auto& f : config.guest_forwards) r.guest_forwards.push_back(guest_forward_spec(f));
  // From here on, the Vm destructor removes the directory on every error path.

  // Guest RAM: created here owner-only, so QEMU opens an existing 0600 file.
  const int ram_fd = open(r.ram_path.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (ram_fd < 0) return make_error("cannot create RAM file {}: {}", r.ram_path.string(), strerror(errno));
  close(ram_fd);
  const fs::path qemu_log = dir / "qemu.log";

  const auto t0 = Clock::now();
  for (int attempt = 0;; ++attempt) {
    auto port = pick_port(config.ssh_port);
    if (!port) return std::move(port).error();
    r.ssh_port = *port;

    std::string append = config.image.cmdline;
    for (const auto& a : config.kernel_args) append += " " + a;
    std::vector<std::string> argv = {
        kQemu, "-name", "hvtrace-" + config.name, "-accel",
        config.tcg_tb_size_mib ? fmt::format("tcg,tb-size={}", config.tcg_tb_size_mib) : "tcg", "-cpu", config.cpu,
        "-smp", std::to_string(config.smp), "-m", fmt::format("{}M", config.memory_mib),
        "-object", fmt::format("memory-backend-file,id=mem,size={}M,mem-path={},share=on", config.memory_mib, r.ram_path.string()),
        "-machine", "pc,memory-backend=mem", "-nodefaults", "-display", "none", "-no-reboot",
        "-serial", "file:" + r.serial_log.string(),
        "-qmp", "unix:" + r.qmp_path.string() + ",server=on,wait=off",
        "-kernel", config.image.kernel.string(), "-initrd", config.image.initrd.string(), "-append", append,
        "-netdev", netdev_spec(config, r.ssh_port), "-device", "e1000,netdev=n0"};
    if (config.plugin) {
      std::string spec = config.plugin->path.string();
      for (const auto& a : config.plugin->args) spec += "," + a;
      r.plugin = spec;
      argv.insert(argv.end(), {"-plugin", spec});
    }
    argv.insert(argv.end(), config.extra_qemu_args.begin(), config.extra_qemu_args.end());

    say(fmt::format("starting QEMU ({} vCPU, {} MiB, cpu {}, ssh on 127.0.0.1:{})", config.smp, config.memory_mib,
                    config.cpu, r.ssh_port));
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) return make_error("fork: {}", strerror(errno));
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      setpgid(0, 0);  // the terminal's Ctrl-C goes to hvtrace, which shuts QEMU down in order
      umask(077);
      const int in = open("/dev/null", O_RDONLY);
      const int out = open(qemu_log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (in >= 0) dup2(in, 0);
      if (out >= 0) {
        dup2(out, 1);
        dup2(out, 2);
      }
      execvp(cargv[0], cargv.data());
      dprintf(2, "cannot run %s: %s\n", cargv[0], strerror(errno));
      _exit(127);
    }
    r.qemu_pid = pid;
    vm->reaped_ = false;

    // Wait for the readiness line, then for SSH to answer.
    const auto deadline = t0 + config.boot_timeout;
    bool line_seen = false;
    std::string failure;
    bool port_race = false;
    say("booting guest (waiting for its readiness line on the serial console)");
    while (true) {
      if (termination_requested()) {
        failure = "interrupted";
        break;
      }
      if (!vm->running()) {
        const std::string log = tail_of(qemu_log, 20);
        port_race = config.ssh_port == 0 && log.find("host forwarding") != std::string::npos;
        failure = fmt::format("QEMU {} during boot.\n--- QEMU output ---\n{}\n--- serial console (last lines) ---\n{}",
                              vm->exit_reason_, log, tail_of(r.serial_log, 20));
        break;
      }
      if (Clock::now() > deadline) {
        failure = fmt::format("guest did not become ready within {} s.\n--- serial console (last lines) ---\n{}",
                              config.boot_timeout.count(), tail_of(r.serial_log, 25));
        break;
      }
      if (!line_seen) {
        auto serial = read_text(r.serial_log, 4u << 20);
        if (serial && serial->find(kReadyLine) != std::string::npos) {
          line_seen = true;
          say("guest is up; waiting for SSH");
        } else {
          std::this_thread::sleep_for(100ms);
          continue;
        }
      }
      auto probe = ssh_exec(r, "true", 15s);
      if (probe && probe->exit_status == 0) break;
      std::this_thread::sleep_for(200ms);
    }
    if (failure.empty()) break;
    if (port_race && attempt < 3) {
      say("SSH port was taken meanwhile; retrying with another port");
      std::error_code ignore;
      fs::remove(r.qmp_path, ignore);
      continue;
    }
    return make_error("booting VM '{}' failed: {}", config.name, failure);
  }
  r.boot_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  HVTRACE_TRY(write_record(r));
  say(fmt::format("ready: SSH answers after {:.1f} s", r.boot_seconds));
  return vm;
}

bool Vm::running() {
  if (reaped_ || record_.qemu_pid <= 0) return false;
  int status = 0;
  const pid_t got = waitpid(record_.qemu_pid, &status, WNOHANG);
  if (got == record_.qemu_pid) {
    reaped_ = true;
    exit_reason_ = describe_wait_status(status);
    return false;
  }
  if (got < 0 && errno == ECHILD) {  // not our child (should not happen) or already reaped
    reaped_ = true;
    if (exit_reason_.empty()) exit_reason_ = "exited";
    return false;
  }
  return true;
}

bool Vm::wait_exit(std::chrono::milliseconds deadline) {
  const auto end = Clock::now() + deadline;
  while (running()) {
    if (Clock::now() >= end || termination_requested()) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

Result<ExecResult> Vm::exec(std::string_view command, std::chrono::seconds timeout) const {
  return ssh_exec(record_, command, timeout);
}

Result<void> Vm::shutdown(std::chrono::seconds timeout) {
  Result<void> outcome;
  if (running()) {
    // 1. Ask the guest to power off (its init syncs and halts; -no-reboot makes QEMU exit).
    (void)ssh_exec(record_, "poweroff >/dev/null 2>&1 &", 10s);
    if (!wait_exit(std::chrono::duration_cast<std::chrono::milliseconds>(timeout))) {
      outcome = make_error("guest did not power off within {} s; QEMU was stopped", timeout.count());
      // 2. QMP quit, 3. SIGTERM, 4. SIGKILL.
      (void)qmp_command(record_.qmp_path, R"({"execute":"quit"})", 2s);
      if (!wait_exit(3s)) {
        kill(record_.qemu_pid, SIGTERM);
        if (!wait_exit(3s)) {
          kill(record_.qemu_pid, SIGKILL);
          int status = 0;
          waitpid(record_.qemu_pid, &status, 0);
          reaped_ = true;
          exit_reason_ = describe_wait_status(status);
        }
      }
    }
  }
  cleanup_files();
  return outcome;
}

void Vm::cleanup_files() {
  if (!record_.run_dir.empty()) remove_dir(record_.run_dir);
}

Vm::~Vm() {
  if (running()) {
    // Abnormal path (error or exception): stop QEMU quickly rather than politely.
    (void)qmp_command(record_.qmp_path, R"({"execute":"quit"})", 2s);
    if (!wait_exit(3s)) {
      kill(record_.qemu_pid, SIGKILL);
      int status = 0;
      waitpid(record_.qemu_pid, &status, 0);
    }
  }
  cleanup_files();
}

Result<VmRecord> find_vm(std::string_view name) {
  HVTRACE_TRY(validate_name(name));
  const fs::path dir = run_root() / std::string(name);
  auto text = read_text(dir / "vm.json");
  if (!text) {
    return make_error("no VM named '{}' is running (start one with `hvtrace vm up --name {}`; `hvtrace vm list` "
                      "shows running VMs)",
                      name, name);
  }
  auto rec = from_json(*text);
  if (!rec) {
    remove_dir(dir);
    return make_error("VM '{}' has a corrupt record ({}); removed it", name, rec.error().message);
  }
  if (!pid_alive(rec->owner_pid) || !pid_alive(rec->qemu_pid)) {
    reap_stale(*rec);
    return make_error("VM '{}' is not running any more (its QEMU or owner process exited); removed its stale state",
                      name);
  }
  return rec;
}

std::string record_to_json(const VmRecord& vm) { return to_json(vm).dump(); }

std::vector<VmRecord> list_vms() {
  std::vector<VmRecord> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(run_root(), ec)) {
    if (!e.is_directory()) continue;
    auto r = find_vm(e.path().filename().string());
    if (r) out.push_back(std::move(r).value());
  }
  std::sort(out.begin(), out.end(), [](const VmRecord& a, const VmRecord& b) { return a.name < b.name; });
  return out;
}

namespace {
// ssh reports its own failures with status 255 and an "ssh:" or connection message; a remote
// command's own status 255 comes without one.
Result<void> check_ssh_client(const VmRecord& vm, const ProcessResult& r) {
  if (r.exit_code == 255 && (r.err.rfind("ssh:", 0) == 0 || r.err.find("Connection") != std::string::npos ||
                             r.err.find("Permission denied") != std::string::npos)) {
    return make_error("SSH to VM '{}' on 127.0.0.1:{} failed: {}", vm.name, vm.ssh_port, trim(r.err));
  }
  return {};
}

}  // namespace

namespace {
Result<ExecResult> ssh_exec_with(const VmRecord& vm, std::string_view command, std::chrono::seconds timeout,
                                 std::string_view user, const ProcessIo& io) {
  auto r = run_process(ssh_argv(vm, command, user), timeout, 64u << 20, io);
  if (!r) return make_error("running `{}` in VM '{}' over SSH: {}", command, vm.name, r.error().message);
  HVTRACE_TRY(check_ssh_client(vm, *r));
  return ExecResult{r->exit_code, std::move(r->out), std::move(r->err)};
}
}  // namespace

Result<void> Vm::put_file(std::string_view path, std::string_view bytes) const {
  ProcessIo io;
  io.input = bytes;
  auto r = ssh_exec_with(record_, "cat > " + shell_quote(std::string(path)), std::chrono::seconds{120}, "root", io);
  if (!r) return r.error();
  if (r->exit_status != 0) return make_error("writing {} in VM '{}': {}", path, record_.name, trim(r->err));
  return {};
}

Result<ExecResult> ssh_exec(const VmRecord& vm, std::string_view command, std::chrono::seconds timeout,
                            std::string_view user) {
  return ssh_exec_with(vm, command, timeout, user, {});
}

Result<ExecResult> ssh_exec_cleanup(const VmRecord& vm, std::string_view command, std::chrono::seconds timeout) {
  ProcessIo io;
  io.survive_termination = true;
  return ssh_exec_with(vm, command, timeout, "root", io);
}

Result<int> ssh_run(const VmRecord& vm, std::string_view command, std::chrono::seconds timeout, bool pass_stdin,
                    std::string_view user) {
  ProcessIo io;
  io.pass_stdin = pass_stdin;
  io.pass_stdout = true;
  io.tee_stderr = true;
  auto r = run_process(ssh_argv(vm, command, user), timeout, 64u << 20, io);
  if (!r) return make_error("running `{}` in VM '{}' over SSH: {}", command, vm.name, r.error().message);
  HVTRACE_TRY(check_ssh_client(vm, *r));
  return r->exit_code;
}

std::string shell_quote(std::string_view word) {
  const bool bare = !word.empty() && std::all_of(word.begin(), word.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           std::string_view("_-+.,/:@%").find(c) != std::string_view::npos;
  });
  if (bare) return std::string(word);
  std::string out = "'";
  for (char c : word) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string shell_quote_argv(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) out += (out.empty() ? "" : " ") + shell_quote(a);
  return out;
}

std::string remote_command_line(const std::vector<std::string>& argv) {
  return argv.size() == 1 ? argv.front() : shell_quote_argv(argv);
}


Result<std::string> qmp_command(const fs::path& socket_path, std::string_view command_json,
                                std::chrono::milliseconds timeout) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error("socket: {}", strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (socket_path.string().size() >= sizeof a.sun_path) return make_error("QMP socket path too long");
  std::strncpy(a.sun_path, socket_path.c_str(), sizeof a.sun_path - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    return make_error("connecting to QMP at {}: {}", socket_path.string(), strerror(errno));

  const auto deadline = Clock::now() + timeout;
  std::string buf;
  // Read one JSON line that satisfies `want`, skipping asynchronous events.
  auto read_reply = [&](bool greeting) -> Result<nlohmann::json> {
    while (true) {
      const auto nl = buf.find('\n');
      if (nl != std::string::npos) {
        const std::string line = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_discarded()) continue;
        if (greeting ? j.contains("QMP") : (j.contains("return") || j.contains("error"))) return j;
        continue;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return make_error("QMP at {} did not answer within {} ms", socket_path.string(), timeout.count());
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char tmp[4096];
      const ssize_t n = read(fd, tmp, sizeof tmp);
      if (n <= 0) return make_error("QMP at {} closed the connection", socket_path.string());
      buf.append(tmp, static_cast<std::size_t>(n));
      if (buf.size() > (1u << 20)) return make_error("QMP reply too large");
    }
  };
  auto send = [&](std::string_view s) -> Result<void> {
    std::string line(s);
    line += '\n';
    if (write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size()))
      return make_error("writing to QMP: {}", strerror(errno));
    return {};
  };
  {
    auto g = read_reply(true);
    if (!g) return std::move(g).error();
  }
  HVTRACE_TRY(send(R"({"execute":"qmp_capabilities"})"));
  {
    auto c = read_reply(false);
    if (!c) return std::move(c).error();
  }
  HVTRACE_TRY(send(command_json));
  auto reply = read_reply(false);
  if (!reply) {
    // "quit" closes the socket before or instead of replying.
    if (command_json.find("\"quit\"") != std::string_view::npos) return std::string("{}");
    return std::move(reply).error();
  }
  if (reply->contains("error")) return make_error("QMP error: {}", (*reply)["error"].dump());
  return (*reply)["return"].dump();
}

VmWatch::VmWatch(const VmRecord& vm, std::chrono::milliseconds interval)
    : name_(vm.name), qemu_pid_(vm.qemu_pid), start_time_(process_start_time(vm.qemu_pid)), interval_(interval) {
  alive_ = !start_time_.empty() && pid_alive(qemu_pid_);
  next_check_ = Clock::now() + interval_;
}

bool VmWatch::alive() {
  if (!alive_ || Clock::now() < next_check_) return alive_;
  alive_ = pid_alive(qemu_pid_) && process_start_time(qemu_pid_) == start_time_;
  next_check_ = Clock::now() + interval_;
  return alive_;
}

std::string VmWatch::stopped_message() const {
  return fmt::format("VM '{}' stopped (QEMU pid {} exited)", name_, qemu_pid_);
}

Result<VmRecord> start_detached(VmConfig config, const Progress& progress) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return make_error("pipe: {}", strerror(errno));
  const std::string name = config.name;
  const pid_t pid = fork();
  if (pid < 0) return make_error("fork: {}", strerror(errno));
  if (pid == 0) {
    // Supervisor: own session (no terminal signals), reports through the pipe, then owns the VM.
    close(fds[0]);
    setsid();
    const int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      dup2(devnull, 0);
      dup2(devnull, 1);
      dup2(devnull, 2);
    }
    auto report = [&](char kind, std::string_view msg) { report_to_starter(fds[1], kind, msg); };
    int code = 0;
    {
      auto vm = Vm::start(std::move(config), [&](std::string_view m) { report('P', m); });
      if (!vm) {
        report('E', vm.error().message);
        _exit(1);
      }
      report('R', "");
      close(fds[1]);
      while ((*vm)->running() && !termination_requested()) (*vm)->wait_exit(1000ms);
      if (termination_requested()) {
        clear_termination_request();  // a second signal hurries the shutdown along
        if (!(*vm)->shutdown(20s)) code = 1;
      }
      // Destroying the Vm removes the run directory whether QEMU exited, crashed or was killed.
    }
    _exit(code);
  }
  close(fds[1]);
  auto waited = wait_for_supervisor(fds[0], pid, progress);
  close(fds[0]);
  if (!waited) {
    int status = 0;
    waitpid(pid, &status, 0);
    return std::move(waited).error();
  }
  // The supervisor stays running (reparented when we exit); reap it if it ends while we live.
  return find_vm(name);
}

void report_to_starter(int fd, char kind, std::string_view message) {
  std::string line = fmt::format("{}{}\n", kind, message);
  std::replace(line.begin(), line.end() - 1, '\n', '\x1f');  // one message per line
  (void)!write(fd, line.data(), line.size());
}

Result<void> wait_for_supervisor(int fd, pid_t pid, const Progress& progress) {
  std::string buf;
  std::string error;
  bool ready = false;
  char tmp[4096];
  while (!ready && error.empty()) {
    if (termination_requested()) {
      kill(pid, SIGTERM);
      error = "interrupted";
      break;
    }
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 500) <= 0) continue;
    const ssize_t n = read(fd, tmp, sizeof tmp);
    if (n <= 0) {
      error = "the supervisor exited before it was ready";
      break;
    }
    buf.append(tmp, static_cast<std::size_t>(n));
    std::size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      std::replace(line.begin(), line.end(), '\x1f', '\n');
      if (line.empty()) continue;
      const std::string msg = line.substr(1);
      if (line[0] == 'P' && progress) progress(msg);
      if (line[0] == 'E') error = msg;
      if (line[0] == 'R') ready = true;
    }
  }
  if (!ready) return Error{error};
  return {};
}

Result<void> stop_vm(const VmRecord& vm, std::chrono::seconds timeout) {
  if (kill(vm.owner_pid, SIGTERM) != 0 && errno != ESRCH)
    return make_error("cannot signal VM '{}' owner (pid {}): {}", vm.name, vm.owner_pid, strerror(errno));
  const auto deadline = Clock::now() + timeout;
  // Done when the owner has exited. It removes the run directory (QEMU gone) just before it
  // exits, so a gone directory with the owner alive for a moment more is a clean stop finishing:
  // wait a little for it, never kill it then (after 5 s the pid may even be another process's).
  std::optional<Clock::time_point> dir_gone;
  while (Clock::now() < deadline) {
    int status = 0;
    waitpid(vm.owner_pid, &status, WNOHANG);  // reap if it happens to be our child
    if (!pid_alive(vm.owner_pid)) break;
    if (!dir_gone && !fs::exists(vm.run_dir)) dir_gone = Clock::now();
    if (dir_gone && Clock::now() - *dir_gone > 5s) break;
    std::this_thread::sleep_for(50ms);
  }
  if (fs::exists(vm.run_dir) || (!dir_gone && pid_alive(vm.owner_pid))) {
    if (pid_alive(vm.owner_pid)) kill(vm.owner_pid, SIGKILL);
    reap_stale(vm);
    return make_error("VM '{}' did not stop within {} s; killed it", vm.name, timeout.count());
  }
  return {};
}

}  // namespace hvtrace::vm
