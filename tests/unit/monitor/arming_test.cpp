// The armed-flag rule of monitor/arming.hpp under concurrency (also run under ThreadSanitizer):
// a control thread keeps publishing new filters and widening while vCPU threads switch address
// spaces and narrow. When everything stops, no vCPU may hold a flag below what the filter in force
// needs for its address space (that would be an undelivered event).
#include "arming.hpp"

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <random>
#include <thread>
#include <vector>

namespace hvtrace::monitor {
namespace {

struct Board {
  std::uint64_t f[3] = {0, 0, 0};
  void store(const ArmFlags& a) {
    const std::uint64_t v[3] = {a.entry, a.exit, a.cr3};
    for (int i = 0; i < 3; ++i) std::atomic_ref<std::uint64_t>(f[i]).store(v[i], std::memory_order_seq_cst);
  }
  ArmFlags load() {
    ArmFlags a;
    a.entry = std::atomic_ref<std::uint64_t>(f[0]).load();
    a.exit = std::atomic_ref<std::uint64_t>(f[1]).load();
    a.cr3 = std::atomic_ref<std::uint64_t>(f[2]).load();
    return a;
  }
};

bool covers(const ArmFlags& have, const ArmFlags& need) {
  return have.entry >= need.entry && have.exit >= need.exit && have.cr3 >= need.cr3;
}

TEST(Arming, FlagsFollowTheFilterAndTheAddressSpace) {
  FilterConfig c;
  c.dtb_mode = abi::DtbMode::kSet;
  c.n_dtbs = 1;
  c.dtbs[0] = 0x5000;
  c.actions[static_cast<int>(EventClass::kSyscallEntry)] = Action::kAsync;
  EXPECT_EQ(arm_for(c, 0x5000), (ArmFlags{1, 0, 1}));
  EXPECT_EQ(arm_for(c, 0x6000), (ArmFlags{0, 0, 1}));   // CR3 still watched: to follow the DTB
  c.dtb_mode = abi::DtbMode::kAll;
  EXPECT_EQ(arm_for(c, 0x6000), (ArmFlags{1, 0, 0}));
}

TEST(Arming, FilterChangesRacingAddressSpaceSwitchesNeverLeaveAFlagTooLow) {
  constexpr unsigned kVcpus = 3, kConfigs = 16, kRounds = 60;
  // Immutable configs (the monitor's pool; hazard slots are not needed as none is ever rewritten).
  std::vector<FilterConfig> cfgs(kConfigs);
  std::mt19937 rng(7);
  for (unsigned i = 0; i < kConfigs; ++i) {
    auto& c = cfgs[i];
    c.generation = i;
    c.dtb_mode = rng() % 3 == 0 ? abi::DtbMode::kAll : abi::DtbMode::kSet;
    c.n_dtbs = rng() % 3;
    for (unsigned k = 0; k < c.n_dtbs; ++k) c.dtbs[k] = (1 + rng() % 4) * 0x1000 * 2;
    for (auto& a : c.actions) a = static_cast<Action>(rng() % 3);
  }
  for (unsigned round = 0; round < kRounds; ++round) {
    std::atomic<const FilterConfig*> current{&cfgs[0]};
    std::array<Board, kVcpus> boards{};
    std::array<std::uint64_t, kVcpus> dtb{};
    std::atomic<bool> stop{false};
    std::vector<std::thread> vcpus;
    for (unsigned v = 0; v < kVcpus; ++v)
      vcpus.emplace_back([&, v] {
        std::minstd_rand r(round * 31 + v);
        while (!stop.load(std::memory_order_relaxed)) {
          const std::uint64_t d = (1 + r() % 4) * 0x2000;   // a CR3 write: narrow with what we hold
          const FilterConfig* c = current.load(std::memory_order_acquire);
          narrow_flags(*c, current, d, [&](const ArmFlags& f) { boards[v].store(f); });
          dtb[v] = d;
        }
      });
    std::thread control([&] {
      std::minstd_rand r(round);
      for (unsigned k = 0; k < 50; ++k) {
        current.store(&cfgs[r() % kConfigs], std::memory_order_seq_cst);
        for (auto& b : boards) widen_flags([&](const ArmFlags& f) { b.store(f); });
      }
    });
    control.join();
    stop.store(true);
    for (auto& t : vcpus) t.join();
    const FilterConfig& now = *current.load();
    for (unsigned v = 0; v < kVcpus; ++v)
      ASSERT_TRUE(covers(boards[v].load(), arm_for(now, dtb[v]))) << "round " << round << " vCPU " << v;
  }
}

}  // namespace
}  // namespace hvtrace::monitor
