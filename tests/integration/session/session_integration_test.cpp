// `hvtrace session` against a real login: Debian's OpenSSH client, run in a pseudo-terminal this
// test owns, logs in to the default guest with password authentication (a wrong password first,
// typed at the prompt, then the right one), types a command with a typo corrected by backspace and
// a pipeline at a person's pace, and logs out. Then hvtrace gets SIGINT, and its session folder
// must hold what happened: the connection, the login, each command line as finally entered, its
// output, and the close.
#include "vm/process.hpp"
#include "vm/vm.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <pty.h>
#include <sys/select.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <csignal>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

namespace hvtrace {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
constexpr const char* kVm = HVTRACE_SESSION_VM;

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// A program started in the background with its output in files; SIGINT to stop it.
struct Background {
  pid_t pid = -1;
  fs::path out, err;
  static Background start(const std::vector<std::string>& argv, const fs::path& out, const fs::path& err) {
    Background b{-1, out, err};
    b.pid = fork();
    if (b.pid == 0) {
      std::freopen(out.c_str(), "w", stdout);
      std::freopen(err.c_str(), "w", stderr);
      std::vector<char*> a;
      for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
      a.push_back(nullptr);
      execv(a[0], a.data());
      _exit(127);
    }
    return b;
  }
  // Exit status after SIGINT (-1 if it did not end within `wait`).
  int interrupt(std::chrono::seconds wait) {
    if (pid <= 0) return -1;
    kill(pid, SIGINT);
    const auto end = std::chrono::steady_clock::now() + wait;
    int st = 0;
    while (std::chrono::steady_clock::now() < end) {
      if (waitpid(pid, &st, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      std::this_thread::sleep_for(50ms);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    pid = -1;
    return -1;
  }
  ~Background() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
};

// OpenSSH's client in a pseudo-terminal: what it shows, and keys typed one at a time.
class Terminal {
 public:
  Terminal(std::uint16_t port, const std::string& user) {
    pid_ = forkpty(&fd_, nullptr, nullptr, nullptr);
    if (pid_ == 0) {
      const std::string p = std::to_string(port), dest = user + "@127.0.0.1";
      execlp("ssh", "ssh", "-tt", "-p", p.c_str(), "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
             "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null", "-o", "PreferredAuthentications=password",
             "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=3", "-o", "LogLevel=ERROR", dest.c_str(),
             static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  ~Terminal() {
    if (fd_ >= 0) close(fd_);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // Wait until the screen has shown `pat` `count` times in all (false on EOF or timeout).
  bool wait_for(const std::string& pat, std::size_t count = 1, std::chrono::seconds timeout = 60s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (occurrences(pat) < count) {
      if (std::chrono::steady_clock::now() > end || !pump(200)) return occurrences(pat) >= count;
    }
    return true;
  }
  void type(const std::string& keys) {
    for (const char c : keys) {
      ASSERT_EQ(write(fd_, &c, 1), 1);
      std::this_thread::sleep_for(60ms);   // a person's pace: the shell sees every key
      (void)pump(0);
    }
  }
  // Until the client exits; its exit status.
  int finish(std::chrono::seconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end && pump(200)) {
    }
    int st = 0;
    while (std::chrono::steady_clock::now() < end) {
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      }
      std::this_thread::sleep_for(50ms);
    }
    return -1;
  }
  [[nodiscard]] const std::string& screen() const { return screen_; }
  [[nodiscard]] std::size_t occurrences(const std::string& pat) const {
    std::size_t n = 0;
    for (auto at = screen_.find(pat); at != std::string::npos; at = screen_.find(pat, at + pat.size())) ++n;
    return n;
  }

 private:
  // Read what is there within ms; false on EOF.
  bool pump(int ms) {
    fd_set r;
    FD_ZERO(&r);
    FD_SET(fd_, &r);
    timeval tv{0, ms * 1000};
    if (select(fd_ + 1, &r, nullptr, nullptr, &tv) <= 0) return true;
    char buf[4096];
    const ssize_t n = read(fd_, buf, sizeof buf);
    if (n <= 0) return false;
    screen_.append(buf, static_cast<std::size_t>(n));
    return true;
  }
  pid_t pid_ = -1;
  int fd_ = -1;
  std::string screen_;
};

class Session : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto img = vm::load_image(vm::image_dir("default"));
    ASSERT_TRUE(img.ok()) << img.error().message;
    image_dir_ = img->dir;
    vm::VmConfig c;
    c.name = kVm;
    c.image = std::move(img).value();
    c.plugin = vm::monitor_plugin(HVTRACE_MONITOR_PLUGIN, kVm, {});
    auto v = vm::Vm::start(c);
    ASSERT_TRUE(v.ok()) << v.error().message;
    vm_ = std::move(v).value().release();
  }
  static void TearDownTestSuite() {
    if (vm_) (void)vm_->shutdown();
    delete vm_;
    vm_ = nullptr;
  }
  // The image's password of `user` (its `passwords` file: user:password lines).
  static std::string password(const std::string& user) {
    std::istringstream in(slurp(image_dir_ / "passwords"));
    for (std::string line; std::getline(in, line);)
      if (line.rfind(user + ":", 0) == 0) return line.substr(user.size() + 1);
    return {};
  }
  static std::vector<nlohmann::json> events(const fs::path& dir) {
    std::vector<nlohmann::json> v;
    std::istringstream in(slurp(dir / "events.jsonl"));
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      EXPECT_FALSE(j.is_discarded()) << line;
      if (!j.is_discarded()) v.push_back(std::move(j));
    }
    return v;
  }
  static std::vector<nlohmann::json> of(const std::vector<nlohmann::json>& ev, const std::string& id) {
    std::vector<nlohmann::json> v;
    for (const auto& e : ev)
      if (e.value("eventid", "") == id) v.push_back(e);
    return v;
  }

  // hvtrace session running while an interactive login happens; its folder and outputs.
  struct Watched {
    int exit_code = -1;
    std::string out, err, screen;
    std::vector<fs::path> sessions;
  };
  static Watched watch_login(const std::string& wrong, const std::string& right) {
    Watched w;
    const fs::path base = fs::path(::testing::TempDir()) / fmt::format("hvtrace-session-{}", getpid());
    fs::remove_all(base);
    fs::create_directories(base);
    Background hv = Background::start({HVTRACE_BIN, "session", "--vm", kVm, "-o", (base / "s").string(), "--follow"},
                                      base / "out.txt", base / "err.txt");
    const auto ready_by = std::chrono::steady_clock::now() + 120s;
    while (slurp(base / "err.txt").find("watching") == std::string::npos && std::chrono::steady_clock::now() < ready_by) {
      int st = 0;
      if (waitpid(hv.pid, &st, WNOHANG) == hv.pid) {
        hv.pid = -1;
        break;
      }
      std::this_thread::sleep_for(100ms);
    }
    EXPECT_NE(slurp(base / "err.txt").find("watching"), std::string::npos) << slurp(base / "err.txt");
    {
      Terminal t(vm_->record().ssh_port, "alice");
      EXPECT_TRUE(t.wait_for("password:")) << t.screen();
      t.type(wrong + "\r");
      EXPECT_TRUE(t.wait_for("password:", 2)) << t.screen();
      t.type(right + "\r");
      EXPECT_TRUE(t.wait_for("$ ")) << t.screen();
      t.type("echo hellp\x7fo world\r");   // a typo, corrected with backspace (DEL)
      EXPECT_TRUE(t.wait_for("hello world\r\n")) << t.screen();
      EXPECT_TRUE(t.wait_for("$ ", 2)) << t.screen();
      t.type("echo abc def | tr a-z A-Z\r");
      EXPECT_TRUE(t.wait_for("ABC DEF")) << t.screen();
      EXPECT_TRUE(t.wait_for("$ ", 3)) << t.screen();
      t.type("exit\r");
      EXPECT_EQ(t.finish(60s), 0) << t.screen();
      w.screen = t.screen();
    }
    std::this_thread::sleep_for(2s);   // the last events reach the rings
    w.exit_code = hv.interrupt(60s);
    w.out = slurp(base / "out.txt");
    w.err = slurp(base / "err.txt");
    if (fs::is_directory(base / "s"))
      for (const auto& e : fs::directory_iterator(base / "s"))
        if (e.is_directory() && std::regex_match(e.path().filename().string(), std::regex("[0-9a-f]{12}"))) w.sessions.push_back(e.path());
    return w;
  }

  static inline vm::Vm* vm_ = nullptr;
  static inline fs::path image_dir_;
};

TEST_F(Session, AnInteractiveLoginIsRecordedFromOutside) {
  const std::string right = password("alice");
  ASSERT_FALSE(right.empty()) << "no password for alice in " << image_dir_;
  const Watched w = watch_login("Wr0ng-guess!", right);
  EXPECT_EQ(w.exit_code, 0) << w.err;
  ASSERT_EQ(w.sessions.size(), 1u) << w.out << w.err;
  const fs::path dir = w.sessions[0];
  // The summary names the folder and what watching cost; nothing was lost.
  EXPECT_NE(w.out.find(dir.filename().string()), std::string::npos) << w.out;
  EXPECT_NE(w.out.find("watching cost:"), std::string::npos) << w.out;
  EXPECT_NE(w.out.find("lost events: 0 "), std::string::npos) << w.out;
  // --follow printed each command as it was entered.
  EXPECT_NE(w.out.find("$ echo hello world"), std::string::npos) << w.out;
  EXPECT_NE(w.out.find("$ echo abc def | tr a-z A-Z"), std::string::npos) << w.out;

  const auto ev = events(dir);
  const auto connect = of(ev, "cowrie.session.connect");
  ASSERT_EQ(connect.size(), 1u);
  EXPECT_EQ(connect[0].value("src_ip", ""), "10.0.2.2");   // QEMU user networking's host side
  EXPECT_EQ(connect[0].value("dst_port", 0), 22);
  EXPECT_EQ(connect[0].value("session", ""), dir.filename().string());
  const auto ok = of(ev, "cowrie.login.success");
  ASSERT_EQ(ok.size(), 1u);
  std::vector<std::string> inputs;
  for (const auto& e : of(ev, "cowrie.command.input")) inputs.push_back(e.value("input", ""));
  // Each line as finally entered, in order (the typo's backspace applied).
  const auto first = std::find(inputs.begin(), inputs.end(), "echo hello world");
  EXPECT_NE(first, inputs.end()) << fmt::format("{}", fmt::join(inputs, " | "));
  EXPECT_NE(std::find(first, inputs.end(), "echo abc def | tr a-z A-Z"), inputs.end()) << fmt::format("{}", fmt::join(inputs, " | "));
  const auto closed = of(ev, "cowrie.session.closed");
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_TRUE(closed[0].contains("duration"));
  for (const auto& e : ev) {
    EXPECT_EQ(e.value("session", ""), dir.filename().string());
    EXPECT_TRUE(e.contains("timestamp"));
  }

  const std::string transcript = slurp(dir / "transcript.txt");
  EXPECT_NE(transcript.find("echo hello world"), std::string::npos) << transcript;
  EXPECT_NE(transcript.find("hello world\n"), std::string::npos) << transcript;
  EXPECT_NE(transcript.find("ABC DEF"), std::string::npos) << transcript;
  EXPECT_EQ(transcript.find("hellp"), std::string::npos) << "the typo is not the command entered\n" << transcript;
  const std::string cast = slurp(dir / "session.cast");
  EXPECT_TRUE(std::regex_search(cast.substr(0, cast.find('\n')), std::regex(R"("version":\s*2)"))) << cast.substr(0, 200);
  EXPECT_NE(cast.find("ABC DEF"), std::string::npos);
  // Both passwords, with their outcome, and the user name, from the breakpoints at crypt() and
  // getpwnam() in the server (symbols from the libraries' ELF tables in guest memory).
  const auto failed = of(ev, "cowrie.login.failed");
  ASSERT_EQ(failed.size(), 1u) << w.out;
  EXPECT_EQ(failed[0].value("password", ""), "Wr0ng-guess!");
  EXPECT_EQ(failed[0].value("username", ""), "alice");
  EXPECT_EQ(ok[0].value("password", ""), right);
  EXPECT_EQ(ok[0].value("username", ""), "alice");
}

TEST_F(Session, BadInputIsOneClearError) {
  const std::pair<std::vector<std::string>, std::string> cases[] = {
      {{HVTRACE_BIN, "session", "--vm", "no-such-vm"}, "no-such-vm"},
      {{HVTRACE_BIN, "session", "--vm", kVm, "--server", "no-such-server"}, "no SSH server (no-such-server)"},
      {{HVTRACE_BIN, "session", "--vm", kVm, "-o", "/proc/no/such/dir"}, "/proc/no/such/dir"},
  };
  for (const auto& [argv, want] : cases) {
    auto r = vm::run_process(argv, 120s);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->exit_code, 2) << fmt::format("{}", fmt::join(argv, " ")) << "\n" << r->err;
    EXPECT_NE(r->err.find(want), std::string::npos) << r->err;
  }
  auto help = vm::run_process({HVTRACE_BIN, "session", "--help"}, 30s);
  ASSERT_TRUE(help.ok());
  EXPECT_EQ(help->exit_code, 0);
  for (const char* w : {"--vm", "--output-dir", "--follow", "--duration", "--sensor", "events.jsonl", "Exit status"})
    EXPECT_NE(help->out.find(w), std::string::npos) << w;
}

}  // namespace
}  // namespace hvtrace
