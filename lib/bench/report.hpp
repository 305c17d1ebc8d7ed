// The report of `hvtrace bench table1`, made from results.json alone (so anyone can recompute it):
// table1.md like the paper's Table 1 (one column per method), the targets of issue 10 judged
// against their 95% confidence intervals, and the gnuplot data + script for table1.svg.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace hvtrace::bench {

struct Table1Report {
  std::string markdown;        // table1.md
  std::string gnuplot_data;    // table1.dat: column, ratio/lo/hi for pti=off, then for pti=on
  std::string gnuplot_script;  // table1.gp: reads table1.dat, writes table1.svg
};
[[nodiscard]] Table1Report make_table1_report(const nlohmann::json& results);

// The counts a correct run must show, whatever the timings: every column completed; methods 2-5
// saw the same monitored calls of the shell; method 4 delivered fewer CR3 events than method 3;
// none and idle delivered no events; the gdb stub saw at least the shell's monitored calls.
// One line per violation (empty: consistent).
[[nodiscard]] std::vector<std::string> check_table1_counts(const nlohmann::json& results);

}  // namespace hvtrace::bench
