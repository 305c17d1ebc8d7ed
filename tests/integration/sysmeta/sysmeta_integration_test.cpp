// The syscall table hvtrace reads from a real guest's memory equals the guest's own view: every
// sys_enter_* tracepoint format the guest's tracefs prints (argument types and names, one event
// per metadata record the kernel numbered), the x86-64 numbers in sys_call_table, and the i386
// entry points; a second attach takes the table from the cached profile. One guest per binary.
#include "kernel/kernel.hpp"
#include "kernel/syscall_meta.hpp"
#include "mem/phys_mem.hpp"
#include "syscalls/syscalls.hpp"
#include "vm/vm.hpp"

#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

using namespace hvtrace;
namespace fs = std::filesystem;

namespace {

class SysMeta : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto img = vm::load_image(vm::default_image_dir());
    ASSERT_TRUE(img.ok()) << img.error().message;
    vm::VmConfig c;
    c.name = "itest-sysmeta";
    c.image = std::move(img).value();
    auto v = vm::Vm::start(c);
    ASSERT_TRUE(v.ok()) << v.error().message;
    vm_ = std::move(v).value().release();
    auto ram = mem::open_ram_file(vm_->record().ram_path);
    ASSERT_TRUE(ram.ok()) << ram.error().message;
    ram_ = std::move(ram).value().release();
    kernel::AttachOptions o;
    o.use_cache = false;
    o.save_cache = false;
    auto k = kernel::Kernel::attach(*ram_, o);
    ASSERT_TRUE(k.ok()) << k.error().message;
    kernel_ = std::move(k).value().release();
    auto g = kernel::read_guest_syscalls(*kernel_);
    ASSERT_TRUE(g.ok()) << g.error().message;
    syscalls_ = new kernel::GuestSyscalls(std::move(g).value());
  }
  static void TearDownTestSuite() {
    delete syscalls_;
    delete kernel_;
    delete ram_;
    if (vm_ != nullptr) (void)vm_->shutdown();
    delete vm_;
  }
  void SetUp() override {
    if (syscalls_ == nullptr) GTEST_SKIP() << "the shared guest did not boot or its table was not read";
  }
  static std::string guest(const std::string& cmd) {
    auto r = vm_->exec(cmd);
    EXPECT_TRUE(r.ok()) << cmd << ": " << (r.ok() ? "" : r.error().message);
    if (!r.ok()) return {};
    EXPECT_EQ(r->exit_status, 0) << cmd << ": " << r->err;
    return r->out;
  }
  static const kernel::SyscallMeta* meta(std::string_view name) {
    for (const auto& m : syscalls_->meta)
      if (m.name == name) return &m;
    return nullptr;
  }
  static vm::Vm* vm_;
  static mem::FileMem* ram_;
  static kernel::Kernel* kernel_;
  static kernel::GuestSyscalls* syscalls_;
};
vm::Vm* SysMeta::vm_ = nullptr;
mem::FileMem* SysMeta::ram_ = nullptr;
kernel::Kernel* SysMeta::kernel_ = nullptr;
kernel::GuestSyscalls* SysMeta::syscalls_ = nullptr;

}  // namespace

TEST_F(SysMeta, RecordsAndOpenatAsTheSourceDeclaresIt) {
  const auto& g = *syscalls_;
  EXPECT_GE(g.meta.size(), 300u);
  EXPECT_EQ(g.rejected, 0u) << fmt::format("{}", fmt::join(g.problems, "\n"));
  const auto* openat = meta("openat");
  ASSERT_NE(openat, nullptr);
  EXPECT_EQ(openat->types, (std::vector<std::string>{"int", "const char *", "int", "umode_t"}));
  EXPECT_EQ(openat->args, (std::vector<std::string>{"dfd", "filename", "flags", "mode"}));
  EXPECT_EQ(openat->nr, 257);
  EXPECT_NE(g.source.find("BTF"), std::string::npos) << g.source;  // the layout did not fall back
}

TEST_F(SysMeta, TableNumbersAgreeWithTheNumbersTheKernelGaveItsMetadata) {
  const auto& g = *syscalls_;
  EXPECT_GE(g.x64_table.size(), 300u);
  EXPECT_EQ(g.x64_table.at(0), "read");
  EXPECT_EQ(g.x64_table.at(59), "execve");
  std::size_t checked = 0;
  for (const auto& [nr, name] : g.x64_table) {
    const auto* m = meta(name);
    if (m == nullptr) continue;
    ++checked;
    EXPECT_EQ(m->nr, static_cast<std::int32_t>(nr)) << name;
  }
  EXPECT_GE(checked, 300u);
  EXPECT_GT(g.ia32_names.size(), 400u);
  EXPECT_EQ(g.ia32_names.count("socketcall"), 1u);  // i386 only
}

// The compiled-in i386 table (the numbers `int $0x80` and the compat doors use) against the
// guest's own ia32 entry points: every i386 call up to clone3 (435, in every kernel Debian ships)
// that the kernel implements has its __ia32_sys_/__ia32_compat_sys_ symbol under the name the
// compiled-in table gives it — a wrong number, name or entry-point column shows here.
TEST_F(SysMeta, TheCompiledInI386TableMatchesTheGuestsEntryPoints) {
  const auto& t = syscalls::Table::get(hvtrace::abi::SyscallAbi::kI386);
  const auto entry_of = [&](unsigned nr) -> std::optional<std::string> {
    const auto* i = t.by_nr(nr);
    if (i == nullptr) return std::nullopt;
    return std::string(syscalls::kernel_entry_name(hvtrace::abi::SyscallAbi::kI386, nr, i->name));
  };
  // Numbers syscall_32.tbl keeps with no entry point (historic calls, vm86 on a 64-bit kernel,
  // bdflush and _sysctl removed in 5.x).
  const std::set<unsigned> none = {17, 31, 32, 35, 44, 53, 56, 58, 98, 112, 113, 127, 130, 134, 137, 149, 166, 167, 169, 188, 189, 222, 223, 251, 273, 285};
  std::size_t checked = 0;
  for (unsigned nr = 0; nr <= 435; ++nr) checked += entry_of(nr) && !none.count(nr);
  EXPECT_GE(checked, 400u);
  // The comparison `hvtrace trace` makes at attach: nothing reported for those numbers.
  const auto diffs = kernel::compare_syscall_tables(*syscalls_, [](unsigned) { return std::nullopt; }, entry_of);
  for (const auto& d : diffs) {
    unsigned nr = 0;
    if (std::sscanf(d.c_str(), "i386 nr %u:", &nr) == 1 && nr <= 435 && !none.count(nr)) ADD_FAILURE() << d;
  }
}

// The guest formats every sys_enter_<name> event from the same records: its tracefs must list
// exactly the numbered records, with the same argument types and names in the same order.
TEST_F(SysMeta, TheGuestsTracefsShowsTheSameRecords) {
  guest("mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing");
  const std::string out = guest("cd /sys/kernel/tracing/events/syscalls && grep -H 'field:' sys_enter_*/format");
  std::map<std::string, std::vector<std::pair<std::string, std::string>>> events;  // name -> (type, arg)
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    // sys_enter_openat/format:	field:const char * filename;	offset:24;	size:8;	signed:0;
    const auto slash = line.find('/');
    const auto field = line.find("field:");
    const auto semi = line.find(';', field);
    ASSERT_TRUE(line.rfind("sys_enter_", 0) == 0 && slash != std::string::npos && field != std::string::npos &&
                semi != std::string::npos)
        << line;
    const std::string name = line.substr(10, slash - 10);
    const std::string decl = line.substr(field + 6, semi - field - 6);
    const auto sp = decl.rfind(' ');
    ASSERT_NE(sp, std::string::npos) << line;
    const std::string type = decl.substr(0, sp), arg = decl.substr(sp + 1);
    auto& fields = events[name];
    if (arg.rfind("common_", 0) == 0 || arg == "__syscall_nr") continue;
    fields.emplace_back(type, arg);
  }
  ASSERT_GE(events.size(), 300u);
  std::size_t numbered = 0;
  for (const auto& m : syscalls_->meta) {
    if (m.nr < 0) continue;
    ++numbered;
    auto it = events.find(m.name);
    if (it == events.end()) {
      ADD_FAILURE() << "guest has no sys_enter_" << m.name;
      continue;
    }
    std::vector<std::pair<std::string, std::string>> ours;
    for (std::size_t i = 0; i < m.types.size(); ++i) ours.emplace_back(m.types[i], m.args[i]);
    EXPECT_EQ(ours, it->second) << m.name;
  }
  EXPECT_EQ(numbered, events.size());
  const auto& openat = events.at("openat");
  ASSERT_EQ(openat.size(), 4u);
  EXPECT_EQ(openat[1], (std::pair<std::string, std::string>{"const char *", "filename"}));
}

TEST_F(SysMeta, ASecondAttachTakesTheTableFromTheCachedProfile) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("hvtrace-sysmeta-itest-{}", ::getpid());
  fs::remove_all(dir);
  kernel::AttachOptions o;
  o.profile_dir = dir;
  auto cold = kernel::Kernel::attach(*ram_, o);
  ASSERT_TRUE(cold.ok()) << cold.error().message;
  EXPECT_FALSE((*cold)->profile().syscalls.has_value());
  auto first = kernel::guest_syscalls(**cold, dir);
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_EQ(first->meta, syscalls_->meta);
  auto warm = kernel::Kernel::attach(*ram_, o);
  ASSERT_TRUE(warm.ok()) << warm.error().message;
  ASSERT_EQ((*warm)->how().rfind("cached profile", 0), 0u) << (*warm)->how();
  ASSERT_TRUE((*warm)->profile().syscalls.has_value());
  auto second = kernel::guest_syscalls(**warm, dir);
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_NE(second->source.find("[cached in"), std::string::npos) << second->source;
  EXPECT_EQ(second->meta, syscalls_->meta);
  EXPECT_EQ(second->x64_table, syscalls_->x64_table);
  EXPECT_EQ(second->ia32_names, syscalls_->ia32_names);
  fs::remove_all(dir);
}
