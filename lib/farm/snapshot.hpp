// Resetting a guest to its clean boot state without rebooting it: a QEMU internal snapshot.
// The default guest has no disk (kernel + initramfs, RAM in a shared-memory file), so a small
// qcow2 file in the VM's run directory is added at run time (QMP blockdev-add) as the node that
// holds only the vmstate; `snapshot-save` (a QMP job) is taken once after boot and
// `snapshot-load` restores it. QEMU, the monitor plugin and its control socket stay up; the RAM
// file is rewritten in place, so attached readers see the restored memory.
#pragma once

#include "common/result.hpp"
#include "vm/vm.hpp"

#include <chrono>

namespace hvtrace::farm {

// Create <run_dir>/vmstate.qcow2 and add it as block node "hvtrace-vmstate".
[[nodiscard]] Result<void> snapshot_prepare(const vm::VmRecord& vm);
// Save the VM's state as snapshot "clean"; returns the seconds it took.
[[nodiscard]] Result<double> snapshot_save(const vm::VmRecord& vm, std::chrono::seconds timeout = std::chrono::seconds{60});
// Restore snapshot "clean"; returns the seconds it took. The guest runs on from the saved state.
[[nodiscard]] Result<double> snapshot_load(const vm::VmRecord& vm, std::chrono::seconds timeout = std::chrono::seconds{60});

}  // namespace hvtrace::farm
