// Running a child program with a deadline and bounded captured output. Used for the SSH client
// and for probing QEMU's version; a child that outlives its deadline is killed, never waited on
// forever. Its streams can instead be passed through (`vm exec`: stdin, stdout and stderr).
#pragma once

#include "common/result.hpp"

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hvtrace::vm {

struct ProcessResult {
  int exit_code = -1;        // exit status, or 128 + signal number if killed by a signal
  std::string out;
  std::string err;
};

// How the child's standard streams are connected. The default captures both outputs and gives
// the child /dev/null as stdin.
struct ProcessIo {
  bool pass_stdin = false;   // the child reads our stdin
  bool pass_stdout = false;  // the child writes straight to our stdout (ProcessResult::out stays empty)
  // The child's stderr is copied to ours as it arrives; ProcessResult::err keeps its first
  // kTeeKeep bytes (enough to diagnose a failing client) and never counts against max_output.
  bool tee_stderr = false;
  // Run to the end even after a termination signal (a cleanup that must happen because of the
  // Ctrl-C, e.g. telling a waiting guest shell to give up); the timeout still bounds it.
  bool survive_termination = false;
  // The child's stdin: these bytes, then end of file (instead of /dev/null; not with pass_stdin).
  // A child that exits before reading them all is not an error here (its status says).
  std::optional<std::string_view> input;
  static constexpr std::size_t kTeeKeep = 64u << 10;
};

// Run argv[0] (searched in PATH). Fails if it cannot start, exceeds `timeout` (it is then
// killed), prints more than `max_output` bytes on a captured stream, or a termination signal
// arrives (termination_requested(); unless io.survive_termination).
[[nodiscard]] Result<ProcessResult> run_process(const std::vector<std::string>& argv,
                                                std::chrono::milliseconds timeout,
                                                std::size_t max_output = 64u << 20, const ProcessIo& io = {});

// "exited with 3", "killed by signal 9 (Killed)"
[[nodiscard]] std::string describe_wait_status(int status);

}  // namespace hvtrace::vm
