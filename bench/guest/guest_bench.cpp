// Seeing-the-guest benchmarks. Targets (issue 4): cold discovery <= 300 ms on the default guest,
// attach with a cached profile <= 20 ms, full process list <= 2 ms. Run with
//   build/release/bench/guest/guest_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// HVTRACE_BENCH_RAM=<file> benchmarks an already running guest's RAM file instead of booting one;
// HVTRACE_BENCH_NO_VM=1 runs only the synthetic-guest benchmarks.
#include "arch/paging.hpp"
#include "kernel/kernel.hpp"
#include "linux/fake_guest.hpp"
#include "linux/processes.hpp"
#include "mem/phys_mem.hpp"
#include "vm/vm.hpp"

#include <benchmark/benchmark.h>
#include <fmt/core.h>

#include <cstdlib>
#include <filesystem>
#include <memory>

using namespace hvtrace;
namespace fs = std::filesystem;

namespace {

struct Target {
  const mem::PhysMem* ram = nullptr;
  fs::path profile_dir;
  std::string label;
};

void bench_cold(benchmark::State& st, Target t) {
  for (auto _ : st) {
    auto k = kernel::Kernel::discover(*t.ram);
    if (!k) st.SkipWithError(k.error().message.c_str());
    benchmark::DoNotOptimize(k);
  }
}

void bench_warm(benchmark::State& st, Target t) {
  kernel::AttachOptions o;
  o.profile_dir = t.profile_dir;
  {
    auto first = kernel::Kernel::attach(*t.ram, o);  // makes sure a profile is cached
    if (!first) st.SkipWithError(first.error().message.c_str());
  }
  for (auto _ : st) {
    auto k = kernel::Kernel::attach(*t.ram, o);
    if (!k || (*k)->how().rfind("cached profile", 0) != 0) st.SkipWithError("profile not taken from the cache");
    benchmark::DoNotOptimize(k);
  }
}

void bench_ps(benchmark::State& st, Target t) {
  auto k = kernel::Kernel::discover(*t.ram);
  if (!k) return st.SkipWithError(k.error().message.c_str());
  auto lx = linux_os::Linux::attach(**k);
  if (!lx) return st.SkipWithError(lx.error().message.c_str());
  std::size_t n = 0;
  for (auto _ : st) {
    auto ps = lx->processes();
    if (!ps) return st.SkipWithError(ps.error().message.c_str());
    n = ps->size();
  }
  st.counters["processes"] = static_cast<double>(n);
}

// CR3 -> process at event rate: ProcessIndex lookups of every process's DTB in turn.
void bench_dtb_lookup(benchmark::State& st, Target t) {
  auto k = kernel::Kernel::discover(*t.ram);
  if (!k) return st.SkipWithError(k.error().message.c_str());
  auto lx = linux_os::Linux::attach(**k);
  if (!lx) return st.SkipWithError(lx.error().message.c_str());
  linux_os::ProcessIndex idx(*lx);
  if (!idx.refresh()) return st.SkipWithError("process list failed");
  std::vector<Dtb> dtbs;
  for (const auto& p : idx.all())
    if (p.dtb) dtbs.push_back(*p.dtb);
  if (dtbs.empty()) return st.SkipWithError("no user processes");
  std::size_t i = 0;
  for (auto _ : st) benchmark::DoNotOptimize(idx.by_dtb(dtbs[i++ % dtbs.size()]));
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()));
}

// Page walks of kernel-image addresses through the kernel's page tables: uncached (a full walk
// each time) and through AddressSpace's cache (revalidated leaf).
void bench_translate(benchmark::State& st, Target t, bool cached) {
  auto k = kernel::Kernel::discover(*t.ram);
  if (!k) return st.SkipWithError(k.error().message.c_str());
  const auto& l = (*k)->layout();
  arch::AddressSpace as(*t.ram, l.kernel_dtb, l.paging);
  const std::uint64_t span = std::min<std::uint64_t>(l.end_va.value - l.text_va.value, 8ULL << 20);
  std::uint64_t i = 0;
  for (auto _ : st) {
    const GVA va{l.text_va.value + ((i++ * 4096 * 7) % span)};
    if (cached) benchmark::DoNotOptimize(as.translate(va));
    else benchmark::DoNotOptimize(arch::walk(*t.ram, l.kernel_dtb, va, l.paging));
  }
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()));
}

void register_all(const Target& t) {
  auto ms = [](benchmark::internal::Benchmark* b) { return b->Unit(benchmark::kMillisecond)->UseRealTime(); };
  ms(benchmark::RegisterBenchmark(("cold_discovery/" + t.label).c_str(), bench_cold, t))->Iterations(5);
  ms(benchmark::RegisterBenchmark(("warm_attach_cached_profile/" + t.label).c_str(), bench_warm, t))->Iterations(20);
  ms(benchmark::RegisterBenchmark(("process_list/" + t.label).c_str(), bench_ps, t))->Iterations(200);
  benchmark::RegisterBenchmark(("dtb_to_process/" + t.label).c_str(), bench_dtb_lookup, t);
  benchmark::RegisterBenchmark(("translate_walk/" + t.label).c_str(), bench_translate, t, false);
  benchmark::RegisterBenchmark(("translate_cached/" + t.label).c_str(), bench_translate, t, true);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const fs::path profiles = fs::temp_directory_path() / fmt::format("hvtrace-bench-profiles-{}", getpid());

  // Synthetic guest: always available, 200 tasks.
  auto fake = fake::FakeGuest::build();
  if (!fake) {
    fmt::print(stderr, "fake guest: {}\n", fake.error().message);
    return 1;
  }
  auto init = (*fake)->add_task({.pid = 1, .comm = "init", .parent = {}});
  for (int i = 0; i < 200 && init; ++i) (void)(*fake)->add_task({.pid = 100 + i, .comm = "worker", .parent = *init});
  register_all({&(*fake)->mem(), profiles / "fake", "synthetic"});

  std::unique_ptr<vm::Vm> vm;
  std::unique_ptr<mem::FileMem> ram;
  std::string ram_path;
  if (const char* r = std::getenv("HVTRACE_BENCH_RAM")) ram_path = r;
  if (ram_path.empty() && std::getenv("HVTRACE_BENCH_NO_VM") == nullptr) {
    auto img = vm::load_image(vm::default_image_dir());
    if (img) {
      vm::VmConfig c;
      c.name = "bench-guest";
      c.image = std::move(img).value();
      auto v = vm::Vm::start(c);
      if (v) {
        vm = std::move(v).value();
        ram_path = vm->record().ram_path.string();
      } else {
        fmt::print(stderr, "not benchmarking a real guest: {}\n", v.error().message);
      }
    } else {
      fmt::print(stderr, "not benchmarking a real guest: {}\n", img.error().message);
    }
  }
  if (!ram_path.empty()) {
    auto r = mem::open_ram_file(ram_path);
    if (r) {
      ram = std::move(r).value();
      register_all({ram.get(), profiles / "guest", "default_guest"});
    } else {
      fmt::print(stderr, "{}\n", r.error().message);
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  fs::remove_all(profiles);
  if (vm) (void)vm->shutdown();
  return 0;
}
