// The DTB hvtrace reads from guest memory for a process is the CR3 the monitor sees when that
// process runs: with the monitor's in-hypervisor filter set to exactly that DTB, the process's own
// syscalls and the CR3 writes that switch to it come through, and each maps back to the process.
#include "events/control_client.hpp"
#include "events/event_reader.hpp"
#include "kernel/kernel.hpp"
#include "linux/processes.hpp"
#include "mem/phys_mem.hpp"
#include "vm/vm.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <thread>

using namespace hvtrace;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {
constexpr const char* kVm = "itest-guest-mon";
}

TEST(GuestWithMonitor, AProcessDtbIsTheCr3TheMonitorSeesForIt) {
  auto img = vm::load_image(vm::default_image_dir());
  ASSERT_TRUE(img.ok()) << img.error().message;
  const auto files = vm::monitor_files(kVm);
  vm::VmConfig c;
  c.name = kVm;
  c.image = std::move(img).value();
  c.plugin = vm::monitor_plugin(HVTRACE_MONITOR_PLUGIN, kVm);
  auto v = vm::Vm::start(c);
  ASSERT_TRUE(v.ok()) << v.error().message;
  std::unique_ptr<vm::Vm> guest = std::move(v).value();

  auto started = guest->exec("sh -c 'while :; do sleep 0.2; done' >/dev/null 2>&1 </dev/null & echo $!");
  ASSERT_TRUE(started.ok() && started->exit_status == 0);
  const Pid pid{std::stoi(started->out)};

  auto ram = mem::open_ram_file(guest->record().ram_path);
  ASSERT_TRUE(ram.ok()) << ram.error().message;
  kernel::AttachOptions ao;
  ao.use_cache = false;
  ao.save_cache = false;
  auto k = kernel::Kernel::attach(**ram, ao);
  ASSERT_TRUE(k.ok()) << k.error().message;
  auto lx = linux_os::Linux::attach(**k);
  ASSERT_TRUE(lx.ok()) << lx.error().message;
  auto p = lx->find_pid(pid);
  ASSERT_TRUE(p.ok() && p->has_value()) << "pid " << pid.value << " not found";
  ASSERT_TRUE((*p)->dtb.has_value());
  const Dtb dtb = *(*p)->dtb;

  auto reader = events::EventReader::open(files.rings, 5s);
  ASSERT_TRUE(reader.ok()) << reader.error().message;
  auto cl = events::ControlClient::connect(files.control, 5s);
  ASSERT_TRUE(cl.ok()) << cl.error().message;
  ASSERT_TRUE(cl->attach().ok());
  ASSERT_TRUE(cl->set_dtbs({dtb}).ok());
  ASSERT_TRUE(cl->set_syscalls(std::nullopt).ok());
  ASSERT_TRUE(cl->set_actions({hvtrace::abi::Action::kAsync, hvtrace::abi::Action::kAsync, hvtrace::abi::Action::kDrop, hvtrace::abi::Action::kDrop}).ok());

  std::size_t entries = 0, switches = 0, foreign = 0;
  const auto end = std::chrono::steady_clock::now() + 3s;
  while (std::chrono::steady_clock::now() < end && (entries < 5 || switches < 2)) {
    auto n = (*reader)->poll([&](const events::Event& e) {
      if (e.type == hvtrace::abi::RecordType::kSyscallEntry) {
        if (dtb_of(Cr3{e.entry.cr3}) == dtb) ++entries;
        else ++foreign;
      } else if (e.type == hvtrace::abi::RecordType::kCr3Write) {
        if (dtb_of(Cr3{e.cr3.new_cr3}) == dtb) ++switches;
      }
    });
    ASSERT_TRUE(n.ok()) << n.error().message;
    if (*n == 0) (*reader)->wait(20ms);
  }
  (void)cl->detach();
  EXPECT_GE(entries, 5u) << "no syscalls seen under the DTB hvtrace read for pid " << pid.value;
  EXPECT_GE(switches, 1u) << "no CR3 write to the DTB hvtrace read for pid " << pid.value;
  EXPECT_EQ(foreign, 0u);
  // And the monitor's CR3 leads back to the process.
  auto owner = lx->process_by_dtb(dtb);
  ASSERT_TRUE(owner.ok() && owner->has_value());
  EXPECT_EQ((*owner)->pid, pid);
  (void)guest->exec(fmt::format("kill {}", pid.value));
  (void)guest->shutdown();
}
