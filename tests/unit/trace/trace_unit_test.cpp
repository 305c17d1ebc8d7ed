// The Tracer with no VM: a synthetic event stream, records laid out as the monitor writes them
// (abi structs + captures, decoded by events::decode_record), and a fake guest answering the
// Tracer's questions. Checks what strace would print (paths, errno, exec followed into its new
// address space, fork children with -f only, <unfinished ...> interleaving, -e trace=, --json), then
// that a recording of the same run replays to identical output, and that truncated or corrupt
// recordings end in a clear error naming a byte offset, never a crash.
#include "trace/recording.hpp"
#include "trace/tracer.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace hvtrace::trace {
namespace {

namespace fs = std::filesystem;

constexpr std::uint32_t kShell = 100, kChild = 200;
constexpr std::uint64_t kShellTask = 0xffff888000a00000, kChildTask = 0xffff888000b00000;
constexpr std::uint64_t kOldDtb = 0x1000000, kNewDtb = 0x2000000, kChildDtb = 0x3000000;

struct Cap {
  unsigned arg;
  abi::CaptureKind kind;
  std::string data;
  std::uint16_t flags = 0;
};

// One record's bytes as the monitor lays it out, decoded by the real decoder.
template <typename T>
events::Event decode(T body, abi::RecordType type, const std::vector<Cap>& caps = {}) {
  std::size_t size = sizeof body;
  for (const auto& c : caps) size += sizeof(abi::Capture) + abi::align_record(c.data.size());
  size = abi::align_record(size);
  body.hdr = abi::EventHeader{{static_cast<std::uint16_t>(type), 0, static_cast<std::uint32_t>(size)}, 0, 0, 0, 0, 0};
  std::vector<std::uint8_t> b(size, 0);
  std::memcpy(b.data(), &body, sizeof body);
  std::size_t at = sizeof body;
  for (const auto& c : caps) {
    abi::Capture h{static_cast<std::uint8_t>(c.arg), static_cast<std::uint8_t>(c.kind), c.flags,
                   static_cast<std::uint32_t>(c.data.size()), c.data.size()};
    std::memcpy(b.data() + at, &h, sizeof h);
    std::memcpy(b.data() + at + sizeof h, c.data.data(), c.data.size());
    at += sizeof h + abi::align_record(c.data.size());
  }
  auto e = events::decode_record(b.data(), b.size());
  EXPECT_TRUE(e.ok()) << e.error().message;
  return *e;
}

class Stream {
 public:
  void entry(std::uint32_t tid, std::uint64_t task, std::uint64_t dtb, std::uint64_t nr, std::vector<std::uint64_t> args,
             const std::vector<Cap>& caps = {}) {
    abi::SyscallEntryEvent e{};
    e.nr = nr;
    for (std::size_t i = 0; i < args.size() && i < 6; ++i) e.args[i] = args[i];
    e.cr3 = dtb;
    e.who = abi::TaskIdentity{task, tid, tid};
    e.n_captures = static_cast<std::uint32_t>(caps.size());
    push(decode(e, abi::RecordType::kSyscallEntry, caps));
  }
  void exit(std::uint32_t tid, std::uint64_t task, std::uint64_t dtb, std::int64_t nr, std::int64_t ret,
            const std::vector<Cap>& caps = {}, std::uint32_t into_handler_of = 0) {
    abi::SyscallExitEvent e{};
    e.nr = nr;
    e.ret = ret;
    if (into_handler_of != 0) {
      e.via = static_cast<std::uint16_t>(abi::ExitVia::kSignal);
      e.signo = into_handler_of;
    }
    e.cr3 = dtb;
    e.who = abi::TaskIdentity{task, tid, tid};
    e.n_captures = static_cast<std::uint32_t>(caps.size());
    push(decode(e, abi::RecordType::kSyscallExit, caps));
  }
  void cr3(std::uint32_t tid, std::uint64_t task, std::uint64_t old_dtb, std::uint64_t new_dtb) {
    abi::Cr3WriteEvent e{};
    e.old_cr3 = old_dtb;
    e.new_cr3 = new_dtb;
    e.who = abi::TaskIdentity{task, tid, tid};
    push(decode(e, abi::RecordType::kCr3Write));
  }
  void bp(std::uint32_t id, std::uint64_t va, std::uint64_t cr3, std::uint64_t rdi = 0,
          abi::BreakpointKind kind = abi::BreakpointKind::kKernel) {
    abi::BreakpointEvent e{};
    e.id = id;
    e.va = va;
    e.cr3 = cr3;
    e.regs[0] = rdi;
    e.kind = static_cast<std::uint8_t>(kind);
    push(decode(e, abi::RecordType::kBreakpoint));
  }
  std::vector<events::Event> events;

 private:
  void push(events::Event e) {
    e.time_ns = 1'000'000 * (events.size() + 1);
    e.seq = events.size() + 1;
    events.push_back(std::move(e));
  }
};

// `-- /tmp/calls`: the waiting shell execs calls, which opens a file, fails to open another, forks
// a child that writes while the parent waits, and both exit.
Stream program() {
  Stream s;
  s.entry(kShell, kShellTask, kOldDtb, 61, {~0ULL, 0, 0, 0});   // the shell's wait before the exec: not shown
  s.exit(kShell, kShellTask, kOldDtb, 61, 0);
  s.entry(kShell, kShellTask, kOldDtb, 59, {0x1000, 0x2000, 0x3000}, {{0, abi::CaptureKind::kString, "/tmp/calls"}});
  s.cr3(kShell, kShellTask, kOldDtb, kNewDtb);
  s.exit(kShell, kShellTask, kNewDtb, 59, 0);
  s.entry(kShell, kShellTask, kNewDtb, 257, {static_cast<std::uint64_t>(-100), 0x4000, 0},
          {{1, abi::CaptureKind::kString, "/etc/hostname"}});
  s.exit(kShell, kShellTask, kNewDtb, 257, 3);
  s.entry(kShell, kShellTask, kNewDtb, 257, {static_cast<std::uint64_t>(-100), 0x4010, 0},
          {{1, abi::CaptureKind::kString, "/nonexistent"}});
  s.exit(kShell, kShellTask, kNewDtb, 257, -2);
  s.entry(kShell, kShellTask, kNewDtb, 57, {});
  s.exit(kShell, kShellTask, kNewDtb, 57, kChild);
  s.entry(kChild, kChildTask, kChildDtb, 1, {1, 0x5000, 3}, {{1, abi::CaptureKind::kBuffer, "hi\n"}});
  s.exit(kChild, kChildTask, kChildDtb, 1, 3);
  s.entry(kShell, kShellTask, kNewDtb, 61, {~0ULL, 0, 0, 0});   // wait4: unfinished when the child's line comes
  s.entry(kChild, kChildTask, kChildDtb, 231, {0});
  s.exit(kShell, kShellTask, kNewDtb, 61, kChild);
  s.entry(kShell, kShellTask, kNewDtb, 231, {3});
  return s;
}

class FakeGuest final : public GuestQueries {
 public:
  Result<std::optional<ProcInfo>> pid(std::uint32_t pid) override {
    ++asked;
    if (pid == kShell) return std::optional<ProcInfo>(ProcInfo{kShell, kOldDtb, "sh"});
    if (pid == kChild) return std::optional<ProcInfo>(ProcInfo{kChild, kChildDtb, "calls"});
    return std::optional<ProcInfo>();
  }
  Result<std::vector<ProcInfo>> name(const std::string&) override { return std::vector<ProcInfo>{}; }
  std::optional<TaskInfo> task(std::uint64_t t) override {
    ++asked;
    if (t == kShellTask) return TaskInfo{kNewDtb, "calls"};   // after its exec
    if (t == kChildTask) return TaskInfo{kChildDtb, "calls"};
    return std::nullopt;
  }
  IdentityOffsets identity() override { return {}; }
  int asked = 0;
};

TraceConfig config(bool follow, const std::string& trace_set = "", bool json = false) {
  TraceConfig c;
  c.follow = follow;
  c.json = json;
  if (!trace_set.empty()) c.trace_set = *syscalls::parse_trace_set(trace_set);
  return c;
}

fs::path temp(const std::string& name) {
  return fs::temp_directory_path() / ("hvtrace-trace-unit-" + std::to_string(getpid()) + "-" + name);
}

// A live run's recording to `rec` (if given): the writer, and the guest the Tracer asks (`inner`,
// or `inner` recorded).
struct LiveRecording {
  std::unique_ptr<RecordingWriter> w;
  std::optional<RecordingGuest> rg;
  GuestQueries* q = nullptr;
  LiveRecording(const LiveRecording&) = delete;
  LiveRecording& operator=(const LiveRecording&) = delete;
  LiveRecording(GuestQueries& inner, const std::optional<fs::path>& rec) : q(&inner) {
    if (!rec) return;
    RecordingHeader h;
    h.abi_version = abi::kAbiVersion;
    h.command_line = "hvtrace trace -w x";
    auto c = RecordingWriter::create(*rec, h);
    EXPECT_TRUE(c.ok());
    w = std::move(*c);
    rg.emplace(inner, *w);
    q = &*rg;
  }
  void start(const RecordedTargets& targets) {
    if (!w) return;
    w->guest_names({});
    w->targets(targets);
  }
  void close() {
    if (!w) return;
    w->counters(RecordedCounters{{events::RingStats{}}, {}, {}});
    EXPECT_TRUE(w->close().ok());
  }
};

// The live run: the stream through the Tracer with the fake guest, recorded to `rec` if given.
std::vector<std::string> live(const TraceConfig& cfg, const std::optional<fs::path>& rec = std::nullopt) {
  FakeGuest fake;
  NullSink sink;
  LiveRecording lr(fake, rec);
  auto& w = lr.w;
  GuestQueries* q = lr.q;
  std::vector<std::string> lines;
  Tracer t(*q, sink, cfg, [&](const std::string& l) { lines.push_back(l); });
  t.set_realtime_offset(0);
  RecordedTargets targets;
  targets.start_at_exec = kShell;
  targets.follow = cfg.follow;
  EXPECT_TRUE(apply_targets(t, targets).ok());
  lr.start(targets);
  EXPECT_TRUE(t.apply().ok());
  for (const auto& e : program().events) {
    if (w) w->event(e);
    EXPECT_TRUE(t.handle(e).ok());
  }
  t.finish({}, {}, {});
  lr.close();
  return lines;
}

struct Replayed {
  std::vector<std::string> lines;
  std::optional<std::string> error;
};

Replayed replay_reader(Result<RecordingReader> reader, const TraceConfig& cfg) {
  Replayed out;
  if (!reader) {
    out.error = reader.error().message;
    return out;
  }
  Replayer rp(*reader);
  if (auto r = rp.start(); !r) out.error = r.error().message;
  NullSink sink;
  Tracer t(rp.guest(), sink, cfg, [&](const std::string& l) { out.lines.push_back(l); });
  t.set_realtime_offset(reader->header().realtime_offset_ns);
  t.set_guest_names(rp.guest_names());
  if (auto r = apply_targets(t, rp.targets().value_or(RecordedTargets{})); !r && !out.error) out.error = r.error().message;
  (void)t.apply();
  if (auto r = rp.run(t); !r && !out.error) out.error = r.error().message;
  t.finish({}, {}, {});
  return out;
}

Replayed replay(const fs::path& p, const TraceConfig& cfg) { return replay_reader(RecordingReader::open(p), cfg); }

Replayed replay_bytes(const std::string& bytes, const TraceConfig& cfg) {
  return replay_reader(RecordingReader::from_stream(std::make_unique<std::istringstream>(bytes), "mem.rec"), cfg);
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

TEST(Tracer, PrintsWhatStraceWouldWithForksFollowed) {
  const auto lines = live(config(true));
  const std::vector<std::string> want = {
      R"([pid   100] execve("/tmp/calls", 0x2000, 0x3000) = 0)",
      R"([pid   100] openat(AT_FDCWD, "/etc/hostname", O_RDONLY) = 3)",
      R"([pid   100] openat(AT_FDCWD, "/nonexistent", O_RDONLY) = -1 ENOENT (No such file or directory))",
      R"([pid   100] fork()                      = 200)",
      R"([pid   200] write(1, "hi\n", 3)         = 3)",
      R"([pid   100] wait4(-1, NULL, 0, NULL) <unfinished ...>)",
      R"([pid   200] exit_group(0)               = ?)",
      R"([pid   200] +++ exited with 0 +++)",
      R"([pid   100] <... wait4 resumed>) = 200)",
      R"([pid   100] exit_group(3)               = ?)",
      R"([pid   100] +++ exited with 3 +++)",
  };
  EXPECT_EQ(lines, want);
}

// A path whose page was not yet present at entry arrives only with the exit (the monitor copies it
// again there). When another process's line comes between, the call is not split into
// <unfinished ...> with an empty path: it is printed whole, with its path, when it returns.
TEST(Tracer, APathKnownOnlyAtExitIsPrintedWholeWhenTheCallReturns) {
  Stream s;
  s.entry(kShell, kShellTask, kOldDtb, 59, {0x1000, 0x2000, 0x3000}, {{0, abi::CaptureKind::kString, "/tmp/calls"}});
  s.cr3(kShell, kShellTask, kOldDtb, kNewDtb);
  s.exit(kShell, kShellTask, kNewDtb, 59, 0);
  s.entry(kShell, kShellTask, kNewDtb, 57, {});
  s.exit(kShell, kShellTask, kNewDtb, 57, kChild);
  s.entry(kShell, kShellTask, kNewDtb, 39, {});                         // getpid of the other process
  s.entry(kChild, kChildTask, kChildDtb, 89, {0x7000, 0x8000, 4096},
          {{0, abi::CaptureKind::kString, "", abi::kCaptureFault}});   // readlink, path not yet paged in
  s.exit(kShell, kShellTask, kNewDtb, 39, kShell);
  s.exit(kChild, kChildTask, kChildDtb, 89, 12,
         {{0, abi::CaptureKind::kString, "/proc/self/exe"}, {1, abi::CaptureKind::kBuffer, "/bin/busybox"}});
  FakeGuest fake;
  NullSink sink;
  std::vector<std::string> lines;
  Tracer t(fake, sink, config(true), [&](const std::string& l) { lines.push_back(l); });
  t.set_realtime_offset(0);
  RecordedTargets targets;
  targets.start_at_exec = kShell;
  targets.follow = true;
  ASSERT_TRUE(apply_targets(t, targets).ok());
  ASSERT_TRUE(t.apply().ok());
  for (const auto& e : s.events) ASSERT_TRUE(t.handle(e).ok());
  t.finish({}, {}, {});
  ASSERT_EQ(lines.size(), 4u) << ::testing::PrintToString(lines);
  EXPECT_NE(lines[2].find("[pid   100] getpid()"), std::string::npos) << lines[2];
  EXPECT_EQ(lines[3], R"([pid   200] readlink("/proc/self/exe", "/bin/busybox", 4096) = 12)");
}

TEST(Tracer, WithoutFollowTheChildIsNotTraced) {
  const auto lines = live(config(false));
  for (const auto& l : lines) EXPECT_EQ(l.find("write("), std::string::npos) << l;
  ASSERT_GE(lines.size(), 3u);
  EXPECT_EQ(lines.front(), R"(execve("/tmp/calls", 0x2000, 0x3000)    = 0)");
  EXPECT_EQ(lines.back(), "+++ exited with 3 +++");
}

TEST(Tracer, TraceSetShowsOnlyItsCalls) {
  const auto lines = live(config(true, "openat"));
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_NE(lines[0].find("openat(AT_FDCWD, \"/etc/hostname\""), std::string::npos);
  EXPECT_NE(lines[1].find("ENOENT"), std::string::npos);
  EXPECT_EQ(lines[2], "[pid   200] +++ exited with 0 +++");
  EXPECT_EQ(lines[3], "[pid   100] +++ exited with 3 +++");
}

// The call hook (hvtrace session's input) sees every completed call with its raw captures,
// whatever -e trace= shows and the output format is.
TEST(Tracer, CallHookSeesEveryCallWhateverTheOutputShows) {
  FakeGuest fake;
  NullSink sink;
  std::vector<std::string> lines;
  std::vector<std::pair<CallRecord, syscalls::Call>> seen;
  Tracer t(fake, sink, config(true, "openat", true), [&](const std::string& l) { lines.push_back(l); });
  t.set_call_hook([&](const CallRecord& r, const syscalls::Call& c) { seen.emplace_back(r, c); });
  std::vector<std::pair<CallRecord, syscalls::Call>> entered;
  t.set_entry_hook([&](const CallRecord& r, const syscalls::Call& c) { entered.emplace_back(r, c); });
  RecordedTargets targets;
  targets.start_at_exec = kShell;
  targets.follow = true;
  ASSERT_TRUE(apply_targets(t, targets).ok());
  ASSERT_TRUE(t.apply().ok());
  for (const auto& e : program().events) ASSERT_TRUE(t.handle(e).ok());
  t.finish({}, {}, {});
  EXPECT_EQ(lines.size(), 2u);   // JSON, openat only
  std::vector<std::string> names;
  for (const auto& [r, c] : seen) names.push_back(r.f.name);
  const std::vector<std::string> want = {"execve", "openat", "openat", "fork", "write", "exit_group", "wait4", "exit_group"};
  EXPECT_EQ(names, want);
  // The entry hook: every call but the exits, at its entry, with its arguments and entry captures
  // and no return value yet.
  std::vector<std::string> entry_names;
  for (const auto& [r, c] : entered) {
    entry_names.push_back(syscalls::format_call(c, {}).name);
    EXPECT_FALSE(c.ret.has_value());
    EXPECT_EQ(r.exit_ns, 0u);
  }
  std::vector<std::string> want_entered;
  for (const auto& n : want)
    if (n != "exit_group") want_entered.push_back(n);
  std::sort(entry_names.begin(), entry_names.end());
  std::sort(want_entered.begin(), want_entered.end());
  EXPECT_EQ(entry_names, want_entered);
  const auto& [wr, wc] = seen.at(4);
  EXPECT_EQ(wr.pid, kChild);
  EXPECT_EQ(wr.tid, kChild);
  EXPECT_EQ(wc.nr, 1u);
  EXPECT_EQ(wc.ret, 3);
  ASSERT_EQ(wc.entry_caps.size(), 1u);
  EXPECT_EQ(wc.entry_caps[0].data, "hi\n");
  EXPECT_FALSE(seen.back().second.ret.has_value());   // exit_group does not return
}

TEST(Tracer, JsonHasTheSchemasFields) {
  const auto lines = live(config(true, "openat", true));
  ASSERT_EQ(lines.size(), 2u);
  const auto ok = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(ok["v"], 1);
  EXPECT_EQ(ok["pid"], kShell);
  EXPECT_EQ(ok["tid"], kShell);
  EXPECT_EQ(ok["comm"], "calls");
  EXPECT_EQ(ok["abi"], "x86_64");
  EXPECT_EQ(ok["nr"], 257);
  EXPECT_EQ(ok["syscall"], "openat");
  EXPECT_EQ(ok["args"][1], "\"/etc/hostname\"");
  EXPECT_EQ(ok["ret"], 3);
  EXPECT_EQ(ok["failed"], false);
  EXPECT_FALSE(ok.contains("errno"));
  EXPECT_EQ(ok["duration_ns"], 1'000'000);
  const auto bad = nlohmann::json::parse(lines[1]);
  EXPECT_EQ(bad["ret"], -2);
  EXPECT_EQ(bad["failed"], true);
  EXPECT_EQ(bad["errno"], "ENOENT");
}

// The tracer and the monitor share one definition of the calls that never pair (abi/events.h):
// x32's execve is its own 520, not the x86-64 number with the x32 bit.
TEST(Tracer, ExecAndExitNumbersPerAbiAreTheMonitors) {
  EXPECT_TRUE(is_execve(abi::SyscallAbi::kX86_64, 59));
  EXPECT_TRUE(is_execve(abi::SyscallAbi::kI386, 358));
  EXPECT_TRUE(is_execve(abi::SyscallAbi::kX32, abi::kX32SyscallBit | 520));
  EXPECT_FALSE(is_execve(abi::SyscallAbi::kX32, abi::kX32SyscallBit | 59));
  EXPECT_TRUE(is_exit_group(abi::SyscallAbi::kX32, abi::kX32SyscallBit | 231));
}

// A task_struct's memory is reused: a later task at the same address, with its own pid, is named
// by what the guest says now, not by the earlier task's name (the session record once called the
// SSH server's connection process "cat" this way).
TEST(Tracer, ATaskAddressReusedByAnotherPidGetsItsOwnName) {
  struct Reused final : GuestQueries {
    Result<std::optional<ProcInfo>> pid(std::uint32_t) override { return std::optional<ProcInfo>(); }
    Result<std::vector<ProcInfo>> name(const std::string&) override { return std::vector<ProcInfo>{}; }
    std::optional<TaskInfo> task(std::uint64_t t) override {
      if (t == kShellTask) return TaskInfo{kOldDtb, now};
      return std::nullopt;
    }
    IdentityOffsets identity() override { return {}; }
    std::string now = "cat";
  } guest;
  NullSink sink;
  std::vector<std::string> comms;
  Tracer t(guest, sink, config(false), [](const std::string&) {});
  t.set_call_hook([&](const CallRecord& r, const syscalls::Call&) { comms.push_back(r.comm); });
  t.trace_all();
  Stream s;
  s.entry(300, kShellTask, kOldDtb, 0, {0, 0x1000, 4});
  s.exit(300, kShellTask, kOldDtb, 0, 4);
  s.entry(300, kShellTask, kOldDtb, 231, {0});
  for (const auto& e : s.events) ASSERT_TRUE(t.handle(e).ok());
  guest.now = "dropbear";   // pid 300 is gone; pid 301's task_struct took its place
  Stream s2;
  s2.entry(301, kShellTask, kOldDtb, 1, {4, 0x1000, 1});
  s2.exit(301, kShellTask, kOldDtb, 1, 1);
  for (const auto& e : s2.events) ASSERT_TRUE(t.handle(e).ok());
  const std::vector<std::string> want = {"cat", "cat", "dropbear"};
  EXPECT_EQ(comms, want);
}

// ---- --comm: processes started later join the in-hypervisor filter at their exec --------------

constexpr std::uint64_t kExecVa = 0xffffffff81401230, kCatDtb = 0x5000000;
constexpr std::uint32_t kCat = 300;

TEST(Tracer, ExecCommIsTheBasenameTheKernelKeeps) {
  EXPECT_EQ(exec_comm("/tmp/calls"), "calls");
  EXPECT_EQ(exec_comm("calls"), "calls");
  EXPECT_EQ(exec_comm("./bin/../calls"), "calls");
  EXPECT_EQ(exec_comm("/usr/local/bin/a-program-name-of-30-chars"), "a-program-name-");   // TASK_COMM_LEN - 1
  EXPECT_EQ(exec_comm("/dev/fd/3"), "3");
  EXPECT_EQ(exec_comm(""), "");
}

// The guest as the exec breakpoint sees it: the processes running now (each exec changes them).
class CommGuest final : public GuestQueries {
 public:
  Result<std::optional<ProcInfo>> pid(std::uint32_t pid) override {
    for (const auto& p : running)
      if (p.tgid == pid) return std::optional<ProcInfo>(p);
    return std::optional<ProcInfo>();
  }
  Result<std::vector<ProcInfo>> name(const std::string& comm) override {
    ++name_asked;
    std::vector<ProcInfo> v;
    for (const auto& p : running)
      if (p.comm == comm) v.push_back(p);
    return v;
  }
  std::optional<TaskInfo> task(std::uint64_t t) override {
    if (t == kShellTask) return TaskInfo{kNewDtb, "calls", kShell, 1};
    return std::nullopt;
  }
  IdentityOffsets identity() override { return {}; }
  std::optional<std::uint64_t> symbol(const std::string& n) override {
    if (has_exec_symbol && n == kExecBreakpointSymbol) return kExecVa;
    return std::nullopt;
  }
  std::vector<ProcInfo> running;
  bool has_exec_symbol = true;
  int name_asked = 0;
};

// What the monitor was told, in order.
class LogSink final : public FilterSink {
 public:
  Result<void> set_identity(const IdentityOffsets&) override { return {}; }
  Result<void> set_snap_len(std::uint32_t) override { return {}; }
  Result<void> set_syscalls(const std::optional<std::vector<unsigned>>&, abi::SyscallAbi) override { return {}; }
  Result<void> set_sync_syscalls(const std::vector<unsigned>& nrs, abi::SyscallAbi) override {
    sync_nrs += nrs.size();
    return {};
  }
  Result<void> set_all_dtbs() override {
    log.push_back("all");
    return {};
  }
  Result<void> set_dtbs(const std::vector<Dtb>& dtbs) override {
    std::string s = "dtbs";
    for (const auto& d : dtbs) s += fmt::format(" {:#x}", d.value);
    log.push_back(s);
    return {};
  }
  Result<void> set_read_data_dtbs(const std::optional<std::vector<Dtb>>& dtbs) override {
    std::string s = "read data";
    if (!dtbs) s += " all";
    for (const auto& d : dtbs.value_or(std::vector<Dtb>{})) s += fmt::format(" {:#x}", d.value);
    log.push_back(s);
    return {};
  }
  Result<void> set_arg_rules(const std::vector<abi::ArgRule>& rules) override {
    std::string s = "arg rules";
    for (const auto& r : rules) s += fmt::format(" {}/{}:{}&{:#x}", r.abi, r.nr, r.arg, r.mask);
    log.push_back(s);
    return {};
  }
  Result<void> set_actions(const events::Actions& a) override {
    cr3 = a.cr3;
    cr3_leaving_only = a.cr3_leaving_only;
    return {};
  }
  Result<void> add_breakpoint(const events::BreakpointSpec& b) override {
    log.push_back(fmt::format("add {:#x} {:#x} {} {} {}", b.id, b.va, static_cast<int>(b.kind), static_cast<int>(b.action), b.dtbs.size()));
    return {};
  }
  Result<void> remove_breakpoint(std::uint32_t id) override {
    log.push_back(fmt::format("remove {:#x}", id));
    return {};
  }
  bool breakpoints_in_force() override { return in_force; }
  std::vector<std::string> log;
  abi::Action cr3 = abi::Action::kDrop;
  bool cr3_leaving_only = false;
  std::size_t sync_nrs = 0;   // clone-family numbers sent as synchronous, all calls together
  bool in_force = true;
};

// `--comm calls` with nothing of that name running: an unrelated exec (cat) hits the breakpoint and
// is left out; the shell's exec of /tmp/calls hits it with the new CR3 (PCID bits set) and comm,
// joins the filter there, and is traced from that execve on; the other process's calls never reach
// the tracer (the monitor drops them), so the stream holds only the exec hits and calls's calls.
Stream comm_program() {
  Stream s;
  s.bp(kExecBreakpointId, kExecVa, kCatDtb | 0x5);
  s.bp(kExecBreakpointId, kExecVa, kNewDtb | 0x3);
  s.entry(kShell, kShellTask, kNewDtb, 257, {static_cast<std::uint64_t>(-100), 0x4000, 0},
          {{1, abi::CaptureKind::kString, "/etc/hostname"}});
  s.exit(kShell, kShellTask, kNewDtb, 257, 3);
  s.entry(kShell, kShellTask, kNewDtb, 231, {3});
  return s;
}

struct CommRun {
  std::vector<std::string> lines, sink;
  bool filtered_here = false, done = false;
  abi::Action cr3 = abi::Action::kDrop;
  bool cr3_leaving_only = false;
};

// Runs comm_program(); before each exec hit the guest's process list becomes what the kernel
// has at that point (cat, then calls in the shell's place). Recorded to `rec` if given.
CommRun comm_live(TraceConfig cfg, bool has_symbol, const std::optional<fs::path>& rec = std::nullopt) {
  cfg.comms = {"calls"};
  CommGuest fake;
  fake.has_exec_symbol = has_symbol;
  fake.running = {{kShell, kOldDtb, "sh"}};
  LogSink sink;
  LiveRecording lr(fake, rec);
  auto& w = lr.w;
  CommRun out;
  Tracer t(*lr.q, sink, cfg, [&](const std::string& l) { out.lines.push_back(l); });
  t.set_realtime_offset(0);
  RecordedTargets targets;
  targets.comms = cfg.comms;
  targets.follow = cfg.follow;
  EXPECT_TRUE(apply_targets(t, targets).ok());
  lr.start(targets);
  EXPECT_TRUE(t.apply().ok());
  out.filtered_here = t.comm_filtered_here();
  const auto evs = comm_program().events;
  for (std::size_t i = 0; i < evs.size(); ++i) {
    if (i == 0) fake.running.push_back({kCat, kCatDtb, "cat"});
    if (i == 1) fake.running[0] = {kShell, kNewDtb, "calls"};
    if (w) w->event(evs[i]);
    EXPECT_TRUE(t.handle(evs[i]).ok());
  }
  out.done = t.done();
  EXPECT_TRUE(t.detach().ok());
  t.finish({}, {}, {});
  lr.close();
  out.sink = sink.log;
  out.cr3 = sink.cr3;
  out.cr3_leaving_only = sink.cr3_leaving_only;
  return out;
}

TEST(Tracer, CommStartedLaterJoinsTheFilterAtItsExec) {
  const auto r = comm_live(config(false), true);
  EXPECT_FALSE(r.filtered_here);
  const std::vector<std::string> want_sink = {
      "remove 0x74720002",                                   // one left by a tracer that died
      fmt::format("add 0x74720002 {:#x} {} {} 0", kExecVa,   // kernel, sync, every address space
                  static_cast<int>(abi::BreakpointKind::kKernel), static_cast<int>(abi::Action::kSync)),
      "arg rules",                                           // none, and every DTB's read data: whatever
      "read data all",                                       // a session that died left goes
      "dtbs",                                                // nothing of that name yet: nothing passes
      fmt::format("dtbs {:#x}", kNewDtb),                    // the exec'ing shell, at the breakpoint
      "dtbs",                                                // calls exited
      "remove 0x74720002",                                   // detach
  };
  EXPECT_EQ(r.sink, want_sink);
  EXPECT_EQ(r.cr3, abi::Action::kSync);   // a traced process's later exec is followed
  EXPECT_TRUE(r.cr3_leaving_only);         // ... by the writes leaving its address space (method 5)
  ASSERT_EQ(r.lines.size(), 4u) << ::testing::PrintToString(r.lines);
  EXPECT_EQ(r.lines[0], "<... execve resumed>) = 0");
  EXPECT_EQ(r.lines[1], R"(openat(AT_FDCWD, "/etc/hostname", O_RDONLY) = 3)");
  EXPECT_EQ(r.lines[2], "exit_group(3)                           = ?");
  EXPECT_EQ(r.lines[3], "+++ exited with 3 +++");
  EXPECT_TRUE(r.done);
}

TEST(Tracer, CommStartedLaterInJsonAndSummary) {
  const auto j = comm_live(config(false, "", true), true);
  ASSERT_EQ(j.lines.size(), 3u) << ::testing::PrintToString(j.lines);
  const auto exec = nlohmann::json::parse(j.lines[0]);
  EXPECT_EQ(exec["syscall"], "execve");
  EXPECT_EQ(exec["pid"], kShell);
  EXPECT_EQ(exec["comm"], "calls");
  EXPECT_EQ(exec["ret"], 0);
  EXPECT_TRUE(exec["args"].empty()) << exec.dump();   // its entry was not seen: unknown, not zeros
  auto cfg = config(false);
  cfg.summary_only = true;
  const auto c = comm_live(cfg, true);
  const auto row = std::find_if(c.lines.begin(), c.lines.end(), [](const std::string& l) { return l.ends_with(" execve"); });
  ASSERT_NE(row, c.lines.end()) << ::testing::PrintToString(c.lines);
  EXPECT_NE(row->find(" 1 "), std::string::npos) << *row;
}

TEST(Tracer, CommWithoutTheExecSymbolFallsBackToEveryProcessDelivered) {
  // The same kernel events as the monitor would deliver them with no DTB filter: the execve entry
  // of /tmp/calls names the program.
  CommGuest fake;
  fake.has_exec_symbol = false;
  fake.running = {{kShell, kOldDtb, "sh"}};
  LogSink sink;
  std::vector<std::string> lines;
  auto cfg = config(false);
  cfg.comms = {"calls"};
  Tracer t(fake, sink, cfg, [&](const std::string& l) { lines.push_back(l); });
  t.set_realtime_offset(0);
  ASSERT_TRUE(t.trace_comm("calls").ok());
  ASSERT_TRUE(t.apply().ok());
  EXPECT_TRUE(t.comm_filtered_here());
  EXPECT_EQ(sink.log, (std::vector<std::string>{"arg rules", "read data all", "all"}));
  EXPECT_EQ(sink.cr3, abi::Action::kDrop);
  Stream s;
  s.entry(kCat, kChildTask, kCatDtb, 0, {0, 0x1000, 10});   // another process's read: not traced
  s.entry(kShell, kShellTask, kOldDtb, 59, {0x1000, 0x2000, 0x3000}, {{0, abi::CaptureKind::kString, "/tmp/calls"}});
  s.entry(kShell, kShellTask, kNewDtb, 231, {3});
  for (const auto& e : s.events) ASSERT_TRUE(t.handle(e).ok());
  ASSERT_EQ(lines.size(), 3u) << ::testing::PrintToString(lines);
  EXPECT_EQ(lines[0], R"(execve("/tmp/calls", 0x2000, 0x3000)    = 0)");
  EXPECT_EQ(t.stats().foreign, 1u);
  // Method 2 delivers everything by design: wide, but not a fallback.
  auto m2 = config(false);
  m2.method = 2;
  m2.comms = {"calls"};
  LogSink sink2;
  fake.has_exec_symbol = true;
  Tracer t2(fake, sink2, m2, [](const std::string&) {});
  ASSERT_TRUE(t2.apply().ok());
  EXPECT_FALSE(t2.comm_filtered_here());
  EXPECT_EQ(sink2.log, (std::vector<std::string>{"arg rules", "read data all", "all"}));
}

// hvtrace session: only the SSH server's reads carry the terminal, so the monitor copies read data
// for the server and its forks, not for what they exec. The fork child is in the read-data set
// before it runs (pushed with its DTB at the clone's exit); it keeps the server's choice through
// its exec until a call shows the new program's name, then it leaves the set.
TEST(Tracer, ReadDataIsCopiedOnlyForTheServersProcesses) {
  struct Server final : GuestQueries {
    Result<std::optional<ProcInfo>> pid(std::uint32_t p) override {
      if (p == kShell) return std::optional<ProcInfo>(ProcInfo{kShell, kOldDtb, "dropbear"});
      if (p == kChild) return std::optional<ProcInfo>(ProcInfo{kChild, kChildDtb, "dropbear"});
      return std::optional<ProcInfo>();
    }
    Result<std::vector<ProcInfo>> name(const std::string&) override { return std::vector<ProcInfo>{}; }
    std::optional<TaskInfo> task(std::uint64_t t) override {
      if (t == kShellTask) return TaskInfo{kOldDtb, "dropbear"};
      if (t == kChildTask) return TaskInfo{child_dtb, child_comm};
      return std::nullopt;
    }
    IdentityOffsets identity() override { return {}; }
    std::uint64_t child_dtb = kChildDtb;
    std::string child_comm = "dropbear";
  } guest;
  LogSink sink;
  auto cfg = config(true);
  cfg.read_data_comms = {"dropbear"};
  Tracer t(guest, sink, cfg, [](const std::string&) {});
  ASSERT_TRUE(t.trace_pid(kShell).ok());
  ASSERT_TRUE(t.apply().ok());
  Stream s;
  s.entry(kShell, kShellTask, kOldDtb, 57, {});
  s.exit(kShell, kShellTask, kOldDtb, 57, kChild);
  s.entry(kChild, kChildTask, kChildDtb, 0, {3, 0x1000, 64});
  s.exit(kChild, kChildTask, kChildDtb, 0, 5);
  for (const auto& e : s.events) ASSERT_TRUE(t.handle(e).ok());
  guest.child_dtb = kNewDtb;   // the child execs bash: its new mm is loaded
  Stream s2;
  s2.cr3(kChild, kChildTask, kChildDtb, kNewDtb);
  for (const auto& e : s2.events) ASSERT_TRUE(t.handle(e).ok());
  guest.child_comm = "bash";   // ... and the kernel names it after the new program
  Stream s3;
  s3.entry(kChild, kChildTask, kNewDtb, 0, {0, 0x1000, 64});
  s3.exit(kChild, kChildTask, kNewDtb, 0, 64);
  for (const auto& e : s3.events) ASSERT_TRUE(t.handle(e).ok());
  const std::vector<std::string> want = {
      "arg rules",
      fmt::format("dtbs {:#x}", kOldDtb),
      fmt::format("read data {:#x}", kOldDtb),
      fmt::format("dtbs {:#x} {:#x}", kOldDtb, kChildDtb),        // the fork child, before it runs
      fmt::format("read data {:#x} {:#x}", kOldDtb, kChildDtb),   // ... a server process: its reads too
      fmt::format("dtbs {:#x} {:#x}", kOldDtb, kNewDtb),          // its exec
      fmt::format("read data {:#x} {:#x}", kOldDtb, kNewDtb),     // still the server's choice
      fmt::format("read data {:#x}", kOldDtb),                    // bash's first call: not a server
  };
  EXPECT_EQ(sink.log, want);
  // Without read_data_comms (hvtrace trace) every process's reads are copied: the set goes back to
  // all (a session killed mid-way may have left one), and never changes after.
  LogSink plain;
  Tracer t2(guest, plain, config(true), [](const std::string&) {});
  ASSERT_TRUE(t2.trace_pid(kShell).ok());
  ASSERT_TRUE(t2.apply().ok());
  for (const auto& e : s.events) ASSERT_TRUE(t2.handle(e).ok());
  const auto read_data_lines = std::count_if(plain.log.begin(), plain.log.end(), [](const std::string& l) { return l.starts_with("read data"); });
  EXPECT_EQ(read_data_lines, 1);
  EXPECT_NE(std::find(plain.log.begin(), plain.log.end(), "read data all"), plain.log.end());
}

// The argument rules of the config reach the monitor as they are, and an empty list clears the
// rules a consumer before this one left.
TEST(Tracer, ArgRulesAndTheCr3FilterAreSentAtApply) {
  CommGuest fake;
  fake.running = {{kShell, kOldDtb, "sh"}};
  LogSink sink;
  auto cfg = config(true);
  cfg.read_data_comms = {"sh"};
  cfg.arg_rules = {abi::ArgRule{257, 0, 2, 0, 0x643}, abi::ArgRule{3, 1, 0, 0, 0}};
  Tracer t(fake, sink, cfg, [](const std::string&) {});
  ASSERT_TRUE(t.trace_pid(kShell).ok());
  ASSERT_TRUE(t.apply().ok());
  ASSERT_FALSE(sink.log.empty());
  EXPECT_NE(std::find(sink.log.begin(), sink.log.end(), "arg rules 0/257:2&0x643 1/3:0&0x0"), sink.log.end())
      << ::testing::PrintToString(sink.log);
  // Method 5 asks only for the CR3 writes leaving a traced address space; method 4 keeps the
  // paper's pre-filter, every write touching the set.
  EXPECT_TRUE(sink.cr3_leaving_only);
  auto m4 = cfg;
  m4.method = 4;
  LogSink s4;
  Tracer t4(fake, s4, m4, [](const std::string&) {});
  ASSERT_TRUE(t4.trace_pid(kShell).ok());
  ASSERT_TRUE(t4.apply().ok());
  EXPECT_EQ(s4.cr3, abi::Action::kSync);
  EXPECT_FALSE(s4.cr3_leaving_only);
}

// Method 5 on a guest whose exec can be read at begin_new_exec: the shell's exec is followed at
// that breakpoint (its new address space, from bprm->mm, joins the filter before the new program
// runs), so no CR3 event is asked for; forks are followed at wake_up_new_task, both only in traced
// address spaces, and the clone family's exits are no longer synchronous.
constexpr std::uint64_t kFollowVa = 0xffffffff81402000, kForkVa = 0xffffffff81100000;
constexpr std::uint64_t kBprm = 0xffff888001c00000, kBadBprm = 0xffff888001d00000, kHelperBprm = 0xffff888001e00000;

// A guest with the fork (wake_up_new_task) and exec (begin_new_exec) breakpoint symbols.
class BreakpointGuest : public GuestQueries {
 public:
  Result<std::vector<ProcInfo>> name(const std::string&) override { return std::vector<ProcInfo>{}; }
  IdentityOffsets identity() override { return {}; }
  std::optional<std::uint64_t> symbol(const std::string& n) override {
    if (n == kExecFollowSymbol) return kFollowVa;
    if (n == "wake_up_new_task") return kForkVa;
    return std::nullopt;
  }
  bool can_follow_exec() override { return true; }
};

class ExecGuest final : public BreakpointGuest {
 public:
  Result<std::optional<ProcInfo>> pid(std::uint32_t pid) override {
    if (pid == kShell) return std::optional<ProcInfo>(ProcInfo{kShell, kOldDtb, "sh"});
    return std::optional<ProcInfo>();
  }
  std::optional<TaskInfo> task(std::uint64_t t) override {
    if (t == kShellTask) return TaskInfo{kNewDtb, "calls", kShell, 1};
    return std::nullopt;
  }
  std::optional<ExecInfo> exec(unsigned cpu, std::uint64_t bprm) override {
    asked.emplace_back(cpu, bprm);
    if (bprm == kBprm) return ExecInfo{kShell, kShellTask, kOldDtb, kNewDtb};
    if (bprm == kHelperBprm) return ExecInfo{2, 0xffff888000c00000, 0, kChildDtb};   // a kernel thread's usermode helper
    return std::nullopt;                                                              // unreadable
  }
  std::vector<std::pair<unsigned, std::uint64_t>> asked;
};


Stream exec_follow_program() {
  Stream s;
  s.entry(kShell, kShellTask, kOldDtb, 59, {0x1000, 0x2000, 0x3000}, {{0, abi::CaptureKind::kString, "/tmp/calls"}});
  s.bp(kExecFollowBreakpointId, kFollowVa, kOldDtb | 0x3, kHelperBprm, abi::BreakpointKind::kKernelTraced);
  s.bp(kExecFollowBreakpointId, kFollowVa, kOldDtb | 0x3, kBadBprm, abi::BreakpointKind::kKernelTraced);
  s.bp(kExecFollowBreakpointId, kFollowVa, kOldDtb | 0x3, kBprm, abi::BreakpointKind::kKernelTraced);
  s.exit(kShell, kShellTask, kNewDtb, 59, 0);
  s.entry(kShell, kShellTask, kNewDtb, 257, {static_cast<std::uint64_t>(-100), 0x4000, 0},
          {{1, abi::CaptureKind::kString, "/etc/hostname"}});
  s.exit(kShell, kShellTask, kNewDtb, 257, 3);
  s.entry(kShell, kShellTask, kNewDtb, 231, {3});
  return s;
}

TEST(Tracer, Method5FollowsExecsAtABreakpointInTracedAddressSpacesInsteadOfCr3Events) {
  const auto rec = temp("exec-follow.rec");
  ExecGuest guest;
  LogSink sink;
  std::vector<std::string> lines;
  std::optional<TraceStats> stats;
  {
    LiveRecording lr(guest, rec);
    Tracer t(*lr.q, sink, config(true), [&](const std::string& l) { lines.push_back(l); });
    t.set_realtime_offset(0);
    RecordedTargets targets;
    targets.pids = {kShell};
    targets.follow = true;
    ASSERT_TRUE(apply_targets(t, targets).ok());
    lr.start(targets);
    ASSERT_TRUE(t.apply().ok());
    for (const auto& e : exec_follow_program().events) {
      if (lr.w) lr.w->event(e);
      ASSERT_TRUE(t.handle(e).ok());
    }
    stats = t.stats();
    EXPECT_TRUE(t.detach().ok());
    t.finish({}, {}, {});
    lr.close();
  }
  const int traced = static_cast<int>(abi::BreakpointKind::kKernelTraced), sync = static_cast<int>(abi::Action::kSync);
  const std::vector<std::string> want = {
      "remove 0x74720001",
      fmt::format("add 0x74720001 {:#x} {} {} 0", kForkVa, traced, sync),     // forks: only in traced address spaces
      "remove 0x74720003",
      fmt::format("add 0x74720003 {:#x} {} {} 0", kFollowVa, traced, sync),   // execs: likewise
      "arg rules",
      "read data all",
      fmt::format("dtbs {:#x}", kOldDtb),
      fmt::format("dtbs {:#x}", kNewDtb),                                     // at the readable exec
      "dtbs",                                                                 // exited
      "remove 0x74720001",
      "remove 0x74720003",
  };
  EXPECT_EQ(sink.log, want);
  EXPECT_EQ(sink.cr3, abi::Action::kDrop) << "no CR3 event is needed to follow an exec";
  EXPECT_EQ(sink.sync_nrs, 0u) << "with the fork breakpoint, clone exits need not pause the guest";
  ASSERT_EQ(guest.asked.size(), 3u);
  EXPECT_EQ(guest.asked[2], (std::pair<unsigned, std::uint64_t>{0, kBprm})) << "the vCPU and bprm (rdi) of the hit";
  EXPECT_EQ(stats->execs_followed, 1u);
  EXPECT_EQ(stats->execs_unread, 1u) << "the unreadable one is counted; the kernel thread's is not the shell's";
  const std::vector<std::string> want_lines = {
      R"([pid   100] execve("/tmp/calls", 0x2000, 0x3000) = 0)",
      R"([pid   100] openat(AT_FDCWD, "/etc/hostname", O_RDONLY) = 3)",
      "[pid   100] exit_group(3)               = ?",
      "[pid   100] +++ exited with 3 +++",
  };
  EXPECT_EQ(lines, want_lines);
  // The recording answers the exec questions as the live guest did: the replay prints the same.
  const auto got = replay(rec, config(true));
  EXPECT_FALSE(got.error) << *got.error;
  EXPECT_EQ(got.lines, lines);
  fs::remove(rec);

  // Method 4 keeps the paper's CR3 events; a guest that cannot read bprm->mm keeps them too.
  auto m4 = config(true);
  m4.method = 4;
  LogSink s4;
  Tracer t4(guest, s4, m4, [](const std::string&) {});
  ASSERT_TRUE(t4.trace_pid(kShell).ok());
  ASSERT_TRUE(t4.apply().ok());
  EXPECT_EQ(s4.cr3, abi::Action::kSync);
  EXPECT_EQ(std::count_if(s4.log.begin(), s4.log.end(), [](const std::string& l) { return l.starts_with("add 0x74720003"); }), 0);
}

// A pipeline's child may run into its exec before its parent's clone returns (the parent preempted
// on a loaded guest). The child's exec is followed at begin_new_exec; the parent's clone exit then
// finds the child still inside that exec, its mm not yet switched: the child keeps the address
// space the exec breakpoint gave it, or its new program's calls would never be delivered.
constexpr std::uint64_t kChildBprm = 0xffff888001f00000, kChildNewDtb = 0x4000000;

class PipelineGuest final : public BreakpointGuest {
 public:
  Result<std::optional<ProcInfo>> pid(std::uint32_t pid) override {
    if (pid == kShell) return std::optional<ProcInfo>(ProcInfo{kShell, kOldDtb, "sh"});
    if (pid == kChild) return std::optional<ProcInfo>(ProcInfo{kChild, kChildDtb, "sh"});   // mid-exec: the old mm
    return std::optional<ProcInfo>();
  }
  std::optional<TaskInfo> task(std::uint64_t t) override {
    if (t == kChildTask) return TaskInfo{kChildDtb, "sh", kChild, kShell};   // at wake_up_new_task
    return std::nullopt;
  }
  std::optional<ExecInfo> exec(unsigned, std::uint64_t bprm) override {
    if (bprm == kChildBprm) return ExecInfo{kChild, kChildTask, kChildDtb, kChildNewDtb};
    return std::nullopt;
  }
};

// The shell traced on PipelineGuest: its lines and the DTB sets sent to the monitor.
struct ShellRun {
  PipelineGuest guest;
  LogSink sink;
  std::vector<std::string> lines;
  Tracer t;
  explicit ShellRun(const TraceConfig& cfg) : t(guest, sink, cfg, [this](const std::string& l) { lines.push_back(l); }) {
    EXPECT_TRUE(t.trace_pid(kShell).ok());
    EXPECT_TRUE(t.apply().ok());
  }
  void run(const Stream& s) {
    for (const auto& e : s.events) ASSERT_TRUE(t.handle(e).ok());
  }
  [[nodiscard]] std::vector<std::string> dtbs() const {
    std::vector<std::string> v;
    std::copy_if(sink.log.begin(), sink.log.end(), std::back_inserter(v), [](const std::string& l) { return l.starts_with("dtbs"); });
    return v;
  }
};

TEST(Tracer, AChildThatExecsBeforeItsParentsCloneReturnsKeepsItsNewAddressSpace) {
  ShellRun r(config(true));
  Stream s;
  s.entry(kShell, kShellTask, kOldDtb, 56, {0x1200011, 0, 0, 0});
  s.bp(kForkBreakpointId, kForkVa, kOldDtb | 0x3, kChildTask, abi::BreakpointKind::kKernelTraced);
  s.entry(kChild, kChildTask, kChildDtb, 59, {0x1000, 0x2000, 0x3000}, {{0, abi::CaptureKind::kString, "/usr/bin/wc"}});
  s.bp(kExecFollowBreakpointId, kFollowVa, kChildDtb | 0x3, kChildBprm, abi::BreakpointKind::kKernelTraced);
  s.exit(kShell, kShellTask, kOldDtb, 56, kChild);   // the parent's clone returns only now
  s.exit(kChild, kChildTask, kChildNewDtb, 59, 0);
  s.entry(kChild, kChildTask, kChildNewDtb, 0, {0, 0x5000, 16});
  s.exit(kChild, kChildTask, kChildNewDtb, 0, 0);
  r.run(s);
  const std::vector<std::string> want = {
      fmt::format("dtbs {:#x}", kOldDtb),
      fmt::format("dtbs {:#x} {:#x}", kOldDtb, kChildDtb),      // at the fork breakpoint
      fmt::format("dtbs {:#x} {:#x}", kOldDtb, kChildNewDtb),   // at the child's exec; and no change at the clone exit
  };
  EXPECT_EQ(r.dtbs(), want);
  EXPECT_EQ(r.t.stats().execs_followed, 1u);
}

// An exec followed at begin_new_exec is complete there: a program that makes no further call in
// the set before it ends (`sleep 100 &`) still shows its execve, with the breakpoint's time.
TEST(Tracer, AnExecFollowedAtTheBreakpointIsCompleteThere) {
  ShellRun r(config(true));
  std::vector<std::string> execs;
  r.t.set_call_hook([&](const CallRecord& rec, const syscalls::Call& c) {
    if (rec.f.name == "execve") execs.push_back(fmt::format("{} {} {}", rec.pid, c.ret.value_or(-1), rec.exit_ns));
  });
  Stream s;
  s.entry(kShell, kShellTask, kOldDtb, 56, {0x1200011, 0, 0, 0});
  s.bp(kForkBreakpointId, kForkVa, kOldDtb | 0x3, kChildTask, abi::BreakpointKind::kKernelTraced);
  s.exit(kShell, kShellTask, kOldDtb, 56, kChild);
  s.entry(kChild, kChildTask, kChildDtb, 59, {0x1000, 0x2000, 0x3000}, {{0, abi::CaptureKind::kString, "/usr/bin/wc"}});
  s.bp(kExecFollowBreakpointId, kFollowVa, kChildDtb | 0x3, kChildBprm, abi::BreakpointKind::kKernelTraced);
  r.run(s);
  ASSERT_EQ(execs.size(), 1u) << "completed at the breakpoint, with no later call of the child";
  EXPECT_EQ(execs[0], fmt::format("{} 0 {}", kChild, s.events.back().time_ns));
  EXPECT_TRUE(std::any_of(r.lines.begin(), r.lines.end(), [](const std::string& l) {
    return l.find("execve(\"/usr/bin/wc\"") != std::string::npos && l.ends_with("= 0");
  })) << fmt::format("{}", fmt::join(r.lines, "\n"));
}

// The fork hook runs at the fork breakpoint, before the child's first instruction and before the
// parent's clone returns, with the child's address space already in the filter.
TEST(Tracer, TheForkHookSeesTheChildAtTheForkBreakpointBeforeTheCloneReturns) {
  ShellRun r(config(true));
  std::vector<std::string> seen;
  r.t.set_fork_hook([&](std::uint32_t child, std::uint32_t parent, std::uint64_t dtb, const std::string& comm) {
    seen.push_back(fmt::format("fork {} {} {:#x} {} (dtb sets so far: {})", child, parent, dtb, comm, r.dtbs().size()));
  });
  r.t.set_call_hook([&](const CallRecord& rec, const syscalls::Call&) { seen.push_back(fmt::format("call {} {}", rec.pid, rec.f.name)); });
  Stream s;
  s.entry(kShell, kShellTask, kOldDtb, 56, {0x1200011, 0, 0, 0});
  s.bp(kForkBreakpointId, kForkVa, kOldDtb | 0x3, kChildTask, abi::BreakpointKind::kKernelTraced);
  s.exit(kShell, kShellTask, kOldDtb, 56, kChild);
  r.run(s);
  const std::vector<std::string> want = {
      fmt::format("fork {} {} {:#x} sh (dtb sets so far: 2)", kChild, kShell, kChildDtb),
      fmt::format("call {} clone", kShell),
  };
  EXPECT_EQ(seen, want);
}

// A child killed by a signal never calls exit_group: its parent reaping it (wait4's status) is when
// it is known gone. Its open call ends as strace ends it, its death is printed, and its address
// space leaves the filter (that page-table root is soon another process's). A child reaped
// stopped (WUNTRACED) is alive and stays.
std::string status_bytes(std::int32_t st) {
  std::string b(4, '\0');
  std::memcpy(b.data(), &st, 4);
  return b;
}

TEST(Tracer, AChildKilledBySignalIsPrintedAndLeavesTheFilterWhenItsParentReapsIt) {
  ShellRun r(config(true));
  Stream s;
  s.bp(kForkBreakpointId, kForkVa, kOldDtb | 0x3, kChildTask, abi::BreakpointKind::kKernelTraced);
  s.entry(kChild, kChildTask, kChildDtb, 0, {0, 0x5000, 16});   // read(0, ...): blocked, then SIGINT
  s.entry(kShell, kShellTask, kOldDtb, 61, {~0ULL, 0x7000, 2, 0});   // wait4(-1, &st, WUNTRACED, NULL)
  s.exit(kShell, kShellTask, kOldDtb, 61, kChild, {{1, abi::CaptureKind::kBuffer, status_bytes(0x137f)}});   // stopped
  s.entry(kShell, kShellTask, kOldDtb, 61, {~0ULL, 0x7000, 0, 0});
  s.exit(kShell, kShellTask, kOldDtb, 61, kChild, {{1, abi::CaptureKind::kBuffer, status_bytes(2)}});   // SIGINT
  r.run(s);
  const auto& lines = r.lines;
  const std::vector<std::string> want_dtbs = {
      fmt::format("dtbs {:#x}", kOldDtb),
      fmt::format("dtbs {:#x} {:#x}", kOldDtb, kChildDtb),
      fmt::format("dtbs {:#x}", kOldDtb),   // reaped dead, not when reaped stopped
  };
  EXPECT_EQ(r.dtbs(), want_dtbs);
  ASSERT_GE(lines.size(), 3u);
  EXPECT_EQ(lines[lines.size() - 3], "[pid   100] wait4(-1, [{WIFSIGNALED(s) && WTERMSIG(s) == SIGINT}], 0, NULL) = 200");
  EXPECT_EQ(lines[lines.size() - 2], "[pid   200] read(0, 0x5000, 16)         = ?");
  EXPECT_EQ(lines.back(), "[pid   200] +++ killed by SIGINT +++");
}

// A call that returned into a signal handler (the monitor read its result from the signal frame):
// the call with that result, then the signal, as strace shows a delivered signal.
TEST(Tracer, ACallReturningIntoASignalHandlerIsFollowedByTheSignal) {
  for (const bool json : {false, true}) {
    ShellRun r(config(false, "", json));
    const auto& lines = r.lines;
    Stream s;
    s.entry(kShell, kShellTask, kOldDtb, 56, {0x1200011, 0, 0, 0});
    s.exit(kShell, kShellTask, kOldDtb, 56, kChild, {}, 17);
    s.entry(kShell, kShellTask, kOldDtb, 15, {});
    s.exit(kShell, kShellTask, kOldDtb, 15, kChild);
    r.run(s);
    if (!json) {
      ASSERT_EQ(lines.size(), 3u);
      EXPECT_TRUE(lines[0].starts_with("clone(")) << lines[0];
      EXPECT_TRUE(lines[0].ends_with("= 200")) << lines[0];
      EXPECT_EQ(lines[1], "--- SIGCHLD ---");
      EXPECT_EQ(lines[2], "rt_sigreturn()                          = 200");
    } else {
      ASSERT_EQ(lines.size(), 2u);
      const auto j = nlohmann::json::parse(lines[0]);
      EXPECT_EQ(j["ret"], 200);
      EXPECT_EQ(j["signal"], "SIGCHLD");
      EXPECT_FALSE(nlohmann::json::parse(lines[1]).contains("signal"));
    }
  }
}

// Until the monitor has retranslated the code at the breakpoints (a flush some vCPU queues later),
// they do not fire: the clone exits and CR3 events stand in, and are dropped once they do.
TEST(Tracer, CloneExitsAndCr3EventsStandInUntilTheBreakpointsAreInForce) {
  ExecGuest guest;
  LogSink sink;
  sink.in_force = false;
  Tracer t(guest, sink, config(true), [](const std::string&) {});
  ASSERT_TRUE(t.trace_pid(kShell).ok());
  ASSERT_TRUE(t.apply().ok());
  EXPECT_EQ(sink.cr3, abi::Action::kSync);
  EXPECT_GT(sink.sync_nrs, 0u) << "the clone family's exits pause the guest meanwhile";
  auto evs = exec_follow_program().events;
  ASSERT_TRUE(t.handle(evs[0]).ok());
  EXPECT_EQ(sink.cr3, abi::Action::kSync) << "still not in force";
  const std::size_t before = sink.sync_nrs;
  sink.in_force = true;
  ASSERT_TRUE(t.handle(evs[1]).ok());
  EXPECT_EQ(sink.cr3, abi::Action::kDrop) << "in force: the exec breakpoint follows execs alone";
  EXPECT_EQ(sink.sync_nrs, before) << "and the clone exits are sent with no sync set";
}

TEST(Recording, CommStartedLaterReplaysToIdenticalOutput) {
  const auto p = temp("comm.rec");
  for (const auto& cfg : {config(false), config(true), config(false, "", true)}) {
    const auto want = comm_live(cfg, true, p);
    ASSERT_FALSE(want.lines.empty());
    const auto got = replay(p, cfg);   // the names come from the recording's targets
    EXPECT_FALSE(got.error) << *got.error;
    EXPECT_EQ(got.lines, want.lines);
  }
  fs::remove(p);
}

TEST(Recording, ReplaysToIdenticalOutput) {
  const auto p = temp("same.rec");
  for (const auto& cfg : {config(true), config(false), config(true, "openat"), config(true, "%process", true)}) {
    const auto want = live(cfg, p);
    const auto got = replay(p, cfg);
    EXPECT_FALSE(got.error) << *got.error;
    EXPECT_EQ(got.lines, want);
  }
  // A replay with a narrower -e than the recording's run: the same lines as live with that -e.
  (void)live(config(true), p);
  const auto got = replay(p, config(true, "openat"));
  EXPECT_FALSE(got.error);
  EXPECT_EQ(got.lines, live(config(true, "openat")));
  fs::remove(p);
}

TEST(Recording, AReplayCannotWidenWhatWasRecorded) {
  // Recorded without -f: the child's events are in the stream (the synthetic monitor delivered
  // them) but the live run never asked about the child; a replay with -f shows no more of it
  // than the recording's answers allow, and does not crash.
  const auto p = temp("narrow.rec");
  (void)live(config(false), p);
  const auto got = replay(p, config(true));
  EXPECT_FALSE(got.error);
  for (const auto& l : got.lines) EXPECT_EQ(l.find("[pid   200] write("), std::string::npos) << l;
  fs::remove(p);
}

TEST(Recording, TruncatedFilesDecodeWhatIsValidThenNameTheOffset) {
  const auto p = temp("trunc.rec");
  const auto full_lines = live(config(true), p);
  const std::string bytes = slurp(p);
  fs::remove(p);
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    const auto got = replay_bytes(bytes.substr(0, n), config(true));
    ASSERT_TRUE(got.error) << "cut at " << n;
    // Every line printed is a line of the full run (the open calls print as <unfinished ...>).
    EXPECT_LE(got.lines.size(), full_lines.size() + 2) << n;
    if (got.error->find("corrupt at byte") == std::string::npos) {
      EXPECT_TRUE(got.error->find("header") != std::string::npos || got.error->find("not an hvtrace recording") != std::string::npos)
          << *got.error;
    }
  }
  // Cut in the middle of the last frame: the error names where that frame starts.
  const auto got = replay_bytes(bytes.substr(0, bytes.size() - 3), config(true));
  ASSERT_TRUE(got.error);
  EXPECT_NE(got.error->find("corrupt at byte"), std::string::npos) << *got.error;
  EXPECT_NE(got.error->find("truncated frame"), std::string::npos) << *got.error;
}

TEST(Recording, CorruptBytesAreErrorsNotCrashes) {
  const auto p = temp("corrupt.rec");
  (void)live(config(true), p);
  const std::string bytes = slurp(p);
  fs::remove(p);
  for (std::size_t i = 0; i < bytes.size(); ++i)
    for (const char v : {'\xff', '\x00', '\x7f'}) {
      std::string b = bytes;
      if (b[i] == v) continue;
      b[i] = v;
      (void)replay_bytes(b, config(true));   // ASan/UBSan builds check that this stays in bounds
    }
  std::string b = bytes;
  b[0] = 'X';
  const auto bad_magic = replay_bytes(b, config(true));
  ASSERT_TRUE(bad_magic.error);
  EXPECT_NE(bad_magic.error->find("not an hvtrace recording"), std::string::npos);
  // A frame that claims more than the limit is refused before anything is allocated.
  RecordingHeader h;
  h.abi_version = abi::kAbiVersion;
  const auto q = temp("huge.rec");
  {
    auto w = RecordingWriter::create(q, h);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->close().ok());
  }
  std::string huge = slurp(q);
  fs::remove(q);
  const std::uint32_t frame[2] = {1, 0xffffffffu};
  huge.append(reinterpret_cast<const char*>(frame), sizeof frame);
  const auto got = replay_bytes(huge, config(true));
  ASSERT_TRUE(got.error);
  EXPECT_NE(got.error->find(fmt::format("corrupt at byte {}", huge.size() - 8)), std::string::npos) << *got.error;
}

TEST(Recording, EncodeRecordIsTheInverseOfDecode) {
  for (const auto& e : program().events) {
    const auto b = encode_record(e);
    auto d = events::decode_record(b.data(), b.size());
    ASSERT_TRUE(d.ok()) << d.error().message;
    EXPECT_EQ(encode_record(*d), b);
    EXPECT_EQ(d->captures.size(), e.captures.size());
  }
}

}  // namespace
}  // namespace hvtrace::trace
