#include "session_watcher.hpp"

#include "vm/vm.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <thread>

namespace hvtrace::tools {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {
std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
}  // namespace

fs::path source_dir() {
  if (const char* env = std::getenv("HVTRACE_SOURCE_DIR"); env != nullptr && *env != '\0') return env;
  std::error_code ec;
  fs::path p = fs::read_symlink("/proc/self/exe", ec);
  for (int i = 0; i < 5 && !ec && p.has_parent_path() && p != p.parent_path(); ++i) {
    p = p.parent_path();
    if (fs::is_regular_file(p / "scripts" / "attacker")) return p;
  }
  return {};
}

SessionWatcher::SessionWatcher(const std::string& vm_name, const fs::path& dir, const fs::path& out, const fs::path& log,
                               const std::vector<std::string>& extra)
    : out_(out), log_(log) {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  std::vector<std::string> args = {self.string(), "session", "--vm", vm_name, "-o", dir.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_ = fork();
  if (pid_ == 0) {
    const int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    const int e = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    const int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (o < 0 || e < 0 || in < 0) _exit(127);
    dup2(in, 0);
    dup2(o, 1);
    dup2(e, 2);
    setpgid(0, 0);  // our terminal's Ctrl-C comes to us; we stop it in order
    execv(argv[0], argv.data());
    _exit(127);
  }
}

SessionWatcher::~SessionWatcher() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

bool SessionWatcher::wait_ready(std::chrono::seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end && !vm::termination_requested()) {
    if (log().find("hvtrace: watching ") != std::string::npos) return true;
    if (exited()) return false;
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

bool SessionWatcher::exited() {
  if (!reaped_ && pid_ > 0 && wait4(pid_, &status_, WNOHANG, &usage_) == pid_) reaped_ = true;
  return reaped_;
}

bool SessionWatcher::stop(std::chrono::seconds limit) {
  if (!exited()) kill(pid_, SIGINT);
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!exited() && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(50ms);
  return reaped_;
}

double SessionWatcher::cpu_seconds() const {
  auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return tv(usage_.ru_utime) + tv(usage_.ru_stime);
}

std::string SessionWatcher::output() const { return read_all(out_); }
std::string SessionWatcher::log() const { return read_all(log_); }

std::string typing_error(const std::string& v) {
  unsigned lo = 0, hi = 0;
  char dash = 0, rest = 0;
  if (std::sscanf(v.c_str(), "%u%c%u%c", &lo, &dash, &hi, &rest) != 3 || dash != '-' || v.find_first_not_of("0123456789-") != std::string::npos)
    return "'" + v + "' is not MIN-MAX milliseconds per key (e.g. 20-100)";
  if (lo > hi) return "'" + v + "': MIN is above MAX";
  return "";
}

}  // namespace hvtrace::tools
