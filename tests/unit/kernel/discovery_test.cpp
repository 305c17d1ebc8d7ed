// Kernel discovery on a synthetic guest: slides, paging mode, BTF layouts, the profile cache,
// and clear errors when parts are missing.
#include "kernel/kernel.hpp"
#include "linux/fake_guest.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

using namespace hvtrace;
using namespace hvtrace::kernel;
using hvtrace::fake::FakeGuest;
using hvtrace::fake::FakeGuestOptions;
using hvtrace::fake::FakeLayout;

namespace {
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string t = "/tmp/hvtrace-prof-XXXXXX";
    path = mkdtemp(t.data());
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

class DiscoveryTest : public ::testing::TestWithParam<arch::PagingMode> {
 protected:
  FakeGuestOptions opts() {
    FakeGuestOptions o;
    o.paging = GetParam();
    if (GetParam() == arch::PagingMode::k5Level) o.page_offset_base = 0xff45678000000000ULL;
    return o;
  }
};
}  // namespace

TEST_P(DiscoveryTest, FindsSlidesPagingSymbolsAndLayouts) {
  auto g = FakeGuest::build(opts());
  ASSERT_TRUE(g) << g.error().message;
  auto k = Kernel::discover((*g)->mem(), true);
  ASSERT_TRUE(k) << k.error().message;
  const KernelLayout& l = (*k)->layout();
  EXPECT_EQ(l.text_va, GVA{(*g)->options().text_va});
  EXPECT_EQ(l.text_pa, GPA{(*g)->options().text_pa});
  EXPECT_EQ(l.virt_slide, static_cast<std::int64_t>((*g)->options().text_va - kDefaultTextVa));
  EXPECT_EQ(l.phys_slide, static_cast<std::int64_t>((*g)->options().text_pa - kDefaultTextPa));
  EXPECT_EQ(l.paging, GetParam());
  EXPECT_EQ(l.kernel_dtb, (*g)->kernel_dtb());
  EXPECT_EQ(l.page_offset_base, (*g)->options().page_offset_base);
  EXPECT_EQ((*k)->profile().banner, (*g)->options().banner);
  EXPECT_EQ((*k)->symbol("init_task"), (*g)->init_task());
  EXPECT_EQ((*k)->symbol("current_task"), GVA{FakeLayout::kCurrentTask});  // per-CPU: not slid
  EXPECT_EQ((*k)->profile().field("task_struct.pid")->offset, FakeLayout::kPid);
  EXPECT_EQ((*k)->profile().field("task_struct.tgid")->offset, FakeLayout::kTgid);
  EXPECT_EQ((*k)->profile().field("task_struct.comm")->size, 16u);
  EXPECT_EQ((*k)->profile().field("mm_struct.pgd")->offset, FakeLayout::kMmPgd);  // inside an unnamed struct
  EXPECT_EQ((*k)->profile().field("cred.euid")->offset, FakeLayout::kCredEuid);
  auto all = (*k)->all_symbols();
  ASSERT_TRUE(all);
  EXPECT_EQ(all->size(), (*g)->symbols().size());
  // Reads through every path: image, direct map.
  auto banner = (*k)->read_string(*(*k)->symbol("linux_banner"), 256);
  ASSERT_TRUE(banner);
  EXPECT_EQ(banner->rfind("Linux version 6.1.0-fake", 0), 0u);
  EXPECT_NE((*k)->profile().sources.at("field task_struct.pid").find("BTF"), std::string::npos);
}

TEST_P(DiscoveryTest, WarmAttachReusesTheCachedProfileAtANewSlide) {
  TempDir dir;
  AttachOptions ao;
  ao.profile_dir = dir.path;
  {
    auto g = FakeGuest::build(opts());
    ASSERT_TRUE(g);
    auto k = Kernel::attach((*g)->mem(), ao);
    ASSERT_TRUE(k) << k.error().message;
    EXPECT_EQ((*k)->how().rfind("cold discovery", 0), 0u) << (*k)->how();
    EXPECT_TRUE(std::filesystem::exists(dir.path / ((*k)->profile().key() + ".json")));
  }
  // Same kernel build, next boot: other slides.
  FakeGuestOptions o = opts();
  o.text_pa += 0x2000000;
  o.text_va += 0x4000000;
  auto g = FakeGuest::build(o);
  ASSERT_TRUE(g);
  auto k = Kernel::attach((*g)->mem(), ao);
  ASSERT_TRUE(k) << k.error().message;
  EXPECT_EQ((*k)->how().rfind("cached profile", 0), 0u) << (*k)->how();
  EXPECT_EQ((*k)->layout().text_va, GVA{o.text_va});
  EXPECT_EQ((*k)->layout().text_pa, GPA{o.text_pa});
  EXPECT_EQ((*k)->layout().paging, GetParam());
  EXPECT_EQ((*k)->symbol("init_task"), GVA{o.text_va + FakeGuest::kInitTaskOff});
  auto all = (*k)->all_symbols();  // re-decoded from memory at the cached positions
  ASSERT_TRUE(all) << all.error().message;
  EXPECT_EQ(all->size(), (*g)->symbols().size());
}

INSTANTIATE_TEST_SUITE_P(Paging, DiscoveryTest, ::testing::Values(arch::PagingMode::k4Level, arch::PagingMode::k5Level),
                         [](const auto& p) { return p.param == arch::PagingMode::k5Level ? "Level5" : "Level4"; });

TEST(Discovery, KernelWithoutBtfSaysSo) {
  FakeGuestOptions o;
  o.with_btf = false;
  auto g = FakeGuest::build(o);
  ASSERT_TRUE(g);
  auto k = Kernel::discover((*g)->mem());
  ASSERT_FALSE(k);
  EXPECT_NE(k.error().message.find("no BTF"), std::string::npos) << k.error().message;
}

TEST(Discovery, BrokenKernelPageTablesAreAnErrorNotAGuess) {
  auto g = FakeGuest::build();
  ASSERT_TRUE(g);
  // Wipe init_top_pgt: kallsyms is found, but nothing maps _text.
  for (std::uint64_t off = 0; off < 4096; off += 8)
    ASSERT_TRUE((*g)->mem().write_u64(GPA{(*g)->kernel_dtb().value + off}, 0));
  auto k = Kernel::discover((*g)->mem());
  ASSERT_FALSE(k);
  EXPECT_NE(k.error().message.find("init_top_pgt"), std::string::npos) << k.error().message;
}

TEST(Discovery, CorruptCachedProfileFallsBackToColdDiscovery) {
  TempDir dir;
  {
    std::ofstream(dir.path / "junk.json") << "{ not json";
    std::ofstream(dir.path / "other.json") << R"({"hvtrace_profile": 1, "banner": "x", "build_id": "", "symbols": {}, "fields": {}})";
  }
  auto g = FakeGuest::build();
  ASSERT_TRUE(g);
  AttachOptions ao;
  ao.profile_dir = dir.path;
  ao.save_cache = false;
  auto k = Kernel::attach((*g)->mem(), ao);
  ASSERT_TRUE(k) << k.error().message;
  EXPECT_EQ((*k)->how().rfind("cold discovery", 0), 0u);
}
