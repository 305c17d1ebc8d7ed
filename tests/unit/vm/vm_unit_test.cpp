// Unit tests for the VM lab that need no guest: names, image validation, records of dead VMs,
// and the bounded subprocess runner the SSH client goes through.
#include "vm/process.hpp"
#include "vm/vm.hpp"

#include <gtest/gtest.h>
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

TEST(RunProcess, MissingProgramIsStatus127) {
  auto r = run_process({"/nonexistent/program"}, 10s);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exit_code, 127);
  EXPECT_NE(r->err.find("cannot run"), std::string::npos);
}

}  // namespace
}  // namespace hvtrace::vm
