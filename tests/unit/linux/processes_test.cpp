// The Linux model on a synthetic guest: process list, lookups, DTB owner, current task, and a
// hostile task list (cycles, bad pointers) giving errors instead of hangs.
#include "linux/fake_guest.hpp"
#include "linux/processes.hpp"

#include <gtest/gtest.h>

using namespace hvtrace;
using namespace hvtrace::linux_os;
using hvtrace::fake::FakeGuest;
using hvtrace::fake::FakeLayout;
using hvtrace::fake::FakeTask;

namespace {
class ProcessesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto g = FakeGuest::build();
    ASSERT_TRUE(g) << g.error().message;
    guest = std::move(*g);
    init = *guest->add_task({.pid = 1, .comm = "init", .start_time = 100, .parent = {}});
    kthreadd = *guest->add_task({.pid = 2, .comm = "kthreadd", .kernel_thread = true, .state = 0x402, .parent = {}});
    sshd = *guest->add_task({.pid = 77, .comm = "dropbear", .parent = init});
    bash = *guest->add_task({.pid = 412, .comm = "bash", .uid = 1000, .state = 0, .parent = sshd, .argv = {"-bash", "-i"}});
    auto k = kernel::Kernel::discover(guest->mem());
    ASSERT_TRUE(k) << k.error().message;
    kern = std::move(*k);
    auto l = Linux::attach(*kern);
    ASSERT_TRUE(l) << l.error().message;
    lx.emplace(std::move(*l));
  }
  std::unique_ptr<FakeGuest> guest;
  std::unique_ptr<kernel::Kernel> kern;
  std::optional<Linux> lx;
  GVA init, kthreadd, sshd, bash;
};
}  // namespace

TEST_F(ProcessesTest, ListsEveryProcessWithItsIdentity) {
  auto ps = lx->processes();
  ASSERT_TRUE(ps) << ps.error().message;
  ASSERT_EQ(ps->size(), 4u);
  const Process& b = (*ps)[3];
  EXPECT_EQ(b.pid, Pid{412});
  EXPECT_EQ(b.tgid, Pid{412});
  EXPECT_EQ(b.ppid, Pid{77});
  EXPECT_EQ(b.comm, "bash");
  EXPECT_EQ(b.uid, 1000u);
  EXPECT_EQ(b.state, 'R');
  EXPECT_FALSE(b.kernel_thread);
  EXPECT_EQ(b.dtb, guest->dtb_of_task(bash));
  const Process& kt = (*ps)[1];
  EXPECT_TRUE(kt.kernel_thread);
  EXPECT_FALSE(kt.dtb.has_value());
  EXPECT_EQ(kt.state, 'I');
  EXPECT_EQ(kt.ppid, Pid{0});
  EXPECT_EQ((*ps)[0].start_time_ns, 100u);
  EXPECT_EQ((*ps)[0].state, 'S');
}

TEST_F(ProcessesTest, LooksUpByPidNameAndDtb) {
  auto p = lx->find_pid(Pid{77});
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->has_value());
  EXPECT_EQ((*p)->comm, "dropbear");
  EXPECT_FALSE(lx->find_pid(Pid{9999})->has_value());
  auto named = lx->find_name("bash");
  ASSERT_TRUE(named);
  ASSERT_EQ(named->size(), 1u);
  auto owner = lx->process_by_dtb(*guest->dtb_of_task(sshd));
  ASSERT_TRUE(owner);
  ASSERT_TRUE(owner->has_value());
  EXPECT_EQ((*owner)->pid, Pid{77});
  // A CR3 with PCID bits names the same address space.
  EXPECT_EQ(dtb_of(Cr3{guest->dtb_of_task(sshd)->value | 0x5}), *guest->dtb_of_task(sshd));
  EXPECT_FALSE(lx->process_by_dtb(Dtb{0x1000})->has_value());
}

TEST_F(ProcessesTest, CommandLineComesFromTheProcesssOwnMemory) {
  auto ps = lx->processes();
  ASSERT_TRUE(ps);
  auto args = lx->cmdline((*ps)[3]);
  ASSERT_TRUE(args) << args.error().message;
  EXPECT_EQ(*args, "-bash -i");
  EXPECT_EQ(*lx->cmdline((*ps)[0]), "init");
  EXPECT_EQ(*lx->cmdline((*ps)[1]), "");  // kernel thread
  // A pgd that maps nothing: a clear error, not garbage.
  linux_os::Process p = (*ps)[3];
  p.dtb = Dtb{0x100000};
  auto bad = lx->cmdline(p);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("command line of pid 412"), std::string::npos) << bad.error().message;
}

TEST_F(ProcessesTest, IndexResolvesCr3sAndRefreshesOnAMiss) {
  ProcessIndex idx(*lx);
  ASSERT_TRUE(idx.refresh());
  const Dtb bash_dtb = *guest->dtb_of_task(bash);
  ASSERT_NE(idx.by_dtb(Dtb{bash_dtb.value | 0x1000 | 0x3}), nullptr);  // PTI user half + PCID
  EXPECT_EQ(idx.by_dtb(bash_dtb)->pid, Pid{412});
  EXPECT_EQ(idx.by_pid(Pid{77})->comm, "dropbear");
  // A process started after the snapshot: found by resolve(), which refreshes once.
  auto late = guest->add_task({.pid = 500, .comm = "late", .parent = {}});
  ASSERT_TRUE(late);
  const Dtb late_dtb = *guest->dtb_of_task(*late);
  EXPECT_EQ(idx.by_dtb(late_dtb), nullptr);
  auto r = idx.resolve(late_dtb);
  ASSERT_TRUE(r);
  ASSERT_NE(*r, nullptr);
  EXPECT_EQ((*r)->pid, Pid{500});
  EXPECT_EQ(idx.refreshes(), 2u);
  auto none = idx.resolve(Dtb{0x2000});
  ASSERT_TRUE(none);
  EXPECT_EQ(*none, nullptr);
}

TEST_F(ProcessesTest, CurrentTaskFromGsBaseAndPerCpuOffset) {
  auto gs = guest->set_current(0, bash);
  ASSERT_TRUE(gs);
  auto cur = lx->current_task(*gs);
  ASSERT_TRUE(cur) << cur.error().message;
  EXPECT_EQ(cur->pid, Pid{412});
  auto base = lx->per_cpu_base(0);
  ASSERT_TRUE(base);
  EXPECT_EQ(*base, *gs);
  auto idle = guest->set_current(1, guest->init_task());
  ASSERT_TRUE(idle);
  auto swapper = lx->current_task(*idle);
  ASSERT_TRUE(swapper);
  EXPECT_EQ(swapper->pid, Pid{0});
  EXPECT_EQ(swapper->comm, "swapper/0");
}

TEST_F(ProcessesTest, ACycleThatSkipsInitTaskIsAnErrorNotAHang) {
  // bash.tasks.next -> sshd.tasks: a loop that never returns to init_task.
  ASSERT_TRUE(guest->mem().write_u64(guest->pa_of(GVA{bash.value + FakeLayout::kTasks}), sshd.value + FakeLayout::kTasks));
  auto ps = lx->processes();
  ASSERT_FALSE(ps);
  EXPECT_NE(ps.error().message.find("loops"), std::string::npos) << ps.error().message;
}

TEST_F(ProcessesTest, ABadPointerNamesTheTaskAndTheField) {
  ASSERT_TRUE(guest->mem().write_u64(guest->pa_of(GVA{sshd.value + FakeLayout::kTasks}), 0xffffc90000001000ULL + FakeLayout::kTasks));
  auto ps = lx->processes();
  ASSERT_FALSE(ps);
  EXPECT_NE(ps.error().message.find("reading task_struct at 0xffffc90000001000"), std::string::npos) << ps.error().message;
  ASSERT_TRUE(guest->mem().write_u64(guest->pa_of(GVA{sshd.value + FakeLayout::kTasks}), 0x1234));
  EXPECT_FALSE(lx->processes());
}

TEST_F(ProcessesTest, TheTaskBoundStopsAnEndlessList) {
  WalkLimits small;
  small.max_tasks = 2;
  auto ps = lx->processes(small);
  ASSERT_FALSE(ps);
  EXPECT_NE(ps.error().message.find("more than 2"), std::string::npos);
}

TEST(StateLetter, MatchesProcArray) {
  EXPECT_EQ(state_letter(0, 0), 'R');
  EXPECT_EQ(state_letter(1, 0), 'S');
  EXPECT_EQ(state_letter(2, 0), 'D');
  EXPECT_EQ(state_letter(4, 0), 'T');
  EXPECT_EQ(state_letter(8, 0), 't');
  EXPECT_EQ(state_letter(0, 0x20), 'Z');
  EXPECT_EQ(state_letter(0, 0x10), 'X');
  EXPECT_EQ(state_letter(0x402, 0), 'I');
  EXPECT_EQ(state_letter(0x40, 0), 'P');
}
