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

TEST_F(Guest, AWarmAttachRevalidatesTheCachedTablesWhereverTheLayoutPutsThem) {
  // 6.12's kallsyms_relative_base lies after the token table: the cached positions must still
  // validate and decode the same symbols as the cold discovery did.
  const fs::path dir = fs::temp_directory_path() / ("hvtrace-kernels-profiles-" + std::to_string(::getpid()));
  kernel::AttachOptions o;
  o.profile_dir = dir;
  auto first = kernel::Kernel::attach(*ram_, o);
  ASSERT_TRUE(first.ok()) << first.error().message;
  auto second = kernel::Kernel::attach(*ram_, o);
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_EQ((*second)->how().rfind("cached profile", 0), 0u) << (*second)->how();
  EXPECT_FALSE((*second)->kallsyms().has_value());  // positions come from the profile, not a scan
  auto cold_syms = (*first)->all_symbols();
  auto warm_syms = (*second)->all_symbols();
  ASSERT_TRUE(warm_syms.ok()) << warm_syms.error().message;
  ASSERT_TRUE(cold_syms.ok()) << cold_syms.error().message;
  ASSERT_EQ(warm_syms->size(), cold_syms->size());
  EXPECT_EQ(warm_syms->back().name, cold_syms->back().name);
  EXPECT_EQ(warm_syms->back().addr, cold_syms->back().addr);
  fs::remove_all(dir);
}
