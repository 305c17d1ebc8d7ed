// The honeypot view's engine (`hvtrace session`): turns the completed system calls of an SSH
// server's processes and their descendants into sessions — connection, login attempts, terminal
// input and output, commands, files, network connections — and writes each session's record
// (transcript.txt, session.cast, events.jsonl, files/) through a SessionOutput.
//
// Pure library: no VM, no monitor. The live side (tools/cmd_session.cpp) feeds it the calls the
// Tracer completes (trace::Tracer's call hook), credentials read at user-space breakpoints
// (getpwnam's name, crypt's passphrase) and the processes already running at start.
// Every input comes from an attacker-controlled guest: every buffer is bounded by TrackerConfig.
#pragma once

#include "hvtrace/abi/control.h"
#include "session/sockaddr.hpp"
#include "syscalls/syscalls.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hvtrace::session {

// The system calls the engine reads (x86-64 and i386 numbers of their names): every other call
// of a watched process is ignored, so `hvtrace session` asks the monitor for these only (the
// Tracer adds what following processes needs; the live side adds what it reads besides).
[[nodiscard]] syscalls::TraceSet syscall_set();

// Of those, what the engine needs from the programs a session runs, as opposed to the SSH
// server's own processes (the monitor's read-data set, abi::ArgRule): no reads (the terminal is
// read by the server) and only the opens that can write a file or name a directory a later
// openat may start from (O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND, O_DIRECTORY, O_PATH). A
// compile's read-only opens and reads of its sources then never leave the hypervisor.
[[nodiscard]] std::vector<abi::ArgRule> arg_rules();

// One completed system call of a watched process. Times: host CLOCK_MONOTONIC, ns.
struct CallEvent {
  std::uint32_t pid = 0, tid = 0;   // guest tgid and tid
  std::string comm;
  syscalls::Call call;              // number, args, entry/exit captures, return value
  std::uint64_t entry_ns = 0, exit_ns = 0;
};

enum class Credential { kUser, kPassword };

// An fd of a process running before the watch began, from the guest's open-file table (the live
// side reads it with linux_os::open_files): what the calls that made it would have told.
struct ExistingFd {
  enum class Kind : std::uint8_t { kPtyMaster, kPipeRead, kPipeWrite, kSocket };
  int fd = -1;
  Kind kind = Kind::kSocket;
  std::uint64_t pipe = 0;                // pipes: one non-zero id for both ends, in every process
  std::optional<SockAddr> local{}, peer{};   // sockets: ipv4/ipv6 ends when connected
};

struct TrackerConfig {
  std::filesystem::path dir;                   // sessions go to dir/<12-hex session id>/
  std::string sensor = "hvtrace";              // Cowrie's `sensor` field
  std::int64_t realtime_offset_ns = 0;         // CLOCK_REALTIME - CLOCK_MONOTONIC (timestamps)
  std::uint64_t max_file_bytes = 16 << 20;     // bytes kept under files/ per session (SHA-256 covers what was seen)
  std::uint64_t max_output_bytes = 64 << 20;   // terminal bytes kept per session (cast + transcript)
  std::uint32_t max_line_bytes = 64 << 10;     // one command line as entered
  std::uint32_t max_processes = 4096;          // tracked per session (a fork storm is counted, not kept)
  std::uint16_t dst_port = 22;                 // the server's port as the client sees it
  // --follow: one line per command, as it happens, with the host CLOCK_MONOTONIC time of the
  // guest event that completed it (the terminal write carrying the Enter key).
  std::function<void(const std::string& line, std::uint64_t event_ns)> follow;
  // Every event, the same object as its events.jsonl line, as it is written (e.g. to publish it).
  std::function<void(const nlohmann::json&)> on_event;
  // A session ended: its directory now holds the finished transcript.txt and session.cast.
  std::function<void(const std::string& sid, const std::filesystem::path& dir)> on_closed;
  // Added by the engine (defaults suit a honeypot; every one bounds what a hostile guest can make
  // hvtrace hold or write):
  std::uint32_t max_open_sessions = 256;       // sessions tracked at once (a connection flood is counted, not kept)
  std::uint32_t max_fds = 4096;                // fds tracked per process
  std::uint64_t max_process_events = 100000;   // hvtrace.process.* / hvtrace.net.* events per session
};

class Tracker {
 public:
  explicit Tracker(TrackerConfig cfg);
  ~Tracker();
  Tracker(const Tracker&) = delete;
  Tracker& operator=(const Tracker&) = delete;

  // A listening SSH server process (dropbear, sshd): each child it forks is one connection.
  void add_server(std::uint32_t pid);
  // A process already running at start (from the guest's process list), parent first: a child
  // of a server opens a session (picked up), its descendants join that session. `fds` are its open
  // files: the connection process's pty master (its terminal from now on) and client socket (the
  // client's address); the pipes of a command run without a pty. Without them the terminal and the
  // address are unknown. `uid`: the process's real uid (task->real_cred); the session's shell's
  // names the session's user ("root" for 0, else "uid:N": the guest's passwd is not read).
  void add_existing(std::uint32_t pid, std::uint32_t ppid, const std::string& comm, std::uint64_t now_ns,
                    const std::vector<ExistingFd>& fds = {}, std::optional<std::uint32_t> uid = std::nullopt);
  void on_call(const CallEvent& e);
  // A call of process `pid` at its entry (no return value, no exit captures), seen before the calls of
  // other tasks that complete first: it tells that a key ending a line is on its way to the shell,
  // so what the shell does with the line is written under it in the transcript.
  void on_entry(std::uint32_t pid, const syscalls::Call& call, std::uint64_t entry_ns = 0);
  // A watched process forked `child`, seen at the fork itself (the fork breakpoint), before the
  // parent's fork call returns. The child's calls and credentials that arrive before that return
  // (the return is recorded when the parent next runs, and the child may run first: a background
  // job execs while the shell is still preempted; on another vCPU its events can be read first) are
  // held, bounded, and applied once the return has made the child known.
  void on_fork(std::uint32_t child, std::uint32_t parent);
  // A login credential read at a breakpoint in a server process (user name at getpwnam, password
  // at crypt); the outcome is decided by what the process does next.
  void on_credential(std::uint32_t pid, Credential kind, std::string value, std::uint64_t ns);
  // Close every open session (end of watch, SIGINT): processes still running are recorded.
  void finish(std::uint64_t now_ns);

  struct Stats {
    std::uint64_t sessions = 0, open = 0, commands = 0, login_attempts = 0;
    std::uint64_t program_inputs = 0;    // lines typed into a foreground program (hvtrace.command.stdin)
    std::uint64_t truncated_bytes = 0;   // input/output/file bytes not kept because of a cap
    // Added by the engine:
    std::uint64_t sessions_not_kept = 0;    // connections beyond max_open_sessions
    std::uint64_t processes_not_kept = 0;   // processes beyond max_processes (fork storms)
    std::uint64_t early_calls_dropped = 0;  // a child's calls before its parent's fork returned, beyond the bound
    std::uint64_t write_errors = 0;         // failed writes to DIR (disk full, permissions)
  };
  [[nodiscard]] Stats stats() const;
  // Session ids, in order of start (for the demo's summary and the tests).
  [[nodiscard]] std::vector<std::string> session_ids() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hvtrace::session
