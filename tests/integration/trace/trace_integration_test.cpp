// `hvtrace trace` against ground truth: programs run in the guest under the guest's own strace and
// under hvtrace (from outside), their calls compared on what both see — the syscall, its decoded
// path argument where it has one, and its return value or errno. Also: following a pipeline's
// children, process-bound traces with a busy unrelated process, a traced process whose page-table
// root is reused after it exits, all four methods, --comm for a program started after the
// trace, and bad input.
#include "vm/process.hpp"
#include "vm/vm.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <set>
#include <sstream>

namespace hvtrace {
namespace {

using namespace std::chrono_literals;
// One binary per image: default (6.1) and bpo (6.12). HVTRACE_TRACE_VM_NAME renames the VM, so two
// checkouts can run the same binary at once.
const char* const kVm = std::getenv("HVTRACE_TRACE_VM_NAME") != nullptr ? std::getenv("HVTRACE_TRACE_VM_NAME") : HVTRACE_TRACE_VM;

// One call as both tools print it, reduced to what both see.
struct Line {
  long pid = 0;
  std::string name, path, ret;
  bool operator==(const Line& o) const { return name == o.name && path == o.path && ret == o.ret; }
};
std::ostream& operator<<(std::ostream& os, const Line& l) { return os << l.pid << " " << l.name << "(" << l.path << ") = " << l.ret; }

// Parses strace's and hvtrace's text: an optional pid prefix ("123 " from strace -f -o, "[pid  123] "
// from hvtrace), name(args) = ret. Interrupted lines are skipped (both tools split them alike only
// sometimes); returns of address-valued calls are masked.
std::vector<Line> parse(const std::string& text) {
  static const std::string pfx = R"(^(?:\[pid\s+(\d+)(?:/\d+)?\] |(\d+) +)?)";
  static const std::regex re(pfx + R"(([a-z_0-9]+)\((.*)\)\s+= (.*)$)");
  static const std::regex unfinished(pfx + R"(([a-z_0-9]+)\((.*) <unfinished \.\.\.>$)");
  static const std::regex resumed(pfx + R"(<\.\.\. ([a-z_0-9]+) resumed>(.*)\)\s+= (.*)$)");
  static const std::regex path_re(R"re(^(?:AT_FDCWD, )?"([^"]*)")re");
  std::map<long, std::pair<std::string, std::string>> open;   // pid -> (name, args so far)
  std::vector<Line> out;
  std::istringstream in(text);
  for (std::string s; std::getline(in, s);) {
    std::smatch m;
    std::string name, args, ret;
    long pid = 0;
    const auto pid_of = [&] { return std::stol(m[1].matched ? m[1].str() : m[2].matched ? m[2].str() : "0"); };
    if (std::regex_match(s, m, unfinished)) {
      open[pid_of()] = {m[3], m[4]};
      continue;
    }
    if (std::regex_match(s, m, resumed)) {
      pid = pid_of();
      auto it = open.find(pid);
      if (it == open.end() || it->second.first != m[3].str()) continue;
      name = m[3];
      args = it->second.second + m[4].str();
      ret = m[5];
      open.erase(it);
    } else if (std::regex_match(s, m, re)) {
      pid = pid_of();
      name = m[3];
      args = m[4];
      ret = m[5];
    } else {
      continue;
    }
    Line l;
    l.pid = pid;
    l.name = name;
    std::smatch pm;
    if (std::regex_search(args, pm, path_re)) l.path = pm[1];
    l.ret = ret;
    if (auto sp = l.ret.find(" <"); sp != std::string::npos) l.ret.resize(sp);   // -T
    while (!l.ret.empty() && l.ret.back() == ' ') l.ret.pop_back();
    if (l.name == "mmap" || l.name == "brk" || l.name == "mremap" || l.name == "set_tid_address" ||
        l.name == "clone" || l.name == "clone3" || l.name == "fork" || l.name == "vfork" || l.name == "wait4")
      l.ret = "*";   // addresses and pids differ between two runs
    if (l.name == "getpid" || l.name == "getppid" || l.name == "gettid" || l.name == "rt_sigreturn") l.ret = "*";
    if (l.name == "getrandom") l.path.clear();   // random bytes, not a path
    out.push_back(std::move(l));
  }
  return out;
}

class Trace : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto img = vm::load_image(vm::image_dir(HVTRACE_TRACE_IMAGE));
    ASSERT_TRUE(img.ok()) << img.error().message;
    vm::VmConfig c;
    c.name = kVm;
    c.image = std::move(img).value();
    c.plugin = vm::monitor_plugin(HVTRACE_MONITOR_PLUGIN, kVm, {});
    auto v = vm::Vm::start(c);
    ASSERT_TRUE(v.ok()) << v.error().message;
    vm_ = std::move(v).value().release();
    compile_in_guest(HVTRACE_CALLS_SOURCE, "/tmp/calls");
    compile_in_guest(HVTRACE_THREADS_SOURCE, "/tmp/threads", " -lpthread");
    compile_in_guest(HVTRACE_ELF32_SOURCE, "/tmp/elf32gen");
  }
  static void TearDownTestSuite() {
    if (vm_) (void)vm_->shutdown();
    delete vm_;
  }
  // A C source of this repository compiled in the guest with tcc, as `binary`.
  static void compile_in_guest(const char* source, const std::string& binary, const std::string& flags = "") {
    std::ifstream f(source);
    std::stringstream src;
    src << f.rdbuf();
    ASSERT_FALSE(src.str().empty()) << source;
    const auto put = vm_->put_file(binary + ".c", src.str());
    ASSERT_TRUE(put.ok()) << put.error().message;
    guest("tcc -o " + binary + " " + binary + ".c" + flags);
  }
  static std::string guest(const std::string& cmd, int want_status = 0) {
    auto r = vm_->exec(cmd, 300s);
    EXPECT_TRUE(r.ok()) << cmd << ": " << (r.ok() ? "" : r.error().message);
    if (!r.ok()) return "";
    EXPECT_EQ(r->exit_status, want_status) << cmd << ": " << r->err;
    return r->out;
  }
  // hvtrace with these arguments; the trace goes to a file, returned in .out.
  static vm::ProcessResult hvtrace(std::vector<std::string> args, std::chrono::seconds deadline = 300s) {
    std::vector<std::string> argv = {HVTRACE_BIN};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = vm::run_process(argv, deadline);
    if (!r) return vm::ProcessResult{-1, "", r.error().message};
    return std::move(r).value();
  }
  static std::string slurp(const std::string& path) {
    std::ifstream f(path);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
  }
  // The same command under hvtrace (host) and the guest's strace; both parsed.
  static std::pair<std::vector<Line>, std::vector<Line>> both(const std::vector<std::string>& cmd, bool follow,
                                                              const std::string& method = "5") {
    const std::string out = ::testing::TempDir() + "hvtrace-trace.txt";
    std::vector<std::string> a = {"trace", "--vm", kVm, "--method", method, "-o", out};
    if (follow) a.push_back("-f");
    a.push_back("--");
    a.insert(a.end(), cmd.begin(), cmd.end());
    const auto r = hvtrace(a);
    EXPECT_NE(r.exit_code, -1) << r.err;
    EXPECT_EQ(r.err.find("lost"), std::string::npos) << r.err;
    const std::string mine = slurp(out);
    std::string quoted;
    for (const auto& w : cmd) quoted += vm::shell_quote(w) + " ";
    // CMD's output goes to a pipe in both runs (under hvtrace: the SSH session's).
    guest("strace " + std::string(follow ? "-f " : "") + "-o /tmp/strace.txt " + quoted + " 2>&1 | cat >/dev/null; true");
    return {parse(mine), parse(guest("cat /tmp/strace.txt"))};
  }
  static inline vm::Vm* vm_ = nullptr;
};

// Per process in order of first appearance, so pids need not match between the two runs.
std::vector<std::vector<Line>> by_process(const std::vector<Line>& v) {
  std::vector<long> order;
  std::map<long, std::vector<Line>> m;
  for (const auto& l : v) {
    if (!m.count(l.pid)) order.push_back(l.pid);
    m[l.pid].push_back(l);
  }
  std::vector<std::vector<Line>> out;
  for (long p : order) out.push_back(m[p]);
  return out;
}

// What only one side saw, for a failure message a person can act on.
std::string difference(const std::multiset<std::string>& mine, const std::multiset<std::string>& truth) {
  std::vector<std::string> only_mine, only_truth;
  std::set_difference(mine.begin(), mine.end(), truth.begin(), truth.end(), std::back_inserter(only_mine));
  std::set_difference(truth.begin(), truth.end(), mine.begin(), mine.end(), std::back_inserter(only_truth));
  return fmt::format("only hvtrace: {}\nonly strace: {}", fmt::join(only_mine, " "), fmt::join(only_truth, " "));
}

TEST_F(Trace, ShortProgramMatchesTheGuestsStraceCallByCall) {
  auto [mine, truth] = both({"/tmp/calls"}, false);
  ASSERT_GT(truth.size(), 20u);
  EXPECT_EQ(mine, truth);
  // The failing calls are there with their errno names.
  bool enoent = false, ebadf = false;
  for (const auto& l : mine) {
    enoent |= l.name == "openat" && l.path == "/nonexistent/hvtrace" && l.ret.find("ENOENT") != std::string::npos;
    ebadf |= l.name == "close" && l.ret.find("EBADF") != std::string::npos;
  }
  EXPECT_TRUE(enoent && ebadf);
}

TEST_F(Trace, TenThousandCallsMatchTheGuestsStrace) {
  auto [mine, truth] = both({"/tmp/calls", "2600"}, false);
  ASSERT_GT(truth.size(), 10'000u);
  EXPECT_EQ(mine.size(), truth.size());
  EXPECT_EQ(mine, truth);
}

// A real 32-bit program (tests/integration/monitor/guest/elf32.c writes it: a static ELF32 i386
// executable, no libc) enters through `int $0x80`, the vDSO's __kernel_vsyscall and, in a forked
// child, a direct `sysenter`: trace -f prints every call with its i386 name and decoded arguments,
// marked [i386], and sees what the guest's strace sees (which reports "runs in 32 bit mode").
TEST_F(Trace, A32BitProgramsCallsHaveTheirI386NamesLikeTheGuestsStrace) {
  guest("/tmp/elf32gen /tmp/elf32");
  auto [mine, truth] = both({"/tmp/elf32"}, true);
  const std::string text = slurp(::testing::TempDir() + "hvtrace-trace.txt");
  // Lines as strace prints them, with trace's [i386] mark (the padding to column 40 aside).
  for (const char* want : {R"(open\("/tmp/elf32-out", O_WRONLY\|O_CREAT\|O_TRUNC, 0644\) += 3 \[i386\])",
                           R"(write\(3, "elf32-int80\\n", 12\) += 12 \[i386\])",
                           R"(write\(1, "elf32-int80\\n", 12\) += 12 \[i386\])",
                           R"(write\(1, "elf32-vdso\\n", 11\) += 11 \[i386\])",
                           R"(write\(1, "elf32-sysenter\\n", 15\) += 15 \[i386\])",
                           R"(fork\(\) += \d+ \[i386\])",
                           R"(waitpid\(\d+, \[\{WIFEXITED\(s\) && WEXITSTATUS\(s\) == 0\}\], 0\) += \d+ \[i386\])",
                           R"(close\(3\) += 0 \[i386\])",
                           R"(exit\(0\) += \? \[i386\])",
                           R"(exit\(42\) += \? \[i386\])",
                           R"(\+\+\+ exited with 42 \+\+\+)"})
    EXPECT_TRUE(std::regex_search(text, std::regex(want))) << want << " not in:\n" << text;
  const std::string strace_text = guest("cat /tmp/strace.txt");
  // strace says so in its trace when written to stderr (not into an -o file).
  EXPECT_NE(guest("strace /tmp/elf32 2>&1 >/dev/null | grep 'runs in 32 bit mode'").find("runs in 32 bit mode"), std::string::npos);
  // Call by call what strace saw, per process; the [i386] mark is trace's own, and fork's and
  // waitpid's pids differ (the status both decode alike).
  const auto normalize = [](std::vector<Line> v) {
    for (auto& l : v) {
      if (l.ret.size() > 7 && l.ret.ends_with(" [i386]")) l.ret.resize(l.ret.size() - 7);
      if (l.name == "waitpid") l.ret = "*";
    }
    return by_process(v);
  };
  const auto m = normalize(mine), t = normalize(truth);
  ASSERT_EQ(m.size(), 2u) << text;
  EXPECT_EQ(m, t) << text << "\nstrace:\n" << strace_text;
  ASSERT_FALSE(m[0].empty());
  EXPECT_EQ(m[0].front().name, "execve") << "the 64-bit execve that started it";
}

TEST_F(Trace, FollowsAPipelinesChildren) {
  auto [mine, truth] = both({"sh", "-c", "cat /etc/passwd | grep root | wc -l"}, true);
  const auto m = by_process(mine), t = by_process(truth);
  ASSERT_EQ(m.size(), t.size()) << "processes traced";
  ASSERT_GE(m.size(), 4u);   // sh, cat, grep, wc
  // Each child's calls from its execve on (sh's own order of forks and waits may interleave differently).
  std::multiset<std::string> mine_execs, true_execs;
  for (const auto& l : mine)
    if (l.name == "execve") mine_execs.insert(l.path);
  for (const auto& l : truth)
    if (l.name == "execve") true_execs.insert(l.path);
  EXPECT_EQ(mine_execs, true_execs);
  // Whether the shell's wait4 is interrupted by SIGCHLD (and so how many wait4 and rt_sigreturn
  // calls it makes) depends on when its children finish in each of the two runs, not on the tracer.
  const auto timing = [](const Line& l) { return l.name == "wait4" || l.name == "rt_sigreturn" || l.name == "restart_syscall"; };
  std::multiset<std::string> mine_calls, true_calls;
  for (const auto& l : mine)
    if (!timing(l)) mine_calls.insert(l.name + "(" + l.path + ")=" + l.ret);
  for (const auto& l : truth)
    if (!timing(l)) true_calls.insert(l.name + "(" + l.path + ")=" + l.ret);
  EXPECT_EQ(mine_calls, true_calls) << difference(mine_calls, true_calls);
}

// Trace lines reduced to what hvtrace and strace both print of signals: no pid prefix, no [i386]
// mark, no alignment padding, strace's siginfo and sigreturn mask dropped.
std::vector<std::string> signal_lines(const std::string& text) {
  static const std::regex pfx(R"(^(?:\[pid\s+\d+\] |\d+ +))"), info(R"( \{si_signo=.*\} ---$)"),
      mask(R"(sigreturn\(\{mask=[^)]*\}\))"), pad(R"(\) +=)"), i386(R"( \[i386\]$)");
  std::vector<std::string> v;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) {
    l = std::regex_replace(l, pfx, "");
    l = std::regex_replace(l, info, " ---");
    l = std::regex_replace(l, mask, "sigreturn()");
    l = std::regex_replace(l, pad, ") =");
    v.push_back(std::regex_replace(l, i386, ""));
  }
  return v;
}

// A signal pending as a call returns (kill to itself) is delivered into its handler at that return:
// the call's result (from the signal frame) and then the signal, as the guest's strace prints them;
// a child killed by a signal (no exit_group) is said killed once its parent reaps it.
TEST_F(Trace, ASignalAtACallsReturnAndAChildKilledBySignalShowAsTheGuestsStraceShows) {
  const std::string cmd = R"(trap "true" USR1; kill -USR1 $$; sleep 30 & kill -TERM $!; wait $!; true)";
  const std::string set = "trace=kill,wait4,rt_sigreturn";
  const std::string out = ::testing::TempDir() + "hvtrace-signals.txt";
  const auto r = hvtrace({"trace", "--vm", kVm, "-f", "-e", set, "-o", out, "--", "sh", "-c", cmd});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  guest("strace -f -e " + set + " -o /tmp/strace-signals.txt sh -c " + vm::shell_quote(cmd) + " 2>&1 | cat >/dev/null; true");
  for (const auto& [who, v] : {std::pair{"hvtrace", signal_lines(slurp(out))}, std::pair{"strace", signal_lines(guest("cat /tmp/strace-signals.txt"))}}) {
    std::string all;
    for (const auto& l : v) all += l + "\n";
    const auto kill = std::find_if(v.begin(), v.end(), [](const std::string& l) { return l.starts_with("kill(") && l.find("SIGUSR1") != std::string::npos; });
    ASSERT_NE(kill, v.end()) << who << "\n" << all;
    EXPECT_TRUE(kill->ends_with("= 0")) << who << ": the call's own result\n" << all;
    ASSERT_NE(kill + 1, v.end()) << who;
    EXPECT_EQ(*(kill + 1), "--- SIGUSR1 ---") << who << "\n" << all;
    ASSERT_NE(kill + 2, v.end()) << who;
    EXPECT_EQ(*(kill + 2), "rt_sigreturn() = 0") << who << "\n" << all;
    EXPECT_EQ(std::count(v.begin(), v.end(), "+++ killed by SIGTERM +++"), 1) << who << "\n" << all;
    EXPECT_EQ(std::count_if(v.begin(), v.end(), [](const std::string& l) { return l.ends_with("= ?"); }), 0)
        << who << ": every call's result is known\n" << all;
  }
}

// The same in 32-bit mode, through both i386 signal frames (rt with SA_SIGINFO, the old one
// without): a real ELF32 program (elf32.c's `signals` program) kills itself with each signal.
TEST_F(Trace, A32BitProgramsSignalsThroughBothFramesShowAsTheGuestsStraceShows) {
  guest("/tmp/elf32gen /tmp/elf32sig signals");
  const std::string set = "trace=kill,rt_sigreturn,sigreturn";
  const std::string out = ::testing::TempDir() + "hvtrace-signals32.txt";
  const auto r = hvtrace({"trace", "--vm", kVm, "-e", set, "-o", out, "--", "/tmp/elf32sig"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  guest("strace -e " + set + " -o /tmp/strace-signals32.txt /tmp/elf32sig; true");
  const auto mine = signal_lines(slurp(out)), truth = signal_lines(guest("cat /tmp/strace-signals32.txt"));
  const auto calls = [](const std::vector<std::string>& v) {
    std::vector<std::string> c;
    static const std::regex kill_pid(R"(^kill\(\d+, )");
    for (const auto& l : v)
      if (!l.starts_with("+++")) c.push_back(std::regex_replace(l, kill_pid, "kill(PID, "));
    return c;
  };
  const std::vector<std::string> want = {"kill(PID, SIGUSR1) = 0", "--- SIGUSR1 ---", "rt_sigreturn() = 0",
                                         "kill(PID, SIGUSR2) = 0", "--- SIGUSR2 ---", "sigreturn() = 0"};
  EXPECT_EQ(calls(truth), want) << "the guest's strace";
  EXPECT_EQ(calls(mine), want) << slurp(out);
}

TEST_F(Trace, FollowsAMultiThreadedProgramsThreads) {
  const std::string out = ::testing::TempDir() + "hvtrace-threads.json";
  const auto r = hvtrace({"trace", "--vm", kVm, "-f", "--json", "-e", "trace=write,clone,clone3", "-o", out, "--", "/tmp/threads"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::map<std::string, std::pair<long, long>> writer;   // line -> (pid, tid)
  std::set<long> thread_ids;                              // what clone/clone3 returned
  std::istringstream in(slurp(out));
  static const std::regex num(R"re("(pid|tid|ret)":(-?\d+))re");
  for (std::string s; std::getline(in, s);) {
    std::map<std::string, long> v;
    for (auto it = std::sregex_iterator(s.begin(), s.end(), num); it != std::sregex_iterator(); ++it)
      v[(*it)[1]] = std::stol((*it)[2]);
    if (s.find("\"syscall\":\"clone") != std::string::npos) thread_ids.insert(v["ret"]);
    for (const char* m : {"thread-0", "thread-1", "thread-2"})
      if (s.find("\"syscall\":\"write\"") != std::string::npos && s.find(m) != std::string::npos) writer[m] = {v["pid"], v["tid"]};
  }
  ASSERT_EQ(writer.size(), 3u) << slurp(out);
  const long pid = writer["thread-0"].first;
  EXPECT_EQ(writer["thread-0"].second, pid) << "the main thread's tid is the pid";
  for (const char* m : {"thread-1", "thread-2"}) {
    EXPECT_EQ(writer[m].first, pid) << m << ": same process";
    EXPECT_NE(writer[m].second, pid) << m << ": its own thread";
    EXPECT_TRUE(thread_ids.count(writer[m].second)) << m << ": a thread the main thread created";
  }
  EXPECT_NE(writer["thread-1"].second, writer["thread-2"].second);
  // The guest's strace sees the same three writes.
  guest("strace -f -e trace=write -o /tmp/strace-threads.txt /tmp/threads | cat >/dev/null");
  const std::string truth = guest("cat /tmp/strace-threads.txt");
  for (const char* m : {"thread-0", "thread-1", "thread-2"}) EXPECT_NE(truth.find(m), std::string::npos) << truth;
}

TEST_F(Trace, EveryMethodSeesTheSameCalls) {
  std::vector<Line> first;
  for (const char* method : {"5", "4", "3", "2"}) {
    auto [mine, truth] = both({"/tmp/calls", "20"}, false, method);
    EXPECT_EQ(mine, truth) << "method " << method;
    if (first.empty()) first = mine;
    EXPECT_EQ(mine, first) << "method " << method;
  }
}

TEST_F(Trace, ProcessBoundABusyUnrelatedProcessLeavesNoTrace) {
  guest("(for i in $(seq 1 400); do cat /proc/version >/dev/null; done) >/dev/null 2>&1 &");
  const std::string out = ::testing::TempDir() + "hvtrace-bound.txt";
  const auto r = hvtrace({"trace", "--vm", kVm, "-f", "-o", out, "--", "/tmp/calls", "300"});
  EXPECT_EQ(r.exit_code, 3) << r.err;   // the program's own status
  const auto lines = parse(slurp(out));
  ASSERT_GT(lines.size(), 1000u);
  for (const auto& l : lines) ASSERT_NE(l.path, "/proc/version") << "a call of the unrelated process: " << l;
}

// `hvtrace trace --comm NAME` started before NAME runs, while an unrelated process keeps making
// system calls: NAME's process joins the in-hypervisor DTB filter at its exec (a synchronous kernel
// breakpoint), so (a) it is traced from its execve to its exit_group, (b) nothing of the unrelated
// process is printed, and (c) the monitor delivers no more syscall entries than NAME's own calls:
// the unrelated ones are dropped inside QEMU (as for -p), not delivered and dropped by the tracer.
// hvtrace ends by itself when the traced process exits. Runs on both kernels (name has "Method").
TEST_F(Trace, CommStartedLaterIsFilteredInTheHypervisorMethod5) {
  guest("cp /tmp/calls /tmp/hvcommprog; rm -f /tmp/comm-stop");
  // Busy and unrelated, from before the trace to after it: dd's 1-byte reads and writes, and execs
  // of another program (each one hits the exec breakpoint and must be left out).
  guest("(while [ ! -e /tmp/comm-stop ]; do dd if=/dev/zero of=/dev/null bs=1 count=5000 2>/dev/null; "
        "cat /proc/version >/dev/null; done) >/dev/null 2>&1 &");
  // hvtrace in the background, its stderr to a file: it says when the filter and the breakpoint are
  // in force ("... new ones from their execve"); only then is NAME started.
  const auto run = [](std::vector<std::string> extra, const std::string& tag) {
    const std::string err = ::testing::TempDir() + "hvtrace-comm-" + tag + ".err";
    std::remove(err.c_str());
    std::vector<std::string> args = {HVTRACE_BIN, "trace", "--vm", kVm, "--comm", "hvcommprog", "--duration", "240"};
    args.insert(args.end(), extra.begin(), extra.end());
    const pid_t pid = fork();
    if (pid == 0) {
      const int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, STDERR_FILENO);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    EXPECT_GT(pid, 0);
    int status = -1;
    bool exited = false;
    for (int i = 0; i < 1200 && slurp(err).find("new ones from their execve") == std::string::npos; ++i) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      std::this_thread::sleep_for(100ms);
    }
    EXPECT_FALSE(exited) << "hvtrace ended before attaching: " << slurp(err);
    EXPECT_EQ(slurp(err).find("every process's calls"), std::string::npos) << "fell back to the wide path: " << slurp(err);
    if (!exited) {
      guest("/tmp/hvcommprog 300 >/dev/null; true");   // exits with 3
      EXPECT_EQ(waitpid(pid, &status, 0), pid);
    }
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status << ": " << slurp(err);
    return slurp(err);
  };

  // (a) and (b), and the recording: one JSON object per call, all of one process named hvcommprog.
  const std::string json = ::testing::TempDir() + "hvtrace-comm.json";
  const std::string rec = ::testing::TempDir() + "hvtrace-comm.rec";
  const std::string replayed = ::testing::TempDir() + "hvtrace-comm-replay.json";
  run({"--json", "-o", json, "-w", rec}, "json");
  std::vector<std::string> records;
  {
    std::istringstream in(slurp(json));
    for (std::string l; std::getline(in, l);) records.push_back(l);
  }
  ASSERT_GT(records.size(), 1000u) << slurp(json).substr(0, 2000);
  static const std::regex field(R"re("(pid|comm|syscall|ret)":("[^"]*"|-?\d+|null))re");
  const auto fields = [](const std::string& l) {
    std::map<std::string, std::string> v;
    for (auto it = std::sregex_iterator(l.begin(), l.end(), field); it != std::sregex_iterator(); ++it) v[(*it)[1]] = (*it)[2];
    return v;
  };
  const auto first = fields(records.front()), last = fields(records.back());
  EXPECT_EQ(first.at("syscall"), "\"execve\"") << records.front();
  EXPECT_EQ(first.at("ret"), "0") << records.front();
  EXPECT_EQ(last.at("syscall"), "\"exit_group\"") << records.back();
  std::size_t openat_nonexistent = 0;
  for (const auto& r : records) {
    const auto v = fields(r);
    ASSERT_EQ(v.at("comm"), "\"hvcommprog\"") << "a call of another process: " << r;
    ASSERT_EQ(v.at("pid"), first.at("pid")) << "a call of another process: " << r;
    if (r.find("/nonexistent/hvtrace") != std::string::npos) ++openat_nonexistent;
  }
  EXPECT_GT(openat_nonexistent, 0u) << "calls's own failing openat";
  // The recording replays to the same records with no VM (the exec hit and the guest's answers
  // to it are in the file).
  const auto r = hvtrace({"trace", "-r", rec, "--json", "-o", replayed}, 60s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(slurp(replayed), slurp(json));

  // (c) -c: the monitor's counts for the same run.
  const std::string sum = ::testing::TempDir() + "hvtrace-comm-c.txt";
  run({"-c", "-o", sum}, "c");
  guest("touch /tmp/comm-stop");
  const std::string text = slurp(sum);
  const auto count = [&](const std::string& label) -> long {
    std::smatch m;
    if (!std::regex_search(text, m, std::regex("\\n\\s*" + label + "\\s+(\\d+)\\n"))) return -1;
    return std::stol(m[1]);
  };
  std::smatch m;
  ASSERT_TRUE(std::regex_search(text, m, std::regex(R"(\n\s*100\.00\s+[\d.]+\s+\d+\s+(\d+)\s+(\d*)\s*total\n)"))) << text;
  const long calls = std::stol(m[1]);
  const long delivered = count("syscall entries delivered"), foreign = count("events delivered, not traced"),
             filtered = count("filtered out in the hypervisor");
  ASSERT_GT(calls, 1000) << text;
  ASSERT_GE(delivered, 0) << text;
  EXPECT_TRUE(std::regex_search(text, std::regex(R"(\s1\s+(\d+\s+)?execve\n)"))) << "execve counted once:\n" << text;
  // Every delivered entry is one of hvcommprog's calls (its execve was seen at the breakpoint, not
  // as an entry, and exit_group is counted as a call), with a little room for calls that completed
  // without being counted (a restarted call), never the unrelated process's thousands.
  EXPECT_LE(delivered, calls + 16) << text;
  EXPECT_EQ(foreign, 0) << "delivered to the tracer and dropped there:\n" << text;
  EXPECT_GT(filtered, 0) << "the unrelated process made no calls during the trace?\n" << text;
}

TEST_F(Trace, AProcessThatExitsIsNotFollowedIntoTheNextOwnerOfItsPageTables) {
  const std::string pid = guest("sleep 3 >/dev/null 2>&1 & echo $!");
  const std::string out = ::testing::TempDir() + "hvtrace-pid.txt";
  // New processes keep starting after sleep exits; their page-table roots come from the same pool.
  guest("(sleep 2; for i in $(seq 1 100); do /bin/ls / >/dev/null; done) >/dev/null 2>&1 &");
  const auto r = hvtrace({"trace", "--vm", kVm, "-o", out, "--duration", "20", "-p", pid.substr(0, pid.find('\n'))});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const std::string text = slurp(out);
  EXPECT_NE(text.find("+++ exited with 0 +++"), std::string::npos) << text;
  for (const auto& l : parse(text)) EXPECT_NE(l.name, "execve") << "traced a later process: " << text;
  EXPECT_EQ(text.find("getdents64"), std::string::npos) << "ls's calls attributed to the traced sleep:\n" << text;
}

TEST_F(Trace, ARecordingReplaysWithNoVmToTheSameTrace) {
  const std::string rec = ::testing::TempDir() + "hvtrace-trace.rec";
  const std::string a = ::testing::TempDir() + "hvtrace-trace-live.txt";
  const std::string b = ::testing::TempDir() + "hvtrace-trace-replay.txt";
  const std::string c = ::testing::TempDir() + "hvtrace-trace-openat.txt";
  auto r = hvtrace({"trace", "--vm", kVm, "-w", rec, "-o", a, "--", "/tmp/calls"});
  ASSERT_EQ(r.exit_code, 3) << r.err;   // calls exits with 3, and so does trace
  r = hvtrace({"trace", "-r", rec, "-o", b}, 60s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string live = slurp(a), replayed = slurp(b);
  ASSERT_GT(parse(live).size(), 20u);
  EXPECT_EQ(live, replayed);
  // The same recording with a narrower trace set: openat lines only, the ones the live run saw.
  r = hvtrace({"trace", "-r", rec, "-e", "trace=openat", "-o", c}, 60s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto only = parse(slurp(c));
  ASSERT_FALSE(only.empty());
  for (const auto& l : only) EXPECT_EQ(l.name, "openat") << l;
  std::vector<Line> want;
  for (const auto& l : parse(live))
    if (l.name == "openat") want.push_back(l);
  EXPECT_EQ(only, want);
  // -r takes no VM.
  r = hvtrace({"trace", "-r", rec, "--vm", kVm}, 60s);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("drop --vm"), std::string::npos) << r.err;
}

// Ctrl-C while CMD runs: the trace so far is kept, CMD is ended in the guest too (as a terminal's
// Ctrl-C would end strace's child), and hvtrace reports an interrupted command (130).
TEST_F(Trace, CtrlCEndsTheTraceAndTheCommand) {
  const std::string out = ::testing::TempDir() + "hvtrace-int.txt";
  std::remove(out.c_str());
  // Ctrl-C once CMD is being traced (its execve is in the trace), however long attaching took.
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl(HVTRACE_BIN, HVTRACE_BIN, "trace", "--vm", kVm, "-o", out.c_str(), "--", "sh", "-c",
          "while :; do cat /proc/version >/dev/null; done", static_cast<char*>(nullptr));
    _exit(127);
  }
  for (int i = 0; i < 1200 && slurp(out).find("execve(\"/bin/sh\"") == std::string::npos; ++i)
    std::this_thread::sleep_for(100ms);
  std::this_thread::sleep_for(1s);
  kill(pid, SIGINT);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 130);
  EXPECT_NE(slurp(out).find("execve(\"/bin/sh\""), std::string::npos) << "the trace up to Ctrl-C is kept";
  EXPECT_EQ(guest("ps -o args | grep -c '[w]hile :'; true"), "0\n") << "the command still runs in the guest";
}

TEST_F(Trace, CtrlCWhileAttachingExits130AndLeavesNothingInTheGuest) {
  // Ctrl-C at points spread over the attach (discovery, the waiting shell, filters): whichever it
  // hits, hvtrace exits as an interrupted command does (130) and the guest keeps neither CMD, nor
  // the shell waiting to exec it, nor a go/cancel file.
  for (const auto delay : {300ms, 1500ms, 3000ms}) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const int null = ::open("/dev/null", O_WRONLY);
      dup2(null, STDOUT_FILENO);
      execl(HVTRACE_BIN, HVTRACE_BIN, "trace", "--vm", kVm, "--", "sleep", "47", static_cast<char*>(nullptr));
      _exit(127);
    }
    std::this_thread::sleep_for(delay);
    kill(pid, SIGINT);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status)) << "status " << status << " after " << delay.count() << " ms";
    EXPECT_EQ(WEXITSTATUS(status), 130) << "after " << delay.count() << " ms";
    EXPECT_EQ(guest("ps -o args | grep -c '[s]leep 47\\|[h]vtrace-go'; ls /tmp | grep -c 'hvtrace[-]go'; true"), "0\n0\n")
        << "left in the guest after Ctrl-C at " << delay.count() << " ms";
  }
}

TEST_F(Trace, BadInputIsOneClearErrorAndTheGuestRunsOn) {
  const std::pair<std::vector<std::string>, std::string> cases[] = {
      {{"trace", "--vm", kVm, "-e", "trace=opne", "--", "true"}, "unknown syscall or class 'opne'"},
      {{"trace", "--vm", kVm, "-e", "trace=%fille", "--", "true"}, "%fille"},
      {{"trace", "--vm", kVm, "-p", "999999"}, "no process with pid 999999"},
      {{"trace", "--vm", "no-such-vm", "--", "true"}, "no-such-vm"},
      {{"trace", "--vm", kVm, "-o", "/nonexistent-dir/x.txt", "--", "true"}, "/nonexistent-dir/x.txt"},
      {{"trace", "--vm", kVm, "--json", "-c", "--", "true"}, "pick one"},
      {{"trace", "--vm", kVm, "-p", "1", "--", "true"}, "do not combine"},
      {{"trace", "--vm", kVm, "--method", "7", "--", "true"}, "--method 7"},
  };
  for (const auto& [args, want] : cases) {
    const auto r = hvtrace(args, 60s);
    EXPECT_EQ(r.exit_code, 2) << fmt::format("{}", fmt::join(args, " ")) << "\n" << r.err;
    EXPECT_EQ(r.err.rfind("hvtrace: error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(want), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
  }
  EXPECT_EQ(guest("echo still-running"), "still-running\n");
}

}  // namespace
}  // namespace hvtrace
