// hvtrace session: the honeypot view. Finds the guest's SSH server (dropbear or sshd) in its
// process list, traces it process-bound with its children and their descendants (method 5: the
// monitor copies the data and delivers it asynchronously; only CR3 switches of traced processes,
// the fork breakpoint and the credential breakpoints pause the guest), and feeds every completed
// call to the session engine (lib/session), which writes one folder per SSH session.
//
// Credentials come from user-space breakpoints in the server's per-connection processes, placed
// with no symbols and no change to the guest: the load bases of libc.so.6 and libcrypt.so.1 are
// learnt from the process's own openat/mmap calls (trace::LibraryBases) or, for a process that
// loaded them before we watched, from their ELF headers found near where it makes system calls
// (linux_os::scan_loaded_objects; fork children inherit them, and get their breakpoints at the
// fork breakpoint, before they run: Tracer::set_fork_hook), the functions' addresses
// from the libraries' dynamic symbol tables in guest memory (linux_os::find_dynamic_symbols), and
// at a hit the C string at rdi is read while the vCPU waits: getpwnam's user name, crypt's
// passphrase (also crypt_r, crypt_rn, crypt_ra when exported).
#include "commands.hpp"
#include "guest_view.hpp"
#include "output.hpp"

#include "arch/paging.hpp"
#include "common/result.hpp"
#include "events/control_client.hpp"
#include "events/event_reader.hpp"
#include "linux/elf_symbols.hpp"
#include "linux/files.hpp"
#include "publish/publisher.hpp"
#include "session/latency.hpp"
#include "session/tracker.hpp"
#include "trace/library_bases.hpp"
#include "trace/tracer.hpp"
#include "vm/vm.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace hvtrace::tools {
namespace {

using namespace std::chrono_literals;

struct SessionOptions {
  std::string vm_name = "default";
  std::string dir = "sessions";
  bool follow = false;
  double duration = 0;
  std::string sensor;                          // default: the VM's name
  std::vector<std::string> servers = {"dropbear", "sshd"};
  // The monitor's largest: a file's bytes are hashed from the write captures, and sftp-server
  // writes 32 KiB blocks (a capture cut short makes the SHA-256 cover only what was seen).
  std::uint32_t snap_len = abi::kMaxSnapLen;
  // --publish: every event and the finished files into NATS JetStream (docs/publish.md).
  std::string publish, spool, stream = "HVTRACE";
  unsigned sessions = 0;                       // --sessions N: stop once N sessions have ended (0: no limit)
};

const char* kHelpFooter = R"(
What it writes (one folder per session, DIR/<12 hex digits>/; the engine documents the schema):
  transcript.txt   commands as finally entered, exit status, output
  session.cast     asciicast v2 (asciinema cat / asciinema play)
  events.jsonl     Cowrie-style JSON events (cowrie.session.connect, cowrie.login.success/.failed,
                   cowrie.command.input, cowrie.session.closed, ...) plus hvtrace.* events
  files/           bytes of files the session wrote, up to a cap

How it watches: the SSH server's listening process(es), found by name in the guest's process list
(--server, default dropbear and sshd), are traced process-bound with their children (-f semantics,
method 5: syscalls filtered and copied inside the hypervisor, delivered asynchronously; only the
calls the record is made from: file, pipe, socket and process calls, not stat, lseek or brk). Sessions
already running are picked up from the process list; their open files, read from guest memory,
give them their terminal and client address from then on.
Passwords and user names come from synchronous user-space breakpoints at crypt() (libcrypt.so.1)
and getpwnam() (libc.so.6) in the server's per-connection processes, found from the processes'
own library loading and the libraries' dynamic symbols in guest memory (no debug symbols, no
change to the guest). For a server process that loaded its libraries before hvtrace started (the
listener: dropbear forks per connection without re-executing), the libraries' ELF headers are
found in its memory around the address of its next system call, and its children inherit them.

At the end (Ctrl-C, --duration, or the server exits) every open session is closed and flushed, and
hvtrace prints where the session folders are and what watching cost: events delivered, synchronous
pauses, breakpoint hits, and events the monitor lost. Lost events are also reported as they
happen; a session record with lost events may have gaps. With --follow it also says how late the
lines came: median and max of the time from the guest's write of the Enter key into the terminal
(the monitor's timestamp; the command's exec comes after it) to the line printed.

Exit status: 0 when stopped by Ctrl-C/SIGTERM, --duration or the server's exit (the record is
complete up to then; unlike `trace -- CMD` there is no guest command whose status to pass on);
2 for errors the user must fix (no such VM, no monitor, no SSH server in the guest, unwritable
DIR); 1 when the VM stops while watching (everything captured is flushed first).

Examples:
  hvtrace vm up --name lab --monitor
  hvtrace session --vm lab -o /tmp/sessions --follow      # until Ctrl-C
  hvtrace session --vm lab --duration 600 --sensor honeypot-1
  hvtrace session --vm lab --publish nats://127.0.0.1:4222     # also into JetStream (hvtrace collect)
)";

std::uint64_t now_ns() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<std::uint64_t>(t.tv_sec) * 1'000'000'000ULL + static_cast<std::uint64_t>(t.tv_nsec);
}

// The library functions whose first argument is a credential.
struct CredentialFunction {
  const char* lib;
  const char* name;
  session::Credential kind;
};
constexpr CredentialFunction kCredentialFunctions[] = {
    {"libc.so.6", "getpwnam", session::Credential::kUser},
    {"libcrypt.so.1", "crypt", session::Credential::kPassword},
    {"libcrypt.so.1", "crypt_r", session::Credential::kPassword},
    {"libcrypt.so.1", "crypt_rn", session::Credential::kPassword},
    {"libcrypt.so.1", "crypt_ra", session::Credential::kPassword},
};

// User breakpoints at the credential functions of the SSH server's processes.
class CredentialBreakpoints {
 public:
  struct Stats {
    std::uint64_t set = 0, hits = 0, removed = 0, unresolved = 0, refused = 0, scanned_objects = 0;
  };

  CredentialBreakpoints(const mem::PhysMem& ram, arch::PagingMode paging, const linux_os::Linux& os,
                        trace::FilterSink& sink, session::Tracker& tracker, std::set<std::string> server_comms)
      : ram_(&ram), paging_(paging), os_(&os), sink_(&sink), tracker_(&tracker), servers_(std::move(server_comms)),
        bases_({"libc.so.6", "libcrypt.so.1"}) {}

  // A completed call of process `pid`: learn library bases, try to resolve what is pending.
  void on_call(std::uint32_t pid, const std::string& comm, const syscalls::Call& c) {
    if (trace::is_execve(c.abi, c.nr) || trace::is_exit_group(c.abi, c.nr)) dtbs_.erase(pid);
    // The loader closes a library's fd once every segment is mapped: only then are its headers
    // and dynamic section where they belong (the first mapping spans the file from offset 0).
    if (c.nr == 3 && c.abi == abi::SyscallAbi::kX86_64)
      for (auto it = pending_.lower_bound({pid, std::string()}); it != pending_.end() && it->first.first == pid; ++it)
        it->second.ready = true;
    std::set<std::uint32_t> forked;   // children of a server that inherited its libraries just now
    for (const auto& ch : bases_.on_call(pid, c)) {
      if (ch.kind == trace::LibraryBases::Change::Kind::kLoaded) {
        pending_[{ch.pid, ch.lib}] = pending_for(ch, ch.pid != pid);   // a fork child's: mapped long ago
        if (ch.pid != pid && servers_.count(comm) != 0) forked.insert(ch.pid);
      } else {
        pending_.erase({ch.pid, ch.lib});
        remove(ch.pid, ch.lib);
      }
    }
    // Without the fork breakpoint (on_fork), a connection process gets its breakpoints as its
    // parent's fork returns. That return is delivered asynchronously, so a child that looks the
    // user up (getpwnam) before the watcher has handled it is missed.
    for (const std::uint32_t child : forked)
      for (auto it = pending_.lower_bound({child, std::string()}); it != pending_.end() && it->first.first == child;)
        it = resolve(child, it->first.second, it->second) ? pending_.erase(it) : std::next(it);
    if (servers_.count(comm) == 0) return;   // only the server's own processes get breakpoints
    const auto* known = bases_.bases(pid);
    if ((known == nullptr || known->empty()) && scanned_.count(pid) == 0 && scan_wanted_.size() < 4096) scan_wanted_.insert(pid);
    if (listeners_.count(pid) != 0) return;   // bases kept for its children; it authenticates no one
    for (auto it = pending_.lower_bound({pid, std::string()}); it != pending_.end() && it->first.first == pid;) {
      if (it->second.ready && resolve(pid, it->first.second, it->second)) {
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
  }

  // A server's child at the fork breakpoint, before it runs (Tracer::set_fork_hook): it has its
  // parent's libraries at the same addresses, so its credential breakpoints go in now, while the
  // parent waits. Through the asynchronous clone return instead, a connection process could call
  // getpwnam before the watcher got there, and the session would have no user name.
  void on_fork(std::uint32_t child, std::uint32_t parent, std::uint64_t child_dtb, const std::string& comm) {
    if (servers_.count(comm) == 0) return;
    remember_dtb(child, child_dtb);
    for (const auto& ch : bases_.fork(parent, child)) {
      if (ch.kind != trace::LibraryBases::Change::Kind::kLoaded) continue;
      Pending p = pending_for(ch, true);   // mapped long ago, by the parent
      if (p.names.empty()) continue;
      if (!resolve(child, ch.lib, p, parent)) pending_[{child, ch.lib}] = std::move(p);   // again at its calls
    }
  }

  // A server process already running at start (its libraries were loaded before we watched).
  // A listener gets no breakpoints itself: its children inherit its library bases at fork.
  void add_running(std::uint32_t pid, bool listener) {
    scan_wanted_.insert(pid);
    if (listener) listeners_.insert(pid);
  }

  // A syscall entry: for a server process whose library bases are unknown, look for the libraries'
  // ELF headers around the address it made the call from (inside libc) — once per process.
  void on_entry(const events::Event& e) {
    const std::uint32_t pid = e.entry.who.tgid;
    if (pid == 0 || scan_wanted_.erase(pid) == 0) return;
    if (scanned_.size() > 4096) scanned_.clear();
    scanned_.insert(pid);
    const std::uint64_t d = abi::dtb_of_cr3(e.entry.cr3);
    if (debug_) fmt::print(stderr, "hvtrace: debug: pid {}: looking for its libraries around {:#x}\n", pid, e.entry.user_rip);
    arch::AddressSpace as(*ram_, Dtb{d}, paging_);
    std::uint64_t reads = 0, readable = 0;
    const linux_os::UserMemReader read = [&](std::uint64_t va, void* dst, std::size_t len) {
      ++reads;
      const bool ok = as.read(GVA{va}, std::span(static_cast<std::byte*>(dst), len)).ok();
      readable += ok;
      return ok;
    };
    const auto objs = linux_os::scan_loaded_objects(read, e.entry.user_rip, 64ULL << 20, 64);
    if (debug_) fmt::print(stderr, "hvtrace: debug: pid {}: {} reads, {} readable, {} objects\n", pid, reads, readable, objs.size());
    for (const auto& obj : objs) {
      ++stats_.scanned_objects;
      if (debug_) fmt::print(stderr, "hvtrace: debug: pid {}: object {} at {:#x} (scan from rip {:#x})\n", pid, obj.soname, obj.base, e.entry.user_rip);
      for (const auto& ch : bases_.set_loaded(pid, obj.soname, obj.base)) {
        Pending p = pending_for(ch, true);   // loaded long ago
        if (!p.names.empty()) pending_[{pid, ch.lib}] = std::move(p);
      }
    }
  }

  // A breakpoint event: ours (credential read and handed to the tracker) or not.
  bool on_breakpoint(const events::Event& e) {
    auto it = bps_.find(e.bp.id);
    if (it == bps_.end()) return false;
    ++stats_.hits;
    const Bp& b = it->second;
    std::string s = read_string(abi::dtb_of_cr3(e.bp.cr3), e.bp.regs[0], 1024);
    // crypt may call another exported crypt_* on the way: one attempt, one record.
    if (b.kind == last_kind_ && b.pid == last_pid_ && s == last_value_ && e.time_ns - last_ns_ < 20'000'000ULL) return true;
    last_kind_ = b.kind;
    last_pid_ = b.pid;
    last_value_ = s;
    last_ns_ = e.time_ns;
    tracker_->on_credential(b.pid, b.kind, std::move(s), e.time_ns);
    return true;
  }

  void remove_all() {
    for (const auto& [id, b] : bps_) {
      (void)sink_->remove_breakpoint(id);
      ++stats_.removed;
    }
    bps_.clear();
  }
  [[nodiscard]] const Stats& stats() const { return stats_; }
  [[nodiscard]] std::size_t in_force() const { return bps_.size(); }

 private:
  struct Pending {
    std::uint64_t base = 0;
    std::uint32_t attempts = 0;
    bool ready = false;               // the loader has closed the fd: mapping complete
    std::set<std::string> names;      // functions still to find
  };
  static Pending pending_for(const trace::LibraryBases::Change& loaded, bool ready) {
    Pending p;
    p.base = loaded.base;
    p.ready = ready;
    for (const auto& f : kCredentialFunctions)
      if (loaded.lib == f.lib) p.names.insert(f.name);
    return p;
  }
  struct Bp {
    std::uint32_t pid = 0;
    std::string lib, func;
    session::Credential kind = session::Credential::kUser;
  };
  static constexpr std::uint32_t kFirstId = 0x7365'0000;   // "se"
  static constexpr std::uint32_t kMaxAttempts = 4000;      // calls of the process to wait for readable tables
  static constexpr std::size_t kMaxOurs = 48;              // of the monitor's 64

  std::optional<std::uint64_t> dtb(std::uint32_t pid) {
    if (auto it = dtbs_.find(pid); it != dtbs_.end()) return it->second;
    auto p = os_->find_pid(Pid{static_cast<std::int32_t>(pid)});
    if (!p || !*p || !(*p)->dtb) return std::nullopt;
    return remember_dtb(pid, (*p)->dtb->value);
  }
  std::uint64_t remember_dtb(std::uint32_t pid, std::uint64_t dtb) {
    if (dtbs_.size() > 4096) dtbs_.clear();   // bounded: a fork storm
    return dtbs_[pid] = dtb;
  }

  // true when done with this library (every function placed, not exported, or given up). Each
  // function is looked up on its own: a page of one hash chain not yet present (a function the
  // program never imported) must not hold back the others.
  bool resolve(std::uint32_t pid, const std::string& lib, Pending& p, std::optional<std::uint32_t> parent = std::nullopt) {
    const auto d = dtb(pid);
    if (d && !p.names.empty()) {
      arch::AddressSpace as(*ram_, Dtb{*d}, paging_);
      const linux_os::UserMemReader read = [&as](std::uint64_t va, void* dst, std::size_t len) {
        return as.read(GVA{va}, std::span(static_cast<std::byte*>(dst), len)).ok();
      };
      for (auto n = p.names.begin(); n != p.names.end();) {
        const std::vector<std::string> one = {*n};
        auto r = linux_os::find_dynamic_symbols(read, p.base, one);
        // A fork child maps none of a read-only file's pages until it touches them (Linux copies
        // no such page-table entry at fork), so its library's symbol tables are often absent; the
        // listener it was forked from (or the parent, at a fork) loaded the library itself and
        // still maps them, at the same addresses.
        if (r.status == linux_os::ElfSymbolLookup::Status::kUnreadable)
          if (auto lr = lookup_elsewhere(lib, p.base, one, parent)) r = std::move(*lr);
        if (debug_)
          fmt::print(stderr, "hvtrace: debug: pid {}: {} in {} at {:#x}: status {} {} {}\n", pid, *n, lib, p.base, static_cast<int>(r.status),
                     r.found.empty() ? 0 : r.found.begin()->second, r.why);
        if (r.status == linux_os::ElfSymbolLookup::Status::kUnreadable) {
          ++n;   // not yet present: again at a later call
          continue;
        }
        if (r.status == linux_os::ElfSymbolLookup::Status::kOk && !r.found.empty())
          place(pid, lib, *n, r.found.begin()->second, *d);
        n = p.names.erase(n);   // placed, not exported, or not an object we can read
      }
    }
    if (p.names.empty()) return true;
    if (++p.attempts > kMaxAttempts) {
      stats_.unresolved += p.names.size();
      return true;
    }
    return false;
  }

  // The same library at the same base in a listener's (or `parent`'s) address space.
  std::optional<linux_os::ElfSymbolLookup> lookup_elsewhere(const std::string& lib, std::uint64_t base,
                                                             const std::vector<std::string>& names,
                                                             std::optional<std::uint32_t> parent) {
    std::vector<std::uint32_t> where(listeners_.begin(), listeners_.end());
    if (parent && listeners_.count(*parent) == 0) where.insert(where.begin(), *parent);
    for (const std::uint32_t l : where) {
      const auto* b = bases_.bases(l);
      if (b == nullptr) continue;
      auto it = b->find(lib);
      if (it == b->end() || it->second != base) continue;
      const auto d = dtb(l);
      if (!d) continue;
      arch::AddressSpace as(*ram_, Dtb{*d}, paging_);
      const linux_os::UserMemReader read = [&as](std::uint64_t va, void* dst, std::size_t len) {
        return as.read(GVA{va}, std::span(static_cast<std::byte*>(dst), len)).ok();
      };
      auto r = linux_os::find_dynamic_symbols(read, base, names);
      if (r.status != linux_os::ElfSymbolLookup::Status::kUnreadable) return r;
    }
    return std::nullopt;
  }

  void place(std::uint32_t pid, const std::string& lib, const std::string& func, std::uint64_t va, std::uint64_t dtb) {
    const auto* f = std::find_if(std::begin(kCredentialFunctions), std::end(kCredentialFunctions),
                                 [&](const CredentialFunction& cf) { return lib == cf.lib && func == cf.name; });
    if (f == std::end(kCredentialFunctions)) return;
    if (bps_.size() >= kMaxOurs) {
      ++stats_.refused;
      return;
    }
    events::BreakpointSpec b;
    b.id = next_id_++;
    if (next_id_ >= kFirstId + 0xffff) next_id_ = kFirstId;
    b.va = va;
    b.kind = abi::BreakpointKind::kUser;
    b.action = abi::Action::kSync;   // the string is read while the vCPU waits
    b.dtbs = {Dtb{dtb}};
    if (auto ok = sink_->add_breakpoint(b); !ok) {
      ++stats_.refused;
      fmt::print(stderr, "hvtrace: note: breakpoint at {} in pid {} refused: {}\n", func, pid, ok.error().message);
      return;
    }
    bps_[b.id] = Bp{pid, lib, func, f->kind};
    ++stats_.set;
  }

  void remove(std::uint32_t pid, const std::string& lib) {
    for (auto it = bps_.begin(); it != bps_.end();) {
      if (it->second.pid == pid && it->second.lib == lib) {
        (void)sink_->remove_breakpoint(it->first);
        ++stats_.removed;
        it = bps_.erase(it);
      } else {
        ++it;
      }
    }
  }

  // A C string in the process's memory: at most max bytes, up to the first unreadable page.
  std::string read_string(std::uint64_t dtb, std::uint64_t va, std::size_t max) const {
    arch::AddressSpace as(*ram_, Dtb{dtb}, paging_);
    std::string s;
    while (s.size() < max) {
      std::byte chunk[256];
      const std::size_t n = std::min<std::size_t>({sizeof chunk, 4096 - ((va + s.size()) & 4095), max - s.size()});
      if (!as.read(GVA{va + s.size()}, std::span(chunk, n)).ok()) break;
      const auto* c = reinterpret_cast<const char*>(chunk);
      const auto* nul = static_cast<const char*>(std::memchr(c, 0, n));
      s.append(c, nul ? static_cast<std::size_t>(nul - c) : n);
      if (nul) break;
    }
    return s;
  }

  const mem::PhysMem* ram_;
  arch::PagingMode paging_;
  const linux_os::Linux* os_;
  trace::FilterSink* sink_;
  session::Tracker* tracker_;
  std::set<std::string> servers_;
  trace::LibraryBases bases_;
  std::map<std::pair<std::uint32_t, std::string>, Pending> pending_;
  std::map<std::uint32_t, Bp> bps_;
  std::map<std::uint32_t, std::uint64_t> dtbs_;
  std::set<std::uint32_t> listeners_, scan_wanted_, scanned_;
  bool debug_ = std::getenv("HVTRACE_SESSION_DEBUG") != nullptr;   // how breakpoints are found, on stderr
  std::uint32_t next_id_ = kFirstId;
  Stats stats_;
  session::Credential last_kind_ = session::Credential::kUser;
  std::uint32_t last_pid_ = 0;
  std::string last_value_;
  std::uint64_t last_ns_ = 0;
};

// An adapter for the engine, which reads terminal input from write(): dropbear writes what the
// client typed to the pty master with writev, whose iovecs' data the monitor gathers into one
// buffer capture (monitor/syscall_captures.hpp, kIovecLen). Such a call is handed on as the
// write(fd, data, length) it amounts to.
syscalls::Call as_write(const syscalls::Call& c) {
  constexpr std::uint64_t kWritev = 20, kWrite = 1;
  if (c.abi != abi::SyscallAbi::kX86_64 || c.nr != kWritev) return c;
  syscalls::Call w = c;
  w.nr = kWrite;
  std::uint64_t len = 0;
  for (const auto& cp : c.entry_caps)
    if (cp.arg == 1 && cp.kind == abi::CaptureKind::kBuffer) len = cp.true_len;
  w.args[2] = len;
  return w;
}

// A picked-up process's open files, for the engine (issue 9): read from its fd table in guest
// memory (linux_os::open_files), as its open("/dev/ptmx"), accept and pipe calls before the watch
// would have told. A table that cannot be read costs the session its terminal and address, with a
// warning; the watch goes on.
std::vector<session::ExistingFd> existing_fds(const linux_os::Linux& os, const linux_os::Process& p) {
  using K = session::ExistingFd::Kind;
  std::vector<session::ExistingFd> out;
  auto table = linux_os::open_files(os, p);
  if (!table) {
    fmt::print(stderr, "hvtrace: warning: {} (pid {} {}: its terminal and client address stay unknown)\n",
               table.error().message, p.pid.value, p.comm);
    return out;
  }
  const auto end = [](const linux_os::SocketInfo& si, const std::optional<linux_os::SocketEnd>& e) {
    return e ? std::optional<session::SockAddr>(session::SockAddr{si.family == 10 ? "ipv6" : "ipv4", e->ip, e->port, {}})
             : std::nullopt;
  };
  for (const auto& f : table->files) {
    session::ExistingFd e;
    e.fd = f.fd;
    if (f.kind == linux_os::FileKind::kPtyMaster) {
      e.kind = K::kPtyMaster;
    } else if (f.kind == linux_os::FileKind::kPipe && f.readable != f.writable) {
      e.kind = f.readable ? K::kPipeRead : K::kPipeWrite;
      e.pipe = f.inode.value;   // both ends share the pipe's inode
    } else if (f.kind == linux_os::FileKind::kSocket) {
      e.kind = K::kSocket;
      if (f.socket) {
        e.local = end(*f.socket, f.socket->local);
        e.peer = end(*f.socket, f.socket->peer);
      }
    } else {
      continue;
    }
    out.push_back(std::move(e));
  }
  return out;
}

// What the monitor delivers: the calls the engine reads and those the library bases are learnt
// from (the credential breakpoints); the Tracer adds what following processes needs. Every other
// call (stat, lseek, getdents, mkdir, brk, ...: about a third of a compile's) is dropped inside
// the hypervisor instead of being copied, delivered and decoded for nothing.
syscalls::TraceSet session_syscalls() {
  syscalls::TraceSet set = session::syscall_set();
  set |= trace::LibraryBases::syscall_set();
  return set;
}

// The calls the programs of a session (not the server's processes) need not deliver: the engine's
// (session::arg_rules) and the library bases' mmap and munmap.
std::vector<abi::ArgRule> session_arg_rules() {
  std::vector<abi::ArgRule> rules = session::arg_rules();
  for (const std::string_view name : {"mmap", "munmap"})
    if (const auto nr = syscalls::Table::get(abi::SyscallAbi::kX86_64).by_name(name))
      rules.push_back(abi::ArgRule{static_cast<std::uint16_t>(*nr), 0, 0, 0, 0});
  return rules;
}

// The discarding line sink: the session engine, not the trace text, is the output.
void no_lines(const std::string&) {}

void run_session(const SessionOptions& o) {
  vm::install_termination_handlers();
  if (o.servers.empty()) throw UserError("--server: name at least one SSH server program");
  std::error_code ec;
  vm::fs::create_directories(o.dir, ec);
  if (ec) throw UserError(fmt::format("-o {}: {}", o.dir, ec.message()));
  // --publish: connect (and create the stream) before anything is watched: a bad URL is an error now.
  std::unique_ptr<publish::Publisher> pub;
  if (!o.publish.empty()) {
    publish::PublisherConfig pc;
    pc.urls = o.publish;
    pc.stream = o.stream;
    pc.vm = o.vm_name;
    pc.spool_dir = o.spool.empty() ? vm::fs::path(o.dir) / ".publish-spool" : vm::fs::path(o.spool);
    pub = std::make_unique<publish::Publisher>(pc);
    const auto ps = pub->stats();
    fmt::print(stderr, "hvtrace: publishing to NATS JetStream stream '{}' at {} (replicas {}; spool {}{})\n", o.stream, o.publish,
               ps.replicas, pc.spool_dir.string(),
               ps.spool_restored ? fmt::format(", {} message(s) from a previous run sent first", ps.spool_restored) : std::string());
  }
  MonitoredGuest m = attach_monitored(o.vm_name);
  const vm::VmRecord& rec = m.rec;
  vm::VmWatch& watch = m.watch;
  GuestView& g = m.g;
  auto& reader = m.reader;
  events::ControlClient& ctl = m.ctl;

  // The servers (listening processes: no server parent) and what already runs below them.
  const auto procs = value_or_throw(g.os->processes());
  const std::set<std::string> server_names(o.servers.begin(), o.servers.end());
  std::map<std::int32_t, const linux_os::Process*> by_pid;
  for (const auto& p : procs) by_pid[p.tgid.value] = &p;
  std::vector<const linux_os::Process*> listeners;
  for (const auto& p : procs) {
    if (!p.dtb || server_names.count(p.comm) == 0) continue;
    auto parent = by_pid.find(p.ppid.value);
    if (parent != by_pid.end() && server_names.count(parent->second->comm) != 0) continue;
    listeners.push_back(&p);
  }
  if (listeners.empty())
    throw UserError(fmt::format("no SSH server ({}) runs in VM '{}'; check with `hvtrace ps --vm {}`", fmt::join(o.servers, ", "),
                                rec.name, rec.name));

  session::TrackerConfig tc;
  tc.dir = o.dir;
  tc.sensor = o.sensor.empty() ? rec.name : o.sensor;
  tc.realtime_offset_ns = trace::realtime_offset();
  session::FollowLatency follow_latency;   // guest event (the Enter key's write) -> line written
  if (o.follow)
    tc.follow = [&follow_latency](const std::string& line, std::uint64_t event_ns) {
      fmt::print("{}\n", line);
      std::fflush(stdout);
      follow_latency.add(event_ns, now_ns());
    };
  if (pub) {
    tc.on_event = [p = pub.get()](const nlohmann::json& e) { p->event(e); };
    tc.on_closed = [p = pub.get()](const std::string& sid, const vm::fs::path& dir) {
      p->file(sid, "transcript.txt", dir / "transcript.txt");
      p->file(sid, "session.cast", dir / "session.cast");
      p->session_closed(sid);
    };
  }
  // --sessions N (the farm's per-VM watcher): count the sessions that ended; the loop stops at N.
  std::size_t ended = 0;
  if (o.sessions > 0)
    tc.on_closed = [&ended, chained = std::move(tc.on_closed)](const std::string& sid, const vm::fs::path& dir) {
      if (chained) chained(sid, dir);
      ++ended;
    };
  session::Tracker tracker(tc);

  trace::TraceConfig cfg;
  cfg.method = 5;
  cfg.follow = true;
  cfg.summary_only = true;   // no text: the call hook feeds the engine
  cfg.snap_len = o.snap_len;
  cfg.trace_set = session_syscalls();
  // Only the server's reads carry what the session needs (the terminal's output, a command's
  // output over its channel pipes): the monitor does not copy the bytes the session's programs
  // read (a compile's sources: ~11 MB of the jansson workload's 13 MB copied otherwise).
  cfg.read_data_comms = server_names;
  // ... nor, from the programs a session runs, the reads and read-only opens (the ~16,000 failing
  // header lookups of a tcc compile), nor the mmaps the credential breakpoints' library bases are
  // learnt from (only the server's processes get those breakpoints): the monitor drops them.
  cfg.arg_rules = session_arg_rules();
  trace::LiveGuest live(*g.os);
  trace::ControlSink sink(ctl);
  sink.watch_breakpoints(*reader);
  trace::Tracer tracer(live, sink, cfg, no_lines);
  tracer.set_realtime_offset(tc.realtime_offset_ns);
  CredentialBreakpoints creds(*g.ram, g.kernel->layout().paging, *g.os, sink, tracker, server_names);
  tracer.set_call_hook([&](const trace::CallRecord& r, const syscalls::Call& c) {
    session::CallEvent ev;
    ev.pid = r.pid;
    ev.tid = r.tid;
    ev.comm = r.comm;
    ev.call = as_write(c);
    ev.entry_ns = r.entry_ns;
    ev.exit_ns = r.exit_ns;
    tracker.on_call(ev);
    creds.on_call(r.pid, r.comm, c);
  });
  tracer.set_fork_hook([&](std::uint32_t child, std::uint32_t parent, std::uint64_t dtb, const std::string& comm) {
    creds.on_fork(child, parent, dtb, comm);
    tracker.on_fork(child, parent);
  });
  // Every entry of the session's processes: only the engine's check, no copy of the call (the
  // engine reads writev's gathered capture as it is).
  tracer.set_entry_hook([&](const trace::CallRecord& r, const syscalls::Call& c) { tracker.on_entry(r.pid, c, r.entry_ns); });

  const std::uint64_t start_ns = now_ns();
  std::size_t picked_up = 0;
  for (const auto* l : listeners) {
    value_or_throw(tracer.trace_pid(static_cast<std::uint32_t>(l->tgid.value)));
    tracker.add_server(static_cast<std::uint32_t>(l->tgid.value));
    creds.add_running(static_cast<std::uint32_t>(l->tgid.value), true);
    // Its descendants, parent first (breadth first).
    std::deque<std::int32_t> todo{l->tgid.value};
    std::set<std::int32_t> seen{l->tgid.value};
    while (!todo.empty()) {
      const std::int32_t parent = todo.front();
      todo.pop_front();
      for (const auto& p : procs) {
        if (p.ppid.value != parent || !p.dtb || !seen.insert(p.tgid.value).second) continue;
        tracker.add_existing(static_cast<std::uint32_t>(p.tgid.value), static_cast<std::uint32_t>(parent), p.comm, start_ns,
                             existing_fds(*g.os, p), p.uid);
        if (auto r = tracer.trace_pid(static_cast<std::uint32_t>(p.tgid.value)); r) ++picked_up;
        if (server_names.count(p.comm) != 0) creds.add_running(static_cast<std::uint32_t>(p.tgid.value), false);
        todo.push_back(p.tgid.value);
      }
    }
  }
  value_or_throw(tracer.apply());
  const auto before = value_or_throw(ctl.stats());
  std::vector<events::RingStats> rings_before;
  for (unsigned i = 0; i < reader->rings(); ++i) rings_before.push_back(reader->stats(i));
  std::vector<std::string> who;
  for (const auto* l : listeners) who.push_back(fmt::format("{} (pid {})", l->comm, l->tgid.value));
  fmt::print(stderr, "hvtrace: watching {} in VM '{}'{}; sessions go to {} (Ctrl-C to stop)\n", fmt::join(who, ", "), rec.name,
             picked_up ? fmt::format(", {} process(es) of sessions already running", picked_up) : std::string(), o.dir);

  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(o.duration);
  bool vm_alive = true;
  std::optional<Result<void>> failure;
  std::uint64_t lost_reported = 0;
  auto last_record = std::chrono::steady_clock::now();
  const auto handle = [&](const events::Event& e) {
    if (failure) return;
    if (e.type == abi::RecordType::kBreakpoint && creds.on_breakpoint(e)) return;
    if (e.type == abi::RecordType::kSyscallEntry) creds.on_entry(e);
    if (auto r = tracer.handle(e); !r) failure = r;
  };
  while (!vm::termination_requested() && (o.duration == 0 || std::chrono::steady_clock::now() < end)) {
    vm_alive = watch.alive();
    const std::size_t k = value_or_throw(reader->poll(handle));
    if (tracer.stats().lost > lost_reported) {
      fmt::print(stderr, "hvtrace: warning: the monitor lost {} event(s) (ring full); the session record may have gaps\n",
                 tracer.stats().lost - lost_reported);
      lost_reported = tracer.stats().lost;
    }
    if (failure || !vm_alive) break;
    if (o.sessions > 0 && ended >= o.sessions) break;
    if (tracer.done() && k == 0) {
      fmt::print(stderr, "hvtrace: the SSH server exited\n");
      break;
    }
    // Nothing to read. While records flow (one came in the last 50 ms), sleep 1 ms and ask the
    // monitor to wake us only for a synchronous record: woken at every record, this consumer cost
    // QEMU a futex wake from the vCPU thread at nearly each one (~15,000 per bench session against
    // ~2,500 unwatched), and a plain 1-ms sleep paused the guest up to 1 ms at each synchronous
    // event (~420 per session: 0.4 s). When the guest is quiet, block on the futex for any record.
    if (k > 0) last_record = std::chrono::steady_clock::now();
    else if (std::chrono::steady_clock::now() - last_record < 50ms) reader->wait(1ms, abi::WaitMode::kBlock, 0us, true);
    else reader->wait(20ms);
  }
  if (vm_alive && !failure) (void)reader->poll(handle);   // what is already in the rings
  (void)tracer.detach();
  creds.remove_all();
  (void)ctl.set_actions({});   // the guest runs on unpaused and unwatched
  const auto after = ctl.stats();
  tracker.finish(now_ns());
  (void)ctl.detach();

  // Where the sessions are, and what watching cost.
  events::RingStats sum;
  for (unsigned i = 0; i < reader->rings(); ++i) {
    const auto s = reader->stats(i);
    const auto& b = rings_before[i];
    for (std::size_t d = 0; d < std::size(s.drops); ++d) sum.drops[d] += s.drops[d] - b.drops[d];
    sum.sync_timeouts += s.sync_timeouts - b.sync_timeouts;
    sum.published += s.published - b.published;
    sum.bytes += s.bytes - b.bytes;
    sum.open_evicted += s.open_evicted - b.open_evicted;
    sum.entries_missed += s.entries_missed - b.entries_missed;
  }
  const auto st = tracker.stats();
  const auto& ts = tracer.stats();
  const auto& cs = creds.stats();
  // `hvtrace bench session` reads this line (parse_session_summary in cmd_bench.cpp): keep them together.
  std::string out = fmt::format("sessions: {} ({} commands, {} lines typed into programs, {} login attempts) in {}\n", st.sessions,
                                st.commands, st.program_inputs, st.login_attempts, vm::fs::absolute(o.dir).string());
  for (const auto& id : tracker.session_ids())
    out += fmt::format("  {}/  transcript.txt session.cast events.jsonl\n", (vm::fs::absolute(o.dir) / id).string());
  if (st.truncated_bytes) out += fmt::format("  {} bytes not kept (per-session caps)\n", st.truncated_bytes);
  if (st.early_calls_dropped)
    out += fmt::format("  {} calls of new processes not recorded (their parent's fork return never came, or over the bound)\n",
                       st.early_calls_dropped);
  const auto since = [](std::uint64_t now, std::uint64_t then) { return now >= then ? now - then : 0; };
  const std::uint64_t trapped = after ? since(after->user_syscalls, before.user_syscalls) + since(after->user_int80s, before.user_int80s) +
                                            since(after->user_sysenters, before.user_sysenters)
                                      : 0;
  out += fmt::format("watching cost: {} events delivered ({} syscall entries, {} exits, {} CR3 switches) of {} syscalls in the guest, "
                     "{:.2f} MiB through the rings; {} synchronous pauses; {} credential breakpoints set, {} hits\n",
                     ts.events, ts.entries, ts.exits, ts.cr3, trapped, static_cast<double>(sum.bytes) / (1 << 20), ts.sync_events,
                     cs.set, cs.hits);
  const std::uint64_t lost = std::max<std::uint64_t>(ts.lost, sum.drops[0] + sum.drops[1] + sum.drops[2] + sum.drops[3]);
  out += fmt::format("lost events: {} (ring full {}, too big {}, no consumer {}, bad tail {}); sync waits timed out: {}; "
                     "exits lost (open-call table full): {}; entries lost (door not yet learned): {}; execs lost (new mm unreadable): {}\n",
                     lost, sum.drops[0], sum.drops[1], sum.drops[2], sum.drops[3], sum.sync_timeouts, sum.open_evicted,
                     sum.entries_missed, ts.execs_unread);
  if (o.follow)
    out += fmt::format("--follow latency (the Enter key's write in the guest -> line printed): {}\n", follow_latency.summary());
  if (cs.unresolved || cs.refused)
    out += fmt::format("credential breakpoints: {} function(s) whose address could not be read in time, {} breakpoint(s) refused\n",
                       cs.unresolved, cs.refused);
  if (pub) {
    const auto ps = pub->close(std::chrono::seconds(10));   // bounded: what is left stays in the spool for the next run
    out += publish::summary(ps) + "\n";
    if (ps.spool_records)
      fmt::print(stderr, "hvtrace: warning: {} message(s) not acknowledged by NATS stay in the spool; the next `hvtrace session --publish` "
                 "with the same spool sends them first\n", ps.spool_records);
  }
  fmt::print("{}", out);
  std::fflush(stdout);
  if (failure && !*failure) throw UserError(failure->error().message);
  if (!vm_alive) {
    fmt::print(stderr, "hvtrace: error: {} while watching sessions (everything captured is in {})\n", watch.stopped_message(), o.dir);
    exit_code() = 1;
  }
}

}  // namespace

void add_session_command(CLI::App& app) {
  auto o = std::make_shared<SessionOptions>();
  auto* cmd = app.add_subcommand("session", "The honeypot view: every SSH session in the guest, reconstructed from outside");
  cmd->footer(kHelpFooter);
  cmd->add_option("--vm", o->vm_name, "VM to watch (started with `hvtrace vm up --monitor`)")->capture_default_str();
  cmd->add_option("-o,--output-dir", o->dir, "write one folder per session under DIR")->capture_default_str();
  cmd->add_flag("--follow", o->follow,
                "print each command line to stdout as it is entered: `[session] user@client $ line`; `>` marks a\n"
                "continuation line, `<` a line typed into a running program");
  cmd->add_option("--duration", o->duration, "stop after this many seconds (default: until Ctrl-C or the server exits)");
  cmd->add_option("--sensor", o->sensor, "the `sensor` field of the JSON events (default: the VM's name)");
  cmd->add_option("--server", o->servers, "SSH server program name to watch (repeatable)")->capture_default_str();
  cmd->add_option("-s,--snap-len", o->snap_len, "bytes the monitor copies per buffer (terminal and file writes)")
      ->capture_default_str()
      ->check(CLI::Range(4096u, abi::kMaxSnapLen));
  cmd->add_option("--publish", o->publish, "also send every event and the finished files to NATS JetStream: nats://HOST:PORT[,...]");
  cmd->add_option("--spool", o->spool, "--publish: where messages wait while NATS is unreachable (default DIR/.publish-spool)");
  cmd->add_option("--stream", o->stream, "--publish: the JetStream stream (created if absent)")->capture_default_str();
  cmd->add_option("--sessions", o->sessions, "stop (exit 0) once N sessions have ended (the farm runs one watcher per attacker)");
  cmd->callback([o] { run_session(*o); });
}

}  // namespace hvtrace::tools
