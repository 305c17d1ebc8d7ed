// Breakpoints added and removed over the control channel (AddBreakpointMsg / RemoveBreakpointMsg):
// what apply_control accepts into the table, and every rejection with its reason, the table left
// as it was. The plugin side (flush, callback) is tested on the real guest
// (tests/integration/monitor/breakpoints_integration_test.cpp).
#include "bp_sites.hpp"
#include "config.hpp"

#include <gtest/gtest.h>

#include <string>

namespace hvtrace::monitor {
namespace {

constexpr std::uint64_t kKernelVa = 0xffffffff81234560ULL;
constexpr std::uint64_t kUserVa = 0x401126;

abi::AddBreakpointMsg add(std::uint32_t id, std::uint64_t va, abi::BreakpointKind kind, std::uint16_t n_dtbs = 0,
                          std::uint64_t dtb = 0x1234000, abi::Action act = abi::Action::kAsync) {
  abi::AddBreakpointMsg m{};
  m.hdr = abi::CtlHeader{abi::kCtlMagic, static_cast<std::uint16_t>(abi::kAbiVersion),
                         static_cast<std::uint16_t>(abi::CtlType::kAddBreakpoint), sizeof m, 1};
  m.id = id;
  m.va = va;
  m.kind = static_cast<std::uint8_t>(kind);
  m.action = static_cast<std::uint8_t>(act);
  m.n_dtbs = n_dtbs;
  for (std::uint16_t i = 0; i < n_dtbs && i < abi::kMaxBreakpointDtbs; ++i) m.dtbs[i] = dtb + 0x2000 * i;
  return m;
}

abi::RemoveBreakpointMsg remove(std::uint32_t id) {
  abi::RemoveBreakpointMsg m{};
  m.hdr = abi::CtlHeader{abi::kCtlMagic, static_cast<std::uint16_t>(abi::kAbiVersion),
                         static_cast<std::uint16_t>(abi::CtlType::kRemoveBreakpoint), sizeof m, 2};
  m.id = id;
  return m;
}

// Applies `m` to `cfg`; on success `cfg` becomes the next configuration. Returns the reason ("" if ok).
template <typename M>
std::string apply_to(FilterConfig* cfg, const M& m) {
  FilterConfig next;
  next.generation = 999;
  abi::CtlType type{};
  std::string why;
  const auto st = apply_control(&m, sizeof m, *cfg, &next, &type, &why);
  if (st != abi::CtlStatus::kOk) {
    EXPECT_EQ(st, abi::CtlStatus::kBadValue) << why;
    EXPECT_FALSE(why.empty());
    EXPECT_EQ(next.generation, 999u) << "a rejected message wrote the next configuration";
    return why.empty() ? "(no reason)" : why;
  }
  EXPECT_EQ(next.generation, cfg->generation + 1);
  *cfg = next;
  return "";
}

TEST(Breakpoints, KernelAndUserBreakpointsGoIntoTheTableWithTheirScope) {
  FilterConfig c;
  ASSERT_EQ(apply_to(&c, add(7, kKernelVa, abi::BreakpointKind::kKernel)), "");
  ASSERT_EQ(apply_to(&c, add(8, kKernelVa + 16, abi::BreakpointKind::kKernel, 2, 0x1234000, abi::Action::kSync)), "");
  ASSERT_EQ(apply_to(&c, add(9, kUserVa, abi::BreakpointKind::kUser, 1, 0x6000)), "");
  ASSERT_EQ(c.n_bps, 3u);
  EXPECT_EQ(c.bps[0].id, 7u);
  EXPECT_EQ(c.bps[0].va, kKernelVa);
  EXPECT_TRUE(c.bps[0].fires_in(0x1234000));
  EXPECT_TRUE(c.bps[0].fires_in(0x9999000)) << "a kernel breakpoint without DTBs fires in every address space";
  EXPECT_EQ(c.bps[1].action, Action::kSync);
  EXPECT_TRUE(c.bps[1].fires_in(0x1234000));
  EXPECT_TRUE(c.bps[1].fires_in(0x1236000));
  EXPECT_FALSE(c.bps[1].fires_in(0x1238000));
  EXPECT_EQ(c.bps[2].kind, abi::BreakpointKind::kUser);
  EXPECT_TRUE(c.bps[2].fires_in(0x6000));
  EXPECT_FALSE(c.bps[2].fires_in(0x8000)) << "the same user address in another process";
  // The same user address in a second process is another breakpoint, not a duplicate.
  ASSERT_EQ(apply_to(&c, add(10, kUserVa, abi::BreakpointKind::kUser, 1, 0x8000)), "");
  EXPECT_EQ(c.n_bps, 4u);
  // Other messages keep the table.
  abi::SetSnapLenMsg sn{};
  sn.hdr = abi::CtlHeader{abi::kCtlMagic, static_cast<std::uint16_t>(abi::kAbiVersion),
                          static_cast<std::uint16_t>(abi::CtlType::kSetSnapLen), sizeof sn, 3};
  sn.snap_len = 64;
  ASSERT_EQ(apply_to(&c, sn), "");
  EXPECT_EQ(c.n_bps, 4u);
  EXPECT_EQ(c.bps[3].id, 10u);
}

TEST(Breakpoints, ATracedScopeBreakpointFollowsTheDtbFilterAsItChanges) {
  FilterConfig c;
  ASSERT_EQ(apply_to(&c, add(5, kKernelVa, abi::BreakpointKind::kKernelTraced, 0, 0, abi::Action::kSync)), "");
  ASSERT_EQ(c.n_bps, 1u);
  EXPECT_TRUE(c.bp_fires_in(c.bps[0], 0x9999000)) << "no DTB filter yet: every address space is traced";
  abi::SetDtbsMsg d{};
  d.hdr = abi::CtlHeader{abi::kCtlMagic, static_cast<std::uint16_t>(abi::kAbiVersion),
                         static_cast<std::uint16_t>(abi::CtlType::kSetDtbs), sizeof d, 2};
  d.mode = static_cast<std::uint32_t>(abi::DtbMode::kSet);
  d.count = 1;
  d.dtbs[0] = 0x6000;
  ASSERT_EQ(apply_to(&c, d), "");
  ASSERT_EQ(c.n_bps, 1u) << "changing the DTB filter keeps the breakpoint";
  EXPECT_TRUE(c.bp_fires_in(c.bps[0], 0x6000));
  EXPECT_FALSE(c.bp_fires_in(c.bps[0], 0x8000)) << "an address space outside the filter";
  d.dtbs[0] = 0x8000;
  ASSERT_EQ(apply_to(&c, d), "");
  EXPECT_FALSE(c.bp_fires_in(c.bps[0], 0x6000)) << "the scope follows the filter, it is not copied when added";
  EXPECT_TRUE(c.bp_fires_in(c.bps[0], 0x8000));
  // The other kinds keep their own scope whatever the filter.
  ASSERT_EQ(apply_to(&c, add(6, kKernelVa, abi::BreakpointKind::kKernel)), "") << "another scope at the same address";
  EXPECT_TRUE(c.bp_fires_in(c.bps[1], 0x6000));
  const auto why = apply_to(&c, add(7, kKernelVa + 1, abi::BreakpointKind::kKernelTraced, 1));
  EXPECT_NE(why.find("takes no DTBs"), std::string::npos) << why;
  EXPECT_NE(apply_to(&c, add(7, kUserVa, abi::BreakpointKind::kKernelTraced)).find("lower-half"), std::string::npos);
  EXPECT_NE(apply_to(&c, add(7, kKernelVa, abi::BreakpointKind::kKernelTraced)).find("duplicate of breakpoint 5"),
            std::string::npos);
}

TEST(Breakpoints, RemoveTakesOutOnlyThatIdAndKeepsTheOrder) {
  FilterConfig c;
  for (std::uint32_t id = 1; id <= 4; ++id)
    ASSERT_EQ(apply_to(&c, add(id, kKernelVa + id, abi::BreakpointKind::kKernel)), "");
  ASSERT_EQ(apply_to(&c, remove(2)), "");
  ASSERT_EQ(c.n_bps, 3u);
  EXPECT_EQ(c.bps[0].id, 1u);
  EXPECT_EQ(c.bps[1].id, 3u);
  EXPECT_EQ(c.bps[2].id, 4u);
  EXPECT_EQ(c.bps[3].va, 0u) << "the freed slot is cleared";
  EXPECT_NE(apply_to(&c, remove(2)).find("no breakpoint with id 2"), std::string::npos);
  auto bad = remove(3);
  bad.reserved = 1;
  EXPECT_NE(apply_to(&c, bad).find("reserved"), std::string::npos);
  // A removed id may be used again, at another address.
  ASSERT_EQ(apply_to(&c, add(2, kKernelVa + 0x100, abi::BreakpointKind::kKernel)), "");
  EXPECT_EQ(c.bps[3].va, kKernelVa + 0x100);
}

TEST(Breakpoints, BadBreakpointsAreRejectedWithAReasonAndChangeNothing) {
  FilterConfig c;
  ASSERT_EQ(apply_to(&c, add(1, kKernelVa, abi::BreakpointKind::kKernel)), "");
  const FilterConfig before = c;
  const auto has = [](const std::string& why, const char* what) {
    return why.find(what) != std::string::npos ? ::testing::AssertionSuccess()
                                               : ::testing::AssertionFailure() << "reason: '" << why << "'";
  };
  EXPECT_TRUE(has(apply_to(&c, add(0, kKernelVa + 1, abi::BreakpointKind::kKernel)), "id 0"));
  EXPECT_TRUE(has(apply_to(&c, add(2, 0, abi::BreakpointKind::kKernel)), "address 0"));
  EXPECT_TRUE(has(apply_to(&c, add(2, 0x0000800000000000ULL, abi::BreakpointKind::kKernel)), "not canonical"));
  EXPECT_TRUE(has(apply_to(&c, add(2, 0xffff7fffffffffffULL, abi::BreakpointKind::kKernel)), "not canonical"));
  EXPECT_TRUE(has(apply_to(&c, add(2, kUserVa, abi::BreakpointKind::kKernel)), "lower-half"));
  EXPECT_TRUE(has(apply_to(&c, add(2, kKernelVa + 1, abi::BreakpointKind::kUser, 1)), "upper-half"));
  EXPECT_TRUE(has(apply_to(&c, add(2, kUserVa, abi::BreakpointKind::kUser, 0)), "exactly one DTB"));
  EXPECT_TRUE(has(apply_to(&c, add(2, kUserVa, abi::BreakpointKind::kUser, 2)), "exactly one DTB"));
  EXPECT_TRUE(has(apply_to(&c, add(2, kKernelVa + 1, abi::BreakpointKind::kKernel, 5)), "0 (every address space) to 4"));
  EXPECT_TRUE(has(apply_to(&c, add(2, kKernelVa + 1, abi::BreakpointKind::kKernel, 1, 0x1234567)), "page-table base"));
  auto past = add(2, kKernelVa + 1, abi::BreakpointKind::kKernel, 1);
  past.dtbs[3] = 0x8000;
  EXPECT_TRUE(has(apply_to(&c, past), "past n_dtbs"));
  auto act = add(2, kKernelVa + 1, abi::BreakpointKind::kKernel);
  act.action = 3;
  EXPECT_TRUE(has(apply_to(&c, act), "action 3"));
  auto kind = add(2, kKernelVa + 1, abi::BreakpointKind::kKernel);
  kind.kind = 0;
  EXPECT_TRUE(has(apply_to(&c, kind), "kind 0"));
  EXPECT_TRUE(has(apply_to(&c, add(1, kKernelVa + 1, abi::BreakpointKind::kKernel)), "id already in use"));
  EXPECT_TRUE(has(apply_to(&c, add(2, kKernelVa, abi::BreakpointKind::kKernel)), "duplicate of breakpoint 1"));
  EXPECT_EQ(c.n_bps, before.n_bps);
  EXPECT_EQ(c.generation, before.generation);
  // The same address with another scope is not a duplicate.
  EXPECT_EQ(apply_to(&c, add(2, kKernelVa, abi::BreakpointKind::kKernel, 1)), "");
}

TEST(Breakpoints, AtMost64AndTheRejectedOneSaysSo) {
  FilterConfig c;
  for (std::uint32_t id = 1; id <= abi::kMaxBreakpoints; ++id)
    ASSERT_EQ(apply_to(&c, add(id, kKernelVa + id * 16, abi::BreakpointKind::kKernel)), "") << id;
  EXPECT_NE(apply_to(&c, add(65, kKernelVa + 65 * 16, abi::BreakpointKind::kKernel)).find("table is full"),
            std::string::npos);
  EXPECT_EQ(c.n_bps, 64u);
  ASSERT_EQ(apply_to(&c, remove(64)), "");
  EXPECT_EQ(apply_to(&c, add(65, kKernelVa + 65 * 16, abi::BreakpointKind::kKernel)), "");
}

TEST(Breakpoints, BpArgumentsAreInitialKernelBreakpointsWithTheBpAction) {
  Options o;
  std::string why;
  const char* argv[] = {"shm=/r/m", "bp=0xffffffff81000010", "bp=0xffffffff81000020", "bp_action=sync"};
  ASSERT_TRUE(parse_options(4, argv, &o, &why)) << why;
  ASSERT_EQ(o.initial.n_bps, 2u);
  EXPECT_EQ(o.initial.bps[1].id, abi::kInitialBreakpointId + 1);
  EXPECT_EQ(o.initial.bps[1].va, 0xffffffff81000020ULL);
  EXPECT_EQ(o.initial.bps[0].action, Action::kSync) << "bp_action= after the bp= arguments still applies";
  // They can be removed at run time like any other.
  FilterConfig c = o.initial;
  ASSERT_EQ(apply_to(&c, remove(abi::kInitialBreakpointId)), "");
  EXPECT_EQ(c.n_bps, 1u);
}

// Which table changes flush the code cache (bp_sites.hpp): only an address with no callback yet.
TEST(BreakpointSites, OnlyANewAddressFlushesRemovalsAndReAddsDoNot) {
  std::uint64_t sites[4] = {};
  std::uint32_t n = 0;
  const std::uint64_t fork_bp[] = {kKernelVa};
  EXPECT_TRUE(update_bp_sites(sites, n, 4, fork_bp, 1));   // the first breakpoint: translate it
  EXPECT_EQ(n, 1u);
  const std::uint64_t with_creds[] = {kKernelVa, kUserVa, kUserVa + 0x40};
  EXPECT_TRUE(update_bp_sites(sites, n, 4, with_creds, 3));   // two new addresses: one flush
  EXPECT_EQ(n, 3u);
  EXPECT_FALSE(update_bp_sites(sites, n, 4, fork_bp, 1)) << "a removal must not flush";
  EXPECT_EQ(n, 3u) << "the removed addresses keep their (stale) callbacks";
  EXPECT_FALSE(update_bp_sites(sites, n, 4, with_creds, 3)) << "the same addresses again (the next connection) must not flush";
  const std::uint64_t none[] = {0};
  EXPECT_FALSE(update_bp_sites(sites, n, 4, none, 0));
  // A scoped duplicate (two breakpoints at one address) needs one site.
  const std::uint64_t dup[] = {kUserVa, kUserVa};
  EXPECT_FALSE(update_bp_sites(sites, n, 4, dup, 2));
  EXPECT_EQ(n, 3u);
}

TEST(BreakpointSites, AFullListIsRebuiltFromTheTable) {
  std::uint64_t sites[3] = {};
  std::uint32_t n = 0;
  const std::uint64_t a[] = {0x1000, 0x2000, 0x3000};
  EXPECT_TRUE(update_bp_sites(sites, n, 3, a, 3));
  const std::uint64_t b[] = {0x2000, 0x4000};   // 0x4000 does not fit beside the stale ones
  EXPECT_TRUE(update_bp_sites(sites, n, 3, b, 2));
  ASSERT_EQ(n, 2u);
  EXPECT_EQ(sites[0], 0x2000u);
  EXPECT_EQ(sites[1], 0x4000u);
  const std::uint64_t c[] = {0x5000, 0x5000, 0x6000};   // a duplicate gets one site
  EXPECT_TRUE(update_bp_sites(sites, n, 3, c, 3));
  ASSERT_EQ(n, 2u);
  EXPECT_EQ(sites[0], 0x5000u);
  EXPECT_EQ(sites[1], 0x6000u);
}

}  // namespace
}  // namespace hvtrace::monitor
