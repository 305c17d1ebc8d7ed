#include "publish/local_nats.hpp"

#include <fmt/core.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace hvtrace::publish {

namespace {
sockaddr_in loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}
}  // namespace

int free_loopback_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a = loopback(0);
  socklen_t len = sizeof a;
  const bool ok = ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(s);
  if (!ok) throw std::runtime_error("no free loopback port");
  return ntohs(a.sin_port);
}

int free_loopback_range(int n) {
  for (int attempt = 0; attempt < 200; ++attempt) {
    const int first = free_loopback_port();
    if (first + n > 65536) continue;
    std::vector<int> held;
    for (int p = first; p < first + n; ++p) {   // held together, so the check is of the whole range
      const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a = loopback(p);
      if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(s);
        break;
      }
      held.push_back(s);
    }
    const bool all = static_cast<int>(held.size()) == n;
    for (int s : held) ::close(s);
    if (all) return first;
  }
  throw std::runtime_error(fmt::format("no {} consecutive free loopback ports", n));
}

bool loopback_port_open(int port) {
  const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a = loopback(port);
  const bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(s);
  return ok;
}

// The server dies with the thread that started it (PR_SET_PDEATHSIG), as the guests' QEMUs do: a
// SIGKILLed `bench session` or test leaves no nats-server behind. Its output goes to `log`; an
// exec failure is written there too (the caller shows the log).
pid_t spawn_logged(const std::vector<std::string>& argv, const std::filesystem::path& log) {
  const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (out < 0 || in < 0) {
    if (out >= 0) ::close(out);
    if (in >= 0) ::close(in);
    return -1;
  }
  std::vector<char*> a;
  for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
  a.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {   // only async-signal-safe calls from here to the exec
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);   // the parent died before the prctl
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(out, 2);
    ::execvp(a[0], a.data());
    static const char msg[] = "cannot execute the program (is it installed? bash scripts/setup)\n";
    (void)!::write(2, msg, sizeof msg - 1);
    ::_exit(127);
  }
  ::close(out);
  ::close(in);
  return pid;
}

int wait_exit(pid_t pid, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  for (;;) {
    int st = 0;
    if (::waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (std::chrono::steady_clock::now() >= end) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string LocalNats::Node::url() const { return fmt::format("nats://127.0.0.1:{}", port); }

LocalNats::LocalNats(const std::filesystem::path& dir, int n, const std::string& prefix, bool jetstream) {
  for (int i = 0; i < n; ++i) {
    Node x;
    x.name = fmt::format("{}-{}", prefix, i + 1);
    x.port = free_loopback_port();
    x.cluster_port = free_loopback_port();
    x.conf = dir / (x.name + ".conf");
    x.log = dir / (x.name + ".log");
    nodes_.push_back(x);
  }
  for (const auto& x : nodes_) {
    std::string c = fmt::format("server_name: {}\nlisten: 127.0.0.1:{}\n", x.name, x.port);
    if (jetstream) c += fmt::format("jetstream {{ store_dir: \"{}\", max_file_store: 4G, max_memory_store: 64M }}\n", (dir / x.name).string());
    if (n > 1) {
      c += fmt::format("cluster {{\n  name: {}-cluster\n  listen: 127.0.0.1:{}\n  routes: [\n", prefix, x.cluster_port);
      for (const auto& y : nodes_)
        if (y.name != x.name) c += fmt::format("    \"nats-route://127.0.0.1:{}\"\n", y.cluster_port);
      c += "  ]\n}\n";
    }
    std::ofstream(x.conf) << c;
  }
}

LocalNats::~LocalNats() {
  for (std::size_t i = 0; i < nodes_.size(); ++i) kill(static_cast<int>(i), SIGTERM);
}

void LocalNats::start() {
  for (std::size_t i = 0; i < nodes_.size(); ++i) start(static_cast<int>(i));
}

void LocalNats::start(int i) {
  Node& x = nodes_[static_cast<std::size_t>(i)];
  x.pid = spawn_logged({"nats-server", "-c", x.conf.string()}, x.log);
  if (x.pid <= 0) throw std::runtime_error("cannot start nats-server (is it installed? bash scripts/setup)");
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!loopback_port_open(x.port)) {
    if (wait_exit(x.pid, std::chrono::milliseconds(0)) >= 0 || std::chrono::steady_clock::now() >= end) {
      x.pid = -1;
      std::ifstream in(x.log);
      throw std::runtime_error(fmt::format("{} did not start; its log:\n{}", x.name, std::string(std::istreambuf_iterator<char>(in), {})));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void LocalNats::kill(int i, int sig) {
  Node& x = nodes_[static_cast<std::size_t>(i)];
  if (x.pid <= 0) return;
  ::kill(x.pid, sig);
  if (wait_exit(x.pid, std::chrono::seconds(10)) < 0) {
    ::kill(x.pid, SIGKILL);
    wait_exit(x.pid, std::chrono::seconds(5));
  }
  x.pid = -1;
}

std::string LocalNats::urls() const {
  std::string u;
  for (const auto& x : nodes_) u += (u.empty() ? "" : ",") + x.url();
  return u;
}

}  // namespace hvtrace::publish
