// What the host knows about a process, for benchmark reports.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace hvtrace::bench {

// utime + stime of process `pid` in seconds (/proc/<pid>/stat, clock-tick resolution); NaN if it
// cannot be read.
[[nodiscard]] double process_cpu_seconds(pid_t pid);
// Resident set size of `pid` in KiB (VmRSS of /proc/<pid>/status); 0 if it cannot be read.
[[nodiscard]] unsigned long process_rss_kib(pid_t pid);
// One "<field>: N kB" line of /proc/<pid>/status in KiB (e.g. RssAnon: the process's private
// memory, RssShmem: shared memory it touched); 0 if it cannot be read.
[[nodiscard]] unsigned long process_status_kib(pid_t pid, const std::string& field);
// The running children of `parent` whose command name (/proc/<pid>/comm) is `comm`.
[[nodiscard]] std::vector<pid_t> child_processes(pid_t parent, const std::string& comm);

}  // namespace hvtrace::bench
