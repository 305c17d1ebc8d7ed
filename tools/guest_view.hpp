// Looking at a guest from outside through its RAM: the attach sequence (RAM file or dump ->
// kernel found with no configuration -> Linux model) and the ps-style table, shared by
// `hvtrace ps` and `hvtrace run`.
#pragma once

#include "kernel/kernel.hpp"
#include "linux/processes.hpp"
#include "mem/phys_mem.hpp"

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

// One process as ps shows it; cmdline only when asked for (ps -f).
struct ProcessRow {
  const linux_os::Process* p;
  std::optional<std::string> cmdline;
};

void print_process_table(const std::vector<ProcessRow>& rows, bool tree);
void print_process_json(const ProcessRow& row);

}  // namespace hvtrace::tools
