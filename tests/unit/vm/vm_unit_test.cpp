// Unit tests for the VM lab that need no guest: names, image validation, records of dead VMs,
// and the bounded subprocess runner the SSH client goes through.
#include "vm/process.hpp"
#include "vm/vm.hpp"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

namespace hvtrace::vm {
namespace {

using namespace std::chrono_literals;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/hvtrace-unit-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

TEST(VmName, AcceptsSimpleNamesRejectsPathsAndSpaces) {
  EXPECT_TRUE(validate_name("default").ok());
  EXPECT_TRUE(validate_name("itest-mon_2").ok());
  EXPECT_FALSE(validate_name("").ok());
  EXPECT_FALSE(validate_name("../etc").ok());
  EXPECT_FALSE(validate_name("a b").ok());
  EXPECT_FALSE(validate_name(std::string(33, 'a')).ok());
  EXPECT_NE(validate_name("x/y").error().message.find("[A-Za-z0-9_-]"), std::string::npos);
}

TEST(GuestImage, MissingFileIsNamedInTheError) {
  TempDir d;
  for (const char* f : {"vmlinuz", "initrd.img", "manifest.txt"}) std::ofstream(d.path() / f) << "x";
  auto img = load_image(d.path());
  ASSERT_FALSE(img.ok());
  EXPECT_NE(img.error().message.find("id_ed25519"), std::string::npos) << img.error().message;
  EXPECT_NE(img.error().message.find("guest/build-image"), std::string::npos);
}

TEST(GuestImage, CompleteImageLoadsReleaseAndCmdline) {
  TempDir d;
  for (const char* f : {"vmlinuz", "initrd.img", "manifest.txt", "id_ed25519"}) std::ofstream(d.path() / f) << "x";
  std::ofstream(d.path() / "kernel-release") << "6.1.0-99-amd64\n";
  std::ofstream(d.path() / "cmdline") << "console=ttyS0 panic=-1\n";
  auto img = load_image(d.path());
  ASSERT_TRUE(img.ok()) << img.error().message;
  EXPECT_EQ(img->kernel_release, "6.1.0-99-amd64");
  EXPECT_EQ(img->cmdline, "console=ttyS0 panic=-1");
}

TEST(VmStart, RejectsBadConfigurationBeforeStartingAnything) {
  TempDir d;
  setenv("HVTRACE_RUN_DIR", d.path().c_str(), 1);
  VmConfig c;
  c.name = "bad/name";
  EXPECT_FALSE(Vm::start(c).ok());
  c.name = "ok";
  c.smp = 0;
  auto r = Vm::start(c);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("--smp"), std::string::npos);
  EXPECT_TRUE(fs::is_empty(d.path()));  // nothing left behind
  unsetenv("HVTRACE_RUN_DIR");
}

TEST(VmRecords, StaleRecordOfDeadOwnerIsReportedAndRemoved) {
  TempDir d;
  setenv("HVTRACE_RUN_DIR", d.path().c_str(), 1);
  // A pid that certainly is dead: a child we already reaped.
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);
  VmRecord r;
  r.name = "ghost";
  r.owner_pid = dead;
  r.qemu_pid = dead;
  r.run_dir = d.path() / "ghost";
  fs::create_directory(r.run_dir);
  std::ofstream(r.run_dir / "vm.json") << record_to_json(r);
  std::ofstream(r.run_dir / "ram") << "leftover";

  auto found = find_vm("ghost");
  ASSERT_FALSE(found.ok());
  EXPECT_NE(found.error().message.find("not running"), std::string::npos) << found.error().message;
  EXPECT_FALSE(fs::exists(r.run_dir));
  EXPECT_TRUE(list_vms().empty());
  unsetenv("HVTRACE_RUN_DIR");
}

TEST(VmRecords, RecordOfLiveOwnerRoundTrips) {
  TempDir d;
  setenv("HVTRACE_RUN_DIR", d.path().c_str(), 1);
  VmRecord r;
  r.name = "alive";
  r.owner_pid = getpid();
  r.qemu_pid = getpid();
  r.ssh_port = 2222;
  r.run_dir = d.path() / "alive";
  r.ram_path = r.run_dir / "ram";
  fs::create_directory(r.run_dir);
  std::ofstream(r.run_dir / "vm.json") << record_to_json(r);
  auto found = find_vm("alive");
  ASSERT_TRUE(found.ok()) << found.error().message;
  EXPECT_EQ(found->ssh_port, 2222);
  EXPECT_EQ(found->ram_path, r.ram_path);
  ASSERT_EQ(list_vms().size(), 1u);
  unsetenv("HVTRACE_RUN_DIR");
}

TEST(VmRecords, CorruptRecordIsAnErrorNotACrash) {
  TempDir d;
  setenv("HVTRACE_RUN_DIR", d.path().c_str(), 1);
  fs::create_directory(d.path() / "junk");
  std::ofstream(d.path() / "junk" / "vm.json") << "{\"name\": 3, ";
  auto found = find_vm("junk");
  ASSERT_FALSE(found.ok());
  EXPECT_NE(found.error().message.find("corrupt"), std::string::npos);
  unsetenv("HVTRACE_RUN_DIR");
}

TEST(RunProcess, CapturesOutputAndExitStatus) {
  auto r = run_process({"sh", "-c", "echo out; echo err >&2; exit 3"}, 10s);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->out, "out\n");
  EXPECT_EQ(r->err, "err\n");
}

TEST(RunProcess, KillsAChildThatOutlivesItsDeadline) {
  const auto t0 = std::chrono::steady_clock::now();
  auto r = run_process({"sleep", "30"}, 300ms);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("did not finish"), std::string::npos);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);  // bound, not a timing claim
}

TEST(RunProcess, BoundsCapturedOutput) {
  auto r = run_process({"sh", "-c", "yes | head -c 200000"}, 10s, 1000);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("more than 1000 bytes"), std::string::npos);
}

// The child reads the input as its stdin while its output is read: 1 MiB through `cat` (more than
// a socket buffer each way), and a child that reads none of it and exits is not a hang or a crash.
TEST(RunProcess, FeedsItsInputAsTheChildsStdin) {
  std::string big(1u << 20, 'x');
  for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>('a' + (i / 4096) % 26);
  ProcessIo io;
  io.input = big;
  auto r = run_process({"cat"}, 30s, 64u << 20, io);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_TRUE(r->out == big) << r->out.size() << " bytes back";
  auto early = run_process({"sh", "-c", "exit 4"}, 30s, 64u << 20, io);
  ASSERT_TRUE(early.ok()) << early.error().message;
  EXPECT_EQ(early->exit_code, 4);
  io.input = std::string_view{};
  auto none = run_process({"wc", "-c"}, 30s, 64u << 20, io);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->out, "0\n");
}

TEST(RunProcess, MissingProgramIsStatus127) {
  auto r = run_process({"/nonexistent/program"}, 10s);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exit_code, 127);
  EXPECT_NE(r->err.find("cannot run"), std::string::npos);
}

// Point one of our standard descriptors at `fd` for the life of the object (the pass-through
// modes of run_process hand the child our own 0, 1 and 2).
class RedirectFd {
 public:
  RedirectFd(int which, int fd) : which_(which), saved_(dup(which)) { dup2(fd, which); }
  ~RedirectFd() {
    dup2(saved_, which_);
    close(saved_);
  }
  RedirectFd(const RedirectFd&) = delete;
  RedirectFd& operator=(const RedirectFd&) = delete;

 private:
  int which_;
  int saved_;
};

std::string read_all(int fd) {
  std::string s;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) s.append(buf, static_cast<std::size_t>(n));
  return s;
}

TEST(RunProcess, PassesOurStdinThroughWhenAsked) {
  int in[2];
  ASSERT_EQ(pipe(in), 0);
  ASSERT_EQ(write(in[1], "piped data\n", 11), 11);
  close(in[1]);
  RedirectFd stdin_from_pipe(0, in[0]);
  close(in[0]);
  ProcessIo io;
  io.pass_stdin = true;
  auto r = run_process({"cat"}, 10s, 1u << 20, io);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->out, "piped data\n");
  // Without pass_stdin the child reads /dev/null even though our stdin has data.
  auto closed = run_process({"cat"}, 10s);
  ASSERT_TRUE(closed.ok()) << closed.error().message;
  EXPECT_EQ(closed->out, "");
}

TEST(RunProcess, PassesStdoutAndCopiesStderrWhileKeepingItForDiagnosis) {
  TempDir d;
  const fs::path out_file = d.path() / "out", err_file = d.path() / "err";
  const int out_fd = open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  const int err_fd = open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ProcessIo io;
  io.pass_stdout = true;
  io.tee_stderr = true;
  Result<ProcessResult> r = make_error("not run");
  {
    RedirectFd o(1, out_fd), e(2, err_fd);
    r = run_process({"sh", "-c", "echo to-out; echo to-err >&2; exit 4"}, 10s, 1u << 20, io);
  }
  close(out_fd);
  close(err_fd);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->exit_code, 4);
  EXPECT_EQ(r->out, "");
  EXPECT_EQ(r->err, "to-err\n");
  const int ro = open(out_file.c_str(), O_RDONLY), re = open(err_file.c_str(), O_RDONLY);
  EXPECT_EQ(read_all(ro), "to-out\n");
  EXPECT_EQ(read_all(re), "to-err\n");
  close(ro);
  close(re);
}

// The quoted words, run through a real POSIX shell, come out as exactly the original argv.
std::vector<std::string> through_sh(const std::vector<std::string>& argv) {
  auto r = run_process({"sh", "-c", "for a in " + shell_quote_argv(argv) + "; do printf '%s\\0' \"$a\"; done"}, 10s);
  EXPECT_TRUE(r.ok()) << r.error().message;
  std::vector<std::string> words;
  if (!r.ok()) return words;
  for (std::size_t at = 0; at < r->out.size();) {
    const auto nul = r->out.find('\0', at);
    words.push_back(r->out.substr(at, nul - at));
    at = nul + 1;
  }
  return words;
}

TEST(ShellQuote, ArgvSurvivesTheRemoteShellWordForWord) {
  const std::vector<std::string> argv = {"sh",  "-c",    "exit 7",     "it's", "",     "$HOME", "a\\b",
                                         "*",   "two  spaces", "new\nline", "`id`", "FOO=1", "~",     "-n"};
  EXPECT_EQ(through_sh(argv), argv);
}

TEST(ShellQuote, PlainWordsStayReadableAndQuotesAreEscapedPosixStyle) {
  EXPECT_EQ(shell_quote("uname"), "uname");
  EXPECT_EQ(shell_quote("/proc/cpuinfo"), "/proc/cpuinfo");
  EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
  EXPECT_EQ(shell_quote(""), "''");
  EXPECT_EQ(shell_quote("FOO=1"), "'FOO=1'");  // not an assignment in the guest
}

TEST(ShellQuote, OneArgumentIsAShellCommandLineSeveralAreArgv) {
  EXPECT_EQ(remote_command_line({"echo $HOME; exit 3"}), "echo $HOME; exit 3");
  EXPECT_EQ(remote_command_line({"sh", "-c", "exit 7"}), "sh -c 'exit 7'");
}

VmRecord record_for(pid_t qemu_pid) {
  VmRecord r;
  r.name = "lab";
  r.qemu_pid = qemu_pid;
  return r;
}

TEST(VmWatch, ProcessThatExitsIsNoticedEvenAsAnUnreapedZombie) {
  const pid_t child = fork();
  if (child == 0) {
    pause();
    _exit(0);
  }
  VmWatch watch(record_for(child), 0ms);
  EXPECT_TRUE(watch.alive());
  EXPECT_TRUE(watch.alive());
  ASSERT_EQ(kill(child, SIGKILL), 0);
  // Not reaped yet: a zombie is a dead QEMU (its owner may never reap it while we watch).
  bool dead = false;
  for (int i = 0; i < 200 && !dead; ++i) {
    dead = !watch.alive();
    if (!dead) usleep(10000);
  }
  EXPECT_TRUE(dead);
  EXPECT_FALSE(watch.alive());  // stays dead
  waitpid(child, nullptr, 0);
  EXPECT_EQ(watch.stopped_message(), fmt::format("VM 'lab' stopped (QEMU pid {} exited)", child));
}

TEST(VmWatch, PidThatIsAlreadyGoneIsDeadFromTheStart) {
  const pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, nullptr, 0);
  VmWatch watch(record_for(child));
  EXPECT_FALSE(watch.alive());
}

TEST(VmWatch, ChecksAtMostOncePerInterval) {
  const pid_t child = fork();
  if (child == 0) {
    pause();
    _exit(0);
  }
  VmWatch watch(record_for(child), 3600s);
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  EXPECT_TRUE(watch.alive()) << "looked at /proc before the interval passed";
}

}  // namespace
}  // namespace hvtrace::vm
