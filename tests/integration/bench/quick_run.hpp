// Runs `hvtrace bench <which> --quick -o <temp dir>` and hands back its results.json: the shared
// start of the benchmarks' integration tests (which assert counts, never timings).
#pragma once

#include "vm/process.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>

namespace hvtrace {

struct QuickRun {
  std::filesystem::path dir;
  nlohmann::json results;   // null if the run produced none (the failure is recorded)
};

inline QuickRun run_quick_bench(const std::string& which) {
  using namespace std::chrono_literals;
  QuickRun q;
  q.dir = std::filesystem::temp_directory_path() / fmt::format("hvtrace-bench-{}-test-{}", which, getpid());
  std::filesystem::remove_all(q.dir);
  auto r = vm::run_process({HVTRACE_BIN, "bench", which, "--quick", "-o", q.dir.string()}, 840s);
  if (!r) {
    ADD_FAILURE() << r.error().message;
    return q;
  }
  std::cout << r->out << "\n--- stderr ---\n" << r->err << "\n";
  EXPECT_EQ(r->exit_code, 0) << r->err;   // 1 when a run failed or a count check did ("inconsistent: ...")
  std::ifstream f(q.dir / "results.json");
  if (!f.good()) {
    ADD_FAILURE() << "no results.json in " << q.dir;
    return q;
  }
  q.results = nlohmann::json::parse(f);
  return q;
}

}  // namespace hvtrace
