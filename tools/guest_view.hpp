// Looking at a guest from outside through its RAM: the attach sequence (RAM file or dump ->
// kernel found with no configuration -> Linux model) and the ps-style table, shared by
// `hvtrace ps` and `hvtrace run`.
#pragma once

#include "events/control_client.hpp"
#include "events/event_reader.hpp"
#include "kernel/kernel.hpp"
#include "linux/files.hpp"
#include "linux/processes.hpp"
#include "mem/phys_mem.hpp"
#include "vm/vm.hpp"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hvtrace::tools {

struct GuestView {
  std::unique_ptr<mem::FileMem> ram;
  std::unique_ptr<kernel::Kernel> kernel;
  std::optional<linux_os::Linux> os;
};

// Attach to a RAM file (shared with a running VM) or a raw dump; throws UserError naming the file.
GuestView attach_guest(std::unique_ptr<mem::FileMem> ram, const kernel::AttachOptions& options = {});

// A running VM watched through its monitor, as `trace` and `session` attach to it: its record, a
// watch on its QEMU, the guest through its RAM, the event rings and the control channel with this
// consumer attached. Throws UserError when the VM does not run or runs without the monitor.
struct MonitoredGuest {
  vm::VmRecord rec;
  vm::VmWatch watch;
  GuestView g;
  std::unique_ptr<events::EventReader> reader;
  events::ControlClient ctl;
};
MonitoredGuest attach_monitored(const std::string& vm_name);

// One process as ps shows it; cmdline only when asked for (ps -f).
struct ProcessRow {
  const linux_os::Process* p;
  std::optional<std::string> cmdline;
  std::optional<Result<linux_os::FdTable>> files{};   // ps --fds
};

void print_process_table(const std::vector<ProcessRow>& rows, bool tree);
void print_process_json(const ProcessRow& row);
// ps --fds: each row's open files after the table, "# open files of pid N (comm)" then one line per fd.
void print_process_files(const std::vector<ProcessRow>& rows);

}  // namespace hvtrace::tools
