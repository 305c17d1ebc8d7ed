// Page walks over fake memory built by PageTableBuilder: every page size, both paging modes,
// permission bits, failures naming their level, loops, and the translation cache.
#include "arch/page_table_builder.hpp"
#include "arch/paging.hpp"

#include <gtest/gtest.h>

using namespace hvtrace;
using namespace hvtrace::arch;

namespace {
constexpr std::uint64_t kRam = 64ULL << 20;
constexpr GPA kPool{0x100000};

class PagingTest : public ::testing::TestWithParam<PagingMode> {
 protected:
  mem::FakeMem mem{kRam};
  PageTableBuilder b{mem, GetParam(), kPool, 64};
};
}  // namespace

TEST_P(PagingTest, TranslatesAllPageSizesAndReportsEveryLevel) {
  ASSERT_TRUE(b.map(GVA{0x400000}, GPA{0x2000000}, 4096, kPteWrite | kPteUser));
  ASSERT_TRUE(b.map(GVA{0xffffffff81000000}, GPA{0x1000000}, 1 << 21, kPteWrite));
  ASSERT_TRUE(b.map(GVA{0xffff888000000000}, GPA{0}, 1 << 30, kPteWrite | kPteNx));

  Walk w = walk(mem, b.dtb(), GVA{0x400123}, GetParam());
  ASSERT_TRUE(w.ok()) << w.error().message;
  EXPECT_EQ(w.pa, GPA{0x2000123});
  EXPECT_EQ(w.page_size, 4096u);
  EXPECT_EQ(w.nsteps, static_cast<int>(GetParam()));
  EXPECT_EQ(w.steps[0].level, static_cast<int>(GetParam()));
  EXPECT_EQ(w.steps[static_cast<std::size_t>(w.nsteps - 1)].level, 1);
  EXPECT_TRUE(w.user);
  EXPECT_TRUE(w.writable);
  EXPECT_FALSE(w.nx);

  w = walk(mem, b.dtb(), GVA{0xffffffff811abcde}, GetParam());
  ASSERT_TRUE(w.ok()) << w.error().message;
  EXPECT_EQ(w.pa, GPA{0x11abcde});
  EXPECT_EQ(w.page_size, 1u << 21);
  EXPECT_FALSE(w.user);

  w = walk(mem, b.dtb(), GVA{0xffff888003456789}, GetParam());
  ASSERT_TRUE(w.ok()) << w.error().message;
  EXPECT_EQ(w.pa, GPA{0x3456789});
  EXPECT_EQ(w.page_size, 1u << 30);
  EXPECT_TRUE(w.nx);
}

TEST_P(PagingTest, NotPresentNamesTheLevelAndTheCr3) {
  ASSERT_TRUE(b.map(GVA{0x400000}, GPA{0x2000000}, 4096));
  Walk w = walk(mem, b.dtb(), GVA{0x401000}, GetParam());  // same PT, empty PTE
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.fault, WalkFault::kNotPresent);
  EXPECT_EQ(w.fault_level, 1);
  EXPECT_NE(w.error().message.find("PTE not present"), std::string::npos) << w.error().message;

  const GVA far{GetParam() == PagingMode::k5Level ? 0xff00000000000000ULL : 0x7f0000000000ULL};
  w = walk(mem, b.dtb(), far, GetParam());  // empty top-level entry
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.fault_level, static_cast<int>(GetParam()));
  const std::string top = GetParam() == PagingMode::k5Level ? "PML5E not present" : "PML4E not present";
  EXPECT_NE(w.error().message.find(top), std::string::npos) << w.error().message;
  EXPECT_NE(w.error().message.find(fmt::format("cr3={:#x}", b.dtb().value)), std::string::npos);
}

TEST_P(PagingTest, NonCanonicalAndOutOfRamTablesFailCleanly) {
  EXPECT_EQ(walk(mem, b.dtb(), GVA{0x0000800000000000}, PagingMode::k4Level).fault, WalkFault::kNonCanonical);
  // A top-level entry pointing outside RAM.
  auto e = b.entry_address(GVA{0x400000}, static_cast<int>(GetParam()));
  ASSERT_TRUE(e);
  ASSERT_TRUE(mem.write_u64(*e, 0x7ff0000000ULL | kPtePresent));
  Walk w = walk(mem, b.dtb(), GVA{0x400000}, GetParam());
  EXPECT_EQ(w.fault, WalkFault::kReadFailed);
  EXPECT_NE(w.error().message.find("outside guest RAM"), std::string::npos) << w.error().message;
}

TEST_P(PagingTest, LoopsInPageTablesTerminate) {
  // The top-level entry points back at the root table (recursive mapping), and a PDE points at
  // its own page directory: the walk reads at most one entry per level and ends.
  auto top = b.entry_address(GVA{0x400000}, static_cast<int>(GetParam()));
  ASSERT_TRUE(top);
  ASSERT_TRUE(mem.write_u64(*top, b.dtb().value | kPtePresent | kPteWrite));
  for (std::uint64_t va = 0; va < (1ULL << 30); va += 0x1234567) {
    Walk w = walk(mem, b.dtb(), GVA{va}, GetParam());
    EXPECT_LE(w.nsteps, static_cast<int>(GetParam()));
  }
}

TEST_P(PagingTest, ReservedLargeBitInTopLevelIsAFault) {
  auto top = b.entry_address(GVA{0x400000}, static_cast<int>(GetParam()));
  ASSERT_TRUE(top);
  ASSERT_TRUE(mem.write_u64(*top, 0x200000 | kPtePresent | kPteLarge));
  EXPECT_EQ(walk(mem, b.dtb(), GVA{0x400000}, GetParam()).fault, WalkFault::kReservedBits);
}

TEST_P(PagingTest, CacheIsRevalidatedWhenTheGuestRemaps) {
  ASSERT_TRUE(b.map(GVA{0x400000}, GPA{0x2000000}, 4096));
  AddressSpace as(mem, b.dtb(), GetParam());
  EXPECT_EQ(*as.translate(GVA{0x400010}), GPA{0x2000010});
  EXPECT_EQ(as.cache_size(), 1u);
  ASSERT_TRUE(b.map(GVA{0x400000}, GPA{0x3000000}, 4096));  // guest remaps the page
  EXPECT_EQ(*as.translate(GVA{0x400010}), GPA{0x3000010});
  auto pte = b.entry_address(GVA{0x400000}, 1);
  ASSERT_TRUE(mem.write_u64(*pte, 0));  // guest unmaps it
  EXPECT_FALSE(as.translate(GVA{0x400010}));
}

TEST_P(PagingTest, AddressSpaceReadsAcrossPages) {
  ASSERT_TRUE(b.map(GVA{0x400000}, GPA{0x2000000}, 4096));
  ASSERT_TRUE(b.map(GVA{0x401000}, GPA{0x2800000}, 4096));
  ASSERT_TRUE(mem.write_as<std::uint32_t>(GPA{0x2000ffc}, 0x44332211));
  ASSERT_TRUE(mem.write_as<std::uint32_t>(GPA{0x2800000}, 0x88776655));
  AddressSpace as(mem, b.dtb(), GetParam());
  EXPECT_EQ(*as.read_as<std::uint64_t>(GVA{0x400ffc}), 0x8877665544332211ULL);
  EXPECT_FALSE(as.read_as<std::uint64_t>(GVA{0x401ffc}));  // runs into an unmapped page
}

TEST_P(PagingTest, DetectsThePagingModeFromTheTables) {
  ASSERT_TRUE(b.map(GVA{0xffffffff81000000}, GPA{0x1000000}, 1 << 21));
  auto m = detect_paging_mode(mem, b.dtb(), GVA{0xffffffff81000000}, GPA{0x1000000});
  ASSERT_TRUE(m) << m.error().message;
  EXPECT_EQ(*m, GetParam());
  // A 4-level walk of 5-level tables (or the reverse) must not silently give the right answer.
  PagingMode other = GetParam() == PagingMode::k5Level ? PagingMode::k4Level : PagingMode::k5Level;
  Walk w = walk(mem, b.dtb(), GVA{0xffffffff81000000}, other);
  EXPECT_FALSE(w.ok() && w.pa == GPA{0x1000000});
}

INSTANTIATE_TEST_SUITE_P(Modes, PagingTest, ::testing::Values(PagingMode::k4Level, PagingMode::k5Level),
                         [](const auto& p) { return p.param == PagingMode::k5Level ? "Level5" : "Level4"; });

TEST(Canonical, DependsOnTheMode) {
  EXPECT_TRUE(is_canonical(GVA{0xff00000000000000}, PagingMode::k5Level));
  EXPECT_FALSE(is_canonical(GVA{0xff00000000000000}, PagingMode::k4Level));
  EXPECT_TRUE(is_canonical(GVA{0xffff800000000000}, PagingMode::k4Level));
}
