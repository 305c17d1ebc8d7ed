// The armed-flag rule of monitor/arming.hpp under concurrency (also run under ThreadSanitizer):
// a control thread keeps publishing new filters and widening while vCPU threads switch address
// spaces and narrow. When everything stops, no vCPU may hold a flag below what the filter in force
// needs for its address space (that would be an undelivered event).
#include "arming.hpp"
#include "doors.hpp"

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <deque>
#include <mutex>
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
    c.n_dtbs = static_cast<std::uint32_t>(rng() % 3);
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
          narrow_flags(*c, current, d, [&](const ArmFlags& f) { boards[v].store(f); }, [] { return true; });
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

// A filter whose exits wait for entries: a syscall set, DTB-set mode (CR3 writes watched).
FilterConfig lazy_exit_config(std::uint64_t dtb) {
  FilterConfig c;
  c.dtb_mode = abi::DtbMode::kSet;
  c.n_dtbs = 1;
  c.dtbs[0] = dtb;
  c.actions[static_cast<int>(EventClass::kSyscallEntry)] = Action::kAsync;
  c.actions[static_cast<int>(EventClass::kSyscallExit)] = Action::kAsync;
  c.all_syscalls[0] = false;
  return c;
}

TEST(Arming, ExitsAreArmedOnlyWhileAnEntryOfTheAddressSpaceIsOpen) {
  const FilterConfig c = lazy_exit_config(0x5000);
  ASSERT_TRUE(exits_wait_for_entries(c));
  std::atomic<const FilterConfig*> current{&c};
  Board b;
  bool open = false;
  narrow_flags(c, current, 0x5000, [&](const ArmFlags& f) { b.store(f); }, [&] { return open; });
  EXPECT_EQ(b.load(), (ArmFlags{1, 0, 1}));
  open = true;
  narrow_flags(c, current, 0x5000, [&](const ArmFlags& f) { b.store(f); }, [&] { return open; });
  EXPECT_EQ(b.load(), (ArmFlags{1, 1, 1}));
  narrow_flags(c, current, 0x6000, [&](const ArmFlags& f) { b.store(f); }, [&] { return open; });
  EXPECT_EQ(b.load(), (ArmFlags{0, 0, 1}));   // not traced: nothing, whatever is open
  // Every call delivered (unpaired exits are delivered too), or CR3 writes not watched: always armed.
  FilterConfig all = c;
  all.all_syscalls[0] = true;
  EXPECT_FALSE(exits_wait_for_entries(all));
  narrow_flags(all, current, 0x5000, [&](const ArmFlags& f) { b.store(f); }, [] { return false; });
  EXPECT_EQ(b.load().exit, 1u);
  FilterConfig no_cr3 = c;
  no_cr3.dtb_mode = abi::DtbMode::kAll;
  EXPECT_FALSE(exits_wait_for_entries(no_cr3));
}

// The rule of arming.hpp's "exits wait for entries" under concurrency (also under TSan): vCPU
// threads switch between two traced address spaces, record entries of the one they run, and
// return from calls entered on any vCPU (a blocked thread resuming elsewhere), while a control
// thread republishes the filter and widens. At every return, the returning vCPU's exit trap must
// be armed: a disarmed one is an exit never delivered.
TEST(Arming, AReturnFindsItsExitArmedWhereverItsEntryWasRecorded) {
  constexpr unsigned kVcpus = 3, kOps = 20000;
  FilterConfig both[2] = {lazy_exit_config(0x2000), lazy_exit_config(0x2000)};
  for (auto& c : both) {
    c.n_dtbs = 2;
    c.dtbs[1] = 0x4000;
  }
  std::atomic<const FilterConfig*> current{&both[0]};
  std::array<Board, kVcpus> boards{};
  std::array<OpenEntries<8>, kVcpus> tables{};
  std::array<std::atomic<std::uint64_t>, kVcpus> running{};
  std::mutex mu;
  std::deque<OpenCall> pending;   // entries whose calls are blocked, to return on any vCPU
  std::atomic<std::uint64_t> next_rsp{1}, disarmed{0}, returns{0};
  const auto open_anywhere = [&](std::uint64_t d) {
    for (auto& t : tables)
      if (t.holds(d)) return true;
    return false;
  };
  std::atomic<bool> stop{false};
  std::vector<std::thread> vcpus;
  for (unsigned v = 0; v < kVcpus; ++v)
    vcpus.emplace_back([&, v] {
      std::minstd_rand r(11 + v);
      std::uint64_t d = 0;
      const auto narrow = [&](std::uint64_t to) {   // R, then N/S/L
        d = to;
        running[v].store(to, std::memory_order_seq_cst);
        const FilterConfig* c = current.load(std::memory_order_acquire);
        narrow_flags(*c, current, to, [&](const ArmFlags& f) { boards[v].store(f); }, [&] { return open_anywhere(to); });
      };
      narrow(0x2000);
      for (unsigned k = 0; k < kOps; ++k) {
        const auto op = r() % 3;
        if (op == 0) {
          narrow(r() % 2 ? 0x2000 : 0x4000);   // a CR3 write
        } else if (op == 1) {   // an entry of the running address space: P, then E
          {
            std::lock_guard<std::mutex> g(mu);   // at most 6 open: no table (8 slots) evicts
            if (pending.size() >= 6) continue;
          }
          OpenCall call;
          call.dtb = d;
          call.rsp = next_rsp.fetch_add(1);
          if (!tables[v].put(call)) continue;
          for (unsigned w = 0; w < kVcpus; ++w)
            if (w == v || running[w].load(std::memory_order_seq_cst) == d)
              std::atomic_ref<std::uint64_t>(boards[w].f[1]).store(1, std::memory_order_seq_cst);
          std::lock_guard<std::mutex> g(mu);
          pending.push_back(call);
        } else {   // a blocked call returns here: switch to its address space if needed, then return
          OpenCall call;
          {
            std::lock_guard<std::mutex> g(mu);
            if (pending.empty()) continue;
            call = pending.front();
            pending.pop_front();
          }
          if (call.dtb != d) narrow(call.dtb);
          returns.fetch_add(1);
          if (std::atomic_ref<std::uint64_t>(boards[v].f[1]).load(std::memory_order_seq_cst) != 1) disarmed.fetch_add(1);
          bool taken = false;
          for (auto& t : tables) taken = taken || t.take(call.dtb, call.rsp).has_value();
          EXPECT_TRUE(taken);
          narrow(d);   // after the exit: disarm if nothing else of d is open
        }
      }
    });
  std::thread control([&] {
    for (unsigned k = 0; k < 200 && !stop.load(); ++k) {
      current.store(&both[k % 2], std::memory_order_seq_cst);
      for (auto& b : boards) widen_flags([&](const ArmFlags& f) { b.store(f); });
      std::this_thread::yield();
    }
  });
  for (auto& t : vcpus) t.join();
  stop.store(true);
  control.join();
  EXPECT_GT(returns.load(), 1000u);
  EXPECT_EQ(disarmed.load(), 0u) << "returns that found their vCPU's exit trap disarmed";
}

}  // namespace
}  // namespace hvtrace::monitor
