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
            const std::vector<Cap>& caps = {}) {
    abi::SyscallExitEvent e{};
    e.nr = nr;
    e.ret = ret;
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

// The live run: the stream through the Tracer with the fake guest, recorded to `rec` if given.
std::vector<std::string> live(const TraceConfig& cfg, const std::optional<fs::path>& rec = std::nullopt) {
  FakeGuest fake;
  NullSink sink;
  std::unique_ptr<RecordingWriter> w;
  std::optional<RecordingGuest> rg;
  GuestQueries* q = &fake;
  if (rec) {
    RecordingHeader h;
    h.abi_version = abi::kAbiVersion;
    h.command_line = "hvtrace trace -w x -- /tmp/calls";
    auto c = RecordingWriter::create(*rec, h);
    EXPECT_TRUE(c.ok());
    w = std::move(*c);
    rg.emplace(fake, *w);
    q = &*rg;
  }
  std::vector<std::string> lines;
  Tracer t(*q, sink, cfg, [&](const std::string& l) { lines.push_back(l); });
  t.set_realtime_offset(0);
  RecordedTargets targets;
  targets.start_at_exec = kShell;
  targets.follow = cfg.follow;
  EXPECT_TRUE(apply_targets(t, targets).ok());
  if (w) {
    w->guest_names({});
    w->targets(targets);
  }
  EXPECT_TRUE(t.apply().ok());
  for (const auto& e : program().events) {
    if (w) w->event(e);
    EXPECT_TRUE(t.handle(e).ok());
  }
  t.finish({}, {}, {});
  if (w) {
    w->counters(RecordedCounters{{events::RingStats{}}, {}, {}});
    EXPECT_TRUE(w->close().ok());
  }
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
