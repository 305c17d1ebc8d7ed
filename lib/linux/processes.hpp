// The Linux model: processes read from a running guest's memory through a discovered Kernel —
// the task list (from init_task.tasks), each process's identity, credentials and address space
// (DTB = physical address of mm->pgd), the process that owns a DTB, and the task a vCPU is
// running (from its kernel GS base and the per-CPU current_task / pcpu_hot.current_task).
// The guest is hostile: the walk is bounded (max_tasks) and guarded against cycles that do not
// pass through init_task; a task that cannot be read ends the walk with an error naming it.
// A DTB is not a stable identity (page-table pages are reused after exit): callers resolve it
// again after exec/exit events.
#pragma once
// (Namespace linux_os, not linux: "linux" is a predefined macro under GNU dialects.)

#include "common/result.hpp"
#include "common/types.hpp"
#include "arch/paging.hpp"
#include "kernel/kernel.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace hvtrace::linux_os {

struct Process {
  Pid pid, tgid, ppid;
  std::uint32_t uid = 0, gid = 0, euid = 0;
  std::string comm;                 // at most 15 characters (TASK_COMM_LEN)
  std::optional<Dtb> dtb;           // none for kernel threads (no mm)
  char state = '?';                 // R S D T t X Z P I, as ps shows it
  std::uint64_t start_time_ns = 0;  // task_struct.start_time: monotonic ns since boot
  bool kernel_thread = false;       // PF_KTHREAD
  GVA task;                         // address of its task_struct
  GVA mm;                           // its mm_struct (0 for kernel threads)
};

struct WalkLimits {
  std::size_t max_tasks = 1U << 16;
};

// Offsets resolved once from the profile, so a walk does no map lookups.
struct TaskLayout {
  std::uint64_t tasks, pid, tgid, comm, comm_size, mm, real_parent, real_cred, start_time, state, exit_state, flags;
  std::uint64_t mm_pgd, cred_uid, cred_gid, cred_euid;
  std::optional<std::uint64_t> pcpu_hot_current_task;
  std::optional<std::uint64_t> mm_arg_start, mm_arg_end;  // for command lines
  std::optional<std::uint64_t> binprm_mm;                  // linux_binprm.mm: the mm an exec installs
  [[nodiscard]] static Result<TaskLayout> from(const kernel::Kernel& k);
};

class Linux {
 public:
  [[nodiscard]] static Result<Linux> attach(const kernel::Kernel& kernel);

  // Processes (thread-group leaders, as ps lists them), in task-list order; init_task (pid 0) excluded.
  [[nodiscard]] Result<std::vector<Process>> processes(const WalkLimits& limits = {}) const;
  [[nodiscard]] Result<Process> read_task(GVA task) const;
  [[nodiscard]] Result<std::optional<Process>> find_pid(Pid pid) const;
  [[nodiscard]] Result<std::vector<Process>> find_name(std::string_view comm) const;
  // The command line (argv joined by spaces), read from the process's own memory through its DTB
  // (mm->arg_start..arg_end, at most max_bytes). Empty for kernel threads. Fails if the pages are
  // not present (e.g. not yet faulted in).
  [[nodiscard]] Result<std::string> cmdline(const Process& p, std::size_t max_bytes = 4096) const;
  // The process whose address space is `dtb` (a CR3 with PCID/PTI bits masked by dtb_of).
  [[nodiscard]] Result<std::optional<Process>> process_by_dtb(Dtb dtb) const;
  // The task running on a vCPU, from its kernel GS base (gs_base in kernel mode, k_gs_base in user mode).
  [[nodiscard]] Result<Process> current_task(GVA kernel_gs_base) const;
  // The kernel GS base of cpu `n` from __per_cpu_offset[n] (when registers are not at hand).
  [[nodiscard]] Result<GVA> per_cpu_base(unsigned cpu) const;
  // The address space of an mm_struct: the physical address of mm->pgd, as the CR3 the monitor sees.
  [[nodiscard]] Result<Dtb> mm_dtb(GVA mm) const;
  // The address space an exec will switch to: bprm->mm's (begin_new_exec(bprm) before exec_mmap).
  // Fails on a kernel whose BTF has no linux_binprm.mm.
  [[nodiscard]] Result<Dtb> exec_dtb(GVA bprm) const;

  [[nodiscard]] const kernel::Kernel& kernel() const { return *kernel_; }
  [[nodiscard]] const TaskLayout& task_layout() const { return layout_; }
  // Per-CPU offset of the current task pointer (what the monitor reads for event identity).
  [[nodiscard]] std::uint64_t current_task_offset() const { return current_task_off_; }

 private:
  Linux(const kernel::Kernel& k, TaskLayout l, GVA init_task, std::uint64_t current_task_off)
      : kernel_(&k), layout_(l), init_task_(init_task), current_task_off_(current_task_off) {}
  const kernel::Kernel* kernel_;
  TaskLayout layout_;
  GVA init_task_;
  std::uint64_t current_task_off_;  // per-CPU offset of the current task pointer
};

// A snapshot of the process list indexed by pid and by DTB, for event-rate lookups (the process
// behind a CR3 the monitor reports). DTBs and pids are reused after exit, so the snapshot is only
// as fresh as its last refresh(): refresh on exec/exit events; resolve() refreshes once on a miss.
class ProcessIndex {
 public:
  explicit ProcessIndex(const Linux& lx) : lx_(&lx) {}
  [[nodiscard]] Result<void> refresh();
  [[nodiscard]] const Process* by_pid(Pid pid) const;
  [[nodiscard]] const Process* by_dtb(Dtb dtb) const;  // any CR3-derived value: PCID/PTI bits ignored
  // by_dtb, refreshing once if the DTB is unknown (a process started since the last refresh).
  [[nodiscard]] Result<const Process*> resolve(Dtb dtb);
  [[nodiscard]] const std::vector<Process>& all() const { return procs_; }
  [[nodiscard]] std::uint64_t refreshes() const { return refreshes_; }

 private:
  const Linux* lx_;
  std::vector<Process> procs_;
  std::unordered_map<std::int32_t, std::size_t> by_pid_;
  std::unordered_map<std::uint64_t, std::size_t> by_dtb_;
  std::uint64_t refreshes_ = 0;
};

// ps's state letter from task_struct.__state and exit_state (fs/proc/array.c).
[[nodiscard]] char state_letter(std::uint32_t state, std::uint32_t exit_state);

}  // namespace hvtrace::linux_os
