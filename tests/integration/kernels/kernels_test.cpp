// Discovery with no configuration on a kernel other than the default guest's. This binary runs
// the whole guest suite (guest_integration_test.cpp: every symbol against /proc/kallsyms line for
// line, ps against the guest's, a started process's address space and command line, System.map
// profiles, dumps, the RAM file never growing) on the image named by HVTRACE_GUEST_IMAGE, plus
// the checks below for what differs on bookworm-backports' 6.12: kallsyms tables names-first,
// the current task in pcpu_hot, a cold discovery with no cache at all. One boot for everything.
// Its fixture lives in an anonymous namespace, which GCC flags when the file comes in by #include.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsubobject-linkage"
#include "guest_integration_test.cpp"
#pragma GCC diagnostic pop

namespace {

// A cold attach: nothing read from or written to any profile cache.
std::unique_ptr<kernel::Kernel> cold(const mem::PhysMem& ram) {
  kernel::AttachOptions o;
  o.profile_dir = fs::temp_directory_path() / ("hvtrace-kernels-none-" + std::to_string(::getpid()));
  o.use_cache = false;
  o.save_cache = false;
  auto k = kernel::Kernel::attach(ram, o);
  EXPECT_TRUE(k.ok()) << (k.ok() ? "" : k.error().message);
  EXPECT_FALSE(fs::exists(o.profile_dir));
  return k.ok() ? std::move(k).value() : nullptr;
}

}  // namespace

TEST_F(Guest, ColdDiscoveryWithNoCacheFindsTheNamesFirstTables) {
  auto k = cold(*ram_);
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->how().rfind("cold discovery", 0), 0u) << k->how();
  const std::string release = guest("uname -r");
  EXPECT_NE(k->profile().banner.find(release.substr(0, release.find('\n'))), std::string::npos) << k->profile().banner;
  ASSERT_TRUE(k->kallsyms().has_value());
  // 6.12 emits the tables names-first (Linux >= 6.4); the default guest's 6.1 offsets-first.
  EXPECT_EQ(k->kallsyms()->layout, kernel::KallsymsLayout::kTokensFirst);
  for (const char* f : {"task_struct.comm", "task_struct.real_cred", "mm_struct.pgd", "cred.uid", "pcpu_hot.current_task"})
    EXPECT_TRUE(k->profile().field(f).has_value()) << f;
  auto lx = linux_os::Linux::attach(*k);
  ASSERT_TRUE(lx.ok()) << lx.error().message;
  auto ps = lx->processes();
  ASSERT_TRUE(ps.ok()) << ps.error().message;
  // The guest's SSH server runs as root: its uid comes through the cred offsets BTF gave.
  bool dropbear = false;
  for (const auto& p : *ps) dropbear = dropbear || (p.comm == "dropbear" && p.uid == 0 && p.dtb.has_value());
  EXPECT_TRUE(dropbear);
}

TEST_F(Guest, TheCurrentTaskComesFromPcpuHot) {
  auto k = cold(*ram_);
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
  if (cur->pid.value == 0) {  // idle: not in the task list
    EXPECT_EQ(cur->comm, "swapper/0");
    return;
  }
  auto again = lx->find_pid(cur->pid);
  ASSERT_TRUE(again.ok()) << again.error().message;
  ASSERT_TRUE(again->has_value()) << "current task pid " << cur->pid.value << " not in the task list";
  EXPECT_EQ((*again)->task, cur->task);
}
