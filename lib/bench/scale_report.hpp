// The report of `hvtrace bench scale`, made from its results.json alone: for each number of guests
// running the workload at once, the per-VM cost of tracing (method 5) against the same guests
// untraced in the same round, how the untraced time grows with the number of guests, and the
// host memory each traced guest takes (its QEMU and its tracer).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace hvtrace::bench {

// scale.md: one row per guest count.
[[nodiscard]] std::string make_scale_report(const nlohmann::json& results);

// The counts a correct run must show: every run completed; within a round, every traced guest saw
// the same number of monitored calls and lost none; untraced runs delivered no events.
[[nodiscard]] std::vector<std::string> check_scale_counts(const nlohmann::json& results);

}  // namespace hvtrace::bench
