// What the host knows about a process, for benchmark reports.
#pragma once

#include <sys/types.h>

namespace hvtrace::bench {

// utime + stime of process `pid` in seconds (/proc/<pid>/stat, clock-tick resolution); NaN if it
// cannot be read.
[[nodiscard]] double process_cpu_seconds(pid_t pid);

}  // namespace hvtrace::bench
