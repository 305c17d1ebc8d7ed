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

// A profile cached by an older hvtrace lacks fields added since (the open-file layout): the warm
// attach rereads the layouts from BTF and stores them, so the next attach is warm and complete.
TEST_P(DiscoveryTest, AnOldCachedProfileGainsTheFieldsAddedSince) {
  TempDir dir;
  AttachOptions ao;
  ao.profile_dir = dir.path;
  auto g = FakeGuest::build(opts());
  ASSERT_TRUE(g);
  std::filesystem::path file;
  {
    auto k = Kernel::attach((*g)->mem(), ao);
    ASSERT_TRUE(k) << k.error().message;
    Profile old = (*k)->profile();
    for (const char* f : {"fdtable.fd", "socket.sk", "task_struct.signal"}) {   // one found, one absent from BTF
      old.fields.erase(f);
      old.sources.erase(std::string("field ") + f);
    }
    file = dir.path / (old.key() + ".json");
    ASSERT_TRUE(save_profile_file(old, file));
  }
  auto k = Kernel::attach((*g)->mem(), ao);
  ASSERT_TRUE(k) << k.error().message;
  EXPECT_NE((*k)->how().find("layouts updated from BTF"), std::string::npos) << (*k)->how();
  EXPECT_TRUE((*k)->profile().field("fdtable.fd").has_value());
  EXPECT_FALSE((*k)->profile().lacks_wanted_fields());
  auto saved = load_profile_file(file);
  ASSERT_TRUE(saved) << saved.error().message;
  EXPECT_TRUE(saved->field("socket.sk").has_value());
  EXPECT_FALSE(saved->lacks_wanted_fields());
  EXPECT_EQ(saved->sources.at("field socket.sk").find("[cached in"), saved->sources.at("field socket.sk").rfind("[cached in"))
      << "one note, not one per attach";
  auto again = Kernel::attach((*g)->mem(), ao);
  ASSERT_TRUE(again);
  EXPECT_EQ((*again)->how().find("layouts"), std::string::npos) << (*again)->how();
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

// A guest process can write anything into its own pages, anywhere in physical RAM: here, below
// the kernel, 4200 digit runs ("0".."9" as a token table has them, more than a scan of all RAM
// examines) and four complete copies of the kernel's kallsyms tables. Discovery finds the kernel
// image from its page tables first and examines only the digit runs inside it: exactly the real
// token table, counted by the discovery's own stats, not timed.
namespace {
Result<void> plant_fakes(FakeGuest& g) {
  auto& m = g.mem();
  std::vector<std::byte> runs;
  for (int i = 0; i < 4200; ++i) {
    const char run[] = "x\0" "0\0" "1\0" "2\0" "3\0" "4\0" "5\0" "6\0" "7\0" "8\0" "9\0" "abcdefghij";
    const auto* b = reinterpret_cast<const std::byte*>(run);
    runs.insert(runs.end(), b, b + sizeof run);
  }
  HVTRACE_TRY(m.write(GPA{0x100000}, runs));
  for (std::uint64_t at : {0x800000ULL, 0xc00000ULL, 0x1000000ULL, 0x1400000ULL}) {
    auto t = write_kallsyms_for_test(m, GPA{at}, g.symbols(), g.options().text_va, true);
    if (!t) return std::move(t).error();
  }
  return {};
}
}  // namespace

TEST_P(DiscoveryTest, PlantedTokenTablesOutsideTheImageAreNeverExamined) {
  auto g = FakeGuest::build(opts());
  ASSERT_TRUE(g) << g.error().message;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*g)->add_task({.pid = 100 + i, .comm = "user", .parent = GVA{}}));
  ASSERT_TRUE(plant_fakes(**g));
  const auto& o = (*g)->options();

  // The planted runs are real candidates for a scan of all RAM: it stops at its budget, before
  // ever reaching the kernel's tables (they lie above the plants).
  KallsymsScanStats all;
  EXPECT_FALSE(locate_kallsyms((*g)->mem(), {}, [](const KallsymsTables&) { return false; }, nullptr, &all));
  EXPECT_EQ(all.digit_runs, kMaxDigitRuns);

  auto k = Kernel::discover((*g)->mem());
  ASSERT_TRUE(k) << k.error().message;
  EXPECT_EQ((*k)->layout().text_pa, GPA{o.text_pa});
  EXPECT_EQ((*k)->layout().text_va, GVA{o.text_va});
  const DiscoveryStats& st = (*k)->discovery_stats();
  EXPECT_FALSE(st.whole_ram_scanned);
  ASSERT_EQ(st.images.size(), 1u);
  EXPECT_EQ(st.images[0].text_pa, GPA{o.text_pa});
  EXPECT_EQ(st.images[0].text_va, GVA{o.text_va});
  EXPECT_EQ(st.images[0].size, FakeGuest::kImageSize);
  EXPECT_GE(st.images[0].roots, 4u) << "init_top_pgt and the three user pgds (5-level: the p4d too)";
  EXPECT_EQ(st.kallsyms.digit_runs, 1u) << "only the kernel's own token table is examined";
  EXPECT_EQ(st.kallsyms.token_tables, 1u);
  EXPECT_EQ(st.kallsyms.complete, 1u);
  EXPECT_EQ(st.rejected_outside_image, 0u);
}

// Forged page-table chains too: pages that look like roots whose entry 511 leads to a page
// directory "mapping" the planted tables as a 32 MiB image at physical 0. Each forged root counts
// once, so with fewer forged roots than the guest has processes the real image ranks first; with
// more, the forged image is scanned first but within its own budget, the real one is still
// examined, and the planted copies are rejected before decoding (their tables do not lie in the
// image their relative base names).
TEST_P(DiscoveryTest, ForgedPageTableChainsCostABoundedShare) {
  auto g = FakeGuest::build(opts());
  ASSERT_TRUE(g) << g.error().message;
  ASSERT_TRUE((*g)->add_task({.pid = 100, .comm = "user", .parent = GVA{}}));
  ASSERT_TRUE(plant_fakes(**g));
  auto& m = (*g)->mem();
  const bool five = GetParam() == arch::PagingMode::k5Level;
  // Forged tables at 0x2000000..: [p4d,] pdpt (entry 510 -> pd), pd with 16 2 MiB entries from 0.
  const std::uint64_t p4d = 0x2000000, pdpt = 0x2001000, pd = 0x2002000, roots = 0x2010000;
  constexpr std::uint64_t kTable = 0x63, kLarge2M = 0xe3;   // present|rw|accessed|dirty (+PS)
  if (five) {
    ASSERT_TRUE(m.write_u64(GPA{p4d + 8 * 511}, pdpt | kTable));
  }
  ASSERT_TRUE(m.write_u64(GPA{pdpt + 8 * 510}, pd | kTable));
  for (std::uint64_t i = 0; i < 16; ++i) ASSERT_TRUE(m.write_u64(GPA{pd + 8 * i}, (i << 21) | kLarge2M));
  for (std::uint64_t r = 0; r < 8; ++r) ASSERT_TRUE(m.write_u64(GPA{roots + r * 4096 + 8 * 511}, (five ? p4d : pdpt) | kTable));

  auto k = Kernel::discover(m);
  ASSERT_TRUE(k) << k.error().message;
  EXPECT_EQ((*k)->layout().text_pa, GPA{(*g)->options().text_pa});
  const DiscoveryStats& st = (*k)->discovery_stats();
  ASSERT_EQ(st.images.size(), 2u);
  EXPECT_EQ(st.images[0].text_pa, GPA{0}) << "8 forged roots outrank the real image's 2";
  EXPECT_EQ(st.images[1].text_pa, GPA{(*g)->options().text_pa});
  EXPECT_LE(st.images.size(), kMaxKernelImageCandidates);
  // The forged image's runs, up to its budget, plus the real token table; no decode of a copy.
  EXPECT_EQ(st.kallsyms.digit_runs, kMaxDigitRuns + 1);
  EXPECT_EQ(st.rejected_outside_image, 0u) << "the copies lie past the forged image's budget";
}
