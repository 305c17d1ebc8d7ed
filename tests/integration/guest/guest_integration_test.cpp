// hvtrace's view of a real guest equals the guest's own: every kallsyms symbol line for line, the
// process list against the guest's ps, a freshly started process with the right address space,
// and the RAM file never grows. One guest per binary (booted in SetUpTestSuite); this source is
// built twice, once for -cpu max (5-level paging).
#include "arch/paging.hpp"
#include "kernel/kernel.hpp"
#include "linux/files.hpp"
#include "linux/processes.hpp"
#include "mem/phys_mem.hpp"
#include "vm/process.hpp"
#include "vm/vm.hpp"

#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

using namespace hvtrace;
namespace fs = std::filesystem;

#ifndef HVTRACE_GUEST_IMAGE
#define HVTRACE_GUEST_IMAGE "default"  // tests/integration/kernels builds this file for other images
#endif

namespace {

long ram_blocks(const fs::path& p) {
  struct stat st{};
  return ::stat(p.c_str(), &st) == 0 ? static_cast<long>(st.st_blocks) : -1;
}

class Guest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto img = vm::load_image(vm::image_dir(HVTRACE_GUEST_IMAGE));
    ASSERT_TRUE(img.ok()) << img.error().message;
    vm::VmConfig c;
    c.name = HVTRACE_GUEST_VM;
    c.cpu = HVTRACE_GUEST_CPU;
    c.image = std::move(img).value();
    auto v = vm::Vm::start(c);
    ASSERT_TRUE(v.ok()) << v.error().message;
    vm_ = std::move(v).value().release();
    profiles_ = new fs::path(fs::temp_directory_path() / ("hvtrace-itest-profiles-" + std::to_string(getpid())));
    auto ram = mem::open_ram_file(vm_->record().ram_path);
    ASSERT_TRUE(ram.ok()) << ram.error().message;
    ram_ = std::move(ram).value().release();
  }
  static void TearDownTestSuite() {
    delete ram_;
    ram_ = nullptr;
    if (profiles_ != nullptr) fs::remove_all(*profiles_);
    delete profiles_;
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
  static std::unique_ptr<kernel::Kernel> attach() {
    kernel::AttachOptions o;
    o.profile_dir = *profiles_;
    auto k = kernel::Kernel::attach(*ram_, o);
    EXPECT_TRUE(k.ok()) << (k.ok() ? "" : k.error().message);
    return k.ok() ? std::move(k).value() : nullptr;
  }
  static vm::Vm* vm_;
  static mem::FileMem* ram_;
  static fs::path* profiles_;
};
vm::Vm* Guest::vm_ = nullptr;
mem::FileMem* Guest::ram_ = nullptr;
fs::path* Guest::profiles_ = nullptr;

}  // namespace

TEST_F(Guest, EverySymbolEqualsTheGuestsOwnKallsymsLineForLine) {
  const std::string proc = guest("cat /proc/kallsyms");
  auto k = kernel::Kernel::discover(*ram_, /*keep_symbols=*/true);
  ASSERT_TRUE(k.ok()) << k.error().message;
  auto syms = (*k)->all_symbols();
  ASSERT_TRUE(syms.ok()) << syms.error().message;
  std::istringstream in(proc);
  std::string line;
  std::size_t i = 0, mismatches = 0;
  while (std::getline(in, line)) {
    if (line.find('\t') != std::string::npos) continue;  // module and bpf symbols: "...\t[module]"
    ASSERT_LT(i, syms->size()) << "guest has more core symbols than hvtrace extracted; next: " << line;
    const auto& s = (*syms)[i++];
    const std::string ours = fmt::format("{:016x} {} {}", s.addr.value, s.type, s.name);
    if (ours != line && ++mismatches <= 5) ADD_FAILURE() << "symbol " << i - 1 << ": guest '" << line << "', hvtrace '" << ours << "'";
  }
  EXPECT_EQ(i, syms->size());
  EXPECT_EQ(mismatches, 0u);
  EXPECT_GT(syms->size(), 50000u);
  // Per-CPU symbols are present with their absolute offsets (6.1: current_task; 6.2+: pcpu_hot).
  const auto percpu = (*k)->symbol("current_task") ? (*k)->symbol("current_task") : (*k)->symbol("pcpu_hot");
  ASSERT_TRUE(percpu.has_value());
  EXPECT_LT(percpu->value, 0x100000u);
}

TEST_F(Guest, SlidesAndPagingModeAreFoundFromRamAlone) {
  auto k = attach();
  ASSERT_NE(k, nullptr);
  const auto& l = k->layout();
  EXPECT_EQ(l.paging, HVTRACE_EXPECT_LA57 ? arch::PagingMode::k5Level : arch::PagingMode::k4Level);
  // The guest's own view of _text (kallsyms) agrees with the slide.
  const std::string text = guest("grep ' _text$' /proc/kallsyms");
  EXPECT_EQ(text.substr(0, 16), fmt::format("{:016x}", l.text_va.value));
  EXPECT_NE(k->profile().banner.find(guest("uname -r").substr(0, 8)), std::string::npos);
  EXPECT_TRUE(k->profile().field("task_struct.comm").has_value());
  EXPECT_TRUE(k->profile().field("mm_struct.pgd").has_value());
}

TEST_F(Guest, ProcessListEqualsTheGuestsPsForProcessesInBothReads) {
  auto k = attach();
  ASSERT_NE(k, nullptr);
  auto lx = linux_os::Linux::attach(*k);
  ASSERT_TRUE(lx.ok()) << lx.error().message;
  auto before = lx->processes();
  ASSERT_TRUE(before.ok()) << before.error().message;
  const std::string ps = guest("ps -o pid,ppid,comm");
  auto after = lx->processes();
  ASSERT_TRUE(after.ok()) << after.error().message;
  std::map<int, std::pair<int, std::string>> theirs;
  std::istringstream in(ps);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    int pid = 0, ppid = 0;
    std::string comm;
    if (ls >> pid >> ppid >> comm) theirs[pid] = {ppid, comm};
  }
  std::set<int> in_after;
  for (const auto& p : *after) in_after.insert(p.pid.value);
  std::size_t compared = 0;
  for (const auto& p : *before) {
    auto it = theirs.find(p.pid.value);
    if (it == theirs.end() || in_after.count(p.pid.value) == 0) continue;
    ++compared;
    EXPECT_EQ(p.ppid.value, it->second.first) << "pid " << p.pid.value;
    // /proc adds a workqueue's name to a kworker's comm ("kworker/0:1-events"): the kernel's own
    // comm is a prefix of what the guest shows for kernel threads.
    if (p.kernel_thread) {
      EXPECT_EQ(it->second.second.rfind(p.comm, 0), 0u) << "pid " << p.pid.value << ": " << it->second.second;
    } else {
      EXPECT_EQ(p.comm, it->second.second) << "pid " << p.pid.value;
    }
  }
  EXPECT_GE(compared, 20u) << ps;
  // Nothing the guest lists is missing from both our reads, except the short-lived processes of
  // the SSH command itself (its dropbear session child, the shell, ps).
  std::set<int> ours;
  for (const auto& p : *before) ours.insert(p.pid.value);
  std::vector<std::string> missing;
  for (const auto& [pid, v] : theirs)
    if (ours.count(pid) == 0 && in_after.count(pid) == 0) missing.push_back(fmt::format("{} {}", pid, v.second));
  EXPECT_LE(missing.size(), 3u) << fmt::format("{}", fmt::join(missing, ", "));
}

TEST_F(Guest, AStartedProcessAppearsWithItsOwnAddressSpace) {
  const std::string out = guest("sleep 600 >/dev/null 2>&1 </dev/null & echo $!");
  const int pid = std::stoi(out);
  // The executable's first mapping, as the guest sees it: "start-end perms ...".
  const std::string maps = guest(fmt::format("head -1 /proc/{}/maps", pid));
  const std::uint64_t start = std::stoull(maps.substr(0, maps.find('-')), nullptr, 16);
  auto k = attach();
  ASSERT_NE(k, nullptr);
  auto lx = linux_os::Linux::attach(*k);
  ASSERT_TRUE(lx.ok());
  auto p = lx->find_pid(Pid{pid});
  ASSERT_TRUE(p.ok()) << p.error().message;
  ASSERT_TRUE(p->has_value()) << "pid " << pid << " not in the task list";
  EXPECT_EQ((*p)->comm, "sleep");
  EXPECT_FALSE((*p)->kernel_thread);
  ASSERT_TRUE((*p)->dtb.has_value());
  // Its DTB really is its address space: the ELF header of its executable reads through it.
  arch::AddressSpace as(*ram_, *(*p)->dtb, k->layout().paging);
  auto magic = as.read_as<std::uint32_t>(GVA{start});
  ASSERT_TRUE(magic.ok()) << magic.error().message;
  EXPECT_EQ(*magic, 0x464c457fU);  // "\x7fELF"
  // Its command line, read from its own memory, is what the guest's /proc says.
  auto args = lx->cmdline(**p);
  ASSERT_TRUE(args.ok()) << args.error().message;
  EXPECT_EQ(*args, "sleep 600");
  // And that DTB (as a CR3 value, with PCID bits) leads back to the process.
  auto owner = lx->process_by_dtb(dtb_of(Cr3{(*p)->dtb->value | 0x1}));
  ASSERT_TRUE(owner.ok());
  ASSERT_TRUE(owner->has_value());
  EXPECT_EQ((*owner)->pid, Pid{pid});
  // The vCPU's current task is a real task.
  auto gs = lx->per_cpu_base(0);
  ASSERT_TRUE(gs.ok()) << gs.error().message;
  auto cur = lx->current_task(*gs);
  ASSERT_TRUE(cur.ok()) << cur.error().message;
  EXPECT_FALSE(cur->comm.empty());
  guest(fmt::format("kill {}", pid));
}

// Open files read from guest memory (linux_os::open_files, issue 9) equal the guest's own
// /proc/PID/fd: a pipeline of two sleeps (a file, /dev/null, both ends of one pipe) and the SSH
// server's listening sockets, fd for fd, with the inode numbers of pipes and sockets.
TEST_F(Guest, OpenFilesEqualTheGuestsProcPidFd) {
  const std::string out = guest(
      "sleep 600 7</etc/hostname </dev/null 2>/dev/null | sleep 601 >/dev/null 2>&1 & sleep 0.5; "
      "for p in $(pidof sleep dropbear); do echo \"== $p\"; ls -l /proc/$p/fd; done");
  auto k = attach();
  ASSERT_NE(k, nullptr);
  auto lx = linux_os::Linux::attach(*k);
  ASSERT_TRUE(lx.ok());
  std::map<int, std::map<int, std::string>> theirs;   // pid -> fd -> link target
  std::istringstream in(out);
  int pid = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("== ", 0) == 0) pid = std::stoi(line.substr(3));
    const auto arrow = line.find(" -> ");
    if (arrow == std::string::npos || pid == 0) continue;
    const auto sp = line.rfind(' ', arrow - 1);
    theirs[pid][std::stoi(line.substr(sp + 1, arrow - sp - 1))] = line.substr(arrow + 4);
  }
  ASSERT_GE(theirs.size(), 3u) << out;
  const auto inode_number = [](const std::string& t) { return std::stoull(t.substr(t.find('[') + 1)); };
  std::size_t compared = 0, sockets = 0;
  std::map<std::uint64_t, int> pipe_ends;   // pipe inode address -> ends seen
  for (const auto& [p, fds] : theirs) {
    auto proc = lx->find_pid(Pid{p});
    ASSERT_TRUE(proc.ok()) << proc.error().message;
    // The sleeps and the listener; the SSH command's own dropbear child is gone (or going) by now.
    if (!proc->has_value() || ((*proc)->comm != "sleep" && (*proc)->ppid.value != 1)) continue;
    auto table = linux_os::open_files(*lx, **proc);
    ASSERT_TRUE(table.ok()) << table.error().message;
    std::set<int> ours;
    for (const auto& f : table->files) {
      ours.insert(f.fd);
      auto it = fds.find(f.fd);
      if (it == fds.end()) continue;
      const std::string& t = it->second;
      const std::string what = fmt::format("pid {} fd {} -> {}: {}", p, f.fd, t, linux_os::describe(f));
      ++compared;
      if (t.rfind("socket:[", 0) == 0) {
        EXPECT_EQ(f.kind, linux_os::FileKind::kSocket) << what;
        EXPECT_EQ(f.ino, inode_number(t)) << what;
        ++sockets;
      } else if (t.rfind("pipe:[", 0) == 0) {
        EXPECT_EQ(f.kind, linux_os::FileKind::kPipe) << what;
        EXPECT_EQ(f.ino, inode_number(t)) << what;
        ++pipe_ends[f.inode.value];
      } else if (t == "/dev/null") {
        EXPECT_EQ(f.kind, linux_os::FileKind::kCharDev) << what;
        EXPECT_EQ(f.major, 1u) << what;
        EXPECT_EQ(f.minor, 3u) << what;
      } else if (t.rfind("/dev/pts/", 0) == 0 && t != "/dev/pts/ptmx") {
        EXPECT_EQ(f.kind, linux_os::FileKind::kPtySlave) << what;
      } else if (t == "/dev/ptmx" || t == "/dev/pts/ptmx") {
        EXPECT_EQ(f.kind, linux_os::FileKind::kPtyMaster) << what;
      } else if (t == "/etc/hostname") {
        EXPECT_EQ(f.kind, linux_os::FileKind::kFile) << what;
        EXPECT_TRUE(f.readable) << what;
      }
    }
    std::set<int> listed;
    for (const auto& [fd, t] : fds) listed.insert(fd);
    EXPECT_EQ(ours, listed) << "pid " << p << "\n" << out;
    if ((*proc)->comm == "dropbear" && (*proc)->ppid.value == 1) {
      bool listening = false;
      for (const auto& f : table->files)
        if (f.socket && f.socket->local && f.socket->local->port == 22 && f.socket->state == 10) listening = true;
      EXPECT_TRUE(listening) << "the listener's port 22 socket";
    }
  }
  EXPECT_GE(compared, 10u) << out;
  EXPECT_GE(sockets, 1u) << out;
  ASSERT_EQ(pipe_ends.size(), 1u) << out;
  EXPECT_EQ(pipe_ends.begin()->second, 2) << "both ends of the pipeline's pipe share its inode";
  guest("kill $(pidof sleep) 2>/dev/null; true");
}

TEST_F(Guest, DiscoveryAndPsNeverGrowTheRamFile) {
  // Pause the guest so that only our reads could allocate pages in the RAM file.
  const auto& qmp = vm_->record().qmp_path;
  ASSERT_TRUE(vm::qmp_command(qmp, R"({"execute":"stop"})").ok());
  const long before = ram_blocks(vm_->record().ram_path);
  auto k = kernel::Kernel::discover(*ram_, false);
  std::optional<Result<std::vector<linux_os::Process>>> ps;
  if (k.ok()) {
    auto lx = linux_os::Linux::attach(**k);
    if (lx.ok()) ps = lx->processes();
  }
  const long after = ram_blocks(vm_->record().ram_path);
  ASSERT_TRUE(vm::qmp_command(qmp, R"({"execute":"cont"})").ok());
  ASSERT_TRUE(k.ok()) << k.error().message;
  ASSERT_TRUE(ps && ps->ok());
  EXPECT_EQ(after, before) << "RAM file grew by " << (after - before) * 512 << " bytes";
  EXPECT_LT(before * 512, std::int64_t{vm_->record().memory_mib} << 20) << "the RAM file has no holes to test with";
}

TEST_F(Guest, ASystemMapOfThisKernelWorksAsAProfile) {
  // A System.map has link-time addresses: make one from the guest's kallsyms by removing the slide.
  const std::string proc = guest("cat /proc/kallsyms");
  const auto text_at = proc.find(" T _text\n");
  ASSERT_NE(text_at, std::string::npos);
  const std::uint64_t text = std::stoull(proc.substr(proc.rfind('\n', text_at) + 1, 16), nullptr, 16);
  const std::uint64_t slide = text - kernel::kDefaultTextVa;
  const fs::path map = fs::temp_directory_path() / fmt::format("hvtrace-itest-System.map-{}", getpid());
  {
    std::ofstream out(map);
    std::istringstream in(proc);
    std::string line;
    while (std::getline(in, line)) {
      if (line.find('\t') != std::string::npos || line.size() < 20) continue;
      std::uint64_t a = std::stoull(line.substr(0, 16), nullptr, 16);
      if (a >= 0xffff800000000000ULL) a -= slide;
      out << fmt::format("{:016x}{}\n", a, line.substr(16));
    }
  }
  kernel::AttachOptions o;
  o.profile_file = map;
  auto k = kernel::Kernel::attach(*ram_, o);
  fs::remove(map);
  ASSERT_TRUE(k.ok()) << k.error().message;
  EXPECT_EQ((*k)->how().rfind("profile file", 0), 0u);
  EXPECT_EQ((*k)->layout().text_va, GVA{text});
  EXPECT_NE((*k)->profile().sources.at("symbol init_task").find("System.map"), std::string::npos);
  auto lx = linux_os::Linux::attach(**k);
  ASSERT_TRUE(lx.ok()) << lx.error().message;
  auto ps = lx->processes();
  ASSERT_TRUE(ps.ok()) << ps.error().message;
  EXPECT_GT(ps->size(), 20u);
}

TEST_F(Guest, WarmAttachUsesTheCachedProfile) {
  auto cold = attach();
  ASSERT_NE(cold, nullptr);
  auto warm = attach();
  ASSERT_NE(warm, nullptr);
  EXPECT_EQ(warm->how().rfind("cached profile", 0), 0u) << warm->how();
  EXPECT_EQ(warm->layout().text_va, cold->layout().text_va);
  EXPECT_EQ(warm->layout().text_pa, cold->layout().text_pa);
}

namespace {
struct Cmd {
  int status = -1;  // exit status, or 128 + signal
  std::string out;
};
// A shell command with stderr folded into out; a hang (the thing the corrupted-dump cases look
// for) ends at the deadline as status -1 with the reason in out.
Cmd run(const std::string& cmd) {
  auto r = vm::run_process({"sh", "-c", cmd + " 2>&1"}, std::chrono::seconds{120});
  if (!r) return Cmd{-1, r.error().message};
  return Cmd{r->exit_code, std::move(r->out)};
}
void patch(const fs::path& file, std::uint64_t pa, const void* bytes, std::size_t n) {
  FILE* f = std::fopen(file.c_str(), "r+b");
  ASSERT_NE(f, nullptr);
  std::fseek(f, static_cast<long>(pa), SEEK_SET);
  std::fwrite(bytes, 1, n, f);
  std::fclose(f);
}
}  // namespace

TEST_F(Guest, HvtracePsPrintsTheGuestsProcesses) {
  const std::string env = fmt::format("HVTRACE_PROFILE_DIR={} ", profiles_->string());
  Cmd table = run(fmt::format("{}{} ps --vm {}", env, HVTRACE_BIN, HVTRACE_GUEST_VM));
  ASSERT_EQ(table.status, 0) << table.out;
  EXPECT_EQ(table.out.rfind("   PID   PPID    UID S", 0), 0u) << table.out;
  EXPECT_NE(table.out.find(" init\n"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("[kthreadd]"), std::string::npos) << table.out;
  Cmd json = run(fmt::format("{}{} ps --vm {} --json", env, HVTRACE_BIN, HVTRACE_GUEST_VM));
  ASSERT_EQ(json.status, 0) << json.out;
  EXPECT_EQ(json.out.rfind("{\"comm\":\"init\"", 0), 0u) << json.out;
  Cmd tree = run(fmt::format("{}{} ps --vm {} --tree --explain", env, HVTRACE_BIN, HVTRACE_GUEST_VM));
  ASSERT_EQ(tree.status, 0) << tree.out;
  // A kernel thread under kthreadd (ksoftirqd/0 exists on 6.1 and 6.12; 6.12 renamed rcu_gp).
  EXPECT_NE(tree.out.find("\\_ [ksoftirqd/0]"), std::string::npos) << tree.out;
  EXPECT_NE(tree.out.find("# offset task_struct.pid = "), std::string::npos);
  EXPECT_NE(tree.out.find("BTF"), std::string::npos);
}

TEST_F(Guest, ASavedDumpWorksOfflineAndACorruptedOneGivesAnErrorNotACrash) {
  const fs::path dump = fs::temp_directory_path() / fmt::format("hvtrace-itest-dump-{}", getpid());
  const auto& qmp = vm_->record().qmp_path;
  ASSERT_TRUE(vm::qmp_command(qmp, R"({"execute":"stop"})").ok());
  Cmd cp = run(fmt::format("cp --sparse=always {} {}", vm_->record().ram_path.string(), dump.string()));
  ASSERT_TRUE(vm::qmp_command(qmp, R"({"execute":"cont"})").ok());
  ASSERT_EQ(cp.status, 0) << cp.out;
  std::uint64_t init_tasks_pa = 0, token_table_pa = 0, first_node_pa = 0, first_node_va = 0;
  {
    auto m = mem::open_dump_file(dump);
    ASSERT_TRUE(m.ok()) << m.error().message;
    auto k = kernel::Kernel::discover(**m);
    ASSERT_TRUE(k.ok()) << k.error().message;
    auto lx = linux_os::Linux::attach(**k);
    ASSERT_TRUE(lx.ok());
    auto ps = lx->processes();
    ASSERT_TRUE(ps.ok()) << ps.error().message;
    EXPECT_GT(ps->size(), 20u);
    auto pa = (*k)->to_phys(GVA{(*k)->symbol("init_task")->value + lx->task_layout().tasks});
    ASSERT_TRUE(pa.ok());
    init_tasks_pa = pa->value;
    first_node_va = (*ps)[0].task.value + lx->task_layout().tasks;
    auto node = (*k)->to_phys(GVA{first_node_va});
    ASSERT_TRUE(node.ok());
    first_node_pa = node->value;
    token_table_pa = (*k)->kallsyms()->token_table.value;
  }
  const std::string env = fmt::format("HVTRACE_PROFILE_DIR={} ", profiles_->string());
  // A task list that loops (the first task points at itself) without passing init_task again.
  patch(dump, first_node_pa, &first_node_va, sizeof first_node_va);
  Cmd loop = run(fmt::format("{}timeout 60 {} ps --dump {}", env, HVTRACE_BIN, dump.string()));
  EXPECT_EQ(loop.status, 2) << loop.out;
  EXPECT_NE(loop.out.find("loops"), std::string::npos) << loop.out;
  // A wild task-list pointer: the walk fails, naming what it was reading.
  const std::uint64_t wild = 0xffffc90000abc000ULL;
  patch(dump, init_tasks_pa, &wild, sizeof wild);
  Cmd bad_list = run(fmt::format("{}{} ps --dump {}", env, HVTRACE_BIN, dump.string()));
  EXPECT_EQ(bad_list.status, 2) << bad_list.out;
  EXPECT_NE(bad_list.out.find("reading task_struct at 0xffffc90000ab"), std::string::npos) << bad_list.out;
  EXPECT_NE(bad_list.out.find("E not present"), std::string::npos) << bad_list.out;
  // Wiped kallsyms tables: discovery says what it did not find.
  std::vector<char> zeros(4096, 0);
  patch(dump, token_table_pa & ~0xfffULL, zeros.data(), zeros.size());
  Cmd no_syms = run(fmt::format("{}{} ps --no-cache --dump {}", env, HVTRACE_BIN, dump.string()));
  EXPECT_EQ(no_syms.status, 2) << no_syms.out;
  EXPECT_NE(no_syms.out.find("kallsyms"), std::string::npos) << no_syms.out;
  fs::remove(dump);
}
