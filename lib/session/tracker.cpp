// The session model. Who belongs to a session: the connection process (a child a server forked,
// known from the fork family's return value in the server's calls) and every process whose parent
// chain leads to it through fork returns. What each call means is decided by its name (so the
// x86-64 and i386 numberings are handled alike) and by the fd table kept per process.
// The rules this file applies (docs/session-events.md has them for the reader of the output):
//  - terminal: the connection process's fd from open/openat("/dev/ptmx") is the pty master (in a
//    session picked up at start, the one its open-file table names: add_existing's fds); its
//    writes there are what the client typed, its reads what the terminal showed. Without a pty
//    (ssh host 'cmd'), pipes the connection process made after login carry the command's stdin
//    (writes) and output (reads).
//  - login: a password (on_credential) opens an attempt; a later password means the previous one
//    failed; the pty's allocation or an exec by a descendant means it succeeded; the connection's
//    end with neither means it failed.
//  - end: "logout" when the shell had exited before the client's socket reached EOF; "dropped"
//    when the socket reached EOF or failed first (the client went away); "closed" when the server
//    ended a connection that never had a shell (e.g. after failed logins); "killed" when the
//    server reaped the connection process with no exit_group seen (a signal); "watch_ended" for
//    sessions still open at finish().
#include "session/tracker.hpp"

#include "session/sockaddr.hpp"
#include "session/text.hpp"
#include "session/writer.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <random>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>

namespace hvtrace::session {
namespace {

using json = nlohmann::json;
using abi::CaptureKind;

enum class Sys : std::uint8_t {
  kOther, kRead, kPread, kWrite, kPwrite, kOpen, kOpenat, kCreat, kClose, kDup, kDup2, kDup3, kFcntl,
  kPipe, kPipe2, kSocket, kConnect, kBind, kAccept, kAccept4, kGetpeername, kGetsockname, kFork, kClone,
  kExecve, kExecveat, kExitGroup, kExit, kSetuid, kSetresuid, kSetreuid, kIoctl, kWait, kChdir,
  kWritev, kSendfile, kCopyRange,
};

// The calls the engine reads, by name (every other call is ignored: syscall_set() asks the
// monitor for these only). i386 names included (fcntl64, setuid32, waitpid).
struct Named {
  std::string_view name;
  Sys sys;
};
constexpr Named kNamed[] = {
    {"read", Sys::kRead}, {"pread64", Sys::kPread}, {"write", Sys::kWrite}, {"pwrite64", Sys::kPwrite},
    {"open", Sys::kOpen}, {"openat", Sys::kOpenat}, {"creat", Sys::kCreat}, {"close", Sys::kClose},
    {"dup", Sys::kDup}, {"dup2", Sys::kDup2}, {"dup3", Sys::kDup3}, {"fcntl", Sys::kFcntl},
    {"fcntl64", Sys::kFcntl}, {"pipe", Sys::kPipe}, {"pipe2", Sys::kPipe2}, {"socket", Sys::kSocket},
    {"connect", Sys::kConnect}, {"bind", Sys::kBind}, {"accept", Sys::kAccept}, {"accept4", Sys::kAccept4},
    {"getpeername", Sys::kGetpeername}, {"getsockname", Sys::kGetsockname}, {"fork", Sys::kFork},
    {"vfork", Sys::kFork}, {"clone", Sys::kClone}, {"clone3", Sys::kFork}, {"execve", Sys::kExecve},
    {"execveat", Sys::kExecveat}, {"exit_group", Sys::kExitGroup}, {"exit", Sys::kExit},
    {"setuid", Sys::kSetuid}, {"setuid32", Sys::kSetuid}, {"setresuid", Sys::kSetresuid},
    {"setresuid32", Sys::kSetresuid}, {"setreuid", Sys::kSetreuid}, {"setreuid32", Sys::kSetreuid},
    {"ioctl", Sys::kIoctl}, {"wait4", Sys::kWait}, {"waitpid", Sys::kWait}, {"chdir", Sys::kChdir},
    // Writes whose bytes the monitor gathers (writev) or cannot see (pwritev's iovecs are not
    // copied; sendfile, splice and copy_file_range move the bytes inside the kernel).
    {"writev", Sys::kWritev}, {"pwritev", Sys::kWritev}, {"pwritev2", Sys::kWritev},
    {"sendfile", Sys::kSendfile}, {"sendfile64", Sys::kSendfile}, {"splice", Sys::kCopyRange},
    {"copy_file_range", Sys::kCopyRange},
};

Sys classify(const syscalls::Call& c) {
  static const std::unordered_map<std::string_view, Sys> kNames = [] {
    std::unordered_map<std::string_view, Sys> m;
    for (const auto& n : kNamed) m.emplace(n.name, n.sys);
    return m;
  }();
  const auto* info = syscalls::Table::get(c.abi).by_nr(c.nr);
  if (info == nullptr) return Sys::kOther;
  const auto it = kNames.find(info->name);
  return it == kNames.end() ? Sys::kOther : it->second;
}

const events::Capture* find_cap(const std::vector<events::Capture>& caps, unsigned arg, CaptureKind kind) {
  return syscalls::find_capture(caps, arg, kind);
}

int arg_int(const syscalls::Call& c, int i) { return static_cast<std::int32_t>(c.args[i] & 0xffffffffu); }
std::int64_t ret_of(const syscalls::Call& c) { return c.ret.value_or(-1); }

// A user known only by uid (the guest's passwd is not read): uid 0 is root everywhere.
std::string user_of_uid(std::uint32_t uid) { return uid == 0 ? "root" : fmt::format("uid:{}", uid); }

std::string basename_of(std::string_view p) {
  const auto slash = p.rfind('/');
  return std::string(slash == std::string_view::npos ? p : p.substr(slash + 1));
}

bool is_downloader(std::string_view prog) { return prog == "wget" || prog == "curl"; }

// What a downloader fetched: the first http/https/ftp argument of its command line, else its
// first non-option argument (a bare host/path); "" when it has none (curl --version).
std::string download_url(const std::vector<std::string>& argv) {
  for (std::size_t i = 1; i < argv.size(); ++i) {
    std::string low = argv[i].substr(0, 8);
    std::transform(low.begin(), low.end(), low.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (low.starts_with("http://") || low.starts_with("https://") || low.starts_with("ftp://")) return argv[i];
  }
  for (std::size_t i = 1; i < argv.size(); ++i)
    if (!argv[i].empty() && argv[i][0] != '-') return argv[i];
  return {};
}

constexpr std::uint64_t kCloneThread = 0x10000;
constexpr int kAtFdcwd = -100;
constexpr std::uint64_t kOCloexec = 0x80000;   // O_CLOEXEC, SOCK_CLOEXEC
constexpr std::uint64_t kTiocswinsz = 0x5414;
constexpr std::size_t kMaxHeldLines = 256;   // transcript lines waiting for a line's Enter key

enum class FdKind : std::uint8_t { kFile, kPtmx, kPipeRead, kPipeWrite, kSocket };

struct WrittenFile {
  std::string path;
  std::uint64_t size = 0;        // bytes written (the calls' return values)
  std::uint64_t kept = 0;        // bytes under files/
  Sha256 sha;
  bool complete = true;          // the hash covers every byte written, in file order
  bool cut = false;              // the per-session cap stopped keeping its bytes
  std::uint64_t part = 0;
  std::uint32_t pid = 0;         // the first writer
  std::string prog;              // its argv[0] basename (or comm)
  std::vector<std::string> argv;
  std::uint64_t first_ns = 0;
  bool created = false;          // O_CREAT/O_TRUNC/creat: an empty file is a file written too
  std::uint64_t not_captured = 0;   // bytes written by calls whose data the monitor cannot see (sendfile)
  std::uint64_t pipe = 0;        // != 0: not a file but a downloader's stdout, this pipe
  std::uint32_t reader_pid = 0;  // the pipe's reader at the first write (it may be gone at the end)
  std::string reader_prog;
};

struct Fd {
  FdKind kind = FdKind::kFile;
  std::string path;
  bool writable = false;
  bool cloexec = false;
  bool client = false;           // the connection's socket (from the server's accept)
  bool channel = false;          // a pipe of a command run without a pty (made after a password)
  std::uint64_t pipe = 0;        // which pipe (both ends, in every process that holds them)
  std::shared_ptr<WrittenFile> wf;
};

struct Session;

struct Process {
  std::uint32_t pid = 0, ppid = 0;
  Session* s = nullptr;          // nullptr: a server
  std::string comm, prog, filename, cwd;
  std::vector<std::string> argv;
  std::map<int, Fd> fds;
  bool exec_seen = false;
  bool had_call = false;
  std::uint64_t start_ns = 0;
  std::optional<SockAddr> last_accept;   // servers: the peer of the last accepted connection
  int last_accept_fd = -1;
};

struct Attempt {
  std::string user, password;
  bool has_user = false, has_password = false;
  std::uint64_t ns = 0;
};

struct Command {
  std::string line;
  std::uint64_t ns = 0;
  std::uint32_t last_child = 0;     // the last process the shell forked for it (its status is the command's)
  std::optional<int> status;
  bool killed = false;
  std::uint64_t last_child_ns = 0;  // when the shell forked it
  // What last_child was before the forks since the last key written (they may turn out to be the
  // next command's: a pipeline's several forks seen before its Enter key's write returns).
  std::uint32_t prev_child = 0;
  std::optional<int> prev_status;
  bool prev_killed = false;
};

// The shell's latest fork in a pty session, and how it ended.
struct ShellFork {
  std::uint32_t pid = 0;
  std::uint64_t ns = 0;
  std::optional<int> status;
  bool gone = false;
};

struct Session {
  std::string sid;
  std::unique_ptr<SessionWriter> w;
  std::uint32_t conn = 0, server = 0;
  std::uint64_t start_ns = 0;
  bool picked_up = false;
  std::optional<SockAddr> peer, local;
  bool connect_emitted = false;
  // login
  std::optional<std::string> user;
  std::optional<Attempt> attempt;   // undecided
  bool logged_in = false, success_deferred = false;
  std::optional<std::uint32_t> uid;
  std::string username;
  // terminal
  bool pty = false;
  unsigned width = 80, height = 24;
  bool size_known = false;
  LineEditor editor;
  ScreenLines screen;
  Utf8Stream out_utf8, in_utf8;
  bool skip_echo_line = false;
  std::uint64_t terminal_bytes = 0;   // kept in cast/transcript
  bool terminal_cut = false;
  std::uint64_t not_captured = 0;     // bytes the monitor did not copy (snap length)
  std::uint64_t truncated = 0;        // bytes not kept because of a cap
  // processes
  std::uint32_t shell = 0;
  bool shell_exited = false;
  std::uint64_t socket_eof_ns = 0, shell_exit_ns = 0;
  std::set<std::uint32_t> live;
  std::uint64_t proc_events = 0;
  bool proc_events_cut = false, proc_limit_marked = false;
  std::uint64_t procs_not_kept = 0;
  std::optional<Command> cmd;
  std::string first_prompt;        // the prompt of the first line entered whose echo showed one ("?": none yet)
  std::uint64_t commands = 0;
  // A child the shell forked while the line it runs still waited for its echo (a completed line):
  // it belongs to that line's command, opened when the echo's newline arrives.
  std::uint32_t early_child = 0;
  std::optional<int> early_status;
  bool early_gone = false;
  // The monitor completes the Enter key's write when it returns: on one vCPU the shell may read the
  // key and fork the command before then, so the fork is seen first. key_entry_ns: the entry time
  // of the terminal write being replayed; a fork after it belongs to the line it completes.
  ShellFork last_fork;
  // The login shell is in a blocking wait (wait4/waitpid without WNOHANG) for a foreground job:
  // a line typed now goes to whatever program reads the terminal, not to this shell.
  bool fg_wait = false;
  std::uint64_t fg_wait_ns = 0;   // when that wait began (0: not known)
  // Lines typed while it waited, in order (bounded): the program read them, or it did not and the
  // shell reads them as commands once it prompts again (type-ahead), redrawing each after its prompt.
  std::deque<std::string> unread;
  std::map<std::uint32_t, int> signals;   // recent processes killed by a signal the wait status named (bounded)
  std::uint64_t key_entry_ns = 0;
  // An Enter key's write into the terminal seen at its entry and the line it ends not yet opened:
  // on one vCPU the shell reads the line and acts on it (bash writes ~/.bash_history at `exit`)
  // before that write returns and before the server reads the echo. The transcript lines of those
  // actions wait in `held` (bounded) until the server has read the terminal's next output (the line's
  // echo) or the session closes.
  bool enter_pending = false;
  std::vector<std::string> held;
  // files
  std::uint64_t file_bytes_kept = 0, part_seq = 0;
  std::uint64_t pipe_seq = 0;
  std::set<std::uint64_t> channel_pipes;   // pipes a child of the connection put on its stdin/out/err

  explicit Session(const TrackerConfig& cfg) : editor(cfg.max_line_bytes), screen(cfg.max_line_bytes) {}
};

json addr_json(const SockAddr& a, const char* ip_key, const char* port_key) {
  json j = {{"family", a.family}};
  if (a.family == "unix") {
    j["path"] = a.path;
  } else if (a.family == "ipv4" || a.family == "ipv6") {
    j[ip_key] = a.ip;
    j[port_key] = a.port;
  }
  return j;
}

std::string shorten(std::string_view s, std::size_t n) {
  if (s.size() <= n) return sanitize_utf8(s);
  return sanitize_utf8(s.substr(0, n)) + fmt::format("... [{} more bytes]", s.size() - n);
}

}  // namespace

struct Tracker::Impl {
  TrackerConfig cfg;
  std::uint64_t salt = 0;
  std::unordered_map<std::uint32_t, Process> procs;
  std::unordered_set<std::uint32_t> servers;
  std::map<std::string, std::unique_ptr<Session>> open;
  std::vector<std::string> ids;
  std::unordered_set<std::string> id_set;
  Stats stats;
  std::uint64_t write_errors_closed = 0;
  // Children announced at the fork breakpoint whose parent's fork return is still to come, with
  // what arrived for them meanwhile (in order). Bounded: a fork storm or lost returns evict the oldest.
  struct EarlyCredential {
    Credential kind;
    std::string value;
    std::uint64_t ns;
  };
  struct Early {
    std::uint64_t seq = 0;
    std::vector<std::variant<CallEvent, EarlyCredential>> held;   // in the order they came
    std::size_t bytes = 0;                                         // of captured data held
  };
  std::map<std::uint32_t, Early> announced;
  std::uint64_t early_seq = 0;
  std::size_t early_bytes = 0;   // all children's (a child stopped between fork and return can write a lot)
  static constexpr std::size_t kMaxEarlyChildren = 256, kMaxEarlyCalls = 256, kMaxEarlyBytes = 16u << 20;
  static std::size_t held_size(const CallEvent& e) {
    std::size_t n = sizeof e;
    for (const auto* caps : {&e.call.entry_caps, &e.call.exit_caps})
      for (const auto& c : *caps) n += c.data.size();
    return n;
  }
  static std::size_t held_size(const EarlyCredential& c) { return sizeof c + c.value.size(); }

  explicit Impl(TrackerConfig c) : cfg(std::move(c)) {
    std::random_device rd;
    salt = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  }

  // ---- sessions ----

  std::string make_id(std::uint32_t pid, std::uint64_t ns) {
    std::uint64_t x = salt ^ (static_cast<std::uint64_t>(pid) << 40) ^ ns;
    for (;;) {
      // splitmix64
      x += 0x9e3779b97f4a7c15ULL;
      std::uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      z ^= z >> 31;
      std::string id = fmt::format("{:012x}", z & 0xffffffffffffULL);
      if (id_set.insert(id).second) return id;
    }
  }

  Session* open_session(std::uint32_t conn, std::uint32_t server, std::uint64_t ns, bool picked_up) {
    if (open.size() >= cfg.max_open_sessions) {
      ++stats.sessions_not_kept;
      return nullptr;
    }
    auto s = std::make_unique<Session>(cfg);
    s->sid = make_id(conn, ns);
    s->w = std::make_unique<SessionWriter>(cfg.dir, s->sid, cfg.sensor, cfg.realtime_offset_ns);
    if (cfg.on_event) s->w->set_on_event(cfg.on_event);
    s->conn = conn;
    s->server = server;
    s->start_ns = ns;
    s->picked_up = picked_up;
    ids.push_back(s->sid);
    ++stats.sessions;
    Session* p = s.get();
    open.emplace(s->sid, std::move(s));
    return p;
  }

  std::string client_text(const Session& s) const {
    if (!s.peer || s.peer->ip.empty()) return "?";
    return s.peer->family == "ipv6" ? fmt::format("[{}]:{}", s.peer->ip, s.peer->port)
                                    : fmt::format("{}:{}", s.peer->ip, s.peer->port);
  }

  void ensure_connect(Session& s) {
    if (s.connect_emitted) return;
    s.connect_emitted = true;
    const std::string ip = s.peer ? s.peer->ip : "";
    s.w->set_src_ip(ip);
    json f = {{"src_ip", ip}, {"protocol", "ssh"}, {"pid", s.conn}};
    if (s.peer) f["src_port"] = s.peer->port;
    if (s.local && !s.local->ip.empty()) f["dst_ip"] = s.local->ip;
    f["dst_port"] = s.local && s.local->port != 0 ? s.local->port : cfg.dst_port;
    if (s.picked_up) f["picked_up"] = true;
    f["message"] = fmt::format("New connection: {} [session: {}]", client_text(s), s.sid);
    s.w->event("cowrie.session.connect", s.start_ns, std::move(f));
    s.w->transcript(fmt::format("hvtrace session {} (sensor {})\nclient   {}{}\nstart    {}\n\n", s.sid, cfg.sensor,
                                client_text(s), s.picked_up ? " (picked up: already running when the watch began)" : "",
                                s.w->iso(s.start_ns)));
  }

  void emit(Session& s, std::string_view id, std::uint64_t ns, json f) {
    ensure_connect(s);
    s.w->event(id, ns, std::move(f));
  }

  // hvtrace.process.* / hvtrace.net.*: bounded per session.
  void emit_bounded(Session& s, std::string_view id, std::uint64_t ns, json f) {
    if (s.proc_events >= cfg.max_process_events) {
      if (!s.proc_events_cut) {
        s.proc_events_cut = true;
        emit(s, "hvtrace.limit", ns,
             {{"limit", "max_process_events"}, {"value", cfg.max_process_events},
              {"message", "further process and network events of this session are counted, not written"}});
      }
      return;
    }
    ++s.proc_events;
    emit(s, id, ns, std::move(f));
  }

  std::string user_text(const Session& s) const {
    if (!s.username.empty()) return s.username;
    if (s.user) return *s.user;
    return "?";
  }

  // ---- login ----

  void attempt_failed(Session& s, std::uint64_t ns) {
    if (!s.attempt) return;
    Attempt a = std::move(*s.attempt);
    s.attempt.reset();
    json f = {{"username", a.user}, {"password", a.password}};
    f["message"] = fmt::format("login attempt [{}/{}] failed", a.user, a.password);
    emit(s, "cowrie.login.failed", ns, std::move(f));
    s.w->transcript(fmt::format("[{}] login failed: user '{}' password '{}'\n", s.w->iso(a.ns), a.user, a.password));
  }

  void emit_success(Session& s, std::uint64_t ns) {
    s.success_deferred = false;
    json f;
    std::string user, pass;
    bool has_pass = false;
    if (s.attempt) {
      user = s.attempt->user;
      pass = s.attempt->password;
      has_pass = true;
      s.attempt.reset();
    } else if (s.user) {
      user = *s.user;
    } else if (s.uid) {
      user = user_of_uid(*s.uid);
    }
    s.username = user;
    f["username"] = user;
    if (has_pass) f["password"] = pass;
    if (s.uid) f["uid"] = *s.uid;
    f["message"] = has_pass ? fmt::format("login attempt [{}/{}] succeeded", user, pass)
                            : fmt::format("login [{}] succeeded", user);
    emit(s, "cowrie.login.success", ns, std::move(f));
    s.w->transcript(has_pass ? fmt::format("[{}] login: user '{}' password '{}'\n", s.w->iso(ns), user, pass)
                             : fmt::format("[{}] login: user '{}'\n", s.w->iso(ns), user));
  }

  void login_succeeded(Session& s, std::uint64_t ns) {
    if (s.logged_in) return;
    s.logged_in = true;
    if (s.attempt || s.user) emit_success(s, ns);
    else s.success_deferred = true;   // no credential seen: name the user by uid at the exec
  }

  // ---- terminal ----

  // Keep at most the rest of the session's terminal budget of `data`; the rest is counted.
  std::string_view budget(Session& s, std::string_view data, std::uint64_t ns) {
    const std::uint64_t room = cfg.max_output_bytes > s.terminal_bytes ? cfg.max_output_bytes - s.terminal_bytes : 0;
    if (data.size() <= room) {
      s.terminal_bytes += data.size();
      return data;
    }
    const std::uint64_t cut = data.size() - room;
    s.terminal_bytes += room;
    s.truncated += cut;
    stats.truncated_bytes += cut;
    std::string_view kept = data.substr(0, room);
    if (!s.terminal_cut) {
      s.terminal_cut = true;
      // The pending half of a character goes out first, then the mark, which `asciinema cat` shows.
      std::string tail = s.w->cast_started() ? s.out_utf8.feed(kept) + s.out_utf8.flush() : "";
      if (!tail.empty()) s.w->cast_event(ns, "o", tail);
      const std::string mark =
          fmt::format("\r\n[hvtrace: terminal cap of {} bytes reached; further input and output are counted, not kept]\r\n",
                      cfg.max_output_bytes);
      s.w->cast_event(ns, "o", mark);
      s.w->transcript(fmt::format("[hvtrace: terminal cap of {} bytes reached; output not kept from here]\n",
                                  cfg.max_output_bytes));
      emit(s, "hvtrace.limit", ns, {{"limit", "max_output_bytes"}, {"value", cfg.max_output_bytes}});
      return {};
    }
    return kept;
  }

  void start_cast(Session& s, std::uint64_t ns) {
    if (!s.w->cast_started()) s.w->cast_start(ns, s.width, s.height);
  }

  void terminal_output(Session& s, std::string_view data, std::uint64_t ns) {
    ensure_connect(s);
    // The echo first: a line that waited for it (tab completion, history) is entered at its
    // newline, before that newline's screen line is written.
    if (s.pty) s.editor.output(data, [&](LineEditor::Line l) { command_line(s, std::move(l), ns); });
    const std::string_view kept = budget(s, data, ns);
    if (kept.empty()) return;
    start_cast(s, ns);
    const std::string text = s.out_utf8.feed(kept);
    if (!text.empty()) s.w->cast_event(ns, "o", text);
    s.screen.feed(kept, [&](const std::string& line) {
      if (s.skip_echo_line) {
        s.skip_echo_line = false;
        return;
      }
      if (typed_ahead(s, line, ns)) return;   // a prompt and a line typed during the last job: a command
      s.w->transcript(transcript_line(line) + "\n");
    });
  }

  void terminal_input(Session& s, std::string_view data, std::uint64_t ns) {
    ensure_connect(s);
    // Line editing sees every typed byte (it is bounded by itself); the cast keeps what fits.
    if (s.pty) {
      const std::uint64_t dropped =
          s.editor.feed(data, [&](LineEditor::Line l) { command_line(s, std::move(l), ns); }, ns, s.key_entry_ns);
      s.truncated += dropped;
      stats.truncated_bytes += dropped;
    }
    const std::string_view kept = budget(s, data, ns);
    if (kept.empty()) return;
    start_cast(s, ns);
    const std::string text = s.in_utf8.feed(kept);
    if (!text.empty()) s.w->cast_event(ns, "i", text);
  }

  static std::string killed_text(const Session& s, std::uint32_t pid) {
    const auto it = s.signals.find(pid);
    return it == s.signals.end() ? "killed by a signal" : fmt::format("killed by {}", syscalls::signal_text(it->second));
  }

  void close_command(Session& s) {
    if (!s.cmd) return;
    const Command& c = *s.cmd;
    // Without a pty the last line of output needs no newline to be output (no prompt follows).
    if (!s.pty && !s.screen.partial().empty()) {
      s.screen.feed("\n", [&](const std::string& line) { s.w->transcript(transcript_line(line) + "\n"); });
    }
    std::string st;
    if (c.status) st = fmt::format("exit {}", *c.status);
    else if (c.killed) st = killed_text(s, c.last_child);
    else if (c.last_child != 0) st = "exit ? (still running)";
    else st = "no process (shell builtin)";
    // The prompt and the echo of the next line stay out of this command's output.
    s.w->transcript(fmt::format("[{}]\n", st));
    s.cmd.reset();
  }

  // `mark`: `$` for a command line, `>` for a line that continues it.
  void follow(const Session& s, const std::string& line, std::uint64_t ns, char mark = '$') {
    if (cfg.follow)
      cfg.follow(fmt::format("[{}] {}@{} {} {}", s.sid, user_text(s), client_text(s), mark, shorten(line, 1000)), ns);
  }

  void open_command(Session& s, const std::string& line, bool truncated, std::uint64_t ns) {
    close_command(s);
    ++stats.commands;
    ++s.commands;
    const std::string text = sanitize_utf8(line);
    json f = {{"input", text}, {"message", fmt::format("CMD: {}", shorten(line, 1000))}};
    if (truncated) f["truncated"] = true;
    emit(s, "cowrie.command.input", ns, std::move(f));
    s.w->transcript(fmt::format("\n[{}] {}@{} $ {}{}\n", s.w->iso(ns), user_text(s), client_text(s), text,
                                truncated ? fmt::format(" [hvtrace: line cut at {} bytes]", cfg.max_line_bytes) : ""));
    follow(s, text, ns);
    Command c;
    c.line = text.size() > 4096 ? text.substr(0, 4096) : text;
    c.ns = ns;
    s.cmd = std::move(c);
  }

  // Whether the row left of a line's first key looks like a shell's prompt: PS1 ends in `#`, `$`
  // or `%` (bash, dash, busybox sh, zsh), PS2 is `>`. While the login shell waits for a foreground
  // job, a line typed after such a prompt is a nested shell's command (bash, su, sh); after any
  // other row (empty: cat, or a program's own question: passwd) it is that program's input. With
  // no job running, a line typed after a question (not a prompt, in a session whose first prompt
  // was one) is the shell's `read` builtin's input.
  static bool shell_prompt(std::string_view prompt) {
    while (!prompt.empty() && prompt.back() == ' ') prompt.remove_suffix(1);
    return !prompt.empty() && std::string_view("#$%>").find(prompt.back()) != std::string_view::npos;
  }

  // A line the foreground program read (or will: a shell reads what its job left unread when it
  // prompts again). Not a command: its echo is already in the running command's output.
  void program_input(Session& s, const LineEditor::Line& l, std::uint64_t ns) {
    const std::string text = sanitize_utf8(l.text);
    if (s.unread.size() >= 16) s.unread.pop_front();
    s.unread.push_back(text);
    json f = {{"input", text}, {"message", fmt::format("input to the running program: {}", shorten(text, 1000))}};
    if (s.cmd && s.cmd->last_child != 0) f["pid"] = s.cmd->last_child;
    if (l.truncated) f["truncated"] = true;
    emit(s, "hvtrace.command.stdin", ns, std::move(f));
    ++stats.program_inputs;
    follow(s, l.text, ns, '<');
  }

  // A screen row, once the job has ended, that is a shell prompt followed by the oldest line typed
  // during the job: the program left that line unread and the shell took it (readline redraws it
  // after the prompt). It becomes the command it is; the row is its echo, not output.
  bool typed_ahead(Session& s, const std::string& row, std::uint64_t ns) {
    if (s.unread.empty() || s.fg_wait || !s.pty) return false;
    std::string want = s.unread.front();
    while (!want.empty() && want.back() == ' ') want.pop_back();
    if (want.empty() || row.size() <= want.size() || !row.ends_with(want)) return false;
    const std::string prompt = row.substr(0, row.size() - want.size());
    if (!shell_prompt(prompt)) return false;
    s.unread.pop_front();
    LineEditor::Line l;
    l.text = std::move(want);
    l.prompt = prompt;
    command_line(s, std::move(l), ns, true);
    s.skip_echo_line = false;   // this row was the echo
    return true;
  }

  // A line typed at the shell's secondary prompt ("> ": PS2 of bash, dash and busybox sh) while the
  // shell has started nothing since the command's first line: the shell reads it as the rest of
  // that command (a here-document's body and its end word, an open quote, a `for ... do` block),
  // so it is not a command of its own. Not when the session's first prompt was "> " itself.
  // (A fork after this line's Enter was already moved out of s.cmd as the early child.)
  static bool continuation(const Session& s, const LineEditor::Line& l) {
    return s.cmd && l.prompt == "> " && s.first_prompt != "> " && s.cmd->last_child == 0;
  }

  void continue_command(Session& s, const std::string& line, std::uint64_t ns) {
    const std::string text = sanitize_utf8(line);
    if (s.cmd->line.size() + 1 + text.size() <= 4096) s.cmd->line += "\n" + text;
    emit(s, "hvtrace.command.continuation", ns,
         {{"input", text}, {"message", fmt::format("CMD (continued): {}", shorten(line, 1000))}});
    s.w->transcript(fmt::format("[{}] {}@{} > {}\n", s.w->iso(ns), user_text(s), client_text(s), text));
    follow(s, line, ns, '>');
  }

  // A line is timed by its Enter key's write into the terminal as it began (the shell may act on
  // the line before that write returns; the echo's newline comes later still).
  static std::uint64_t line_time(const LineEditor::Line& l, std::uint64_t ns) {
    return l.at_entry != 0 ? l.at_entry : l.at != 0 ? l.at : ns;
  }

  // A line dropped with Ctrl-C. After a shell's prompt: not run, but typed, so kept
  // (hvtrace.command.abandoned, and in the transcript in place of its prompt row); the command
  // before it is over. Anywhere else (a running program's input, a row the echo did not show)
  // the ^C is the program's, and its echo its output.
  void abandoned_line(Session& s, const LineEditor::Line& l, std::uint64_t ns) {
    if (!shell_prompt(l.prompt)) return;
    close_command(s);
    s.skip_echo_line = true;   // the prompt row with the dropped text and ^C
    if (l.text.find_first_not_of(" \t") == std::string::npos) return;
    const std::string text = sanitize_utf8(l.text);
    emit(s, "hvtrace.command.abandoned", line_time(l, ns),
         {{"input", text}, {"message", fmt::format("typed, then dropped with Ctrl-C: {}", shorten(text, 1000))}});
    s.w->transcript(fmt::format("\n[{}] {}@{} $ {}  [dropped with Ctrl-C]\n", s.w->iso(line_time(l, ns)), user_text(s),
                                client_text(s), text));
  }

  // `redrawn`: a line typed during the last job, entered now (typed_ahead(); the rest of s.unread may follow).
  void command_line(Session& s, LineEditor::Line l, std::uint64_t ns, bool redrawn = false) {
    if (l.abandoned) {
      abandoned_line(s, l, ns);
      return;
    }
    // Typed into the foreground program (cat, passwd), or into the shell's own `read` builtin: a
    // row that is not a prompt where the shell's prompts have been.
    const bool question = !l.prompt.empty() && !shell_prompt(l.prompt) && shell_prompt(s.first_prompt);
    // The shell may read a line, fork its command and wait for it before the Enter key's write
    // returns: a wait that began after that write began is this line's own command's.
    const bool job_running = s.fg_wait && (l.at_entry == 0 || s.fg_wait_ns == 0 || s.fg_wait_ns < l.at_entry);
    if ((job_running && !shell_prompt(l.prompt)) || (!redrawn && s.cmd && question)) {
      program_input(s, l, line_time(l, ns));
      return;   // its echo is the program's output, as on the client's screen
    }
    // The line being typed is on the screen as prompt + echo: not part of any command's output.
    s.skip_echo_line = true;
    // The shell's latest fork came after this line's Enter reached the terminal but was seen before
    // the Enter's write returned: the previous command gets back what it had, this one the fork.
    if (l.at_entry != 0 && s.early_child == 0 && s.last_fork.pid != 0 && s.last_fork.ns >= l.at_entry &&
        (!s.cmd || s.cmd->last_child == s.last_fork.pid)) {
      if (s.cmd) {
        s.cmd->last_child = s.cmd->prev_child;
        s.cmd->status = s.cmd->prev_status;
        s.cmd->killed = s.cmd->prev_killed;
      }
      s.early_child = s.last_fork.pid;
      s.early_status = s.last_fork.status;
      s.early_gone = s.last_fork.gone;
    }
    const std::uint32_t early = std::exchange(s.early_child, 0);
    if (!redrawn) s.unread.clear();   // the shell reads its terminal again: nothing typed before is pending
    // The first prompt seen (a session picked up, or a line typed before any echo: known later).
    if (s.first_prompt.empty() || (s.first_prompt == "?" && !l.prompt.empty()))
      s.first_prompt = l.prompt.empty() ? std::string("?") : l.prompt;
    if (continuation(s, l)) {
      // A fork seen before this line's Enter returned (the shell runs the completed command at
      // once: the heredoc's end word) is the command's.
      continue_command(s, l.text, line_time(l, ns));
    } else {
      if (l.text.find_first_not_of(" \t") == std::string::npos) return;
      open_command(s, l.text, l.truncated, line_time(l, ns));
    }
    if (early != 0) {
      s.cmd->last_child = early;
      s.cmd->status = s.early_status;
      s.cmd->killed = s.early_gone && !s.early_status;
    }
  }

  // ---- processes ----

  Process* proc(std::uint32_t pid) {
    const auto it = procs.find(pid);
    return it == procs.end() ? nullptr : &it->second;
  }

  // The process reading a pipe a downloader wrote into: a holder of its read end, the one with it
  // as stdin first (the `sh` of `wget -O - URL | sh`), the shell that made the pipe last.
  const Process* pipe_reader(const Session& s, std::uint64_t pipe, std::uint32_t writer) const {
    const Process* best = nullptr;
    int best_score = 0;
    for (const auto pid : s.live) {
      if (pid == writer) continue;
      const auto it = procs.find(pid);
      if (it == procs.end()) continue;
      for (const auto& [n, fd] : it->second.fds) {
        if (fd.kind != FdKind::kPipeRead || fd.pipe != pipe) continue;
        const int score = (n == 0 ? 2 : 1) + (pid == s.shell ? 0 : 2);
        if (score > best_score) {
          best_score = score;
          best = &it->second;
        }
      }
    }
    return best;
  }

  // Who reads a downloader's pipe, looked up at its first write and again at its end (the reader
  // may have exited first, or exec'd in between).
  void note_reader(const Session& s, WrittenFile& f) const {
    if (const Process* r = pipe_reader(s, f.pipe, f.pid)) {
      f.reader_pid = r->pid;
      f.reader_prog = r->prog.empty() ? r->comm : r->prog;
    } else if (const auto it = procs.find(f.reader_pid); it != procs.end() && !it->second.prog.empty()) {
      f.reader_prog = it->second.prog;
    }
  }

  void finalize_file(Session& s, WrittenFile& f, std::uint64_t ns) {
    const std::string sha = f.sha.hex();
    // Bytes the monitor never saw (sendfile, copy_file_range, pwritev): no hash is the file's.
    const bool seen = f.not_captured == 0;
    std::filesystem::path out;
    if (f.kept > 0) out = s.w->finish_part(f.part, sha, f.cut || !seen);
    if (f.size == 0 && !f.created) return;
    json j = {{"size", f.size}, {"pid", f.pid}, {"complete", f.complete}};
    if (seen) {
      j["shasum"] = sha;
    } else {
      j["content_captured"] = false;
      j["bytes_not_captured"] = f.not_captured;
    }
    if (!out.empty()) j["outfile"] = out.string();
    j["kept"] = f.cut || !seen ? (f.kept > 0 ? "partial" : "no") : "yes";
    if (f.cut || !seen) j["kept_bytes"] = f.kept;
    const std::string hash_text = seen ? fmt::format("sha256 {}", sha)
                                       : fmt::format("content not captured: {} bytes copied inside the kernel", f.not_captured);
    const bool upload = f.prog == "sftp-server" || f.prog == "scp";
    const bool download = is_downloader(f.prog);
    std::string what = f.path;
    if (upload) {
      j["filename"] = basename_of(f.path);
      j["destfile"] = f.path;
      j["message"] = fmt::format("Saved upload {} ({} bytes, {})", f.path, f.size, hash_text);
      emit(s, "cowrie.session.file_upload", ns, std::move(j));
    } else if (download) {
      const std::string url = sanitize_utf8(download_url(f.argv));
      j["url"] = url;
      if (f.pipe != 0) {   // `wget -O - URL | sh`: never a file
        j["destfile"] = "-";
        j["pipe"] = true;
        what = fmt::format("{} to a pipe", url);
        note_reader(s, f);
        if (f.reader_pid != 0) {
          j["reader_pid"] = f.reader_pid;
          j["reader"] = sanitize_utf8(f.reader_prog);
          what += fmt::format(" read by {} (pid {})", j["reader"].get<std::string>(), f.reader_pid);
        }
      } else {
        j["destfile"] = f.path;
      }
      j["message"] = fmt::format("Downloaded URL ({}) with {} to {}", url, hash_text, f.pipe != 0 ? "a pipe" : f.path);
      emit(s, "cowrie.session.file_download", ns, std::move(j));
    } else {
      j["path"] = f.path;
      j["program"] = sanitize_utf8(f.prog);
      emit(s, "hvtrace.file.write", ns, std::move(j));
    }
    held_transcript(s, fmt::format("[{}] {} {} ({} bytes, {})\n", s.w->iso(ns),
                                   upload ? "uploaded" : download ? "downloaded" : "wrote", what, f.size, hash_text));
  }

  // A transcript line of what the session's processes did: it waits while an Enter key is on its way.
  void held_transcript(Session& s, std::string line) {
    if (s.enter_pending && s.held.size() < kMaxHeldLines) {
      s.held.push_back(std::move(line));
      return;
    }
    release_held(s);
    s.w->transcript(line);
  }

  void release_held(Session& s) {
    s.enter_pending = false;
    for (auto& l : s.held) s.w->transcript(l);
    s.held.clear();
  }

  // The entry of a call, before it completes: the connection process writing a key that ends a
  // line (CR or LF) into the terminal.
  void entry(std::uint32_t pid, const syscalls::Call& call, std::uint64_t ns) {
    Process* pp = proc(pid);
    if (pp == nullptr || pp->s == nullptr || !pp->s->pty) return;
    const Sys sys = classify(call);
    constexpr std::uint64_t kWnohang = 1;
    if (pid == pp->s->shell && sys == Sys::kWait && (call.args[2] & kWnohang) == 0) {
      pp->s->fg_wait = true;
      pp->s->fg_wait_ns = ns;
    }
    if (pid != pp->s->conn) return;
    if (sys != Sys::kWrite && sys != Sys::kWritev) return;
    const auto it = pp->fds.find(arg_int(call, 0));
    if (it == pp->fds.end() || it->second.kind != FdKind::kPtmx) return;
    const auto* cap = find_cap(call.entry_caps, 1, CaptureKind::kBuffer);
    if (cap == nullptr || (cap->flags & abi::kCaptureFault) != 0 || cap->data.find_first_of("\r\n") == std::string::npos) return;
    pp->s->enter_pending = true;
  }

  void release(Process& p, Fd& fd, std::uint64_t ns) {
    if (fd.wf && fd.wf.use_count() == 1 && p.s != nullptr) finalize_file(*p.s, *fd.wf, ns);
    fd.wf.reset();
  }

  void close_fd(Process& p, int n, std::uint64_t ns) {
    const auto it = p.fds.find(n);
    if (it == p.fds.end()) return;
    release(p, it->second, ns);
    p.fds.erase(it);
  }

  void set_fd(Process& p, int n, Fd fd, std::uint64_t ns) {
    if (n < 0) return;
    close_fd(p, n, ns);
    if (p.fds.size() >= cfg.max_fds) return;
    p.fds.emplace(n, std::move(fd));
  }

  json proc_json(const Process& p) const {
    json j = {{"pid", p.pid}, {"ppid", p.ppid}, {"comm", sanitize_utf8(p.comm)}};
    if (!p.argv.empty()) {
      json a = json::array();
      for (const auto& s : p.argv) a.push_back(sanitize_utf8(s));
      j["argv"] = std::move(a);
    }
    return j;
  }

  // A process is gone: exit_group (status), or reaped with no exit seen (killed by a signal:
  // `signo` when the wait status was copied, else 0).
  void process_gone(std::uint32_t pid, std::optional<int> status, std::uint64_t ns, int signo = 0) {
    Process* p = proc(pid);
    if (p == nullptr) return;
    Session* s = p->s;
    if (s == nullptr) {   // a server
      for (auto& [n, fd] : p->fds) release(*p, fd, ns);
      servers.erase(pid);
      procs.erase(pid);
      return;
    }
    for (auto& [n, fd] : p->fds) release(*p, fd, ns);
    p->fds.clear();
    json f = {{"pid", pid}};
    if (status) {
      f["status"] = *status;
    } else {
      f["signaled"] = true;
      if (signo > 0) {
        f["signal"] = syscalls::signal_text(signo);
        if (s->signals.size() >= 64) s->signals.erase(s->signals.begin());
        s->signals[pid] = signo;
      }
    }
    emit_bounded(*s, "hvtrace.process.exit", ns, std::move(f));
    if (s->cmd && s->cmd->last_child == pid) {
      s->cmd->status = status;
      s->cmd->killed = !status;
    }
    if (pid == s->early_child) {
      s->early_status = status;
      s->early_gone = true;
    }
    if (pid == s->last_fork.pid) {
      s->last_fork.status = status;
      s->last_fork.gone = true;
    }
    if (pid == s->shell) {
      s->shell_exited = true;
      s->shell_exit_ns = ns;
      if (!s->pty && s->cmd && !s->cmd->status) {
        s->cmd->status = status;
        s->cmd->killed = !status;
      }
    }
    s->live.erase(pid);
    procs.erase(pid);
    if (pid == s->conn) {
      std::string why;
      if (!status) why = "killed";
      else if (s->shell != 0 && s->shell_exited && (s->socket_eof_ns == 0 || s->shell_exit_ns <= s->socket_eof_ns)) why = "logout";
      else if (s->socket_eof_ns != 0) why = "dropped";
      else why = "closed";
      close_session(*s, ns, why);
    }
  }

  void close_session(Session& s, std::uint64_t ns, const std::string& why) {
    ensure_connect(s);
    release_held(s);
    attempt_failed(s, ns);
    if (s.success_deferred) emit_success(s, ns);
    // Whatever is still half-written goes out: a partial UTF-8 sequence, the unfinished line.
    if (s.w->cast_started()) {
      if (auto t = s.out_utf8.flush(); !t.empty()) s.w->cast_event(ns, "o", t);
      if (auto t = s.in_utf8.flush(); !t.empty()) s.w->cast_event(ns, "i", t);
    }
    s.editor.flush([&](LineEditor::Line l) { command_line(s, std::move(l), ns); });
    if (!s.editor.current().empty()) {
      emit(s, "hvtrace.command.unfinished", ns,
           {{"input", sanitize_utf8(s.editor.current())}, {"message", "typed but never entered"}});
    }
    close_command(s);
    // Processes still running: their files are closed in the record, the list says who they were.
    json running = json::array();
    std::vector<std::uint32_t> pids(s.live.begin(), s.live.end());
    for (const auto pid : pids) {
      Process* p = proc(pid);
      if (p == nullptr) continue;
      for (auto& [n, fd] : p->fds) release(*p, fd, ns);
      p->fds.clear();
      if (pid != s.conn) running.push_back(proc_json(*p));
      procs.erase(pid);
    }
    if (!running.empty() || s.procs_not_kept > 0) {
      json f = {{"processes", running}, {"count", running.size()}};
      if (s.procs_not_kept > 0) f["not_kept"] = s.procs_not_kept;
      emit(s, "hvtrace.session.still_running", ns, std::move(f));
    }
    const double duration = ns > s.start_ns ? static_cast<double>(ns - s.start_ns) / 1e9 : 0.0;
    json f = {{"duration", std::round(duration * 1e6) / 1e6}, {"ended", why}, {"commands", s.commands}};
    if (s.truncated > 0) f["truncated_bytes"] = s.truncated;
    if (s.not_captured > 0) f["bytes_not_captured"] = s.not_captured;
    f["message"] = fmt::format("Connection lost after {:.1f} seconds ({})", duration, why);
    s.w->event("cowrie.session.closed", ns, std::move(f));
    s.w->transcript(fmt::format("\n[{}] session closed ({}) after {:.1f} s{}\n", s.w->iso(ns), why, duration,
                                running.empty() ? "" : fmt::format(", {} process{} still running", running.size(), running.size() == 1 ? "" : "es")));
    for (const auto& r : running)
      s.w->transcript(fmt::format("  still running: pid {} {}\n", r.value("pid", 0u), r.value("comm", "")));
    write_errors_closed += s.w->errors();
    const std::string sid = s.sid;
    const std::filesystem::path dir = s.w->dir();
    open.erase(sid);   // s is gone from here on (its files are closed)
    if (cfg.on_closed) cfg.on_closed(sid, dir);
  }

  // A new process of session s: a copy of its parent at fork (`from`), or a process picked up
  // from the guest's process list (from == nullptr: only its name is known).
  Process& add_process(Session& s, std::uint32_t pid, std::uint32_t ppid, const Process* from, const std::string& comm,
                       std::uint64_t ns) {
    Process c;
    c.pid = pid;
    c.ppid = ppid;
    c.s = &s;
    c.start_ns = ns;
    if (from != nullptr) {
      c.comm = from->comm;
      c.prog = from->prog;
      c.filename = from->filename;
      c.argv = from->argv;
      c.cwd = from->cwd;
      c.fds = from->fds;   // inherited: the same open files (a written file's record is shared)
    } else {
      c.comm = comm;
      c.prog = comm;
    }
    s.live.insert(pid);
    return procs.emplace(pid, std::move(c)).first->second;
  }

  // max_processes: a fork storm is counted, not kept.
  bool room_for_process(Session& s, std::uint64_t ns) {
    if (s.live.size() < cfg.max_processes) return true;
    ++s.procs_not_kept;
    ++stats.processes_not_kept;
    if (!s.proc_limit_marked) {
      s.proc_limit_marked = true;
      emit(s, "hvtrace.limit", ns,
           {{"limit", "max_processes"}, {"value", cfg.max_processes},
            {"message", "more processes at once than tracked: the others are counted, their calls ignored"}});
    }
    return false;
  }

  void add_child(Process& parent, std::uint32_t child, std::uint64_t ns) {
    if (child == 0 || proc(child) != nullptr) return;
    Session* s = parent.s;
    if (s == nullptr) {   // a server forked: a new connection, with the listening and the accepted socket
      s = open_session(child, parent.pid, ns, false);
      if (s == nullptr) return;
      Process& c = add_process(*s, child, parent.pid, &parent, "", ns);
      if (parent.last_accept) s->peer = parent.last_accept;
      if (auto it = c.fds.find(parent.last_accept_fd); it != c.fds.end()) it->second.client = true;
      parent.last_accept.reset();
      return;
    }
    if (!room_for_process(*s, ns)) return;
    add_process(*s, child, parent.pid, &parent, "", ns);
    if (parent.pid == s->shell && s->pty) s->last_fork = ShellFork{child, ns, std::nullopt, false};
    if (parent.pid == s->shell && s->pty && s->editor.waiting()) {
      s->early_child = child;
      s->early_status.reset();
      s->early_gone = false;
    } else if (s->cmd && parent.pid == s->shell && s->pty) {
      // The child this fork replaces is surely the command's if it has exited or a key was written
      // since it was forked; otherwise both may be forks of the next line (a pipeline seen before
      // its Enter key's write returns), and what the first of them replaced must be kept.
      if (s->cmd->last_child == 0 || proc(s->cmd->last_child) == nullptr || s->cmd->last_child_ns < s->key_entry_ns) {
        s->cmd->prev_child = s->cmd->last_child;
        s->cmd->prev_status = s->cmd->status;
        s->cmd->prev_killed = s->cmd->killed;
      }
      s->cmd->last_child = child;
      s->cmd->last_child_ns = ns;
      s->cmd->status.reset();
      s->cmd->killed = false;
    }
    emit_bounded(*s, "hvtrace.process.fork", ns, {{"pid", parent.pid}, {"child", child}});
  }

  std::string resolve(const Process& p, int dirfd, std::string_view path) const {
    std::string s(path);
    if (!s.empty() && s[0] == '/') return s;
    std::string base;
    if (dirfd == kAtFdcwd) base = p.cwd;
    else if (auto it = p.fds.find(dirfd); it != p.fds.end()) base = it->second.path;
    if (base.empty()) return s;
    while (s.starts_with("./")) s.erase(0, 2);
    return base.back() == '/' ? base + s : base + "/" + s;
  }

  void on_exec(Process& p, const syscalls::Call& c, bool at, std::uint64_t ns) {
    Session& s = *p.s;
    const auto* fcap = find_cap(c.entry_caps, at ? 1 : 0, CaptureKind::kString);
    const auto* acap = find_cap(c.entry_caps, at ? 2 : 1, CaptureKind::kArgv);
    p.filename = fcap != nullptr ? fcap->data : "";
    p.argv.clear();
    bool argv_cut = false;
    std::size_t total = 0;
    if (acap != nullptr) {
      for (auto& a : acap->argv()) {
        if (total + a.size() > cfg.max_line_bytes) {
          argv_cut = true;
          break;
        }
        total += a.size();
        p.argv.push_back(std::move(a));
      }
      if (acap->truncated() || acap->true_len > p.argv.size()) argv_cut = true;
    }
    p.prog = basename_of(!p.argv.empty() && !p.argv[0].empty() ? std::string_view(p.argv[0]) : std::string_view(p.filename));
    if (!p.prog.empty() && p.prog[0] == '-') p.prog.erase(0, 1);   // a login shell's "-sh"
    p.comm = basename_of(p.filename).substr(0, 15);
    p.exec_seen = true;
    // close-on-exec fds are gone now
    for (auto it = p.fds.begin(); it != p.fds.end();) {
      if (it->second.cloexec) {
        release(p, it->second, ns);
        it = p.fds.erase(it);
      } else {
        ++it;
      }
    }
    if (p.pid != s.conn) login_succeeded(s, ns);
    if (s.success_deferred) emit_success(s, ns);
    json f = proc_json(p);
    f["filename"] = sanitize_utf8(p.filename);
    if (argv_cut) f["argv_truncated"] = true;
    if (!p.cwd.empty()) f["cwd"] = sanitize_utf8(p.cwd);
    emit_bounded(s, "hvtrace.process.exec", ns, std::move(f));
    // The session's shell: the first program a child of the connection process runs.
    if (s.shell == 0 && p.ppid == s.conn && p.pid != s.conn) {
      s.shell = p.pid;
      if (p.argv.size() >= 3 && p.argv[1] == "-c") {   // ssh host 'cmd' (or ssh -t host 'cmd')
        open_command(s, p.argv[2], argv_cut, ns);
        s.cmd->last_child = p.pid;
      }
    }
  }

  // ---- calls ----

  void forked(std::uint32_t child, std::uint32_t parent) {
    if (proc(parent) == nullptr || proc(child) != nullptr || child == 0) return;
    if (announced.size() >= kMaxEarlyChildren) {   // the oldest announcement whose return never came
      auto oldest = std::min_element(announced.begin(), announced.end(), [](const auto& a, const auto& b) { return a.second.seq < b.second.seq; });
      stats.early_calls_dropped += oldest->second.held.size();
      early_bytes -= oldest->second.bytes;
      announced.erase(oldest);
    }
    announced[child] = Early{++early_seq, {}};
  }

  // A call of a process not (yet) known: held when its fork was announced, else ignored.
  template <typename T>
  void hold(std::uint32_t pid, T&& item) {
    const auto it = announced.find(pid);
    if (it == announced.end()) return;
    const std::size_t size = held_size(item);
    if (it->second.held.size() >= kMaxEarlyCalls || early_bytes + size > kMaxEarlyBytes) {
      ++stats.early_calls_dropped;
      return;
    }
    it->second.bytes += size;
    early_bytes += size;
    it->second.held.emplace_back(std::forward<T>(item));
  }

  // The parent's fork returned: what the child did meanwhile is applied now that it is known.
  void release_early(std::uint32_t child) {
    const auto it = announced.find(child);
    if (it == announced.end()) return;
    auto held = std::move(it->second.held);
    early_bytes -= it->second.bytes;
    announced.erase(it);
    if (proc(child) == nullptr) {   // not kept (process cap)
      stats.early_calls_dropped += held.size();
      return;
    }
    for (auto& h : held) {
      if (auto* c = std::get_if<CallEvent>(&h)) handle(*c);
      else if (auto* cr = std::get_if<EarlyCredential>(&h)) credential(child, cr->kind, std::move(cr->value), cr->ns);
    }
  }

  void handle(const CallEvent& e) {
    Process* pp = proc(e.pid);
    if (pp == nullptr) {
      hold(e.pid, e);
      return;
    }
    // A "child" that turns out to be a thread of this process (clone3 without visible flags).
    if (e.tid != e.pid) {
      if (Process* t = proc(e.tid); t != nullptr && t->ppid == e.pid && !t->had_call && !t->exec_seen) {
        if (t->s != nullptr) t->s->live.erase(e.tid);
        procs.erase(e.tid);
        pp = proc(e.pid);
        if (pp == nullptr) return;
      }
    }
    pp->had_call = true;
    if (!e.comm.empty()) pp->comm = e.comm;
    const syscalls::Call& c = e.call;
    const Sys sys = classify(c);
    if (sys == Sys::kOther) return;
    const std::uint64_t ns = e.exit_ns != 0 ? e.exit_ns : e.entry_ns;
    const std::int64_t ret = ret_of(c);
    const bool is_server = pp->s == nullptr;

    switch (sys) {
      case Sys::kFork:
      case Sys::kClone:
        if (sys == Sys::kClone && (c.args[0] & kCloneThread) != 0) return;
        if (ret > 0 && ret <= 0x7fffffff) {
          add_child(*pp, static_cast<std::uint32_t>(ret), ns);
          release_early(static_cast<std::uint32_t>(ret));
        }
        return;
      case Sys::kExitGroup:
        process_gone(e.pid, static_cast<int>(c.args[0] & 0xff), ns);
        return;
      case Sys::kExit:
        if (e.tid == e.pid) process_gone(e.pid, static_cast<int>(c.args[0] & 0xff), ns);
        return;
      case Sys::kWait:
        if (pp->s != nullptr && e.pid == pp->s->shell) pp->s->fg_wait = false;   // the job ended or stopped (or a signal came)
        if (ret > 0 && ret <= 0x7fffffff) {
          const auto child = static_cast<std::uint32_t>(ret);
          const auto r = syscalls::reaped_child(c.exit_caps, c.args[2]);   // a stopped child is alive
          Process* ch = proc(child);
          if (ch == nullptr || ch->ppid != e.pid || !r.dead) return;
          // Reaped with no exit_group seen: killed (the status names the signal) or an exit missed.
          if (r.status && r.status->kind == syscalls::WaitStatus::Kind::kExited) process_gone(child, r.status->value, ns);
          else process_gone(child, std::nullopt, ns, r.status ? r.status->value : 0);
        }
        return;
      case Sys::kAccept:
      case Sys::kAccept4: {
        const auto* cap = find_cap(c.exit_caps, 1, CaptureKind::kBuffer);
        std::optional<SockAddr> a;
        if (cap != nullptr && (cap->flags & abi::kCaptureFault) == 0) a = decode_sockaddr(cap->data);
        if (ret >= 0) {
          Fd fd;
          fd.kind = FdKind::kSocket;
          fd.cloexec = sys == Sys::kAccept4 && (c.args[3] & kOCloexec) != 0;
          set_fd(*pp, static_cast<int>(ret), fd, ns);
        }
        if (is_server) {
          if (ret >= 0) {
            pp->last_accept = a;
            pp->last_accept_fd = static_cast<int>(ret);
          }
          return;
        }
        json f = {{"pid", e.pid}, {"fd", arg_int(c, 0)}, {"result", ret}};
        if (a) f.update(addr_json(*a, "src_ip", "src_port"));
        emit_bounded(*pp->s, "hvtrace.net.accept", ns, std::move(f));
        return;
      }
      case Sys::kClose:
        if (ret == 0 || !c.ret) close_fd(*pp, arg_int(c, 0), ns);
        return;
      case Sys::kSocket:
        if (ret >= 0) {
          Fd fd;
          fd.kind = FdKind::kSocket;
          fd.cloexec = (c.args[1] & kOCloexec) != 0;
          set_fd(*pp, static_cast<int>(ret), fd, ns);
        }
        return;
      case Sys::kDup:
      case Sys::kDup2:
      case Sys::kDup3:
      case Sys::kFcntl: {
        if (ret < 0) return;
        if (sys == Sys::kFcntl) {
          const auto cmd = c.args[1];
          if (cmd == 2) {   // F_SETFD
            if (auto it = pp->fds.find(arg_int(c, 0)); it != pp->fds.end()) it->second.cloexec = (c.args[2] & 1) != 0;
            return;
          }
          if (cmd != 0 && cmd != 1030) return;   // F_DUPFD, F_DUPFD_CLOEXEC
        }
        const int old = arg_int(c, 0);
        if (static_cast<int>(ret) == old) return;
        const auto it = pp->fds.find(old);
        if (it == pp->fds.end()) {
          close_fd(*pp, static_cast<int>(ret), ns);
          return;
        }
        Fd copy = it->second;
        // A child of the connection putting a pipe on its stdin/stdout/stderr: the command's channel.
        if (copy.pipe != 0 && ret <= 2 && pp->s != nullptr && pp->ppid == pp->s->conn) pp->s->channel_pipes.insert(copy.pipe);
        copy.cloexec = (sys == Sys::kDup3 && (c.args[2] & kOCloexec) != 0) || (sys == Sys::kFcntl && c.args[1] == 1030);
        copy.client = false;
        set_fd(*pp, static_cast<int>(ret), std::move(copy), ns);
        return;
      }
      default: break;
    }
    if (is_server) return;
    Session& s = *pp->s;
    const bool conn = e.pid == s.conn;

    switch (sys) {
      case Sys::kOpen:
      case Sys::kOpenat:
      case Sys::kCreat: {
        if (ret < 0) return;
        const unsigned parg = sys == Sys::kOpenat ? 1 : 0;
        const auto* cap = find_cap(c.entry_caps, parg, CaptureKind::kString);
        const std::string raw = cap != nullptr ? cap->data : "";
        const std::uint64_t flags = sys == Sys::kCreat ? 0x241 : c.args[sys == Sys::kOpenat ? 2 : 1];
        Fd fd;
        fd.path = resolve(*pp, sys == Sys::kOpenat ? arg_int(c, 0) : kAtFdcwd, raw);
        fd.cloexec = (flags & kOCloexec) != 0;
        if (raw == "/dev/ptmx" || raw == "/dev/pts/ptmx") {
          fd.kind = FdKind::kPtmx;
          if (conn && !s.pty) {
            s.pty = true;
            login_succeeded(s, ns);
          }
        } else {
          fd.kind = FdKind::kFile;
          fd.writable = (flags & 3) != 0;
          const bool special = fd.path.starts_with("/dev/") || fd.path.starts_with("/proc/") || fd.path.starts_with("/sys/");
          if (fd.writable && !special && cap != nullptr) {
            auto wf = std::make_shared<WrittenFile>();
            wf->path = sanitize_utf8(fd.path);
            wf->created = (flags & 0x240) != 0;   // O_CREAT | O_TRUNC
            wf->pid = e.pid;
            wf->prog = pp->prog.empty() ? pp->comm : pp->prog;
            wf->argv = pp->argv;
            wf->first_ns = ns;
            wf->part = s.part_seq++;
            fd.wf = std::move(wf);
          }
        }
        set_fd(*pp, static_cast<int>(ret), std::move(fd), ns);
        return;
      }
      case Sys::kPipe:
      case Sys::kPipe2: {
        if (ret != 0) return;
        const auto* cap = find_cap(c.exit_caps, 0, CaptureKind::kBuffer);
        if (cap == nullptr || cap->data.size() < 8 || (cap->flags & abi::kCaptureFault) != 0) return;
        std::int32_t fds[2];
        std::memcpy(fds, cap->data.data(), 8);
        const bool cloexec = sys == Sys::kPipe2 && (c.args[1] & kOCloexec) != 0;
        const bool channel = conn && (s.logged_in || s.attempt);
        const std::uint64_t id = ++s.pipe_seq;
        Fd r{FdKind::kPipeRead, {}, false, cloexec, false, channel, id, nullptr};
        Fd w{FdKind::kPipeWrite, {}, true, cloexec, false, channel, id, nullptr};
        set_fd(*pp, fds[0], std::move(r), ns);
        set_fd(*pp, fds[1], std::move(w), ns);
        return;
      }
      case Sys::kRead:
      case Sys::kPread: {
        const int fdn = arg_int(c, 0);
        const auto it = pp->fds.find(fdn);
        if (!conn) return;
        if (it != pp->fds.end() && it->second.kind == FdKind::kSocket) {
          if ((ret == 0 || (ret < 0 && ret != -11 && ret != -4 && ret != -512)) && s.socket_eof_ns == 0 &&
              (it->second.client || !std::any_of(pp->fds.begin(), pp->fds.end(), [](const auto& kv) { return kv.second.client; })))
            s.socket_eof_ns = ns;
          return;
        }
        if (ret <= 0) return;
        bool terminal = false;
        if (it != pp->fds.end()) {
          terminal = it->second.kind == FdKind::kPtmx || (it->second.kind == FdKind::kPipeRead && !s.pty &&
                                                                 (it->second.channel || s.channel_pipes.count(it->second.pipe) != 0));
        } else {
          // fds not known (the pipe capture missing): a command without pty reads its output here.
          // Not in a picked-up session: all its connection process's fds are unknown, the client's
          // socket (ciphertext) among them.
          terminal = !s.pty && s.shell != 0 && !s.picked_up;
        }
        if (!terminal) return;
        const auto* cap = find_cap(c.exit_caps, 1, CaptureKind::kBuffer);
        const std::string_view data = cap != nullptr ? std::string_view(cap->data).substr(0, static_cast<std::size_t>(ret))
                                                     : std::string_view();
        if (static_cast<std::uint64_t>(ret) > data.size()) {
          s.not_captured += static_cast<std::uint64_t>(ret) - data.size();
          stats.truncated_bytes += static_cast<std::uint64_t>(ret) - data.size();
        }
        terminal_output(s, data, ns);
        // The echo that opened the line (what the shell printed before acting on it, such as
        // bash's "logout", comes with it), or of a line that opened no command.
        release_held(s);
        return;
      }
      case Sys::kSendfile:
      case Sys::kCopyRange: {
        // The bytes go from one fd to another inside the kernel: counted, never seen.
        if (ret <= 0) return;
        const auto it = pp->fds.find(arg_int(c, sys == Sys::kSendfile ? 0 : 2));
        if (it == pp->fds.end() || !it->second.wf) return;
        WrittenFile& f = *it->second.wf;
        f.size += static_cast<std::uint64_t>(ret);
        f.not_captured += static_cast<std::uint64_t>(ret);
        f.complete = false;
        return;
      }
      case Sys::kWrite:
      case Sys::kWritev:
      case Sys::kPwrite: {
        const int fdn = arg_int(c, 0);
        const auto it = pp->fds.find(fdn);
        if (it == pp->fds.end()) return;
        Fd& fd = it->second;
        // writev's iovecs arrive gathered into one buffer capture (pwritev's are not copied).
        const auto* cap = find_cap(c.entry_caps, 1, CaptureKind::kBuffer);
        const bool keys = conn && (fd.kind == FdKind::kPtmx || (fd.kind == FdKind::kPipeWrite && !s.pty &&
                                                                (fd.channel || s.channel_pipes.count(fd.pipe) != 0)));
        // The client's keys whose write never returned to us (its exit not delivered): what was
        // captured at entry counts as written. A terminal takes a few keys whole; a lost Enter key
        // would lose the command line.
        const std::int64_t n = !c.ret && keys && cap != nullptr && (cap->flags & abi::kCaptureFault) == 0 &&
                                       cap->data.size() == c.args[2]
                                   ? static_cast<std::int64_t>(cap->data.size())
                                   : ret;
        if (n <= 0) return;
        const std::string_view data = cap != nullptr ? std::string_view(cap->data).substr(0, static_cast<std::size_t>(n))
                                                     : std::string_view();
        const std::uint64_t missing = static_cast<std::uint64_t>(n) - data.size();
        if (keys) {
          if (missing > 0) {
            s.not_captured += missing;
            stats.truncated_bytes += missing;
          }
          s.key_entry_ns = e.entry_ns;
          terminal_input(s, data, ns);
          return;
        }
        // A downloader writing its stdout into a pipe (`wget -O - URL | sh`): a download too.
        if (!fd.wf && fdn == 1 && fd.kind == FdKind::kPipeWrite && is_downloader(pp->prog) && !conn) {
          if (std::string url = download_url(pp->argv); !url.empty()) {
            auto wf = std::make_shared<WrittenFile>();
            wf->pipe = fd.pipe;
            wf->pid = e.pid;
            wf->prog = pp->prog;
            wf->argv = pp->argv;
            wf->first_ns = ns;
            wf->part = s.part_seq++;
            note_reader(s, *wf);
            fd.wf = std::move(wf);
          }
        }
        if (fd.wf) {
          WrittenFile& f = *fd.wf;
          if (sys == Sys::kPwrite && c.args[3] != f.size) f.complete = false;   // not sequential: the hash is of the write order
          if (cap == nullptr) f.not_captured += static_cast<std::uint64_t>(ret);
          if (missing > 0) f.complete = false;
          f.size += static_cast<std::uint64_t>(ret);
          f.sha.update(data);
          const std::uint64_t room = cfg.max_file_bytes > s.file_bytes_kept ? cfg.max_file_bytes - s.file_bytes_kept : 0;
          const std::string_view keep = data.substr(0, static_cast<std::size_t>(std::min<std::uint64_t>(room, data.size())));
          if (!keep.empty()) {
            s.w->append_part(f.part, keep);
            f.kept += keep.size();
            s.file_bytes_kept += keep.size();
          }
          if (keep.size() < data.size()) {
            f.cut = true;
            s.truncated += data.size() - keep.size();
            stats.truncated_bytes += data.size() - keep.size();
          }
        }
        return;
      }
      case Sys::kConnect:
      case Sys::kBind: {
        const auto* cap = find_cap(c.entry_caps, 1, CaptureKind::kBuffer);
        json f = {{"pid", e.pid}, {"fd", arg_int(c, 0)}, {"result", ret}};
        if (cap != nullptr)
          if (auto a = decode_sockaddr(cap->data))
            f.update(sys == Sys::kConnect ? addr_json(*a, "dst_ip", "dst_port") : addr_json(*a, "ip", "port"));
        emit_bounded(s, sys == Sys::kConnect ? "hvtrace.net.connect" : "hvtrace.net.bind", ns, std::move(f));
        return;
      }
      case Sys::kGetpeername:
      case Sys::kGetsockname: {
        if (ret != 0 || !conn) return;
        const auto* cap = find_cap(c.exit_caps, 1, CaptureKind::kBuffer);
        if (cap == nullptr || (cap->flags & abi::kCaptureFault) != 0) return;
        auto a = decode_sockaddr(cap->data);
        if (!a || (a->family != "ipv4" && a->family != "ipv6")) return;
        if (auto it = pp->fds.find(arg_int(c, 0)); it != pp->fds.end()) it->second.client = true;
        if (sys == Sys::kGetpeername && !s.peer) s.peer = a;
        if (sys == Sys::kGetsockname && !s.local) s.local = a;
        return;
      }
      case Sys::kIoctl: {
        if (c.args[1] != kTiocswinsz || ret != 0) return;
        const auto* cap = find_cap(c.entry_caps, 2, CaptureKind::kBuffer);
        if (cap == nullptr || cap->data.size() < 4 || (cap->flags & abi::kCaptureFault) != 0) return;
        const auto u8 = [&](std::size_t i) { return static_cast<unsigned>(static_cast<unsigned char>(cap->data[i])); };
        const unsigned rows = u8(0) | (u8(1) << 8), cols = u8(2) | (u8(3) << 8);
        if (rows == 0 || cols == 0 || (s.size_known && rows == s.height && cols == s.width)) return;
        s.width = cols;
        s.height = rows;
        s.size_known = true;
        s.editor.set_width(cols);
        emit(s, "cowrie.client.size", ns, {{"width", cols}, {"height", rows}, {"message", fmt::format("Terminal Size: {} {}", cols, rows)}});
        if (s.w->cast_started()) s.w->cast_event(ns, "r", fmt::format("{}x{}", cols, rows));
        return;
      }
      case Sys::kExecve:
      case Sys::kExecveat:
        if (c.ret && *c.ret != 0) return;
        on_exec(*pp, c, sys == Sys::kExecveat, ns);
        return;
      case Sys::kSetuid:
      case Sys::kSetresuid:
      case Sys::kSetreuid: {
        if (ret != 0) return;
        const std::uint64_t uid = sys == Sys::kSetreuid ? c.args[1] : c.args[0];
        if (uid <= 0xfffffffe && !s.uid) s.uid = static_cast<std::uint32_t>(uid);
        return;
      }
      case Sys::kChdir: {
        if (ret != 0) return;
        if (const auto* cap = find_cap(c.entry_caps, 0, CaptureKind::kString); cap != nullptr) {
          std::string cwd = resolve(*pp, kAtFdcwd, cap->data);
          if (cwd.size() <= 4096) pp->cwd = std::move(cwd);
        }
        return;
      }
      default: return;
    }
  }

  void credential(std::uint32_t pid, Credential kind, std::string value, std::uint64_t ns) {
    Process* p = proc(pid);
    if (p == nullptr) {   // a connection process whose server's fork has not returned yet
      hold(pid, EarlyCredential{kind, std::move(value), ns});
      return;
    }
    if (p->s == nullptr) return;
    Session& s = *p->s;
    if (value.size() > cfg.max_line_bytes) {
      stats.truncated_bytes += value.size() - cfg.max_line_bytes;
      value.resize(cfg.max_line_bytes);
    }
    value = sanitize_utf8(value);
    if (s.logged_in) {
      // The server looking up the logged-in user again (setting up the terminal, logging the
      // logout) says nothing new; another name or a password after login is kept.
      if (kind == Credential::kUser && value == user_text(s)) return;
      emit(s, "hvtrace.credential", ns,
           {{"kind", kind == Credential::kUser ? "user" : "password"}, {"value", value}, {"pid", pid}});
      return;
    }
    if (kind == Credential::kUser) {
      s.user = value;
      return;
    }
    attempt_failed(s, ns);   // a new password: the one before did not let the client in
    Attempt a;
    a.user = s.user.value_or("");
    a.has_user = s.user.has_value();
    a.password = std::move(value);
    a.has_password = true;
    a.ns = ns;
    s.attempt = std::move(a);
    ++stats.login_attempts;
  }

  void existing(std::uint32_t pid, std::uint32_t ppid, const std::string& comm, std::uint64_t now,
                const std::vector<ExistingFd>& fds, std::optional<std::uint32_t> uid) {
    if (proc(pid) != nullptr) return;
    Process* parent = proc(ppid);
    if (parent == nullptr) return;
    Session* s = parent->s;
    if (s == nullptr) {   // a server's child: a connection already open (its address from its socket, if given)
      s = open_session(pid, ppid, now, true);
      if (s != nullptr) existing_fds(*s, add_process(*s, pid, ppid, nullptr, comm, now), fds);
      return;
    }
    if (!room_for_process(*s, now)) return;
    Process& p = add_process(*s, pid, ppid, nullptr, comm, now);
    p.exec_seen = true;
    existing_fds(*s, p, fds);
    if (ppid == s->conn && s->shell == 0) {   // already logged in: its shell runs
      s->shell = pid;
      s->logged_in = true;
      if (uid && !s->uid) {   // the user it runs as (its name in the guest's passwd is not read)
        s->uid = *uid;
        if (s->username.empty()) s->username = user_of_uid(*uid);
      }
    }
  }

  // A picked-up process's open files, as its open/accept/pipe calls would have made them.
  void existing_fds(Session& s, Process& p, const std::vector<ExistingFd>& fds) {
    const bool conn = p.pid == s.conn;
    for (const ExistingFd& e : fds) {
      if (e.fd < 0 || p.fds.size() >= cfg.max_fds) continue;
      Fd fd;
      switch (e.kind) {
        case ExistingFd::Kind::kPtyMaster:
          fd.kind = FdKind::kPtmx;
          if (conn) s.pty = true;
          break;
        case ExistingFd::Kind::kPipeRead:
        case ExistingFd::Kind::kPipeWrite:
          fd.kind = e.kind == ExistingFd::Kind::kPipeRead ? FdKind::kPipeRead : FdKind::kPipeWrite;
          fd.writable = e.kind == ExistingFd::Kind::kPipeWrite;
          fd.pipe = e.pipe;
          // A child of the connection with a pipe on its stdin/stdout/stderr: the command's channel.
          if (e.pipe != 0 && e.fd <= 2 && p.ppid == s.conn) s.channel_pipes.insert(e.pipe);
          break;
        case ExistingFd::Kind::kSocket:
          fd.kind = FdKind::kSocket;
          if (conn && e.peer && (e.peer->family == "ipv4" || e.peer->family == "ipv6")) {
            fd.client = true;
            if (!s.peer) s.peer = e.peer;
            if (!s.local && e.local) s.local = e.local;
          }
          break;
      }
      p.fds[e.fd] = std::move(fd);
    }
  }
};

Tracker::Tracker(TrackerConfig cfg) : impl_(std::make_unique<Impl>(std::move(cfg))) {}
Tracker::~Tracker() = default;

void Tracker::add_server(std::uint32_t pid) {
  if (impl_->proc(pid) != nullptr) return;
  Process p;
  p.pid = pid;
  impl_->procs.emplace(pid, std::move(p));
  impl_->servers.insert(pid);
}

void Tracker::add_existing(std::uint32_t pid, std::uint32_t ppid, const std::string& comm, std::uint64_t now_ns,
                           const std::vector<ExistingFd>& fds, std::optional<std::uint32_t> uid) {
  impl_->existing(pid, ppid, comm, now_ns, fds, uid);
}

void Tracker::on_call(const CallEvent& e) { impl_->handle(e); }
void Tracker::on_entry(std::uint32_t pid, const syscalls::Call& call, std::uint64_t entry_ns) { impl_->entry(pid, call, entry_ns); }

void Tracker::on_fork(std::uint32_t child, std::uint32_t parent) { impl_->forked(child, parent); }

void Tracker::on_credential(std::uint32_t pid, Credential kind, std::string value, std::uint64_t ns) {
  impl_->credential(pid, kind, std::move(value), ns);
}

void Tracker::finish(std::uint64_t now_ns) {
  for (const auto& [pid, e] : impl_->announced) impl_->stats.early_calls_dropped += e.held.size();   // returns never seen
  impl_->announced.clear();
  impl_->early_bytes = 0;
  while (!impl_->open.empty()) impl_->close_session(*impl_->open.begin()->second, now_ns, "watch_ended");
}

Tracker::Stats Tracker::stats() const {
  Stats s = impl_->stats;
  s.open = impl_->open.size();
  s.write_errors = impl_->write_errors_closed;
  for (const auto& [id, sess] : impl_->open) s.write_errors += sess->w->errors();
  return s;
}

std::vector<std::string> Tracker::session_ids() const { return impl_->ids; }

syscalls::TraceSet syscall_set() {
  syscalls::TraceSet set;
  constexpr abi::SyscallAbi kAbis[2] = {abi::SyscallAbi::kX86_64, abi::SyscallAbi::kI386};
  for (std::size_t a = 0; a < 2; ++a)
    for (const auto& n : kNamed)
      if (const auto nr = syscalls::Table::get(kAbis[a]).by_name(n.name)) set.nrs[a].set(*nr);
  return set;
}

std::vector<abi::ArgRule> arg_rules() {
  // O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_DIRECTORY | O_PATH (x86-64 and i386 alike).
  constexpr std::uint64_t kWritesOrNamesADir = 01 | 02 | 0100 | 01000 | 02000 | 0200000 | 010000000;
  struct Rule {
    std::string_view name;
    std::uint8_t arg;
    std::uint64_t mask;
  };
  constexpr Rule kRules[] = {{"read", 0, 0}, {"pread64", 0, 0}, {"open", 1, kWritesOrNamesADir}, {"openat", 2, kWritesOrNamesADir}};
  std::vector<abi::ArgRule> out;
  constexpr abi::SyscallAbi kAbis[2] = {abi::SyscallAbi::kX86_64, abi::SyscallAbi::kI386};
  for (std::uint8_t a = 0; a < 2; ++a)
    for (const auto& r : kRules)
      if (const auto nr = syscalls::Table::get(kAbis[a]).by_name(r.name))
        out.push_back(abi::ArgRule{static_cast<std::uint16_t>(*nr), a, r.arg, 0, r.mask});
  return out;
}

}  // namespace hvtrace::session
