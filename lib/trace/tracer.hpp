// The tracing engine behind `hvtrace trace`: turns the monitor's raw events into completed system
// calls of the processes being traced, strace's way — process-bound, following exec and (with -f)
// fork/clone, attributing every call to the task the guest itself says was running (the identity
// the monitor reads from the vCPU's current task), never to a CR3 value alone.
//
// How the in-hypervisor filter follows the traced processes (the paper's DTB set):
//  - a traced process's address space (DTB) is in the set; its syscalls pass, all others' are
//    dropped inside QEMU (methods 3-5) or here (method 2);
//  - exec: the kernel writes CR3 from the old address space to the new one while the exec'ing task
//    already owns the new mm. CR3 writes touching a traced DTB are delivered synchronously, so the
//    new DTB joins the set before the new program runs its first instruction;
//  - fork/clone: the exits of the clone family are synchronous (kSetSyncSyscalls): the child's DTB
//    joins the set before the parent runs on; with vfork the child shares the parent's DTB until
//    its exec, which the rule above follows;
//  - exit_group removes a process; its DTB leaves the set (a page-table root is reused later);
//  - --comm NAME: the processes of that name running at attach are in the set; one started later
//    is found at a synchronous kernel breakpoint every successful exec passes once the new mm is
//    installed and the new comm set (setup_new_exec): a match joins the set before the vCPU runs
//    on, so the set never holds more than the named processes (and, with -f, their children).
//    Without that symbol (or with method 2) every process's calls are delivered and NAME is picked
//    here from execve entries, as before.
// Methods (docs/architecture.md): 2 every syscall of every process sync, filtered here; 3 as 4 plus
// every CR3 write delivered sync; 4 syscalls and traced CR3 writes sync, DTB filter in QEMU; 5 as 4
// but syscalls async (only CR3 transitions of traced processes and clone exits pause the vCPU).
#pragma once

#include "common/result.hpp"
#include "events/control_client.hpp"
#include "events/event_reader.hpp"
#include "linux/processes.hpp"
#include "syscalls/syscalls.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace hvtrace::trace {

// CLOCK_REALTIME - CLOCK_MONOTONIC now, in ns: turns the monitor's monotonic event times into
// wall-clock timestamps (trace -t, session and recording timestamps).
[[nodiscard]] std::int64_t realtime_offset();

enum class TimeFormat { kNone, kSeconds, kMicros, kEpoch };   // -t, -tt, -ttt

struct TraceConfig {
  int method = 5;                               // 2..5
  bool follow = false;                          // -f
  std::optional<syscalls::TraceSet> trace_set;  // -e trace= (nullopt: all)
  syscalls::StatusSet status;                   // -e status=
  std::uint32_t string_limit = 32;              // -s
  std::uint32_t snap_len = 256;                 // bytes the monitor copies per capture
  TimeFormat time = TimeFormat::kNone;
  bool show_duration = false;                   // -T
  bool json = false;
  bool summary_only = false;                    // -c
  std::vector<std::string> comms;               // --comm: also trace processes that exec a program of this name
  // Not empty: the monitor copies read data (read, pread64, recvfrom) only for traced processes
  // running one of these programs (a process keeps its parent's choice until its own comm says
  // otherwise, so a server's fresh fork is copied from its first call); the others' reads arrive
  // with their length only. hvtrace session: the SSH server's, whose reads of the terminal are
  // the session's screen, while a compile's reads of its sources are not needed.
  std::set<std::string> read_data_comms;
  // Calls the processes outside that set make pass the monitor only when an argument says so
  // (abi::ArgRule; inert without read_data_comms, whose set holds every process then). hvtrace
  // session: the programs' reads and read-only opens are not needed, only the server's.
  std::vector<abi::ArgRule> arg_rules;
};

// The comm the kernel gives a task that execs `path` (the basename, at most 15 characters), as
// ps/pgrep show it and --comm matches it.
[[nodiscard]] std::string exec_comm(std::string_view path);

// One completed call, as printed (text) or serialised (JSON).
struct CallRecord {
  std::uint32_t pid = 0, tid = 0;
  std::string comm;
  abi::SyscallAbi abi = abi::SyscallAbi::kX86_64;
  std::uint64_t nr = 0;
  syscalls::Formatted f;
  std::optional<std::int64_t> ret;
  std::uint64_t entry_ns = 0, exit_ns = 0;   // host monotonic
  bool resumed = false;                      // its entry was printed as <unfinished ...>
  std::uint32_t signo = 0;                   // it returned into this signal's handler (0: none)
};

// What the Tracer asks the guest, behind an interface: the live guest (LiveGuest), a recording
// decorator that writes every answer next to the events (recording.hpp), and a replay that answers
// from a recording with no VM.
struct ProcInfo {
  std::uint32_t tgid = 0;
  std::optional<std::uint64_t> dtb;   // none: a kernel thread
  std::string comm;
};
struct TaskInfo {
  std::optional<std::uint64_t> dtb;   // of the task's current mm
  std::string comm;
  std::uint32_t tgid = 0;             // its process
  std::uint32_t ppid = 0;             // its parent's process (real_parent)
};
// An exec seen at begin_new_exec(bprm), before the new mm is installed.
struct ExecInfo {
  std::uint32_t tgid = 0;        // the exec'ing task's process (the task running on that vCPU)
  std::uint64_t task = 0;        // that task's task_struct
  std::uint64_t task_dtb = 0;    // that task's address space now (the old program's; 0: a kernel thread)
  std::uint64_t new_dtb = 0;     // the address space it switches to (bprm->mm)
};
struct IdentityOffsets {
  std::uint64_t current_task = 0;     // 0: unknown (the monitor is not told)
  std::uint32_t pid = 0, tgid = 0;
};

class GuestQueries {
 public:
  virtual ~GuestQueries() = default;
  virtual Result<std::optional<ProcInfo>> pid(std::uint32_t pid) = 0;        // the group leader with this pid
  virtual Result<std::vector<ProcInfo>> name(const std::string& comm) = 0;   // running processes of this name
  virtual std::optional<TaskInfo> task(std::uint64_t task_addr) = 0;         // nullopt: unreadable
  virtual IdentityOffsets identity() = 0;
  // A kernel symbol's address (from the guest's kallsyms); nullopt when unknown or replaying.
  virtual std::optional<std::uint64_t> symbol(const std::string&) { return std::nullopt; }
  // begin_new_exec(bprm) on vCPU `cpu`, asked while that vCPU waits; nullopt: unreadable, or the
  // kernel's BTF has no linux_binprm.mm.
  virtual std::optional<ExecInfo> exec(unsigned /*cpu*/, std::uint64_t /*bprm*/) { return std::nullopt; }
  // Whether exec() can answer on this guest (the Tracer then follows execs with a breakpoint).
  virtual bool can_follow_exec() { return false; }
};

// Where the in-hypervisor filter goes: the monitor's control channel, or nowhere (replay).
class FilterSink {
 public:
  virtual ~FilterSink() = default;
  virtual Result<void> set_identity(const IdentityOffsets& id) = 0;
  virtual Result<void> set_snap_len(std::uint32_t bytes) = 0;
  virtual Result<void> set_syscalls(const std::optional<std::vector<unsigned>>& nrs, abi::SyscallAbi table) = 0;
  virtual Result<void> set_sync_syscalls(const std::vector<unsigned>& nrs, abi::SyscallAbi table) = 0;
  virtual Result<void> set_all_dtbs() = 0;
  virtual Result<void> set_dtbs(const std::vector<Dtb>& dtbs) = 0;
  // nullopt: every DTB's read data is copied (the monitor's default).
  virtual Result<void> set_read_data_dtbs(const std::optional<std::vector<Dtb>>&) { return {}; }
  virtual Result<void> set_arg_rules(const std::vector<abi::ArgRule>&) { return {}; }
  virtual Result<void> set_actions(const events::Actions& a) = 0;
  virtual Result<void> add_breakpoint(const events::BreakpointSpec&) { return {}; }
  virtual Result<void> remove_breakpoint(std::uint32_t) { return {}; }
  // Whether every breakpoint added so far fires: the monitor's breakpoints take effect once the
  // code at their address is translated again (a flush some vCPU queues at its next syscall or CR3
  // write), so a caller relying on one keeps its fallback until then.
  virtual bool breakpoints_in_force() { return true; }
};

class LiveGuest final : public GuestQueries {
 public:
  explicit LiveGuest(const linux_os::Linux& lx) : lx_(&lx) {}
  Result<std::optional<ProcInfo>> pid(std::uint32_t pid) override;
  Result<std::vector<ProcInfo>> name(const std::string& comm) override;
  std::optional<TaskInfo> task(std::uint64_t task_addr) override;
  IdentityOffsets identity() override;
  std::optional<std::uint64_t> symbol(const std::string& name) override;
  std::optional<ExecInfo> exec(unsigned cpu, std::uint64_t bprm) override;
  bool can_follow_exec() override;

 private:
  const linux_os::Linux* lx_;
  std::optional<std::map<std::string, std::uint64_t>> all_symbols_;
};

class ControlSink final : public FilterSink {
 public:
  explicit ControlSink(events::ControlClient& ctl) : ctl_(&ctl) {}
  Result<void> set_identity(const IdentityOffsets& id) override;
  Result<void> set_snap_len(std::uint32_t bytes) override;
  Result<void> set_syscalls(const std::optional<std::vector<unsigned>>& nrs, abi::SyscallAbi table) override;
  Result<void> set_sync_syscalls(const std::vector<unsigned>& nrs, abi::SyscallAbi table) override;
  Result<void> set_all_dtbs() override;
  Result<void> set_dtbs(const std::vector<Dtb>& dtbs) override;
  Result<void> set_read_data_dtbs(const std::optional<std::vector<Dtb>>& dtbs) override;
  Result<void> set_arg_rules(const std::vector<abi::ArgRule>& rules) override;
  Result<void> set_actions(const events::Actions& a) override;
  Result<void> add_breakpoint(const events::BreakpointSpec& b) override;
  Result<void> remove_breakpoint(std::uint32_t id) override;
  bool breakpoints_in_force() override;
  // The rings whose header says when the monitor's breakpoints take effect (without: always).
  void watch_breakpoints(const events::EventReader& r) { reader_ = &r; }

 private:
  events::ControlClient* ctl_;
  const events::EventReader* reader_ = nullptr;
  std::uint64_t bp_need_ = 0;   // the monitor's bp_serial after our last add
};

class NullSink final : public FilterSink {
 public:
  Result<void> set_identity(const IdentityOffsets&) override { return {}; }
  Result<void> set_snap_len(std::uint32_t) override { return {}; }
  Result<void> set_syscalls(const std::optional<std::vector<unsigned>>&, abi::SyscallAbi) override { return {}; }
  Result<void> set_sync_syscalls(const std::vector<unsigned>&, abi::SyscallAbi) override { return {}; }
  Result<void> set_all_dtbs() override { return {}; }
  Result<void> set_dtbs(const std::vector<Dtb>&) override { return {}; }
  Result<void> set_actions(const events::Actions&) override { return {}; }
};

struct SyscallCount {
  std::uint64_t calls = 0, errors = 0, total_ns = 0;
};

struct TraceStats {
  std::uint64_t events = 0, entries = 0, exits = 0, cr3 = 0, sync_events = 0, lost = 0;
  std::uint64_t foreign = 0;      // delivered but not of a traced task (dropped here)
  std::uint64_t no_identity = 0;  // events whose task could not be read
  std::uint64_t execs_followed = 0;  // execs of traced processes followed at the exec breakpoint (method 5)
  std::uint64_t execs_unread = 0;    // ... whose new address space could not be read: its calls are not delivered
};

class Tracer {
 public:
  using LineSink = std::function<void(const std::string&)>;
  Tracer(GuestQueries& guest, FilterSink& filter, TraceConfig cfg, LineSink out);

  // Targets. trace_pid: a running process (its threads too); start_at_exec: trace this process
  // from its next execve on (`-- CMD`); all: every process (no -p/--comm).
  Result<void> trace_pid(std::uint32_t pid);
  Result<void> trace_comm(const std::string& comm);   // running processes with this name
  void start_at_exec(std::uint32_t pid);
  void trace_all() { all_ = true; }
  // x86-64 names read from the guest's sys_call_table, for numbers the compiled-in table lacks.
  void set_guest_names(std::map<std::uint32_t, std::string> names) { guest_names_ = std::move(names); }
  // Host CLOCK_REALTIME - CLOCK_MONOTONIC for -t and JSON time_ns (a replay uses the recorded one).
  void set_realtime_offset(std::int64_t ns) { realtime_offset_ns_ = ns; }
  [[nodiscard]] std::int64_t realtime_offset_ns() const { return realtime_offset_ns_; }
  // Another component's view of every completed call of a traced task (hvtrace session): the
  // record as printed and the raw call (args, entry and exit captures, return value). Called for
  // every call, independent of the output format and of -e trace=/status= (a call the monitor was
  // not asked to deliver cannot be seen: without -e trace= it delivers all). Called before the
  // call's line is printed; not for calls still open at finish().
  using CallHook = std::function<void(const CallRecord&, const syscalls::Call&)>;
  void set_call_hook(CallHook hook) { call_hook_ = std::move(hook); }
  // The same view of a call at its entry, before it completes (args and entry captures; no return
  // value, no formatted text): what a task is about to do while other tasks' calls are still seen
  // first (hvtrace session: a key being written to a terminal). Not for exit and exit_group.
  void set_entry_hook(CallHook hook) { entry_hook_ = std::move(hook); }
  // A traced process's child, seen at the fork breakpoint (wake_up_new_task) while the parent's
  // vCPU waits and before the child has run an instruction: what a caller sets up for the child
  // there (hvtrace session: the credential breakpoints of an SSH server's connection process) is
  // in place before the child could need it. Not called when the fork breakpoint does not fire
  // (a kernel without the symbol, or before the breakpoint is in force): the parent's clone
  // return, seen by the call hook, is then the first sign of the child.
  using ForkHook = std::function<void(std::uint32_t child, std::uint32_t parent, std::uint64_t child_dtb,
                                      const std::string& comm)>;
  void set_fork_hook(ForkHook hook) { fork_hook_ = std::move(hook); }

  // Push the filter that the method and the targets need to the monitor.
  // Take back what apply() added to the monitor that outlives the filter (the fork and exec breakpoints).
  Result<void> detach();
  Result<void> apply();
  // After apply(): --comm had to fall back to delivering every process's calls (the guest kernel
  // has no exec breakpoint symbol); the caller says so. False for method 2, wide by design.
  [[nodiscard]] bool comm_filtered_here() const { return comm_wide_; }
  [[nodiscard]] std::size_t processes() const { return procs_.size(); }   // traced so far, exited ones too
  // One event from the rings; sync events are acked by the reader after this returns.
  Result<void> handle(const events::Event& e);
  // Print what is still open as <unfinished ...> and, with -c, the summary.
  void finish(const std::vector<events::RingStats>& rings, const events::MonitorStats& before,
              const events::MonitorStats& after);

  [[nodiscard]] bool done() const;   // every traced process has exited (and there were some)
  [[nodiscard]] const TraceStats& stats() const { return stats_; }
  [[nodiscard]] const std::map<std::string, SyscallCount>& counts() const { return counts_; }

 private:
  struct Pending {
    syscalls::Call call;
    std::uint64_t entry_ns = 0;
    bool printed_unfinished = false;
    std::uint32_t pid = 0;
    std::string comm;
    bool entry_unseen = false;   // an execve that began before its process was traced: args unknown
  };
  // What a call's record says from its entry alone (the rest is filled in when it completes).
  static CallRecord entry_record(std::uint32_t tid, const Pending& p);
  struct Traced {
    std::uint32_t tgid = 0;
    std::uint64_t dtb = 0;
    bool waiting_exec = false;   // `-- CMD`: nothing printed before its execve
    bool exited = false;
    bool read_data = true;       // its read data is copied (TraceConfig::read_data_comms)
  };

  bool wanted(abi::SyscallAbi a, std::uint64_t nr) const;
  std::string comm_of(const abi::TaskIdentity& who);
  Traced* traced(std::uint32_t tgid);
  const Traced* owner_of(std::uint64_t dtb) const;
  Result<void> on_entry(const events::Event& e);
  Result<void> on_exit(const events::Event& e);
  Result<void> on_cr3(const events::Event& e);
  Result<void> on_breakpoint(const events::Event& e);
  Result<void> on_exec_breakpoint(const events::Event& e);
  Result<void> on_exec_follow(const events::Event& e);
  bool fork_bp_ = false, exec_bp_ = false, exec_follow_bp_ = false;
  bool bp_fallback_ = false;   // fork/exec breakpoints set but not yet in force: clone exits and CR3 events stand in
  Result<void> set_sync_set();
  events::Actions actions() const;
  Result<void> leave_bp_fallback();
  bool wide_ = false;        // no DTB filter: every process's calls come here (set by apply())
  bool comm_wide_ = false;   // wide only because --comm has no exec breakpoint
  Result<void> add_child(std::uint32_t child_pid, std::uint32_t parent_tgid);
  Result<void> reaped(std::uint32_t child, std::uint32_t parent, const std::optional<syscalls::WaitStatus>& status,
                      std::uint64_t ns);
  void complete(std::uint32_t tid, Pending p, std::optional<std::int64_t> ret, std::vector<events::Capture> exit_caps,
                std::uint64_t exit_ns, std::uint32_t signo = 0);
  void print_unfinished(std::uint32_t tid, Pending& p);
  void before_line(std::uint32_t tid);
  void emit(const CallRecord& r);
  std::string prefix(std::uint32_t tid, std::uint64_t ns) const;
  Result<void> push_dtbs();

  GuestQueries* guest_;
  FilterSink* filter_;
  TraceConfig cfg_;
  LineSink out_;
  bool all_ = false;
  std::map<std::uint32_t, Traced> procs_;        // by tgid
  std::map<std::uint32_t, Pending> pending_;     // by tid
  std::map<std::uint32_t, Pending>::iterator complete_open(std::map<std::uint32_t, Pending>::iterator it,
                                                           std::optional<std::int64_t> ret, std::uint64_t ns);
  std::optional<std::uint32_t> open_line_tid_;   // whose entry was the last thing seen
  std::map<std::uint64_t, std::pair<std::uint32_t, std::string>> comm_cache_;   // task address -> pid, comm
  std::map<std::string, SyscallCount> counts_;
  std::optional<std::set<std::uint64_t>> pushed_dtbs_;   // nullopt: no DTB set sent yet
  std::optional<std::set<std::uint64_t>> pushed_read_data_;   // the read-data set sent (read_data_comms)
  [[nodiscard]] bool reads_data(const std::string& comm) const;
  TraceStats stats_;
  std::int64_t realtime_offset_ns_ = 0;
  bool multi_ = false;                           // more than one task seen: prefix lines with the pid
  std::set<std::uint32_t> tids_seen_;
  std::map<std::uint32_t, std::string> guest_names_;
  CallHook call_hook_;
  CallHook entry_hook_;
  ForkHook fork_hook_;
};

// The id of the breakpoint `-f` sets at the kernel's wake_up_new_task (a new task made runnable).
inline constexpr std::uint32_t kForkBreakpointId = 0x7472'0001;
// The id of the breakpoint --comm sets where every successful exec passes with the new mm and comm
// in place (setup_new_exec(bprm), called by load_elf_binary after begin_new_exec); every address
// space, synchronous.
inline constexpr std::uint32_t kExecBreakpointId = 0x7472'0002;
inline constexpr const char* kExecBreakpointSymbol = "setup_new_exec";
// The id of the breakpoint method 5 sets to follow a traced process's exec (begin_new_exec(bprm),
// before the new mm is installed); only in traced address spaces, synchronous.
inline constexpr std::uint32_t kExecFollowBreakpointId = 0x7472'0003;
inline constexpr const char* kExecFollowSymbol = "begin_new_exec";

// The x86-64 and i386 numbers of the clone family (fork, vfork, clone, clone3).
[[nodiscard]] bool is_clone_family(abi::SyscallAbi a, std::uint64_t nr);
[[nodiscard]] bool is_execve(abi::SyscallAbi a, std::uint64_t nr);
[[nodiscard]] bool is_exit_group(abi::SyscallAbi a, std::uint64_t nr);

}  // namespace hvtrace::trace
