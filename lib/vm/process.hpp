// Running a child program with a deadline and bounded captured output. Used for the SSH client
// and for probing QEMU's version; a child that outlives its deadline is killed, never waited on
// forever.
#pragma once

#include "common/result.hpp"

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace hvtrace::vm {

struct ProcessResult {
  int exit_code = -1;        // exit status, or 128 + signal number if killed by a signal
  std::string out;
  std::string err;
};

// Run argv[0] (searched in PATH) with stdin from /dev/null. Fails if it cannot start, exceeds
// `timeout` (it is then killed), prints more than `max_output` bytes on either stream, or a
// termination signal arrives (termination_requested()).
[[nodiscard]] Result<ProcessResult> run_process(const std::vector<std::string>& argv,
                                                std::chrono::milliseconds timeout,
                                                std::size_t max_output = 64u << 20);

// "exited with 3", "killed by signal 9 (Killed)"
[[nodiscard]] std::string describe_wait_status(int status);

}  // namespace hvtrace::vm
