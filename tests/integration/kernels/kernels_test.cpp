// Discovery with no configuration on a kernel other than the default guest's: the `bpo` image
// (bookworm-backports' linux-image-amd64, 6.12, whose kallsyms tables come names-first and whose
// current task lives in pcpu_hot). Every check compares with the guest's own view: /proc/kallsyms
// line for line, its ps, its uname. One boot for the whole binary (SetUpTestSuite).
#include "kernel/kernel.hpp"
#include "linux/processes.hpp"
#include "mem/phys_mem.hpp"
#include "vm/vm.hpp"

#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <map>
#include <set>
#include <sstream>

using namespace hvtrace;
namespace fs = std::filesystem;

namespace {

class Kernels : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto img = vm::load_image(vm::image_dir(HVTRACE_KERNELS_IMAGE));
    ASSERT_TRUE(img.ok()) << img.error().message << " (build it: guest/build-image --image " HVTRACE_KERNELS_IMAGE ")";
    vm::VmConfig c;
    c.name = HVTRACE_KERNELS_VM;
    c.image = std::move(img).value();
    auto v = vm::Vm::start(c);
    ASSERT_TRUE(v.ok()) << v.error().message;
    vm_ = std::move(v).value().release();
    auto ram = mem::open_ram_file(vm_->record().ram_path);
    ASSERT_TRUE(ram.ok()) << ram.error().message;
    ram_ = std::move(ram).value().release();
  }
  static void TearDownTestSuite() {
    delete ram_;
    ram_ = nullptr;
    if (vm_ != nullptr) (void)vm_->shutdown();
    delete vm_;
    vm_ = nullptr;
  }
  void SetUp() override {
    if (vm_ == nullptr || ram_ == nullptr) GTEST_SKIP() << "the shared guest did not boot";
  }
  static std::string guest(const std::string& cmd) {
    auto r = vm_->exec(cmd);
    EXPECT_TRUE(r.ok()) << cmd << ": " << (r.ok() ? "" : r.error().message);
    if (!r.ok()) return {};
    EXPECT_EQ(r->exit_status, 0) << cmd << ": " << r->err;
    return r->out;
  }
  // A cold attach: an empty profile directory, nothing read from or written to any cache.
  static std::unique_ptr<kernel::Kernel> cold() {
    kernel::AttachOptions o;
    o.profile_dir = fs::temp_directory_path() / ("hvtrace-kernels-none-" + std::to_string(::getpid()));
    o.use_cache = false;
    o.save_cache = false;
    o.keep_symbols = true;
    auto k = kernel::Kernel::attach(*ram_, o);
    EXPECT_TRUE(k.ok()) << (k.ok() ? "" : k.error().message);
    if (k.ok()) {
      EXPECT_FALSE(fs::exists(o.profile_dir));
    }
    return k.ok() ? std::move(k).value() : nullptr;
  }
  static vm::Vm* vm_;
  static mem::FileMem* ram_;
};
vm::Vm* Kernels::vm_ = nullptr;
mem::FileMem* Kernels::ram_ = nullptr;

}  // namespace

TEST_F(Kernels, ColdDiscoveryFindsTheBackportKernelWithNoCache) {
  auto k = cold();
  ASSERT_NE(k, nullptr);
  const std::string release = guest("uname -r");
  ASSERT_FALSE(release.empty());
  EXPECT_NE(k->profile().banner.find(release.substr(0, release.find('\n'))), std::string::npos) << k->profile().banner;
  EXPECT_EQ(k->how().rfind("cold discovery", 0), 0u) << k->how();
  ASSERT_TRUE(k->kallsyms().has_value());
  // 6.12 emits the tables names-first (Linux >= 6.4); the default guest's 6.1 offsets-first.
  EXPECT_EQ(k->kallsyms()->layout, kernel::KallsymsLayout::kTokensFirst);
  // The slides agree with the guest's own view of _text, and BTF gave the layouts ps needs.
  const std::string text = guest("grep ' _text$' /proc/kallsyms");
  EXPECT_EQ(text.substr(0, 16), fmt::format("{:016x}", k->layout().text_va.value));
  for (const char* f : {"task_struct.comm", "task_struct.real_cred", "mm_struct.pgd", "cred.uid", "pcpu_hot.current_task"})
    EXPECT_TRUE(k->profile().field(f).has_value()) << f;
}

TEST_F(Kernels, EveryCoreSymbolEqualsTheGuestsKallsyms) {
  const std::string proc = guest("cat /proc/kallsyms");
  auto k = cold();
  ASSERT_NE(k, nullptr);
  auto syms = k->all_symbols();
  ASSERT_TRUE(syms.ok()) << syms.error().message;
  std::istringstream in(proc);
  std::string line;
  std::size_t i = 0, mismatches = 0;
  while (std::getline(in, line)) {
    if (line.find('\t') != std::string::npos) continue;  // "...\t[module]" and bpf lines
    ASSERT_LT(i, syms->size()) << "the guest lists more core symbols; next: " << line;
    const auto& s = (*syms)[i++];
    const std::string ours = fmt::format("{:016x} {} {}", s.addr.value, s.type, s.name);
    if (ours != line && ++mismatches <= 5) ADD_FAILURE() << "symbol " << i - 1 << ": guest '" << line << "', hvtrace '" << ours << "'";
  }
  EXPECT_EQ(i, syms->size());
  EXPECT_EQ(mismatches, 0u);
  EXPECT_GT(syms->size(), 100000u);
}

TEST_F(Kernels, ProcessListEqualsTheGuestsPs) {
  auto k = cold();
  ASSERT_NE(k, nullptr);
  auto lx = linux_os::Linux::attach(*k);
  ASSERT_TRUE(lx.ok()) << lx.error().message;
  auto before = lx->processes();
  ASSERT_TRUE(before.ok()) << before.error().message;
  const std::string ps = guest("ps -o pid,ppid,user,comm");
  auto after = lx->processes();
  ASSERT_TRUE(after.ok()) << after.error().message;
  struct Theirs {
    int ppid;
    std::string user, comm;
  };
  std::map<int, Theirs> theirs;
  std::istringstream in(ps);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    int pid = 0;
    Theirs t;
    if (ls >> pid >> t.ppid >> t.user >> t.comm) theirs[pid] = t;
  }
  std::set<int> in_after, ours;
  for (const auto& p : *after) in_after.insert(p.pid.value);
  std::size_t compared = 0;
  for (const auto& p : *before) {
    ours.insert(p.pid.value);
    auto it = theirs.find(p.pid.value);
    if (it == theirs.end() || in_after.count(p.pid.value) == 0) continue;
    ++compared;
    EXPECT_EQ(p.ppid.value, it->second.ppid) << "pid " << p.pid.value;
    EXPECT_EQ(p.uid, it->second.user == "root" ? 0u : 1000u) << "pid " << p.pid.value << " " << it->second.user;
    // A kworker's comm in /proc carries its workqueue ("kworker/0:1-events"): ours is a prefix.
    if (p.kernel_thread) {
      EXPECT_EQ(it->second.comm.rfind(p.comm, 0), 0u) << "pid " << p.pid.value;
    } else {
      EXPECT_EQ(p.comm, it->second.comm) << "pid " << p.pid.value;
    }
  }
  EXPECT_GE(compared, 20u) << ps;
  std::vector<std::string> missing;  // only the SSH command's own short-lived processes may be
  for (const auto& [pid, t] : theirs)
    if (ours.count(pid) == 0 && in_after.count(pid) == 0) missing.push_back(fmt::format("{} {}", pid, t.comm));
  EXPECT_LE(missing.size(), 3u) << fmt::format("{}", fmt::join(missing, ", "));
}

TEST_F(Kernels, TheCurrentTaskComesFromPcpuHot) {
  auto k = cold();
  ASSERT_NE(k, nullptr);
  // 6.12 has no current_task variable of its own: the per-CPU pointer is pcpu_hot.current_task.
  EXPECT_FALSE(k->symbol("current_task").has_value());
  ASSERT_TRUE(k->symbol("pcpu_hot").has_value());
  auto lx = linux_os::Linux::attach(*k);
  ASSERT_TRUE(lx.ok()) << lx.error().message;
  auto gs = lx->per_cpu_base(0);
  ASSERT_TRUE(gs.ok()) << gs.error().message;
  auto cur = lx->current_task(*gs);
  ASSERT_TRUE(cur.ok()) << cur.error().message;
  auto again = lx->find_pid(cur->pid);
  ASSERT_TRUE(again.ok()) << again.error().message;
  // The idle task (pid 0) is not in the task list; any other current task is.
  if (cur->pid.value != 0) {
    ASSERT_TRUE(again->has_value()) << "current task pid " << cur->pid.value << " not in the task list";
    EXPECT_EQ((*again)->task, cur->task);
  } else {
    EXPECT_EQ(cur->comm, "swapper/0");
  }
}

TEST_F(Kernels, AWarmAttachReusesTheProfileOfTheColdOne) {
  const fs::path dir = fs::temp_directory_path() / ("hvtrace-kernels-profiles-" + std::to_string(::getpid()));
  kernel::AttachOptions o;
  o.profile_dir = dir;
  auto first = kernel::Kernel::attach(*ram_, o);
  ASSERT_TRUE(first.ok()) << first.error().message;
  auto second = kernel::Kernel::attach(*ram_, o);
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_EQ((*second)->how().rfind("cached profile", 0), 0u) << (*second)->how();
  EXPECT_EQ((*second)->layout().text_va, (*first)->layout().text_va);
  // The cached kallsyms positions (relative_base after the token table on 6.12) still validate.
  auto syms = (*second)->all_symbols();
  ASSERT_TRUE(syms.ok()) << syms.error().message;
  EXPECT_EQ(syms->size(), (*first)->kallsyms()->num_syms);
  fs::remove_all(dir);
}
