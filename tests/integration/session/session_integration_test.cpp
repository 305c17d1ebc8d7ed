// `hvtrace session` against a real login: Debian's OpenSSH client, run in a pseudo-terminal this
// test owns, logs in to the default guest with password authentication (a wrong password first,
// typed at the prompt, then the right one), types a command with a typo corrected by backspace and
// a pipeline at a person's pace, and logs out. Then hvtrace gets SIGINT, and its session folder
// must hold what happened: the connection, the login, each command line as finally entered, its
// output, and the close. The same guest serves the issue's other cases: SIGINT mid-session, a
// session picked up from before the watch, and hostile input from the guest.
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
#include <cstdint>
#include <chrono>
#include <iostream>
#include <csignal>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>
#include <utility>

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
    Background hv;
    const fs::path base = start_watch(hv, "login");
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
    w.sessions = session_dirs(base / "s");
    return w;
  }

  // A fresh folder for one test's hvtrace run.
  static fs::path fresh_base(const std::string& tag) {
    const fs::path base = fs::path(::testing::TempDir()) / fmt::format("hvtrace-session-{}-{}", tag, getpid());
    fs::remove_all(base);
    fs::create_directories(base);
    return base;
  }
  // `hvtrace session` into a fresh folder's s/, started and waited for until it says it is
  // watching; the folder.
  static fs::path start_watch(Background& hv, const std::string& tag) {
    const fs::path base = fresh_base(tag);
    Background started = Background::start({HVTRACE_BIN, "session", "--vm", kVm, "-o", (base / "s").string(), "--follow"},
                                           base / "out.txt", base / "err.txt");
    std::swap(hv.pid, started.pid);   // `started` no longer owns the process
    hv.out = started.out;
    hv.err = started.err;
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
    return base;
  }
  static std::vector<fs::path> session_dirs(const fs::path& dir) {
    std::vector<fs::path> v;
    if (fs::is_directory(dir))
      for (const auto& e : fs::directory_iterator(dir))
        if (e.is_directory() && std::regex_match(e.path().filename().string(), std::regex("[0-9a-f]{12}"))) v.push_back(e.path());
    return v;
  }
  static std::string tail(const std::string& s, std::size_t n = 2000) { return s.size() > n ? s.substr(s.size() - n) : s; }
  // Alice logs in with the right password and gets her prompt.
  static void log_in(Terminal& t) {
    ASSERT_TRUE(t.wait_for("password:")) << t.screen();
    t.type(password("alice") + "\r");
    ASSERT_TRUE(t.wait_for("$ ")) << t.screen();
  }
  // Type a command line; wait for `want` on the screen, then for the next prompt.
  static void run(Terminal& t, const std::string& line, const std::string& want, std::chrono::seconds timeout = 60s) {
    const auto prompts = t.occurrences("$ ");
    const auto wants = t.occurrences(want);
    t.type(line + "\r");
    EXPECT_TRUE(t.wait_for(want, wants + 1, timeout)) << line << "\n" << tail(t.screen());
    EXPECT_TRUE(t.wait_for("$ ", prompts + 1, timeout)) << line << "\n" << tail(t.screen());
  }
  // The peak resident set of a running process (VmHWM, bytes; 0 if unreadable).
  static std::uint64_t peak_rss(pid_t pid) {
    std::istringstream in(slurp(fmt::format("/proc/{}/status", pid)));
    for (std::string line; std::getline(in, line);)
      if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    return 0;
  }
  // Every line of the file is one JSON value (asserted); the values.
  static std::vector<nlohmann::json> json_lines(const fs::path& p) {
    std::vector<nlohmann::json> v;
    std::istringstream in(slurp(p));
    std::size_t n = 0;
    for (std::string line; std::getline(in, line);) {
      ++n;
      auto j = nlohmann::json::parse(line, nullptr, false);
      EXPECT_FALSE(j.is_discarded()) << p << ":" << n << ": " << line.substr(0, 300);
      if (!j.is_discarded()) v.push_back(std::move(j));
    }
    return v;
  }
  static const nlohmann::json* exec_with(const std::vector<nlohmann::json>& ev, const std::string& arg) {
    for (const auto& e : ev)
      if (e.value("eventid", "") == "hvtrace.process.exec" && e.contains("argv"))
        for (const auto& a : e["argv"])
          if (a.is_string() && a.get<std::string>() == arg) return &e;
    return nullptr;
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
  EXPECT_EQ(failed[0].value("username", ""), "alice") << w.out << tail(w.err, 6000);
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

// hvtrace stopped with SIGINT while alice is still logged in, after a command's output was shown:
// the folder keeps the connection, the login and the command, and the engine closes the session
// at the end of the watch (`ended: "watch_ended"`), as the last line of events.jsonl.
TEST_F(Session, SigintMidSessionKeepsWhatWasCaptured) {
  Background hv;
  const fs::path base = start_watch(hv, "sigint");
  Terminal t(vm_->record().ssh_port, "alice");
  ASSERT_NO_FATAL_FAILURE(log_in(t));
  run(t, "echo mid-$((6*7))", "mid-42\r\n");
  std::this_thread::sleep_for(2s);   // the last events reach the rings
  EXPECT_EQ(hv.interrupt(60s), 0) << slurp(base / "err.txt");
  t.type("exit\r");   // the client logs out after the watch ended
  (void)t.finish(60s);

  const auto dirs = session_dirs(base / "s");
  ASSERT_EQ(dirs.size(), 1u) << slurp(base / "out.txt") << slurp(base / "err.txt");
  const auto ev = json_lines(dirs[0] / "events.jsonl");
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(of(ev, "cowrie.session.connect").size(), 1u);
  EXPECT_EQ(of(ev, "cowrie.login.success").size(), 1u);
  std::vector<std::string> inputs;
  for (const auto& e : of(ev, "cowrie.command.input")) inputs.push_back(e.value("input", ""));
  EXPECT_NE(std::find(inputs.begin(), inputs.end(), "echo mid-$((6*7))"), inputs.end()) << fmt::format("{}", fmt::join(inputs, " | "));
  EXPECT_EQ(ev.back().value("eventid", ""), "cowrie.session.closed") << ev.back().dump();
  EXPECT_EQ(ev.back().value("ended", ""), "watch_ended") << ev.back().dump();
  EXPECT_EQ(of(ev, "cowrie.session.closed").size(), 1u);
  EXPECT_NE(slurp(dirs[0] / "transcript.txt").find("mid-42"), std::string::npos) << slurp(dirs[0] / "transcript.txt");
  (void)json_lines(dirs[0] / "session.cast");
}

// A login made before hvtrace starts is picked up from the process list, with its open files read
// from guest memory (issue 9): the connection process's pty master is its terminal from then on
// and its socket gives the client's address. The command typed in the old session is recorded as
// typed, its output goes to the transcript and the .cast, its exec with its argv; the close when
// alice logs out.
TEST_F(Session, ASessionStartedBeforeTheWatchIsPickedUp) {
  Terminal t(vm_->record().ssh_port, "alice");
  ASSERT_NO_FATAL_FAILURE(log_in(t));
  Background hv;
  const fs::path base = start_watch(hv, "pickup");
  EXPECT_NE(slurp(base / "err.txt").find("already running"), std::string::npos) << slurp(base / "err.txt");
  EXPECT_EQ(slurp(base / "err.txt").find("stay unknown"), std::string::npos) << "its fd table was read\n" << slurp(base / "err.txt");
  run(t, "/bin/echo picked-$((6*7))", "picked-42\r\n");
  t.type("exit\r");
  EXPECT_EQ(t.finish(60s), 0) << tail(t.screen());
  std::this_thread::sleep_for(2s);
  EXPECT_EQ(hv.interrupt(60s), 0) << slurp(base / "err.txt");

  const auto dirs = session_dirs(base / "s");
  ASSERT_EQ(dirs.size(), 1u) << slurp(base / "out.txt") << slurp(base / "err.txt");
  const auto ev = json_lines(dirs[0] / "events.jsonl");
  const auto connect = of(ev, "cowrie.session.connect");
  ASSERT_EQ(connect.size(), 1u);
  EXPECT_TRUE(connect[0].value("picked_up", false)) << connect[0].dump();
  EXPECT_EQ(connect[0].value("src_ip", ""), "10.0.2.2") << connect[0].dump();   // from the socket in its fd table
  EXPECT_GT(connect[0].value("src_port", 0), 0) << connect[0].dump();
  EXPECT_EQ(connect[0].value("dst_port", 0), 22) << connect[0].dump();
  const nlohmann::json* exec = exec_with(ev, "picked-42");
  ASSERT_NE(exec, nullptr) << slurp(dirs[0] / "events.jsonl");
  EXPECT_EQ((*exec)["argv"], nlohmann::json::array({"/bin/echo", "picked-42"})) << exec->dump();
  std::vector<std::string> inputs;
  for (const auto& e : of(ev, "cowrie.command.input")) inputs.push_back(e.value("input", ""));
  EXPECT_NE(std::find(inputs.begin(), inputs.end(), "/bin/echo picked-$((6*7))"), inputs.end()) << fmt::format("{}", fmt::join(inputs, " | ")) << slurp(dirs[0] / "events.jsonl");
  const auto closed = of(ev, "cowrie.session.closed");
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_NE(closed[0].value("ended", ""), "watch_ended") << "alice logged out while watched: " << closed[0].dump();
  // Its terminal from the watch on: the command's output in the transcript and the .cast, and
  // not the client's socket (ciphertext).
  const std::string transcript = slurp(dirs[0] / "transcript.txt");
  EXPECT_NE(transcript.find("picked-42\n"), std::string::npos) << transcript;
  EXPECT_NE(transcript.find("10.0.2.2:"), std::string::npos) << transcript;
  // Its user from the shell's real uid (the image's alice is uid 1000; passwd is not read).
  EXPECT_NE(transcript.find("uid:1000@10.0.2.2:"), std::string::npos) << transcript;
  std::string out;
  for (const auto& e : json_lines(dirs[0] / "session.cast"))
    if (e.is_array() && e.size() == 3 && e[1] == "o") out += e[2].get<std::string>();
  EXPECT_NE(out.find("picked-42\r\n"), std::string::npos) << out.substr(0, 400);
  EXPECT_EQ(out.find("SSH-2.0"), std::string::npos) << out.substr(0, 400);
}

// Hostile input from the guest in one session: an argv of more than 1 MiB, binary output, a
// process storm, a long argv; then a marker command. hvtrace stays bounded, writes valid JSON and
// asciicast, marks the cut argv, and still records the marker (nothing wedged).
TEST_F(Session, HostileInputFromTheGuestStaysBounded) {
  Background hv;
  const fs::path base = start_watch(hv, "hostile");
  {
    Terminal t(vm_->record().ssh_port, "alice");
    ASSERT_NO_FATAL_FAILURE(log_in(t));
    // 1049 words of 1000 bytes (one argument may not exceed 128 KiB): 1050049 bytes of argv.
    run(t, "a=$(printf %01000d 0); x=$(for i in $(seq 1049); do echo $a; done); /bin/echo $x | wc -c", "1050049", 300s);
    run(t, "head -c 4096 /dev/urandom; echo; echo bin-$((6*7))", "bin-42", 120s);
    run(t, "for i in $(seq 300); do /bin/true & done; wait; echo storm-$((6*7))", "storm-42", 300s);
    run(t, "/bin/echo $(seq 5000)", "4999 5000", 120s);
    run(t, "/bin/echo marker-$((6*7))", "marker-42\r\n", 120s);
    t.type("exit\r");
    EXPECT_EQ(t.finish(60s), 0) << tail(t.screen());
  }
  std::this_thread::sleep_for(2s);
  const std::uint64_t rss = peak_rss(hv.pid);
  EXPECT_GT(rss, 0u);
  EXPECT_LT(rss, 512ull << 20) << "hvtrace's peak RSS";
  RecordProperty("hvtrace_peak_rss_kib", std::to_string(rss >> 10));
  EXPECT_EQ(hv.interrupt(60s), 0) << slurp(base / "err.txt");

  const auto dirs = session_dirs(base / "s");
  ASSERT_EQ(dirs.size(), 1u) << slurp(base / "out.txt") << slurp(base / "err.txt");
  const fs::path dir = dirs[0];
  const auto ev = json_lines(dir / "events.jsonl");
  // The marker after the storm: its line and its exec.
  std::vector<std::string> inputs;
  for (const auto& e : of(ev, "cowrie.command.input")) inputs.push_back(e.value("input", ""));
  EXPECT_NE(std::find(inputs.begin(), inputs.end(), "/bin/echo marker-$((6*7))"), inputs.end()) << fmt::format("{}", fmt::join(inputs, " | "));
  EXPECT_NE(exec_with(ev, "marker-42"), nullptr);
  // The 1 MiB argv is cut, and marked so; what is kept is bounded by max_line_bytes (64 KiB).
  const nlohmann::json* big = nullptr;
  bool marked = false;
  for (const auto& e : ev)
    if (e.value("eventid", "") == "hvtrace.process.exec" && e.contains("argv") && e["argv"].size() > 1 &&
        e["argv"][1] == std::string(1000, '0')) {
      big = &e;
      marked = e.value("argv_truncated", false);
      std::size_t kept = 0;
      for (const auto& a : e["argv"]) kept += a.get<std::string>().size();
      EXPECT_LE(kept, 64u * 1024u);
    }
  ASSERT_NE(big, nullptr) << "no exec of the 1 MiB argv";
  EXPECT_TRUE(marked) << big->dump().substr(0, 300);
  // The long argv of seq 5000 starts right.
  bool long_seen = false;
  for (const auto& e : of(ev, "hvtrace.process.exec"))
    if (e.contains("argv") && e["argv"].size() > 3 && e["argv"][0] == "/bin/echo" && e["argv"][1] == "1" && e["argv"][2] == "2") long_seen = true;
  EXPECT_TRUE(long_seen);
  // The storm's processes were seen.
  std::size_t trues = 0;
  for (const auto& e : of(ev, "hvtrace.process.exec"))
    if (e.value("filename", "") == "/bin/true") ++trues;
  EXPECT_GE(trues, 300u);
  const auto closed = of(ev, "cowrie.session.closed");
  ASSERT_EQ(closed.size(), 1u);
  // session.cast: asciicast v2, every line JSON: the header, then [time, code, data] events.
  const auto cast = json_lines(dir / "session.cast");
  ASSERT_FALSE(cast.empty());
  EXPECT_EQ(cast[0].value("version", 0), 2) << cast[0].dump();
  for (std::size_t i = 1; i < cast.size(); ++i) {
    ASSERT_TRUE(cast[i].is_array() && cast[i].size() == 3 && cast[i][0].is_number() && cast[i][1].is_string() && cast[i][2].is_string())
        << i << ": " << cast[i].dump().substr(0, 300);
  }
  const std::string transcript = slurp(dir / "transcript.txt");
  EXPECT_NE(transcript.find("marker-42"), std::string::npos) << tail(transcript);
  EXPECT_NE(transcript.find("1050049"), std::string::npos) << tail(transcript);
}

}  // namespace
}  // namespace hvtrace
