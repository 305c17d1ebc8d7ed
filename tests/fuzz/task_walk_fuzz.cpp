// The task-list walk over a hostile guest: a synthetic guest (built once) whose task structures,
// creds, mms, page tables, argv and list pointers are patched by the input, then walked. No crash, no hang: cycles,
// wild pointers and garbage fields must all end in a result or an error. Patches are undone after
// each input.
#include "linux/fake_guest.hpp"
#include "linux/processes.hpp"

#include <cstring>

using namespace hvtrace;

namespace {
struct World {
  std::unique_ptr<fake::FakeGuest> guest;
  std::unique_ptr<kernel::Kernel> kernel;
  std::optional<linux_os::Linux> lx;
  std::uint64_t region_start = 0x8000000, region_len = 0;
};

World* world() {
  static World* w = [] {
    auto* x = new World();
    x->guest = std::move(fake::FakeGuest::build()).value();
    auto init = x->guest->add_task({.pid = 1, .comm = "init", .parent = {}}).value();
    for (int i = 0; i < 6; ++i)
      (void)x->guest->add_task({.pid = 100 + i, .comm = "task" + std::to_string(i), .kernel_thread = i % 2 == 0, .parent = init});
    x->kernel = std::move(kernel::Kernel::discover(x->guest->mem())).value();
    x->lx.emplace(std::move(linux_os::Linux::attach(*x->kernel)).value());
    x->region_len = 0x80000;  // tasks, creds, mms, user page tables and argv pages of the tasks above
    return x;
  }();
  return w;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  World* w = world();
  auto& m = w->guest->mem();
  std::vector<std::byte> saved(w->region_len);
  (void)m.read(GPA{w->region_start}, saved);
  std::vector<std::byte> patched = saved;
  // Patches: (u32 offset into the region, u64 value) — pointers and fields alike.
  for (std::size_t i = 0; i + 12 <= size; i += 12) {
    std::uint32_t off = 0;
    std::memcpy(&off, data + i, 4);
    const std::size_t at = (off % (w->region_len - 8)) & ~std::size_t{3};
    std::memcpy(patched.data() + at, data + i + 4, 8);
  }
  (void)m.write(GPA{w->region_start}, patched);
  linux_os::WalkLimits lim;
  lim.max_tasks = 4096;
  if (auto ps = w->lx->processes(lim))
    for (const auto& p : *ps) (void)w->lx->cmdline(p, 256);
  linux_os::ProcessIndex idx(*w->lx);
  if (idx.refresh()) (void)idx.by_dtb(Dtb{0x8002000});
  (void)w->lx->current_task(GVA{w->guest->va_of(GPA{w->region_start}).value});
  (void)m.write(GPA{w->region_start}, saved);
  w->kernel->invalidate();
  return 0;
}
