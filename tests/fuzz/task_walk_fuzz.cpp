// The task-list walk over a hostile guest: a synthetic guest (built once) whose task structures,
// creds, mms, page tables, argv, fd tables, files, inodes, sockets and list pointers are patched by
// the input, then walked (processes, command lines, open files). No crash, no hang: cycles,
// wild pointers and garbage fields must all end in a result or an error. Patches are undone after
// each input.
#include "linux/fake_guest.hpp"
#include "linux/files.hpp"
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
    // Open files for two processes: a pty master, a TCP socket, both ends of a pipe, a pty slave.
    auto conn = x->guest->add_task({.pid = 200, .comm = "dropbear", .parent = init}).value();
    auto shell = x->guest->add_task({.pid = 201, .comm = "sh", .parent = conn}).value();
    auto t = x->guest->set_files(conn, {{.fd = 3, .mode = 0140777, .family = 2, .local_ip = {10, 0, 2, 15}, .peer_ip = {10, 0, 2, 2},
                                         .local_port = 22, .peer_port = 5555},
                                        {.fd = 5, .mode = 0020666, .major = 5, .minor = 2},
                                        {.fd = 7, .mode = 0010600, .f_mode = 1}}).value();
    (void)x->guest->set_files(shell, {{.fd = 0, .mode = 0020620, .major = 136},
                                      {.fd = 1, .mode = 0010600, .f_mode = 2, .inode = t.inodes[2]},
                                      {.fd = 9, .mode = 0140777, .family = 10, .local_port = 80}});
    x->kernel = std::move(kernel::Kernel::discover(x->guest->mem())).value();
    x->lx.emplace(std::move(linux_os::Linux::attach(*x->kernel)).value());
    x->region_len = 0x100000;  // tasks, creds, mms, user page tables, argv pages and open files of the tasks above
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
  linux_os::FdLimits fl;
  fl.max_fds = 2048;
  fl.max_open = 64;
  if (auto ps = w->lx->processes(lim))
    for (const auto& p : *ps) {
      (void)w->lx->cmdline(p, 256);
      if (auto t = linux_os::open_files(*w->lx, p, fl))
        for (const auto& f : t->files) (void)linux_os::describe(f);
    }
  linux_os::ProcessIndex idx(*w->lx);
  if (idx.refresh()) (void)idx.by_dtb(Dtb{0x8002000});
  (void)w->lx->current_task(GVA{w->guest->va_of(GPA{w->region_start}).value});
  (void)m.write(GPA{w->region_start}, saved);
  w->kernel->invalidate();
  return 0;
}
