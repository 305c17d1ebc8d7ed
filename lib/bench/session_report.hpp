// The report of `hvtrace bench session` (issue 9's benchmark targets and issue 11's publish
// target), made from its results.json alone: per arm (idle: the monitor loaded, nobody watching;
// session: `hvtrace session --follow` watching; publish: the same with --publish to a local NATS
// JetStream; none: a guest without the plugin, if run) QEMU's CPU time and the workload's guest
// clock over interleaved rounds, the overheads as ratios of means with 95% bootstrap intervals,
// events lost, the --follow latency the watcher reported, its peak RSS, and the RSS run.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace hvtrace::bench {

// session.md: the arms' table and the targets, each judged on its whole interval.
[[nodiscard]] std::string make_session_report(const nlohmann::json& results);

// The counts a correct run must show, whatever the timings: every run completed; every watched run
// recorded exactly one session with every typed command, printed each with --follow, and lost no
// event; the publishing runs left nothing unacknowledged; the RSS run completed with no loss.
// One line per violation (empty: consistent).
[[nodiscard]] std::vector<std::string> check_session_counts(const nlohmann::json& results);

}  // namespace hvtrace::bench
